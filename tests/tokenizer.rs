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
