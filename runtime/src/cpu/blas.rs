//! f32 matrix products through OpenBLAS's `cblas_sgemm`, which ran every prefill product
//! shape measured on this project's machine faster than the `gemm` crate (by 1–55%; 1.2B
//! prefill 14–15 s instead of 16–18 s; docs/performance.md).
//!
//! The cpu backend splits a product across its own pool and calls OpenBLAS from each pool
//! thread on a block of C, so OpenBLAS is kept single-threaded: its own threads would spin
//! between calls and compete with the pool's for the same cores.

use std::sync::Once;

use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};

unsafe extern "C" {
    fn openblas_set_num_threads(n: std::ffi::c_int);
    fn openblas_get_config() -> *const std::ffi::c_char;
}

static SINGLE_THREADED: Once = Once::new();

/// Makes OpenBLAS run every call on its caller's thread; idempotent.
pub fn init() {
    // SAFETY: a plain setter of OpenBLAS's global thread count.
    SINGLE_THREADED.call_once(|| unsafe { openblas_set_num_threads(1) });
}

/// OpenBLAS's build description (version, kernel family), for reports.
pub fn config() -> String {
    // SAFETY: OpenBLAS returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(openblas_get_config()) }
        .to_string_lossy()
        .into_owned()
}

/// A strided f32 matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Mat {
    fn t(self) -> Mat {
        Mat {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `C = beta·C + A·B` for `A [m,k]`, `B [k,n]`, `C [m,n]` on this thread, when every
/// operand has a unit stride along one axis and a leading dimension BLAS accepts; `false`
/// (nothing done) otherwise.
///
/// # Safety
/// The operands address valid memory for these sizes and strides; C is writable and does
/// not overlap A or B.
pub unsafe fn sgemm(m: usize, n: usize, k: usize, a: Mat, b: Mat, c: Mat, beta: f32) -> bool {
    // A column-major C is the row-major C' = B'·A'.
    let (m, n, a, b, c) = if c.cs == 1 {
        (m, n, a, b, c)
    } else {
        (n, m, b.t(), a.t(), c.t())
    };
    let (Some(ldc), Some((ta, lda)), Some((tb, ldb))) =
        (leading(c, m, n), transpose(a, m, k), transpose(b, k, n))
    else {
        return false;
    };
    let (Ok(m), Ok(n), Ok(k)) = (i32::try_from(m), i32::try_from(n), i32::try_from(k)) else {
        return false;
    };
    init();
    // SAFETY: the layout was checked above; the rest is the caller's contract.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            ta,
            tb,
            m,
            n,
            k,
            1.0,
            a.ptr,
            lda,
            b.ptr,
            ldb,
            beta,
            c.ptr.cast_mut(),
            ldc,
        )
    };
    true
}

/// The leading dimension of a row-major `rows × cols` matrix (`cs == 1`); a single row's
/// row stride is never used.
fn leading(x: Mat, rows: usize, cols: usize) -> Option<i32> {
    if x.cs != 1 {
        return None;
    }
    let ld = if rows == 1 {
        cols.max(1)
    } else {
        usize::try_from(x.rs).ok().filter(|&ld| ld >= cols.max(1))?
    };
    i32::try_from(ld).ok()
}

/// How BLAS reads a `rows × cols` operand: as stored row-major, or as the transpose of a
/// row-major `cols × rows` matrix.
fn transpose(x: Mat, rows: usize, cols: usize) -> Option<(CBLAS_TRANSPOSE, i32)> {
    if let Some(ld) = leading(x, rows, cols) {
        return Some((CBLAS_TRANSPOSE::CblasNoTrans, ld));
    }
    leading(x.t(), cols, rows).map(|ld| (CBLAS_TRANSPOSE::CblasTrans, ld))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A strided operand of the tests: `(values, row stride, column stride)`.
    type Strided<'a> = (&'a [f32], usize, usize);

    /// `A·B` by definition, in f64, for a row-major result.
    fn naive(
        m: usize,
        n: usize,
        k: usize,
        (a, ars, acs): Strided,
        (b, brs, bcs): Strided,
    ) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| f64::from(a[i * ars + p * acs]) * f64::from(b[p * brs + j * bcs]))
                    .sum();
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) % 17) as f32 - 8.0)
            .collect()
    }

    /// Every combination of row- and column-major A, B and C, with padded leading
    /// dimensions, overwriting and accumulating, matches the definition exactly (small
    /// integers, so every sum is exact in f32).
    #[test]
    fn every_unit_stride_layout_matches_the_definition() {
        let (m, n, k, pad) = (5, 7, 3, 2);
        for layout in 0..8 {
            let (a_rm, b_rm, c_rm) = (layout & 1 == 0, layout & 2 == 0, layout & 4 == 0);
            let (ars, acs) = if a_rm { (k + pad, 1) } else { (1, m + pad) };
            let (brs, bcs) = if b_rm { (n + pad, 1) } else { (1, k + pad) };
            let (crs, ccs) = if c_rm { (n + pad, 1) } else { (1, m + pad) };
            let a = values((m + pad) * (k + pad), 1);
            let b = values((n + pad) * (k + pad), 2);
            let want = naive(m, n, k, (&a, ars, acs), (&b, brs, bcs));
            for beta in [0.0f32, 1.0] {
                let mut c = values((m + pad) * (n + pad), 3);
                let before = c.clone();
                let mat = |p: *const f32, rs: usize, cs: usize| Mat {
                    ptr: p,
                    rs: rs as isize,
                    cs: cs as isize,
                };
                // SAFETY: all three buffers hold every element the strides address.
                let done = unsafe {
                    sgemm(
                        m,
                        n,
                        k,
                        mat(a.as_ptr(), ars, acs),
                        mat(b.as_ptr(), brs, bcs),
                        mat(c.as_mut_ptr(), crs, ccs),
                        beta,
                    )
                };
                assert!(done, "layout {layout} is expressible in BLAS");
                for i in 0..m {
                    for j in 0..n {
                        let at = i * crs + j * ccs;
                        let expect = want[i * n + j] + f64::from(beta) * f64::from(before[at]);
                        assert_eq!(
                            f64::from(c[at]),
                            expect,
                            "layout {layout}, beta {beta}, C[{i},{j}]"
                        );
                    }
                }
            }
        }
    }

    /// Operands without a unit stride, or with a leading dimension shorter than a row, are
    /// declined (and left to the `gemm` crate), and C is untouched.
    #[test]
    fn layouts_blas_cannot_express_are_declined() {
        let a = values(64, 1);
        let mut c = vec![0.5f32; 64];
        let mat = |p: *const f32, rs: isize, cs: isize| Mat { ptr: p, rs, cs };
        let cases = [
            (
                mat(a.as_ptr(), 8, 2),
                mat(a.as_ptr(), 4, 1),
                "A with strides (8, 2)",
            ),
            (
                mat(a.as_ptr(), 4, 1),
                mat(a.as_ptr(), 2, 1),
                "B rows overlapping (ld 2 < 4 columns)",
            ),
            (
                mat(a.as_ptr(), -4, 1),
                mat(a.as_ptr(), 4, 1),
                "A with a negative row stride",
            ),
        ];
        for (am, bm, what) in cases {
            // SAFETY: nothing is read or written when the call is declined.
            let done = unsafe { sgemm(3, 4, 4, am, bm, mat(c.as_mut_ptr(), 4, 1), 0.0) };
            assert!(!done, "{what} must be declined");
            assert!(c.iter().all(|&x| x == 0.5), "{what}: C was written");
        }
    }
}
