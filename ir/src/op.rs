//! Op kinds and their attributes.
//!
//! An [`OpKind`] carries attributes only (dims, eps, heads, …); operands are the graph's
//! edges, so generic code (DCE, printing, use lists) never matches every kind. Each kind
//! converts to and from an ordered attribute list, which is the single definition the
//! printer and the parser share.

use crate::graph::ParamId;
use crate::types::Dim;
use zambac_engine::rope::{Rope, RopeScaling};

/// Pointwise nonlinearities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    Silu,
    /// Exact erf GELU.
    Gelu,
    /// tanh-approximated GELU.
    GeluTanh,
    /// `log(1 + eˣ)`, `x` itself above 20 (torch's threshold).
    Softplus,
}

impl Act {
    pub fn name(self) -> &'static str {
        match self {
            Act::Silu => "silu",
            Act::Gelu => "gelu",
            Act::GeluTanh => "gelu_tanh",
            Act::Softplus => "softplus",
        }
    }

    pub fn parse(s: &str) -> Option<Act> {
        [Act::Silu, Act::Gelu, Act::GeluTanh, Act::Softplus]
            .into_iter()
            .find(|a| a.name() == s)
    }
}

/// Rotary embedding parameters (NeoX rotate-half over the whole head).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeAttrs {
    pub heads: usize,
    pub head_dim: usize,
    pub theta: f64,
    /// Long-context scaling of the frequencies; `None` is plain RoPE.
    pub scaling: Option<RopeScaling>,
}

impl RopeAttrs {
    /// The frequencies' definition.
    pub fn rope(&self) -> Rope<'_> {
        Rope {
            theta: self.theta,
            head_dim: self.head_dim,
            scaling: self.scaling.as_ref(),
        }
    }
}

/// What a fused linear does to its product before writing it.
#[derive(Clone, Debug, PartialEq)]
pub enum Epilogue {
    None,
    /// `act(y)`.
    Act(Act),
    /// `act(y[:, :N/2]) ⊙ y[:, N/2:]` (the gated MLP): the output has half the columns.
    ActGate(Act),
    /// `y ⊙ m` with an extra operand `m`.
    Mul,
    /// RoPE on `y` (q or k projections); an optional extra operand is the start position.
    Rope(RopeAttrs),
}

/// Attributes of [`OpKind::Linear`]: `y = x·Wᵀ (+ b) (+ (x·Aᵀ)·Bᵀ)`, then the epilogue.
///
/// Operand order: `x, W, [b], [A, B], [Y, r], [epilogue operand]`; ask
/// [`LinearAttrs::operands`] where each one sits.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearAttrs {
    pub bias: bool,
    /// A low-rank adapter fused in: the down-projection `A` shares the pass over `x` with
    /// `W` (one product over the row-concatenation `[W; A]`), the up-projection `B` is
    /// applied in the epilogue.
    pub lora: bool,
    /// The product `x·Wᵀ` covers only these columns of `W` (and of `x`, when `x` is as
    /// wide as `W`; otherwise `x` is as wide as the window). The adapter still reads all
    /// of `x`.
    pub window: Option<Window>,
    /// A hoisted term is added: operands `Y [rows, N]` and `r [rows]` give `+ r ⊙ Y`
    /// (each row of `Y` scaled by its `r`), before the bias and the epilogue.
    pub hoisted: bool,
    pub epilogue: Epilogue,
}

impl LinearAttrs {
    pub const PLAIN: LinearAttrs = LinearAttrs {
        bias: false,
        lora: false,
        window: None,
        hoisted: false,
        epilogue: Epilogue::None,
    };
}

/// Columns `[start, start + len)` of a linear's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub start: usize,
    pub len: usize,
}

/// Shape parameters of the Mamba2 SSD recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SsdAttrs {
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
}

/// Shape parameters of the multi-head Mamba1 selective scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScanAttrs {
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    pub state: usize,
}

/// Attributes of the fused Mamba2 mixer (everything between `in_proj` and `out_proj`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mamba2Attrs {
    pub ssd: SsdAttrs,
    pub conv: usize,
    /// Chunk length of the chunked prefill (no mathematical effect).
    pub chunk: usize,
    /// Lower clamp on Δ, when this path applies one.
    pub dt_min: Option<f64>,
    /// ε of the gated group RMSNorm.
    pub norm_eps: f64,
}

/// Attributes of the fused Mamba1 mixer (everything between `in_proj` and `out_proj`).
/// `conv_bias` adds an operand; [`Mamba1Attrs::operands`] says where each one sits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mamba1Attrs {
    pub scan: ScanAttrs,
    pub conv: usize,
    pub conv_bias: bool,
    pub dt_rank: usize,
    /// Lower clamp on Δ, when this path applies one (never for released Zamba v1).
    pub dt_min: Option<f64>,
}

/// Attention over a KV cache (causal; query `t` sees keys `0 ..= pos + t`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnAttrs {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f64,
}

/// What an op computes. Operand counts and shapes are checked by `signature.rs`.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// A graph input (tokens, position, incoming states).
    Input {
        name: String,
    },
    /// A module parameter (a weight).
    Param(ParamId),
    /// `table[tokens]`: `(i64[T], [V,H]) → f32[T,H]`.
    Embedding,
    /// A (possibly fused) linear layer, see [`LinearAttrs`].
    Linear(LinearAttrs),
    /// Per-head linear: `(x[T,nh,K], W[nh,N,K]) → [T,nh,N]` (Mamba1's x_proj, dt_proj).
    HeadLinear {
        heads: usize,
    },
    /// Elementwise sum; the second operand may be a suffix of the first's shape (broadcast).
    Add,
    /// Elementwise product, same broadcasting as `Add`.
    Mul,
    Act(Act),
    /// `max(x, min)`.
    ClampMin {
        min: f64,
    },
    /// RMSNorm over the last axis: `(x, w) → w ⊙ x / rms(x)`.
    RmsNorm {
        eps: f64,
    },
    /// RMSNorm of each of `groups` equal slices of the last axis, times `w`.
    GroupRmsNorm {
        groups: usize,
        eps: f64,
    },
    /// RMSNorm of `concat(a, b)` along the last axis without materialising the concat.
    ConcatRmsNorm {
        eps: f64,
    },
    /// The factor that RMSNorm of `concat(a, b)` scales each row by:
    /// `(a[T,Da], b[T,Db]) → f32[T]`, `1/sqrt(mean(concat(a, b)²) + eps)`.
    ConcatRmsScale {
        eps: f64,
    },
    /// Residual add and RMSNorm in one pass: `(a, b, w) → (a + b, RMSNorm(a + b; w))`.
    AddRmsNorm {
        eps: f64,
    },
    Concat {
        axis: usize,
    },
    /// `x[start:end:stride]` along `axis`.
    Slice {
        axis: usize,
        start: usize,
        end: usize,
        stride: usize,
    },
    Reshape {
        dims: Vec<Dim>,
    },
    /// Depthwise causal conv over time from a zero history: `(x[T,Ch], w[Ch,1,K], [b]) → [T,Ch]`.
    CausalConv1d {
        kernel: usize,
        bias: bool,
    },
    /// The last `K−1` conv inputs, zero-padded on the left: `x[T,Ch] → [Ch,K−1]`.
    ConvState {
        kernel: usize,
    },
    /// One conv step from a state: `(x[1,Ch], state[Ch,K−1], w, [b]) → (y[1,Ch], state')`.
    ConvStep {
        kernel: usize,
        bias: bool,
    },
    /// `x ⊙ d` with one scalar per head: `(x[T,heads·P], d[heads]) → x`.
    ScaleHeads {
        heads: usize,
    },
    /// Mamba2 SSD from a zero state: `(x[T,H·P], dt[T,H], A_log[H], B[T,G·N], C[T,G·N]) →
    /// (y[T,H·P], S[H,P,N])`. `y` excludes the D skip.
    SsdScan(SsdAttrs),
    /// One SSD step: `(x[1,H·P], dt[1,H], A_log, B[1,G·N], C[1,G·N], S) → (y, S')`.
    SsdStep(SsdAttrs),
    /// Mamba1 selective scan from a zero state: `(x[T,nh,P], dt[T,nh,P], A_log[nh,P,N],
    /// B[T,nh,N], C[T,nh,N]) → (y[T,nh,P], S[nh,P,N])`. `y` excludes the D skip.
    SelectiveScan(ScanAttrs),
    /// One selective-scan step: `(x[1,nh,P], dt, A_log, B, C, S) → (y, S')`.
    SelectiveStep(ScanAttrs),
    /// RoPE on `x[T, heads·hd]`; an optional second operand is the start position (i64[]).
    Rope(RopeAttrs),
    /// A fresh KV cache holding this call's keys (or values): `k[T,heads·hd] → [heads,C,hd]`.
    KvStore {
        heads: usize,
        head_dim: usize,
    },
    /// The cache with one more row at `pos`: `(cache, k[1,heads·hd], pos) → cache'`.
    KvAppend {
        heads: usize,
        head_dim: usize,
    },
    /// `(q[T,heads·hd], K[kvh,C,hd], V[kvh,C,hd], [pos]) → [T,heads·hd]`.
    Attention(AttnAttrs),
    /// Fused Mamba2 mixer, prefill form: `(zxbcdt[T,rows], conv_w, conv_b, dt_bias, A_log,
    /// D, norm_w) → (y[T,d_inner], conv_state, ssm_state)`.
    Mamba2Mix(Mamba2Attrs),
    /// Fused Mamba2 mixer, decode form: the prefill operands plus `conv_state, ssm_state`.
    Mamba2Step(Mamba2Attrs),
    /// Fused Mamba1 mixer, prefill form: `(xz[T,2·d_inner] interleaved, conv_w, [conv_b],
    /// x_proj_w, dt_proj_w, dt_proj_b, A_log, D) → (y[T,d_inner], conv_state, ssm_state)`.
    Mamba1Mix(Mamba1Attrs),
    /// Fused Mamba1 mixer, decode form: the prefill operands plus `conv_state, ssm_state`.
    Mamba1Step(Mamba1Attrs),
}

/// An attribute value in the text form.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// A bare flag (`lora`), meaning true.
    Flag,
    Int(usize),
    Float(f64),
    Ident(String),
    Str(String),
    Dims(Vec<Dim>),
}

/// Error from decoding an attribute list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct AttrError(pub String);

type Attrs = Vec<(&'static str, Attr)>;

impl OpKind {
    /// The op's name in the text form.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Input { .. } => "input",
            OpKind::Param(_) => "param",
            OpKind::Embedding => "embedding",
            OpKind::Linear(_) => "linear",
            OpKind::HeadLinear { .. } => "head_linear",
            OpKind::Add => "add",
            OpKind::Mul => "mul",
            OpKind::Act(a) => a.name(),
            OpKind::ClampMin { .. } => "clamp_min",
            OpKind::RmsNorm { .. } => "rms_norm",
            OpKind::GroupRmsNorm { .. } => "group_rms_norm",
            OpKind::ConcatRmsNorm { .. } => "concat_rms_norm",
            OpKind::ConcatRmsScale { .. } => "concat_rms_scale",
            OpKind::AddRmsNorm { .. } => "add_rms_norm",
            OpKind::Concat { .. } => "concat",
            OpKind::Slice { .. } => "slice",
            OpKind::Reshape { .. } => "reshape",
            OpKind::CausalConv1d { .. } => "causal_conv1d",
            OpKind::ConvState { .. } => "conv_state",
            OpKind::ConvStep { .. } => "conv_step",
            OpKind::ScaleHeads { .. } => "scale_heads",
            OpKind::SsdScan(_) => "ssd_scan",
            OpKind::SsdStep(_) => "ssd_step",
            OpKind::SelectiveScan(_) => "selective_scan",
            OpKind::SelectiveStep(_) => "selective_step",
            OpKind::Rope(_) => "rope",
            OpKind::KvStore { .. } => "kv_store",
            OpKind::KvAppend { .. } => "kv_append",
            OpKind::Attention(_) => "attention",
            OpKind::Mamba2Mix(_) => "mamba2_mix",
            OpKind::Mamba2Step(_) => "mamba2_step",
            OpKind::Mamba1Mix(_) => "mamba1_mix",
            OpKind::Mamba1Step(_) => "mamba1_step",
        }
    }

    /// Graph inputs and parameters are leaves, not computations: they are printed in the
    /// graph header and as `@N` operands, and never become kernels.
    pub fn is_leaf(&self) -> bool {
        matches!(self, OpKind::Input { .. } | OpKind::Param(_))
    }

    /// Ops that produced by the fusion passes (used by reports: "fused kernels").
    pub fn is_fused(&self) -> bool {
        match self {
            OpKind::Linear(a) => a.lora || a.hoisted || a.epilogue != Epilogue::None,
            OpKind::ConcatRmsNorm { .. }
            | OpKind::ConcatRmsScale { .. }
            | OpKind::AddRmsNorm { .. }
            | OpKind::Mamba2Mix(_)
            | OpKind::Mamba2Step(_)
            | OpKind::Mamba1Mix(_)
            | OpKind::Mamba1Step(_) => true,
            _ => false,
        }
    }

    /// Ops that only rearrange or view data; they cost no arithmetic.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            OpKind::Slice { .. } | OpKind::Reshape { .. } | OpKind::Concat { .. }
        )
    }

    /// The attribute list, in text order, omitting defaults.
    pub fn attrs(&self) -> Attrs {
        use Attr::*;
        match self {
            OpKind::Input { .. }
            | OpKind::Param(_)
            | OpKind::Embedding
            | OpKind::Add
            | OpKind::Mul
            | OpKind::Act(_) => vec![],
            OpKind::Linear(a) => linear_attrs(a),
            OpKind::HeadLinear { heads } => vec![("heads", Int(*heads))],
            OpKind::ClampMin { min } => vec![("min", Float(*min))],
            OpKind::RmsNorm { eps }
            | OpKind::ConcatRmsNorm { eps }
            | OpKind::ConcatRmsScale { eps }
            | OpKind::AddRmsNorm { eps } => {
                vec![("eps", Float(*eps))]
            }
            OpKind::GroupRmsNorm { groups, eps } => {
                vec![("groups", Int(*groups)), ("eps", Float(*eps))]
            }
            OpKind::Concat { axis } => vec![("axis", Int(*axis))],
            OpKind::Slice {
                axis,
                start,
                end,
                stride,
            } => {
                let mut v = vec![
                    ("axis", Int(*axis)),
                    ("start", Int(*start)),
                    ("end", Int(*end)),
                ];
                if *stride != 1 {
                    v.push(("stride", Int(*stride)));
                }
                v
            }
            OpKind::Reshape { dims } => vec![("dims", Dims(dims.clone()))],
            OpKind::CausalConv1d { kernel, bias } | OpKind::ConvStep { kernel, bias } => {
                let mut v = vec![("kernel", Int(*kernel))];
                if *bias {
                    v.push(("bias", Flag));
                }
                v
            }
            OpKind::ConvState { kernel } => vec![("kernel", Int(*kernel))],
            OpKind::ScaleHeads { heads } => vec![("heads", Int(*heads))],
            OpKind::SsdScan(s) | OpKind::SsdStep(s) => ssd_attrs(s),
            OpKind::SelectiveScan(s) | OpKind::SelectiveStep(s) => scan_attrs(s),
            OpKind::Rope(r) => rope_attrs(r),
            OpKind::KvStore { heads, head_dim } | OpKind::KvAppend { heads, head_dim } => {
                vec![("heads", Int(*heads)), ("head_dim", Int(*head_dim))]
            }
            OpKind::Attention(a) => vec![
                ("heads", Int(a.heads)),
                ("kv_heads", Int(a.kv_heads)),
                ("head_dim", Int(a.head_dim)),
                ("scale", Float(a.scale)),
            ],
            OpKind::Mamba2Mix(m) | OpKind::Mamba2Step(m) => {
                let mut v = ssd_attrs(&m.ssd);
                v.push(("conv", Int(m.conv)));
                v.push(("chunk", Int(m.chunk)));
                if let Some(min) = m.dt_min {
                    v.push(("dt_min", Float(min)));
                }
                v.push(("norm_eps", Float(m.norm_eps)));
                v
            }
            OpKind::Mamba1Mix(m) | OpKind::Mamba1Step(m) => {
                let mut v = scan_attrs(&m.scan);
                v.push(("conv", Int(m.conv)));
                if m.conv_bias {
                    v.push(("conv_bias", Flag));
                }
                v.push(("dt_rank", Int(m.dt_rank)));
                if let Some(min) = m.dt_min {
                    v.push(("dt_min", Float(min)));
                }
                v
            }
        }
    }

    /// Rebuilds a kind from its text name and attributes (the inverse of `name` + `attrs`).
    /// `Input` and `Param` are not spelled as ops in the text and are rejected here.
    pub fn from_parts(name: &str, attrs: Vec<(String, Attr)>) -> Result<OpKind, AttrError> {
        let mut a = AttrReader::new(name, attrs);
        let kind = match name {
            "embedding" => OpKind::Embedding,
            "linear" => OpKind::Linear(read_linear(&mut a)?),
            "head_linear" => OpKind::HeadLinear {
                heads: a.int("heads")?,
            },
            "add" => OpKind::Add,
            "mul" => OpKind::Mul,
            "clamp_min" => OpKind::ClampMin {
                min: a.float("min")?,
            },
            "rms_norm" => OpKind::RmsNorm {
                eps: a.float("eps")?,
            },
            "concat_rms_norm" => OpKind::ConcatRmsNorm {
                eps: a.float("eps")?,
            },
            "concat_rms_scale" => OpKind::ConcatRmsScale {
                eps: a.float("eps")?,
            },
            "add_rms_norm" => OpKind::AddRmsNorm {
                eps: a.float("eps")?,
            },
            "group_rms_norm" => OpKind::GroupRmsNorm {
                groups: a.int("groups")?,
                eps: a.float("eps")?,
            },
            "concat" => OpKind::Concat {
                axis: a.int("axis")?,
            },
            "slice" => OpKind::Slice {
                axis: a.int("axis")?,
                start: a.int("start")?,
                end: a.int("end")?,
                stride: a.int_or("stride", 1)?,
            },
            "reshape" => OpKind::Reshape {
                dims: a.dims("dims")?,
            },
            "causal_conv1d" => OpKind::CausalConv1d {
                kernel: a.int("kernel")?,
                bias: a.flag("bias")?,
            },
            "conv_step" => OpKind::ConvStep {
                kernel: a.int("kernel")?,
                bias: a.flag("bias")?,
            },
            "conv_state" => OpKind::ConvState {
                kernel: a.int("kernel")?,
            },
            "scale_heads" => OpKind::ScaleHeads {
                heads: a.int("heads")?,
            },
            "ssd_scan" => OpKind::SsdScan(read_ssd(&mut a)?),
            "ssd_step" => OpKind::SsdStep(read_ssd(&mut a)?),
            "selective_scan" => OpKind::SelectiveScan(read_scan(&mut a)?),
            "selective_step" => OpKind::SelectiveStep(read_scan(&mut a)?),
            "rope" => OpKind::Rope(read_rope(&mut a)?),
            "kv_store" => OpKind::KvStore {
                heads: a.int("heads")?,
                head_dim: a.int("head_dim")?,
            },
            "kv_append" => OpKind::KvAppend {
                heads: a.int("heads")?,
                head_dim: a.int("head_dim")?,
            },
            "attention" => OpKind::Attention(AttnAttrs {
                heads: a.int("heads")?,
                kv_heads: a.int("kv_heads")?,
                head_dim: a.int("head_dim")?,
                scale: a.float("scale")?,
            }),
            "mamba2_mix" => OpKind::Mamba2Mix(read_mamba2(&mut a)?),
            "mamba2_step" => OpKind::Mamba2Step(read_mamba2(&mut a)?),
            "mamba1_mix" => OpKind::Mamba1Mix(read_mamba1(&mut a)?),
            "mamba1_step" => OpKind::Mamba1Step(read_mamba1(&mut a)?),
            other => match Act::parse(other) {
                Some(act) => OpKind::Act(act),
                None => return Err(AttrError(format!("unknown op `{other}`"))),
            },
        };
        a.finish()?;
        Ok(kind)
    }
}

fn linear_attrs(a: &LinearAttrs) -> Attrs {
    use Attr::*;
    let mut v = Vec::new();
    if a.bias {
        v.push(("bias", Flag));
    }
    if a.lora {
        v.push(("lora", Flag));
    }
    if let Some(w) = a.window {
        v.push(("cols_from", Int(w.start)));
        v.push(("cols", Int(w.len)));
    }
    if a.hoisted {
        v.push(("hoisted", Flag));
    }
    match &a.epilogue {
        Epilogue::None => {}
        Epilogue::Act(act) => v.push(("epi", Ident(act.name().to_string()))),
        Epilogue::ActGate(act) => v.push(("epi", Ident(format!("{}_gate", act.name())))),
        Epilogue::Mul => v.push(("epi", Ident("mul".into()))),
        Epilogue::Rope(r) => {
            v.push(("epi", Ident("rope".into())));
            v.extend(rope_attrs(r));
        }
    }
    v
}

fn read_linear(a: &mut AttrReader) -> Result<LinearAttrs, AttrError> {
    let bias = a.flag("bias")?;
    let lora = a.flag("lora")?;
    let window = match (a.opt_int("cols_from")?, a.opt_int("cols")?) {
        (None, None) => None,
        (Some(start), Some(len)) => Some(Window { start, len }),
        _ => {
            return Err(AttrError(
                "`linear` attributes `cols_from` and `cols` come together".into(),
            ));
        }
    };
    let hoisted = a.flag("hoisted")?;
    let epilogue = match a.opt_ident("epi")?.as_deref() {
        None => Epilogue::None,
        Some("mul") => Epilogue::Mul,
        Some("rope") => Epilogue::Rope(read_rope(a)?),
        Some(s) => {
            if let Some(act) = s.strip_suffix("_gate").and_then(Act::parse) {
                Epilogue::ActGate(act)
            } else if let Some(act) = Act::parse(s) {
                Epilogue::Act(act)
            } else {
                return Err(AttrError(format!("unknown linear epilogue `{s}`")));
            }
        }
    };
    Ok(LinearAttrs {
        bias,
        lora,
        window,
        hoisted,
        epilogue,
    })
}

fn rope_attrs(r: &RopeAttrs) -> Attrs {
    let mut v = vec![
        ("heads", Attr::Int(r.heads)),
        ("head_dim", Attr::Int(r.head_dim)),
        ("theta", Attr::Float(r.theta)),
    ];
    if let Some(s) = &r.scaling {
        // The scaling's parameters as the engine contract spells them (JSON): one string,
        // however many per-frequency factors it carries.
        let text = serde_json::to_string(s).unwrap_or_default();
        v.push(("scaling", Attr::Str(text)));
    }
    v
}

fn read_rope(a: &mut AttrReader) -> Result<RopeAttrs, AttrError> {
    let heads = a.int("heads")?;
    let head_dim = a.int("head_dim")?;
    let theta = a.float("theta")?;
    let scaling = match a.opt_str("scaling")? {
        None => None,
        Some(text) => {
            let s: RopeScaling = serde_json::from_str(&text)
                .map_err(|e| AttrError(format!("`{}` attribute `scaling`: {e}", a.op)))?;
            s.check(head_dim)
                .map_err(|e| AttrError(format!("`{}` attribute `scaling`: {e}", a.op)))?;
            Some(s)
        }
    };
    Ok(RopeAttrs {
        heads,
        head_dim,
        theta,
        scaling,
    })
}

fn ssd_attrs(s: &SsdAttrs) -> Attrs {
    vec![
        ("heads", Attr::Int(s.heads)),
        ("head_dim", Attr::Int(s.head_dim)),
        ("groups", Attr::Int(s.groups)),
        ("state", Attr::Int(s.state)),
    ]
}

fn read_ssd(a: &mut AttrReader) -> Result<SsdAttrs, AttrError> {
    Ok(SsdAttrs {
        heads: a.int("heads")?,
        head_dim: a.int("head_dim")?,
        groups: a.int("groups")?,
        state: a.int("state")?,
    })
}

fn scan_attrs(s: &ScanAttrs) -> Attrs {
    vec![
        ("heads", Attr::Int(s.heads)),
        ("head_dim", Attr::Int(s.head_dim)),
        ("state", Attr::Int(s.state)),
    ]
}

fn read_scan(a: &mut AttrReader) -> Result<ScanAttrs, AttrError> {
    Ok(ScanAttrs {
        heads: a.int("heads")?,
        head_dim: a.int("head_dim")?,
        state: a.int("state")?,
    })
}

fn read_mamba2(a: &mut AttrReader) -> Result<Mamba2Attrs, AttrError> {
    Ok(Mamba2Attrs {
        ssd: read_ssd(a)?,
        conv: a.int("conv")?,
        chunk: a.int("chunk")?,
        dt_min: a.opt_float("dt_min")?,
        norm_eps: a.float("norm_eps")?,
    })
}

fn read_mamba1(a: &mut AttrReader) -> Result<Mamba1Attrs, AttrError> {
    Ok(Mamba1Attrs {
        scan: read_scan(a)?,
        conv: a.int("conv")?,
        conv_bias: a.flag("conv_bias")?,
        dt_rank: a.int("dt_rank")?,
        dt_min: a.opt_float("dt_min")?,
    })
}

/// Takes attributes out of a parsed list by name, then rejects leftovers.
struct AttrReader {
    op: String,
    attrs: Vec<(String, Attr)>,
}

impl AttrReader {
    fn new(op: &str, attrs: Vec<(String, Attr)>) -> AttrReader {
        AttrReader {
            op: op.to_string(),
            attrs,
        }
    }

    fn take(&mut self, key: &str) -> Option<Attr> {
        let i = self.attrs.iter().position(|(k, _)| k == key)?;
        Some(self.attrs.remove(i).1)
    }

    fn err(&self, key: &str, what: &str, got: &Attr) -> AttrError {
        AttrError(format!(
            "`{}` attribute `{key}`: expected {what}, found {got:?}",
            self.op
        ))
    }

    fn missing(&self, key: &str) -> AttrError {
        AttrError(format!("`{}` needs attribute `{key}`", self.op))
    }

    fn int(&mut self, key: &str) -> Result<usize, AttrError> {
        match self.take(key) {
            Some(Attr::Int(n)) => Ok(n),
            Some(other) => Err(self.err(key, "an integer", &other)),
            None => Err(self.missing(key)),
        }
    }

    fn int_or(&mut self, key: &str, default: usize) -> Result<usize, AttrError> {
        Ok(self.opt_int(key)?.unwrap_or(default))
    }

    fn opt_int(&mut self, key: &str) -> Result<Option<usize>, AttrError> {
        match self.take(key) {
            None => Ok(None),
            Some(Attr::Int(n)) => Ok(Some(n)),
            Some(other) => Err(self.err(key, "an integer", &other)),
        }
    }

    fn float(&mut self, key: &str) -> Result<f64, AttrError> {
        self.opt_float(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_float(&mut self, key: &str) -> Result<Option<f64>, AttrError> {
        match self.take(key) {
            None => Ok(None),
            Some(Attr::Float(x)) => Ok(Some(x)),
            Some(Attr::Int(n)) => Ok(Some(n as f64)),
            Some(other) => Err(self.err(key, "a number", &other)),
        }
    }

    fn flag(&mut self, key: &str) -> Result<bool, AttrError> {
        match self.take(key) {
            None => Ok(false),
            Some(Attr::Flag) => Ok(true),
            Some(other) => Err(self.err(key, "a bare flag", &other)),
        }
    }

    fn opt_ident(&mut self, key: &str) -> Result<Option<String>, AttrError> {
        match self.take(key) {
            None => Ok(None),
            Some(Attr::Ident(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(key, "a name", &other)),
        }
    }

    fn opt_str(&mut self, key: &str) -> Result<Option<String>, AttrError> {
        match self.take(key) {
            None => Ok(None),
            Some(Attr::Str(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(key, "a string", &other)),
        }
    }

    fn dims(&mut self, key: &str) -> Result<Vec<Dim>, AttrError> {
        match self.take(key) {
            Some(Attr::Dims(d)) => Ok(d),
            Some(other) => Err(self.err(key, "a dimension list", &other)),
            None => Err(self.missing(key)),
        }
    }

    fn finish(self) -> Result<(), AttrError> {
        match self.attrs.first() {
            None => Ok(()),
            Some((k, _)) => Err(AttrError(format!("`{}` has no attribute `{k}`", self.op))),
        }
    }
}
