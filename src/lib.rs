//! The zambac driver: the command line, wiring the stages together, reports.

// Command-line values and the files they name reach this crate first: no panicking
// shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod bench_cmd;
pub mod build_cmd;
pub mod cache_cmd;
pub mod engine_out;
pub mod engines;
pub mod error;
pub mod explore;
pub mod fmt;
pub mod generation_info;
pub mod ir_cmd;
pub mod model;
pub mod pass_args;
pub mod plot;
pub mod run_cmd;
