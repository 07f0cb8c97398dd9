//! The MLIR pass pipelines, as the exact text handed to MLIR's pipeline parser, so that a dump
//! can record which pipeline produced an artefact and `mlir-opt-22 --pass-pipeline='…'` can
//! replay it.

use crate::error::CodegenError;
use std::path::Path;

/// Host lowering: `func`/`arith`/`math`/`memref`/`scf` (including `scf.parallel`)/`vector`/
/// `affine` → LLVM dialect.
///
/// Order matters: `vector` transfers become `scf` loops before `scf` becomes `cf`;
/// `convert-math-to-llvm` takes the ops LLVM has intrinsics for and `convert-math-to-libm`
/// the rest (e.g. `math.erf` → `erff`, vectors unrolled with `vector.extract`), both before
/// `convert-vector-to-llvm` so the unrolling is lowered too; `log1p` is left to libm
/// (`approximate-log1p=false`) because the LLVM lowering computes `log(1 + x)`, which loses
/// all precision for the tiny `x` of a very negative softplus; `expand-strided-metadata`
/// emits `affine.apply`, which `lower-affine` must remove before `finalize-memref-to-llvm`.
/// `enable-x86vector` lowers the `x86vector` ops (`avx512.dot`: `vdpbf16ps`) that kernels
/// built for AVX-512 BF16 use.
pub const HOST: &str = "builtin.module(\
func.func(arith-expand,convert-vector-to-scf,convert-scf-to-cf),\
convert-math-to-llvm{approximate-log1p=false},\
convert-math-to-libm,\
convert-vector-to-llvm{enable-x86vector=true},\
expand-strided-metadata,\
lower-affine,\
finalize-memref-to-llvm,\
convert-arith-to-llvm,\
convert-index-to-llvm,\
convert-cf-to-llvm,\
convert-func-to-llvm,\
reconcile-unrealized-casts)";

/// GPU mapping: each `scf.parallel` is tiled by `block` (threads per block), the tile loop is
/// mapped to blocks and the intra-tile loop to threads, and the resulting `gpu.launch`
/// bodies are outlined into one `gpu.module` per kernel.
///
/// `no-min-max-bounds=true` is required: without it the intra-tile bound is an `affine.min`
/// and `convert-parallel-loops-to-gpu` silently leaves the loops unconverted. With it, the
/// tail is guarded by an `scf.if` instead — but that guard is wrong for loops whose step is
/// not 1 (MLIR 22 multiplies the intra-tile index by the step twice), so loops mapped to the
/// GPU must have unit step.
///
/// `canonicalize` folds the launch-size arithmetic and `gpu-launch-sink-index-computations`
/// moves constants into the launch body, so that the outlined kernel captures only the
/// function's own arguments (its parameters are then a stable ABI).
pub fn gpu_mapping(block: u32) -> String {
    format!(
        "builtin.module(\
func.func(\
scf-parallel-loop-tiling{{parallel-loop-tile-sizes={block} no-min-max-bounds=true}},\
gpu-map-parallel-loops,\
convert-parallel-loops-to-gpu,\
canonicalize,\
gpu-launch-sink-index-computations),\
gpu-kernel-outlining)"
    )
}

/// Threads per block of [`gpu_mapping`] unless a kind asks for fewer
/// (`kernels::gpu_block_size`).
pub const GPU_BLOCK_SIZE: u32 = 256;

/// The passes run inside each `gpu.module` before serialization: the same `vector`/`scf`/
/// `memref`/`affine` clean-up as on the host, then `convert-gpu-to-nvvm` (which also maps
/// `math.*` to libdevice `__nv_*` calls). `lower-affine` must precede `convert-gpu-to-nvvm`,
/// or translation fails on a leftover `builtin.unrealized_conversion_cast`.
pub const GPU_MODULE_PASSES: &str = "gpu.module(\
convert-vector-to-scf,\
convert-scf-to-cf,\
expand-strided-metadata,\
lower-affine,\
convert-vector-to-llvm,\
convert-gpu-to-nvvm,\
canonicalize,\
cse,\
reconcile-unrealized-casts)";

/// The device pipeline for a chip: attach an NVVM target (linking libdevice when given),
/// lower each `gpu.module` with [`GPU_MODULE_PASSES`], and serialize it to PTX text
/// (`format=isa`, which needs no CUDA toolkit).
///
/// It is built at run time because the libdevice path is only known then; the path must not
/// contain characters that end a pass option.
pub fn gpu_device(
    chip: &str,
    features: &str,
    libdevice: Option<&Path>,
) -> Result<String, CodegenError> {
    let link = match libdevice {
        Some(path) => format!(" l={}", pass_option_path(path)?),
        None => String::new(),
    };
    Ok(format!(
        "builtin.module(nvvm-attach-target{{chip={chip} features={features} O=3{link}}},\
{GPU_MODULE_PASSES},gpu-module-to-binary{{format=isa}})"
    ))
}

fn pass_option_path(path: &Path) -> Result<&str, CodegenError> {
    path.to_str()
        .filter(|text| {
            !text.is_empty()
                && !text
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '=' | '"' | '\''))
        })
        .ok_or_else(|| CodegenError::UnquotablePath(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_pipeline_names_chip_features_and_libdevice() {
        let pipeline = gpu_device("sm_90", "+ptx80", Some(Path::new("/x/libdevice.10.bc")))
            .expect("plain path");
        assert_eq!(
            pipeline,
            format!(
                "builtin.module(nvvm-attach-target{{chip=sm_90 features=+ptx80 O=3 \
l=/x/libdevice.10.bc}},{GPU_MODULE_PASSES},gpu-module-to-binary{{format=isa}})"
            )
        );
    }

    #[test]
    fn a_path_that_would_break_the_option_syntax_is_refused() {
        let error = gpu_device("sm_90", "+ptx80", Some(Path::new("/a b/libdevice.10.bc")));
        assert!(matches!(error, Err(CodegenError::UnquotablePath(_))));
    }
}
