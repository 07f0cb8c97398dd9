//! The compiled cpu backend agrees with the reference interpreter on random models of
//! both families (groups, GQA, RoPE on/off, untied heads, adapters, every activation and
//! Δ-clamp setting): prefill logits, then decode from the states, token by token. Both
//! bf16 and f32 engines are checked, the bf16 one against the reference on the same
//! (rounded) weights.

mod common;

use common::random_model::random_model;
use common::trajectory;
use proptest::prelude::*;

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
        let engine = dir.path().join("m.engine");
        let out = common::zambac(&["build", toml.to_str().unwrap(), "-o", engine.to_str().unwrap(), "--weights", "random:5"]);
        prop_assert!(out.status.success(), "{}", common::stderr(&out));
        let mut cpu = zambac::engines::cpu_backend(&engine, 2).unwrap();
        let mut reference = zambac::engines::reference_backend(&engine).unwrap();
        let prompt: Vec<i64> = (0..11).map(|i| (i * 13 + 2) % 61).collect();
        let a = trajectory(cpu.as_mut(), &prompt, 5);
        let b = trajectory(reference.as_mut(), &prompt, 5);
        let d = a.iter().zip(&b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0f32, f32::max);
        prop_assert!(d <= 2e-4, "cpu and reference differ by {d:e}\n{text}");
    }
}
