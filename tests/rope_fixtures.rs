//! Scaled RoPE against Hugging Face: the `zamba2-tiny` weights under every `rope_type`
//! transformers' Zamba2 accepts besides `default` (`tests/fixtures/rope`, written by
//! `scripts/rope_fixtures.sh`), each with a trained context of 16 positions that the
//! 37-token prompt passes in prefill and the 7-token prompt passes while decoding. Prefill
//! and cached-decode logits within 2e-4, greedy continuations identical, through the
//! reference interpreter and a compiled engine.

mod common;

use common::*;
use std::path::PathBuf;

const TOL: f32 = 2e-4;

/// A checkpoint directory for fixture `name`: its config, tokens and expectations beside
/// the shared weights.
fn checkpoint(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = root().join("tests/fixtures/rope");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for file in ["config.json", "tokens.json", "expected.safetensors"] {
        std::fs::copy(src.join(name).join(file), dir.join(file)).unwrap();
    }
    std::fs::copy(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    (tmp, dir)
}

fn check(name: &str) {
    let (_tmp, dir) = checkpoint(name);
    for backend in ["reference", "cpu"] {
        check_hf_dir(&dir, name, backend, TOL);
    }
}

#[test]
fn linear_scaling_matches_hf() {
    check("linear");
}

#[test]
fn dynamic_ntk_scaling_matches_hf() {
    check("dynamic");
}

#[test]
fn yarn_scaling_matches_hf() {
    check("yarn");
}

#[test]
fn longrope_scaling_matches_hf() {
    check("longrope");
}

#[test]
fn llama3_scaling_matches_hf() {
    check("llama3");
}

/// Every fixture directory is covered by a test above.
#[test]
fn every_rope_fixture_has_a_test() {
    let covered = ["linear", "dynamic", "yarn", "longrope", "llama3"];
    for e in std::fs::read_dir(root().join("tests/fixtures/rope")).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            let name = e.file_name().to_string_lossy().to_string();
            assert!(
                covered.contains(&name.as_str()),
                "fixture {name} has no test"
            );
        }
    }
}
