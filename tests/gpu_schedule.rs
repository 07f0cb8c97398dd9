//! The GPU kernels' schedule — lanes per grid index, warps whose shuffles the host runs as
//! a loop over lanes — compiled for the CPU (`zambac build --host-schedule gpu`) and run on
//! whole fixture models against Hugging Face: index, lane-partition and reduction mistakes
//! of the GPU code show up here, without a GPU. (The PTX itself is checked on a GPU by
//! scripts/gpu-check.sh.)

mod common;
use common::*;

const TOL: f32 = 2e-4;

#[test]
fn every_fixture_matches_hf_with_the_gpu_schedule() {
    for name in fixture_names() {
        check_hf_dir_built(
            &fixture(&name),
            &name,
            "cpu",
            TOL,
            &["--host-schedule", "gpu"],
        );
    }
}

#[test]
fn the_gpu_schedule_matches_hf_with_bf16_kv_caches() {
    check_hf_dir_built(
        &fixture("zamba2-tiny"),
        "zamba2-tiny",
        "cpu",
        0.2,
        &["--host-schedule", "gpu", "--kv-dtype", "bf16"],
    );
}

/// bf16 SSM states through the GPU schedule, whose scans load a lane's state columns once
/// and store them once (the host runs each token's update through the buffer, so it rounds
/// them every token): the same tolerance as bf16 states get on the host schedule
/// (tests/bf16_state.rs).
#[test]
fn the_gpu_schedule_matches_hf_with_bf16_ssm_states() {
    for name in ["zamba2-tiny", "zamba1-tiny"] {
        check_hf_dir_built(
            &fixture(name),
            name,
            "cpu",
            0.5,
            &["--host-schedule", "gpu", "--state-dtype", "bf16"],
        );
    }
}
