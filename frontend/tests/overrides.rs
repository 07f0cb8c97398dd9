//! `apply_overrides`, the engine of `zambac explore --sweep key=v1,v2`.

mod common;

use common::*;
use zambac_frontend::*;

fn spec(example_name: &str) -> ModelSpec {
    load(&example(example_name)).unwrap().spec
}

fn apply(s: &ModelSpec, kv: &[(&str, &str)]) -> Result<ModelSpec, FrontendError> {
    let ovs: Vec<(String, String)> = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    apply_overrides(s, &ovs)
}

fn ok(s: &ModelSpec, kv: &[(&str, &str)]) -> ModelSpec {
    apply(s, kv).unwrap_or_else(|e| panic!("{}", e.render()))
}

#[test]
fn no_overrides_is_identity() {
    for path in examples() {
        let s = load(&path).unwrap().spec;
        assert_eq!(ok(&s, &[]), s);
    }
}

#[test]
fn every_keeps_offset_and_blocks_keep_round_robin() {
    let base = spec("zamba2-1.2b.toml");
    let s = ok(&base, &[("shared.every", "3")]);
    assert_eq!(
        s.hybrid_layer_ids(),
        [5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35]
    );
    let s = ok(&base, &[("shared.blocks", "2")]);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0, 1, 0, 1]);
    assert_eq!(s.name, base.name);
}

#[test]
fn every_replaces_an_explicit_list_with_offset_from_the_first_hybrid() {
    let base = spec("zamba2-2.7b.toml");
    let s = ok(&base, &[("shared.every", "4")]);
    assert_eq!(s.hybrid_layer_ids(), (6..54).step_by(4).collect::<Vec<_>>());
    let s = ok(&base, &[("shared.every", "10"), ("shared.offset", "0")]);
    assert_eq!(s.hybrid_layer_ids(), [0, 10, 20, 30, 40, 50]);
    let e = apply(&base, &[("shared.offset", "2")]).unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "shared.every");
}

#[test]
fn layers_replace_every_and_offset() {
    let base = spec("zamba2-1.2b.toml");
    let s = ok(&base, &[("shared.layers", "[1, 2, 30]")]);
    assert_eq!(s.hybrid_layer_ids(), [1, 2, 30]);
}

#[test]
fn explicit_assignment_is_dropped_when_the_schedule_changes() {
    let base = parse_toml(
        &std::fs::read_to_string(example("tiny.toml"))
            .unwrap()
            .replace("blocks = 2", "blocks = 2\nassignment = [1, 0, 0]"),
        "tiny.toml",
    )
    .unwrap();
    assert_eq!(base.shared.invocation_blocks, [1, 0, 0]);
    assert_eq!(
        ok(&base, &[("shared.rope", "false")])
            .shared
            .invocation_blocks,
        [1, 0, 0]
    );
    assert_eq!(
        ok(&base, &[("shared.every", "2")]).shared.invocation_blocks,
        [0, 1, 0, 1]
    );
    let s = ok(
        &base,
        &[("shared.every", "2"), ("shared.assignment", "[1, 1, 0, 0]")],
    );
    assert_eq!(s.shared.invocation_blocks, [1, 1, 0, 0]);
}

#[test]
fn adapter_rank_alias() {
    let s = ok(&spec("zamba2-1.2b.toml"), &[("adapter_rank", "32")]);
    assert_eq!(
        (s.shared.attn_adapter_rank, s.shared.mlp_adapter_rank),
        (32, 32)
    );
    // 2.7B has no attention adapters; the alias does not add them.
    let s = ok(&spec("zamba2-2.7b.toml"), &[("adapter_rank", "32")]);
    assert_eq!(
        (s.shared.attn_adapter_rank, s.shared.mlp_adapter_rank),
        (0, 32)
    );
    let e = apply(&spec("zamba-7b-v1.toml"), &[("adapter_rank", "8")]).unwrap_err();
    assert_eq!(e.diagnostics()[0].file, "--sweep adapter_rank=8");
}

#[test]
fn typed_values() {
    let base = spec("zamba2-1.2b.toml");
    let s = ok(&base, &[("shared.rope", "false")]);
    assert_eq!(s.shared.rope_theta, None);
    let s = ok(&base, &[("shared.concat_embeddings", "false")]);
    assert_eq!(s.shared.head_dim, 64);
    let s = ok(&base, &[("shared.activation", "\"silu\"")]);
    assert_eq!(s.shared.activation, Activation::Silu);
    let s = ok(
        &base,
        &[("mamba.d_state", "64"), ("model.num_layers", "44")],
    );
    assert_eq!((s.mamba.d_state, s.num_layers()), (64, 44));
    assert_eq!(s.hybrid_layer_ids(), [5, 11, 17, 23, 29, 35, 41]);
    let s = ok(&base, &[("mamba.head_dim", "128")]);
    assert_eq!((s.mamba.n_heads, s.mamba.head_dim), (32, 128));
    // Derived sizes (head dims, intermediate_size = 4H) follow the new hidden size.
    let s = ok(&base, &[("model.hidden_size", "1024")]);
    assert_eq!(
        (
            s.mamba.head_dim,
            s.shared.head_dim,
            s.shared.intermediate_size
        ),
        (32, 64, 4096)
    );
}

#[test]
fn version_switch_drops_version_specific_keys() {
    let base = spec("zamba2-2.7b.toml");
    let s = ok(&base, &[("mamba.version", "1"), ("adapter_rank", "0")]);
    assert_eq!(s.family, Family::Zamba);
    assert_eq!(s.mamba.dt_rank, 160);
}

#[test]
fn unknown_key_lists_valid_keys() {
    let e = apply(&spec("tiny.toml"), &[("shared.evry", "4")]).unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(d.file, "--sweep shared.evry=4");
    assert_eq!(d.key, "shared.evry");
    assert!(d.expected.contains("did you mean `shared.every`?"), "{d}");
    assert!(
        d.note.as_deref().unwrap_or("").contains("adapter_rank"),
        "{d}"
    );
    assert!(
        d.to_string()
            .starts_with("--sweep shared.evry=4:1:1: error:"),
        "{d}"
    );
}

#[test]
fn bad_values_name_the_override() {
    let e = apply(&spec("tiny.toml"), &[("shared.every", "0")]).unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(
        (d.file.as_str(), d.key.as_str()),
        ("--sweep shared.every=0", "shared.every")
    );
    assert_eq!(d.line_col, Some((1, 14)));
    let e = apply(&spec("tiny.toml"), &[("shared.every", "[")]).unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "shared.every");
    let e = apply(&spec("tiny.toml"), &[("mamba.d_state", "")]).unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "mamba.d_state");
    let e = apply(&spec("tiny.toml"), &[("shared.activation", "relu")]).unwrap_err();
    assert_eq!(e.diagnostics()[0].file, "--sweep shared.activation=relu");
}

#[test]
fn consequences_elsewhere_are_blamed_on_all_overrides() {
    // 64 SSM heads do not divide d_inner = 2·1000: the error is about `mamba.heads`, which
    // nobody overrode, so it points at the override list.
    let e = apply(&spec("zamba2-1.2b.toml"), &[("model.hidden_size", "1000")]).unwrap_err();
    let d = &e.diagnostics()[0];
    assert_eq!(d.key, "mamba.heads");
    assert_eq!(d.file, "--sweep model.hidden_size=1000");
    assert!(d.note.as_deref().unwrap_or("").contains("--sweep"), "{d}");
}

#[test]
fn override_keys_are_the_description_keys() {
    let keys = override_keys();
    for k in [
        "shared.every",
        "shared.offset",
        "shared.blocks",
        "mamba.d_state",
        "model.num_layers",
        "adapter_rank",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k}");
    }
}

/// `shared.blocks=0` drops the base model's schedule (and its assignment): the variant is
/// the same backbone without any shared block.
#[test]
fn zero_blocks_drops_the_schedule() {
    let base = spec("zamba2-1.2b.toml");
    let s = ok(&base, &[("shared.blocks", "0")]);
    assert_eq!(s.shared.num_blocks, 0);
    assert!(s.hybrid_layer_ids().is_empty());
    assert_eq!(s.num_layers(), base.num_layers());
    assert_eq!(s.mamba, base.mamba);
    let err = apply(&base, &[("shared.blocks", "0"), ("shared.every", "3")]).unwrap_err();
    assert!(err.render().contains("shared.every"), "{}", err.render());
}
