#![allow(dead_code)]
//! Shared helpers of the integration tests.

pub mod random_model;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use zambac_runtime::Tensor;
use zambac_runtime::session::Backend;
use zambac_weights::Checkpoint;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("../shared/fixtures").join(name)
}

/// The names of all HF fixtures.
pub fn fixture_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("../shared/fixtures"))
        .expect("fixtures directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config.json").exists())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// The largest elementwise |a − b| of two equally long rows.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The prompts of a fixture (`tokens.json`).
pub fn prompts(dir: &Path) -> Vec<Vec<i64>> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap()
}

/// A tensor from a safetensors file, as f32 with its shape.
pub fn tensor(ck: &Checkpoint, name: &str) -> Tensor {
    let shape = ck
        .entry(name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .shape
        .clone();
    Tensor::new(shape, ck.to_f32(name).unwrap())
}

/// An i64 tensor from a safetensors file.
pub fn i64s(ck: &Checkpoint, name: &str) -> Vec<i64> {
    ck.bytes(name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The compile cache the tests' builds share: under the target directory, never the
/// user's.
pub fn test_cache_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cache-home")
}

/// Runs the `zambac` binary (with the tests' compile cache).
pub fn zambac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zambac"))
        .args(args)
        .env("XDG_CACHE_HOME", test_cache_home())
        .output()
        .expect("zambac runs")
}

/// The runtime binary `zambac-run`, beside `zambac`. It belongs to another package, which
/// `cargo test -p zambac` alone does not build, so the first call builds it (a no-op when
/// it is up to date) with the profile these tests were built with.
pub fn zambac_run_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let zambac = PathBuf::from(env!("CARGO_BIN_EXE_zambac"));
    BUILT.call_once(|| {
        let release = zambac.components().any(|c| c.as_os_str() == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "-q", "-p", "zambac-runtime", "--bin", "zambac-run"])
            .current_dir(root());
        if release {
            cargo.arg("--release");
        }
        let out = cargo.output().expect("running cargo build");
        assert!(
            out.status.success(),
            "building zambac-run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    zambac.with_file_name(format!("zambac-run{}", std::env::consts::EXE_SUFFIX))
}

/// Runs the `zambac-run` binary.
pub fn zambac_run(args: &[&str]) -> Output {
    Command::new(zambac_run_bin())
        .args(args)
        .output()
        .expect("zambac-run runs")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Prefill of `prompt` then `steps` greedy decode steps: every logits row produced.
pub fn trajectory(be: &mut dyn Backend, prompt: &[i64], steps: usize) -> Vec<Vec<f32>> {
    decode_rows(be, prompt, steps, |_, last| {
        zambac_runtime::sampling::argmax(last) as i64
    })
}

/// Prefill of `prompt`, then one decode step per token of `tokens` (fed whatever the
/// backend's own logits say): every logits row produced. Two backends given the same
/// `tokens` can be compared row by row even where a near-tie flips one's argmax.
pub fn forced_trajectory(be: &mut dyn Backend, prompt: &[i64], tokens: &[i64]) -> Vec<Vec<f32>> {
    decode_rows(be, prompt, tokens.len(), |i, _| tokens[i])
}

/// Prefill of `prompt`, then `steps` decode steps, step `i` feeding `next(i, last row)`.
fn decode_rows(
    be: &mut dyn Backend,
    prompt: &[i64],
    steps: usize,
    mut next: impl FnMut(usize, &[f32]) -> i64,
) -> Vec<Vec<f32>> {
    let (logits, mut state) = be.prefill(prompt, prompt.len() + steps).unwrap();
    let mut rows: Vec<Vec<f32>> = (0..prompt.len()).map(|r| logits.row(r).to_vec()).collect();
    for i in 0..steps {
        let tok = next(i, rows.last().unwrap());
        let l = be.decode(tok, &mut state).unwrap();
        rows.push(l.row(0).to_vec());
    }
    rows
}

/// Moves every finite non-zero weight by one unit in its last place, up or down in
/// magnitude at random (ChaCha from `seed`).
pub fn move_last_bits(weights: &mut [Tensor], seed: u8) {
    let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
    for v in weights.iter_mut().flat_map(|t| t.data.iter_mut()) {
        let up = rng.random::<bool>();
        if v.is_finite() && *v != 0.0 {
            let bits = v.to_bits();
            *v = f32::from_bits(if up { bits + 1 } else { bits - 1 });
        }
    }
}
/// `zambac run --backend <backend> --dump-logits` on every prompt of the checkpoint `dir`
/// (or of an engine built from it, for the cpu backend), compared with HF's logits, decode
/// logits (`expected.safetensors`: `logits_i`, `decode_logits_i`, within `tol`) and greedy
/// tokens (`greedy_i`, identical) for the prompts of its `tokens.json`.
pub fn check_hf_dir(dir: &Path, name: &str, backend: &str, tol: f32) {
    check_hf_dir_built(dir, name, backend, tol, &[]);
}

/// `zambac build INPUT -o ENGINE ARGS…`, which must succeed; returns `engine`.
pub fn build_engine(input: &Path, engine: &Path, args: &[&str]) -> PathBuf {
    let mut all = vec![
        "build",
        input.to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let out = zambac(&all);
    assert!(out.status.success(), "{}", stderr(&out));
    engine.to_path_buf()
}

/// [`check_hf_dir`] with `build_args` added to the engine's `zambac build` (cpu backend).
pub fn check_hf_dir_built(dir: &Path, name: &str, backend: &str, tol: f32, build_args: &[&str]) {
    let dir = dir.to_path_buf();
    let engine_dir = tempfile::tempdir().unwrap();
    let input = if backend == "cpu" {
        build_engine(&dir, &engine_dir.path().join("e.engine"), build_args)
    } else {
        dir.clone()
    };
    let expected = Checkpoint::open_file(&dir.join("expected.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (i, prompt) in prompts(&dir).iter().enumerate() {
        let dump = tmp.path().join(format!("{i}.safetensors"));
        let tokens = prompt
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let out = zambac(&[
            "run",
            input.to_str().unwrap(),
            "--backend",
            backend,
            "--tokens",
            &tokens,
            "--max-new-tokens",
            "16",
            "--dump-logits",
            dump.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name} {backend} prompt {i}: {}",
            stderr(&out)
        );
        let got = Checkpoint::open_file(&dump).unwrap();
        let logits = tensor(&got, "logits");
        let d = logits.max_abs_diff(&tensor(&expected, &format!("logits_{i}")));
        eprintln!("{name} {backend} prompt {i}: prefill logits max |Δ| {d:.2e}");
        assert!(
            d <= tol,
            "{name} prompt {i}: prefill logits differ by {d:e}"
        );
        let dl = tensor(&got, "decode_logits");
        let d = dl.max_abs_diff(&tensor(&expected, &format!("decode_logits_{i}")));
        eprintln!("{name} {backend} prompt {i}: decode logits max |Δ| {d:.2e}");
        assert!(
            d <= tol,
            "{name} {backend} prompt {i}: decode logits differ by {d:e}"
        );
        assert_eq!(
            i64s(&got, "tokens"),
            i64s(&expected, &format!("greedy_{i}")),
            "{name} {backend} prompt {i}: greedy tokens"
        );
    }
}
