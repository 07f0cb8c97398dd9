//! The GPU kernels' schedule — lanes per grid index, warps whose shuffles the host runs as
//! a loop over lanes — compiled for the CPU (`zambac build --host-schedule gpu`) and run on
//! whole fixture models against Hugging Face: index, lane-partition and reduction mistakes
//! of the GPU code show up here, without a GPU. (The PTX itself is checked on a GPU by
//! scripts/gpu-check.sh.)

mod common;
use common::*;

const TOL: f32 = 2e-4;

/// The cpu backend of the engine `zambac build TOML -o ENGINE --weights WEIGHTS EXTRA…`
/// writes.
fn random_engine(
    toml: &std::path::Path,
    engine: &std::path::Path,
    weights: &str,
    extra: &[&str],
) -> Box<dyn zambac_runtime::session::Backend> {
    let args = [&["--weights", weights][..], extra].concat();
    let engine = zambac_engine::Engine::open(build_engine(toml, engine, &args)).unwrap();
    zambac::engines::cpu_backend(engine, 2, "off").unwrap()
}

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
                let mut cpu = random_engine(&toml, &engine, "random:3", schedule);
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

/// The Mamba2 forms of engines with GPU code — the chunked prefill scan, the fused conv and
/// scan of a decode step — on every Zamba2 fixture against Hugging Face (prefill, cached
/// decode, greedy tokens), with the host schedule and with the GPU's.
#[test]
fn every_zamba2_fixture_matches_hf_with_the_gpu_mamba2_forms() {
    for name in fixture_names()
        .into_iter()
        .filter(|n| n.starts_with("zamba2"))
    {
        for schedule in ["host", "gpu"] {
            check_hf_dir_built(
                &fixture(&name),
                &name,
                "cpu",
                TOL,
                &[GPU_FORMS, &["--host-schedule", schedule]].concat(),
            );
        }
    }
}

/// `zambac build` flags for the Mamba2 forms of an engine with GPU code.
const GPU_FORMS: &[&str] = &["--mamba2-prefill", "chunked", "--mamba2-decode", "fused"];

/// The GPU's Mamba2 forms against the host's on a random Zamba2 whose prompts run from one
/// token through one whole chunk of the fewest tokens a chunk takes (32), ragged chunks
/// (33: two; 100: four) to 22 chunks of 32 tokens (700): prefill logits (chunked against
/// sequential scans) and the decode steps after it (fused conv and scan against separate),
/// host and GPU schedules.
#[test]
fn the_gpu_mamba2_forms_equal_the_host_forms_from_1_to_700_tokens() {
    use common::random_model::RandomModel;
    let dir = tempfile::tempdir().unwrap();
    let model = RandomModel {
        version: 2,
        hidden: 64,
        layers: 3,
        hybrid: vec![false, true, false],
        blocks: 1,
        mamba_heads: 4,
        groups: 2,
        d_state: 16,
        d_conv: 4,
        dt_rank: 8,
        attn_heads: 4,
        kv_heads: 4,
        rope: true,
        concat: true,
        attn_rank: 4,
        mlp_rank: 4,
        intermediate: 96,
        activation: "gelu",
        tie: true,
        proj_bias: false,
        conv_bias: true,
        dt_clamp: "none",
    };
    let toml = dir.path().join("m.toml");
    std::fs::write(&toml, model.toml()).unwrap();
    let build = |name: &str, extra: &[&str]| {
        random_engine(&toml, &dir.path().join(name), "random:5", extra)
    };
    let host_forms = [
        "--mamba2-prefill",
        "sequential",
        "--mamba2-decode",
        "separate",
    ];
    let mut sequential = build("seq.engine", &host_forms);
    let mut chunked = [
        build("chunked-host.engine", GPU_FORMS),
        build(
            "chunked-gpu.engine",
            &[GPU_FORMS, &["--host-schedule", "gpu"]].concat(),
        ),
    ];
    for len in [1usize, 32, 33, 100, 700] {
        let prompt: Vec<i64> = (0..len as i64).map(|i| (i * 13 + 5) % 61).collect();
        let want = trajectory(sequential.as_mut(), &prompt, 3);
        let scale = want.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        for (schedule, backend) in ["host", "gpu"].iter().zip(chunked.iter_mut()) {
            let got = trajectory(backend.as_mut(), &prompt, 3);
            assert_eq!(got.len(), want.len());
            let largest = got
                .iter()
                .zip(&want)
                .map(|(a, b)| max_diff(a, b))
                .fold(0.0, f32::max);
            eprintln!(
                "{len} tokens, {schedule} schedule: largest difference {largest:.2e} (logits up to {scale})"
            );
            for (row, (a, b)) in got.iter().zip(&want).enumerate() {
                let d = max_diff(a, b);
                assert!(
                    d <= TOL,
                    "{len} tokens, {schedule} schedule, row {row}: the GPU's and the host's \
                     Mamba2 forms differ by {d} (logits up to {scale})"
                );
            }
        }
    }
}
