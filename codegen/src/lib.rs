//! zambac's code generator: fused kernel groups → MLIR (melior) → LLVM IR → inkwell →
//! host object code and PTX for sm_90.
//!
//! A kernel group is built as one MLIR function in a [`MlirContext`] (melior builders over
//! arith/math/memref/scf/vector, `scf.parallel` for the parallel dimensions, and
//! `llvm.emit_c_interface` so the host can call `_mlir_ciface_<name>` with memref
//! descriptors). The same function is then lowered twice:
//!
//! - host: [`lower_to_host`] → [`compile_host_object`] (LLVM `default<O3>`, x86-64 object) →
//!   [`link_shared_library`] (`host.so`);
//! - GPU: [`lower_to_ptx`] (parallel loops → blocks/threads → NVVM → PTX for `sm_90`), then
//!   [`toolchain::ptxas_check`] for registers and spills.
//!
//! [`compile_host`] and [`compile_gpu`] do this for a program's kernels ([`kernels`]: one
//! MLIR function per [`zambac_engine::KernelKind`], exported as `zk_<symbol>`): one
//! `host.so` with every kernel, one PTX module with an `.entry` per kernel.
//!
//! [`compile_ptx`] is the direct inkwell route from an LLVM module to PTX. Every failure is a
//! [`CodegenError`] carrying MLIR diagnostics, LLVM messages or tool output. The pass
//! pipelines are public constants ([`pipelines`]) so dumps can record them.

pub mod cache;
mod device;
mod dump;
mod error;
mod host;
pub mod kernels;
pub mod link;
pub mod llvm;
pub mod mlir;
pub mod toolchain;

pub use cache::KernelCache;
pub use device::{GpuKernel, GpuModule, compile_gpu};
pub use error::CodegenError;
pub use host::{HostLibrary, compile_host, compile_host_scheduled};
pub use link::link_shared_library;
pub use llvm::{
    HostObject, HostTarget, PtxAssembly, compile_host_object, compile_ptx, translate_to_llvm,
};
pub use mlir::{
    GpuBinary, GpuTarget, MlirContext, extract_ptx, lower_to_host, lower_to_ptx, pipelines,
};

/// The melior and inkwell versions this crate is built against, so callers build IR with
/// exactly the same types.
pub use {inkwell, melior};
