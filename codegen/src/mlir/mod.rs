//! MLIR through melior: one context with everything registered, diagnostics captured into
//! errors, module parsing and cloning, and textual pass pipelines.
//!
//! Kernel groups are built with melior builders in a [`MlirContext`]; the same function is then
//! lowered twice — to the LLVM dialect for the host ([`lower_to_host`]) and through the GPU
//! dialect to PTX ([`lower_to_ptx`]). Pipelines are kept as text ([`pipelines`]) so the exact
//! pipeline that produced an artefact can be written next to it in a dump.

mod gpu;
pub mod pipelines;

pub use gpu::{GpuBinary, GpuTarget, extract_ptx, lower_to_ptx};

use crate::error::CodegenError;
use melior::Context;
use melior::diagnostic::{Diagnostic, DiagnosticSeverity};
use melior::dialect::DialectRegistry;
use melior::ir::Module;
use melior::ir::operation::OperationLike;
use melior::pass::PassManager;
use melior::utility::{
    parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes,
};
use std::sync::{Arc, Mutex, PoisonError};

/// A melior [`Context`] with all dialects, passes and LLVM/NVVM translations registered, whose
/// diagnostics are collected so that failures can report them instead of printing to stderr.
///
/// Multithreading is off: kernels are small, the machine has few cores, and a single thread
/// keeps diagnostics in a deterministic order. Parallelism belongs one level up (one context
/// per worker).
pub struct MlirContext {
    context: Context,
    diagnostics: Arc<Mutex<Vec<String>>>,
}

impl MlirContext {
    /// Creates a context ready to parse, build and lower any upstream dialect.
    pub fn new() -> Self {
        register_all_passes();
        let registry = DialectRegistry::new();
        register_all_dialects(&registry);
        let context = Context::new_with_registry(&registry, false);
        context.load_all_available_dialects();
        register_all_llvm_translations(&context);
        let diagnostics = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&diagnostics);
        context.attach_diagnostic_handler(move |diagnostic| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(render(&diagnostic));
            true
        });
        Self {
            context,
            diagnostics,
        }
    }

    /// The melior context, for building IR with melior's builders.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Parses MLIR text into a module and verifies it.
    pub fn parse_module(&self, source: &str) -> Result<Module<'_>, CodegenError> {
        if let Some(offset) = source.find('\0') {
            return Err(CodegenError::NulInSource(offset));
        }
        self.take_diagnostics();
        let module =
            Module::parse(&self.context, source).ok_or_else(|| CodegenError::MlirParse {
                diagnostics: self.take_diagnostics(),
            })?;
        self.verify(&module, "after parsing")?;
        Ok(module)
    }

    /// Runs the MLIR verifier; `stage` says where in the flow this happened.
    pub fn verify(&self, module: &Module, stage: &'static str) -> Result<(), CodegenError> {
        self.take_diagnostics();
        if module.as_operation().verify() {
            Ok(())
        } else {
            Err(CodegenError::MlirVerify {
                stage,
                diagnostics: self.take_diagnostics(),
            })
        }
    }

    /// A deep copy of `module`, so that one function can be lowered both to the host and to
    /// the GPU (lowering rewrites a module in place).
    pub fn clone_module<'c>(&'c self, module: &Module<'c>) -> Module<'c> {
        // SAFETY: `mlirOperationClone` returns a new, owned `builtin.module` operation, and
        // `mlirModuleFromOperation` takes ownership of it; the clone lives in `self.context`.
        unsafe {
            Module::from_raw(mlir_sys::mlirModuleFromOperation(
                mlir_sys::mlirOperationClone(module.as_operation().to_raw()),
            ))
        }
    }

    /// Runs a textual pass pipeline (`builtin.module(...)`) on `module`, verifying after each
    /// pass.
    pub fn run_pipeline(&self, module: &mut Module, pipeline: &str) -> Result<(), CodegenError> {
        let manager = PassManager::new(&self.context);
        manager.enable_verifier(true);
        parse_pass_pipeline(manager.as_operation_pass_manager(), pipeline).map_err(|error| {
            CodegenError::PipelineSyntax {
                pipeline: pipeline.to_string(),
                message: error.to_string(),
            }
        })?;
        self.take_diagnostics();
        manager
            .run(module)
            .map_err(|_| CodegenError::PipelineFailed {
                pipeline: pipeline.to_string(),
                diagnostics: self.take_diagnostics(),
            })
    }

    /// Drains the diagnostics collected so far, one per line.
    pub(crate) fn take_diagnostics(&self) -> String {
        std::mem::take(
            &mut *self
                .diagnostics
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .join("\n")
    }
}

impl Default for MlirContext {
    fn default() -> Self {
        Self::new()
    }
}

/// Lowers a module of `func`/`arith`/`math`/`memref`/`scf`/`vector` ops to the LLVM dialect
/// with [`pipelines::HOST`], ready for [`crate::llvm::compile_host_object`].
pub fn lower_to_host(mlir: &MlirContext, module: &mut Module) -> Result<(), CodegenError> {
    mlir.verify(module, "before host lowering")?;
    mlir.run_pipeline(module, pipelines::HOST)
}

/// Notes longer than this are cut: MLIR attaches a "see current operation" note that prints
/// the whole failing operation, which for a fused kernel can run to many kilobytes; dumps
/// hold the full IR anyway.
const MAX_NOTE_BYTES: usize = 2048;

fn render(diagnostic: &Diagnostic) -> String {
    let severity = match diagnostic.severity() {
        DiagnosticSeverity::Error => "error",
        DiagnosticSeverity::Warning => "warning",
        DiagnosticSeverity::Remark => "remark",
        DiagnosticSeverity::Note => "note",
    };
    let mut text = format!("{severity}: {}: {diagnostic}", diagnostic.location());
    for index in 0..diagnostic.note_count() {
        if let Ok(note) = diagnostic.note(index) {
            let location = note.location().to_string();
            let note = note.to_string();
            let mut cut = note.len().min(MAX_NOTE_BYTES);
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&format!("\n  note: {location}: {}", &note[..cut]));
            if cut < note.len() {
                text.push_str(&format!("… ({} more bytes)", note.len() - cut));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU_FUNC_WITHOUT_NVVM_LOWERING: &str = r#"
module attributes {gpu.container_module} {
  gpu.module @m [#nvvm.target<chip = "sm_90", features = "+ptx80">] {
    gpu.func @k() kernel { gpu.return }
  }
}"#;

    #[test]
    fn a_parse_error_carries_the_mlir_diagnostic_with_its_location() {
        let mlir = MlirContext::new();
        let Err(CodegenError::MlirParse { diagnostics }) = mlir.parse_module("func.func @f( {")
        else {
            panic!("malformed text must not parse");
        };
        assert!(
            diagnostics.contains("error: loc(\"-\":1:14)"),
            "{diagnostics}"
        );
    }

    #[test]
    fn an_unknown_pass_is_a_pipeline_syntax_error_naming_it() {
        let mlir = MlirContext::new();
        let mut module = mlir.parse_module("").expect("empty module");
        let error = mlir
            .run_pipeline(&mut module, "builtin.module(no-such-pass)")
            .expect_err("unknown pass");
        assert!(
            matches!(&error, CodegenError::PipelineSyntax { message, .. } if message.contains("no-such-pass")),
            "{error}"
        );
    }

    #[test]
    fn a_failing_pass_reports_its_diagnostics_and_the_pipeline() {
        let mlir = MlirContext::new();
        let mut module = mlir
            .parse_module(GPU_FUNC_WITHOUT_NVVM_LOWERING)
            .expect("valid module");
        let pipeline = "builtin.module(gpu-module-to-binary{format=isa})";
        let error = mlir
            .run_pipeline(&mut module, pipeline)
            .expect_err("gpu.func cannot be serialized");
        let CodegenError::PipelineFailed {
            pipeline: reported,
            diagnostics,
        } = error
        else {
            panic!("expected PipelineFailed, got {error}");
        };
        assert_eq!(reported, pipeline);
        assert!(
            diagnostics.contains("unsupported GPU operation: gpu.func"),
            "{diagnostics}"
        );
    }

    #[test]
    fn a_module_without_parallel_loops_has_no_ptx() {
        let mlir = MlirContext::new();
        let mut module = mlir
            .parse_module("func.func @f() { return }")
            .expect("valid module");
        let error = lower_to_ptx(&mlir, &mut module, &GpuTarget::sm_90(None))
            .expect_err("nothing to map to the GPU");
        assert!(matches!(error, CodegenError::MissingPtx(_)), "{error}");
    }

    #[test]
    fn a_cloned_module_is_independent_of_its_original() {
        let mlir = MlirContext::new();
        let original = mlir
            .parse_module(
                "func.func @f(%x: f32) -> f32 { %y = arith.addf %x, %x : f32\n return %y : f32 }",
            )
            .expect("valid module");
        let before = original.as_operation().to_string();
        let mut copy = mlir.clone_module(&original);
        lower_to_host(&mlir, &mut copy).expect("host lowering");
        assert_eq!(original.as_operation().to_string(), before);
        assert!(copy.as_operation().to_string().contains("llvm.fadd"));
    }
}
