//! Matrix products on the GPU through cuBLAS, where the cpu backend calls its GEMM library.
//!
//! cuBLAS is column-major; a row-major product `C = A·B` is computed as `Cᵀ = Bᵀ·Aᵀ`, each
//! operand passed as stored (row- or column-major, by which of its strides is 1). f32
//! products run in f32 (`CUBLAS_COMPUTE_32F` with the default math mode: no TF32). A
//! product with a bf16 weight rounds its f32 operand to a bf16 copy (round to nearest even,
//! as the cpu backend's bf16 products do) and runs bf16 × bf16 with f32 accumulation.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{self as cublas, cublasComputeType_t, cublasOperation_t, cudaDataType};
use cudarc::driver::PushKernelArg;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig};
use zambac_engine::Elem;

use super::{Bound, DRegion, addr, driver};
use crate::cpu::Dims;
use crate::cpu::plan::{PGemm, PMatrix};
use crate::error::RuntimeError;

/// The backend's own PTX: f32 operands rounded to bf16.
pub(super) const CAST_PTX: &str = include_str!("cast.ptx");
/// Threads per block of the cast kernel (its `.maxntid`).
const CAST_BLOCK: u32 = 256;

/// A strided operand on the device: element `(i, j)` at `addr + size·(i·rs + j·cs)`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operand {
    addr: u64,
    elem: Elem,
    rs: usize,
    cs: usize,
}

/// One product of a program, bound to device addresses.
#[derive(Clone, Copy, Debug)]
pub(super) struct Product {
    m: usize,
    n: usize,
    k: usize,
    a: Operand,
    b: Operand,
    c: Operand,
    accumulate: bool,
}

impl Product {
    /// Floating-point operations of the product.
    pub(super) fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Binds a program's product to a call's buffers, checking every operand lies inside its
/// buffer.
pub(super) fn bind(g: &PGemm, call: &Bound<'_>, d: Dims) -> Result<Product, String> {
    let (m, n, k) = (d.size(&g.m)?, d.size(&g.n)?, d.size(&g.k)?);
    let operand = |mx: &PMatrix, rows: usize, cols: usize, what: &str| -> Result<Operand, String> {
        let (region, off): (DRegion, usize) = call.region_at(&mx.view, d)?;
        let (rs, cs) = (d.size(&mx.row_stride)?, d.size(&mx.col_stride)?);
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(rs)
                .and_then(|r| (cols - 1).checked_mul(cs)?.checked_add(r))
                .and_then(|x| x.checked_add(off));
            if last.is_none_or(|l| l >= region.len) {
                return Err(format!(
                    "product operand {what} ({rows}×{cols}, strides {rs}/{cs} from element \
                     {off}) runs past its buffer of {} elements",
                    region.len
                ));
            }
        }
        Ok(Operand {
            addr: region.addr + (off * region.elem.size()) as u64,
            elem: region.elem,
            rs,
            cs,
        })
    };
    let c = operand(&g.c, m, n, "C")?;
    if c.elem != Elem::F32 {
        return Err(format!("product output is {}, not f32", c.elem));
    }
    Ok(Product {
        m,
        n,
        k,
        a: operand(&g.a, m, k, "A")?,
        b: operand(&g.b, k, n, "B")?,
        c,
        accumulate: g.accumulate,
    })
}

/// How an operand of `rows × cols` is stored: `true` for row-major (`cs == 1`), `false` for
/// column-major (`rs == 1`), with its leading dimension.
fn storage(o: &Operand, rows: usize, cols: usize) -> Option<(bool, usize)> {
    if o.cs == 1 && (o.rs >= cols || rows <= 1) {
        Some((true, o.rs.max(cols).max(1)))
    } else if o.rs == 1 && (o.cs >= rows || cols <= 1) {
        Some((false, o.cs.max(rows).max(1)))
    } else {
        None
    }
}

fn int(x: usize, what: &str) -> Result<i32, String> {
    i32::try_from(x).map_err(|_| format!("{what} = {x} is beyond cuBLAS's 32-bit sizes"))
}

/// cuBLAS on the backend's stream, and the bf16 copies its bf16 products need.
pub(super) struct Blas {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    cast: CudaFunction,
    copies: [Option<CudaSlice<u8>>; 2],
}

impl Blas {
    pub fn new(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>) -> Result<Blas, RuntimeError> {
        // SAFETY: only tries to `dlopen` cuBLAS under its usual names.
        if !unsafe { cublas::is_culib_present() } {
            return Err(RuntimeError::Input(
                "--backend cuda: cuBLAS (libcublas.so.13) was not found; install the CUDA 13 \
                 libraries or point LD_LIBRARY_PATH at them"
                    .into(),
            ));
        }
        let blas = CudaBlas::new(stream.clone())
            .map_err(|e| RuntimeError::Internal(format!("cannot create a cuBLAS handle: {e}")))?;
        // SAFETY: a live handle; the default math mode keeps f32 products in f32 (TF32 only
        // with CUBLAS_TF32_TENSOR_OP_MATH or a FAST_TF32 compute type, neither used here).
        let status = unsafe {
            cublas::cublasSetMathMode(*blas.handle(), cublas::cublasMath_t::CUBLAS_DEFAULT_MATH)
        };
        if status != cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(RuntimeError::Internal(format!(
                "cannot set cuBLAS's math mode: {status:?}"
            )));
        }
        let module = driver::load_module(ctx, CAST_PTX).map_err(RuntimeError::Internal)?;
        let cast = module
            .load_function("zr_round_bf16")
            .map_err(|e| RuntimeError::Internal(format!("the cast kernel: {e}")))?;
        Ok(Blas {
            blas,
            stream: stream.clone(),
            cast,
            copies: [None, None],
        })
    }

    pub fn describe(&self) -> &'static str {
        "f32 in f32; bf16 weights as bf16 × bf16 with f32 accumulation"
    }

    /// `o` (`rows × cols`, f32) as a contiguous row-major bf16 copy in copy buffer `which`.
    fn rounded(
        &mut self,
        which: usize,
        o: &Operand,
        rows: usize,
        cols: usize,
    ) -> Result<Operand, String> {
        let elems = rows * cols;
        let slot = self.copies.get_mut(which).ok_or("no such copy buffer")?;
        if slot.as_ref().is_none_or(|b| b.len() < elems * 2) {
            *slot = None;
            *slot = Some(
                self.stream
                    .alloc_zeros::<u8>((elems * 2).max(2))
                    .map_err(|e| format!("cannot allocate a bf16 copy of {elems} values: {e}"))?,
            );
        }
        let dst = addr(
            slot.as_ref().ok_or("the copy buffer vanished")?,
            &self.stream,
        );
        let blocks = u32::try_from(elems.div_ceil(CAST_BLOCK as usize))
            .map_err(|_| format!("{elems} values are too many to round in one launch"))?;
        let args: [u64; 6] = [
            o.addr,
            dst,
            rows as u64,
            cols as u64,
            o.rs as u64,
            o.cs as u64,
        ];
        let mut launch = self.stream.launch_builder(&self.cast);
        for a in &args {
            launch.arg(a);
        }
        // SAFETY: `bind` checked that the source lies in its buffer; the copy holds
        // `rows·cols` bf16 values; the kernel writes exactly those.
        unsafe {
            launch.launch(LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (CAST_BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(|e| format!("the bf16 rounding kernel failed to launch: {e}"))?;
        Ok(Operand {
            addr: dst,
            elem: Elem::Bf16,
            rs: cols,
            cs: 1,
        })
    }

    /// Queues the product on the stream.
    pub fn run(&mut self, p: &Product) -> Result<(), String> {
        let Product { m, n, k, .. } = *p;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return Err("a product with an empty inner dimension".into());
        }
        let (mut a, mut b) = (p.a, p.b);
        let bf16 = a.elem == Elem::Bf16 || b.elem == Elem::Bf16;
        if bf16 {
            if a.elem == Elem::F32 {
                a = self.rounded(0, &a, m, k)?;
            }
            if b.elem == Elem::F32 {
                b = self.rounded(1, &b, k, n)?;
            }
        }
        for (o, what) in [(&a, "A"), (&b, "B")] {
            if !matches!(o.elem, Elem::F32 | Elem::Bf16) {
                return Err(format!("product operand {what} is {}", o.elem));
            }
        }
        let (a_rows, a_ld) = storage(&a, m, k).ok_or("operand A has no unit stride")?;
        let (b_rows, b_ld) = storage(&b, k, n).ok_or("operand B has no unit stride")?;
        let (c_rows, c_ld) = storage(&p.c, m, n).ok_or("the output has no unit stride")?;
        if !c_rows {
            return Err("the output of a product must be row-major".into());
        }
        // Cᵀ (n×m) = op(B-as-stored) · op(A-as-stored), column-major.
        let op = |row_major: bool| {
            if row_major {
                cublasOperation_t::CUBLAS_OP_N
            } else {
                cublasOperation_t::CUBLAS_OP_T
            }
        };
        let dtype = if bf16 {
            cudaDataType::CUDA_R_16BF
        } else {
            cudaDataType::CUDA_R_32F
        };
        let alpha = 1.0f32;
        let beta = if p.accumulate { 1.0f32 } else { 0.0 };
        // SAFETY: every operand was checked against its buffer (`bind`, `rounded`); the
        // leading dimensions cover the stored rows; the handle works on the backend's stream.
        let status = unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(b_rows),
                op(a_rows),
                int(n, "n")?,
                int(m, "m")?,
                int(k, "k")?,
                (&alpha as *const f32).cast::<c_void>(),
                b.addr as *const c_void,
                dtype,
                int(b_ld, "ldb")?,
                a.addr as *const c_void,
                dtype,
                int(a_ld, "lda")?,
                (&beta as *const f32).cast::<c_void>(),
                p.c.addr as *mut c_void,
                cudaDataType::CUDA_R_32F,
                int(c_ld, "ldc")?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        status.map_err(|e| format!("cuBLAS refused a {m}×{n}×{k} product: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(rs: usize, cs: usize) -> Operand {
        Operand {
            addr: 0,
            elem: Elem::F32,
            rs,
            cs,
        }
    }

    #[test]
    fn storage_follows_the_unit_stride() {
        assert_eq!(storage(&o(8, 1), 4, 8), Some((true, 8)));
        assert_eq!(storage(&o(10, 1), 4, 8), Some((true, 10)));
        assert_eq!(storage(&o(1, 4), 4, 8), Some((false, 4)));
        // A single row may have any row stride.
        assert_eq!(storage(&o(0, 1), 1, 8), Some((true, 8)));
        // Overlapping rows and no unit stride are not matrices cuBLAS can read.
        assert_eq!(storage(&o(4, 1), 4, 8), None);
        assert_eq!(storage(&o(8, 2), 4, 4), None);
    }
}
