//! Every shared config and fixture imports with the values of spec §1.3 / the fixture
//! READMEs; each released example TOML is the same model as its config.json; every input
//! round-trips through `to_toml`.

mod common;

use common::*;
use zambac_frontend::*;

fn load_config(name: &str) -> ModelSpec {
    let loaded = load(&config_dir(name)).unwrap_or_else(|e| panic!("{name}: {}", e.render()));
    assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
    assert_eq!(loaded.kind, InputKind::CheckpointDir(config_dir(name)));
    loaded.spec
}

fn rope(s: &ModelSpec) -> Option<f64> {
    s.shared.rope_theta
}

#[test]
fn zamba2_1_2b() {
    let s = load_config("zamba2-1.2b");
    assert_eq!(s.name, "zamba2-1.2b");
    assert_eq!(s.family, Family::Zamba2);
    assert_eq!(
        (s.vocab_size, s.hidden_size, s.num_layers()),
        (32000, 2048, 38)
    );
    assert_eq!(s.hybrid_layer_ids(), [5, 11, 17, 23, 29, 35]);
    assert_eq!(s.shared.num_blocks, 1);
    assert_eq!(s.shared.invocation_blocks, [0; 6]);
    let m = &s.mamba;
    assert_eq!(
        (
            m.version, m.d_inner, m.d_state, m.n_groups, m.n_heads, m.head_dim
        ),
        (2, 4096, 128, 1, 64, 64)
    );
    assert_eq!(
        (m.conv_dim(), m.in_proj_rows(), m.d_conv, m.dt_rank),
        (4352, 8512, 4, 0)
    );
    assert!(m.conv_bias && !m.proj_bias);
    assert_eq!(m.dt_clamp, DtClamp::Hf5);
    assert_eq!(m.time_step_min, 0.001);
    let sh = &s.shared;
    assert_eq!((sh.num_heads, sh.num_kv_heads, sh.head_dim), (32, 32, 128));
    assert_eq!(sh.attention_scale, 0.125);
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (128, 128));
    assert_eq!(sh.intermediate_size, 8192);
    assert_eq!(rope(&s), Some(10000.0));
    assert!(sh.concat_embeddings);
    assert_eq!(sh.activation, Activation::Gelu);
    assert_eq!(
        (s.norm_eps, s.tie_embeddings, s.dtype),
        (1e-5, true, DType::F32)
    );
}

#[test]
fn zamba2_2_7b() {
    let s = load_config("zamba2-2.7b");
    assert_eq!((s.hidden_size, s.num_layers()), (2560, 54));
    assert_eq!(s.hybrid_layer_ids(), [6, 12, 18, 24, 30, 36, 42, 47, 51]);
    assert_eq!(s.shared.num_blocks, 2);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0, 1, 0, 1, 0, 1, 0]);
    let m = &s.mamba;
    assert_eq!(
        (m.d_inner, m.d_state, m.n_groups, m.n_heads, m.head_dim),
        (5120, 64, 1, 80, 64)
    );
    assert_eq!((m.conv_dim(), m.in_proj_rows()), (5248, 10448));
    let sh = &s.shared;
    assert_eq!((sh.num_heads, sh.num_kv_heads, sh.head_dim), (32, 32, 160));
    assert!((sh.attention_scale - 1.0 / 80f64.sqrt()).abs() < 1e-15);
    assert_eq!(
        (
            sh.attn_adapter_rank,
            sh.mlp_adapter_rank,
            sh.intermediate_size
        ),
        (0, 128, 10240)
    );
    assert_eq!(rope(&s), None);
}

#[test]
fn zamba2_7b() {
    let s = load_config("zamba2-7b");
    assert_eq!((s.hidden_size, s.num_layers()), (3584, 81));
    assert_eq!(
        s.hybrid_layer_ids(),
        [6, 11, 17, 23, 29, 35, 41, 47, 53, 59, 65, 71, 77]
    );
    assert_eq!(
        s.shared.invocation_blocks,
        [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    );
    let m = &s.mamba;
    assert_eq!(
        (m.d_inner, m.d_state, m.n_groups, m.n_heads, m.head_dim),
        (7168, 64, 2, 112, 64)
    );
    assert_eq!((m.conv_dim(), m.in_proj_rows()), (7424, 14704));
    let sh = &s.shared;
    assert_eq!(
        (sh.num_heads, sh.head_dim, sh.intermediate_size),
        (32, 224, 14336)
    );
    assert!((sh.attention_scale - 1.0 / 112f64.sqrt()).abs() < 1e-15);
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (0, 128));
    assert_eq!(rope(&s), Some(10000.0));
}

#[test]
fn zamba_7b_v1() {
    let s = load_config("zamba-7b-v1");
    assert_eq!(s.family, Family::Zamba);
    assert_eq!((s.hidden_size, s.num_layers()), (3712, 76));
    assert_eq!(
        s.hybrid_layer_ids(),
        [2, 7, 13, 19, 25, 31, 37, 43, 49, 55, 61, 67, 73]
    );
    assert_eq!(
        (s.shared.num_blocks, s.shared.invocation_blocks.clone()),
        (1, vec![0; 13])
    );
    let m = &s.mamba;
    assert_eq!(
        (
            m.version, m.d_inner, m.d_state, m.n_heads, m.head_dim, m.dt_rank
        ),
        (1, 7424, 16, 2, 3712, 232)
    );
    assert_eq!(
        (m.conv_dim(), m.in_proj_rows(), m.n_groups),
        (7424, 14848, 1)
    );
    assert_eq!(m.dt_clamp, DtClamp::None);
    let sh = &s.shared;
    assert_eq!(
        (
            sh.num_heads,
            sh.num_kv_heads,
            sh.head_dim,
            sh.intermediate_size
        ),
        (16, 16, 464, 14848)
    );
    assert!((sh.attention_scale - 1.0 / 232f64.sqrt()).abs() < 1e-15);
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (0, 0));
    assert_eq!(rope(&s), None);
}

#[test]
fn zamba2_100m() {
    let s = load_config("zamba2-100m");
    assert_eq!((s.hidden_size, s.num_layers()), (768, 16));
    assert_eq!(s.hybrid_layer_ids(), [5, 11]);
    assert_eq!(
        (s.mamba.n_heads, s.mamba.head_dim, s.mamba.d_state),
        (24, 64, 64)
    );
    let sh = &s.shared;
    assert_eq!(
        (sh.num_heads, sh.head_dim, sh.intermediate_size),
        (12, 128, 3072)
    );
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (64, 64));
    assert_eq!(rope(&s), Some(10000.0));
}

#[test]
fn fixture_zamba2_tiny() {
    let s = load(&fixture_dir("zamba2-tiny")).unwrap().spec;
    assert_eq!((s.vocab_size, s.hidden_size, s.num_layers()), (256, 48, 7));
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 6]);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0]);
    let m = &s.mamba;
    assert_eq!(
        (
            m.d_inner,
            m.n_heads,
            m.head_dim,
            m.d_state,
            m.n_groups,
            m.chunk_size
        ),
        (96, 3, 32, 16, 1, 16)
    );
    let sh = &s.shared;
    assert_eq!(
        (sh.num_heads, sh.head_dim, sh.intermediate_size),
        (4, 24, 80)
    );
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (8, 8));
    assert_eq!((rope(&s), s.dtype), (Some(10000.0), DType::F32));
}

#[test]
fn fixture_zamba2_tiny_norope_1block() {
    let s = load(&fixture_dir("zamba2-tiny-norope-1block"))
        .unwrap()
        .spec;
    assert_eq!((s.vocab_size, s.hidden_size, s.num_layers()), (320, 64, 6));
    assert_eq!(s.hybrid_layer_ids(), [0, 3, 5]);
    assert_eq!(
        (s.shared.num_blocks, s.shared.invocation_blocks.clone()),
        (1, vec![0, 0, 0])
    );
    let m = &s.mamba;
    assert_eq!(
        (m.d_inner, m.n_heads, m.head_dim, m.d_state, m.n_groups),
        (128, 8, 16, 8, 2)
    );
    let sh = &s.shared;
    assert_eq!(
        (sh.num_heads, sh.head_dim, sh.intermediate_size),
        (2, 64, 96)
    );
    assert_eq!((sh.attn_adapter_rank, sh.mlp_adapter_rank), (0, 4));
    assert_eq!(rope(&s), None);
}

#[test]
fn fixture_zamba1_tiny() {
    let s = load(&fixture_dir("zamba1-tiny")).unwrap().spec;
    assert_eq!(s.family, Family::Zamba);
    assert_eq!((s.vocab_size, s.hidden_size, s.num_layers()), (256, 48, 7));
    assert_eq!(s.hybrid_layer_ids(), [2, 5]);
    let m = &s.mamba;
    assert_eq!(
        (m.d_inner, m.n_heads, m.head_dim, m.d_state, m.dt_rank),
        (96, 2, 48, 8, 3)
    );
    let sh = &s.shared;
    assert_eq!(
        (sh.num_heads, sh.head_dim, sh.intermediate_size),
        (4, 24, 96)
    );
    assert_eq!(s.dtype, DType::F32);
}

/// The released example descriptions are the released configs, `name` and `dtype` aside
/// (`zambac explore` must give identical parameter counts for both).
#[test]
fn released_examples_match_configs() {
    for name in [
        "zamba2-1.2b",
        "zamba2-2.7b",
        "zamba2-7b",
        "zamba-7b-v1",
        "zamba2-100m",
    ] {
        let from_json = load_config(name);
        let from_toml = load(&example(&format!("{name}.toml")))
            .unwrap_or_else(|e| panic!("{}", e.render()))
            .spec;
        assert_eq!(from_toml.dtype, DType::Bf16, "{name}");
        let normalised = ModelSpec {
            dtype: from_json.dtype,
            name: from_json.name.clone(),
            ..from_toml
        };
        assert_eq!(normalised, from_json, "{name}");
    }
}

#[test]
fn every_example_loads() {
    let examples = examples();
    assert!(examples.len() >= 9, "{examples:?}");
    for path in examples {
        let loaded = load(&path).unwrap_or_else(|e| panic!("{}", e.render()));
        assert_eq!(loaded.kind, InputKind::Toml);
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap();
        assert_eq!(loaded.spec.name, stem, "example names match their files");
    }
}

#[test]
fn tiny_example_has_every_feature() {
    let s = load(&example("tiny.toml")).unwrap().spec;
    assert_eq!((s.vocab_size, s.hidden_size, s.num_layers()), (512, 64, 8));
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 7]);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0]);
    assert_eq!(
        (
            s.mamba.n_heads,
            s.mamba.head_dim,
            s.mamba.n_groups,
            s.mamba.d_state
        ),
        (4, 32, 2, 16)
    );
    assert_eq!(
        (
            s.shared.head_dim,
            s.shared.attn_adapter_rank,
            s.shared.mlp_adapter_rank
        ),
        (32, 8, 8)
    );
    assert_eq!((rope(&s), s.dtype), (Some(10000.0), DType::F32));
}

#[test]
fn variants_differ_from_their_base_as_described() {
    let base = load(&example("zamba2-1.2b.toml")).unwrap().spec;
    let two = load(&example("variant-1.2b-two-blocks-every4.toml"))
        .unwrap()
        .spec;
    assert_eq!(two.hybrid_layer_ids(), [3, 7, 11, 15, 19, 23, 27, 31, 35]);
    assert_eq!(two.shared.invocation_blocks, [0, 1, 0, 1, 0, 1, 0, 1, 0]);
    assert_eq!(two.mamba, base.mamba);
    let nc = load(&example("variant-1.2b-no-concat-rank32.toml"))
        .unwrap()
        .spec;
    assert!(!nc.shared.concat_embeddings);
    assert_eq!(
        (
            nc.shared.head_dim,
            nc.shared.attn_adapter_rank,
            nc.shared.mlp_adapter_rank
        ),
        (64, 32, 32)
    );
    assert_eq!(nc.layers, base.layers);
    let gqa = load(&example("variant-2.7b-gqa8.toml")).unwrap().spec;
    assert_eq!(
        (
            gqa.shared.num_heads,
            gqa.shared.num_kv_heads,
            gqa.shared.head_dim
        ),
        (32, 8, 160)
    );
}

fn assert_round_trips(spec: &ModelSpec) {
    let text = to_toml(spec);
    let back =
        parse_toml(&text, "roundtrip.toml").unwrap_or_else(|e| panic!("{}\n{text}", e.render()));
    assert_eq!(&back, spec, "{text}");
}

#[test]
fn to_toml_round_trips_examples_configs_and_fixtures() {
    for path in examples() {
        assert_round_trips(&load(&path).unwrap().spec);
    }
    for name in CONFIGS {
        assert_round_trips(&load_config(name));
    }
    for name in FIXTURES {
        assert_round_trips(&load(&fixture_dir(name)).unwrap().spec);
    }
}

#[test]
fn to_toml_round_trips_every_rope_scaling() {
    use zambac_engine::RopeScaling;
    let base = load_config("zamba2-1.2b");
    let pairs = base.shared.head_dim / 2;
    let scalings = [
        RopeScaling::Linear { factor: 2.5 },
        RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 4096,
        },
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 4096,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            beta_fast: 16.0,
            beta_slow: 2.0,
            truncate: false,
        },
        RopeScaling::Longrope {
            short_factor: (0..pairs).map(|i| 1.0 + i as f64 / 7.0).collect(),
            long_factor: vec![3.0; pairs],
            original_max_position_embeddings: 2048,
            attention_factor: 1.09,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        },
    ];
    for scaling in scalings {
        let mut spec = base.clone();
        spec.shared.rope_scaling = Some(scaling);
        assert_round_trips(&spec);
    }
}

#[test]
fn config_json_file_and_directory_agree() {
    let dir = load(&config_dir("zamba2-7b")).unwrap();
    let file = load(&config_dir("zamba2-7b").join("config.json")).unwrap();
    assert_eq!(file.kind, InputKind::HfConfig);
    assert_eq!(dir.spec, file.spec);
}

#[test]
fn canonical_form_uses_every_offset_and_omits_round_robin() {
    let s = load_config("zamba2-1.2b");
    let text = to_toml(&s);
    assert!(text.contains("every = 6\n"), "{text}");
    assert!(text.contains("offset = 5"), "{text}");
    assert!(!text.contains("assignment"), "{text}");
    let s = load_config("zamba2-2.7b");
    let text = to_toml(&s);
    assert!(
        text.contains("layers = [6, 12, 18, 24, 30, 36, 42, 47, 51]"),
        "{text}"
    );
    assert!(!text.contains("every"), "{text}");
}

/// The complete example of docs/model-description.md is examples/tiny.toml spelled out.
#[test]
fn documented_example_is_the_tiny_example() {
    let doc = std::fs::read_to_string(root().join("docs/model-description.md")).unwrap();
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &doc[start..start + doc[start..].find("```").unwrap()];
    let documented = parse_toml(block, "doc.toml").unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(documented, load(&example("tiny.toml")).unwrap().spec);
}

/// transformers 4.49–4.57's `use_long_context` θ: θ · 8^(hd/(hd−2)), only with RoPE.
#[test]
fn hf4_long_context_rescales_theta_on_request() {
    let mut s = load_config("zamba2-1.2b");
    let hd = s.shared.head_dim as f64;
    let theta = s.shared.rope_theta.unwrap();
    s.rescale_theta_as_hf4_long_context().unwrap();
    assert_eq!(
        s.shared.rope_theta,
        Some(theta * 8f64.powf(hd / (hd - 2.0)))
    );
    s.shared.rope_theta = None;
    let e = s.rescale_theta_as_hf4_long_context().unwrap_err();
    assert!(e.contains("needs RoPE"), "{e}");
}
