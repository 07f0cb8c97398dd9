//! From the LLVM dialect to machine code through inkwell: translation of an MLIR module into
//! LLVM IR, LLVM's `default<O3>` pipeline, and emission of x86-64 object code for `host.so` or
//! of PTX assembly for `nvptx64-nvidia-cuda`.
//!
//! MLIR and inkwell share one static copy of LLVM 22 in this binary, so the `llvm::Module`
//! that MLIR produces can be handed to inkwell directly. Every function also returns the
//! optimised `.ll` text so that dumps show exactly what was compiled.

use crate::error::CodegenError;
use crate::mlir::{GpuTarget, MlirContext};
use inkwell::OptimizationLevel;
use inkwell::context::Context;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{
    CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine, TargetTriple,
};

/// The LLVM pass pipeline run on every module before emission.
pub const LLVM_PIPELINE: &str = "default<O3>";

/// The triple of the host code zambac generates (the engine's `host.so` is x86-64 Linux).
pub const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The triple of NVIDIA GPU code.
pub const NVPTX_TRIPLE: &str = "nvptx64-nvidia-cuda";

/// Module and source-file name given to every LLVM module, so that nothing about the caller
/// (paths, MLIR's default `LLVMDialectModule`) leaks into object files.
const MODULE_NAME: &str = "zambac";

/// The x86-64 CPU that host code is tuned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTarget {
    /// LLVM CPU name, e.g. `znver4`, `x86-64-v3`.
    pub cpu: String,
    /// LLVM feature string, e.g. `+avx2,+fma`.
    pub features: String,
}

impl HostTarget {
    /// The CPU this process runs on: the fastest code, but machine-specific.
    pub fn native() -> Self {
        Self {
            cpu: TargetMachine::get_host_cpu_name().to_string(),
            features: TargetMachine::get_host_cpu_features().to_string(),
        }
    }

    /// Whether the feature string enables AVX2 (not merely the CPU name implying it).
    pub fn has_avx2(&self) -> bool {
        self.features.split(',').any(|f| f.trim() == "+avx2")
    }

    /// Whether the feature string enables AVX-512 BF16 (`vdpbf16ps`) and the vector
    /// lengths its 256-bit form needs.
    pub fn has_avx512_bf16(&self) -> bool {
        let has = |name: &str| self.features.split(',').any(|f| f.trim() == name);
        has("+avx512bf16") && has("+avx512vl") && has("+avx512f")
    }

    /// Libmvec's AVX2 functions where the target has AVX2, `math` ops otherwise.
    pub fn vector_math(&self) -> crate::kernels::VectorMath {
        if self.has_avx2() {
            crate::kernels::VectorMath::Libmvec
        } else {
            crate::kernels::VectorMath::Ops
        }
    }
}

impl Default for HostTarget {
    fn default() -> Self {
        Self::native()
    }
}

/// Host machine code for one MLIR module.
#[derive(Clone, Debug)]
pub struct HostObject {
    /// An ELF relocatable object, position-independent so it can go into a shared library.
    pub object: Vec<u8>,
    /// The optimised LLVM IR it was generated from.
    pub llvm_ir: String,
}

/// PTX for one LLVM module.
#[derive(Clone, Debug)]
pub struct PtxAssembly {
    /// The PTX text.
    pub ptx: String,
    /// The optimised LLVM IR it was generated from.
    pub llvm_ir: String,
}

/// Translates an MLIR module that is entirely in the LLVM dialect (after
/// [`crate::mlir::lower_to_host`]) into an LLVM module owned by `llvm`.
pub fn translate_to_llvm<'ctx>(
    mlir: &MlirContext,
    module: &melior::ir::Module,
    llvm: &'ctx Context,
) -> Result<Module<'ctx>, CodegenError> {
    mlir.take_diagnostics();
    // SAFETY: both handles are live; the returned module is created inside `llvm` and owned
    // by the caller, and inkwell's `Module` takes over that ownership. MLIR and inkwell link
    // the same static LLVM, so the pointer types are the same C++ objects.
    let raw = unsafe {
        mlir_sys::mlirTranslateModuleToLLVMIR(module.as_operation().to_raw(), llvm.raw().cast())
    };
    if raw.is_null() {
        return Err(CodegenError::TranslateToLlvm {
            diagnostics: mlir.take_diagnostics(),
        });
    }
    // SAFETY: `raw` is a non-null module that nothing else owns.
    let translated = unsafe { Module::new(raw.cast()) };
    translated.set_name(MODULE_NAME);
    translated.set_source_file_name(MODULE_NAME);
    Ok(translated)
}

/// Translates a host-lowered MLIR module to LLVM IR, optimises it with [`LLVM_PIPELINE`] for
/// `target`, and emits an x86-64 object.
pub fn compile_host_object(
    mlir: &MlirContext,
    module: &melior::ir::Module,
    target: &HostTarget,
) -> Result<HostObject, CodegenError> {
    let llvm = Context::create();
    let translated = translate_to_llvm(mlir, module, &llvm)?;
    Target::initialize_x86(&InitializationConfig::default());
    let machine = target_machine(HOST_TRIPLE, &target.cpu, &target.features, RelocMode::PIC)?;
    let llvm_ir = optimise(&translated, &machine)?;
    let object = emit(&machine, &translated, FileType::Object)?;
    Ok(HostObject { object, llvm_ir })
}

/// Optimises `module` in place for `target` and emits it as PTX. Kernels must already carry
/// the PTX kernel calling convention; libdevice is not linked on this path, so use
/// intrinsics with a native PTX lowering (`llvm.exp2.f32`, not `llvm.exp.f32`, which aborts
/// LLVM with "no libcall available for fexp").
pub fn compile_ptx(module: &Module, target: &GpuTarget) -> Result<PtxAssembly, CodegenError> {
    Target::initialize_nvptx(&InitializationConfig::default());
    let machine = target_machine(
        NVPTX_TRIPLE,
        &target.chip,
        &target.features,
        RelocMode::Default,
    )?;
    let llvm_ir = optimise(module, &machine)?;
    let assembly = emit(&machine, module, FileType::Assembly)?;
    let ptx = String::from_utf8(assembly).map_err(|error| CodegenError::Llvm {
        stage: "PTX emission",
        message: format!("PTX is not UTF-8: {error}"),
    })?;
    Ok(PtxAssembly { ptx, llvm_ir })
}

fn target_machine(
    triple: &str,
    cpu: &str,
    features: &str,
    relocation: RelocMode,
) -> Result<TargetMachine, CodegenError> {
    let triple = TargetTriple::create(triple);
    let target = Target::from_triple(&triple).map_err(|message| CodegenError::Llvm {
        stage: "target lookup",
        message: message.to_string(),
    })?;
    target
        .create_target_machine(
            &triple,
            cpu,
            features,
            OptimizationLevel::Aggressive,
            relocation,
            CodeModel::Default,
        )
        .ok_or_else(|| CodegenError::Llvm {
            stage: "target machine creation",
            message: format!("no target machine for cpu `{cpu}` with features `{features}`"),
        })
}

/// Sets the module's triple and data layout from `machine` (so the optimiser sees the real
/// vector widths and costs), verifies it, runs [`LLVM_PIPELINE`], and returns the result as
/// text.
fn optimise(module: &Module, machine: &TargetMachine) -> Result<String, CodegenError> {
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module.verify().map_err(|message| CodegenError::Llvm {
        stage: "verifier",
        message: message.to_string(),
    })?;
    let options = PassBuilderOptions::create();
    options.set_loop_vectorization(true);
    options.set_loop_slp_vectorization(true);
    options.set_loop_interleaving(true);
    options.set_loop_unrolling(true);
    module
        .run_passes(LLVM_PIPELINE, machine, options)
        .map_err(|message| CodegenError::Llvm {
            stage: LLVM_PIPELINE,
            message: message.to_string(),
        })?;
    Ok(module.print_to_string().to_string())
}

fn emit(
    machine: &TargetMachine,
    module: &Module,
    file_type: FileType,
) -> Result<Vec<u8>, CodegenError> {
    machine
        .write_to_memory_buffer(module, file_type)
        .map(|buffer| buffer.as_slice().to_vec())
        .map_err(|message| CodegenError::Llvm {
            stage: "code emission",
            message: message.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translating_a_module_not_in_the_llvm_dialect_reports_the_offending_op() {
        let mlir = MlirContext::new();
        let module = mlir
            .parse_module("func.func @f() { return }")
            .expect("valid module");
        let llvm = Context::create();
        let Err(CodegenError::TranslateToLlvm { diagnostics }) =
            translate_to_llvm(&mlir, &module, &llvm)
        else {
            panic!("func.func has no LLVM IR translation");
        };
        assert!(diagnostics.contains("func.func"), "{diagnostics}");
    }

    #[test]
    fn a_host_target_override_replaces_the_native_cpu() {
        let mlir = MlirContext::new();
        let mut module = mlir
            .parse_module("func.func @f() { return }")
            .expect("valid module");
        crate::mlir::lower_to_host(&mlir, &mut module).expect("host lowering");
        let target = HostTarget {
            cpu: "x86-64".to_string(),
            features: String::new(),
        };
        let object = compile_host_object(&mlir, &module, &target).expect("generic x86-64");
        assert_eq!(&object.object[..4], b"\x7fELF");
    }
}
