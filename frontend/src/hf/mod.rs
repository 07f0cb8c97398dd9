//! Hugging Face `config.json` import (spec §1.1, §1.2): `model_type` picks the family
//! reader ([`zamba2`], [`zamba1`]); this file holds what both share — value helpers with
//! HF's null semantics, the layer schedule, dtype and activation names, and cross-checks
//! of the keys HF derives itself.

mod zamba1;
mod zamba2;

use crate::node::{Node, Val};
use crate::reader::{At, Cx, Fields, MAX_LAYERS};
use crate::resolve::Draft;
use crate::spec::{Activation, DType, LayerKind};

/// Keys every `PretrainedConfig` may carry that have no effect on the model's math.
const GENERIC_IGNORED: &[&str] = &[
    "_name_or_path",
    "architectures",
    "transformers_version",
    "auto_map",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "is_encoder_decoder",
    "tie_encoder_decoder",
    "chunk_size_feed_forward",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "finetuning_task",
    "prefix",
    "max_position_embeddings",
    "initializer_range",
    "attention_dropout",
    "num_logits_to_keep",
    "use_mamba_kernels",
    "time_step_max",
    "time_step_floor",
    "torchscript",
    "pruned_heads",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "is_decoder",
    "max_length",
    "min_length",
];

/// Reads a parsed `config.json`; `name` becomes the model name.
pub(crate) fn read(cx: &mut Cx, root: &Node, name: &str) -> Option<Draft> {
    let Val::Table(table) = &root.val else {
        let found = root.val.kind();
        cx.error(
            root.span.clone(),
            "config.json",
            "a JSON object with the model's configuration",
            found,
        );
        return None;
    };
    let f = Fields::new(table, "", root.span.start..root.span.start + 1);
    let Some(node) = f.node("model_type") else {
        f.missing(cx, "model_type", "\"zamba2\" or \"zamba\"");
        return None;
    };
    let model_type = f.str(cx, "model_type")?;
    match model_type.value.as_str() {
        "zamba2" => zamba2::read(cx, &f, name),
        "zamba" => zamba1::read(cx, &f, name),
        other => {
            let found = cx.describe(node);
            cx.error(
                model_type.span,
                "model_type",
                "\"zamba2\" or \"zamba\"",
                found,
            )
            .note = Some(format!(
                "zambac compiles Zyphra's Zamba family only; `{other}` is another architecture"
            ));
            None
        }
    }
}

/// A positive size, `default` when absent (HF's field default). Not nullable.
fn size(cx: &mut Cx, f: &Fields<'_>, name: &str, default: usize) -> Option<At<usize>> {
    if f.node(name).is_none() {
        return Some(f.default_at(name, default));
    }
    f.pos_int(cx, name)
}

/// A value HF accepts as `null` meaning "derive it": `Some(None)` when absent or null,
/// `None` after an error.
fn nullable<'t, T>(
    cx: &mut Cx,
    f: &Fields<'t>,
    name: &str,
    get: impl FnOnce(&Fields<'t>, &mut Cx, &str) -> Option<T>,
) -> Option<Option<T>> {
    if !f.present(name) {
        return Some(None);
    }
    get(f, cx, name).map(Some)
}

fn flag(cx: &mut Cx, f: &Fields<'_>, name: &str, default: bool) -> bool {
    f.bool(cx, name).map_or(default, |v| v.value)
}

fn float(cx: &mut Cx, f: &Fields<'_>, name: &str, default: f64) -> f64 {
    f.pos_float(cx, name).map_or(default, |v| v.value)
}

/// `dtype` (transformers 5) or `torch_dtype` (4.x); absent means float32, what
/// `from_pretrained` loads by default.
fn dtype(cx: &mut Cx, f: &Fields<'_>) -> DType {
    let Some(name) = ["dtype", "torch_dtype"].into_iter().find(|k| f.present(k)) else {
        return DType::F32;
    };
    let Some(s) = f.str(cx, name) else {
        return DType::F32;
    };
    if let (Some(n), true) = (f.node("torch_dtype"), name == "dtype")
        && let Val::Str(legacy) = &n.val
        && DType::parse(legacy) != DType::parse(&s.value)
    {
        let msg = format!(
            "\"{legacy}\" disagrees with dtype = \"{}\"; zambac uses `dtype` (transformers 5)",
            s.value
        );
        cx.warn(n.span.clone(), "torch_dtype", msg);
    }
    match DType::parse(&s.value) {
        Some(d) => d,
        None => {
            cx.error(
                s.span,
                s.key,
                "\"float32\", \"bfloat16\" or \"float16\"",
                format!("\"{}\"", s.value),
            );
            DType::F32
        }
    }
}

/// `hidden_act`: the MLP gate activation (HF's `ACT2FN` names).
fn activation(cx: &mut Cx, f: &Fields<'_>) -> Option<Activation> {
    if !f.present("hidden_act") {
        return Some(Activation::Gelu);
    }
    let s = f.str(cx, "hidden_act")?;
    match s.value.as_str() {
        "gelu" => Some(Activation::Gelu),
        "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
        "silu" | "swish" => Some(Activation::Silu),
        other => {
            cx.error(
                s.span,
                s.key,
                "\"gelu\", \"gelu_pytorch_tanh\", \"gelu_new\", \"silu\" or \"swish\"",
                format!("\"{other}\""),
            );
            None
        }
    }
}

/// `layers_block_type`: `Some(None)` when absent or null (the caller applies HF's default),
/// `None` after an error. Accepts legacy `"mamba"`, HF5 `"linear_attention"`, `"hybrid"`,
/// and Zyphra's pre-HF `"m"`/`"g"` (with a warning: HF itself would read no hybrid layer).
fn layer_types(cx: &mut Cx, f: &Fields<'_>) -> Option<Option<Vec<LayerKind>>> {
    const KEY: &str = "layers_block_type";
    let Some(node) = f.node(KEY) else {
        return Some(None);
    };
    let items = match &node.val {
        Val::Null => return Some(None),
        Val::Array(items) if items.len() <= MAX_LAYERS => items,
        Val::Array(items) => {
            cx.error(
                node.span.clone(),
                KEY,
                format!("at most {MAX_LAYERS} layers"),
                items.len().to_string(),
            );
            return None;
        }
        _ => {
            let found = cx.describe(node);
            cx.error(node.span.clone(), KEY, "an array of layer types", found);
            return None;
        }
    };
    let mut out = Vec::with_capacity(items.len());
    let mut zyphra = 0;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let kind = match &item.val {
            Val::Str(s) if s == "mamba" || s == "linear_attention" => Some(LayerKind::Mamba),
            Val::Str(s) if s == "hybrid" => Some(LayerKind::Hybrid),
            Val::Str(s) if s == "m" || s == "g" => {
                zyphra += 1;
                Some(if s == "m" {
                    LayerKind::Mamba
                } else {
                    LayerKind::Hybrid
                })
            }
            _ => None,
        };
        match kind {
            Some(k) => out.push(k),
            None => {
                let found = cx.describe(item);
                cx.error(
                    item.span.clone(),
                    format!("{KEY}[{i}]"),
                    "\"linear_attention\", \"mamba\" or \"hybrid\"",
                    found,
                );
                ok = false;
            }
        }
    }
    if zyphra > 0 {
        cx.warn(
            node.span.clone(),
            KEY,
            format!(
                "{zyphra} Zyphra-style layer type(s) \"m\"/\"g\" read as \"mamba\"/\"hybrid\" \
                 (Hugging Face does not know these names and would build no hybrid layer)"
            ),
        );
    }
    ok.then_some(Some(out))
}

/// The schedule's length must be `num_hidden_layers`.
fn check_layer_count(cx: &mut Cx, layers: &[LayerKind], num_layers: &At<usize>, why: &str) -> bool {
    if layers.len() == num_layers.value {
        return true;
    }
    cx.error(
        num_layers.span.clone(),
        num_layers.key.clone(),
        format!("{} ({why})", layers.len()),
        num_layers.value.to_string(),
    );
    false
}

/// Warns when a key HF recomputes disagrees with the recomputed value.
fn cross_check(cx: &mut Cx, f: &Fields<'_>, name: &str, derived: usize, how: &str) {
    let Some(node) = f.node(name) else { return };
    match node.val {
        Val::Null => {}
        Val::Int(v) if usize::try_from(v) == Ok(derived) => {}
        _ => {
            let found = cx.describe(node);
            cx.warn(
                node.span.clone(),
                name,
                format!("{found} disagrees with {how} = {derived}; zambac uses {derived}"),
            );
        }
    }
}

/// Warns when `hybrid_layer_ids` disagrees with the schedule it is derived from.
fn cross_check_hybrid_ids(cx: &mut Cx, f: &Fields<'_>, layers: &[LayerKind]) {
    let Some(node) = f.node("hybrid_layer_ids") else {
        return;
    };
    let derived: Vec<i64> = (layers.iter().enumerate())
        .filter(|(_, k)| **k == LayerKind::Hybrid)
        .map(|(i, _)| i as i64)
        .collect();
    let given: Option<Vec<i64>> = match &node.val {
        Val::Null => return,
        Val::Array(items) => items
            .iter()
            .map(|n| {
                if let Val::Int(v) = n.val {
                    Some(v)
                } else {
                    None
                }
            })
            .collect(),
        _ => None,
    };
    if given.as_ref() != Some(&derived) {
        let found = cx.describe(node);
        cx.warn(
            node.span.clone(),
            "hybrid_layer_ids",
            format!("{found} disagrees with the hybrid layers of layers_block_type {derived:?}; zambac uses the latter"),
        );
    }
}

/// The value of `name` from a nested object such as `rope_parameters`.
fn nested<'t>(cx: &mut Cx, f: &Fields<'t>, name: &str) -> Option<Fields<'t>> {
    if !f.present(name) {
        return None;
    }
    let (t, span) = f.table(cx, name)?;
    Some(Fields::new(t, format!("{name}."), span))
}

#[cfg(test)]
mod tests;
