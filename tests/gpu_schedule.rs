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

/// Rows wide enough for a block per row (hidden 512: the norms, the concatenation of 1024,
/// the Mamba2 gate norm over 1024, the MLP's epilogues) — the schedule whose warps add
/// their sums through workgroup memory between barriers — against the host schedule on
/// random weights, both families, prefill and decode.
#[test]
fn wide_rows_take_a_block_each_and_match_the_host_schedule() {
    use common::random_model::RandomModel;
    let dir = tempfile::tempdir().unwrap();
    for version in [1, 2] {
        let model = RandomModel {
            version,
            hidden: 512,
            layers: 3,
            hybrid: vec![false, true, false],
            blocks: 1,
            mamba_heads: 8,
            groups: if version == 2 { 2 } else { 1 },
            d_state: 8,
            d_conv: 4,
            dt_rank: 8,
            attn_heads: 4,
            kv_heads: 4,
            rope: version == 2,
            concat: true,
            attn_rank: if version == 2 { 4 } else { 0 },
            mlp_rank: if version == 2 { 4 } else { 0 },
            intermediate: 1100,
            activation: "gelu",
            tie: true,
            proj_bias: false,
            conv_bias: true,
            dt_clamp: "none",
        };
        let toml = dir.path().join(format!("wide{version}.toml"));
        std::fs::write(&toml, model.toml()).unwrap();
        let prompt: Vec<i64> = (0..9).map(|i| (i * 7 + 3) % 61).collect();
        let logits: Vec<Vec<Vec<f32>>> = [&[][..], &["--host-schedule", "gpu"][..]]
            .iter()
            .enumerate()
            .map(|(i, schedule)| {
                let engine = dir.path().join(format!("wide{version}-{i}.engine"));
                let mut args = vec![
                    "build",
                    toml.to_str().unwrap(),
                    "-o",
                    engine.to_str().unwrap(),
                    "--weights",
                    "random:3",
                ];
                args.extend_from_slice(schedule);
                let out = zambac(&args);
                assert!(out.status.success(), "{}", stderr(&out));
                let engine = zambac_engine::Engine::open(&engine).unwrap();
                let mut cpu = zambac::engines::cpu_backend(engine, 2, "off").unwrap();
                trajectory(cpu.as_mut(), &prompt, 6)
            })
            .collect();
        let scale = logits[0]
            .iter()
            .flatten()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        for (row, (host, gpu)) in logits[0].iter().zip(&logits[1]).enumerate() {
            let d = max_diff(host, gpu);
            assert!(
                d <= TOL,
                "Zamba{version} row {row}: host and GPU schedules differ by {d} (logits up to {scale})"
            );
        }
        eprintln!(
            "Zamba{version}: logits scale {scale}, largest difference {}",
            logits[0]
                .iter()
                .zip(&logits[1])
                .map(|(a, b)| max_diff(a, b))
                .fold(0.0, f32::max)
        );
    }
}
