//! The zambac TOML model description (`docs/model-description.md`): `[model]`, `[mamba]`
//! and `[shared]` tables read into a [`Draft`]. Rules that only concern this format (the
//! `every`/`offset` vs `layers` schedule, `assignment`, version-specific keys, unknown
//! keys) are checked here; the rest in [`crate::resolve`].

mod schedule;

use schedule::{read_assignment, read_schedule};

use crate::node::{Span, Table, Val};
use crate::reader::{At, Cx, Fields, MAX_LAYERS};
use crate::resolve::{Draft, MambaDraft, SharedDraft};
use crate::spec::*;

pub(crate) const TABLES: &[&str] = &["model", "mamba", "shared"];
pub(crate) const MODEL_KEYS: &[&str] = &[
    "name",
    "vocab_size",
    "hidden_size",
    "num_layers",
    "norm_eps",
    "tie_embeddings",
    "dtype",
];
pub(crate) const MAMBA_KEYS: &[&str] = &[
    "version",
    "d_state",
    "d_conv",
    "expand",
    "heads",
    "head_dim",
    "groups",
    "chunk_size",
    "dt_rank",
    "conv_bias",
    "proj_bias",
    "time_step_min",
    "dt_clamp",
];
pub(crate) const SHARED_KEYS: &[&str] = &[
    "blocks",
    "every",
    "offset",
    "layers",
    "assignment",
    "concat_embeddings",
    "heads",
    "kv_heads",
    "head_dim",
    "rope",
    "rope_theta",
    "rope_scaling",
    "attention_adapter_rank",
    "mlp_adapter_rank",
    "intermediate_size",
    "activation",
];

pub(crate) const DTYPES: &[(&str, DType)] = &[
    ("bf16", DType::Bf16),
    ("f32", DType::F32),
    ("f16", DType::F16),
];
pub(crate) const ACTIVATIONS: &[(&str, Activation)] = &[
    ("gelu", Activation::Gelu),
    ("gelu-tanh", Activation::GeluTanh),
    ("silu", Activation::Silu),
];
pub(crate) const DT_CLAMPS: &[(&str, DtClamp)] = &[
    ("hf5", DtClamp::Hf5),
    ("always", DtClamp::Always),
    ("none", DtClamp::None),
];

/// Every key of the format, dotted (`mamba.d_state`), in documentation order.
pub(crate) fn all_keys() -> Vec<String> {
    let tables = [
        ("model", MODEL_KEYS),
        ("mamba", MAMBA_KEYS),
        ("shared", SHARED_KEYS),
    ];
    tables
        .iter()
        .flat_map(|(t, keys)| keys.iter().map(move |k| format!("{t}.{k}")))
        .collect()
}

/// Reads a parsed description; `default_name` names the model when `model.name` is absent.
pub(crate) fn read(cx: &mut Cx, root: &Table, default_name: &str) -> Option<Draft> {
    let all = all_keys();
    let others = |table: &str| -> Vec<&str> {
        all.iter()
            .map(String::as_str)
            .filter(|k| !k.starts_with(&format!("{table}.")))
            .collect()
    };
    let top = Fields::new(root, "", 0..0);
    top.reject_unknown(
        cx,
        "the description (tables [model], [mamba], [shared])",
        TABLES,
        &others(""),
    );

    let model = required_table(cx, &top, "model").and_then(|(t, span)| {
        let f = Fields::new(t, "model.", span);
        f.reject_unknown(cx, "[model]", MODEL_KEYS, &others("model"));
        read_model(cx, &f, default_name)
    });
    let hidden = model.as_ref().map(|m| m.hidden_size.value);
    let mamba = required_table(cx, &top, "mamba").and_then(|(t, span)| {
        let f = Fields::new(t, "mamba.", span);
        f.reject_unknown(cx, "[mamba]", MAMBA_KEYS, &others("mamba"));
        read_mamba(cx, &f, hidden)
    });
    let shared = required_table(cx, &top, "shared").and_then(|(t, span)| {
        let f = Fields::new(t, "shared.", span);
        f.reject_unknown(cx, "[shared]", SHARED_KEYS, &others("shared"));
        read_shared(
            cx,
            &f,
            model.as_ref().map(|m| (m.num_layers, m.hidden_size.value)),
        )
    });
    let (model, (family, mamba), (layers, shared)) = (model?, mamba?, shared?);
    Some(Draft {
        name: model.name,
        family,
        vocab_size: model.vocab_size,
        hidden_size: model.hidden_size,
        layers,
        norm_eps: model.norm_eps,
        tie_embeddings: model.tie_embeddings,
        dtype: model.dtype,
        mamba,
        shared,
        unused_block_is_error: true,
    })
}

fn required_table<'t>(cx: &mut Cx, top: &Fields<'t>, name: &str) -> Option<(&'t Table, Span)> {
    if top.node(name).is_none() {
        cx.error(
            0..0,
            name,
            format!("a [{name}] table"),
            "nothing (the table is missing)",
        );
        return None;
    }
    top.table(cx, name)
}

struct ModelPart {
    name: String,
    vocab_size: usize,
    hidden_size: At<usize>,
    num_layers: usize,
    norm_eps: f64,
    tie_embeddings: bool,
    dtype: DType,
}

fn read_model(cx: &mut Cx, f: &Fields<'_>, default_name: &str) -> Option<ModelPart> {
    let name = match f.str(cx, "name") {
        Some(n) if n.value.trim().is_empty() => {
            cx.error(n.span, n.key, "a non-empty name", "an empty string");
            None
        }
        Some(n) => Some(n.value),
        None if f.node("name").is_some() => None,
        None => Some(default_name.to_string()),
    };
    let vocab_size = required(
        cx,
        f,
        "vocab_size",
        "the vocabulary size (a positive integer)",
        Fields::pos_int,
    );
    let hidden_size = required(
        cx,
        f,
        "hidden_size",
        "the residual width H (a positive integer)",
        Fields::pos_int,
    );
    let num_layers = required(
        cx,
        f,
        "num_layers",
        "the number of layers (a positive integer)",
        Fields::pos_int,
    )
    .and_then(|n| at_most(cx, n, MAX_LAYERS, "layers"));
    let norm_eps = f.pos_float(cx, "norm_eps").map_or(1e-5, |v| v.value);
    let tie_embeddings = f.bool(cx, "tie_embeddings").is_none_or(|v| v.value);
    let dtype = f
        .choice(cx, "dtype", DTYPES)
        .map_or(DType::Bf16, |v| v.value);
    Some(ModelPart {
        name: name?,
        vocab_size: vocab_size?.value,
        hidden_size: hidden_size?,
        num_layers: num_layers?,
        norm_eps,
        tie_embeddings,
        dtype,
    })
}

/// A required key: "missing" if absent, the getter's own error if malformed.
fn required<'t, T>(
    cx: &mut Cx,
    f: &Fields<'t>,
    name: &str,
    expected: &str,
    get: impl FnOnce(&Fields<'t>, &mut Cx, &str) -> Option<T>,
) -> Option<T> {
    if f.node(name).is_none() {
        f.missing(cx, name, expected);
        return None;
    }
    get(f, cx, name)
}

fn at_most(cx: &mut Cx, v: At<usize>, max: usize, what: &str) -> Option<usize> {
    if v.value <= max {
        return Some(v.value);
    }
    cx.error(
        v.span,
        v.key,
        format!("at most {max} {what}"),
        v.value.to_string(),
    );
    None
}

fn read_mamba(cx: &mut Cx, f: &Fields<'_>, hidden: Option<usize>) -> Option<(Family, MambaDraft)> {
    let version = required(
        cx,
        f,
        "version",
        "1 (Zamba v1, Mamba1) or 2 (Zamba2, Mamba2)",
        Fields::int,
    );
    let family = match version.as_ref().map(|v| v.value) {
        Some(1) => Family::Zamba,
        Some(2) => Family::Zamba2,
        Some(other) => {
            let v = version.clone()?;
            cx.error(
                v.span,
                v.key,
                "1 (Zamba v1, Mamba1) or 2 (Zamba2, Mamba2)",
                other.to_string(),
            );
            return None;
        }
        None => return None,
    };
    let v2 = family == Family::Zamba2;
    let version = version?;
    for (key, needs_v2) in [("groups", true), ("chunk_size", true), ("dt_rank", false)] {
        if f.node(key).is_some() && needs_v2 != v2 {
            let node = f.node(key)?;
            cx.error(
                node.span.clone(),
                f.key(key),
                format!(
                    "no `{key}`: it applies only to `mamba.version = {}`",
                    if needs_v2 { 2 } else { 1 }
                ),
                format!("`{key}` with mamba.version = {}", version.value),
            );
        }
    }
    let d_state = f
        .pos_int(cx, "d_state")
        .map_or(if v2 { 64 } else { 16 }, |v| v.value);
    let d_conv = f.pos_int(cx, "d_conv").map_or(4, |v| v.value);
    let expand = f.pos_int(cx, "expand").map_or(2, |v| v.value);
    let groups = if v2 { f.pos_int(cx, "groups") } else { None }
        .unwrap_or_else(|| f.default_at("groups", 1));
    let chunk_size = if v2 {
        f.pos_int(cx, "chunk_size").map_or(256, |v| v.value)
    } else {
        256
    };
    let dt_rank = if v2 {
        Some(0)
    } else {
        read_dt_rank(cx, f, hidden)
    };
    let conv_bias = f.bool(cx, "conv_bias").is_none_or(|v| v.value);
    if v2 && !conv_bias {
        let node = f.node("conv_bias")?;
        cx.error(node.span.clone(), f.key("conv_bias"), "`true` for a Mamba2 model", "`false`").note =
            Some("Zamba2's conv1d always has a bias (Hugging Face builds it whatever `use_conv_bias` says)".into());
    }
    let proj_bias = f.bool(cx, "proj_bias").is_some_and(|v| v.value);
    let time_step_min = f.pos_float(cx, "time_step_min").map_or(0.001, |v| v.value);
    let default_clamp = if v2 { DtClamp::Hf5 } else { DtClamp::None };
    let dt_clamp = f
        .choice(cx, "dt_clamp", DT_CLAMPS)
        .map_or(default_clamp, |v| v.value);
    let heads = read_mamba_heads(cx, f, hidden.map(|h| h * expand));
    Some((
        family,
        MambaDraft {
            d_state,
            d_conv,
            expand,
            heads: heads?,
            groups,
            chunk_size,
            dt_rank: dt_rank?,
            conv_bias,
            proj_bias,
            time_step_min,
            dt_clamp,
        },
    ))
}

/// `dt_rank`: an integer or `"auto"` (= ⌈hidden/16⌉, the Mamba1 default).
fn read_dt_rank(cx: &mut Cx, f: &Fields<'_>, hidden: Option<usize>) -> Option<usize> {
    let auto = || hidden.map(|h| h.div_ceil(16));
    match f.node("dt_rank").map(|n| &n.val) {
        None => auto(),
        Some(Val::Str(s)) if s == "auto" => auto(),
        Some(Val::Int(_)) => f.pos_int(cx, "dt_rank").map(|v| v.value),
        Some(_) => {
            let node = f.node("dt_rank")?;
            let found = cx.describe(node);
            cx.error(
                node.span.clone(),
                f.key("dt_rank"),
                "a positive integer or \"auto\"",
                found,
            );
            None
        }
    }
}

/// SSM heads from `heads`, `head_dim` or both (then they must agree).
fn read_mamba_heads(cx: &mut Cx, f: &Fields<'_>, d_inner: Option<usize>) -> Option<At<usize>> {
    let heads = f.pos_int(cx, "heads");
    let head_dim = f.pos_int(cx, "head_dim");
    if !f.present("heads") && !f.present("head_dim") {
        f.missing(cx, "heads", "the number of SSM heads (or `head_dim`)");
        return None;
    }
    let d_inner = d_inner?;
    match (heads, head_dim) {
        (Some(h), Some(p)) if h.value * p.value != d_inner => {
            let expected = if d_inner % h.value == 0 {
                format!(
                    "d_inner / heads = {d_inner} / {} = {}",
                    h.value,
                    d_inner / h.value
                )
            } else {
                format!("a head dim with heads · head_dim = d_inner = {d_inner}")
            };
            cx.error(p.span, p.key, expected, p.value.to_string());
            None
        }
        (Some(h), _) => Some(h),
        (None, Some(p)) if d_inner % p.value != 0 => {
            cx.error(
                p.span,
                p.key,
                format!("a divisor of d_inner = {d_inner}"),
                p.value.to_string(),
            );
            None
        }
        (None, Some(p)) => Some(p.map(|p| d_inner / p)),
        (None, None) => None,
    }
}

/// With no shared block there is nothing to schedule: every schedule key is an error.
fn no_schedule(cx: &mut Cx, f: &Fields<'_>) -> Option<Vec<usize>> {
    let mut ok = true;
    for key in ["every", "offset", "layers", "assignment"] {
        if let Some(node) = f.node(key) {
            cx.error(
                node.span.clone(),
                f.key(key),
                "no hybrid-layer schedule with `blocks = 0` (a model without shared blocks)",
                format!("`{key}`"),
            );
            ok = false;
        }
    }
    ok.then(Vec::new)
}

/// The schedule and the shared block(s). `model` is `(num_layers, hidden_size)`.
fn read_shared(
    cx: &mut Cx,
    f: &Fields<'_>,
    model: Option<(usize, usize)>,
) -> Option<(Vec<LayerKind>, SharedDraft)> {
    let num_blocks = f
        .nonneg_int(cx, "blocks")
        .unwrap_or_else(|| f.default_at("blocks", 1));
    // `blocks = 0`: no shared block, so no hybrid layer — a pure Mamba stack.
    let hybrids = if num_blocks.value == 0 {
        no_schedule(cx, f)
    } else {
        read_schedule(cx, f, model.map(|m| m.0))
    };
    let assignment = hybrids
        .as_ref()
        .and_then(|h| read_assignment(cx, f, h.len(), num_blocks.value));
    let concat_embeddings = f.bool(cx, "concat_embeddings").is_none_or(|v| v.value);
    let heads = f.pos_int(cx, "heads");
    if let (Some(h), None) = (&hybrids, &heads)
        && !h.is_empty()
        && f.node("heads").is_none()
    {
        f.missing(
            cx,
            "heads",
            "the number of attention heads (required when there are hybrid layers)",
        );
    }
    let kv_heads = f.pos_int(cx, "kv_heads");
    let head_dim = f.pos_int(cx, "head_dim");
    let rope = f.bool(cx, "rope").is_some_and(|v| v.value);
    let theta = f.pos_float(cx, "rope_theta");
    if let (false, Some(t)) = (rope, &theta) {
        cx.error(
            t.span.clone(),
            t.key.clone(),
            "no `rope_theta` unless `rope = true`",
            format!("rope_theta = {}", t.value),
        );
    }
    let rope_theta = rope.then(|| theta.map_or(10000.0, |t| t.value));
    let rope_scaling = rope_scaling(cx, f, rope);
    let attn_adapter_rank = f
        .nonneg_int(cx, "attention_adapter_rank")
        .unwrap_or_else(|| f.default_at("attention_adapter_rank", 0));
    let mlp_adapter_rank = f
        .nonneg_int(cx, "mlp_adapter_rank")
        .unwrap_or_else(|| f.default_at("mlp_adapter_rank", 0));
    let intermediate_size = f.pos_int(cx, "intermediate_size").map(|v| v.value);
    let activation = f
        .choice(cx, "activation", ACTIVATIONS)
        .map_or(Activation::Gelu, |v| v.value);

    let (num_layers, hidden) = model?;
    let hybrids = hybrids?;
    let mut layers = vec![LayerKind::Mamba; num_layers];
    for &l in &hybrids {
        if let Some(k) = layers.get_mut(l) {
            *k = LayerKind::Hybrid;
        }
    }
    let heads = if hybrids.is_empty() {
        heads
    } else {
        Some(heads?)
    };
    Some((
        layers,
        SharedDraft {
            num_blocks,
            invocation_blocks: assignment?,
            concat_embeddings,
            heads,
            kv_heads,
            head_dim,
            rope_theta,
            rope_scaling: rope_scaling?,
            attn_adapter_rank,
            mlp_adapter_rank,
            intermediate_size: intermediate_size.unwrap_or(4 * hidden),
            activation,
        },
    ))
}

/// `[shared.rope_scaling]`: a table with `type` (`linear`, `dynamic`, `yarn`, `longrope`,
/// `llama3`; `default` is plain RoPE) and that type's keys, named as in transformers'
/// `rope_parameters`. Outer `None`: errors recorded.
fn rope_scaling(
    cx: &mut Cx,
    f: &Fields<'_>,
    rope: bool,
) -> Option<Option<At<zambac_engine::RopeScaling>>> {
    let Some(node) = f.node("rope_scaling") else {
        return Some(None);
    };
    if !rope {
        let found = cx.describe(node);
        cx.error(
            node.span.clone(),
            f.key("rope_scaling"),
            "no `rope_scaling` unless `rope = true`",
            found,
        );
        return None;
    }
    let (table, span) = f.table(cx, "rope_scaling")?;
    let fields = Fields::new(table, format!("{}.", f.key("rope_scaling")), span);
    let mut known = vec!["type"];
    known.extend(crate::rope::KEYS);
    fields.reject_unknown(cx, "[shared.rope_scaling]", &known, &[]);
    let Some(kind) = fields.str(cx, "type") else {
        if !fields.present("type") {
            fields.missing(cx, "type", &crate::reader::one_of(crate::rope::TYPES));
        }
        return None;
    };
    crate::rope::read(cx, &fields, &kind, None)
}
