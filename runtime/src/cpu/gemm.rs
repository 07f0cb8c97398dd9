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
#[cfg(target_arch = "x86_64")]
use super::bf16_rows;
use super::blas;
use super::dnnl::{self, Dnnl};
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
/// bf16 products with fewer rows of A than this split B's columns among the threads.
const BF16_ROWS_SPLIT: usize = 64;

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

/// Runs `g` on the pool; a bf16 weight B goes through `bf16` (oneDNN's bf16 products) when
/// given. The operands were bounds-checked by [`operand`].
pub fn run(
    g: &Gemm,
    pool: &Pool,
    widen: &mut AlignedBuf,
    bf16: Option<&'static Dnnl>,
) -> Result<(), String> {
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
    if let Some(dnnl) = bf16
        && g.b.kind == Elem::Bf16
        && g.a.cs == 1
        && g.c.cs == 1
    {
        return run_bf16(g, pool, dnnl, false);
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
            widen.reserve(g.k * nb)?;
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

/// `C (+)= A·B` for a bf16 weight B (`B[k, j]` at `j·cs`, unit stride along k) with bf16
/// products, every row of C computed as it would be in a product of that row alone (a
/// batched decode step's sequences get what each gets decoded alone): A's rows rounded to
/// bf16, each output one accumulator over k in the same order whatever the other rows.
pub fn run_bf16_rows(g: &Gemm, pool: &Pool, dnnl: &'static Dnnl) -> Result<(), String> {
    if g.a.kind != Elem::F32 || g.c.kind != Elem::F32 || g.b.kind != Elem::Bf16 {
        return Err("a bf16 product needs f32 A and C and a bf16 B".into());
    }
    if g.a.cs != 1 || g.c.cs != 1 || g.b.rs != 1 || g.b.cs <= 0 {
        return Err("a bf16 product of rows needs unit-stride rows".into());
    }
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    run_bf16(g, pool, dnnl, true)
}

/// `C (+)= A·B` for a bf16 weight B through oneDNN: each pool thread rounds its block of
/// A's rows to bf16 and multiplies it by B with `vdpbf16ps` (f32 accumulation). With
/// `row_invariant`, always by B's columns through [`bf16_rows`], whatever A's rows.
fn run_bf16(g: &Gemm, pool: &Pool, dnnl: &'static Dnnl, row_invariant: bool) -> Result<(), String> {
    thread_local! {
        /// This thread's rows of A in bf16, reused across products.
        static ROWS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Few rows (a batched decode step): every thread rounds all of A and multiplies it by
    // its own block of B's columns, so B — the weights — is read once in all. Many rows (a
    // prefill): each thread takes a block of A's rows and the whole of B.
    let by_cols = row_invariant || g.m < BF16_ROWS_SPLIT;
    let len = if by_cols { g.n } else { g.m };
    let chunks = if by_cols {
        pool.threads().min(len.div_ceil(ALIGN))
    } else {
        pool.threads().min(len)
    };
    pool.try_run(chunks, "a GEMM thread panicked", &|t| {
        let (lo, hi) = if by_cols {
            aligned_split(len, chunks, t)
        } else {
            let (lo, hi) = split(len as i64, chunks as i64, t as i64);
            (lo as usize, hi as usize)
        };
        if lo == hi {
            return Ok(());
        }
        let (row0, rows, col0, cols) = if by_cols {
            (0, g.m, lo, hi - lo)
        } else {
            (lo, hi - lo, 0, g.n)
        };
        ROWS.with(|buf| {
            let mut buf = buf.borrow_mut();
            let row = |r: usize| {
                let a = g.a.at(row0 + r, 0).ptr.cast::<f32>().cast_const();
                // SAFETY: row `row0 + r` of the bounds-checked A holds k unit-stride values.
                unsafe { std::slice::from_raw_parts(a, g.k) }
            };
            let shape = dnnl::Shape {
                m: rows,
                n: cols,
                k: g.k,
                b_strides: (g.b.rs, g.b.cs),
                ldc: g.c.rs.unsigned_abs(),
                accumulate: g.accumulate,
            };
            let b = g.b.at(0, col0).ptr.cast::<u16>().cast_const();
            let c = g.c.at(row0, col0).ptr.cast::<f32>();
            #[cfg(target_arch = "x86_64")]
            if by_cols && g.b.rs == 1 && g.b.cs > 0 {
                bf16_rows::pack(rows, g.k, row, &mut buf);
                // SAFETY: as below; `bf16_cpu` (oneDNN's bf16 products are only offered on
                // such CPUs) guarantees the extensions; `buf` holds A packed; W's rows are
                // `cs` apart along k.
                unsafe {
                    bf16_rows::product(
                        (rows, cols, g.k),
                        buf.as_ptr(),
                        b,
                        g.b.cs.unsigned_abs(),
                        c,
                        g.c.rs.unsigned_abs(),
                        g.accumulate,
                    )
                };
                return Ok(());
            }
            buf.resize(rows * g.k, 0);
            for (r, out) in buf.chunks_exact_mut(g.k.max(1)).take(rows).enumerate() {
                dnnl::to_bf16(row(r), out);
            }
            // SAFETY: A's rows are in `buf`; this thread's block of B and of C are blocks of
            // the bounds-checked operands, and no other thread writes this block of C.
            unsafe { dnnl.gemm(shape, buf.as_ptr(), b, c) }
        })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `C (+)= A·B` in f64 from the values the bf16 product multiplies: A and B rounded to
    /// bf16.
    fn reference(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[u16],
        c0: &[f32],
        ldc: usize,
    ) -> Vec<f64> {
        let bf = |x: f32| f64::from(f32::from_bits(u32::from(zambac_engine::bf16_bits(x)) << 16));
        let wb = |i: usize| f64::from(f32::from_bits(u32::from(b[i]) << 16));
        let mut c: Vec<f64> = c0.iter().map(|&x| f64::from(x)).collect();
        for i in 0..m {
            for j in 0..n {
                // B [k, n] is Wᵀ of a row-major W [n, k]: element (p, j) at j·k + p.
                c[i * ldc + j] += (0..k)
                    .map(|p| bf(a[i * k + p]) * wb(j * k + p))
                    .sum::<f64>();
            }
        }
        c
    }

    /// Products with a bf16 weight through oneDNN equal the f64 product of the bf16-rounded
    /// operands (f32 accumulation only), split across threads by rows, overwriting and
    /// accumulating, into a C with padded rows. Runs only where the CPU has AVX-512 BF16.
    #[test]
    fn bf16_products_multiply_the_rounded_operands() {
        let Ok(dnnl) = dnnl::dnnl() else {
            eprintln!("no bf16 products on this CPU");
            return;
        };
        for (m, n, k, ldc) in [
            (37, 50, 70, 53),
            (19, 64, 32, 64),
            (1, 256, 64, 256),
            (18, 8, 96, 8),
            (19, 160, 64, 160),
            // At least BF16_ROWS_SPLIT rows: split by rows rather than columns.
            (70, 48, 40, 50),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
                .collect();
            let w: Vec<u16> = (0..n * k)
                .map(|i| zambac_engine::bf16_bits(((i * 104_729 % 997) as f32 - 498.0) * 2e-3))
                .collect();
            let pool = Pool::new(2).unwrap();
            let mut widen = AlignedBuf::default();
            for accumulate in [false, true] {
                let mut c: Vec<f32> = (0..m * ldc).map(|i| (i % 13) as f32 * 0.25).collect();
                let before = c.clone();
                let c0 = if accumulate {
                    before.clone()
                } else {
                    vec![0.0; m * ldc]
                };
                let g = Gemm {
                    m,
                    n,
                    k,
                    a: Operand {
                        ptr: a.as_ptr().cast_mut().cast(),
                        kind: Elem::F32,
                        rs: k as isize,
                        cs: 1,
                    },
                    b: Operand {
                        ptr: w.as_ptr().cast_mut().cast(),
                        kind: Elem::Bf16,
                        rs: 1,
                        cs: k as isize,
                    },
                    c: Operand {
                        ptr: c.as_mut_ptr().cast(),
                        kind: Elem::F32,
                        rs: ldc as isize,
                        cs: 1,
                    },
                    accumulate,
                };
                run(&g, &pool, &mut widen, Some(dnnl)).unwrap();
                let want = reference(m, n, k, &a, &w, &c0, ldc);
                for i in 0..m {
                    for j in 0..ldc {
                        let (got, want) = (f64::from(c[i * ldc + j]), want[i * ldc + j]);
                        if j < n {
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "C[{i},{j}] {got} vs {want}"
                            );
                        } else {
                            assert_eq!(
                                got,
                                f64::from(before[i * ldc + j]),
                                "padding C[{i},{j}] was written"
                            );
                        }
                    }
                }
            }
        }
    }
}
