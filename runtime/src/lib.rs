//! zambac's runtime: runs engines. It links no compiler — no MLIR, no LLVM, no frontend, no
//! IR — only the engine contract (`zambac-engine`), the generated host code an engine
//! carries, and a tuned GEMM library.
//!
//! - [`cpu`] — the `cpu` backend: an engine's programs over its `host.so` kernels;
//! - [`session`] — the [`session::Backend`] trait, a sequence's typed [`session::State`],
//!   and generation (prefill, then decode token by token);
//! - [`sampling`], [`bench`] — token choice and measurement;
//! - [`serve`] — `zambac-run serve`: an OpenAI-compatible HTTP server with continuous
//!   batching;
//! - [`cli`] — `run` and `bench` as the `zambac-run` binary and the compiler's `zambac`
//!   share them: the same flags, output and `--dump-logits` format.

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
