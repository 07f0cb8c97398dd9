//! zambac's runtime: runs engines. It links no compiler — no MLIR, no LLVM, no frontend, no
//! IR — only the engine contract (`zambac-engine`), the generated host code an engine
//! carries, and a tuned GEMM library.
//!
//! - [`cpu`] — the `cpu` backend: an engine's programs over its `host.so` kernels;
//! - [`cuda`] — the `cuda` backend: its PTX on an NVIDIA GPU through the CUDA driver,
//!   products through cuBLAS (loaded at run time);
//! - [`session`] — the [`session::Backend`] trait, a sequence's typed [`session::State`],
//!   and generation (prefill, then decode token by token);
//! - [`sampling`], [`bench`] — token choice and measurement;
//! - [`serve`] — `zambac-run serve`: an OpenAI-compatible HTTP server with continuous
//!   batching;
//! - [`cli`] — `run` and `bench` as the `zambac-run` binary and the compiler's `zambac`
//!   share them: the same flags, output and `--dump-logits` format.

// Engines, snapshots, prompts and HTTP requests reach this crate from outside: no
// panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bench;
pub mod cli;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod sampling;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod tensor;
pub mod tokenizer;

pub use error::RuntimeError;
pub use tensor::Tensor;
