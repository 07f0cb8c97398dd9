//! The cost model: parameters, bytes, KV-cache and state sizes, FLOPs and roofline
//! estimates, all read off a built [`Module`] so they describe exactly what is compiled.
//!
//! Counting rules (spec §4.3 rule 6, §7): parameters are architectural — every shared
//! block once, a tied embedding once, an untied `lm_head` separately. KV-cache elements
//! per token sum the `[kv_heads, C, head_dim]` caches of the decode graph, which exist
//! only for hybrid (attention) invocations; the recurrent state is every other state.

use std::collections::BTreeMap;

use serde::Serialize;
use zambac_engine::StateRole;
use zambac_frontend::ModelSpec;

use crate::build::names;
use crate::graph::{Graph, Module};
use crate::op::{Epilogue, LinearAttrs, OpKind};
use crate::types::Bindings;

/// H100 SXM HBM3 bandwidth used for decode estimates (bytes/s).
pub const H100_BANDWIDTH: f64 = 3.35e12;
/// H100 SXM dense bf16 tensor throughput used for prefill estimates (FLOP/s).
pub const H100_BF16_FLOPS: f64 = 989e12;

/// Parameter counts by role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ParamBreakdown {
    /// Token embedding (also the head when tied).
    pub embedding: u64,
    /// Untied output projection, 0 when tied.
    pub lm_head: u64,
    /// Mamba layers (norms and mixers, including the mixers inside hybrid layers) and the
    /// final norm.
    pub mamba: u64,
    /// The shared blocks' own weights, each block once.
    pub shared_blocks: u64,
    /// Per-invocation LoRA adapters.
    pub adapters: u64,
    /// Per-invocation linears of the hybrid layers.
    pub hybrid_linears: u64,
    /// Everything.
    pub total: u64,
}

impl ParamBreakdown {
    /// Counts the parameters of `m`, each tie group (one shared tensor) once.
    pub fn of(m: &Module) -> ParamBreakdown {
        let mut seen_ties = std::collections::BTreeSet::new();
        let mut b = ParamBreakdown::default();
        for p in &m.params {
            if let Some(t) = &p.tie
                && !seen_ties.insert(t.clone())
            {
                continue;
            }
            let n = p.numel() as u64;
            let slot = if p.name == names::EMBED {
                &mut b.embedding
            } else if p.name == names::LM_HEAD {
                &mut b.lm_head
            } else if p.name.contains("adapter_list") {
                &mut b.adapters
            } else if p.tie.is_some() {
                &mut b.shared_blocks
            } else if p.name.ends_with(".linear.weight") {
                &mut b.hybrid_linears
            } else {
                &mut b.mamba
            };
            *slot += n;
            b.total += n;
        }
        b
    }
}

/// State sizes of a decode graph, in elements (states are kept in f32).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateSizes {
    /// KV-cache elements per token of context (all attention invocations, K and V).
    pub kv_elems_per_token: u64,
    /// Conv state elements (all layers).
    pub conv_elems: u64,
    /// SSM state elements (all layers).
    pub ssm_elems: u64,
}

impl StateSizes {
    /// Reads the state inputs of `decode`.
    pub fn of(decode: &Graph) -> StateSizes {
        let mut s = StateSizes::default();
        for &n in &decode.inputs {
            let OpKind::Input { name } = decode.kind(n) else {
                continue;
            };
            // An input has one result (the verifier checks).
            let elems: u64 = decode
                .node(n)
                .results
                .iter()
                .map(|t| t.const_numel() as u64)
                .sum();
            match name.parse::<StateRole>() {
                Ok(r) if r.is_cache() => s.kv_elems_per_token += elems,
                Ok(StateRole::Conv { .. }) => s.conv_elems += elems,
                Ok(StateRole::Ssm { .. }) => s.ssm_elems += elems,
                _ => {}
            }
        }
        s
    }

    /// Recurrent (constant-size) state elements per sequence.
    pub fn recurrent_elems(&self) -> u64 {
        self.conv_elems + self.ssm_elems
    }
}

/// FLOPs of one execution of `g` with the given bindings. In `decode`, `bind.c` is the
/// number of keys attended (the context so far); in `prefill` queries attend causally
/// from position 0. Matrix products count 2 FLOPs per multiply-add; pointwise ops one
/// FLOP per element; views none. A graph the verifier rejects, with an op whose operands
/// lack the shapes its kind requires, costs NaN: there is no count to give for it.
pub fn graph_flops(g: &Graph, bind: &Bindings) -> f64 {
    g.nodes()
        .filter(|&n| !g.kind(n).is_leaf())
        .map(|n| op_flops(g, n, bind).unwrap_or(f64::NAN))
        .sum()
}

/// Parameter elements a call of `g` reads: every op reads each weight it takes in full —
/// so a shared block's weights count once per invocation, as they stream from memory once
/// per invocation — except an embedding lookup, which reads one row per token.
pub fn weight_elems_read(g: &Graph, bind: &Bindings) -> u64 {
    g.nodes()
        .filter(|&n| matches!(g.kind(n), OpKind::Param(_)))
        .map(|n| {
            let ty = g.ty(n.out());
            let mut users: Vec<_> = g.users(n).into_iter().map(|(u, _, _)| u).collect();
            users.sort();
            users.dedup();
            users
                .iter()
                .map(|&u| match g.kind(u) {
                    OpKind::Embedding => {
                        bind.t as u64 * ty.last().and_then(|d| d.as_const()).unwrap_or(1) as u64
                    }
                    // A windowed product reads only its columns of the weight.
                    OpKind::Linear(
                        a @ LinearAttrs {
                            window: Some(w), ..
                        },
                    ) if g
                        .operands(u)
                        .get(a.operands().w)
                        .is_some_and(|v| v.node == n) =>
                    {
                        let width = ty.last().and_then(|d| d.as_const()).unwrap_or(1).max(1);
                        (ty.numel(bind) / width * w.len) as u64
                    }
                    // A slice is read through its view, only the elements it selects.
                    OpKind::Slice { .. } => g.ty(u.out()).numel(bind) as u64,
                    _ => ty.numel(bind) as u64,
                })
                .sum::<u64>()
        })
        .sum()
}

/// FLOPs of one op, or `None` if its operands lack the shapes its kind requires.
fn op_flops(g: &Graph, n: crate::NodeId, bind: &Bindings) -> Option<f64> {
    let node = g.node(n);
    let ops = g.operands(n);
    let ty = |i: usize| g.value_ty(*ops.get(i)?);
    let numel = |i: usize| Some(ty(i)?.numel(bind) as f64);
    let out = || Some(node.results.first()?.numel(bind) as f64);
    let rows = |i: usize| {
        let t = ty(i)?;
        let width = t.last().and_then(|d| d.as_const()).unwrap_or(1).max(1);
        Some(t.numel(bind) as f64 / width as f64)
    };
    // The leading (token) dimension of operand `i`.
    let tokens = |i: usize| Some(ty(i)?.dims.first()?.eval(bind) as f64);
    Some(match &node.kind {
        OpKind::Linear(a) => {
            let slot = a.operands();
            let &[nout, kw] = ty(slot.w)?.dims.as_slice() else {
                return None;
            };
            let (nout, kw) = (nout.eval(bind) as f64, kw.eval(bind) as f64);
            let k = a.window.map_or(kw, |win| win.len as f64);
            let m = rows(slot.x)?;
            let mut f = 2.0 * m * k * nout;
            if let Some((down, _)) = slot.lora {
                let &[r, kx] = ty(down)?.dims.as_slice() else {
                    return None;
                };
                let (r, kx) = (r.eval(bind) as f64, kx.eval(bind) as f64);
                f += 2.0 * m * kx * r + 2.0 * m * r * nout;
            }
            if a.hoisted {
                f += 2.0 * m * nout;
            }
            if a.epilogue != Epilogue::None {
                f += m * nout;
            }
            f
        }
        OpKind::HeadLinear { heads } => {
            // Each of the T·heads rows meets one [N, K] slice of W.
            2.0 * rows(0)? * numel(1)? / *heads as f64
        }
        OpKind::Attention(a) => {
            let t = tokens(0)?;
            // Keys seen by all queries of the call.
            let keys = if ops.len() == 4 {
                t * bind.c as f64
            } else {
                t * (t + 1.0) / 2.0
            };
            4.0 * (a.heads * a.head_dim) as f64 * keys
        }
        OpKind::SsdScan(s) | OpKind::SsdStep(s) => {
            5.0 * tokens(0)? * (s.heads * s.head_dim * s.state) as f64
        }
        OpKind::SelectiveScan(s) | OpKind::SelectiveStep(s) => {
            5.0 * tokens(0)? * (s.heads * s.head_dim * s.state) as f64
        }
        OpKind::Mamba2Mix(m) | OpKind::Mamba2Step(m) => {
            let s = m.ssd;
            let t = rows(0)?;
            let conv_dim = s.heads * s.head_dim + 2 * s.groups * s.state;
            t * (5.0 * (s.heads * s.head_dim * s.state) as f64
                + 2.0 * (m.conv * conv_dim) as f64
                + 8.0 * (s.heads * s.head_dim) as f64)
        }
        OpKind::Mamba1Mix(m) | OpKind::Mamba1Step(m) => {
            let s = m.scan;
            let t = rows(0)?;
            let di = (s.heads * s.head_dim) as f64;
            t * (5.0 * di * s.state as f64
                + 2.0 * (m.conv as f64) * di
                + 2.0 * di * (m.dt_rank + 2 * s.state) as f64
                + 2.0 * di * m.dt_rank as f64
                + 6.0 * di)
        }
        OpKind::CausalConv1d { kernel, .. } | OpKind::ConvStep { kernel, .. } => {
            2.0 * (*kernel as f64) * numel(0)?
        }
        OpKind::RmsNorm { .. } | OpKind::GroupRmsNorm { .. } | OpKind::ConcatRmsNorm { .. } => {
            4.0 * out()?
        }
        OpKind::AddRmsNorm { .. } => 5.0 * out()?,
        OpKind::ConcatRmsScale { .. } => 2.0 * (numel(0)? + numel(1)?),
        OpKind::Rope(_) => 3.0 * out()?,
        k if k.is_view() => 0.0,
        OpKind::Embedding
        | OpKind::ConvState { .. }
        | OpKind::KvStore { .. }
        | OpKind::KvAppend { .. } => 0.0,
        _ => out()?,
    })
}

/// The attention-everywhere transformer of the same width and depth, for comparison:
/// every layer holds attention with the block's head counts at head dim `H / heads`, and
/// a gated MLP of the block's width.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransformerBaseline {
    pub params: u64,
    pub kv_cache_elems_per_token: u64,
}

impl TransformerBaseline {
    pub fn of(spec: &ModelSpec) -> TransformerBaseline {
        let h = spec.hidden_size as u64;
        let l = spec.num_layers() as u64;
        let heads = spec.shared.num_heads.max(1) as u64;
        let kvh = spec.shared.num_kv_heads.max(1) as u64;
        let hd = h / heads;
        let f = spec.shared.intermediate_size as u64;
        let attn = 2 * h * h + 2 * h * kvh * hd;
        let mlp = 3 * h * f;
        let per_layer = attn + mlp + 2 * h;
        let embed = spec.vocab_size as u64 * h * if spec.tie_embeddings { 1 } else { 2 };
        TransformerBaseline {
            params: l * per_layer + embed + h,
            kv_cache_elems_per_token: l * 2 * kvh * hd,
        }
    }
}

/// Everything `zambac explore` reports for one model.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub family: String,
    pub layers: usize,
    pub hybrid_layers: Vec<usize>,
    pub shared_blocks: usize,
    /// Architectural parameter count.
    pub params: u64,
    pub param_breakdown: ParamBreakdown,
    /// Weight bytes by dtype name.
    pub weight_bytes: BTreeMap<String, u64>,
    pub kv_cache_elems_per_token: u64,
    /// KV-cache bytes per token in f32 (the engines' cache type) and bf16.
    pub kv_cache_bytes_per_token_f32: u64,
    pub kv_cache_bytes_per_token_bf16: u64,
    pub conv_state_elems: u64,
    pub ssm_state_elems: u64,
    /// Recurrent state bytes per sequence (f32).
    pub recurrent_state_bytes: u64,
    /// Weight elements one decode step reads: each shared block once per invocation.
    pub decode_weight_elems_read: u64,
    /// Sequences decoded at once: the KV cache and state below are theirs together, and a
    /// decode step reads the weights once for all of them.
    pub sequences: usize,
    pub contexts: Vec<ContextCost>,
    pub transformer: TransformerBaseline,
}

/// Costs at one context length.
#[derive(Clone, Debug, Serialize)]
pub struct ContextCost {
    pub context: usize,
    /// KV-cache bytes (f32) at this context.
    pub kv_cache_bytes: u64,
    /// The same for the attention-everywhere transformer.
    pub transformer_kv_cache_bytes: u64,
    /// Prefill FLOPs per token for a prompt of this length.
    pub prefill_flops_per_token: f64,
    /// Decode FLOPs for one token at this context.
    pub decode_flops_per_token: f64,
    /// Bytes a decode step moves at this context: the weights it reads in the model dtype
    /// (shared blocks once per invocation), states read and written, the KV cache read.
    pub decode_bytes_per_token: f64,
    /// H100 roofline: decode latency per token (s) = bytes / bandwidth.
    pub h100_decode_s: f64,
    /// H100 roofline: prefill of `context` tokens (s) = FLOPs / bf16 throughput.
    pub h100_prefill_s: f64,
}

impl Report {
    /// Costs `m` (built from `spec`) at the given context lengths. [`crate::build`] makes
    /// both entry graphs; one the module lacks costs what an empty graph does: nothing.
    pub fn new(spec: &ModelSpec, m: &Module, contexts: &[usize]) -> Report {
        let params = ParamBreakdown::of(m);
        let (empty_decode, empty_prefill) = (Graph::new("decode"), Graph::new("prefill"));
        let decode = m.graph("decode").unwrap_or(&empty_decode);
        let prefill = m.graph("prefill").unwrap_or(&empty_prefill);
        let states = StateSizes::of(decode);
        let transformer = TransformerBaseline::of(spec);
        let mut weight_bytes = BTreeMap::new();
        for d in ["f32", "bf16"] {
            let size = if d == "f32" { 4 } else { 2 };
            weight_bytes.insert(d.to_string(), params.total * size);
        }
        let decode_weight_elems_read = weight_elems_read(decode, &Bindings { t: 1, c: 1 });
        let model_weight_bytes = decode_weight_elems_read as f64 * spec.dtype.size() as f64;
        let recurrent_state_bytes = 4 * states.recurrent_elems();
        let contexts = contexts
            .iter()
            .map(|&c| {
                let pf = graph_flops(prefill, &Bindings { t: c, c });
                let df = graph_flops(decode, &Bindings { t: 1, c });
                let kv_bytes = 4 * states.kv_elems_per_token * c as u64;
                let decode_bytes =
                    model_weight_bytes + 2.0 * recurrent_state_bytes as f64 + kv_bytes as f64;
                ContextCost {
                    context: c,
                    kv_cache_bytes: kv_bytes,
                    transformer_kv_cache_bytes: 4 * transformer.kv_cache_elems_per_token * c as u64,
                    prefill_flops_per_token: pf / c.max(1) as f64,
                    decode_flops_per_token: df,
                    decode_bytes_per_token: decode_bytes,
                    h100_decode_s: decode_bytes / H100_BANDWIDTH,
                    h100_prefill_s: pf / H100_BF16_FLOPS,
                }
            })
            .collect();
        Report {
            name: spec.name.clone(),
            family: spec.family.name().to_string(),
            layers: spec.num_layers(),
            hybrid_layers: spec.hybrid_layer_ids(),
            shared_blocks: spec.shared.num_blocks,
            params: params.total,
            param_breakdown: params,
            weight_bytes,
            kv_cache_elems_per_token: states.kv_elems_per_token,
            kv_cache_bytes_per_token_f32: 4 * states.kv_elems_per_token,
            kv_cache_bytes_per_token_bf16: 2 * states.kv_elems_per_token,
            conv_state_elems: states.conv_elems,
            ssm_state_elems: states.ssm_elems,
            recurrent_state_bytes,
            decode_weight_elems_read,
            sequences: 1,
            contexts,
            transformer,
        }
    }

    /// The same costs for `n` sequences decoded at once (batched decode): KV caches and
    /// states scale with `n`; the weights a decode step reads do not, so one step moves
    /// `weights + n·(states read and written + KV read)` bytes for `n` tokens.
    pub fn scale_sequences(&mut self, n: usize) {
        let (n, old) = (n.max(1) as u64, self.sequences.max(1) as u64);
        let state_one = self.recurrent_state_bytes / old;
        for c in &mut self.contexts {
            let kv_one = c.kv_cache_bytes / old;
            let weights = c.decode_bytes_per_token - (old * (2 * state_one + kv_one)) as f64;
            c.kv_cache_bytes = n * kv_one;
            c.transformer_kv_cache_bytes = c.transformer_kv_cache_bytes / old * n;
            c.decode_bytes_per_token = weights + (n * (2 * state_one + kv_one)) as f64;
            c.h100_decode_s = c.decode_bytes_per_token / H100_BANDWIDTH;
        }
        self.recurrent_state_bytes = n * state_one;
        self.sequences = n as usize;
    }
}
