//! Embedding, elementwise binaries, KV-cache writes and the causal softmax.

use super::harness::{Buf, Lib, assert_close, check, random, to_bf16};
use zambac_codegen::HostTarget;
use zambac_engine::Elem;
use zambac_engine::Kernel;
use zambac_engine::{BinOp, KernelKind};
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

#[test]
fn embedding_copies_the_rows_of_the_tokens_in_f32_and_widened_bf16() {
    let (vocab, rows) = (11, 6);
    let tokens: Vec<i64> = vec![3, 0, 10, 3, 7, 1];
    for hidden in [37, 64] {
        let table = random(vocab * hidden, 12, -1.0, 1.0);
        let (bits, rounded) = to_bf16(&table);
        let gather = |table: &[f32]| -> Vec<f32> {
            tokens
                .iter()
                .flat_map(|&t| table[t as usize * hidden..(t as usize + 1) * hidden].to_vec())
                .collect()
        };
        let out = Buf::F32(vec![0.0; rows * hidden]);
        let f32_bufs = [
            Buf::I64(tokens.clone()),
            Buf::F32(table.clone()),
            out.clone(),
        ];
        let kind = KernelKind::Embedding {
            hidden,
            elem: Elem::F32,
        };
        check(kind, &f32_bufs, &[], rows, &[(2, gather(&table))], 0.0);
        let bf16_bufs = [Buf::I64(tokens.clone()), Buf::Bf16(bits), out];
        let kind = KernelKind::Embedding {
            hidden,
            elem: Elem::Bf16,
        };
        check(kind, &bf16_bufs, &[], rows, &[(2, gather(&rounded))], 0.0);
    }
}

#[test]
fn row_scale_multiplies_each_row_by_its_factor() {
    let (n, rows) = (45, 5);
    let y = random(rows * n, 15, -2.0, 2.0);
    let r = random(rows, 16, 0.1, 3.0);
    let want: Vec<f32> = (0..rows * n).map(|i| r[i / n] * y[i]).collect();
    let bufs = [Buf::F32(y), Buf::F32(r), Buf::F32(vec![0.0; rows * n])];
    check(
        KernelKind::RowScale { n },
        &bufs,
        &[],
        rows,
        &[(2, want)],
        0.0,
    );
}

#[test]
fn binary_adds_and_multiplies_per_row_or_broadcast() {
    let (n, rows) = (45, 5);
    let a = random(rows * n, 13, -2.0, 2.0);
    for (op, b_rows) in [
        (BinOp::Add, true),
        (BinOp::Mul, true),
        (BinOp::Add, false),
        (BinOp::Mul, false),
    ] {
        let b = random(if b_rows { rows * n } else { n }, 14, -2.0, 2.0);
        let want: Vec<f32> = (0..rows * n)
            .map(|i| {
                let y = b[if b_rows { i } else { i % n }];
                match op {
                    BinOp::Add => a[i] + y,
                    BinOp::Mul => a[i] * y,
                }
            })
            .collect();
        let bufs = [
            Buf::F32(a.clone()),
            Buf::F32(b),
            Buf::F32(vec![0.0; rows * n]),
        ];
        check(
            KernelKind::Binary { op, n, b_rows },
            &bufs,
            &[],
            rows,
            &[(2, want)],
            0.0,
        );
    }
}

#[test]
fn kv_write_puts_each_row_at_its_position_of_every_head() {
    let (heads, hd, capacity, rows, pos0) = (3, 20, 16, 5, 9);
    let keys = random(rows * heads * hd, 15, -1.0, 1.0);
    let cache = random(heads * capacity * hd, 16, -1.0, 1.0);
    let mut want = Tensor::new(vec![heads, capacity, hd], cache.clone());
    k::kv_write(
        &mut want,
        &Tensor::new(vec![rows, heads * hd], keys.clone()),
        pos0,
    );
    let bufs = [Buf::F32(keys), Buf::F32(cache)];
    let kind = KernelKind::KvWrite {
        heads,
        head_dim: hd,
    };
    let ints = [pos0 as i64, capacity as i64];
    check(kind, &bufs, &ints, rows, &[(1, want.data)], 0.0);
}

/// The reference softmax of row `r` of `s [rows, ld]`: columns `0..=pos0 + r`, in f64.
fn causal_softmax(s: &[f32], rows: usize, ld: usize, pos0: usize, scale: f64) -> Vec<f32> {
    let mut out = vec![0.0; rows * ld];
    for r in 0..rows {
        let kept = (pos0 + r + 1).min(ld);
        let row = &s[r * ld..r * ld + kept];
        let max = row
            .iter()
            .map(|&v| v as f64 * scale)
            .fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = row
            .iter()
            .map(|&v| (v as f64 * scale - max).exp())
            .collect();
        let sum: f64 = exps.iter().sum();
        for (j, e) in exps.iter().enumerate() {
            out[r * ld + j] = (e / sum) as f32;
        }
    }
    out
}

#[test]
fn softmax_normalises_the_causal_prefix_of_each_row_and_zeroes_the_rest() {
    for (rows, ld, pos0) in [(4, 40, 17), (5, 13, 0), (3, 9, 6)] {
        let scale = 0.3;
        let s = random(rows * ld, 17, -6.0, 6.0);
        let want = causal_softmax(&s, rows, ld, pos0, scale);
        let ints = [pos0 as i64, ld as i64];
        check(
            KernelKind::Softmax { scale },
            &[Buf::F32(s)],
            &ints,
            rows,
            &[(0, want)],
            1e-5,
        );
    }
}

/// 8-lane `exp` goes to libmvec's AVX2 `_ZGVdN8v_expf` where the target has AVX2, and stays
/// a `math` op (scalar `expf` per lane) for a generic x86-64 target; both compute softmax.
#[test]
fn transcendentals_call_libmvec_only_for_avx2_targets() {
    let (rows, ld, pos0, scale) = (6, 45, 3, 0.25);
    let s = random(rows * ld, 5, -8.0, 8.0);
    let want = causal_softmax(&s, rows, ld, pos0, scale);
    let kernel = Kernel {
        symbol: "k".into(),
        kind: KernelKind::Softmax { scale },
    };
    let generic = HostTarget {
        cpu: "x86-64".into(),
        features: String::new(),
    };
    let avx2 = HostTarget {
        cpu: "x86-64-v3".into(),
        features: "+avx,+avx2,+fma".into(),
    };
    let runs_here = std::arch::is_x86_feature_detected!("avx2");
    for (target, libmvec) in [(&generic, false), (&avx2, true)] {
        let dumps = tempfile::tempdir().expect("tempdir");
        let lib = Lib::build_for(std::slice::from_ref(&kernel), target, Some(dumps.path()));
        let ll = std::fs::read_to_string(dumps.path().join("k.ll")).expect("k.ll");
        assert_eq!(ll.contains("@_ZGVdN8v_expf("), libmvec, "{target:?}");
        assert_eq!(target.has_avx2(), libmvec);
        if libmvec && !runs_here {
            continue;
        }
        let mut bufs = [Buf::F32(s.clone())];
        lib.call("k", &mut bufs, &[pos0 as i64, ld as i64], 0, rows);
        assert_close(
            bufs[0].f32(),
            &want,
            1e-5,
            &format!("softmax for {target:?}"),
        );
    }
}
