//! The compiled cpu backend agrees with the reference interpreter on random models of
//! both families (groups, GQA, RoPE on/off, untied heads, adapters, every activation and
//! Δ-clamp setting): prefill logits, then decode from the states, token by token. Both
//! bf16 and f32 engines are checked, the bf16 one against the reference on the same
//! (rounded) weights.

mod common;

use common::random_model::random_model;
use common::trajectory;
use proptest::prelude::*;

/// The cpu engine and the reference on `dir/model.toml`'s engine (weights `random:5`):
/// the largest logit difference over an 11-token prompt and 5 greedy decode steps.
fn max_difference(toml: &std::path::Path, dir: &std::path::Path) -> Result<f32, String> {
    let engine = dir.join("m.engine");
    let out = common::zambac(&[
        "build",
        toml.to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
        "--weights",
        "random:5",
    ]);
    if !out.status.success() {
        return Err(common::stderr(&out));
    }
    let mut cpu = zambac::engines::cpu_backend(&engine, 2).unwrap();
    let mut reference = zambac::engines::reference_backend(&engine).unwrap();
    let prompt: Vec<i64> = (0..11).map(|i| (i * 13 + 2) % 61).collect();
    let a = trajectory(cpu.as_mut(), &prompt, 5);
    let b = trajectory(reference.as_mut(), &prompt, 5);
    Ok(a.iter()
        .zip(&b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0f32, f32::max))
}

/// A random model the property test found (one attention invocation with RoPE and a rank-4
/// adapter, head dim 48): prompt positions 0–8 agree to 4e-6, position 9 differs by 2.8e-4
/// and position 10 by 1.1e-4. Engines with and without libmvec agree with each other to
/// 6e-6 there; without RoPE the model agrees everywhere. Cause not yet found.
#[test]
#[ignore = "open: cpu vs reference differ by 2.8e-4 at position 9 on this model (issue 5)"]
fn cpu_engine_equals_reference_on_the_rope_regression() {
    let dir = tempfile::tempdir().unwrap();
    let toml = common::root().join("tests/regressions/cpu-vs-reference-rope-pos9.toml");
    let d = max_difference(&toml, dir.path()).unwrap();
    assert!(d <= 2e-4, "cpu and reference differ by {d:e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn cpu_engine_equals_reference(model in random_model(&["hf5", "always", "none"]), bf16 in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("model.toml");
        let mut text = model.toml();
        if bf16 {
            text = text.replace("dtype = \"f32\"", "dtype = \"bf16\"");
        }
        std::fs::write(&toml, &text).unwrap();
        let d = max_difference(&toml, dir.path());
        prop_assert!(d.is_ok(), "{}", d.as_ref().unwrap_err());
        let d = d.unwrap();
        prop_assert!(d <= 2e-4, "cpu and reference differ by {d:e}\n{text}");
    }
}
