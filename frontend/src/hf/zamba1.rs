//! `model_type = "zamba"` (Zamba v1, spec §1.2): multi-head Mamba1, one shared block, no
//! RoPE, no adapters. Defaults are `ZambaConfig`'s (= Zamba-7B-v1).

use super::*;
use crate::resolve::{MambaDraft, SharedDraft};
use crate::spec::{DtClamp, Family};

const KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "layers_block_type",
    "hybrid_layer_ids",
    "attn_layer_period",
    "attn_layer_offset",
    "mamba_expand",
    "n_mamba_heads",
    "mamba_d_state",
    "mamba_d_conv",
    "mamba_dt_rank",
    "mamba_conv_bias",
    "mamba_proj_bias",
    "hidden_mamba_act",
    "hidden_act",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "attention_hidden_size",
    "attention_head_dim",
    "rms_norm_eps",
    "tie_word_embeddings",
    "time_step_min",
    "dtype",
    "torch_dtype",
];

/// Zamba v1 keys with no effect on the math (spec §1.2: no RoPE, no sliding window).
const IGNORED: &[&str] = &["rope_theta", "sliding_window", "use_associative_scan"];

pub(super) fn read(cx: &mut Cx, f: &Fields<'_>, name: &str) -> Option<Draft> {
    f.warn_unknown(cx, KEYS, &[GENERIC_IGNORED, IGNORED].concat());
    let vocab_size = size(cx, f, "vocab_size", 32000);
    let hidden = size(cx, f, "hidden_size", 3712);
    let layers = schedule(cx, f);
    let hidden_value = hidden.as_ref().map(|h| h.value);
    let mamba = mamba(cx, f, hidden_value);
    let shared = shared(cx, f, hidden_value, layers.as_deref());
    let norm_eps = float(cx, f, "rms_norm_eps", 1e-5);
    let tie_embeddings = flag(cx, f, "tie_word_embeddings", true);
    let dtype = dtype(cx, f);
    Some(Draft {
        name: name.to_string(),
        family: Family::Zamba,
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

/// `layers_block_type`, or HF's derivation from `attn_layer_period`/`attn_layer_offset`:
/// `[mamba, mamba, hybrid] + [hybrid if k % period == offset else mamba for k in 0..L-3]`.
fn schedule(cx: &mut Cx, f: &Fields<'_>) -> Option<Vec<LayerKind>> {
    let num_layers = size(cx, f, "num_hidden_layers", 76)?;
    let period = size(cx, f, "attn_layer_period", 6);
    let offset = if f.present("attn_layer_offset") {
        f.int(cx, "attn_layer_offset")
    } else {
        Some(f.default_at("attn_layer_offset", 4))
    };
    let layers = match layer_types(cx, f)? {
        Some(layers) => {
            if !check_layer_count(cx, &layers, &num_layers, "the length of layers_block_type") {
                return None;
            }
            layers
        }
        None => {
            let (period, offset) = (period?.value, offset?.value);
            if num_layers.value < 3 || num_layers.value > MAX_LAYERS {
                cx.error(
                    num_layers.span.clone(),
                    num_layers.key.clone(),
                    format!("3 to {MAX_LAYERS} layers (without layers_block_type, HF's schedule starts mamba, mamba, hybrid)"),
                    num_layers.value.to_string(),
                );
                return None;
            }
            let mut v = vec![LayerKind::Mamba, LayerKind::Mamba, LayerKind::Hybrid];
            v.extend((0..num_layers.value - 3).map(|k| {
                if (k % period) as i64 == offset {
                    LayerKind::Hybrid
                } else {
                    LayerKind::Mamba
                }
            }));
            v
        }
    };
    cross_check_hybrid_ids(cx, f, &layers);
    Some(layers)
}

fn mamba(cx: &mut Cx, f: &Fields<'_>, hidden: Option<usize>) -> Option<MambaDraft> {
    let expand = size(cx, f, "mamba_expand", 2);
    let heads = size(cx, f, "n_mamba_heads", 2);
    let d_state = size(cx, f, "mamba_d_state", 16);
    let d_conv = size(cx, f, "mamba_d_conv", 4);
    let dt_rank = dt_rank(cx, f, hidden);
    let conv_bias = flag(cx, f, "mamba_conv_bias", true);
    let proj_bias = flag(cx, f, "mamba_proj_bias", false);
    let time_step_min = float(cx, f, "time_step_min", 0.001);
    if f.present("hidden_mamba_act")
        && let Some(act) = f.str(cx, "hidden_mamba_act")
        && act.value != "silu"
    {
        cx.error(
            act.span,
            act.key,
            "\"silu\" (the only conv activation zambac implements)",
            format!("\"{}\"", act.value),
        );
    }
    Some(MambaDraft {
        d_state: d_state?.value,
        d_conv: d_conv?.value,
        expand: expand?.value,
        heads: heads?,
        groups: f.default_at("n_mamba_heads", 1),
        chunk_size: 256,
        dt_rank: dt_rank?,
        conv_bias,
        proj_bias,
        time_step_min,
        // Zamba v1 never clamps Δ (spec §6.3).
        dt_clamp: DtClamp::None,
    })
}

/// `mamba_dt_rank`: an integer or `"auto"` = ⌈hidden/16⌉.
fn dt_rank(cx: &mut Cx, f: &Fields<'_>, hidden: Option<usize>) -> Option<usize> {
    match f.node("mamba_dt_rank").map(|n| &n.val) {
        None | Some(Val::Null) => hidden.map(|h| h.div_ceil(16)),
        Some(Val::Str(s)) if s == "auto" => hidden.map(|h| h.div_ceil(16)),
        Some(Val::Int(_)) => f.pos_int(cx, "mamba_dt_rank").map(|v| v.value),
        Some(_) => {
            let node = f.node("mamba_dt_rank")?;
            let found = cx.describe(node);
            cx.error(
                node.span.clone(),
                "mamba_dt_rank",
                "a positive integer or \"auto\"",
                found,
            );
            None
        }
    }
}

fn shared(
    cx: &mut Cx,
    f: &Fields<'_>,
    hidden: Option<usize>,
    layers: Option<&[LayerKind]>,
) -> Option<SharedDraft> {
    let heads = size(cx, f, "num_attention_heads", 16);
    let kv_heads = nullable(cx, f, "num_key_value_heads", Fields::pos_int);
    // Unlike Zamba2, a head dim in config.json is honoured.
    let head_dim = nullable(cx, f, "attention_head_dim", Fields::pos_int);
    let intermediate = nullable(cx, f, "intermediate_size", Fields::pos_int);
    let activation = activation(cx, f);
    if let Some(h) = hidden {
        cross_check(cx, f, "attention_hidden_size", 2 * h, "2 · hidden_size");
    }
    let (hidden, layers) = (hidden?, layers?);
    let invocations = layers.iter().filter(|k| **k == LayerKind::Hybrid).count();
    Some(SharedDraft {
        num_blocks: f.default_at("num_mem_blocks", 1),
        invocation_blocks: vec![0; invocations],
        concat_embeddings: true,
        heads: Some(heads?),
        kv_heads: kv_heads?,
        head_dim: head_dim?,
        rope_theta: None,
        rope_scaling: None,
        attn_adapter_rank: f.default_at("adapter_rank", 0),
        mlp_adapter_rank: f.default_at("adapter_rank", 0),
        intermediate_size: intermediate?.map_or(4 * hidden, |v| v.value),
        activation: activation?,
    })
}
