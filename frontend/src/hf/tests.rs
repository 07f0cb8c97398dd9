//! Config-import tests on small JSON strings: legacy (transformers 4) and HF5 forms,
//! Zyphra's "m"/"g", absent schedules, null-means-derive keys, cross-check warnings and
//! the errors of spec §1 / §6.4.

use serde_json::{Value, json};
use zambac_engine::RopeScaling;

use crate::spec::*;
use crate::{FrontendError, parse_hf_config};

/// A tiny HF5-form Zamba2 config (the `zamba2-tiny` fixture's shape).
fn zamba2() -> Value {
    json!({
        "model_type": "zamba2",
        "vocab_size": 256,
        "hidden_size": 48,
        "num_hidden_layers": 7,
        "layers_block_type": ["linear_attention", "hybrid", "linear_attention", "linear_attention",
                              "hybrid", "linear_attention", "hybrid"],
        "hybrid_layer_ids": [1, 4, 6],
        "mamba_d_state": 16,
        "mamba_expand": 2,
        "mamba_ngroups": 1,
        "n_mamba_heads": 3,
        "mamba_headdim": 32,
        "chunk_size": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "attention_head_dim": 24,
        "attention_hidden_size": 96,
        "kv_channels": 12,
        "intermediate_size": 80,
        "num_mem_blocks": 2,
        "use_shared_attention_adapter": true,
        "adapter_rank": 8,
        "use_mem_rope": true,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "dtype": "float32"
    })
}

/// A tiny Zamba v1 config (the `zamba1-tiny` fixture's shape).
fn zamba1() -> Value {
    json!({
        "model_type": "zamba",
        "vocab_size": 256,
        "hidden_size": 48,
        "num_hidden_layers": 7,
        "layers_block_type": ["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
        "mamba_d_state": 8,
        "mamba_dt_rank": 3,
        "n_mamba_heads": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "attention_head_dim": 24,
        "intermediate_size": 96
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove(key);
    }
    v
}

fn parse(v: &Value) -> (ModelSpec, Vec<String>) {
    let text = serde_json::to_string_pretty(v).unwrap();
    parse_hf_config(&text, "cfg/config.json").unwrap_or_else(|e| panic!("{}", e.render()))
}

fn fail(v: &Value) -> FrontendError {
    let text = serde_json::to_string_pretty(v).unwrap();
    match parse_hf_config(&text, "cfg/config.json") {
        Ok((s, _)) => panic!("expected an error, got {s:?}"),
        Err(e) => e,
    }
}

fn keys(e: &FrontendError) -> Vec<String> {
    e.diagnostics().iter().map(|d| d.key.clone()).collect()
}

#[test]
fn hf5_form_reads_every_value() {
    let (s, warnings) = parse(&zamba2());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.name, "cfg");
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 6]);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0]);
    assert_eq!(
        (s.shared.attn_adapter_rank, s.shared.mlp_adapter_rank),
        (8, 8)
    );
    assert_eq!(s.shared.rope_theta, Some(10000.0));
    assert_eq!((s.mamba.head_dim, s.shared.head_dim), (32, 24));
}

#[test]
fn legacy_form_mamba_names_and_top_level_rope_theta() {
    let legacy = without(zamba2(), "rope_parameters");
    let legacy = with(legacy, "rope_theta", json!(5000));
    let legacy = with(
        legacy,
        "layers_block_type",
        json!([
            "mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "hybrid"
        ]),
    );
    let legacy = with(without(legacy, "dtype"), "torch_dtype", json!("bfloat16"));
    let (s, warnings) = parse(&legacy);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 6]);
    assert_eq!(s.shared.rope_theta, Some(5000.0));
    assert_eq!(s.dtype, DType::Bf16);
    assert_eq!(
        s,
        ModelSpec {
            shared: SharedSpec {
                rope_theta: Some(5000.0),
                ..s.shared.clone()
            },
            ..parse(&with(zamba2(), "dtype", json!("bfloat16"))).0
        }
    );
}

#[test]
fn rope_parameters_win_over_legacy_rope_theta() {
    let (s, warnings) = parse(&with(zamba2(), "rope_theta", json!(500000.0)));
    assert_eq!(s.shared.rope_theta, Some(10000.0));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("rope_theta"), "{warnings:?}");
}

#[test]
fn zyphra_m_g_layer_types_are_accepted_with_a_warning() {
    let v = with(
        zamba2(),
        "layers_block_type",
        json!(["m", "g", "m", "m", "g", "m", "g"]),
    );
    let (s, warnings) = parse(&v);
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 6]);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("\"m\"/\"g\""), "{warnings:?}");
    assert!(warnings[0].starts_with("cfg/config.json:"), "{warnings:?}");
}

#[test]
fn absent_schedule_uses_hf_default_and_needs_54_layers() {
    let v = without(without(zamba2(), "layers_block_type"), "hybrid_layer_ids");
    let e = fail(&v);
    assert_eq!(keys(&e), ["num_hidden_layers"]);
    assert!(e.diagnostics()[0].expected.contains("54"), "{e}");
    let (s, _) = parse(&with(v, "num_hidden_layers", json!(54)));
    assert_eq!(s.hybrid_layer_ids(), [6, 12, 18, 24, 30, 36, 42, 47, 51]);
    assert_eq!(s.shared.invocation_blocks, [0, 1, 0, 1, 0, 1, 0, 1, 0]);
}

#[test]
fn schedule_length_must_match_num_hidden_layers() {
    let e = fail(&with(zamba2(), "num_hidden_layers", json!(8)));
    assert_eq!(keys(&e), ["num_hidden_layers"]);
}

#[test]
fn zamba1_absent_schedule_follows_period_and_offset() {
    let v = without(zamba1(), "layers_block_type");
    let v = with(
        with(v, "attn_layer_period", json!(3)),
        "attn_layer_offset",
        json!(1),
    );
    let v = with(v, "num_hidden_layers", json!(10));
    let (s, _) = parse(&v);
    // [m, m, h] + [h if k % 3 == 1] for k in 0..7 → k = 1, 4 → layers 4, 7.
    assert_eq!(s.hybrid_layer_ids(), [2, 4, 7]);
    // HF's defaults (period 6, offset 4) with 76 layers give Zamba-7B-v1's schedule.
    let v = with(
        without(zamba1(), "layers_block_type"),
        "num_hidden_layers",
        json!(76),
    );
    assert_eq!(
        parse(&v).0.hybrid_layer_ids(),
        [2, 7, 13, 19, 25, 31, 37, 43, 49, 55, 61, 67, 73]
    );
    let e = fail(&with(
        without(zamba1(), "layers_block_type"),
        "num_hidden_layers",
        json!(2),
    ));
    assert_eq!(keys(&e), ["num_hidden_layers"]);
}

#[test]
fn derived_keys_are_only_cross_checked() {
    let v = with(zamba2(), "mamba_headdim", json!(64));
    let v = with(v, "attention_head_dim", json!(12));
    let v = with(v, "attention_hidden_size", json!(48));
    let v = with(v, "kv_channels", json!(1));
    let v = with(v, "hybrid_layer_ids", json!([1, 2]));
    let (s, warnings) = parse(&v);
    assert_eq!((s.mamba.head_dim, s.shared.head_dim), (32, 24));
    assert_eq!(s.hybrid_layer_ids(), [1, 4, 6]);
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    for (w, key) in warnings.iter().zip([
        "hybrid_layer_ids",
        "mamba_headdim",
        "attention_hidden_size",
        "attention_head_dim",
        "kv_channels",
    ]) {
        assert!(w.contains(&format!("`{key}`")), "{w}");
    }
}

#[test]
fn nulls_mean_derive() {
    let v = with(zamba2(), "num_key_value_heads", Value::Null);
    let v = with(v, "intermediate_size", Value::Null);
    let (s, _) = parse(&v);
    assert_eq!(
        (s.shared.num_kv_heads, s.shared.intermediate_size),
        (4, 4 * 48)
    );
}

#[test]
fn zamba1_honours_attention_head_dim_and_auto_dt_rank() {
    let v = with(zamba1(), "attention_head_dim", json!(16));
    let v = with(v, "mamba_dt_rank", json!("auto"));
    let (s, _) = parse(&v);
    assert_eq!(s.shared.head_dim, 16);
    assert_eq!(s.mamba.dt_rank, 3); // ceil(48 / 16)
    let (s, _) = parse(&without(zamba1(), "attention_head_dim"));
    assert_eq!(s.shared.head_dim, 24);
    assert_eq!(
        (
            s.shared.rope_theta,
            s.shared.attn_adapter_rank,
            s.mamba.dt_clamp
        ),
        (None, 0, DtClamp::None)
    );
}

#[test]
fn adapters_follow_use_shared_attention_adapter() {
    let (s, _) = parse(&with(
        zamba2(),
        "use_shared_attention_adapter",
        json!(false),
    ));
    assert_eq!(
        (s.shared.attn_adapter_rank, s.shared.mlp_adapter_rank),
        (0, 8)
    );
    let (s, warnings) = parse(&with(zamba2(), "use_shared_mlp_adapter", json!(false)));
    assert_eq!(s.shared.mlp_adapter_rank, 8);
    assert_eq!(warnings.len(), 1);
}

#[test]
fn gqa_with_attention_adapters_is_an_error() {
    let e = fail(&with(zamba2(), "num_key_value_heads", json!(2)));
    assert_eq!(keys(&e), ["num_key_value_heads"]);
    let ok = with(
        with(zamba2(), "num_key_value_heads", json!(2)),
        "use_shared_attention_adapter",
        json!(false),
    );
    assert_eq!(parse(&ok).0.shared.num_kv_heads, 2);
}

#[test]
fn conv_bias_flag_is_ignored_for_zamba2() {
    let (s, warnings) = parse(&with(zamba2(), "use_conv_bias", json!(false)));
    assert!(s.mamba.conv_bias);
    assert_eq!(warnings.len(), 1);
    let (s, _) = parse(&with(zamba2(), "add_bias_linear", json!(true)));
    assert!(s.mamba.proj_bias);
}

#[test]
fn long_context_follows_hf5() {
    let (s, warnings) = parse(&with(zamba2(), "use_long_context", json!(true)));
    assert_eq!(s.shared.rope_theta, Some(10000.0));
    assert!(warnings[0].contains("use_long_context"), "{warnings:?}");
}

#[test]
fn dtype_defaults_to_f32_and_maps_names() {
    assert_eq!(parse(&without(zamba2(), "dtype")).0.dtype, DType::F32);
    assert_eq!(
        parse(&with(zamba2(), "dtype", json!("float16"))).0.dtype,
        DType::F16
    );
    assert_eq!(
        keys(&fail(&with(zamba2(), "dtype", json!("int8")))),
        ["dtype"]
    );
}

#[test]
fn hidden_act_names() {
    let act = |a: &str| {
        parse(&with(zamba2(), "hidden_act", json!(a)))
            .0
            .shared
            .activation
    };
    assert_eq!(act("gelu"), Activation::Gelu);
    assert_eq!(act("gelu_pytorch_tanh"), Activation::GeluTanh);
    assert_eq!(act("gelu_new"), Activation::GeluTanh);
    assert_eq!(act("silu"), Activation::Silu);
    assert_eq!(act("swish"), Activation::Silu);
    assert_eq!(
        keys(&fail(&with(zamba2(), "hidden_act", json!("relu")))),
        ["hidden_act"]
    );
}

#[test]
fn model_type_is_checked() {
    let e = fail(&with(zamba2(), "model_type", json!("mamba2")));
    assert_eq!(keys(&e), ["model_type"]);
    assert!(e.to_string().contains("mamba2"));
    assert_eq!(
        keys(&fail(&without(zamba2(), "model_type"))),
        ["model_type"]
    );
}

#[test]
fn unknown_keys_are_warnings_with_suggestions() {
    let (_, warnings) = parse(&with(zamba2(), "mamba_d_sate", json!(8)));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("did you mean `mamba_d_state`?"),
        "{warnings:?}"
    );
}

#[test]
fn independent_errors_are_all_reported() {
    let v = with(zamba2(), "hidden_size", json!(-1));
    let v = with(v, "mamba_d_state", json!("big"));
    let v = with(v, "layers_block_type", json!(["mamba", "attention"]));
    let e = fail(&v);
    assert_eq!(
        keys(&e),
        ["hidden_size", "layers_block_type[1]", "mamba_d_state"]
    );
    for d in e.diagnostics() {
        assert!(d.line_col.is_some(), "{d}");
    }
}

#[test]
fn rope_types_resolve_their_defaults_as_transformers_does() {
    let scaling = |params: Value| parse(&with(zamba2(), "rope_parameters", params)).0;
    let s = scaling(json!({"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}));
    assert_eq!(s.shared.rope_theta, Some(500.0));
    assert_eq!(
        s.shared.rope_scaling,
        Some(RopeScaling::Linear { factor: 2.0 })
    );
    // `dynamic` takes the trained context from `max_position_embeddings`.
    let v = with(zamba2(), "max_position_embeddings", json!(64));
    let v = with(
        v,
        "rope_parameters",
        json!({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0}),
    );
    assert_eq!(
        parse(&v).0.shared.rope_scaling,
        Some(RopeScaling::Dynamic {
            factor: 4.0,
            max_position_embeddings: 64
        })
    );
    // `yarn`: attention factor 0.1·ln(factor) + 1, β 32 and 1, truncation on.
    let s = scaling(json!({"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 32, "attention_factor": null}));
    assert_eq!(
        s.shared.rope_scaling,
        Some(RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32,
            attention_factor: 0.1 * 4f64.ln() + 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        })
    );
    // `longrope` without a factor: max_position_embeddings / original (4096 / 1024).
    let s = scaling(
        json!({"rope_type": "longrope", "original_max_position_embeddings": 1024,
        "short_factor": vec![1.0; 12], "long_factor": vec![2.0; 12]}),
    );
    let Some(RopeScaling::Longrope {
        attention_factor, ..
    }) = s.shared.rope_scaling
    else {
        panic!("{:?}", s.shared.rope_scaling)
    };
    assert_eq!(attention_factor, (1.0 + 4f64.ln() / 1024f64.ln()).sqrt());
    // The legacy form: top-level θ and `rope_scaling` with `type`.
    let v = with(
        zamba2(),
        "rope_scaling",
        json!({"type": "linear", "factor": 3.0}),
    );
    assert_eq!(
        parse(&without(v, "rope_parameters")).0.shared.rope_scaling,
        Some(RopeScaling::Linear { factor: 3.0 })
    );
    // `default` is plain RoPE.
    let s = scaling(json!({"rope_type": "default", "rope_theta": 10000.0}));
    assert_eq!(s.shared.rope_scaling, None);
}

#[test]
fn rope_parameters_that_cannot_work_are_named() {
    let fail_with = |params: Value| keys(&fail(&with(zamba2(), "rope_parameters", params)));
    assert_eq!(
        fail_with(json!({"rope_type": "linear", "rope_theta": 1.0})),
        ["rope_parameters.factor"]
    );
    assert_eq!(
        fail_with(json!({"rope_type": "ntk", "factor": 2.0})),
        ["rope_parameters.rope_type"]
    );
    assert_eq!(
        fail_with(json!({"rope_type": "linear", "factor": -2.0})),
        ["rope_parameters.factor"]
    );
    assert_eq!(
        fail_with(json!({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5})),
        ["rope_parameters.partial_rotary_factor"]
    );
    // One factor per rotated pair: the head dim is 24 here, so 12.
    assert_eq!(
        fail_with(
            json!({"rope_type": "longrope", "original_max_position_embeddings": 1024,
            "short_factor": [1.0, 1.0], "long_factor": [2.0, 2.0]})
        ),
        ["rope_parameters"]
    );
    assert_eq!(
        fail_with(
            json!({"rope_type": "longrope", "original_max_position_embeddings": 1024,
            "short_factor": [1.0, "x"], "long_factor": [2.0, 2.0]})
        ),
        ["rope_parameters.short_factor[1]"]
    );
}

#[test]
fn long_context_sets_the_trained_context_of_dynamic_scaling() {
    let v = with(zamba2(), "use_long_context", json!(true));
    let v = with(
        v,
        "rope_parameters",
        json!({"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
    );
    assert_eq!(
        parse(&v).0.shared.rope_scaling,
        Some(RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 16384
        })
    );
}
