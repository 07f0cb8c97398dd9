//! f32 matrix products through OpenBLAS's `cblas_sgemm`, which ran every prefill product
//! shape measured on this project's machines faster than the `gemm` crate (by 1–55%; 1.2B
//! prefill 14–15 s instead of 16–18 s; docs/performance.md).
//!
//! OpenBLAS is loaded when the first product runs, not linked: its `DYNAMIC_ARCH` builds
//! pick their kernels from a table of CPU models in their constructor, and a model newer
//! than the table silently gets the oldest kernels (Debian's 0.3.21 runs SSE3 "Prescott"
//! code on Emerald Rapids, 4–5× slower). So the runtime reads the CPU's instruction sets
//! first and, unless `OPENBLAS_CORETYPE` is set, tells OpenBLAS which kernels to use
//! ([`core_for`]) before loading it. Where OpenBLAS is not installed, every product runs
//! on the `gemm` crate, which dispatches on the CPU's features itself.
//!
//! The cpu backend splits a product across its own pool and calls OpenBLAS from each pool
//! thread on a block of C, so OpenBLAS is kept single-threaded: its own threads would spin
//! between calls and compete with the pool's for the same cores.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

use super::machine::Machine;

/// `cblas_sgemm`'s arguments: layout, transposes, sizes, scalars, operands and their
/// leading dimensions (the CBLAS enums are C `int`s).
type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The shared-library names OpenBLAS is found under.
const LIBRARIES: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

/// OpenBLAS as loaded for this process.
pub struct OpenBlas {
    sgemm: Sgemm,
    /// OpenBLAS's description of its build.
    pub config: String,
    /// The kernel family it runs (`Haswell`, `SkylakeX`, `Cooperlake`, …).
    pub core: String,
    /// Who chose the kernels: `zambac`, `OPENBLAS_CORETYPE` or `OpenBLAS`.
    pub chosen_by: &'static str,
    // Kept loaded for the life of the process: `sgemm` points into it.
    _lib: libloading::Library,
}

/// The OpenBLAS kernel family for a CPU with these extensions, most capable first; `None`
/// leaves the choice to OpenBLAS (CPUs without AVX2, where its table is complete).
///
/// AMD CPUs get the `Zen` kernels (OpenBLAS's Haswell ones with AMD's cache sizes) even
/// with AVX-512: on Zen 4, which executes a 512-bit operation as two 256-bit halves, they
/// ran the 1.2B's f32 prefill 6% and the 100M's 2–4% faster than the `Cooperlake` kernels
/// OpenBLAS's own table picks there (docs/performance.md).
pub fn core_for(m: &Machine) -> Option<&'static str> {
    let avx512 = ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"]
        .iter()
        .all(|f| m.has(f));
    let avx2 = m.has("avx2") && m.has("fma");
    if avx2 && m.vendor == "AuthenticAMD" {
        Some("Zen")
    } else if avx512 && m.has("avx512bf16") {
        Some("Cooperlake")
    } else if avx512 {
        Some("SkylakeX")
    } else if avx2 {
        Some("Haswell")
    } else {
        None
    }
}

/// Whether an OpenBLAS kernel family predates AVX (SSE-only code).
pub fn is_pre_avx(core: &str) -> bool {
    const PRE_AVX: [&str; 17] = [
        "unknown",
        "katmai",
        "coppermine",
        "northwood",
        "prescott",
        "banias",
        "atom",
        "core2",
        "penryn",
        "dunnington",
        "nehalem",
        "athlon",
        "opteron",
        "opteron_sse3",
        "barcelona",
        "nano",
        "bobcat",
    ];
    PRE_AVX.contains(&core.trim().to_ascii_lowercase().as_str())
}

/// OpenBLAS, loaded on first use for this CPU; `Err` says why it is not available.
pub fn openblas() -> Result<&'static OpenBlas, &'static str> {
    static LOADED: OnceLock<Result<OpenBlas, String>> = OnceLock::new();
    LOADED.get_or_init(load).as_ref().map_err(String::as_str)
}

fn load() -> Result<OpenBlas, String> {
    let user_core = std::env::var_os("OPENBLAS_CORETYPE").is_some();
    let ours = if user_core {
        None
    } else {
        core_for(Machine::this())
    };
    // OpenBLAS reads both in its constructor, which runs inside `dlopen`. SAFETY: the
    // environment is written once, under the `OnceLock`, before the library that reads it
    // exists; no other code of this process reads these two variables.
    unsafe {
        if let Some(core) = ours {
            std::env::set_var("OPENBLAS_CORETYPE", core);
        }
        if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
            std::env::set_var("OPENBLAS_NUM_THREADS", "1");
        }
    }
    let mut errors = Vec::new();
    for name in LIBRARIES {
        // SAFETY: loading OpenBLAS runs its constructor, which only sets up its tables.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return bind(lib, ours.is_some(), user_core),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(format!("OpenBLAS is not installed ({})", errors.join("; ")))
}

/// Resolves the functions the runtime calls and reads what OpenBLAS chose.
fn bind(lib: libloading::Library, ours: bool, user: bool) -> Result<OpenBlas, String> {
    type Text = unsafe extern "C" fn() -> *const c_char;
    type SetThreads = unsafe extern "C" fn(c_int);
    let missing = |e: libloading::Error| format!("OpenBLAS lacks a function: {e}");
    // SAFETY: the symbols are OpenBLAS's exported C functions with these signatures.
    let (sgemm, config, core, set_threads) = unsafe {
        (
            *lib.get::<Sgemm>(b"cblas_sgemm\0").map_err(missing)?,
            *lib.get::<Text>(b"openblas_get_config\0").map_err(missing)?,
            *lib.get::<Text>(b"openblas_get_corename\0")
                .map_err(missing)?,
            *lib.get::<SetThreads>(b"openblas_set_num_threads\0")
                .map_err(missing)?,
        )
    };
    // SAFETY: both return static NUL-terminated strings; the setter only stores a count.
    let (config, core) = unsafe {
        set_threads(1);
        (text(config()), text(core()))
    };
    Ok(OpenBlas {
        sgemm,
        config,
        core,
        chosen_by: if ours {
            "zambac"
        } else if user {
            "OPENBLAS_CORETYPE"
        } else {
            "OpenBLAS"
        },
        _lib: lib,
    })
}

/// The library behind the products, as reports name it.
pub fn describe() -> String {
    match openblas() {
        Ok(b) => format!(
            "{}; {} kernels, chosen by {}",
            b.config, b.core, b.chosen_by
        ),
        Err(e) => format!("the gemm crate ({e})"),
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a non-null pointer from OpenBLAS to a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string()
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
    let Ok(blas) = openblas() else {
        return false;
    };
    // SAFETY: the layout was checked above; the rest is the caller's contract.
    unsafe {
        (blas.sgemm)(
            ROW_MAJOR,
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
fn transpose(x: Mat, rows: usize, cols: usize) -> Option<(c_int, i32)> {
    if let Some(ld) = leading(x, rows, cols) {
        return Some((NO_TRANS, ld));
    }
    leading(x.t(), cols, rows).map(|ld| (TRANS, ld))
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
