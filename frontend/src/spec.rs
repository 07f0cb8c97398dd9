//! `ModelSpec`: the resolved, validated description of one Zamba-family model.
//!
//! Both input formats (zambac TOML and Hugging Face `config.json`) end here. Every
//! derived quantity (d_inner, head dims, hybrid layer ids, block of each invocation) is
//! computed once by the frontend, so later stages never re-derive or re-validate it.
//! The struct is serialisable because engines record it in their manifest.

use serde::{Deserialize, Serialize};

/// Element type of weights (and of a model's nominal compute type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }

    /// The name used in TOML, the IR text and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }

    /// Parses the names accepted by TOML descriptions and the CLI (HF spellings included).
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" | "float32" | "fp32" => Some(DType::F32),
            "bf16" | "bfloat16" => Some(DType::Bf16),
            "f16" | "float16" | "fp16" => Some(DType::F16),
            _ => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which Zamba family a model belongs to. It fixes the checkpoint tensor names (spec §4)
/// and the family-specific details of the shared block (fused `gate_up_proj` in Zamba2,
/// separate `gate_proj`/`up_proj` in Zamba v1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Zamba v1 (`model_type = "zamba"`): multi-head Mamba1 backbone, block prefix `shared_transf`.
    Zamba,
    /// Zamba2 (`model_type = "zamba2"`): Mamba2 backbone, block prefix `shared_transformer`.
    Zamba2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Zamba => "zamba",
            Family::Zamba2 => "zamba2",
        }
    }

    /// Mamba version of the family's backbone.
    pub fn mamba_version(self) -> u32 {
        match self {
            Family::Zamba => 1,
            Family::Zamba2 => 2,
        }
    }
}

/// What a layer of the schedule holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// A plain Mamba layer: `h + Mixer(RMSNorm(h))`.
    Mamba,
    /// A shared-block invocation followed by the layer's own Mamba mixer:
    /// `h + Mixer(RMSNorm(h + Linear(Shared(h, emb))))`.
    Hybrid,
}

/// When the Δ ≥ `time_step_min` clamp applies (spec §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtClamp {
    /// Never clamp (VLLM, Zyphra's code, HF's CUDA-kernel path before 5.15).
    None,
    /// Clamp in prefill and decode (HF 4.49–5.14 torch path).
    Always,
    /// Clamp in the chunked (prefill) path only, not in the one-token step (HF ≥ 5.15.1).
    Hf5,
}

impl DtClamp {
    pub fn name(self) -> &'static str {
        match self {
            DtClamp::None => "none",
            DtClamp::Always => "always",
            DtClamp::Hf5 => "hf5",
        }
    }

    /// Whether the clamp applies in the multi-token (prefill) path.
    pub fn in_prefill(self) -> bool {
        !matches!(self, DtClamp::None)
    }

    /// Whether the clamp applies in the one-token recurrent (decode) step.
    pub fn in_decode(self) -> bool {
        matches!(self, DtClamp::Always)
    }
}

/// Activation of the shared MLP's gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// Exact erf GELU (`hidden_act = "gelu"`), the only one the released models use.
    Gelu,
    /// tanh-approximated GELU (`gelu_pytorch_tanh`).
    GeluTanh,
    /// SiLU / swish.
    Silu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu-tanh",
            Activation::Silu => "silu",
        }
    }
}

/// The Mamba mixer of every layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MambaSpec {
    /// 1 (Zamba v1's multi-head Mamba1) or 2 (Mamba2 / SSD).
    pub version: u32,
    /// SSM state size `N`.
    pub d_state: usize,
    /// Causal conv kernel width `K`.
    pub d_conv: usize,
    /// `d_inner = expand · hidden_size`.
    pub expand: usize,
    /// Derived: `expand · hidden_size`.
    pub d_inner: usize,
    /// SSM heads (`n_mamba_heads`). Mamba1: independent channel groups, each with its own
    /// x_proj / dt_proj / A / D.
    pub n_heads: usize,
    /// Derived: `d_inner / n_heads` (Mamba2 `P`; Mamba1 channels per head).
    pub head_dim: usize,
    /// Mamba2: B/C groups `G` (heads `h` uses group `h / (n_heads / G)`). Mamba1: 1.
    pub n_groups: usize,
    /// Mamba2: chunk length of the chunked SSD prefill (no mathematical effect).
    pub chunk_size: usize,
    /// Mamba1: rank `R` of the Δ projection. Mamba2: 0.
    pub dt_rank: usize,
    /// Bias on the depthwise conv (always true for Zamba2, where HF ignores the flag).
    pub conv_bias: bool,
    /// Bias on `in_proj` / `out_proj` (Zamba2 `add_bias_linear` also biases the MLP).
    pub proj_bias: bool,
    /// Lower clamp on Δ (see [`DtClamp`]).
    pub time_step_min: f64,
    /// When the clamp applies.
    pub dt_clamp: DtClamp,
}

impl MambaSpec {
    /// Channels of the depthwise conv: Mamba2 `d_inner + 2·G·N` (x, B, C); Mamba1 `d_inner`.
    pub fn conv_dim(&self) -> usize {
        if self.version == 2 {
            self.d_inner + 2 * self.n_groups * self.d_state
        } else {
            self.d_inner
        }
    }

    /// Rows of `in_proj`: Mamba2 `d_inner + conv_dim + n_heads` (z, xBC, dt); Mamba1 `2·d_inner`.
    pub fn in_proj_rows(&self) -> usize {
        if self.version == 2 {
            self.d_inner + self.conv_dim() + self.n_heads
        } else {
            2 * self.d_inner
        }
    }
}

/// The shared attention + MLP block(s) and where they are invoked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharedSpec {
    /// Number of distinct shared blocks (`num_mem_blocks`).
    pub num_blocks: usize,
    /// Block used by invocation `i` (the i-th hybrid layer in depth order).
    /// Round-robin `i mod num_blocks` for every released model.
    pub invocation_blocks: Vec<usize>,
    /// Feed `concat(h, emb)` (width 2H) to the block; otherwise `h` alone (width H).
    pub concat_embeddings: bool,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Attention head dim `hd` (Zamba2: `attn_input_width / num_heads`).
    pub head_dim: usize,
    /// RoPE base θ when rotary embeddings are on (Zamba2 `use_mem_rope`).
    pub rope_theta: Option<f64>,
    /// Long-context scaling of RoPE's frequencies (`rope_parameters.rope_type` other than
    /// `default`); only with `rope_theta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<zambac_engine::RopeScaling>,
    /// Softmax scale. Every Zamba model uses `(hd/2)^-1/2` (spec §2.2 step 6).
    pub attention_scale: f64,
    /// Rank of the per-invocation q/k/v adapters (0 = none).
    pub attn_adapter_rank: usize,
    /// Rank of the per-invocation MLP (gate_up) adapters (0 = none).
    pub mlp_adapter_rank: usize,
    /// MLP width `F`.
    pub intermediate_size: usize,
    pub activation: Activation,
}

/// A fully resolved model description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Short name, used for default engine names and IR module names.
    pub name: String,
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// One entry per layer; its length is the layer count.
    pub layers: Vec<LayerKind>,
    pub mamba: MambaSpec,
    pub shared: SharedSpec,
    /// ε of every RMSNorm except the Mamba2 gated norm (hard-coded 1e-5, spec §6.2).
    pub norm_eps: f64,
    /// lm_head = embed_tokens.
    pub tie_embeddings: bool,
    /// Weight dtype of the model (the checkpoint's, or the description's `dtype`).
    pub dtype: DType,
}

impl ModelSpec {
    /// The RoPE θ rescale that transformers 4.49–4.57 applied when a Zamba2 config had
    /// `use_long_context: true` (spec §1.1): θ ← θ · 8^(hd/(hd−2)). transformers 5 no longer
    /// does it, and neither does zambac unless asked: a checkpoint tuned under 4.x with that
    /// flag ran with the rescaled θ.
    pub fn rescale_theta_as_hf4_long_context(&mut self) -> Result<(), String> {
        let hd = self.shared.head_dim as f64;
        match self.shared.rope_theta.as_mut() {
            Some(theta) if hd > 2.0 => {
                *theta *= 8f64.powf(hd / (hd - 2.0));
                Ok(())
            }
            Some(_) => Err(format!(
                "the long-context θ rescale needs an attention head dim above 2, found {hd}"
            )),
            None => Err("the long-context θ rescale needs RoPE (`shared.rope = true`)".into()),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Indices of the hybrid layers in depth order; position in this list = invocation ordinal.
    pub fn hybrid_layer_ids(&self) -> Vec<usize> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == LayerKind::Hybrid)
            .map(|(i, _)| i)
            .collect()
    }

    /// Input width of the shared block: 2H with concatenated embeddings, else H.
    pub fn attn_input_width(&self) -> usize {
        if self.shared.concat_embeddings {
            2 * self.hidden_size
        } else {
            self.hidden_size
        }
    }

    /// Width of q (and of the attention output before o_proj): `num_heads · head_dim`.
    pub fn q_width(&self) -> usize {
        self.shared.num_heads * self.shared.head_dim
    }

    /// Width of k and v: `num_kv_heads · head_dim`.
    pub fn kv_width(&self) -> usize {
        self.shared.num_kv_heads * self.shared.head_dim
    }
}
