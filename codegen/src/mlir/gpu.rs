//! Lowering the `scf.parallel` form of a kernel group to PTX through MLIR's GPU dialect, and
//! reading the PTX back out of the resulting `gpu.binary` ops.

use super::{MlirContext, pipelines};
use crate::error::CodegenError;
use melior::StringRef;
use melior::ir::attribute::{ArrayAttribute, AttributeLike, StringAttribute};
use melior::ir::operation::OperationLike;
use melior::ir::{BlockLike, Module};
use std::path::PathBuf;

/// Which NVIDIA GPU to generate PTX for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuTarget {
    /// The SM architecture, e.g. `sm_90`; also the `ptxas -arch`.
    pub chip: String,
    /// LLVM NVPTX features; the PTX ISA version must support `chip` (`+ptx80` for sm_90, or
    /// LLVM aborts the process).
    pub features: String,
    /// `libdevice.10.bc` to link, which `math.exp` & co. need; see
    /// [`crate::toolchain::libdevice`].
    pub libdevice: Option<PathBuf>,
}

impl GpuTarget {
    /// Hopper (`sm_90`, PTX ISA 8.0), the design's GPU target.
    pub fn sm_90(libdevice: Option<PathBuf>) -> Self {
        Self {
            chip: "sm_90".to_string(),
            features: "+ptx80".to_string(),
            libdevice,
        }
    }

    /// The device pipeline for this target (see [`pipelines::gpu_device`]).
    pub fn device_pipeline(&self) -> Result<String, CodegenError> {
        pipelines::gpu_device(&self.chip, &self.features, self.libdevice.as_deref())
    }
}

/// The PTX of one outlined kernel module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuBinary {
    /// The `gpu.binary` symbol, `<function>_kernel`; the PTX `.entry` has the same name.
    pub name: String,
    /// The PTX assembly text.
    pub ptx: String,
}

/// Maps every `scf.parallel` of `module` onto GPU blocks and threads
/// ([`pipelines::gpu_mapping`], blocks of [`pipelines::GPU_BLOCK_SIZE`]), lowers the outlined kernels with `target`'s device pipeline,
/// and returns their PTX. `module` is rewritten in place; its host side keeps the
/// `gpu.launch_func` ops, which record each kernel's launch shape.
pub fn lower_to_ptx(
    mlir: &MlirContext,
    module: &mut Module,
    target: &GpuTarget,
) -> Result<Vec<GpuBinary>, CodegenError> {
    let device_pipeline = target.device_pipeline()?;
    mlir.verify(module, "before GPU lowering")?;
    mlir.run_pipeline(module, &pipelines::gpu_mapping(pipelines::GPU_BLOCK_SIZE))?;
    mlir.run_pipeline(module, &device_pipeline)?;
    extract_ptx(module)
}

/// Reads the PTX text of every `gpu.binary` at the top level of `module`, in module order.
/// It is an error if there is none, since then no loop was mapped to the GPU.
pub fn extract_ptx(module: &Module) -> Result<Vec<GpuBinary>, CodegenError> {
    let mut binaries = Vec::new();
    let mut next = module.body().first_operation();
    while let Some(operation) = next {
        if operation.name().as_string_ref().as_str() == Ok("gpu.binary") {
            binaries.extend(binary_ptx(&operation)?);
        }
        next = operation.next_in_block();
    }
    if binaries.is_empty() {
        return Err(CodegenError::MissingPtx(
            "the module has no gpu.binary: no scf.parallel loop was mapped to the GPU".into(),
        ));
    }
    Ok(binaries)
}

fn binary_ptx<'c>(operation: &impl OperationLike<'c, 'c>) -> Result<Vec<GpuBinary>, CodegenError> {
    let name = operation
        .attribute("sym_name")
        .ok()
        .and_then(|attribute| StringAttribute::try_from(attribute).ok())
        .map(|attribute| attribute.value().to_string())
        .unwrap_or_default();
    let missing = |what: &str| CodegenError::MissingPtx(format!("gpu.binary @{name}: {what}"));
    let objects = operation
        .attribute("objects")
        .ok()
        .and_then(|attribute| ArrayAttribute::try_from(attribute).ok())
        .ok_or_else(|| missing("no `objects` array"))?;
    (0..objects.len())
        .map(|index| {
            let object = objects
                .element(index)
                .map_err(|_| missing("unreadable object"))?;
            // SAFETY: `object` is a live attribute of this context; the type test guards the
            // accessor, and the returned string is copied before the attribute can go away.
            let text = unsafe {
                if !mlir_sys::mlirAttributeIsAGPUObjectAttr(object.to_raw()) {
                    return Err(missing("an object is not a #gpu.object"));
                }
                StringRef::from_raw(mlir_sys::mlirGPUObjectAttrGetObject(object.to_raw()))
                    .as_str()
                    .map(str::to_string)
            }
            .map_err(|_| missing("the object is not text (was format=isa used?)"))?;
            Ok(GpuBinary {
                name: name.clone(),
                ptx: text.trim_end_matches('\0').to_string(),
            })
        })
        .collect()
}
