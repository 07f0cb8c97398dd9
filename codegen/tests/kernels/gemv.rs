//! Gemv in f32, bf16 and f16, with one and two parts, with and without accumulation, and
//! over a window of a wider weight.

use super::harness::{Buf, Lib, check, f16_to_f32, random, to_bf16};
use zambac_codegen::kernels::Variant;
use zambac_engine::Elem;
use zambac_engine::Kernel;
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

/// The batched form of a Gemv (one launch for `n` sequences, each weight row read once for
/// all) gives every sequence the bits the single form gives it alone — the GPU schedule
/// run on the host, so the same loops, lanes and butterflies as on the GPU.
fn batched_gemv_matches_the_single_form_bit_for_bit(
    k: usize,
    rows: &[usize],
    elem: Elem,
    accumulate: bool,
    row_stride: Option<usize>,
) {
    let kernel = Kernel {
        symbol: "g".into(),
        kind: KernelKind::Gemv {
            k,
            rows: rows.to_vec(),
            elem,
            accumulate,
            row_stride,
        },
    };
    let kernels = std::slice::from_ref(&kernel);
    let single = Lib::build_gpu_schedule(kernels);
    let batched = Lib::build_gpu_schedule_variant(kernels, Variant::Batched);
    let ld = row_stride.unwrap_or(k);
    let parts: Vec<Buf> = rows
        .iter()
        .enumerate()
        .map(|(q, &n)| weights(elem, (n - 1) * ld + k, 40 + q as u64).0)
        .collect();
    let grid: usize = rows.iter().sum();
    // Inputs and outputs at strides wider than a row, the gaps marked to catch stray writes.
    let (xs, ys) = (k + 3, rows.iter().max().copied().unwrap_or(0) + 5);
    for n in [1usize, 3, 4, 6, 9] {
        let x = random(n * xs, 50 + n as u64, -1.0, 1.0);
        let y0: Vec<Vec<f32>> = (0..rows.len())
            .map(|q| random(n * ys, 60 + q as u64, -1.0, 1.0))
            .collect();
        let mut bufs = vec![Buf::F32(x.clone())];
        bufs.extend(parts.iter().cloned());
        bufs.extend(y0.iter().cloned().map(Buf::F32));
        batched.call("g", &mut bufs, &[n as i64, xs as i64, ys as i64], 0, grid);
        for b in 0..n {
            let mut alone = vec![Buf::F32(x[b * xs..b * xs + k].to_vec())];
            alone.extend(parts.iter().cloned());
            alone.extend(
                y0.iter()
                    .zip(rows)
                    .map(|(y, &r)| Buf::F32(y[b * ys..b * ys + r].to_vec())),
            );
            single.call("g", &mut alone, &[], 0, grid);
            for (q, &r) in rows.iter().enumerate() {
                let got = &bufs[1 + rows.len() + q].f32()[b * ys..(b + 1) * ys];
                let want = alone[1 + rows.len() + q].f32();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got[..r]),
                    bits(want),
                    "k {k}, {elem}, part {q}, sequence {b} of {n}"
                );
                assert_eq!(
                    bits(&got[r..]),
                    bits(&y0[q][b * ys + r..(b + 1) * ys]),
                    "k {k}, part {q}, sequence {b} of {n}: a write past the row"
                );
            }
        }
    }
}

#[test]
fn a_batched_gemv_gives_each_sequence_the_bits_it_gets_alone() {
    // Whole rounds of the warp (256 · 2), a tail only, rounds and a tail; two parts with
    // accumulation; bf16 and f16 weights; a window of a wider weight.
    batched_gemv_matches_the_single_form_bit_for_bit(512, &[7], Elem::F32, false, None);
    batched_gemv_matches_the_single_form_bit_for_bit(37, &[5, 3], Elem::F32, true, None);
    batched_gemv_matches_the_single_form_bit_for_bit(600, &[6], Elem::Bf16, false, None);
    batched_gemv_matches_the_single_form_bit_for_bit(300, &[4, 2], Elem::F16, true, None);
    batched_gemv_matches_the_single_form_bit_for_bit(260, &[3], Elem::Bf16, false, Some(700));
}

#[test]
fn only_a_gemv_on_a_gpu_schedule_has_a_batched_form() {
    let mlir = zambac_codegen::MlirContext::new();
    let gemv = Kernel {
        symbol: "g".into(),
        kind: KernelKind::Gemv {
            k: 8,
            rows: vec![2],
            elem: Elem::F32,
            accumulate: false,
            row_stride: None,
        },
    };
    let norm = Kernel {
        symbol: "n".into(),
        kind: KernelKind::RmsNorm {
            d: 8,
            groups: 1,
            eps: 1e-5,
        },
    };
    use zambac_codegen::kernels::{Target, VectorMath, build_module_variant};
    let build = |kernel: &Kernel, target| {
        build_module_variant(
            mlir.context(),
            kernel,
            target,
            VectorMath::Ops,
            Variant::Batched,
        )
        .map(|_| ())
    };
    assert!(build(&gemv, Target::Gpu).is_ok());
    assert!(build(&gemv, Target::HostWithGpuSchedule).is_ok());
    let error = build(&gemv, Target::Host).unwrap_err().to_string();
    assert!(error.contains("only a Gemv on a GPU schedule"), "{error}");
    assert!(build(&norm, Target::Gpu).is_err());
}

/// The GPU schedule reads a row and its input with 16-byte vector loads when both start at
/// a 16-byte boundary, element by element otherwise: the same additions in the same order,
/// so the same bits — checked by placing the operands at a boundary and one element past it.
#[test]
fn aligned_and_misaligned_rows_give_the_same_bits() {
    for (elem, k, rows) in [
        (Elem::F32, 600, 5),
        (Elem::Bf16, 520, 3),
        (Elem::F16, 256, 2),
    ] {
        let kernel = Kernel {
            symbol: "g".into(),
            kind: KernelKind::Gemv {
                k,
                rows: vec![rows],
                elem,
                accumulate: false,
                row_stride: None,
            },
        };
        let lib = Lib::build_gpu_schedule(std::slice::from_ref(&kernel));
        let x = random(k, 71, -1.0, 1.0);
        let (stored, _) = weights(elem, rows * k, 70);
        let w_bytes: Vec<u8> = match &stored {
            Buf::F32(v) => v.iter().flat_map(|f| f.to_le_bytes()).collect(),
            Buf::Bf16(v) | Buf::F16(v) => v.iter().flat_map(|h| h.to_le_bytes()).collect(),
            Buf::I64(_) => unreachable!("weights are floats"),
        };
        let w_elem = w_bytes.len() / (rows * k);
        let results: Vec<Vec<u32>> = [0usize, 1]
            .iter()
            .map(|&shift| {
                // 16-byte aligned storage, the operands `shift` elements into it.
                let mut xs = vec![0u128; (4 * (k + 1)).div_ceil(16)];
                let mut ws = vec![0u128; (w_bytes.len() + w_elem).div_ceil(16)];
                let x_bytes: Vec<u8> = x.iter().flat_map(|f| f.to_le_bytes()).collect();
                // SAFETY: both copies stay inside the storage just sized for them.
                unsafe {
                    let xp = xs.as_mut_ptr().cast::<u8>().add(4 * shift);
                    std::ptr::copy_nonoverlapping(x_bytes.as_ptr(), xp, x_bytes.len());
                    let wp = ws.as_mut_ptr().cast::<u8>().add(w_elem * shift);
                    std::ptr::copy_nonoverlapping(w_bytes.as_ptr(), wp, w_bytes.len());
                }
                let mut y = vec![0f32; rows];
                let views = [
                    // SAFETY: `shift` elements lie inside each storage.
                    unsafe { xs.as_mut_ptr().cast::<u8>().add(4 * shift) },
                    unsafe { ws.as_mut_ptr().cast::<u8>().add(w_elem * shift) },
                    y.as_mut_ptr().cast::<u8>(),
                ];
                lib.call_raw("g", &views, &[], 0, rows);
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        assert_eq!(results[0], results[1], "{elem}: k {k}");
    }
}
