//! Snapshots of rendered diagnostics: what a user sees on stderr (`cargo insta review`).

use zambac_frontend::*;

const TOML: &str = r#"[model]
vocab_size = 512
hidden_size = 64
num_layers = 8

[mamba]
version = 2
heads = 4

[shared]
every = 3
offset = 1
heads = 4
"#;

fn render_toml(src: &str) -> String {
    parse_toml(src, "examples/bad.toml").unwrap_err().render()
}

fn render_json(src: &str) -> String {
    parse_hf_config(src, "ckpt/config.json")
        .unwrap_err()
        .render()
}

#[test]
fn wrong_type() {
    insta::assert_snapshot!(render_toml(
        &TOML.replace("hidden_size = 64", "hidden_size = \"64\"")
    ));
}

#[test]
fn unknown_key_with_suggestion() {
    insta::assert_snapshot!(render_toml(
        &TOML.replace("version = 2", "version = 2\nd_sate = 16")
    ));
}

#[test]
fn divisibility_and_several_errors() {
    let src = TOML
        .replace("heads = 4\n\n[shared]", "heads = 3\n\n[shared]")
        .replace("offset = 1", "offset = 1\nkv_heads = 3");
    insta::assert_snapshot!(render_toml(&src));
}

#[test]
fn toml_syntax() {
    insta::assert_snapshot!(render_toml(&TOML.replace("every = 3", "every = ")));
}

#[test]
fn json_gqa_with_adapters() {
    let src = r#"{
  "model_type": "zamba2",
  "hidden_size": 64,
  "num_hidden_layers": 2,
  "layers_block_type": ["hybrid", "mamba"],
  "n_mamba_heads": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "use_shared_attention_adapter": true
}
"#;
    insta::assert_snapshot!(render_json(src));
}

#[test]
fn json_truncated() {
    insta::assert_snapshot!(render_json(
        "{\n  \"model_type\": \"zamba2\",\n  \"hidden_size\": 64,\n"
    ));
}

#[test]
fn sweep_override() {
    let spec = parse_toml(TOML, "tiny.toml").unwrap();
    let err = apply_overrides(&spec, &[("shared.every".into(), "0".into())]).unwrap_err();
    insta::assert_snapshot!(err.render());
}
