//! The GPU code without a GPU: `zambac build --target sm_90 --emit ptx` on the fixtures and
//! the four released configs; every kernel's launch table agrees with its PTX entry
//! (parameter count, types, order as the launcher passes them) and stays within the H100's
//! launch limits; `--backend cuda` on a machine without the CUDA driver says so and exits 2
//! (on one with a GPU, the fixture runs there and matches Hugging Face).

mod common;
use common::*;

use zambac_engine::gpu::{
    barriers_reach_whole_blocks, batched_entry, ptx_entry_params, ptx_entry_text,
};
use zambac_engine::{GpuCode, GpuParam};

/// Registers per block and static shared memory per block an H100 allows.
const REGISTERS_PER_BLOCK: u64 = 65_536;
const SHARED_PER_BLOCK: u64 = 227 * 1024;

/// What [`check_ptx`] counted.
struct Counts {
    kernels: usize,
    /// Kernels that synchronise a block (a block per wide row).
    barriers: usize,
    /// The kernels' entry names.
    entries: Vec<String>,
}

/// Builds `input`'s GPU code and checks it.
fn check_ptx(input: &str, name: &str) -> Counts {
    check_ptx_with(input, name, &[])
}

/// [`check_ptx`] with `extra` arguments to `zambac build`.
fn check_ptx_with(input: &str, name: &str, extra: &[&str]) -> Counts {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ptx");
    let mut args = vec![
        "build",
        input,
        "--target",
        "sm_90",
        "--emit",
        "ptx",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let built = zambac(&args);
    assert!(built.status.success(), "{name}: {}", stderr(&built));
    assert!(
        !out.join("weights.bin").exists(),
        "{name}: --emit ptx wrote weights"
    );
    let ptx = std::fs::read_to_string(out.join("kernels.ptx")).unwrap();
    let table: GpuCode =
        serde_json::from_slice(&std::fs::read(out.join("gpu.json")).unwrap()).unwrap();
    assert_eq!(table.chip, "sm_90");
    assert!(
        ptx.is_ascii(),
        "{name}: the driver's JIT refuses non-ASCII PTX"
    );
    let mut barriers = 0;
    let mut batched = 0;
    for k in &table.kernels {
        let entry = k.entry();
        let params = ptx_entry_params(&ptx, &entry)
            .unwrap_or_else(|| panic!("{name}: no .entry {entry} in the PTX"));
        assert_eq!(
            params.len(),
            k.params.len(),
            "{name}: {entry} takes {params:?}, the launcher passes {:?}",
            k.params
        );
        assert!(
            params.iter().all(|t| t == "u64"),
            "{name}: {entry}: {params:?}"
        );
        assert!(k.params.contains(&GpuParam::Begin) && k.params.contains(&GpuParam::End));
        assert!(
            ptx.contains(&format!(".maxntid {}, 1, 1", k.block_size)),
            "{name}: {entry}: the PTX's .maxntid differs from the launch's block of {}",
            k.block_size
        );
        assert!(k.block_size <= 1024 && k.lanes >= 1, "{name}: {entry}");
        let text = ptx_entry_text(&ptx, &entry).expect("the entry exists");
        assert!(
            barriers_reach_whole_blocks(k, text),
            "{name}: {entry}: barriers with {} lanes in blocks of {}",
            k.lanes,
            k.block_size
        );
        barriers += usize::from(text.contains("bar.sync"));
        // A Gemv's batched form: its own entry, the Gemv's views and grid plus the batch.
        // (Symbols are named after their kind: `gemv_<digest>`.)
        let is_gemv = k.symbol.rsplit_once('_').map(|(kind, _)| kind) == Some("gemv");
        assert_eq!(
            k.batched.is_some(),
            is_gemv,
            "{name}: {entry}: batched form"
        );
        if let Some(b) = &k.batched {
            batched += 1;
            let batched = batched_entry(&k.symbol);
            let params = ptx_entry_params(&ptx, &batched)
                .unwrap_or_else(|| panic!("{name}: no .entry {batched} in the PTX"));
            assert_eq!(params.len(), b.params.len(), "{name}: {batched}");
            for p in [
                GpuParam::Sequences,
                GpuParam::InputStride,
                GpuParam::OutputStride,
            ] {
                assert!(b.params.contains(&p), "{name}: {batched} lacks {p:?}");
            }
            let views = b.params.iter().filter(|p| matches!(p, GpuParam::View(_)));
            let single = k.params.iter().filter(|p| matches!(p, GpuParam::View(_)));
            assert_eq!(views.count(), single.count(), "{name}: {batched}: views");
        }
        if k.lanes > 1 && k.lanes % 32 == 0 {
            assert_eq!(
                k.block_size % 32,
                0,
                "{name}: {entry}: warps would straddle blocks"
            );
        }
        // With ptxas at build time (the compiler refuses spills then), resources are known.
        if let (Some(registers), Some(shared)) = (k.registers, k.shared_bytes) {
            assert!(
                u64::from(registers) * u64::from(k.block_size) <= REGISTERS_PER_BLOCK,
                "{name}: {entry}: {registers} registers × {} threads",
                k.block_size
            );
            assert!(
                shared <= SHARED_PER_BLOCK,
                "{name}: {entry}: {shared} bytes"
            );
        }
    }
    assert!(
        batched > 0,
        "{name}: no Gemv has a batched form (decode has Gemvs)"
    );
    Counts {
        kernels: table.kernels.len(),
        barriers,
        entries: table.kernels.iter().map(|k| k.entry()).collect(),
    }
}

#[test]
fn fixtures_and_released_configs_compile_to_ptx_the_launcher_agrees_with() {
    for name in fixture_names() {
        let dir = fixture(&name);
        assert!(check_ptx(dir.to_str().unwrap(), &name).kernels > 0);
    }
    for name in ["zamba2-1.2b", "zamba2-2.7b", "zamba2-7b", "zamba-7b-v1"] {
        let config = root()
            .join("../shared/configs")
            .join(name)
            .join("config.json");
        let counts = check_ptx(config.to_str().unwrap(), name);
        // Hidden sizes of 2048 and more: every norm takes a block per row.
        assert!(counts.kernels > 0 && counts.barriers >= 3, "{name}");
    }
}

/// Caches and SSM states stored in bf16 change the attention and scan kernels' loads and
/// stores: the released configs' GPU code so built agrees with its launcher too (and, with
/// ptxas, assembles without spills).
#[test]
fn released_configs_with_bf16_states_compile_to_ptx_the_launcher_agrees_with() {
    let bf16 = ["--kv-dtype", "bf16", "--state-dtype", "bf16"];
    for name in ["zamba2-1.2b", "zamba2-7b", "zamba-7b-v1"] {
        let config = root()
            .join("../shared/configs")
            .join(name)
            .join("config.json");
        assert!(check_ptx_with(config.to_str().unwrap(), name, &bf16).kernels > 0);
    }
}

#[test]
fn emit_ptx_needs_the_gpu_target() {
    let out = zambac(&[
        "build",
        fixture("zamba2-tiny").to_str().unwrap(),
        "--emit",
        "ptx",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--target sm_90"), "{}", stderr(&out));
}

#[test]
fn the_cuda_backend_runs_where_a_gpu_is_and_says_why_not_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("e.engine");
    let built = zambac(&[
        "build",
        fixture("zamba2-tiny").to_str().unwrap(),
        "--target",
        "all",
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    match zambac_runtime::cuda::probe() {
        Err(why) => {
            let out = zambac_run(&[
                "run",
                engine.to_str().unwrap(),
                "--backend",
                "cuda",
                "--tokens",
                "1,2,3",
            ]);
            assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
            assert!(stderr(&out).contains(&why), "{}", stderr(&out));
            assert!(stderr(&out).contains("--backend cuda"), "{}", stderr(&out));
        }
        Ok(_) => check_hf_dir_built(
            &fixture("zamba2-tiny"),
            "zamba2-tiny",
            "cuda",
            2e-4,
            &["--target", "all"],
        ),
    }
}

#[test]
fn an_engine_without_gpu_code_is_refused_by_the_cuda_backend_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let engine = dir.path().join("e.engine");
    let built = zambac(&[
        "build",
        fixture("zamba2-tiny").to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", stderr(&built));
    let out = zambac_run(&[
        "run",
        engine.to_str().unwrap(),
        "--backend",
        "cuda",
        "--tokens",
        "1,2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no GPU code") && stderr(&out).contains("--target sm_90"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_build_summary_reports_the_gpu_code() {
    let out = zambac(&[
        "build",
        fixture("zamba2-tiny").to_str().unwrap(),
        "--target",
        "sm_90",
        "--check",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let gpu = &s["gpu"];
    assert_eq!(gpu["chip"], "sm_90", "{s}");
    assert!(gpu["kernels"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(gpu["block_size"], 256, "{s}");
    // A warp per row for the warp kinds: more than one thread per grid index somewhere.
    assert!(
        gpu["max_threads_per_grid_index"].as_u64().unwrap() >= 32,
        "{s}"
    );
    if let Some(spills) = gpu["spill_bytes"].as_u64() {
        assert_eq!(spills, 0, "{s}");
    }
}

/// A build for the GPU takes the GPU's Mamba2 forms unless told otherwise — the chunked
/// prefill scan and the fused decode step — and the host's when asked (`--mamba2-prefill
/// sequential --mamba2-decode separate`); its PTX agrees with the launcher either way.
#[test]
fn a_gpu_build_takes_the_gpu_mamba2_forms_unless_told_otherwise() {
    let input = fixture("zamba2-tiny");
    let entries =
        |extra: &[&str]| check_ptx_with(input.to_str().unwrap(), "zamba2-tiny", extra).entries;
    let has = |entries: &[String], family: &str| {
        entries
            .iter()
            .any(|e| e.starts_with(&format!("zk_{family}_")))
    };
    let gpu = entries(&[]);
    for family in ["mamba2_chunk_scan", "mamba2_chunk_pass", "mamba2_conv_scan"] {
        assert!(has(&gpu, family), "no {family} in {gpu:?}");
    }
    assert!(!has(&gpu, "mamba2_scan"), "{gpu:?}");
    let host = entries(&[
        "--mamba2-prefill",
        "sequential",
        "--mamba2-decode",
        "separate",
    ]);
    for family in ["mamba2_scan", "mamba2_conv"] {
        assert!(has(&host, family), "no {family} in {host:?}");
    }
    for family in ["mamba2_chunk_scan", "mamba2_chunk_pass", "mamba2_conv_scan"] {
        assert!(!has(&host, family), "{family} in {host:?}");
    }
}
