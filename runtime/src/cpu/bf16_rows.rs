//! bf16 products with few rows — a batched decode step's `C[m, n] (+)= A[m, k] · Wᵀ` with
//! `m` up to a few dozen sequences — on AVX-512 BF16 (`vdpbf16ps`), without packing the
//! weights.
//!
//! oneDNN's GEMM packs the whole weight block before multiplying, a second and third pass
//! over the weights that a product with 16 rows cannot amortise. Here the weights are
//! streamed once, straight from the engine's mapping: a tile of 4 weight rows is multiplied
//! by up to 8 activation rows at a time (one 16-lane accumulator per output, summed at the
//! end), the weight rows staying in cache while each block of activation rows passes over
//! them, and the blocks prefetch the next 4 weight rows between them (into L2) so that
//! memory never idles while a cached group is multiplied. Only the activations — a few
//! dozen rows, rounded to bf16 anyway — are laid out anew ([`pack`]), so that a tile reads
//! them as one sequential stream. One row (a sequence decoding alone) streams the weights as
//! the generated Gemv does instead ([`stream`]). Every schedule sums each output the same
//! way, so a row of C has the same bits whatever the other rows: a sequence decodes the same
//! alone and in a batch.
//!
//! Measured on one Zen 4 core (2026-12-05; `k = 2048`, 4256 weight rows — one thread's half
//! of the Zamba2-1.2B `in_proj` — streamed from a mapped file): the core executes one
//! 512-bit `vdpbf16ps` per cycle (235 GFLOP/s at 3.67 GHz; a loop of independent ones), and
//! this kernel reaches 161 GFLOP/s at m = 16, 197 at m = 32 and 22 GB/s of weights at m = 1,
//! against 128, 122 and 18 for the previous tiling (4 × 6 with the tail in every step's
//! loads and the next group prefetched by every block); m = 1 has since streamed.
//! Selected at run time on CPUs with AVX-512 BF16 only (the caller checks).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, __m512bh, _MM_HINT_T1, _mm_prefetch, _mm512_castsi512_ps, _mm512_dpbf16_ps,
    _mm512_loadu_si512, _mm512_maskz_loadu_epi16, _mm512_reduce_add_ps, _mm512_setzero_ps,
};

/// Weight rows per tile.
const NR: usize = 4;
/// Activation rows per tile.
const MR: usize = 8;

/// Elements of `m × k` activations in the layout [`product`] reads ([`pack`]).
pub fn packed_len(m: usize, k: usize) -> usize {
    m * k.div_ceil(32) * 32
}

/// Block `q` of the `blocks` blocks of activation rows that pass over a group of weight rows:
/// its first row and its number of rows. Blocks of near-equal size (9 rows as 5 + 4, not
/// 8 + 1: a tile of one row reads the weights for one product per load).
fn block(q: usize, m: usize, blocks: usize) -> (usize, usize) {
    let first = q * m / blocks;
    (first, (q + 1) * m / blocks - first)
}

/// Rounds the `m` activation rows `row(0..m)` (each `k` long) to bf16 into `out` in the
/// order [`product`] reads them: block by block (see [`block`]), and within a block, step by
/// step of 32 elements, the block's rows one after another (zero past `k`). A tile's
/// activation loads are then one sequential stream; read from the rows themselves they were
/// `mr` streams a row apart, and rows 4 KiB apart (k = 2048) fall into the same L1 set, so
/// the activation and weight lines of one step evicted one another. One core, m = 16, a
/// weight of the 1.2B `in_proj`'s shape (8512 × 2048, 35 MB, from memory): 140 GFLOP/s from
/// the rows, 163–168 packed; a whole 1.2B batch-16 decode step's products (`bench --batch
/// 16 --profile`, three alternating rounds): 203 → 184 ms. At k = 768 and 1536 (the
/// Zamba2-100M) the rows do not alias and packing changes nothing measurable.
pub fn pack<'a>(m: usize, k: usize, row: impl Fn(usize) -> &'a [f32], out: &mut Vec<u16>) {
    out.clear();
    out.resize(packed_len(m, k), 0);
    let steps = k.div_ceil(32);
    let blocks = m.div_ceil(MR);
    for q in 0..blocks {
        let (first, mr) = block(q, m, blocks);
        for t in 0..mr {
            let src = row(first + t);
            for (s, chunk) in src.chunks(32).take(steps).enumerate() {
                let at = (first * steps + s * mr + t) * 32;
                if let Some(dst) = out.get_mut(at..at + chunk.len()) {
                    super::dnnl::to_bf16(chunk, dst);
                }
            }
        }
    }
}

/// `C (+)= A · Wᵀ`: `A` is `m × k` activations as [`pack`] lays them out, `W` is `n × k`
/// bf16 (rows `ldw` apart, unit stride along `k`), `C` is `m × n` f32 (rows `ldc` apart).
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16 ([`super::dnnl::bf16_cpu`]); `a` holds
/// [`packed_len`]`(m, k)` elements; `w` and `c` address the elements their shapes and
/// strides describe.
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
    // The blocks of activation rows that pass over one group of weight rows. The first
    // block reads the group from memory, the others from cache, during which memory would
    // idle; so block `q` prefetches rows `q, q + blocks, …` of the next group: the next group
    // arrives while this one is multiplied, at an even rate, whatever the number of blocks.
    // Into L2 (`prefetcht1`), not L1: the 1.2B's batch-16 decode products took 176 ms per
    // step against 195 with `prefetcht0` (six alternating runs each) — in L1, presumably, the
    // next group displaced this group and the activations before their use.
    if m == 1 {
        // SAFETY: the caller's.
        unsafe { stream((n, k), a, w, ldw, c, accumulate) };
        return;
    }
    let blocks = m.div_ceil(MR);
    let steps = k.div_ceil(32);
    let mut j = 0;
    while j < n {
        let nr = NR.min(n - j);
        for q in 0..blocks {
            let (i, mr) = block(q, m, blocks);
            let out = Out {
                c: c.wrapping_add(i * ldc + j),
                ldc,
                cs: 1,
                accumulate,
            };
            // One block streams the rows itself (the hardware prefetcher follows it; software
            // prefetches only got in its way: m = 4 ran at 74 GFLOP/s without, 65 with).
            let pf = Prefetch {
                // A prefetch past the operand is harmless: it never faults.
                rows: w.wrapping_add((j + nr) * ldw),
                ldw,
                first: if blocks > 1 { q } else { usize::MAX },
                step: blocks,
            };
            // SAFETY: rows j..j+nr of W, block q of packed A and the matching block of C lie
            // inside the operands (the caller's contract).
            unsafe {
                let wj = w.add(j * ldw);
                let ai = a.add(i * steps * 32);
                if nr == NR {
                    rows::<NR>(mr, k, ai, wj, ldw, out, pf);
                } else {
                    for r in 0..nr {
                        let out = Out {
                            c: out.c.add(r),
                            ..out
                        };
                        rows::<1>(mr, k, ai, wj.add(r * ldw), ldw, out, pf);
                    }
                }
            }
        }
        j += nr;
    }
}

/// Weight rows one sequence's tile reads at once, each a stream of its own.
const STREAMS: usize = 8;

/// How far ahead (elements) one sequence's tiles prefetch each row into L2: 2 KiB, as the
/// generated Gemv does.
const AHEAD: usize = 1024;

/// [`product`] for one sequence (a decode step alone) at the speed of memory, the way the
/// generated Gemv streams weights: the rows are cut into [`STREAMS`] contiguous stripes and
/// a tile takes one row of each, so that every stream walks consecutive memory, and each
/// row is prefetched [`AHEAD`] into L2. Each output is summed exactly as every other
/// schedule sums it (one accumulator over the steps of 32, then its lanes), so a sequence
/// gets the same bits alone as in a batch.
///
/// # Safety
/// As [`product`] with `m = 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn stream(
    (n, k): (usize, usize),
    a: *const u16,
    w: *const u16,
    ldw: usize,
    c: *mut f32,
    accumulate: bool,
) {
    let stripe = n / STREAMS;
    let pf = Prefetch {
        rows: w,
        ldw,
        first: usize::MAX,
        step: 1,
    };
    for i in 0..stripe {
        let out = Out {
            c: c.wrapping_add(i),
            ldc: 0,
            cs: stripe,
            accumulate,
        };
        // SAFETY: rows i, i + stripe, … of W and the matching outputs lie inside the
        // operands.
        unsafe { tile::<STREAMS, 1, AHEAD>(k, a, w.add(i * ldw), stripe * ldw, out, pf) };
    }
    for r in stripe * STREAMS..n {
        let out = Out {
            c: c.wrapping_add(r),
            ldc: 0,
            cs: 1,
            accumulate,
        };
        // SAFETY: row r of W and output r lie inside the operands.
        unsafe { tile::<1, 1, AHEAD>(k, a, w.add(r * ldw), ldw, out, pf) };
    }
}

/// Where a tile's outputs go: C's block, rows `ldc` apart, added to or overwritten.
#[derive(Clone, Copy)]
struct Out {
    c: *mut f32,
    ldc: usize,
    /// Elements between the outputs of consecutive weight rows of the tile.
    cs: usize,
    accumulate: bool,
}

/// Which rows of the next group of weight rows a tile prefetches: `first`, `first + step`, …
/// below the group size, at the offsets the tile is reading.
#[derive(Clone, Copy)]
struct Prefetch {
    rows: *const u16,
    ldw: usize,
    first: usize,
    step: usize,
}

/// `mr ≤ MR` activation rows against `NR_` weight rows: a tile of exactly that size.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows<const NR_: usize>(
    mr: usize,
    k: usize,
    a: *const u16,
    w: *const u16,
    ldw: usize,
    out: Out,
    pf: Prefetch,
) {
    // SAFETY: the caller's block (a packed block of mr rows of A, mr rows of C, NR_ rows of
    // W).
    unsafe {
        match mr {
            8 => tile::<NR_, 8, 0>(k, a, w, ldw, out, pf),
            7 => tile::<NR_, 7, 0>(k, a, w, ldw, out, pf),
            6 => tile::<NR_, 6, 0>(k, a, w, ldw, out, pf),
            5 => tile::<NR_, 5, 0>(k, a, w, ldw, out, pf),
            4 => tile::<NR_, 4, 0>(k, a, w, ldw, out, pf),
            3 => tile::<NR_, 3, 0>(k, a, w, ldw, out, pf),
            2 => tile::<NR_, 2, 0>(k, a, w, ldw, out, pf),
            _ => tile::<NR_, 1, 0>(k, a, w, ldw, out, pf),
        }
    }
}

/// `NR_ × MR_` outputs, each a 16-lane accumulator summed at the end. The loop over whole
/// 32-element steps loads without masks; the last partial step is masked. With `AHEAD_ > 0`
/// the tile also prefetches each of its own rows that many elements ahead (see [`stream`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const NR_: usize, const MR_: usize, const AHEAD_: usize>(
    k: usize,
    a: *const u16,
    w: *const u16,
    ldw: usize,
    out: Out,
    pf: Prefetch,
) {
    let mut acc = [[_mm512_setzero_ps(); MR_]; NR_];
    let whole = k / 32 * 32;
    let mut kk = 0;
    // SAFETY: 32 elements from `kk < whole` lie inside each row.
    unsafe {
        while kk < whole {
            let mut r = pf.first;
            while r < NR_ {
                _mm_prefetch::<_MM_HINT_T1>(pf.rows.wrapping_add(r * pf.ldw + kk).cast());
                r += pf.step;
            }
            if AHEAD_ > 0 {
                for r in 0..NR_ {
                    _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(r * ldw + kk + AHEAD_).cast());
                }
            }
            step(&mut acc, a, (w, ldw), kk, None);
            kk += 32;
        }
    }
    if kk < k {
        // SAFETY: `k - kk` elements from `kk` lie inside each row; the masked loads read no
        // further.
        unsafe { step(&mut acc, a, (w, ldw), kk, Some((1u32 << (k - kk)) - 1)) };
    }
    for (r, row) in acc.iter().enumerate() {
        for (s, v) in row.iter().enumerate() {
            // SAFETY: output (s, r) of the block lies inside C.
            unsafe {
                let o = out.c.add(s * out.ldc + r * out.cs);
                let x = _mm512_reduce_add_ps(*v);
                *o = if out.accumulate { *o + x } else { x };
            }
        }
    }
}

/// One step of [`tile`]: the `NR_` weight rows' 32 elements from `kk` (`mask`: the lanes
/// of a last, partial step) against each activation row's (packed, zero past `k`), into
/// the accumulators.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn step<const NR_: usize, const MR_: usize>(
    acc: &mut [[__m512; MR_]; NR_],
    a: *const u16,
    (w, ldw): (*const u16, usize),
    kk: usize,
    mask: Option<u32>,
) {
    // SAFETY: the caller's elements (all 32, or the lanes of `mask`) lie inside each weight
    // row.
    let get = |p: *const u16| unsafe {
        bh(match mask {
            None => load(p),
            Some(m) => load_masked(p, m),
        })
    };
    // SAFETY: as above.
    let wv: [__m512bh; NR_] = std::array::from_fn(|r| get(unsafe { w.add(r * ldw + kk) }));
    for s in 0..MR_ {
        // SAFETY: step `kk / 32` of the packed block holds 32 elements of each of its rows.
        let av = bh(unsafe { load(a.add((kk / 32 * MR_ + s) * 32)) });
        for (row, wr) in acc.iter_mut().zip(&wv) {
            if let Some(slot) = row.get_mut(s) {
                *slot = _mm512_dpbf16_ps(*slot, *wr, av);
            }
        }
    }
}

/// 32 bf16 from `p`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(p: *const u16) -> __m512 {
    // SAFETY: the caller's 32 elements lie inside the row.
    unsafe { _mm512_castsi512_ps(_mm512_loadu_si512(p.cast())) }
}

/// 32 bf16 from `p`, the lanes outside `mask` zero.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load_masked(p: *const u16, mask: u32) -> __m512 {
    // SAFETY: the caller's lanes lie inside the row.
    unsafe { _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask, p.cast())) }
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
            (4, 10, 300, 300, 12),
            (2, 6, 64, 70, 6),
            (36, 5, 129, 129, 5),
            // Rows of several KiB, as in the released models.
            (16, 9, 2100, 2110, 12),
            (9, 5, 1537, 1537, 5),
            // One row (the streaming schedule): stripes with and without leftover rows.
            (1, 37, 2100, 2110, 40),
            (1, 64, 96, 96, 64),
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
                let rows: Vec<Vec<f32>> = a
                    .chunks(k)
                    .map(|r| r.iter().map(|&b| widen(b)).collect())
                    .collect();
                let mut packed = vec![7; 3];
                pack(m, k, |r| &rows[r], &mut packed);
                assert_eq!(packed.len(), packed_len(m, k));
                // SAFETY: this CPU has the extensions; the buffers hold the shapes.
                unsafe {
                    product(
                        (m, n, k),
                        packed.as_ptr(),
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

    /// A row of A gets the same bits whatever the other rows and however many: one row
    /// (the streaming schedule), a block of few, blocks of eight.
    #[test]
    fn each_row_gets_the_bits_it_gets_alone() {
        if !super::super::dnnl::bf16_cpu() {
            eprintln!("no AVX-512 BF16 on this CPU");
            return;
        }
        let (n, k) = (75, 1000);
        let w: Vec<u16> = (0..n * k)
            .map(|i| zambac_engine::bf16_bits(((i * 104_729 % 997) as f32 - 498.0) * 2e-3))
            .collect();
        let rows: Vec<Vec<f32>> = (0..20)
            .map(|r| {
                (0..k)
                    .map(|i| (((r * k + i) * 7919 % 1000) as f32 - 500.0) * 1e-3)
                    .collect()
            })
            .collect();
        let product_of = |m: usize| {
            let mut packed = Vec::new();
            pack(m, k, |r| &rows[r], &mut packed);
            let mut c = vec![0.0f32; m * n];
            // SAFETY: this CPU has the extensions; the buffers hold the shapes.
            unsafe {
                product(
                    (m, n, k),
                    packed.as_ptr(),
                    w.as_ptr(),
                    k,
                    c.as_mut_ptr(),
                    n,
                    false,
                )
            };
            c
        };
        let alone = product_of(1);
        for m in [2, 3, 8, 9, 20] {
            let c = product_of(m);
            for j in 0..n {
                assert_eq!(c[j].to_bits(), alone[j].to_bits(), "m = {m}, C[0,{j}]");
            }
        }
    }
}
