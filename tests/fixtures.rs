//! Every backend reproduces the Hugging Face fixtures: prefill logits, cached-decode
//! logits and greedy continuations (spec §6.6; tolerance 2e-4, HF's own f32-vs-f64 gap
//! being up to 7e-5), and the residual stream layer by layer.

mod common;

use common::*;
use zambac_ir::BuildOptions;
use zambac_reference::Value;
use zambac_reference::execute;
use zambac_runtime::Tensor;
use zambac_weights::{Checkpoint, bind};

const TOL: f32 = 2e-4;

/// `zambac run --backend <backend> --dump-logits` on every prompt of a fixture (or of an
/// engine built from it, for the cpu backend), compared with HF's logits, decode logits
/// and greedy tokens.
fn check_fixture_cli(name: &str, backend: &str) {
    let dir = fixture(name);
    let engine_dir = tempfile::tempdir().unwrap();
    let input = if backend == "cpu" {
        let engine = engine_dir.path().join("e.engine");
        let out = zambac(&[
            "build",
            dir.to_str().unwrap(),
            "-o",
            engine.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{name}: build: {}", stderr(&out));
        engine
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
            d <= TOL,
            "{name} prompt {i}: prefill logits differ by {d:e}"
        );
        let dl = tensor(&got, "decode_logits");
        let d = dl.max_abs_diff(&tensor(&expected, &format!("decode_logits_{i}")));
        eprintln!("{name} {backend} prompt {i}: decode logits max |Δ| {d:.2e}");
        assert!(
            d <= TOL,
            "{name} {backend} prompt {i}: decode logits differ by {d:e}"
        );
        assert_eq!(
            i64s(&got, "tokens"),
            i64s(&expected, &format!("greedy_{i}")),
            "{name} {backend} prompt {i}: greedy tokens"
        );
    }
}

#[test]
fn zamba2_tiny_matches_hf() {
    check_fixture_cli("zamba2-tiny", "reference");
}

#[test]
fn zamba2_tiny_norope_1block_matches_hf() {
    check_fixture_cli("zamba2-tiny-norope-1block", "reference");
}

#[test]
fn zamba1_tiny_matches_hf() {
    check_fixture_cli("zamba1-tiny", "reference");
}

#[test]
fn zamba2_tiny_engine_matches_hf_on_cpu() {
    check_fixture_cli("zamba2-tiny", "cpu");
}

#[test]
fn zamba2_tiny_norope_1block_engine_matches_hf_on_cpu() {
    check_fixture_cli("zamba2-tiny-norope-1block", "cpu");
}

#[test]
fn zamba1_tiny_engine_matches_hf_on_cpu() {
    check_fixture_cli("zamba1-tiny", "cpu");
}

/// Every fixture present (including ones added later) is covered by a test above.
#[test]
fn every_fixture_has_a_test() {
    let covered = ["zamba1-tiny", "zamba2-tiny", "zamba2-tiny-norope-1block"];
    for f in fixture_names() {
        assert!(covered.contains(&f.as_str()), "fixture {f} has no test");
    }
}

/// The residual stream after each layer matches HF's `hidden_{i}_layer{k}`; a failure
/// names the first layer that diverges.
#[test]
fn hidden_states_match_layer_by_layer() {
    for name in fixture_names() {
        let dir = fixture(&name);
        let spec = zambac_frontend::load(&dir).unwrap().spec;
        let m = zambac_ir::build_with(
            &spec,
            BuildOptions {
                hidden_states: true,
            },
        )
        .unwrap();
        let weights = bind(&m, &spec, &Checkpoint::open(&dir).unwrap())
            .unwrap()
            .tensors;
        let expected = Checkpoint::open_file(&dir.join("expected.safetensors")).unwrap();
        for (i, prompt) in prompts(&dir).iter().enumerate() {
            let inputs = [("tokens".to_string(), Value::tokens(prompt))].into();
            let out =
                execute(m.graph("prefill").unwrap(), &weights, &inputs, prompt.len()).unwrap();
            if let Some(layer) = first_divergent_layer(&out, &expected, i, spec.num_layers()) {
                panic!("{name} prompt {i}: hidden states diverge first at layer {layer}");
            }
        }
    }
}

fn first_divergent_layer(
    out: &std::collections::HashMap<String, Value>,
    expected: &Checkpoint,
    prompt: usize,
    layers: usize,
) -> Option<String> {
    (0..layers).find_map(|l| {
        let got: &Tensor = out[&format!("hidden.{l}")].f32().unwrap();
        let want = tensor(expected, &format!("hidden_{prompt}_layer{l}"));
        let d = got.max_abs_diff(&want);
        (d > TOL).then(|| format!("{l} (max abs difference {d:e})"))
    })
}
