//! RMSNorm and its fused forms against `group_rms_norm` of the reference.

use super::harness::{Buf, check, random};
use zambac_engine::KernelKind;
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

fn norm(x: &[f32], rows: usize, w: &[f32], groups: usize, eps: f64) -> Vec<f32> {
    let d = w.len();
    let x = Tensor::new(vec![rows, d], x.to_vec());
    k::group_rms_norm(&x, &Tensor::new(vec![d], w.to_vec()), groups, eps).data
}

fn rms_norm(d: usize, groups: usize, rows: usize) {
    let eps = 1e-5;
    let x = random(rows * d, 1, -2.0, 2.0);
    let w = random(d, 2, 0.5, 1.5);
    let want = norm(&x, rows, &w, groups, eps);
    let bufs = [Buf::F32(x), Buf::F32(w), Buf::F32(vec![0.0; rows * d])];
    check(
        KernelKind::RmsNorm { d, groups, eps },
        &bufs,
        &[],
        rows,
        &[(2, want)],
        1e-5,
    );
}

#[test]
fn rms_norm_matches_the_reference() {
    rms_norm(96, 1, 5);
    // Wide rows (a block per row in the GPU schedule): 2051 is one whole round of the
    // block's 256 lanes × 8 and a partial one; 600 only a partial one.
    rms_norm(2051, 1, 3);
    rms_norm(600, 1, 2);
}

#[test]
fn grouped_rms_norm_normalises_each_group_alone() {
    rms_norm(100, 4, 6);
    rms_norm(64, 2, 1);
    // Two wide groups: the block's sum runs once per group, its slots reused.
    rms_norm(2 * 1030, 2, 2);
}

#[test]
fn add_rms_norm_stores_the_sum_and_its_norm() {
    for d in [77, 1037] {
        add_rms_norm(d, 5);
    }
}

fn add_rms_norm(d: usize, rows: usize) {
    let eps = 1e-6;
    let a = random(rows * d, 3, -1.0, 1.0);
    let b = random(rows * d, 4, -1.0, 1.0);
    let w = random(d, 5, 0.5, 1.5);
    let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let want = norm(&sum, rows, &w, 1, eps);
    let zeros = vec![0.0; rows * d];
    let bufs = [
        Buf::F32(a),
        Buf::F32(b),
        Buf::F32(w),
        Buf::F32(zeros.clone()),
        Buf::F32(zeros),
    ];
    let kind = KernelKind::AddRmsNorm { d, eps };
    check(kind, &bufs, &[], rows, &[(3, sum), (4, want)], 1e-5);
}

#[test]
fn concat_rms_norm_normalises_the_concatenation() {
    for (da, db) in [(40, 29), (600, 529)] {
        concat_rms_norm(da, db, 4);
    }
}

fn concat_rms_norm(da: usize, db: usize, rows: usize) {
    let eps = 1e-5;
    let a = random(rows * da, 6, -1.0, 1.0);
    let b = random(rows * db, 7, -3.0, 3.0);
    let w = random(da + db, 8, 0.5, 1.5);
    let joined = k::concat(
        &Tensor::new(vec![rows, da], a.clone()),
        &Tensor::new(vec![rows, db], b.clone()),
        1,
    );
    let want = norm(&joined.data, rows, &w, 1, eps);
    let bufs = [
        Buf::F32(a),
        Buf::F32(b),
        Buf::F32(w),
        Buf::F32(vec![0.0; rows * (da + db)]),
    ];
    let kind = KernelKind::ConcatRmsNorm { da, db, eps };
    check(kind, &bufs, &[], rows, &[(3, want)], 1e-5);
}

#[test]
fn mamba2_gate_norm_gates_with_silu_then_normalises_each_group() {
    // (1030, 1) and (2 · 600, 2): a block per row (group) in the GPU schedule.
    for (di, groups) in [(32, 2), (84, 1), (1030, 1), (1200, 2)] {
        let (width, rows, eps) = (di + 38, 3, 1e-5);
        let y = random(rows * di, 9, -2.0, 2.0);
        let zx = random(rows * width, 10, -4.0, 4.0);
        let w = random(di, 11, 0.5, 1.5);
        let gated: Vec<f32> = (0..rows * di)
            .map(|i| y[i] * k::silu(zx[i / di * width + i % di]))
            .collect();
        let want = norm(&gated, rows, &w, groups, eps);
        let bufs = [
            Buf::F32(y),
            Buf::F32(zx),
            Buf::F32(w),
            Buf::F32(vec![0.0; rows * di]),
        ];
        let kind = KernelKind::Mamba2GateNorm {
            width,
            di,
            groups,
            eps,
            conv_shift: None,
        };
        check(kind, &bufs, &[], rows, &[(3, want)], 1e-5);
    }
}

#[test]
fn concat_rms_scale_is_the_factor_concat_rms_norm_applies() {
    for (da, db) in [(40, 29), (700, 330)] {
        concat_rms_scale(da, db, 5);
    }
}

fn concat_rms_scale(da: usize, db: usize, rows: usize) {
    let eps = 1e-5;
    let a = random(rows * da, 12, -1.0, 1.0);
    let b = random(rows * db, 13, -3.0, 3.0);
    let want = k::concat_rms_scale(
        &Tensor::new(vec![rows, da], a.clone()),
        &Tensor::new(vec![rows, db], b.clone()),
        eps,
    )
    .data;
    // The reference factor, checked against its definition on one row.
    let ss: f64 = a[..da]
        .iter()
        .chain(&b[..db])
        .map(|&v| (v as f64).powi(2))
        .sum();
    let row0 = 1.0 / (ss / (da + db) as f64 + eps).sqrt();
    assert!((want[0] as f64 - row0).abs() <= 1e-6 * row0);
    let bufs = [Buf::F32(a), Buf::F32(b), Buf::F32(vec![0.0; rows])];
    let kind = KernelKind::ConcatRmsScale { da, db, eps };
    check(kind, &bufs, &[], rows, &[(2, want)], 1e-5);
}
