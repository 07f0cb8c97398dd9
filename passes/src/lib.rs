//! zambac's optimisation passes and pass manager.
//!
//! A pass is one file and one name (`fuse-mamba` lives in `fuse_mamba.rs`); passes are
//! registered once in [`registry`] and ordered only in [`pipeline`]. The
//! [`manager::PassManager`] verifies the IR after every pass and provides printing,
//! dumps, timing, disabling and custom pipelines.

mod canonicalize;
mod dce;
mod dedup_weights;
mod fuse_adapters;
mod fuse_epilogues;
mod fuse_mamba;
mod hoist_shared_input;
pub mod manager;
mod pattern;
pub mod pipeline;
mod plan_memory;
pub mod registry;

pub use canonicalize::Canonicalize;
pub use dce::Dce;
pub use dedup_weights::DedupWeights;
pub use fuse_adapters::FuseAdapters;
pub use fuse_epilogues::FuseEpilogues;
pub use fuse_mamba::FuseMamba;
pub use hoist_shared_input::HoistSharedInput;
pub use manager::{Changed, Options, Pass, PassCx, PassError, PassManager, PipelineError};
pub use plan_memory::PlanMemory;
pub use registry::{REGISTRY, lookup};
