//! The TOML description format: defaults, every form of the schedule, and one test per
//! validation rule (each error names its key and a line:col).

use zambac_frontend::*;

/// A valid description that every test edits.
const BASE: &str = r#"
[model]
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

fn ok(src: &str) -> ModelSpec {
    parse_toml(src, "t.toml").unwrap_or_else(|e| panic!("{}", e.render()))
}

/// The keys of the errors, after checking each Display has `file:line:col` and its key.
fn errors(src: &str) -> Vec<String> {
    let e = parse_toml(src, "t.toml")
        .err()
        .unwrap_or_else(|| panic!("expected an error for\n{src}"));
    for d in e.diagnostics() {
        let shown = d.to_string();
        assert!(shown.starts_with("t.toml:"), "{shown}");
        assert!(d.line_col.is_some(), "{shown}");
        assert!(shown.contains(&d.key), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
    }
    e.diagnostics().iter().map(|d| d.key.clone()).collect()
}

fn edit(find: &str, replace: &str) -> String {
    assert!(BASE.contains(find), "{find}");
    BASE.replacen(find, replace, 1)
}

#[test]
fn defaults() {
    let s = ok(BASE);
    assert_eq!(s.name, "t");
    assert_eq!(
        (s.norm_eps, s.tie_embeddings, s.dtype),
        (1e-5, true, DType::Bf16)
    );
    let m = &s.mamba;
    assert_eq!(
        (m.d_state, m.d_conv, m.expand, m.n_groups, m.chunk_size),
        (64, 4, 2, 1, 256)
    );
    assert_eq!(
        (m.conv_bias, m.proj_bias, m.time_step_min, m.dt_clamp),
        (true, false, 0.001, DtClamp::Hf5)
    );
    let sh = &s.shared;
    assert_eq!(
        (
            sh.num_blocks,
            sh.concat_embeddings,
            sh.num_kv_heads,
            sh.head_dim
        ),
        (1, true, 4, 32)
    );
    assert_eq!(
        (sh.rope_theta, sh.attn_adapter_rank, sh.mlp_adapter_rank),
        (None, 0, 0)
    );
    assert_eq!(
        (sh.intermediate_size, sh.activation),
        (256, Activation::Gelu)
    );
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 7]);
}

#[test]
fn v1_defaults() {
    let s = ok(&edit("version = 2", "version = 1"));
    assert_eq!(s.family, Family::Zamba);
    assert_eq!(
        (s.mamba.d_state, s.mamba.dt_rank, s.mamba.dt_clamp),
        (16, 4, DtClamp::None)
    );
    let s = ok(&edit("version = 2", "version = 1\ndt_rank = 7"));
    assert_eq!(s.mamba.dt_rank, 7);
}

#[test]
fn mamba_heads_from_head_dim() {
    let s = ok(&edit("heads = 4\n\n[shared]", "head_dim = 16\n\n[shared]"));
    assert_eq!((s.mamba.n_heads, s.mamba.head_dim), (8, 16));
    let s = ok(&edit(
        "heads = 4\n\n[shared]",
        "heads = 4\nhead_dim = 32\n\n[shared]",
    ));
    assert_eq!(s.mamba.n_heads, 4);
    assert_eq!(
        errors(&edit(
            "heads = 4\n\n[shared]",
            "heads = 4\nhead_dim = 16\n\n[shared]"
        )),
        ["mamba.head_dim"]
    );
    assert_eq!(
        errors(&edit("heads = 4\n\n[shared]", "head_dim = 48\n\n[shared]")),
        ["mamba.head_dim"]
    );
    assert_eq!(
        errors(&edit("heads = 4\n\n[shared]", "\n[shared]")),
        ["mamba.heads"]
    );
}

#[test]
fn schedule_forms() {
    let s = ok(&edit("every = 3\noffset = 1", "layers = [0, 5]"));
    assert_eq!(s.hybrid_layer_ids(), [0, 5]);
    let s = ok(&edit("every = 3\noffset = 1", "every = 2"));
    assert_eq!(s.hybrid_layer_ids(), [0, 2, 4, 6]);
    let s = ok(&edit("every = 3\noffset = 1\nheads = 4", "layers = []"));
    assert!(s.hybrid_layer_ids().is_empty());
    assert_eq!(s.shared.num_heads, 0);
    assert_eq!(parse_toml(&to_toml(&s), "t.toml").unwrap(), s);
}

#[test]
fn schedule_errors() {
    assert_eq!(
        errors(&edit("offset = 1", "offset = 1\nlayers = [1]")),
        ["shared.every"]
    );
    assert_eq!(errors(&edit("every = 3\noffset = 1", "")), ["shared.every"]);
    assert_eq!(errors(&edit("every = 3\n", "")), ["shared.every"]);
    assert_eq!(errors(&edit("every = 3", "every = 0")), ["shared.every"]);
    assert_eq!(errors(&edit("offset = 1", "offset = 8")), ["shared.offset"]);
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "layers = [1, 8]")),
        ["shared.layers[1]"]
    );
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "layers = [4, 2]")),
        ["shared.layers[1]"]
    );
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "layers = [2, 2]")),
        ["shared.layers[1]"]
    );
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "layers = [-1]")),
        ["shared.layers[0]"]
    );
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "layers = 3")),
        ["shared.layers"]
    );
}

#[test]
fn assignment() {
    let s = ok(&edit(
        "every = 3",
        "blocks = 2\nassignment = [1, 1, 0]\nevery = 3",
    ));
    assert_eq!(s.shared.invocation_blocks, [1, 1, 0]);
    assert!(to_toml(&s).contains("assignment = [1, 1, 0]"));
    assert_eq!(parse_toml(&to_toml(&s), "t.toml").unwrap(), s);
    let s = ok(&edit("every = 3", "blocks = 2\nevery = 3"));
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0]);
    assert_eq!(
        errors(&edit(
            "every = 3",
            "blocks = 2\nassignment = [1, 0]\nevery = 3"
        )),
        ["shared.assignment"]
    );
    assert_eq!(
        errors(&edit(
            "every = 3",
            "blocks = 2\nassignment = [0, 2, 1]\nevery = 3"
        )),
        ["shared.assignment[1]"]
    );
    assert_eq!(
        errors(&edit(
            "every = 3",
            "blocks = 2\nassignment = [0, 0, 0]\nevery = 3"
        )),
        ["shared.blocks"]
    );
    assert_eq!(
        errors(&edit("every = 3", "blocks = 4\nevery = 3")),
        ["shared.blocks"]
    );
}

#[test]
fn unknown_keys_and_tables_suggest() {
    let e = parse_toml(&edit("version = 2", "version = 2\nd_sate = 8"), "t.toml").unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "mamba.d_sate");
    assert!(
        e.to_string().contains("did you mean `mamba.d_state`?"),
        "{e}"
    );
    let e = parse_toml(
        &edit("version = 2", "version = 2\nvocab_size = 8"),
        "t.toml",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("did you mean `model.vocab_size`?"),
        "{e}"
    );
    let e = parse_toml(&format!("{BASE}\n[sharred]\nx = 1\n"), "t.toml").unwrap_err();
    assert_eq!(e.diagnostics()[0].key, "sharred");
    assert!(e.to_string().contains("did you mean `shared`?"), "{e}");
}

#[test]
fn missing_tables_and_keys() {
    assert_eq!(
        errors(&edit("[mamba]\nversion = 2\nheads = 4\n", "")),
        ["mamba"]
    );
    assert_eq!(
        errors(&edit("hidden_size = 64\n", "")),
        ["model.hidden_size"]
    );
    assert_eq!(errors(&edit("version = 2\n", "")), ["mamba.version"]);
    assert_eq!(
        errors(&edit("offset = 1\nheads = 4", "offset = 1")),
        ["shared.heads"]
    );
    assert_eq!(
        errors(&edit("[model]", "model = 1\n[modell]")),
        ["model", "modell"]
    );
}

#[test]
fn types_and_ranges() {
    assert_eq!(
        errors(&edit("hidden_size = 64", "hidden_size = \"64\"")),
        ["model.hidden_size"]
    );
    assert_eq!(
        errors(&edit("hidden_size = 64", "hidden_size = -64")),
        ["model.hidden_size"]
    );
    assert_eq!(
        errors(&edit("hidden_size = 64", "hidden_size = 0")),
        ["model.hidden_size"]
    );
    assert_eq!(
        errors(&edit("hidden_size = 64", "hidden_size = 64.0")),
        ["model.hidden_size"]
    );
    assert_eq!(
        errors(&edit("num_layers = 8", "num_layers = 1000000")),
        ["model.num_layers"]
    );
    assert_eq!(
        errors(&edit("num_layers = 8", "num_layers = 8\nnorm_eps = 0")),
        ["model.norm_eps"]
    );
    assert_eq!(
        errors(&edit("num_layers = 8", "num_layers = 8\nname = \"\"")),
        ["model.name"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 3")),
        ["mamba.version"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 2\ntime_step_min = -1.0")),
        ["mamba.time_step_min"]
    );
    assert_eq!(
        errors(&edit("offset = 1", "offset = 1\nrope = \"yes\"")),
        ["shared.rope"]
    );
}

#[test]
fn enumerations() {
    let e = parse_toml(
        &edit("num_layers = 8", "num_layers = 8\ndtype = \"bf61\""),
        "t.toml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("did you mean \"bf16\"?"), "{e}");
    assert_eq!(
        errors(&edit("offset = 1", "offset = 1\nactivation = \"relu\"")),
        ["shared.activation"]
    );
    assert_eq!(
        errors(&edit(
            "version = 2",
            "version = 2\ndt_clamp = \"sometimes\""
        )),
        ["mamba.dt_clamp"]
    );
    let s = ok(&edit(
        "offset = 1",
        "offset = 1\nactivation = \"gelu-tanh\"",
    ));
    assert_eq!(s.shared.activation, Activation::GeluTanh);
    let s = ok(&edit("version = 2", "version = 2\ndt_clamp = \"always\""));
    assert_eq!(s.mamba.dt_clamp, DtClamp::Always);
}

#[test]
fn version_specific_keys() {
    assert_eq!(
        errors(&edit("version = 2", "version = 1\ngroups = 2")),
        ["mamba.groups"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 1\nchunk_size = 64")),
        ["mamba.chunk_size"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 2\ndt_rank = 4")),
        ["mamba.dt_rank"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 2\nconv_bias = false")),
        ["mamba.conv_bias"]
    );
    assert!(
        !ok(&edit("version = 2", "version = 1\nconv_bias = false"))
            .mamba
            .conv_bias
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 1\ndt_rank = \"big\"")),
        ["mamba.dt_rank"]
    );
}

#[test]
fn divisibility() {
    assert_eq!(
        errors(&edit("heads = 4\n\n[shared]", "heads = 3\n\n[shared]")),
        ["mamba.heads"]
    );
    assert_eq!(
        errors(&edit("version = 2", "version = 2\ngroups = 3")),
        ["mamba.groups"]
    );
    assert_eq!(
        errors(&edit("offset = 1\nheads = 4", "offset = 1\nheads = 5")),
        ["shared.heads"]
    );
    assert_eq!(
        errors(&edit(
            "offset = 1\nheads = 4",
            "offset = 1\nheads = 4\nkv_heads = 3"
        )),
        ["shared.kv_heads"]
    );
    let s = ok(&edit(
        "offset = 1\nheads = 4",
        "offset = 1\nheads = 5\nhead_dim = 24",
    ));
    assert_eq!((s.shared.head_dim, s.q_width()), (24, 120));
}

#[test]
fn rope() {
    let s = ok(&edit("offset = 1", "offset = 1\nrope = true"));
    assert_eq!(s.shared.rope_theta, Some(10000.0));
    let s = ok(&edit(
        "offset = 1",
        "offset = 1\nrope = true\nrope_theta = 500000",
    ));
    assert_eq!(s.shared.rope_theta, Some(500000.0));
    assert_eq!(
        errors(&edit("offset = 1", "offset = 1\nrope_theta = 500000.0")),
        ["shared.rope_theta"]
    );
    assert_eq!(
        errors(&edit("offset = 1", "offset = 1\nrope = true\nhead_dim = 7")),
        ["shared.head_dim"]
    );
}

#[test]
fn rope_scaling() {
    let with = |table: &str| edit("offset = 1", &format!("offset = 1\nrope = true\n{table}"));
    let s = ok(&with(
        "rope_scaling = { type = \"yarn\", factor = 4.0, original_max_position_embeddings = 64 }",
    ));
    assert_eq!(
        s.shared.rope_scaling,
        Some(zambac_engine::RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        })
    );
    // A description has no checkpoint context: `dynamic` names its own.
    let s = ok(&with(
        "rope_scaling = { type = \"dynamic\", factor = 2.0, max_position_embeddings = 128 }",
    ));
    assert_eq!(
        s.shared.rope_scaling,
        Some(zambac_engine::RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 128
        })
    );
    assert_eq!(
        errors(&with("rope_scaling = { type = \"dynamic\", factor = 2.0 }")),
        ["shared.rope_scaling.max_position_embeddings"]
    );
    assert_eq!(
        errors(&with("rope_scaling = { type = \"linear\", factr = 2.0 }")),
        ["shared.rope_scaling.factor", "shared.rope_scaling.factr"]
    );
    assert_eq!(
        errors(&with("rope_scaling = { factor = 2.0 }")),
        ["shared.rope_scaling.type"]
    );
    assert_eq!(
        errors(&edit(
            "offset = 1",
            "offset = 1\nrope_scaling = { type = \"linear\", factor = 2.0 }"
        )),
        ["shared.rope_scaling"]
    );
    // The head dim is 2 · 64 / 4 = 32: a longrope needs 16 factors per list.
    assert_eq!(
        errors(&with(
            "rope_scaling = { type = \"longrope\", factor = 2.0, original_max_position_embeddings = 8, short_factor = [1.0], long_factor = [2.0] }"
        )),
        ["shared.rope_scaling"]
    );
}

#[test]
fn adapters() {
    let s = ok(&edit(
        "offset = 1",
        "offset = 1\nattention_adapter_rank = 8\nmlp_adapter_rank = 4",
    ));
    assert_eq!(
        (s.shared.attn_adapter_rank, s.shared.mlp_adapter_rank),
        (8, 4)
    );
    let v1 = edit("version = 2", "version = 1")
        .replace("offset = 1", "offset = 1\nmlp_adapter_rank = 4");
    assert_eq!(errors(&v1), ["shared.mlp_adapter_rank"]);
    let gqa = edit(
        "offset = 1",
        "offset = 1\nkv_heads = 2\nattention_adapter_rank = 8",
    );
    assert_eq!(errors(&gqa), ["shared.kv_heads"]);
    assert_eq!(
        ok(&gqa.replace("attention_adapter_rank = 8", "mlp_adapter_rank = 8"))
            .shared
            .num_kv_heads,
        2
    );
}

#[test]
fn no_concat_halves_the_block_width() {
    let s = ok(&edit("offset = 1", "offset = 1\nconcat_embeddings = false"));
    assert_eq!((s.attn_input_width(), s.shared.head_dim), (64, 16));
}

#[test]
fn independent_errors_are_all_reported_in_source_order() {
    let src = edit("hidden_size = 64", "hidden_size = 0")
        .replace("version = 2", "version = 2\nd_conv = -1")
        .replace("offset = 1", "offset = 1\nactivation = \"tanh\"");
    assert_eq!(
        errors(&src),
        ["model.hidden_size", "mamba.d_conv", "shared.activation"]
    );
}

#[test]
fn syntax_errors_have_positions() {
    assert_eq!(errors("[model]\nvocab_size = = 3\n"), ["model.vocab_size"]);
    assert_eq!(errors("[model\n"), ["model"]);
}

#[test]
fn name_defaults_to_the_file_stem() {
    assert_eq!(
        parse_toml(BASE, "dir/my-variant.toml").unwrap().name,
        "my-variant"
    );
    assert_eq!(ok(&edit("[model]", "[model]\nname = \"x\"")).name, "x");
}

/// `blocks = 0`: no shared block, no hybrid layer, a pure Mamba stack; a schedule next to
/// it is an error naming the schedule key; the canonical description round-trips.
#[test]
fn zero_blocks_is_a_pure_mamba_stack() {
    let src = edit("every = 3\noffset = 1\nheads = 4", "blocks = 0");
    let s = ok(&src);
    assert_eq!(s.shared.num_blocks, 0);
    assert!(s.hybrid_layer_ids().is_empty());
    assert!(s.layers.iter().all(|l| *l == LayerKind::Mamba));
    let canonical = to_toml(&s);
    assert_eq!(ok(&canonical), s, "{canonical}");
    assert_eq!(errors(&edit("offset = 1", "blocks = 0")), ["shared.every"]);
    assert_eq!(
        errors(&edit("every = 3\noffset = 1", "blocks = 0\nlayers = [2]")),
        ["shared.layers"]
    );
}
