//! `model_type = "zamba2"` (spec §1.1): defaults are transformers 5 `Zamba2Config` field
//! defaults; derived keys are recomputed and only cross-checked, as HF does.

use super::*;
use crate::reader::At;
use crate::resolve::{MambaDraft, SharedDraft};
use crate::spec::{DtClamp, Family};

/// Keys this reader uses or cross-checks.
const KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "layers_block_type",
    "hybrid_layer_ids",
    "mamba_d_state",
    "mamba_d_conv",
    "mamba_expand",
    "mamba_ngroups",
    "n_mamba_heads",
    "mamba_headdim",
    "chunk_size",
    "time_step_min",
    "time_step_limit",
    "use_conv_bias",
    "add_bias_linear",
    "intermediate_size",
    "hidden_act",
    "num_attention_heads",
    "num_key_value_heads",
    "attention_hidden_size",
    "attention_head_dim",
    "kv_channels",
    "num_query_groups",
    "num_mem_blocks",
    "use_shared_attention_adapter",
    "use_shared_mlp_adapter",
    "adapter_rank",
    "use_mem_rope",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "use_long_context",
    "rms_norm_eps",
    "tie_word_embeddings",
    "dtype",
    "torch_dtype",
];

/// Zamba2 keys with no effect on inference (spec §1.1).
const IGNORED: &[&str] = &["use_mem_eff_path", "ffn_hidden_size", "head_dim"];

/// HF's schedule when `layers_block_type` is absent (the 2.7B pattern, 54 layers).
fn default_schedule() -> Vec<LayerKind> {
    let (m, h) = (LayerKind::Mamba, LayerKind::Hybrid);
    let mut v = vec![m];
    for _ in 0..7 {
        v.extend([m; 5]);
        v.push(h);
    }
    v.extend([m, m, m, m, h, m, m, m, h, m, m]);
    v
}

pub(super) fn read(cx: &mut Cx, f: &Fields<'_>, name: &str) -> Option<Draft> {
    f.warn_unknown(cx, KEYS, &[GENERIC_IGNORED, IGNORED].concat());
    let vocab_size = size(cx, f, "vocab_size", 32000);
    let hidden = size(cx, f, "hidden_size", 2560);
    let layers = schedule(cx, f);
    let mamba = mamba(cx, f, hidden.as_ref().map(|h| h.value));
    let shared = shared(cx, f, hidden.as_ref().map(|h| h.value), layers.as_deref());
    notes(cx, f);
    let norm_eps = float(cx, f, "rms_norm_eps", 1e-5);
    let tie_embeddings = flag(cx, f, "tie_word_embeddings", true);
    let dtype = dtype(cx, f);
    Some(Draft {
        name: name.to_string(),
        family: Family::Zamba2,
        vocab_size: vocab_size?.value,
        hidden_size: hidden?,
        layers: layers?,
        norm_eps,
        tie_embeddings,
        dtype,
        mamba: mamba?,
        shared: shared?,
        unused_block_is_error: false,
    })
}

fn schedule(cx: &mut Cx, f: &Fields<'_>) -> Option<Vec<LayerKind>> {
    let num_layers = size(cx, f, "num_hidden_layers", 54);
    let (layers, why) = match layer_types(cx, f)? {
        Some(l) => (l, "the length of layers_block_type"),
        None => (
            default_schedule(),
            "layers_block_type is absent, so HF uses its 54-layer default schedule",
        ),
    };
    if !check_layer_count(cx, &layers, &num_layers?, why) {
        return None;
    }
    cross_check_hybrid_ids(cx, f, &layers);
    Some(layers)
}

fn mamba(cx: &mut Cx, f: &Fields<'_>, hidden: Option<usize>) -> Option<MambaDraft> {
    let d_state = size(cx, f, "mamba_d_state", 64);
    let d_conv = size(cx, f, "mamba_d_conv", 4);
    let expand = size(cx, f, "mamba_expand", 2);
    let groups = size(cx, f, "mamba_ngroups", 1);
    let heads = size(cx, f, "n_mamba_heads", 8);
    let chunk_size = size(cx, f, "chunk_size", 256);
    let time_step_min = float(cx, f, "time_step_min", 0.001);
    let proj_bias = flag(cx, f, "add_bias_linear", false);
    if let (Some(h), Some(e), Some(nh)) = (hidden, &expand, &heads)
        && (h * e.value) % nh.value == 0
    {
        cross_check(
            cx,
            f,
            "mamba_headdim",
            h * e.value / nh.value,
            "d_inner / n_mamba_heads",
        );
    }
    Some(MambaDraft {
        d_state: d_state?.value,
        d_conv: d_conv?.value,
        expand: expand?.value,
        heads: heads?,
        groups: groups?,
        chunk_size: chunk_size?.value,
        dt_rank: 0,
        // HF always builds the conv bias, whatever `use_conv_bias` says (see `notes`).
        conv_bias: true,
        proj_bias,
        time_step_min,
        dt_clamp: DtClamp::Hf5,
    })
}

fn shared(
    cx: &mut Cx,
    f: &Fields<'_>,
    hidden: Option<usize>,
    layers: Option<&[LayerKind]>,
) -> Option<SharedDraft> {
    let heads = size(cx, f, "num_attention_heads", 32);
    let kv_heads = nullable(cx, f, "num_key_value_heads", Fields::pos_int);
    let num_blocks = size(cx, f, "num_mem_blocks", 1);
    let intermediate = nullable(cx, f, "intermediate_size", Fields::pos_int);
    let activation = activation(cx, f);
    let rank = if f.node("adapter_rank").is_none() {
        Some(f.default_at("adapter_rank", 128))
    } else {
        f.nonneg_int(cx, "adapter_rank")
    };
    let attn_adapters = f.bool(cx, "use_shared_attention_adapter");
    let rope = flag(cx, f, "use_mem_rope", false);
    // Outer `None`: no RoPE; `Some(None)`: RoPE with a bad base or scaling (reported).
    let theta = rope.then(|| rope_parameters(cx, f));
    if let (Some(h), Some(ah)) = (hidden, &heads) {
        cross_check(cx, f, "attention_hidden_size", 2 * h, "2 · hidden_size");
        if (2 * h) % ah.value == 0 {
            cross_check(
                cx,
                f,
                "attention_head_dim",
                2 * h / ah.value,
                "2 · hidden_size / num_attention_heads",
            );
        }
        cross_check(
            cx,
            f,
            "kv_channels",
            h / ah.value,
            "hidden_size / num_attention_heads",
        );
        cross_check(cx, f, "num_query_groups", ah.value, "num_attention_heads");
    }
    let (hidden, rank, num_blocks, layers) = (hidden?, rank?, num_blocks?, layers?);
    let invocations = layers.iter().filter(|k| **k == LayerKind::Hybrid).count();
    let attn_rank = match attn_adapters {
        Some(on) if on.value => At::new(rank.value, on.key, on.span),
        Some(off) => At::new(0, off.key, off.span),
        None => f.default_at("use_shared_attention_adapter", 0),
    };
    Some(SharedDraft {
        invocation_blocks: (0..invocations).map(|i| i % num_blocks.value).collect(),
        num_blocks,
        concat_embeddings: true,
        heads: Some(heads?),
        kv_heads: kv_heads?,
        // HF derives the head dim as attention_hidden_size / num_attention_heads.
        head_dim: None,
        rope_theta: match &theta {
            Some(t) => Some(t.as_ref()?.0),
            None => None,
        },
        rope_scaling: match theta {
            Some(t) => t?.1,
            None => None,
        },
        attn_adapter_rank: attn_rank,
        // MLP adapters are always built (spec §1.1: `use_shared_mlp_adapter` is not a field).
        mlp_adapter_rank: rank,
        intermediate_size: intermediate?.map_or(4 * hidden, |v| v.value),
        activation: activation?,
    })
}

/// RoPE base and scaling: `rope_parameters` (transformers 5: `rope_type`, `rope_theta` and
/// the type's keys), else the legacy top-level `rope_theta` and `rope_scaling` (`type` or
/// `rope_type`), else plain RoPE with θ = 10000. The trained context that `dynamic` scaling
/// (and `yarn` / `longrope` without a factor) takes is `max_position_embeddings`, which
/// `use_long_context` sets to 16384 as transformers does.
fn rope_parameters(
    cx: &mut Cx,
    f: &Fields<'_>,
) -> Option<(f64, Option<At<zambac_engine::RopeScaling>>)> {
    let mut known = vec!["rope_type", "type", "rope_theta"];
    known.extend(crate::rope::KEYS);
    let long_context = f
        .node("use_long_context")
        .is_some_and(|n| matches!(n.val, Val::Bool(true)));
    let context = if long_context {
        Some(f.default_at("use_long_context", 16384))
    } else if f.given("max_position_embeddings") {
        f.pos_int(cx, "max_position_embeddings")
    } else {
        Some(f.default_at("max_position_embeddings", 4096))
    };
    let legacy = f.pos_float(cx, "rope_theta");
    let legacy_scaling = if f.given("rope_scaling") {
        nested(cx, f, "rope_scaling")
    } else {
        None
    };
    let params = nested(cx, f, "rope_parameters");
    let Some(params) = params.or(legacy_scaling) else {
        return Some((legacy.map_or(10000.0, |t| t.value), None));
    };
    params.warn_unknown(cx, &known, &[]);
    let kind = if params.present("rope_type") {
        params.str(cx, "rope_type")?
    } else if params.present("type") {
        params.str(cx, "type")?
    } else {
        params.default_at("rope_type", "default".to_string())
    };
    let scaling = crate::rope::read(cx, &params, &kind, context)?;
    let theta = params.pos_float(cx, "rope_theta");
    if let (Some(t), Some(l)) = (&theta, &legacy)
        && t.value != l.value
    {
        let msg = format!(
            "{} disagrees with {} = {}; zambac uses the latter",
            l.value, t.key, t.value
        );
        cx.warn(l.span.clone(), "rope_theta", msg);
    }
    Some((theta.or(legacy).map_or(10000.0, |t| t.value), scaling))
}

/// Keys that HF stores but ignores, or honours only in old versions: said once, in a warning.
fn notes(cx: &mut Cx, f: &Fields<'_>) {
    let warn_if = |cx: &mut Cx, name: &str, bad: bool, msg: &str| {
        if let (Some(n), Some(v)) = (f.node(name), f.bool(cx, name))
            && v.value == bad
        {
            cx.warn(n.span.clone(), name, msg);
        }
    };
    warn_if(
        cx,
        "use_conv_bias",
        false,
        "ignored: Hugging Face always builds and uses the conv1d bias",
    );
    warn_if(
        cx,
        "use_shared_mlp_adapter",
        false,
        "ignored: Hugging Face always builds and applies the MLP adapters",
    );
    warn_if(
        cx,
        "use_long_context",
        true,
        "transformers 5 only sets max_position_embeddings = 16384 (the trained context a `dynamic` RoPE scaling takes); 4.49–4.57 also rescaled rope_theta by 8^(hd/(hd-2)), which zambac applies only with `zambac build --hf4-long-context`",
    );
    if let Some(n) = f.node("time_step_limit")
        && !matches!(n.val, Val::Null)
    {
        cx.warn(
            n.span.clone(),
            "time_step_limit",
            "ignored (transformers ≥ 5.15 has no such field); see mamba.dt_clamp",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_the_54_layer_pattern() {
        let s = default_schedule();
        assert_eq!(s.len(), 54);
        let hybrids: Vec<usize> = (0..54).filter(|&i| s[i] == LayerKind::Hybrid).collect();
        assert_eq!(hybrids, [6, 12, 18, 24, 30, 36, 42, 47, 51]);
    }
}
