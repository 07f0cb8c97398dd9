//! The one error type of the code generator.
//!
//! Every stage (MLIR parsing, pass pipelines, translation to LLVM IR, LLVM code generation,
//! external tools) can fail on input that a user or an earlier stage produced, so each failure
//! is a value that carries what the underlying tool said: MLIR diagnostics, LLVM messages, or
//! the stderr of `ptxas` / `cc`. Nothing here panics on such input.

use std::path::PathBuf;

/// What went wrong while generating or checking code.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// MLIR rejected the text of a module.
    #[error("MLIR could not parse the module:\n{diagnostics}")]
    MlirParse {
        /// The diagnostics MLIR emitted, one per line.
        diagnostics: String,
    },

    /// A module failed the MLIR verifier, i.e. an earlier stage built invalid IR.
    #[error("MLIR module failed verification ({stage}):\n{diagnostics}")]
    MlirVerify {
        /// Which step was about to use the module.
        stage: &'static str,
        /// The diagnostics MLIR emitted, one per line.
        diagnostics: String,
    },

    /// The textual pass pipeline itself is malformed or names an unknown pass.
    #[error("MLIR pass pipeline does not parse: {message}\npipeline: {pipeline}")]
    PipelineSyntax {
        /// The pipeline text as given.
        pipeline: String,
        /// MLIR's explanation.
        message: String,
    },

    /// A pass of the pipeline failed on this module.
    #[error("MLIR pass pipeline failed:\n{diagnostics}\npipeline: {pipeline}")]
    PipelineFailed {
        /// The pipeline text as run.
        pipeline: String,
        /// The diagnostics MLIR emitted, one per line.
        diagnostics: String,
    },

    /// `mlirTranslateModuleToLLVMIR` refused the module (usually: not fully in the LLVM dialect).
    #[error("translating the MLIR module to LLVM IR failed:\n{diagnostics}")]
    TranslateToLlvm {
        /// The diagnostics MLIR emitted, one per line.
        diagnostics: String,
    },

    /// The GPU lowering ran but did not leave the expected `gpu.binary` / PTX behind.
    #[error("no PTX in the lowered module: {0}")]
    MissingPtx(String),

    /// LLVM reported an error (target lookup, verifier, pass pipeline, emission).
    #[error("LLVM {stage} failed: {message}")]
    Llvm {
        /// Which LLVM step failed.
        stage: &'static str,
        /// LLVM's message.
        message: String,
    },

    /// An external tool (`ptxas`, `cc`) could not be located.
    #[error("{tool} not found: {hint}")]
    ToolNotFound {
        /// The tool's name.
        tool: &'static str,
        /// How to make it available.
        hint: &'static str,
    },

    /// An external tool could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// An external tool ran and reported failure.
    #[error("`{command}` failed ({status}):\n{output}")]
    ToolFailed {
        /// The command line.
        command: String,
        /// The exit status as printed by the OS.
        status: String,
        /// The tool's stderr followed by its stdout.
        output: String,
    },

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// A path cannot be passed inside a textual MLIR pass option.
    #[error(
        "path {0} cannot be used in an MLIR pass option (it contains `,`, `{{`, `}}`, `=` or whitespace)"
    )]
    UnquotablePath(PathBuf),

    /// A kernel whose symbol or sizes no program can mean (a compiler bug upstream).
    #[error("kernel `{symbol}` is invalid: {reason}")]
    InvalidKernel {
        /// The kernel's symbol.
        symbol: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Two kernels of one library share a symbol.
    #[error("two kernels are named `{0}`; symbols must be unique")]
    DuplicateSymbol(String),

    /// The GPU outliner produced a kernel whose parameters are not the grid function's own
    /// arguments, so no launch ABI can be stated for it (a code generator bug).
    #[error("GPU kernel `{symbol}` has no stable parameter list: {detail}")]
    GpuAbi {
        /// The kernel's symbol.
        symbol: String,
        /// What the outliner produced.
        detail: String,
    },

    /// `ptxas` had to spill registers, which the design forbids.
    #[error("ptxas spills registers in {kernels}:\n{log}")]
    PtxSpills {
        /// The kernels that spill, comma-separated.
        kernels: String,
        /// The full `ptxas -v` output.
        log: String,
    },

    /// MLIR text with an interior NUL byte, which the C API cannot accept.
    #[error("MLIR source contains a NUL byte at offset {0}")]
    NulInSource(usize),
}

impl CodegenError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
