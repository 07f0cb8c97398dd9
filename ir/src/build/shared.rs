//! The shared attention + MLP block (spec §2.2) as primitive ops.
//!
//! Every invocation of block `b` reads the same parameters (named under the block's first
//! hybrid layer, tied by `shared{b}/…`); only the adapters of slot `i` and the KV cache of
//! the invoking layer are per invocation.

use zambac_engine::StateRole;
use zambac_frontend::{Activation, Family};

use super::{BuildError, GraphBuilder, Mode, names};
use crate::graph::ValueRef;
use crate::op::{Act, AttnAttrs, OpKind, RopeAttrs};

impl GraphBuilder<'_> {
    /// `SharedBlock_b(h, emb, i)` for the invocation at layer `l` with ordinal `i`.
    pub(super) fn shared_block(
        &mut self,
        l: usize,
        i: usize,
        h: ValueRef,
        emb: ValueRef,
    ) -> Result<ValueRef, BuildError> {
        let spec = self.spec;
        let sh = &spec.shared;
        let Some(&b) = sh.invocation_blocks.get(i) else {
            return Err(self.fault(format!(
                "hybrid layer {l} is invocation {i}, but only {} invocations have a block",
                sh.invocation_blocks.len()
            )));
        };
        // The first hybrid layer that invokes block `b`: this one, or one before it.
        let Some(&home) = names::block_layers(spec, b).first() else {
            return Err(self.fault(format!("no hybrid layer invokes shared block {b}")));
        };
        let blk = BlockNames {
            prefix: names::block_prefix(spec.family, home),
            block: b,
        };
        let x = if sh.concat_embeddings {
            self.op(OpKind::Concat { axis: 1 }, &[h, emb])?
        } else {
            h
        };
        let width = spec.attn_input_width();
        let w = self.block_weight(&blk, "input_layernorm.weight", &[width]);
        let x = self.op(OpKind::RmsNorm { eps: spec.norm_eps }, &[x, w])?;

        let (qw, kvw) = (spec.q_width(), spec.kv_width());
        let q = self.attn_proj(&blk, 'q', i, x, qw)?;
        let k = self.attn_proj(&blk, 'k', i, x, kvw)?;
        let v = self.attn_proj(&blk, 'v', i, x, kvw)?;
        let (q, k) = match sh.rope_theta {
            Some(theta) => {
                let rope = |heads| {
                    OpKind::Rope(RopeAttrs {
                        heads,
                        head_dim: sh.head_dim,
                        theta,
                        scaling: sh.rope_scaling.clone(),
                    })
                };
                let q = self.op(rope(sh.num_heads), &self.with_pos(&[q]))?;
                let k = self.op(rope(sh.num_kv_heads), &self.with_pos(&[k]))?;
                (q, k)
            }
            None => (q, k),
        };
        let (kvh, hd) = (sh.num_kv_heads, sh.head_dim);
        let (kc, vc) = match (self.mode, self.pos) {
            (Mode::Prefill, _) => {
                let store = OpKind::KvStore {
                    heads: kvh,
                    head_dim: hd,
                };
                (self.op(store.clone(), &[k])?, self.op(store, &[v])?)
            }
            (Mode::Decode, None) => return Err(self.fault("decode has no position input")),
            (Mode::Decode, Some(pos)) => {
                let append = OpKind::KvAppend {
                    heads: kvh,
                    head_dim: hd,
                };
                let kc = self.op(
                    append.clone(),
                    &[self.state(StateRole::Key { layer: l })?, k, pos],
                )?;
                let vc = self.op(
                    append,
                    &[self.state(StateRole::Value { layer: l })?, v, pos],
                )?;
                (kc, vc)
            }
        };
        self.emit_state(StateRole::Key { layer: l }, kc);
        self.emit_state(StateRole::Value { layer: l }, vc);
        let attn = OpKind::Attention(AttnAttrs {
            heads: sh.num_heads,
            kv_heads: kvh,
            head_dim: hd,
            scale: sh.attention_scale,
        });
        let o = self.op(attn, &self.with_pos(&[q, kc, vc]))?;
        let wo = self.block_weight(&blk, "self_attn.o_proj.weight", &[spec.hidden_size, qw]);
        let o = self.linear(o, wo)?;
        let w = self.block_weight(&blk, "pre_ff_layernorm.weight", &[spec.hidden_size]);
        let o = self.op(OpKind::RmsNorm { eps: spec.norm_eps }, &[o, w])?;
        self.mlp(&blk, i, o)
    }

    /// Appends the decode position to an operand list (prefill starts at position 0).
    fn with_pos(&self, ops: &[ValueRef]) -> Vec<ValueRef> {
        let mut v = ops.to_vec();
        v.extend(self.pos);
        v
    }

    fn block_weight(&mut self, blk: &BlockNames, suffix: &str, shape: &[usize]) -> ValueRef {
        let name = format!("{}{suffix}", blk.prefix);
        self.weight(&name, shape, Some(names::tie_key(blk.block, suffix)))
    }

    /// A projection `x·Wᵀ` plus, with attention adapters, `(x·A_iᵀ)·B_iᵀ`.
    fn attn_proj(
        &mut self,
        blk: &BlockNames,
        which: char,
        i: usize,
        x: ValueRef,
        out: usize,
    ) -> Result<ValueRef, BuildError> {
        let width = self.spec.attn_input_width();
        let w = self.block_weight(
            blk,
            &format!("self_attn.{which}_proj.weight"),
            &[out, width],
        );
        let y = self.linear(x, w)?;
        let r = self.spec.shared.attn_adapter_rank;
        if r == 0 {
            return Ok(y);
        }
        let a = self.block_weight(blk, &names::attn_adapter_suffix(which, i, 0), &[r, width]);
        let b = self.block_weight(blk, &names::attn_adapter_suffix(which, i, 1), &[out, r]);
        self.adapter(x, y, a, b)
    }

    /// `y + (x·Aᵀ)·Bᵀ`.
    fn adapter(
        &mut self,
        x: ValueRef,
        y: ValueRef,
        a: ValueRef,
        b: ValueRef,
    ) -> Result<ValueRef, BuildError> {
        let down = self.linear(x, a)?;
        let up = self.linear(down, b)?;
        self.op(OpKind::Add, &[y, up])
    }

    /// The gated MLP: Zamba2's fused `gate_up_proj` (+ adapter), Zamba v1's separate
    /// `gate_proj` / `up_proj`; then `act(gate) ⊙ up` and `down_proj`.
    fn mlp(&mut self, blk: &BlockNames, i: usize, x: ValueRef) -> Result<ValueRef, BuildError> {
        let spec = self.spec;
        let (h, f) = (spec.hidden_size, spec.shared.intermediate_size);
        let bias = spec.family == Family::Zamba2 && spec.mamba.proj_bias;
        let (gate, up) = match spec.family {
            Family::Zamba2 => {
                let w = self.block_weight(blk, "feed_forward.gate_up_proj.weight", &[2 * f, h]);
                let b = bias
                    .then(|| self.block_weight(blk, "feed_forward.gate_up_proj.bias", &[2 * f]));
                let mut gu = self.linear_bias(x, w, b)?;
                let r = spec.shared.mlp_adapter_rank;
                if r > 0 {
                    let a = self.block_weight(blk, &names::mlp_adapter_suffix(i, 0), &[r, h]);
                    let b = self.block_weight(blk, &names::mlp_adapter_suffix(i, 1), &[2 * f, r]);
                    gu = self.adapter(x, gu, a, b)?;
                }
                (self.slice(gu, 0, f)?, self.slice(gu, f, 2 * f)?)
            }
            Family::Zamba => {
                let wg = self.block_weight(blk, "feed_forward.gate_proj.weight", &[f, h]);
                let wu = self.block_weight(blk, "feed_forward.up_proj.weight", &[f, h]);
                (self.linear(x, wg)?, self.linear(x, wu)?)
            }
        };
        let act = match spec.shared.activation {
            Activation::Gelu => Act::Gelu,
            Activation::GeluTanh => Act::GeluTanh,
            Activation::Silu => Act::Silu,
        };
        let g = self.op(OpKind::Act(act), &[gate])?;
        let m = self.op(OpKind::Mul, &[g, up])?;
        let w = self.block_weight(blk, "feed_forward.down_proj.weight", &[h, f]);
        let b = bias.then(|| self.block_weight(blk, "feed_forward.down_proj.bias", &[h]));
        self.linear_bias(m, w, b)
    }
}

/// Where block `block`'s tensors are named.
struct BlockNames {
    prefix: String,
    block: usize,
}
