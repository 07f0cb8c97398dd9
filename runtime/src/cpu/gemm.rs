//! `Step::Gemm` on the CPU: strided f32 products through OpenBLAS (the `gemm` crate for
//! layouts BLAS cannot express: no unit stride on an operand).
//!
//! The product is split across the launch [`Pool`] — each thread computes a block of C's
//! columns (or rows) with a single-threaded library call — rather than through the library's
//! own threads: the pool's threads are already awake between launches, and a second set of
//! threads would compete with them for the same cores. A bf16 weight operand is widened to
//! f32 by the thread that uses it, a bounded block of columns at a time, just before its
//! product, so the widened block is still in that core's cache when the library packs it.

use gemm::Parallelism;

use super::arena::AlignedBuf;
use super::blas;
use super::exec::{Dims, Region, split};
use super::plan::PMatrix;
use super::pool::Pool;
use zambac_engine::{Elem, widen_bf16};

/// Elements of B widened per round (all threads together) for up to 32 rows of A: 4 MB of
/// f32, which stays in cache (twice as fast as 16 MB for one row). Each round is a separate
/// product that packs A again, so longer inputs widen proportionally more per round, up to
/// [`WIDEN_BLOCK_MAX`].
const WIDEN_BLOCK: usize = 1 << 20;
/// The most elements of B widened per round: 64 MB of f32.
const WIDEN_BLOCK_MAX: usize = 1 << 24;
/// Blocks of C handed to threads are multiples of this many columns or rows, the width of
/// the crate's f32 micro-kernels, so no thread gets a ragged edge it need not have.
const ALIGN: usize = 16;

/// A matrix operand bound to memory: element `(i, j)` at `ptr + (i·rs + j·cs)·size`.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    pub ptr: *mut u8,
    pub kind: Elem,
    pub rs: isize,
    pub cs: isize,
}

impl Operand {
    /// The operand starting at element `(i, j)`.
    fn at(self, i: usize, j: usize) -> Operand {
        let off = (i as isize * self.rs + j as isize * self.cs) * self.kind.size() as isize;
        // SAFETY: callers stay inside the bounds-checked operand.
        Operand {
            ptr: unsafe { self.ptr.offset(off) },
            ..self
        }
    }
}

/// One product `C (+)= A·B`, `A [m,k]`, `B [k,n]`, `C [m,n]`.
#[derive(Clone, Copy)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub accumulate: bool,
}

// SAFETY: a `Gemm` is shared with the pool's threads only for the duration of `run`, which
// joins them; the threads write disjoint blocks of C.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

/// Binds `mx` (viewing `region` at element `off`) as a `rows × cols` operand, checking that
/// every element it addresses lies inside the region.
pub fn operand(
    (region, off): (Region, usize),
    mx: &PMatrix,
    rows: usize,
    cols: usize,
    d: Dims,
) -> Result<Operand, String> {
    let rs = d.eval(&mx.row_stride)?;
    let cs = d.eval(&mx.col_stride)?;
    if rows > 0 && cols > 0 {
        let ext = |n: usize, s: i64| i128::from(s) * (n as i128 - 1);
        let (er, ec) = (ext(rows, rs), ext(cols, cs));
        let lo = off as i128 + er.min(0) + ec.min(0);
        let hi = off as i128 + er.max(0) + ec.max(0);
        if lo < 0 || hi >= region.len as i128 {
            return Err(format!(
                "a {rows}×{cols} GEMM operand with strides ({rs}, {cs}) at offset {off} \
                 reaches elements {lo}..={hi} of a buffer of {}",
                region.len
            ));
        }
    }
    let to_isize = |s: i64| isize::try_from(s).map_err(|_| format!("stride {s} too large"));
    Ok(Operand {
        // SAFETY: `off <= region.len` (checked by the caller's view binding).
        ptr: unsafe { region.ptr.add(off * region.kind.size()) },
        kind: region.kind,
        rs: to_isize(rs)?,
        cs: to_isize(cs)?,
    })
}

/// Runs `g` on the pool. The operands were bounds-checked by [`operand`].
pub fn run(g: &Gemm, pool: &Pool, widen: &mut AlignedBuf) -> Result<(), String> {
    if g.a.kind != Elem::F32 || g.c.kind != Elem::F32 {
        return Err("GEMM operands A and C must be f32".into());
    }
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    if g.k == 0 {
        if !g.accumulate {
            zero(&g.c, g.m, g.n);
        }
        return Ok(());
    }
    let ok = match g.b.kind {
        Elem::F32 => {
            // Split the longer side of C, so each thread's product stays large.
            let by_cols = g.n >= g.m;
            let len = if by_cols { g.n } else { g.m };
            let chunks = pool.threads().min(len.div_ceil(ALIGN));
            pool.run(chunks, &|t| {
                let (lo, hi) = aligned_split(len, chunks, t);
                let part = if by_cols {
                    Gemm {
                        n: hi - lo,
                        b: g.b.at(0, lo),
                        c: g.c.at(0, lo),
                        ..*g
                    }
                } else {
                    Gemm {
                        m: hi - lo,
                        a: g.a.at(lo, 0),
                        c: g.c.at(lo, 0),
                        ..*g
                    }
                };
                product(&part, part.b.ptr.cast(), part.b.rs, part.b.cs);
            })
        }
        Elem::Bf16 => {
            let block = (WIDEN_BLOCK * (g.m / 32).max(1)).min(WIDEN_BLOCK_MAX);
            let nb = (block / g.k).clamp(1, g.n);
            widen.reserve(g.k * nb);
            let buf = Shared(widen.as_mut_ptr());
            let mut ok = true;
            let mut j0 = 0;
            while j0 < g.n && ok {
                let nj = nb.min(g.n - j0);
                let chunks = pool.threads().min(nj.div_ceil(ALIGN));
                ok = pool.run(chunks, &|t| {
                    let (lo, hi) = aligned_split(nj, chunks, t);
                    let part = Gemm {
                        n: hi - lo,
                        b: g.b.at(0, j0 + lo),
                        c: g.c.at(0, j0 + lo),
                        ..*g
                    };
                    // SAFETY: thread `t` owns elements [k·lo, k·hi) of the k·nb buffer;
                    // `part.b` is a block of the checked operand B.
                    let dst = unsafe { buf.get().add(g.k * lo) };
                    let (rs, cs) = unsafe { widen_block(&part.b, g.k, hi - lo, dst) };
                    product(&part, dst, rs, cs);
                });
                j0 += nj;
            }
            ok
        }
        Elem::I64 | Elem::F16 => return Err(format!("GEMM operand B is {}", g.b.kind)),
    };
    if ok {
        Ok(())
    } else {
        Err("a GEMM thread panicked".into())
    }
}

/// Chunk `t` of `[0, len)` cut into `chunks` near-equal ranges whose inner bounds are
/// multiples of [`ALIGN`].
fn aligned_split(len: usize, chunks: usize, t: usize) -> (usize, usize) {
    let blocks = len.div_ceil(ALIGN);
    let (lo, hi) = split(blocks as i64, chunks as i64, t as i64);
    (
        (lo as usize * ALIGN).min(len),
        (hi as usize * ALIGN).min(len),
    )
}

/// A raw pointer shared with the pool's threads for one `run`.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: used only for buffers that outlive the joined `Pool::run`, with disjoint writes.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// `C (+)= A · B'` on this thread, where `B'` is f32 at `b` with strides `rs`, `cs`.
fn product(g: &Gemm, b: *const f32, rs: isize, cs: isize) {
    if g.n == 0 || g.m == 0 {
        return;
    }
    let mat = |o: &Operand| blas::Mat {
        ptr: o.ptr.cast::<f32>().cast_const(),
        rs: o.rs,
        cs: o.cs,
    };
    let beta = if g.accumulate { 1.0 } else { 0.0 };
    let bm = blas::Mat { ptr: b, rs, cs };
    // SAFETY: every operand was bounds-checked for these sizes and strides (blocks of a
    // checked operand stay inside it); C is an output buffer distinct from A and B.
    if unsafe { blas::sgemm(g.m, g.n, g.k, mat(&g.a), bm, mat(&g.c), beta) } {
        return;
    }
    // SAFETY: as above; `dst := alpha·dst + beta·A·B` reads dst only when accumulating,
    // with alpha = 1.
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            g.c.ptr.cast::<f32>(),
            g.c.cs,
            g.c.rs,
            g.accumulate,
            g.a.ptr.cast::<f32>().cast_const(),
            g.a.cs,
            g.a.rs,
            b,
            cs,
            rs,
            if g.accumulate { 1.0f32 } else { 0.0 },
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Widens the `k × n` bf16 operand `b` into `dst`, laid out so the copy runs along B's
/// unit-stride dimension; returns the layout's (row, col) strides.
///
/// # Safety
/// `b` is a bounds-checked operand of at least `k × n`; `dst` holds `k·n` f32s.
unsafe fn widen_block(b: &Operand, k: usize, n: usize, dst: *mut f32) -> (isize, isize) {
    let col_major = b.rs.unsigned_abs() <= b.cs.unsigned_abs();
    let (outer, inner) = if col_major { (n, k) } else { (k, n) };
    let (so, si) = if col_major {
        (b.cs, b.rs)
    } else {
        (b.rs, b.cs)
    };
    let src = b.ptr.cast::<u16>().cast_const();
    for o in 0..outer {
        // SAFETY: see the function's contract.
        unsafe {
            let s = src.offset(o as isize * so);
            let d = std::slice::from_raw_parts_mut(dst.add(o * inner), inner);
            if si == 1 {
                widen_bf16(std::slice::from_raw_parts(s, inner), d);
            } else {
                for (i, x) in d.iter_mut().enumerate() {
                    *x = f32::from_bits(u32::from(*s.offset(i as isize * si)) << 16);
                }
            }
        }
    }
    if col_major {
        (1, k as isize)
    } else {
        (n as isize, 1)
    }
}

/// `C = 0` for an empty inner dimension.
fn zero(c: &Operand, m: usize, n: usize) {
    let p = c.ptr.cast::<f32>();
    for i in 0..m {
        for j in 0..n {
            // SAFETY: inside C, bounds-checked by `operand`.
            unsafe { *p.offset(i as isize * c.rs + j as isize * c.cs) = 0.0 }
        }
    }
}
