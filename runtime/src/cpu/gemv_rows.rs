//! A batched decode step's products, `y_s = W · x_s` for each of its B sequences, summed in
//! the order of the engine's own host Gemv ([`zambac_engine::gemv_main_step`]), so that a
//! sequence decoded in a batch gets bit for bit the logits it gets decoded alone — whatever
//! else is in the batch, and however many sequences that is.
//!
//! The weights are streamed once for all sequences: a tile of weight rows is multiplied by
//! a few sequences' inputs at a time (one 8-lane accumulator per output, the Gemv's), the
//! rows staying in cache while the other tiles of sequences pass over them — 4 rows × 2
//! sequences in AVX2's 16 vector registers, 4 × 4 where AVX-512 VL gives 32 ([`Path`]). The
//! inputs are packed first ([`pack_row`]) so that the main loop reads bf16 rows as the Gemv
//! does — 16 weights as eight 32-bit lanes, the even elements `lane << 16` and the odd ones
//! `lane & 0xffff0000` — against the inputs' even and odd elements, stored contiguously.
//!
//! The arithmetic is IEEE single precision with fused multiply-adds throughout, so every
//! path — the vector ones, chosen at run time, and the scalar one for CPUs without AVX2 and
//! FMA — computes the same bits.

use zambac_engine::{Elem, GEMV_LANES, gemv_main_step};

/// Lanes of an accumulator.
const L: usize = GEMV_LANES;
/// Weight rows per tile on the AVX2 path: a block of rows a thread takes is best a multiple
/// of it.
pub const TILE_ROWS: usize = 4;
const R: usize = TILE_ROWS;
/// Sequences per tile on the AVX2 path.
const S: usize = 2;

/// Lays out one sequence's input `x` (`k` f32) in `out` as [`product`] reads it: for bf16
/// weights each 16-element chunk of the main loop's range holds the chunk's eight even
/// elements, then its eight odd ones; everything else stays in place.
pub fn pack_row(x: &[f32], elem: Elem, out: &mut [f32]) {
    for (d, v) in out.iter_mut().zip(x) {
        *d = *v;
    }
    if elem != Elem::Bf16 {
        return;
    }
    let chunks = x.len() / gemv_main_step(elem) * gemv_main_step(elem) / (2 * L);
    for (src, d) in x
        .chunks_exact(2 * L)
        .zip(out.chunks_exact_mut(2 * L))
        .take(chunks)
    {
        let (even, odd) = d.split_at_mut(L);
        for ((e, o), pair) in even.iter_mut().zip(odd).zip(src.chunks_exact(2)) {
            if let [a, b] = pair {
                (*e, *o) = (*a, *b);
            }
        }
    }
}

/// A weight operand: `n` rows of `k` elements of `elem`, `ld` elements apart.
#[derive(Clone, Copy)]
pub struct Weights {
    pub ptr: *const u8,
    pub elem: Elem,
    pub ld: usize,
}

/// `y[s·ldy + r] = x_s · W[r]` for sequences `s < m` and weight rows `r` in `rows`; `xp` is
/// the inputs, `k` apart, each as [`pack_row`] lays it out.
///
/// # Safety
/// `xp` holds `m·k` f32; `w` holds the rows of `rows` (`ld` elements apart, `k` each, of
/// `w.elem`: f32 or bf16); `y` holds `m` rows of `ldy ≥ rows.end` f32.
pub unsafe fn product(
    (m, k): (usize, usize),
    rows: std::ops::Range<usize>,
    xp: *const f32,
    w: Weights,
    y: *mut f32,
    ldy: usize,
) -> Result<(), String> {
    // SAFETY: the caller's; `Path::best` is available on this CPU.
    unsafe { product_on(Path::best(), (m, k), rows, xp, w, y, ldy) }
}

/// The code a product runs: all compute the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Plain arrays, for CPUs without AVX2 and FMA.
    Scalar,
    /// AVX2 and FMA: tiles of [`R`] × [`S`] in the 16 vector registers. 4 × 2 rather than
    /// 2 × 4 (each input read once per 4 weight rows; the path forced on this Zen 4,
    /// `--batch 16 --bf16-products off --profile`, two rounds): the 1.2B f32 step's
    /// products 618 / 643 → 565 / 592 ms, its exact bf16 ones 502 / 507 → 413 / 411, the
    /// 100M f32's 52.7 / 53.1 → 45.7 / 48.0.
    Avx2,
    /// The same 8-lane code given AVX-512 VL's 32 registers: tiles of [`WIDE_R`] ×
    /// [`WIDE_S`]. Batch 16, exact products (`bench --batch 16 --bf16-products off
    /// --profile`, three alternating rounds, Zen 4): the 1.2B f32 step's products 610–622 ms
    /// in 2 × 4 tiles against 439–467 in 4 × 4 (OpenBLAS, before: 586–634), the 100M's
    /// 52–54 against 44–45 (OpenBLAS 42–46).
    Wide,
}

impl Path {
    /// The fastest path this CPU runs.
    fn best() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") && has!("avx512vl") {
                    Path::Wide
                } else {
                    Path::Avx2
                };
            }
        }
        Path::Scalar
    }
}

/// [`product`] on `path`.
///
/// # Safety
/// As [`product`]; the CPU has what `path` needs.
unsafe fn product_on(
    path: Path,
    (m, k): (usize, usize),
    rows: std::ops::Range<usize>,
    xp: *const f32,
    w: Weights,
    y: *mut f32,
    ldy: usize,
) -> Result<(), String> {
    if !matches!(w.elem, Elem::F32 | Elem::Bf16) {
        return Err(format!("a batched Gemv of {} weights", w.elem));
    }
    let (rt, st) = if path == Path::Wide {
        (WIDE_R, WIDE_S)
    } else {
        (R, S)
    };
    let mut r = rows.start;
    while r < rows.end {
        let nr = rt.min(rows.end - r);
        let mut s = 0;
        while s < m {
            let ns = st.min(m - s);
            let t = Tile {
                k,
                xp: xp.wrapping_add(s * k),
                w: Weights {
                    ptr: w.ptr.wrapping_add(r * w.ld * w.elem.size()),
                    ..w
                },
                y: y.wrapping_add(s * ldy + r),
                ldy,
            };
            // SAFETY: rows r..r+nr and sequences s..s+ns lie inside the operands (the
            // caller's contract); the CPU has what `path` needs.
            unsafe {
                match path {
                    #[cfg(target_arch = "x86_64")]
                    Path::Wide => avx2::tile_wide(&t, nr, ns),
                    #[cfg(target_arch = "x86_64")]
                    Path::Avx2 => avx2::tile(&t, nr, ns),
                    _ => tile_with::<Scalar>(&t, nr, ns),
                }
            }
            s += ns;
        }
        r += nr;
    }
    Ok(())
}

/// One tile's operands: `nr ≤ R` weight rows from `w`, `ns ≤ S` packed inputs from `xp`.
struct Tile {
    k: usize,
    xp: *const f32,
    w: Weights,
    y: *mut f32,
    ldy: usize,
}

/// An accumulator's lanes, in registers or in an array: the operations the main loop needs.
trait Lanes: Copy {
    fn zero() -> Self;
    /// `L` f32 from `p`.
    unsafe fn load(p: *const f32) -> Self;
    /// `2·L` bf16 from `p` as their even and odd elements, widened.
    unsafe fn pairs(p: *const u16) -> (Self, Self);
    /// `a·b + c`, rounded once.
    fn fma(a: Self, b: Self, c: Self) -> Self;
    fn lanes(self) -> [f32; L];
}

/// Plain arrays: the reference and the path for CPUs without AVX2 or FMA.
#[derive(Clone, Copy)]
struct Scalar([f32; L]);

impl Lanes for Scalar {
    fn zero() -> Self {
        Scalar([0.0; L])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller's L elements.
        Scalar(std::array::from_fn(|i| unsafe { *p.add(i) }))
    }
    unsafe fn pairs(p: *const u16) -> (Self, Self) {
        // SAFETY: the caller's 2·L elements.
        let at = |i: usize| f32::from_bits(u32::from(unsafe { *p.add(i) }) << 16);
        (
            Scalar(std::array::from_fn(|i| at(2 * i))),
            Scalar(std::array::from_fn(|i| at(2 * i + 1))),
        )
    }
    fn fma(a: Self, b: Self, c: Self) -> Self {
        let mut out = c.0;
        for ((o, x), y) in out.iter_mut().zip(a.0).zip(b.0) {
            *o = x.mul_add(y, *o);
        }
        Scalar(out)
    }
    fn lanes(self) -> [f32; L] {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_and_si256, _mm256_castsi256_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_loadu_si256, _mm256_set1_epi32, _mm256_setzero_ps, _mm256_slli_epi32,
        _mm256_storeu_ps,
    };

    use super::{L, Lanes, Tile, tile_with};

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    impl Lanes for Avx2 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: only reached from `tile`, which requires AVX2.
            Avx2(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the caller's L elements; AVX2 as above.
            Avx2(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn pairs(p: *const u16) -> (Self, Self) {
            // SAFETY: the caller's 2·L elements; AVX2 as above.
            unsafe {
                let lanes = _mm256_loadu_si256(p.cast());
                let even = _mm256_slli_epi32::<16>(lanes);
                let odd = _mm256_and_si256(lanes, _mm256_set1_epi32(-0x1_0000));
                (
                    Avx2(_mm256_castsi256_ps(even)),
                    Avx2(_mm256_castsi256_ps(odd)),
                )
            }
        }
        #[inline(always)]
        fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: FMA as above.
            Avx2(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
        }
        #[inline(always)]
        fn lanes(self) -> [f32; L] {
            let mut out = [0.0; L];
            // SAFETY: L f32 into `out`; AVX as above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) };
            out
        }
    }

    /// [`tile_with`] in AVX2 registers.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the tile's operands as [`super::product`] requires.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(t: &Tile, nr: usize, ns: usize) {
        // SAFETY: the caller's.
        unsafe { tile_with::<Avx2>(t, nr, ns) }
    }

    /// [`super::tile_wide_with`] in AVX2 registers, 32 of them with AVX-512 VL.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA, AVX-512 F and VL; the tile's operands as
    /// [`super::product`] requires.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub(super) unsafe fn tile_wide(t: &Tile, nr: usize, ns: usize) {
        // SAFETY: the caller's.
        unsafe { super::tile_wide_with::<Avx2>(t, nr, ns) }
    }
}

/// The tile's `nr × ns` outputs (`nr ≤ R`, `ns ≤ S`), each summed in the Gemv's order: a
/// tile of exactly that size, so that its accumulators are registers.
///
/// # Safety
/// As [`product`]; `V`'s operations are available on this CPU.
#[inline(always)]
unsafe fn tile_with<V: Lanes>(t: &Tile, nr: usize, ns: usize) {
    // SAFETY: the caller's.
    unsafe {
        match (nr, ns) {
            (4, 2) => sized::<V, 4, 2>(t),
            (4, _) => sized::<V, 4, 1>(t),
            (3, 2) => sized::<V, 3, 2>(t),
            (3, _) => sized::<V, 3, 1>(t),
            (2, 2) => sized::<V, 2, 2>(t),
            (2, _) => sized::<V, 2, 1>(t),
            (_, 2) => sized::<V, 1, 2>(t),
            _ => sized::<V, 1, 1>(t),
        }
    }
}

/// Weight rows and sequences per tile where 32 vector registers are available.
const WIDE_R: usize = 4;
const WIDE_S: usize = 4;

/// [`tile_with`] for tiles of up to [`WIDE_R`] × [`WIDE_S`].
///
/// # Safety
/// As [`tile_with`].
#[inline(always)]
unsafe fn tile_wide_with<V: Lanes>(t: &Tile, nr: usize, ns: usize) {
    // SAFETY: the caller's.
    unsafe {
        match (nr, ns) {
            (4, 4) => sized::<V, 4, 4>(t),
            (4, 3) => sized::<V, 4, 3>(t),
            (3, 4) => sized::<V, 3, 4>(t),
            (3, 3) => sized::<V, 3, 3>(t),
            (2, 4) => sized::<V, 2, 4>(t),
            (2, 3) => sized::<V, 2, 3>(t),
            (1, 4) => sized::<V, 1, 4>(t),
            (1, 3) => sized::<V, 1, 3>(t),
            _ => tile_with::<V>(t, nr, ns),
        }
    }
}

/// [`tile_with`] for `NR × NS` outputs.
///
/// # Safety
/// As [`tile_with`].
#[inline(always)]
unsafe fn sized<V: Lanes, const NR: usize, const NS: usize>(t: &Tile) {
    let step = gemv_main_step(t.w.elem);
    let main = t.k / step * step;
    // acc[s][r]: sequence s, weight row r.
    let mut acc = [[V::zero(); NR]; NS];
    let rows: [*const u8; NR] =
        std::array::from_fn(|r| t.w.ptr.wrapping_add(r * t.w.ld * t.w.elem.size()));
    let xs: [*const f32; NS] = std::array::from_fn(|s| t.xp.wrapping_add(s * t.k));
    // SAFETY (both loops): chunks below `main` of the tile's rows and inputs lie inside the
    // operands.
    if t.w.elem == Elem::Bf16 {
        let mut j = 0;
        while j < main {
            // Loops, not `array::map`: a closure would not be inlined into the caller's
            // target features, and every load would become a call.
            let mut w = [(V::zero(), V::zero()); NR];
            for (slot, p) in w.iter_mut().zip(&rows) {
                *slot = unsafe { V::pairs(p.cast::<u16>().add(j)) };
            }
            for (acc_s, x) in acc.iter_mut().zip(&xs) {
                let (even, odd) = unsafe { (V::load(x.add(j)), V::load(x.add(j + L))) };
                for (slot, (lo, hi)) in acc_s.iter_mut().zip(&w) {
                    *slot = V::fma(odd, *hi, V::fma(even, *lo, *slot));
                }
            }
            j += 2 * L;
        }
    } else {
        let mut j = 0;
        while j < main {
            let mut w = [V::zero(); NR];
            for (slot, p) in w.iter_mut().zip(&rows) {
                *slot = unsafe { V::load(p.cast::<f32>().add(j)) };
            }
            for (acc_s, x) in acc.iter_mut().zip(&xs) {
                let xv = unsafe { V::load(x.add(j)) };
                for (slot, wv) in acc_s.iter_mut().zip(&w) {
                    *slot = V::fma(xv, *wv, *slot);
                }
            }
            j += L;
        }
    }
    for (s, (acc_s, x)) in acc.iter().zip(&xs).enumerate() {
        for (r, (a, p)) in acc_s.iter().zip(&rows).enumerate() {
            // SAFETY: the rest of row r and of input s, and output (s, r), lie inside the
            // operands.
            unsafe {
                let weight = |i: usize| match t.w.elem {
                    Elem::Bf16 => f32::from_bits(u32::from(*p.cast::<u16>().add(i)) << 16),
                    _ => *p.cast::<f32>().add(i),
                };
                *t.y.add(s * t.ldy + r) = finish(a.lanes(), main, t.k, |i| (*x.add(i), weight(i)));
            }
        }
    }
}

/// Steps 2 and 3 of the Gemv's order for one output: the elements from `main` to `k` (`at(i)`
/// is input and weight `i`) into the accumulator `acc`, then its lanes summed.
fn finish(mut acc: [f32; L], main: usize, k: usize, at: impl Fn(usize) -> (f32, f32)) -> f32 {
    let mut j = main;
    while j + L <= k {
        for (i, a) in acc.iter_mut().enumerate() {
            let (x, w) = at(j + i);
            *a = x.mul_add(w, *a);
        }
        j += L;
    }
    let sum = acc.iter().fold(0.0f32, |sum, a| sum + a);
    if j == k {
        return sum;
    }
    let narrow = (j..k).fold(0.0f32, |sum, i| {
        let (x, w) = at(i);
        sum + x * w
    });
    sum + narrow
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gemv's order written out as the contract states it, one output at a time.
    fn reference(x: &[f32], w: &[f32], bf16: bool) -> f32 {
        let k = x.len();
        let elem = if bf16 { Elem::Bf16 } else { Elem::F32 };
        let main = k / gemv_main_step(elem) * gemv_main_step(elem);
        let mut acc = [0.0f32; L];
        let chunk = if bf16 { 2 * L } else { L };
        for c in (0..main).step_by(chunk) {
            for (i, a) in acc.iter_mut().enumerate() {
                if bf16 {
                    *a = x[c + 2 * i].mul_add(w[c + 2 * i], *a);
                    *a = x[c + 2 * i + 1].mul_add(w[c + 2 * i + 1], *a);
                } else {
                    *a = x[c + i].mul_add(w[c + i], *a);
                }
            }
        }
        finish(acc, main, k, |i| (x[i], w[i]))
    }

    /// Every tile edge (rows and sequences not multiples of the tile, `k` with and without
    /// a tail and a narrow chunk, rows `ld` apart) gives the bits of the reference, on
    /// every path this CPU runs.
    #[test]
    fn products_have_the_bits_of_the_gemvs_order() {
        for (m, n, k, ld) in [
            (1, 1, 1, 1),
            (3, 5, 16, 16),
            (8, 7, 37, 40),
            (5, 9, 64, 64),
            (16, 3, 100, 100),
            (9, 4, 768, 800),
            (2, 6, 2049, 2049),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1.37e-3)
                .collect();
            for bf16 in [false, true] {
                let elem = if bf16 { Elem::Bf16 } else { Elem::F32 };
                let wf: Vec<f32> = (0..n * ld)
                    .map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 2.1e-3)
                    .map(|v| {
                        if bf16 {
                            f32::from_bits(u32::from(zambac_engine::bf16_bits(v)) << 16)
                        } else {
                            v
                        }
                    })
                    .collect();
                let bits: Vec<u16> = wf.iter().map(|&v| (v.to_bits() >> 16) as u16).collect();
                let ptr = if bf16 {
                    bits.as_ptr().cast::<u8>()
                } else {
                    wf.as_ptr().cast::<u8>()
                };
                let mut xp = vec![0.0; m * k];
                for (src, dst) in x.chunks_exact(k).zip(xp.chunks_exact_mut(k)) {
                    pack_row(src, elem, dst);
                }
                let ldy = n + 2;
                let w = Weights { ptr, elem, ld };
                let mut paths = vec![Path::Scalar];
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::is_x86_feature_detected as has;
                    if has!("avx2") && has!("fma") {
                        paths.push(Path::Avx2);
                        if has!("avx512f") && has!("avx512vl") {
                            paths.push(Path::Wide);
                        }
                    }
                }
                assert!(paths.contains(&Path::best()));
                for path in paths {
                    let mut y = vec![f32::NAN; m * ldy];
                    // SAFETY: the buffers hold the shapes; the CPU has the path's extensions.
                    unsafe { product_on(path, (m, k), 0..n, xp.as_ptr(), w, y.as_mut_ptr(), ldy) }
                        .unwrap();
                    for s in 0..m {
                        for r in 0..n {
                            let want = reference(&x[s * k..][..k], &wf[r * ld..][..k], bf16);
                            let got = y[s * ldy + r];
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{path:?}: {m}x{n}x{k} {elem} ({s},{r}): {got} vs {want}"
                            );
                        }
                        assert!(y[s * ldy + n].is_nan(), "{path:?}: past the rows");
                    }
                }
            }
        }
    }
}
