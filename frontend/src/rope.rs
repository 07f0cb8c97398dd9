//! RoPE scaling tables — a Hugging Face config's `rope_parameters` (or legacy
//! `rope_scaling`) and a model description's `[shared.rope_scaling]` — read into
//! [`RopeScaling`] with every default resolved as transformers 5.23 resolves it
//! (`modeling_rope_utils.py`).

use zambac_engine::RopeScaling;

use crate::reader::{At, Cx, Fields};

/// Every `rope_type` transformers' Zamba2 accepts; `default` is plain RoPE.
pub(crate) const TYPES: &[&str] = &["default", "linear", "dynamic", "yarn", "longrope", "llama3"];

/// The keys of a scaling table besides its type and θ.
pub(crate) const KEYS: &[&str] = &[
    "factor",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
    "short_factor",
    "long_factor",
    "low_freq_factor",
    "high_freq_factor",
    "partial_rotary_factor",
];

/// The scaling of table `f`, whose `rope_type` is `kind`: `Some(None)` for plain RoPE,
/// `None` after recording errors. `context` is the model's trained context
/// (`max_position_embeddings` of the config) that `dynamic`, and `yarn` and `longrope`
/// without a `factor`, take; a description gives it in the table instead.
pub(crate) fn read(
    cx: &mut Cx,
    f: &Fields<'_>,
    kind: &At<String>,
    context: Option<At<usize>>,
) -> Option<Option<At<RopeScaling>>> {
    if !TYPES.contains(&kind.value.as_str()) {
        cx.error(
            kind.span.clone(),
            kind.key.clone(),
            crate::reader::one_of(TYPES),
            format!("\"{}\"", kind.value),
        );
        return None;
    }
    if f.given("partial_rotary_factor") {
        let p = f.pos_float(cx, "partial_rotary_factor")?;
        if p.value != 1.0 {
            cx.error(
                p.span,
                p.key,
                "1.0 (Zamba2 rotates whole heads)",
                p.value.to_string(),
            );
            return None;
        }
    }
    let context = if f.given("max_position_embeddings") {
        Some(f.pos_int(cx, "max_position_embeddings")?)
    } else {
        context
    };
    let opt = |cx: &mut Cx, name: &str| -> Option<Option<f64>> {
        if f.given(name) {
            Some(Some(f.pos_float(cx, name)?.value))
        } else {
            Some(None)
        }
    };
    let need = |cx: &mut Cx, name: &str| -> Option<f64> {
        if !f.given(name) {
            f.missing(
                cx,
                name,
                &format!("a positive number (`{}` scaling)", kind.value),
            );
            return None;
        }
        Some(f.pos_float(cx, name)?.value)
    };
    let need_int = |cx: &mut Cx, name: &str| -> Option<u64> {
        if !f.given(name) {
            f.missing(
                cx,
                name,
                &format!("a positive integer (`{}` scaling)", kind.value),
            );
            return None;
        }
        Some(f.pos_int(cx, name)?.value as u64)
    };
    let trained = |cx: &mut Cx| -> Option<u64> {
        match &context {
            Some(c) => Some(c.value as u64),
            None => {
                f.missing(
                    cx,
                    "max_position_embeddings",
                    &format!(
                        "the trained context (`{}` scaling takes it from the model's `max_position_embeddings`)",
                        kind.value
                    ),
                );
                None
            }
        }
    };
    let scaling = match kind.value.as_str() {
        "default" => return Some(None),
        "linear" => RopeScaling::Linear {
            factor: need(cx, "factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need(cx, "factor")?,
            max_position_embeddings: trained(cx)?,
        },
        "yarn" => {
            let original = need_int(cx, "original_max_position_embeddings")?;
            let factor = match opt(cx, "factor")? {
                Some(v) => v,
                None => trained(cx)? as f64 / original as f64,
            };
            let attention_factor = match opt(cx, "attention_factor")? {
                Some(v) => v,
                None => match (opt(cx, "mscale")?, opt(cx, "mscale_all_dim")?) {
                    (Some(m), Some(all)) => mscale(factor, m) / mscale(factor, all),
                    _ => mscale(factor, 1.0),
                },
            };
            let truncate = if f.given("truncate") {
                f.bool(cx, "truncate")?.value
            } else {
                true
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                beta_fast: opt(cx, "beta_fast")?.unwrap_or(32.0),
                beta_slow: opt(cx, "beta_slow")?.unwrap_or(1.0),
                truncate,
            }
        }
        "longrope" => {
            let original = need_int(cx, "original_max_position_embeddings")?;
            let lists = ["short_factor", "long_factor"].map(|name| {
                if f.given(name) {
                    f.pos_float_list(cx, name).map(|l| l.value)
                } else {
                    f.missing(cx, name, "one positive factor per rotated pair");
                    None
                }
            });
            let [Some(short_factor), Some(long_factor)] = lists else {
                return None;
            };
            // The factor only sets the attention factor's default.
            let attention_factor = match opt(cx, "attention_factor")? {
                Some(v) => v,
                None => {
                    let factor = match opt(cx, "factor")? {
                        Some(v) => v,
                        None => trained(cx)? as f64 / original as f64,
                    };
                    if factor <= 1.0 {
                        1.0
                    } else {
                        (1.0 + factor.ln() / (original as f64).ln()).sqrt()
                    }
                }
            };
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        _ => RopeScaling::Llama3 {
            factor: need(cx, "factor")?,
            low_freq_factor: need(cx, "low_freq_factor")?,
            high_freq_factor: need(cx, "high_freq_factor")?,
            original_max_position_embeddings: need_int(cx, "original_max_position_embeddings")?,
        },
    };
    // Later checks (against the head dim) name the table.
    let table = kind
        .key
        .rsplit_once('.')
        .map_or(kind.key.as_str(), |(t, _)| t);
    Some(Some(At::new(scaling, table, f.span())))
}

/// YaRN's magnitude correction `0.1·m·ln(s) + 1` (1 for `s ≤ 1`).
fn mscale(scale: f64, m: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}
