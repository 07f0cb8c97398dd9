//! The last stage common to both formats: a [`Draft`] (every value read, defaults filled
//! in, each value remembering its key and span) is cross-checked and becomes a
//! [`ModelSpec`]. Format-specific rules (TOML's `every`/`layers`, HF's derived keys) live
//! in the readers; the rules that hold for every Zamba model live here, once.

use crate::reader::{At, Cx};
use crate::spec::*;

/// Everything a reader found, before the cross-field checks.
#[derive(Clone, Debug)]
pub(crate) struct Draft {
    pub name: String,
    pub family: Family,
    pub vocab_size: usize,
    /// Also where a model too large to represent is reported.
    pub hidden_size: At<usize>,
    pub layers: Vec<LayerKind>,
    pub norm_eps: f64,
    pub tie_embeddings: bool,
    pub dtype: DType,
    pub mamba: MambaDraft,
    pub shared: SharedDraft,
    /// A declared block that no invocation uses is an error in a zambac description (a
    /// mistake), but only a warning for an HF config (HF builds such a model).
    pub unused_block_is_error: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct MambaDraft {
    pub d_state: usize,
    pub d_conv: usize,
    pub expand: usize,
    /// Must divide `expand · hidden_size`.
    pub heads: At<usize>,
    /// Mamba2: must divide `heads`. Mamba1: 1.
    pub groups: At<usize>,
    pub chunk_size: usize,
    pub dt_rank: usize,
    pub conv_bias: bool,
    pub proj_bias: bool,
    pub time_step_min: f64,
    pub dt_clamp: DtClamp,
}

#[derive(Clone, Debug)]
pub(crate) struct SharedDraft {
    pub num_blocks: At<usize>,
    /// Block of each invocation; the reader guarantees one entry per hybrid layer, each
    /// below `num_blocks`.
    pub invocation_blocks: Vec<usize>,
    pub concat_embeddings: bool,
    /// `None` only when the model has no hybrid layer (the reader checks that).
    pub heads: Option<At<usize>>,
    /// Defaults to `heads`.
    pub kv_heads: Option<At<usize>>,
    /// Defaults to `block input width / heads`.
    pub head_dim: Option<At<usize>>,
    pub rope_theta: Option<f64>,
    /// Only with `rope_theta` (the readers check that).
    pub rope_scaling: Option<At<zambac_engine::RopeScaling>>,
    pub attn_adapter_rank: At<usize>,
    pub mlp_adapter_rank: At<usize>,
    pub intermediate_size: usize,
    pub activation: Activation,
}

/// Checks what holds for every Zamba model and builds the spec; `None` after recording
/// the errors in `cx`.
pub(crate) fn resolve(cx: &mut Cx, d: Draft) -> Option<ModelSpec> {
    let errors_before = cx.has_errors();
    let mamba = resolve_mamba(cx, &d);
    let shared = resolve_shared(cx, &d);
    check_blocks(cx, &d);
    if errors_before || cx.has_errors() {
        return None;
    }
    let spec = ModelSpec {
        name: d.name,
        family: d.family,
        vocab_size: d.vocab_size,
        hidden_size: d.hidden_size.value,
        layers: d.layers,
        mamba: mamba?,
        shared: shared?,
        norm_eps: d.norm_eps,
        tie_embeddings: d.tie_embeddings,
        dtype: d.dtype,
    };
    check_magnitude(cx, &d.hidden_size, &spec).then_some(spec)
}

/// At most 2^40 (≈1.1·10^12) weights, and as many recurrent-state values per sequence:
/// far beyond any real model, and small enough that later stages can count bytes and
/// FLOPs in 64-bit integers without overflow.
pub(crate) const MAX_ELEMENTS: f64 = (1u64 << 40) as f64;

/// Rejects a description too large to compile (an extra zero in a size, usually).
fn check_magnitude(cx: &mut Cx, hidden: &At<usize>, s: &ModelSpec) -> bool {
    let (weights, state) = rough_size(s);
    if weights <= MAX_ELEMENTS && state <= MAX_ELEMENTS {
        return true;
    }
    let what = if weights > MAX_ELEMENTS {
        format!("about {weights:.2e} weights")
    } else {
        format!("about {state:.2e} recurrent-state values per sequence")
    };
    cx.error(
        hidden.span.clone(),
        hidden.key.clone(),
        "a model of at most 2^40 weights and state values",
        what,
    )
    .note = Some("check the sizes for a stray digit".into());
    false
}

/// Upper estimates of the weight count and the per-sequence state size (floating point,
/// so the estimate itself cannot overflow).
fn rough_size(s: &ModelSpec) -> (f64, f64) {
    let f = |x: usize| x as f64;
    let (h, layers, m, sh) = (f(s.hidden_size), f(s.num_layers()), &s.mamba, &s.shared);
    let mamba1 = if m.version == 1 {
        f(m.d_inner) * f(2 * m.dt_rank + 3 * m.d_state + 2)
    } else {
        0.0
    };
    let layer = f(m.in_proj_rows() + m.d_inner) * h
        + f(m.conv_dim()) * f(m.d_conv + 1)
        + mamba1
        + 2.0 * f(m.d_inner);
    let (width, q, kv, ff) = (
        f(s.attn_input_width()),
        f(s.q_width()),
        f(s.kv_width()),
        f(sh.intermediate_size),
    );
    let block = width * (q + 2.0 * kv) + q * h + 3.0 * ff * h;
    let invocations = f(sh.invocation_blocks.len());
    let adapters = f(sh.attn_adapter_rank) * (3.0 * width + q + 2.0 * kv)
        + f(sh.mlp_adapter_rank) * (h + 2.0 * ff);
    let embeddings = f(s.vocab_size) * h * if s.tie_embeddings { 1.0 } else { 2.0 };
    let weights =
        embeddings + layers * layer + f(sh.num_blocks) * block + invocations * (adapters + h * h);
    let state = layers * (f(m.conv_dim()) * f(m.d_conv) + f(m.d_inner) * f(m.d_state));
    (weights, state)
}

fn resolve_mamba(cx: &mut Cx, d: &Draft) -> Option<MambaSpec> {
    let m = &d.mamba;
    let d_inner = m.expand * d.hidden_size.value;
    let heads = &m.heads;
    if !d_inner.is_multiple_of(heads.value) {
        cx.error(
            heads.span.clone(),
            heads.key.clone(),
            format!(
                "a divisor of d_inner = expand · hidden_size = {} · {} = {d_inner}",
                m.expand, d.hidden_size.value
            ),
            heads.value.to_string(),
        );
        return None;
    }
    let groups = &m.groups;
    if !heads.value.is_multiple_of(groups.value) {
        cx.error(
            groups.span.clone(),
            groups.key.clone(),
            format!("a divisor of the number of SSM heads ({})", heads.value),
            groups.value.to_string(),
        )
        .note = Some("each B/C group serves an equal, contiguous run of heads".into());
        return None;
    }
    Some(MambaSpec {
        version: d.family.mamba_version(),
        d_state: m.d_state,
        d_conv: m.d_conv,
        expand: m.expand,
        d_inner,
        n_heads: heads.value,
        head_dim: d_inner / heads.value,
        n_groups: groups.value,
        chunk_size: m.chunk_size,
        dt_rank: m.dt_rank,
        conv_bias: m.conv_bias,
        proj_bias: m.proj_bias,
        time_step_min: m.time_step_min,
        dt_clamp: m.dt_clamp,
    })
}

fn resolve_shared(cx: &mut Cx, d: &Draft) -> Option<SharedSpec> {
    let s = &d.shared;
    if d.family == Family::Zamba {
        for rank in [&s.attn_adapter_rank, &s.mlp_adapter_rank] {
            if rank.value > 0 {
                cx.error(
                    rank.span.clone(),
                    rank.key.clone(),
                    "0 for a Mamba1 (Zamba v1) model",
                    rank.value.to_string(),
                )
                .note = Some("Zamba v1 has no adapters, and no checkpoint names for them".into());
            }
        }
    }
    let Some(heads) = &s.heads else {
        // No hybrid layer: there is no attention to describe.
        return Some(SharedSpec {
            num_blocks: s.num_blocks.value,
            invocation_blocks: s.invocation_blocks.clone(),
            concat_embeddings: s.concat_embeddings,
            num_heads: 0,
            num_kv_heads: 0,
            head_dim: 0,
            rope_theta: s.rope_theta,
            rope_scaling: s.rope_scaling.as_ref().map(|r| r.value.clone()),
            attention_scale: 0.0,
            attn_adapter_rank: s.attn_adapter_rank.value,
            mlp_adapter_rank: s.mlp_adapter_rank.value,
            intermediate_size: s.intermediate_size,
            activation: s.activation,
        });
    };
    let kv_heads = s.kv_heads.clone().unwrap_or_else(|| heads.clone());
    let mut ok = true;
    if heads.value % kv_heads.value != 0 {
        cx.error(
            kv_heads.span.clone(),
            kv_heads.key.clone(),
            format!(
                "a divisor of the number of attention heads ({})",
                heads.value
            ),
            kv_heads.value.to_string(),
        );
        ok = false;
    } else if kv_heads.value != heads.value && s.attn_adapter_rank.value > 0 {
        cx.error(
            kv_heads.span.clone(),
            kv_heads.key.clone(),
            format!(
                "{} (no grouped-query attention) when attention adapters are on",
                heads.value
            ),
            kv_heads.value.to_string(),
        )
        .note = Some(format!(
            "attention adapters (`{}`) add per-invocation k/v adapters, whose shape is undefined \
             with grouped-query attention (Hugging Face cannot build such a model either)",
            s.attn_adapter_rank.key
        ));
        ok = false;
    }
    let width = if s.concat_embeddings {
        2 * d.hidden_size.value
    } else {
        d.hidden_size.value
    };
    let head_dim = match &s.head_dim {
        Some(hd) => hd.value,
        None if width % heads.value == 0 => width / heads.value,
        None => {
            cx.error(
                heads.span.clone(),
                heads.key.clone(),
                format!(
                    "a divisor of the shared block's input width {width} (or an explicit head_dim)"
                ),
                heads.value.to_string(),
            );
            return None;
        }
    };
    if let (Some(_), true) = (s.rope_theta, head_dim % 2 != 0) {
        let at = s.head_dim.clone().unwrap_or_else(|| heads.clone());
        cx.error(
            at.span,
            at.key,
            "an even attention head dim, since RoPE rotates pairs of channels",
            format!("head dim {head_dim}"),
        );
        ok = false;
    }
    if let Some(r) = &s.rope_scaling
        && let Err(e) = r.value.check(head_dim)
    {
        cx.error(
            r.span.clone(),
            r.key.clone(),
            format!(
                "a `{}` scaling that fits head dim {head_dim}",
                r.value.name()
            ),
            e,
        );
        ok = false;
    }
    ok.then(|| SharedSpec {
        num_blocks: s.num_blocks.value,
        invocation_blocks: s.invocation_blocks.clone(),
        concat_embeddings: s.concat_embeddings,
        num_heads: heads.value,
        num_kv_heads: kv_heads.value,
        head_dim,
        rope_theta: s.rope_theta,
        rope_scaling: s.rope_scaling.as_ref().map(|r| r.value.clone()),
        attention_scale: attention_scale(head_dim),
        attn_adapter_rank: s.attn_adapter_rank.value,
        mlp_adapter_rank: s.mlp_adapter_rank.value,
        intermediate_size: s.intermediate_size,
        activation: s.activation,
    })
}

/// `(hd/2)^-1/2`, the scale every Zamba model uses (spec §2.2 step 6).
pub(crate) fn attention_scale(head_dim: usize) -> f64 {
    (head_dim as f64 / 2.0).powf(-0.5)
}

/// Every declared block must serve some invocation (unless there are none at all).
fn check_blocks(cx: &mut Cx, d: &Draft) {
    let s = &d.shared;
    if s.invocation_blocks.is_empty() {
        return;
    }
    let unused: Vec<String> = (0..s.num_blocks.value)
        .filter(|b| !s.invocation_blocks.contains(b))
        .map(|b| b.to_string())
        .collect();
    if unused.is_empty() {
        return;
    }
    let found = format!(
        "{} blocks for {} invocation(s); block(s) {} never used",
        s.num_blocks.value,
        s.invocation_blocks.len(),
        unused.join(", ")
    );
    let b = &s.num_blocks;
    if d.unused_block_is_error {
        cx.error(
            b.span.clone(),
            b.key.clone(),
            "every shared block to be used by at least one hybrid layer",
            found,
        );
    } else {
        cx.warn(
            b.span.clone(),
            &b.key,
            format!("{found}; an unused block has no weights"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<T>(v: T, key: &str) -> At<T> {
        At::new(v, key, 0..1)
    }

    fn draft() -> Draft {
        Draft {
            name: "t".into(),
            family: Family::Zamba2,
            vocab_size: 16,
            hidden_size: at(8, "model.hidden_size"),
            layers: vec![LayerKind::Mamba, LayerKind::Hybrid, LayerKind::Hybrid],
            norm_eps: 1e-5,
            tie_embeddings: true,
            dtype: DType::F32,
            mamba: MambaDraft {
                d_state: 4,
                d_conv: 4,
                expand: 2,
                heads: at(4, "mamba.heads"),
                groups: at(2, "mamba.groups"),
                chunk_size: 256,
                dt_rank: 0,
                conv_bias: true,
                proj_bias: false,
                time_step_min: 0.001,
                dt_clamp: DtClamp::Hf5,
            },
            shared: SharedDraft {
                num_blocks: at(2, "shared.blocks"),
                invocation_blocks: vec![0, 1],
                concat_embeddings: true,
                heads: Some(at(4, "shared.heads")),
                kv_heads: None,
                head_dim: None,
                rope_theta: Some(10000.0),
                rope_scaling: None,
                attn_adapter_rank: at(2, "shared.attention_adapter_rank"),
                mlp_adapter_rank: at(2, "shared.mlp_adapter_rank"),
                intermediate_size: 32,
                activation: Activation::Gelu,
            },
            unused_block_is_error: true,
        }
    }

    fn errors(d: Draft) -> Vec<String> {
        let mut cx = Cx::new("t", "x");
        let spec = resolve(&mut cx, d);
        match cx.finish(spec) {
            Ok(_) => vec![],
            Err(e) => e.diagnostics().iter().map(|d| d.key.clone()).collect(),
        }
    }

    #[test]
    fn resolves_derived_sizes() {
        let mut cx = Cx::new("t", "x");
        let s = resolve(&mut cx, draft()).unwrap();
        assert_eq!(s.mamba.d_inner, 16);
        assert_eq!(s.mamba.head_dim, 4);
        assert_eq!(s.shared.head_dim, 4);
        assert_eq!(s.shared.num_kv_heads, 4);
        assert!((s.shared.attention_scale - 0.5f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn rejects_bad_divisions() {
        let mut d = draft();
        d.mamba.heads = at(3, "mamba.heads");
        assert_eq!(errors(d), ["mamba.heads"]);
        let mut d = draft();
        d.mamba.groups = at(3, "mamba.groups");
        assert_eq!(errors(d), ["mamba.groups"]);
        let mut d = draft();
        d.shared.heads = Some(at(3, "shared.heads"));
        assert_eq!(errors(d), ["shared.heads"]);
        let mut d = draft();
        d.shared.kv_heads = Some(at(3, "shared.kv_heads"));
        assert_eq!(errors(d), ["shared.kv_heads"]);
    }

    #[test]
    fn rejects_gqa_with_attention_adapters() {
        let mut d = draft();
        d.shared.kv_heads = Some(at(2, "shared.kv_heads"));
        assert_eq!(errors(d.clone()), ["shared.kv_heads"]);
        d.shared.attn_adapter_rank = at(0, "shared.attention_adapter_rank");
        assert!(errors(d).is_empty());
    }

    #[test]
    fn rejects_odd_rope_head_dim_and_v1_adapters() {
        let mut d = draft();
        d.shared.head_dim = Some(at(5, "shared.head_dim"));
        assert_eq!(errors(d), ["shared.head_dim"]);
        let mut d = draft();
        d.family = Family::Zamba;
        d.mamba.groups = at(1, "mamba.groups");
        assert_eq!(
            errors(d),
            ["shared.attention_adapter_rank", "shared.mlp_adapter_rank"]
        );
    }

    #[test]
    fn unused_block_is_error_or_warning() {
        let mut d = draft();
        d.shared.invocation_blocks = vec![0, 0];
        assert_eq!(errors(d.clone()), ["shared.blocks"]);
        d.unused_block_is_error = false;
        let mut cx = Cx::new("t", "x");
        let spec = resolve(&mut cx, d);
        let (_, warnings) = cx.finish(spec).unwrap();
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn absurd_sizes_are_rejected_before_later_stages_overflow() {
        let mut d = draft();
        d.vocab_size = 1 << 24;
        d.hidden_size = at(1 << 24, "model.hidden_size");
        assert_eq!(errors(d), ["model.hidden_size"]);
        let mut d = draft();
        d.layers = vec![LayerKind::Mamba; 100_000];
        d.shared.invocation_blocks = vec![];
        d.shared.heads = None;
        d.mamba.d_state = 1 << 24;
        assert_eq!(errors(d), ["model.hidden_size"]);
    }

    #[test]
    fn no_hybrid_layers_means_no_attention() {
        let mut d = draft();
        d.layers = vec![LayerKind::Mamba; 3];
        d.shared.invocation_blocks = vec![];
        d.shared.heads = None;
        let mut cx = Cx::new("t", "x");
        let s = resolve(&mut cx, d).unwrap();
        assert_eq!(s.shared.num_heads, 0);
        assert_eq!(s.shared.attention_scale, 0.0);
    }
}
