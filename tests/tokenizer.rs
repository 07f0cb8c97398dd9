//! `--prompt` text in, streamed text out, through a `tokenizer.json` beside the checkpoint.

mod common;

use common::*;

/// A word-level tokenizer with one word per id of the fixture's vocabulary.
fn write_tokenizer(dir: &std::path::Path, vocab: usize) {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

fn checkpoint_with_tokenizer() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("zamba2-tiny").join(f), dir.path().join(f)).unwrap();
    }
    write_tokenizer(dir.path(), 256);
    dir
}

#[test]
fn prompt_text_gives_the_same_tokens_as_ids() {
    let dir = checkpoint_with_tokenizer();
    let d = dir.path().to_str().unwrap();
    let text = zambac(&[
        "run",
        d,
        "--prompt",
        "w80 w254 w217 w143",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    assert!(text.status.success(), "{}", stderr(&text));
    let v: serde_json::Value = serde_json::from_str(&stdout(&text)).unwrap();
    assert_eq!(v["prompt_tokens"], serde_json::json!([80, 254, 217, 143]));
    let ids = zambac(&[
        "run",
        d,
        "--tokens",
        "80,254,217,143",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    let w: serde_json::Value = serde_json::from_str(&stdout(&ids)).unwrap();
    assert_eq!(v["tokens"], w["tokens"]);
    let expected_text: Vec<String> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("w{t}"))
        .collect();
    assert_eq!(v["text"], serde_json::json!(expected_text.join(" ")));
}

#[test]
fn prompt_streams_text() {
    let dir = checkpoint_with_tokenizer();
    let out = zambac(&[
        "run",
        dir.path().to_str().unwrap(),
        "--prompt",
        "w80 w254",
        "--max-new-tokens",
        "5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{text}");
    assert!(words.iter().all(|w| w.starts_with('w')), "{text}");
}

#[test]
fn prompt_without_tokenizer_says_to_use_tokens() {
    let out = zambac(&[
        "run",
        fixture("zamba2-tiny").to_str().unwrap(),
        "--prompt",
        "hello",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--tokens"), "{}", stderr(&out));
}

/// An engine built from a checkpoint with a tokenizer carries it: the runtime binary takes
/// text without the checkpoint, and gives what `zambac run` gives on the checkpoint.
#[test]
fn engines_carry_the_tokenizer() {
    let dir = checkpoint_with_tokenizer();
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("tok.engine");
    let b = zambac(&[
        "build",
        dir.path().to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(
        std::fs::read(engine.join("tokenizer.json")).unwrap(),
        std::fs::read(dir.path().join("tokenizer.json")).unwrap()
    );
    let args = |input: &str| {
        vec![
            "run".to_string(),
            input.to_string(),
            "--prompt".into(),
            "w80 w254 w217".into(),
            "--max-new-tokens".into(),
            "4".into(),
            "--json".into(),
        ]
    };
    let from_engine = zambac_run(
        &args(engine.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(from_engine.status.success(), "{}", stderr(&from_engine));
    let from_checkpoint = zambac(
        &args(dir.path().to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&stdout(&from_engine)).unwrap(),
        serde_json::from_str(&stdout(&from_checkpoint)).unwrap(),
    );
    assert_eq!(a["prompt_tokens"], serde_json::json!([80, 254, 217]));
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["text"], b["text"]);
}

/// A tokenizer that does not load fails the build (exit 2, naming the file) before any
/// engine is written.
#[test]
fn a_broken_tokenizer_fails_the_build() {
    let dir = checkpoint_with_tokenizer();
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("tok.engine");
    let b = zambac(&[
        "build",
        dir.path().to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert_eq!(b.status.code(), Some(2), "{}", stderr(&b));
    assert!(stderr(&b).contains("tokenizer.json"), "{}", stderr(&b));
    assert!(!engine.exists());
}

/// An engine without a tokenizer asks for token ids, in both binaries.
#[test]
fn an_engine_without_a_tokenizer_asks_for_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("plain.engine");
    let b = zambac(&[
        "build",
        fixture("zamba2-tiny").to_str().unwrap(),
        "-o",
        engine.to_str().unwrap(),
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    for out in [
        zambac(&["run", engine.to_str().unwrap(), "--prompt", "hi"]),
        zambac_run(&["run", engine.to_str().unwrap(), "--prompt", "hi"]),
    ] {
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--tokens"), "{}", stderr(&out));
    }
}
