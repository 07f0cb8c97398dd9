//! Gemv in f32, bf16 and f16, with one and two parts, with and without accumulation, and
//! over a window of a wider weight.

use super::harness::{Buf, check, f16_to_f32, random, to_bf16};
use zambac_engine::Elem;
use zambac_engine::KernelKind;

/// Weights of one part in the stored element type, and the f32 values they hold.
fn weights(elem: Elem, n: usize, seed: u64) -> (Buf, Vec<f32>) {
    let values = random(n, seed, -1.0, 1.0);
    match elem {
        Elem::F32 => (Buf::F32(values.clone()), values),
        Elem::Bf16 => {
            let (bits, rounded) = to_bf16(&values);
            (Buf::Bf16(bits), rounded)
        }
        _ => {
            // Normal f16 values in ±[2⁻⁵, 2⁵): random mantissas, exponents 10..=20.
            let bits: Vec<u16> = values
                .iter()
                .map(|v| {
                    let unit = (v + 1.0) / 2.0;
                    let raw = (unit * 65535.0) as u16;
                    (raw & 0x83FF) | ((10 + raw % 11) << 10)
                })
                .collect();
            let exact = bits.iter().map(|&b| f16_to_f32(b)).collect();
            (Buf::F16(bits), exact)
        }
    }
}

fn gemv(k: usize, rows: &[usize], elem: Elem, accumulate: bool) {
    let x = random(k, 20, -1.0, 1.0);
    let mut bufs = vec![Buf::F32(x.clone())];
    let mut outputs = Vec::new();
    let mut expected = Vec::new();
    for (q, &n) in rows.iter().enumerate() {
        let (stored, w) = weights(elem, n * k, 21 + q as u64);
        bufs.push(stored);
        let y0 = random(n, 30 + q as u64, -1.0, 1.0);
        let want: Vec<f32> = (0..n)
            .map(|r| {
                let dot: f64 = (0..k).map(|j| x[j] as f64 * w[r * k + j] as f64).sum();
                (dot + if accumulate { y0[r] as f64 } else { 0.0 }) as f32
            })
            .collect();
        outputs.push(Buf::F32(if accumulate { y0 } else { vec![0.0; n] }));
        expected.push((1 + rows.len() + q, want));
    }
    bufs.extend(outputs);
    let kind = KernelKind::Gemv {
        k,
        rows: rows.to_vec(),
        elem,
        accumulate,
        row_stride: None,
    };
    check(kind, &bufs, &[], rows.iter().sum(), &expected, 1e-5);
}

#[test]
fn f32_gemv_of_one_part_matches_f64_dots() {
    gemv(203, &[37], Elem::F32, false);
    gemv(256, &[8], Elem::F32, false);
    gemv(5, &[3], Elem::F32, false);
}

#[test]
fn bf16_weights_are_widened_exactly() {
    gemv(96, &[13], Elem::Bf16, false);
    gemv(1000, &[21], Elem::Bf16, false);
}

#[test]
fn f16_weights_are_widened_exactly() {
    gemv(40, &[9], Elem::F16, false);
}

#[test]
fn two_parts_share_one_pass_and_accumulate_when_asked() {
    gemv(96, &[13, 6], Elem::Bf16, true);
    gemv(77, &[4, 9, 7], Elem::F32, false);
    gemv(64, &[10, 3], Elem::F32, true);
    gemv(48, &[40, 70, 17], Elem::Bf16, true);
}

/// `y (+)= x · W[:, from..from+k]ᵀ` for a weight `ld` columns wide: the kernel reads rows
/// `ld` apart from a view that starts at column `from`.
fn windowed_gemv(k: usize, ld: usize, from: usize, n: usize, elem: Elem, accumulate: bool) {
    let x = random(k, 40, -1.0, 1.0);
    let (stored, w) = weights(elem, n * ld, 41);
    let y0 = random(n, 42, -1.0, 1.0);
    let want: Vec<f32> = (0..n)
        .map(|r| {
            let dot: f64 = (0..k)
                .map(|j| x[j] as f64 * w[r * ld + from + j] as f64)
                .sum();
            (dot + if accumulate { y0[r] as f64 } else { 0.0 }) as f32
        })
        .collect();
    // The view starts at column `from`: drop the first `from` elements of the buffer.
    let shifted = match stored {
        Buf::F32(v) => Buf::F32(v[from..].to_vec()),
        Buf::Bf16(v) => Buf::Bf16(v[from..].to_vec()),
        other => other,
    };
    let out = if accumulate { y0 } else { vec![0.0; n] };
    let bufs = [Buf::F32(x), shifted, Buf::F32(out)];
    let kind = KernelKind::Gemv {
        k,
        rows: vec![n],
        elem,
        accumulate,
        row_stride: Some(ld),
    };
    check(kind, &bufs, &[], n, &[(2, want)], 1e-5);
}

#[test]
fn a_window_of_a_wider_weight_reads_rows_a_stride_apart() {
    windowed_gemv(96, 160, 0, 37, Elem::F32, false);
    windowed_gemv(64, 160, 96, 37, Elem::F32, true);
    windowed_gemv(40, 100, 60, 21, Elem::Bf16, true);
}
