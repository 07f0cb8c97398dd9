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
/// engine built from it, for the cpu backend), against HF within [`TOL`].
fn check_fixture_cli(name: &str, backend: &str) {
    check_hf_dir(&fixture(name), name, backend, TOL);
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
