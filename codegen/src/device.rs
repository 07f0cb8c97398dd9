//! Compiling a program's kernels into one PTX module for the GPU.
//!
//! Each kernel's grid function is built for [`Target::Gpu`] (one grid index per thread) and
//! mapped to the GPU on its own ([`pipelines::gpu_mapping`], with its kind's block size); the outlined kernel is renamed
//! `zk_<symbol>` — the host entry's name — and moved into one shared `gpu.module`, which the
//! device pipeline turns into a single PTX text with one `.entry` per kernel. The parameter
//! order of each entry is read back from the launch the outliner produced ([`GpuParam`]).
//! When `ptxas` is available the PTX is assembled for the target and spills are an error.

use crate::dump::Dumps;
use crate::error::CodegenError;
use crate::host::check_unique;
use crate::kernels::{
    GpuParam, Target, Variant, VectorMath, build_module_variant, gpu_params_variant, grid_function,
};
use crate::mlir::{GpuTarget, MlirContext, extract_ptx, pipelines};
use crate::toolchain::{self, PtxasReport};
use melior::ir::attribute::StringAttribute;
use melior::ir::operation::{OperationLike, OperationMutLike};
use melior::ir::{BlockLike, Module, Operation, OperationRef, RegionLike};
use std::path::Path;
use zambac_engine::Kernel;

/// The `gpu.module` (and PTX module) that holds every kernel.
const GPU_MODULE: &str = "zambac";

/// One `.entry` of the PTX module and how to launch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuKernel {
    /// The entry's name, `zk_<symbol>`.
    pub entry: String,
    /// Its parameters in order (each 8 bytes).
    pub params: Vec<GpuParam>,
    /// Threads per grid index (see [`crate::kernels::lanes`]).
    pub lanes: u32,
    /// Threads per block; a launch over `[begin, end)` uses
    /// `⌈(end − begin) · lanes / block_size⌉` blocks.
    pub block_size: u32,
    /// For a Gemv, the parameters of its batched form's entry
    /// ([`zambac_engine::gpu::batched_entry`]; same lanes and block size).
    pub batched: Option<Vec<GpuParam>>,
}

/// The PTX of a program's kernels.
#[derive(Clone, Debug)]
pub struct GpuModule {
    /// One PTX module with a `.entry` per kernel.
    pub ptx: String,
    /// The SM architecture the PTX targets (`sm_90`).
    pub chip: String,
    /// The entries, in the kernels' order.
    pub kernels: Vec<GpuKernel>,
    /// What `ptxas` reported, when it was found.
    pub ptxas: Option<PtxasReport>,
}

/// Compiles `kernels` to PTX for `target`. With `dumps`, writes `<symbol>.gpu.mlir` (after
/// mapping and outlining) for each kernel and `kernels.ptx`.
pub fn compile_gpu(
    kernels: &[Kernel],
    target: &GpuTarget,
    dumps: Option<&Path>,
) -> Result<GpuModule, CodegenError> {
    check_unique(kernels)?;
    let dumps = Dumps::new(dumps)?;
    let mlir = MlirContext::new();
    let mut combined = mlir.parse_module(&format!(
        "module attributes {{gpu.container_module}} {{ gpu.module @{GPU_MODULE} {{ }} }}"
    ))?;
    let mut entries = Vec::with_capacity(kernels.len());
    for kernel in kernels {
        let block_size = crate::kernels::gpu_block_size(&kernel.kind);
        let entry = format!("zk_{}", kernel.symbol);
        let params = outline(&mlir, &combined, kernel, Variant::Single, &entry, &dumps)?;
        let batched = match kernel.kind {
            zambac_engine::KernelKind::Gemv { .. } => {
                let name = zambac_engine::gpu::batched_entry(&kernel.symbol);
                Some(outline(
                    &mlir,
                    &combined,
                    kernel,
                    Variant::Batched,
                    &name,
                    &dumps,
                )?)
            }
            _ => None,
        };
        entries.push(GpuKernel {
            entry,
            params,
            lanes: crate::kernels::lanes(&kernel.kind, Target::Gpu) as u32,
            block_size,
            batched,
        });
    }
    let ptx = if kernels.is_empty() {
        String::new()
    } else {
        mlir.run_pipeline(&mut combined, &target.device_pipeline()?)?;
        let binaries = extract_ptx(&combined)?;
        binaries
            .into_iter()
            .map(|binary| binary.ptx)
            .collect::<Vec<_>>()
            .join("\n")
    };
    dumps.write("kernels.ptx", || ptx.clone())?;
    let ptxas = match toolchain::ptxas() {
        Some(_) if !ptx.is_empty() => Some(check_ptxas(&ptx, &target.chip)?),
        _ => None,
    };
    Ok(GpuModule {
        ptx,
        chip: target.chip.clone(),
        kernels: entries,
        ptxas,
    })
}

/// Builds `variant` of `kernel` for the GPU, maps and outlines it, and moves the kernel into
/// the shared `gpu.module` of `combined` as `entry`; returns the entry's parameters. With
/// `dumps`, writes the module after mapping (`<symbol>.gpu.mlir`, `<symbol>.batched.gpu.mlir`).
fn outline(
    mlir: &MlirContext,
    combined: &Module,
    kernel: &Kernel,
    variant: Variant,
    entry: &str,
    dumps: &Dumps,
) -> Result<Vec<GpuParam>, CodegenError> {
    let mut module = build_module_variant(
        mlir.context(),
        kernel,
        Target::Gpu,
        VectorMath::Ops,
        variant,
    )?;
    mlir.verify(&module, "before GPU mapping")?;
    let block_size = crate::kernels::gpu_block_size(&kernel.kind);
    mlir.run_pipeline(&mut module, &pipelines::gpu_mapping(block_size))?;
    let form = match variant {
        Variant::Single => "",
        Variant::Batched => ".batched",
    };
    dumps.write(&format!("{}{form}.gpu.mlir", kernel.symbol), || {
        module.as_operation().to_string()
    })?;
    let params = gpu_params_variant(&module, kernel, variant)?;
    adopt_kernel(mlir, &module, combined, kernel, entry)?;
    Ok(params)
}

/// Copies the kernel outlined from `kernel`'s grid function into the shared `gpu.module` of
/// `combined`, named `entry`.
fn adopt_kernel(
    mlir: &MlirContext,
    module: &Module,
    combined: &Module,
    kernel: &Kernel,
    entry: &str,
) -> Result<(), CodegenError> {
    let outlined = format!("{}_kernel", grid_function(&kernel.symbol));
    let missing = |what: &str| CodegenError::GpuAbi {
        symbol: kernel.symbol.clone(),
        detail: format!("{what} after outlining"),
    };
    let gpu_module = crate::kernels::top_level(module, "gpu.module", &outlined)
        .ok_or_else(|| missing("no gpu.module"))?;
    let body = gpu_module
        .region(0)
        .ok()
        .and_then(|region| region.first_block())
        .ok_or_else(|| missing("an empty gpu.module"))?;
    let function = body
        .first_operation()
        .filter(|op| op.name().as_string_ref().as_str() == Ok("gpu.func"))
        .ok_or_else(|| missing("no gpu.func"))?;
    let target = crate::kernels::top_level(combined, "gpu.module", GPU_MODULE)
        .and_then(|op| op.region(0).ok())
        .and_then(|region| region.first_block())
        .ok_or_else(|| missing("no shared gpu.module"))?;
    // The kernel's workgroup arrays (`memref.global`s the outliner copied beside it, named
    // after the kernel's symbol, so unique in the shared module) go with it.
    let mut next = function.next_in_block();
    while let Some(op) = next {
        if op.name().as_string_ref().as_str() == Ok("memref.global") {
            target.append_operation(clone_operation(op));
        }
        next = op.next_in_block();
    }
    let mut clone = clone_operation(function);
    clone.set_attribute(
        "sym_name",
        StringAttribute::new(mlir.context(), entry).into(),
    );
    target.append_operation(clone);
    Ok(())
}

/// A copy of `op` that nothing owns yet.
fn clone_operation<'c>(op: OperationRef<'c, '_>) -> Operation<'c> {
    // SAFETY: `mlirOperationClone` returns a new operation that nothing owns yet; `Operation`
    // takes ownership, and appending it to a block hands ownership to that block.
    unsafe { Operation::from_raw(mlir_sys::mlirOperationClone(op.to_raw())) }
}

/// Assembles `ptx` for `chip` and rejects spills, naming the kernels that spill.
fn check_ptxas(ptx: &str, chip: &str) -> Result<PtxasReport, CodegenError> {
    let report = toolchain::ptxas_check(ptx, chip)?;
    let spilling: Vec<&str> = report
        .functions
        .iter()
        .filter(|function| function.spill_store_bytes + function.spill_load_bytes > 0)
        .map(|function| function.name.as_str())
        .collect();
    if spilling.is_empty() {
        Ok(report)
    } else {
        Err(CodegenError::PtxSpills {
            kernels: spilling.join(", "),
            log: report.log.clone(),
        })
    }
}
