//! The engine format: what `zambac build` writes and every compiled backend runs.
//!
//! An engine is a directory:
//!
//! - `manifest.json` — [`Manifest`]: format version, model spec, weight table, kernel
//!   table, execution programs, the names and checksums of the other files, build notes;
//! - `weights.bin` — every parameter once, f32 or bf16, each at a 64-byte aligned offset so
//!   the file is used in place through a memory map;
//! - `host.so` — the generated CPU kernels (`zk_<symbol>`, see `zambac_ir::program`);
//! - `kernels.ptx` — the generated GPU kernels, when built for a GPU.
//!
//! [`EngineWriter`] produces one atomically and reproducibly (same inputs, same bytes);
//! [`Engine::open`] checks all of it before anything runs, because an engine directory is
//! user input: it may be truncated, edited, copied half-way or built by another version.

mod dtype;
mod manifest;
mod open;
mod validate;
mod writer;

pub use dtype::{Dtype, bf16_bits, widen_bf16};
pub use manifest::{Checksum, FileRef, Manifest, ManifestParts, WeightEntry};
pub use open::{Engine, WeightView};
pub use writer::{EngineWriter, WriteProgress};

/// The only manifest layout this runtime reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Alignment of every tensor in `weights.bin`: a cache line, and enough for any SIMD load.
pub const WEIGHT_ALIGN: u64 = 64;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "weights.bin";
pub const HOST_FILE: &str = "host.so";
pub const PTX_FILE: &str = "kernels.ptx";
