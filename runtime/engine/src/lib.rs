//! The engine contract: everything codegen writes and every backend reads, in one crate
//! that links no compiler.
//!
//! - [`Elem`] — the one element type of IR values, kernel views, weights and buffers;
//! - [`program`] — execution programs: steps over buffers, sizes as [`Expr`]essions;
//! - [`kernel`] — the kernel kinds an engine carries, and [`signature`] — each kind's views
//!   (roles, element types, access, extents), integer arguments and grid, as data;
//! - [`model`] — the model's dimensions and the typed layout of a sequence's state;
//! - [`rope`] — rotary embedding frequencies and their long-context scalings;
//! - [`manifest`] — `manifest.json`;
//! - [`Engine::open`] and [`EngineWriter`] — the engine directory: written atomically and
//!   reproducibly, opened only after every file and checksum checks out;
//! - [`resources`] — memory and disk room, checked before anything large is allocated;
//! - [`validate`] — the one validator that the writer runs before it commits an engine
//!   and the loader runs before anything executes.
//!
//! An engine is a directory:
//!
//! - `manifest.json` — [`Manifest`]: format version, model, weight table, kernel table,
//!   execution programs, the names and checksums of the other files, build notes;
//! - `weights.bin` — every parameter once, f32 or bf16, each at a 64-byte aligned offset so
//!   the file is used in place through a memory map;
//! - `host.so` — the generated CPU kernels (`zk_<symbol>`, see [`program`]);
//! - `kernels.ptx` — the generated GPU kernels, when built for a GPU;
//! - `tokenizer.json` — the model's tokenizer, when it came with one.

// Input reaches this crate from files: no panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod elem;
mod error;
pub mod expr;
pub mod gpu;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod model;
mod open;
pub mod program;
pub mod random;
pub mod resources;
pub mod rope;
pub mod signature;
mod sizes;
pub mod validate;
mod writer;

pub use elem::{Elem, bf16_bits, widen_bf16};
pub use error::EngineError;
pub use expr::{Domain, Expr, Point};
pub use gpu::{GpuBatchedEntry, GpuCode, GpuEntry, GpuParam};
pub use kernel::{
    ActKind, BinOp, ConvShift, DECODE_SPLIT_ALIGN, DECODE_SPLIT_MIN_KEYS, EpilogueOp, GEMV_LANES,
    Kernel, KernelKind, MAX_DECODE_SPLITS, MAX_SCAN_CHUNKS, decode_split_len, gemv_main_step,
    scan_chunking,
};
pub use manifest::{Checksum, FileRef, Manifest, ManifestParts, TargetCpu, WeightEntry};
pub use model::{GenerationInfo, ModelInfo, StateRole, StateSpec};
pub use open::{Engine, Verify, WeightView};
pub use program::{Buffer, Matrix, Program, ProgramName, Step, View};
pub use rope::{Rope, RopeScaling};
pub use signature::{Access, Role, Signature};
pub use sizes::check_symbol;
pub use writer::{Companions, EngineWriter, GpuFiles, WriteProgress};

/// The only manifest layout this crate reads and writes. Version 2: the model section
/// (dimensions, typed state layout, tokenizer) replaced the compiler's model description,
/// weights and kernels share one element type, programs are named by kind. Version 3: the
/// model's generation settings (`model.generation`: end-of-sequence ids, trained context,
/// chat template), which a version-2 reader would refuse as an unknown field. Version 4:
/// prefill attention is one kernel (`AttentionPrefill`, online softmax over key tiles)
/// instead of per-head products around a `Softmax` kernel over a T×T workspace. Version 5:
/// the GPU code (`gpu`: the PTX file, its chip and each entry's launch parameters) replaces
/// the bare `ptx` file reference, which said nothing a launcher could use. Version 6: decode
/// attention is split along the sequence (`AttentionDecode` writes per-split partials,
/// `AttentionCombine` merges them), so one head's keys are read by many threads. Version 7:
/// a GPU Gemv entry may carry its batched form (`gpu.kernels[].batched`), which a version-6
/// reader would refuse as an unknown field. Version 8: a prefill may scan its Mamba2 layers
/// in chunks (`Mamba2ChunkScan`, `Mamba2ChunkPass`) and a decode step run its conv inside
/// the scan (`Mamba2ConvScan`, the gate norm's `conv_shift`), which a version-7 reader does
/// not know.
pub const FORMAT_VERSION: u32 = 8;
/// Alignment of every tensor in `weights.bin`: a cache line, and enough for any SIMD load.
pub const WEIGHT_ALIGN: u64 = 64;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "weights.bin";
pub const HOST_FILE: &str = "host.so";
pub const PTX_FILE: &str = "kernels.ptx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
