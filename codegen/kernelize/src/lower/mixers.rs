//! The mixers: attention over the KV cache (generated flash-attention kernels for prefill
//! and decode) and the fused Mamba2 / Mamba1 mixers.

use zambac_engine::{ConvShift, Expr, KernelKind, View};
use zambac_ir::op::{AttnAttrs, Mamba1Attrs, Mamba2Attrs};
use zambac_ir::operands::Mamba1Args;
use zambac_ir::{NodeId, ValueRef};

use super::GraphLowering;
use crate::{KernelizeError, Mamba2Prefill, matrix};

/// Grid indices decode attention aims for: enough for every thread of a many-core host and
/// for a few warps on every SM of a GPU, so that one long cache is read in parallel even
/// when a model has few heads.
const DECODE_ITEMS: usize = 256;

/// The parts decode attention splits each head's keys into: `⌈DECODE_ITEMS / heads⌉`,
/// within the contract's bounds. Short caches use fewer (each split takes at least
/// [`zambac_engine::DECODE_SPLIT_MIN_KEYS`] keys).
fn decode_splits(heads: usize) -> usize {
    DECODE_ITEMS
        .div_ceil(heads.max(1))
        .clamp(1, zambac_engine::MAX_DECODE_SPLITS)
}

impl GraphLowering<'_> {
    pub(super) fn attention(
        &mut self,
        n: NodeId,
        a: &AttnAttrs,
        ops: &[ValueRef],
    ) -> Result<(), KernelizeError> {
        let (q, kc, vc) = (ops[0], ops[1], ops[2]);
        let out = n.out();
        let (heads, kvh, hd) = (a.heads, a.kv_heads, a.head_dim);
        let views = vec![self.view(q), self.view(kc), self.view(vc), self.view(out)];
        let t = self.rows(q);
        if ops.len() == 4 {
            // One token at `pos` (its row already written to the caches).
            if t != Expr::k(1) {
                return self.err("attention from a position is only generated for one token");
            }
            // Split along the sequence (flash-decoding): every split of every head is a
            // grid index writing a partial row, and a second kernel combines each head's.
            let splits = decode_splits(heads);
            let kind = KernelKind::AttentionDecode {
                heads,
                kv_heads: kvh,
                head_dim: hd,
                scale: a.scale,
                kv: self.storage.kv,
                splits,
            };
            let partial = self.new_scratch(Expr::k((heads * splits * (hd + 2)) as i64));
            let mut views = views;
            let out = std::mem::replace(&mut views[3], partial.clone());
            self.launch(
                "attention_decode",
                kind,
                Expr::k((heads * splits) as i64),
                views,
                vec![Expr::POS, Expr::C],
            );
            let combine = KernelKind::AttentionCombine {
                heads,
                head_dim: hd,
                splits,
            };
            self.launch(
                "attention_combine",
                combine,
                Expr::k(heads as i64),
                vec![partial, out],
                vec![],
            );
        } else {
            // T tokens from `pos` (0 for a new prompt; the rows were written to the caches
            // at pos..pos+T): query r attends keys 0..=pos+r, tiled over keys with an
            // online softmax, so no T×T scores exist anywhere.
            let kind = KernelKind::AttentionPrefill {
                heads,
                kv_heads: kvh,
                head_dim: hd,
                scale: a.scale,
                kv: self.storage.kv,
                products: self.storage.attention_products,
            };
            let grid = t.times(heads as i64);
            let ints = vec![Expr::POS, Expr::C, t];
            self.launch("attention_prefill", kind, grid, views, ints);
        }
        Ok(())
    }

    pub(super) fn mamba2(
        &mut self,
        n: NodeId,
        m: &Mamba2Attrs,
        ops: &[ValueRef],
        step: bool,
    ) -> Result<(), KernelizeError> {
        let s = m.ssd;
        let (di, gn) = (s.heads * s.head_dim, s.groups * s.state);
        let cd = di + 2 * gn;
        let zx = ops[0];
        let width = self.last(zx);
        let rows = self.rows(zx);
        let (y, conv_state, ssm_state) = (n.res(0), n.res(1), n.res(2));
        if step
            && (self.view(ops[7]) != self.view(conv_state)
                || self.view(ops[8]) != self.view(ssm_state))
        {
            return self.err("a Mamba step must update its states in place");
        }
        if step && rows == Expr::k(1) && self.storage.mamba2.fused_step {
            return self.mamba2_step(m, (zx, width), ops, (y, conv_state, ssm_state));
        }
        let xbc = self.new_scratch(rows.times(cd as i64));
        // Every program reads the incoming conv and SSM states: a new prompt's are zero, a
        // continued prefill's and a decode step's hold the sequence so far.
        let kind = KernelKind::Mamba2Conv {
            width,
            di,
            cd,
            k: m.conv,
            step: true,
        };
        let views = vec![
            self.view(zx),
            self.view(ops[1]),
            self.view(ops[2]),
            self.view(conv_state),
            xbc.clone(),
        ];
        self.launch("mamba2_conv", kind, Expr::k(cd as i64), views, vec![rows]);
        let yscan = self.new_scratch(rows.times(di as i64));
        if let (false, Mamba2Prefill::Chunked { chunks }) = (step, self.storage.mamba2.prefill) {
            let io = (xbc, yscan.clone(), self.view(ssm_state));
            self.chunked_scan(m, (zx, width, rows), io, ops, chunks);
        } else {
            let io = (xbc, yscan.clone(), self.view(ssm_state));
            self.sequential_scan(m, (zx, width, rows), io, ops);
        }
        let kind = KernelKind::Mamba2GateNorm {
            width,
            di,
            groups: s.groups,
            eps: m.norm_eps,
            conv_shift: None,
        };
        let views = vec![yscan, self.view(zx), self.view(ops[6]), self.view(y)];
        self.launch("mamba2_gate_norm", kind, rows, views, vec![]);
        Ok(())
    }

    /// A decode step of a Mamba2 mixer in two kernels: the conv and the scan in one
    /// ([`KernelKind::Mamba2ConvScan`], which only reads the conv state), then the gate norm,
    /// which also shifts the conv state by the step's input — one launch fewer than the
    /// conv, the scan and the norm apart would take, none for the xBC row in between.
    fn mamba2_step(
        &mut self,
        m: &Mamba2Attrs,
        (zx, width): (ValueRef, usize),
        ops: &[ValueRef],
        (y, conv_state, ssm_state): (ValueRef, ValueRef, ValueRef),
    ) -> Result<(), KernelizeError> {
        let s = m.ssd;
        let di = s.heads * s.head_dim;
        let cd = di + 2 * s.groups * s.state;
        let yscan = self.new_scratch(Expr::k(di as i64));
        let kind = KernelKind::Mamba2ConvScan {
            width,
            heads: s.heads,
            head_dim: s.head_dim,
            groups: s.groups,
            state: s.state,
            k: m.conv,
            dt_min: m.dt_min,
            ssm: self.storage.ssm,
        };
        let views = vec![
            self.view(zx),
            self.view(ops[1]),
            self.view(ops[2]),
            self.view(conv_state),
            self.view(ops[3]),
            self.view(ops[4]),
            self.view(ops[5]),
            yscan.clone(),
            self.view(ssm_state),
        ];
        let heads = Expr::k(s.heads as i64);
        self.launch("mamba2_conv_scan", kind, heads, views, vec![]);
        let kind = KernelKind::Mamba2GateNorm {
            width,
            di,
            groups: s.groups,
            eps: m.norm_eps,
            conv_shift: Some(ConvShift {
                channels: cd,
                k: m.conv,
            }),
        };
        let views = vec![
            yscan,
            self.view(zx),
            self.view(ops[6]),
            self.view(y),
            self.view(conv_state),
        ];
        self.launch("mamba2_gate_norm", kind, Expr::k(1), views, vec![]);
        Ok(())
    }

    /// The Mamba2 scan of a call as one kernel: `y = scan(xbc)`, continuing `state`.
    fn sequential_scan(
        &mut self,
        m: &Mamba2Attrs,
        (zx, width, rows): (ValueRef, usize, Expr),
        (xbc, yscan, state): (View, View, View),
        ops: &[ValueRef],
    ) {
        let s = m.ssd;
        let kind = KernelKind::Mamba2Scan {
            width,
            heads: s.heads,
            head_dim: s.head_dim,
            groups: s.groups,
            state: s.state,
            dt_min: m.dt_min,
            step: true,
            ssm: self.storage.ssm,
        };
        let views = vec![
            self.view(zx),
            xbc,
            self.view(ops[3]),
            self.view(ops[4]),
            self.view(ops[5]),
            yscan,
            state,
        ];
        self.launch(
            "mamba2_scan",
            kind,
            Expr::k(s.heads as i64),
            views,
            vec![rows],
        );
    }

    /// The Mamba2 scan of a prefill as the three kernels of the chunked scan
    /// ([`Mamba2Prefill::Chunked`]), through a workspace of `chunks` states per head.
    fn chunked_scan(
        &mut self,
        m: &Mamba2Attrs,
        (zx, width, rows): (ValueRef, usize, Expr),
        (xbc, yscan, state): (View, View, View),
        ops: &[ValueRef],
        chunks: usize,
    ) {
        let s = m.ssd;
        let per_chunk = s.heads * s.head_dim * s.state;
        let states = self.new_scratch(Expr::k((chunks * per_chunk) as i64));
        let decay = self.new_scratch(Expr::k((chunks * s.heads) as i64));
        let scan = |outputs| KernelKind::Mamba2ChunkScan {
            width,
            heads: s.heads,
            head_dim: s.head_dim,
            groups: s.groups,
            state: s.state,
            dt_min: m.dt_min,
            chunks,
            min_len: crate::CHUNK_MIN_TOKENS,
            outputs,
        };
        let grid = Expr::k((chunks * s.heads) as i64);
        let (dt_bias, a_log, d) = (self.view(ops[3]), self.view(ops[4]), self.view(ops[5]));
        let views = vec![
            self.view(zx),
            xbc.clone(),
            dt_bias.clone(),
            a_log.clone(),
            states.clone(),
            decay.clone(),
        ];
        self.launch("mamba2_chunk_scan", scan(false), grid, views, vec![rows]);
        let kind = KernelKind::Mamba2ChunkPass {
            heads: s.heads,
            head_dim: s.head_dim,
            state: s.state,
            chunks,
            min_len: crate::CHUNK_MIN_TOKENS,
            ssm: self.storage.ssm,
        };
        let views = vec![states.clone(), decay, state];
        self.launch(
            "mamba2_chunk_pass",
            kind,
            Expr::k(s.heads as i64),
            views,
            vec![rows],
        );
        let views = vec![self.view(zx), xbc, dt_bias, a_log, d, yscan, states];
        self.launch("mamba2_chunk_scan", scan(true), grid, views, vec![rows]);
    }

    pub(super) fn mamba1(
        &mut self,
        n: NodeId,
        m: &Mamba1Attrs,
        ops: &[ValueRef],
        step: bool,
    ) -> Result<(), KernelizeError> {
        let s = m.scan;
        let (nh, p, st, r) = (s.heads, s.head_dim, s.state, m.dt_rank);
        let di = nh * p;
        let w = r + 2 * st;
        let Some(args) = m.operands(step).pick(ops) else {
            return self.err(format!(
                "a Mamba1 mixer with {} operands does not match its attributes",
                ops.len()
            ));
        };
        let Mamba1Args {
            xz,
            conv_weight,
            conv_bias,
            x_proj,
            dt_proj_weight: dt_w,
            dt_proj_bias: dt_b,
            a_log,
            d,
            states,
        } = args.copied();
        let rows = self.rows(xz);
        let (y, conv_state, ssm_state) = (n.res(0), n.res(1), n.res(2));
        if let Some((conv_in, ssm_in)) = states
            && (self.view(conv_in) != self.view(conv_state)
                || self.view(ssm_in) != self.view(ssm_state))
        {
            return self.err("a Mamba step must update its states in place");
        }
        let xs = self.new_scratch(rows.times(di as i64));
        // As for Mamba2: every program reads the incoming states.
        let kind = KernelKind::Mamba1Conv {
            di,
            k: m.conv,
            bias: m.conv_bias,
            step: true,
        };
        let mut views = vec![self.view(xz), self.view(conv_weight)];
        views.extend(conv_bias.map(|b| self.view(b)));
        views.extend([self.view(conv_state), xs.clone()]);
        self.launch("mamba1_conv", kind, Expr::k(di as i64), views, vec![rows]);
        let bc = self.new_scratch(rows.times((nh * w) as i64));
        let dt = self.new_scratch(rows.times(di as i64));
        for h in 0..nh {
            let a = matrix(xs.clone(), (h * p) as i64, di as i64, 1);
            let b = matrix(self.view(x_proj), (h * w * p) as i64, 1, p as i64);
            let c = matrix(bc.clone(), (h * w) as i64, (nh * w) as i64, 1);
            self.gemm(rows, w, p, a, b, c, false);
        }
        for h in 0..nh {
            let a = matrix(bc.clone(), (h * w) as i64, (nh * w) as i64, 1);
            let b = matrix(self.view(dt_w), (h * p * r) as i64, 1, r as i64);
            let c = matrix(dt.clone(), (h * p) as i64, di as i64, 1);
            self.gemm(rows, p, r, a, b, c, false);
        }
        let kind = KernelKind::Mamba1Scan {
            heads: nh,
            head_dim: p,
            state: st,
            dt_rank: r,
            dt_min: m.dt_min,
            step: true,
            ssm: self.storage.ssm,
        };
        let views = vec![
            xs,
            dt,
            self.view(dt_b),
            self.view(a_log),
            bc,
            self.view(d),
            self.view(xz),
            self.view(ssm_state),
            self.view(y),
        ];
        self.launch("mamba1_scan", kind, Expr::k(di as i64), views, vec![rows]);
        Ok(())
    }
}
