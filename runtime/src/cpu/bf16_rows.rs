//! bf16 products with few rows — a batched decode step's `C[m, n] (+)= A[m, k] · Wᵀ` with
//! `m` up to a few dozen sequences — on AVX-512 BF16 (`vdpbf16ps`), without packing.
//!
//! oneDNN's GEMM packs the whole weight block before multiplying, a second and third pass
//! over the weights that a product with 16 rows cannot amortise: on the Zamba2-1.2B
//! `in_proj` shape (m = 16, n = 8512, k = 2048, Zen 4, 2 threads, in a batched decode step)
//! it ran at 113 GFLOP/s, this kernel at 185 (one core alone: 92, about the core's bf16
//! peak: Zen 4 issues a 512-bit `vdpbf16ps` every other cycle).
//! Here the weights are streamed once, straight from the engine's mapping: a tile of 4 weight
//! rows is multiplied by 6 activation rows at a time (24 accumulators in registers, 10 loads
//! per 24 `vdpbf16ps`), the weight rows staying in L1 while every block of activation rows
//! passes over them. Selected at run time on CPUs with AVX-512 BF16 only (the caller checks).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, __m512bh, __m512i, _MM_HINT_T0, _mm_prefetch, _mm512_dpbf16_ps, _mm512_loadu_si512,
    _mm512_maskz_loadu_epi16, _mm512_reduce_add_ps, _mm512_setzero_ps,
};

/// Weight rows per tile.
const NR: usize = 4;
/// Activation rows per tile.
const MR: usize = 6;

/// `C (+)= A · Wᵀ`: `A` is `m × k` bf16 (rows `k` apart), `W` is `n × k` bf16 (rows `ldw`
/// apart, unit stride along `k`), `C` is `m × n` f32 (rows `ldc` apart).
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16 ([`super::dnnl::bf16_cpu`]); every pointer addresses
/// the elements its shape and stride describe.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn product(
    (m, n, k): (usize, usize, usize),
    a: *const u16,
    w: *const u16,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut j = 0;
    while j < n {
        let nr = NR.min(n - j);
        let mut i = 0;
        while i < m {
            let mr = MR.min(m - i);
            // SAFETY: rows j..j+nr of W, i..i+mr of A and the matching block of C lie inside
            // the operands (the caller's contract).
            unsafe {
                let wj = w.add(j * ldw);
                let ai = a.add(i * k);
                let cij = c.add(i * ldc + j);
                match (nr, mr) {
                    (NR, MR) => tile::<NR, MR>(k, ai, wj, ldw, cij, ldc, accumulate),
                    (NR, _) => edge::<NR>(mr, k, ai, wj, ldw, cij, ldc, accumulate),
                    _ => {
                        for r in 0..nr {
                            edge::<1>(mr, k, ai, wj.add(r * ldw), ldw, cij.add(r), ldc, accumulate);
                        }
                    }
                }
            }
            i += mr;
        }
        j += nr;
    }
}

/// `NR_ × MR_` outputs with every accumulator in a register.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const NR_: usize, const MR_: usize>(
    k: usize,
    a: *const u16,
    w: *const u16,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); MR_]; NR_];
    let mut kk = 0;
    while kk < k {
        let len = (k - kk).min(32);
        let mask = if len == 32 {
            u32::MAX
        } else {
            (1u32 << len) - 1
        };
        // SAFETY: `len` elements from `kk` lie inside each row; the masked load reads no
        // further.
        unsafe {
            let mut wv = [_mm512_setzero_ps(); NR_];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = load(w.add(r * ldw + kk), mask);
                // The next tile's rows, which the hardware prefetcher would find too late
                // (a row of a small model is a few dozen cache lines). A prefetch past the
                // operand is harmless: it never faults.
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((r + NR_) * ldw + kk).cast());
            }
            for s in 0..MR_ {
                let av = bh(load(a.add(s * k + kk), mask));
                for (row, wr) in acc.iter_mut().zip(&wv) {
                    if let Some(slot) = row.get_mut(s) {
                        *slot = _mm512_dpbf16_ps(*slot, bh(*wr), av);
                    }
                }
            }
        }
        kk += 32;
    }
    for (r, row) in acc.iter().enumerate() {
        for (s, v) in row.iter().enumerate() {
            // SAFETY: output (s, r) of the block lies inside C.
            unsafe {
                let out = c.add(s * ldc + r);
                let x = _mm512_reduce_add_ps(*v);
                *out = if accumulate { *out + x } else { x };
            }
        }
    }
}

/// Fewer than `MR` activation rows: a tile of exactly that many.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn edge<const NR_: usize>(
    mr: usize,
    k: usize,
    a: *const u16,
    w: *const u16,
    ldw: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's block (mr rows of A and C, NR_ rows of W).
    unsafe {
        match mr {
            5 => tile::<NR_, 5>(k, a, w, ldw, c, ldc, accumulate),
            4 => tile::<NR_, 4>(k, a, w, ldw, c, ldc, accumulate),
            3 => tile::<NR_, 3>(k, a, w, ldw, c, ldc, accumulate),
            2 => tile::<NR_, 2>(k, a, w, ldw, c, ldc, accumulate),
            _ => {
                for s in 0..mr {
                    tile::<NR_, 1>(k, a.add(s * k), w, ldw, c.add(s * ldc), ldc, accumulate)
                }
            }
        }
    }
}

/// 32 bf16 from `p`, the lanes outside `mask` zero.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load(p: *const u16, mask: u32) -> __m512 {
    // SAFETY: the caller's lanes lie inside the row.
    unsafe {
        let v: __m512i = if mask == u32::MAX {
            _mm512_loadu_si512(p.cast())
        } else {
            _mm512_maskz_loadu_epi16(mask, p.cast())
        };
        std::mem::transmute::<__m512i, __m512>(v)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn bh(v: __m512) -> __m512bh {
    // SAFETY: a bit-for-bit reinterpretation of 512 bits.
    unsafe { std::mem::transmute::<__m512, __m512bh>(v) }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Every tile shape and edge (rows of W and of A not multiples of the tile, k not a
    /// multiple of 32, padded C) equals the f64 product of the bf16 operands.
    #[test]
    fn equals_the_exact_product_of_the_operands() {
        if !super::super::dnnl::bf16_cpu() {
            eprintln!("no AVX-512 BF16 on this CPU");
            return;
        }
        let bits = zambac_engine::bf16_bits;
        let widen = |b: u16| f32::from_bits(u32::from(b) << 16);
        for (m, n, k, ldw, ldc) in [
            (16, 37, 70, 70, 40),
            (6, 4, 32, 32, 4),
            (1, 9, 5, 8, 9),
            (13, 8, 96, 100, 8),
            (7, 3, 33, 33, 5),
            (11, 6, 40, 40, 6),
            (8, 5, 64, 64, 5),
            (9, 4, 31, 31, 4),
        ] {
            let a: Vec<u16> = (0..m * k)
                .map(|i| bits(((i * 7919 % 1000) as f32 - 500.0) * 1e-3))
                .collect();
            let w: Vec<u16> = (0..n * ldw)
                .map(|i| bits(((i * 104_729 % 997) as f32 - 498.0) * 2e-3))
                .collect();
            for accumulate in [false, true] {
                let before: Vec<f32> = (0..m * ldc).map(|i| (i % 13) as f32 * 0.25).collect();
                let mut c = before.clone();
                // SAFETY: this CPU has the extensions; the buffers hold the shapes.
                unsafe {
                    product(
                        (m, n, k),
                        a.as_ptr(),
                        w.as_ptr(),
                        ldw,
                        c.as_mut_ptr(),
                        ldc,
                        accumulate,
                    )
                };
                for i in 0..m {
                    for j in 0..ldc {
                        let got = f64::from(c[i * ldc + j]);
                        if j >= n {
                            assert_eq!(got, f64::from(before[i * ldc + j]), "padding C[{i},{j}]");
                            continue;
                        }
                        let mut want: f64 = (0..k)
                            .map(|p| {
                                f64::from(widen(a[i * k + p])) * f64::from(widen(w[j * ldw + p]))
                            })
                            .sum();
                        if accumulate {
                            want += f64::from(before[i * ldc + j]);
                        }
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{m}x{n}x{k}: C[{i},{j}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
