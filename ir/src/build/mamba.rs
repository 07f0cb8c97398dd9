//! The Mamba mixers as primitive ops: Mamba2 (spec §2.3) and Zamba v1's multi-head
//! Mamba1 (spec §2.4), in prefill (scan from a zero state) and decode (one step) form.

use super::{BuildError, GraphBuilder, Mode};
use crate::graph::ValueRef;
use crate::op::{Act, OpKind, ScanAttrs, SsdAttrs};
use crate::types::{Dim, T};
use zambac_engine::StateRole;

/// ε of Mamba2's gated RMSNorm: hard-coded in HF, not `rms_norm_eps` (spec §6.2).
pub const GATED_NORM_EPS: f64 = 1e-5;

impl GraphBuilder<'_> {
    /// `Mixer_l(u)`: the layer's Mamba mixer on the normalised input `u`, returning the
    /// mixer output (before the residual add) and recording the layer's states.
    pub(super) fn mixer(
        &mut self,
        l: usize,
        prefix: &str,
        u: ValueRef,
    ) -> Result<ValueRef, BuildError> {
        let p = format!("{prefix}mamba.");
        let (y, conv_state, ssm_state) = if self.spec.mamba.version == 2 {
            self.mamba2(l, &p, u)?
        } else {
            self.mamba1(l, &p, u)?
        };
        self.emit_state(StateRole::Conv { layer: l }, conv_state);
        self.emit_state(StateRole::Ssm { layer: l }, ssm_state);
        let (h, d_inner) = (self.spec.hidden_size, self.spec.mamba.d_inner);
        let w = self.weight(&format!("{p}out_proj.weight"), &[h, d_inner], None);
        let b = self.proj_bias(&format!("{p}out_proj.bias"), h);
        self.linear_bias(y, w, b)
    }

    fn proj_bias(&mut self, name: &str, n: usize) -> Option<ValueRef> {
        self.spec
            .mamba
            .proj_bias
            .then(|| self.weight(name, &[n], None))
    }

    /// The depthwise causal conv + SiLU over `x`; returns (activated output, new state).
    fn conv(
        &mut self,
        l: usize,
        p: &str,
        x: ValueRef,
        channels: usize,
        bias: bool,
    ) -> Result<(ValueRef, ValueRef), BuildError> {
        let k = self.spec.mamba.d_conv;
        let mut ops = vec![];
        let w = self.weight(&format!("{p}conv1d.weight"), &[channels, 1, k], None);
        let b = bias.then(|| self.weight(&format!("{p}conv1d.bias"), &[channels], None));
        let (c, state) = match self.mode {
            Mode::Prefill => {
                ops.extend([x, w]);
                ops.extend(b);
                let c = self.op(OpKind::CausalConv1d { kernel: k, bias }, &ops)?;
                let s = self.op(OpKind::ConvState { kernel: k }, &[x])?;
                (c, s)
            }
            Mode::Decode => {
                ops.extend([x, self.state(StateRole::Conv { layer: l })?, w]);
                ops.extend(b);
                let n = self.op_node(OpKind::ConvStep { kernel: k, bias }, &ops)?;
                (n.res(0), n.res(1))
            }
        };
        Ok((self.op(OpKind::Act(Act::Silu), &[c])?, state))
    }

    /// Whether this graph's Δ goes through the `time_step_min` clamp (spec §5.3, §6.3).
    fn clamps_dt(&self) -> bool {
        let c = self.spec.mamba.dt_clamp;
        match self.mode {
            Mode::Prefill => c.in_prefill(),
            Mode::Decode => c.in_decode(),
        }
    }

    fn mamba2(
        &mut self,
        l: usize,
        p: &str,
        u: ValueRef,
    ) -> Result<(ValueRef, ValueRef, ValueRef), BuildError> {
        let m = self.spec.mamba.clone();
        let (di, cd, nh) = (m.d_inner, m.conv_dim(), m.n_heads);
        let gn = m.n_groups * m.d_state;
        let w = self.weight(
            &format!("{p}in_proj.weight"),
            &[m.in_proj_rows(), self.spec.hidden_size],
            None,
        );
        let b = self.proj_bias(&format!("{p}in_proj.bias"), m.in_proj_rows());
        let zxbcdt = self.linear_bias(u, w, b)?;
        let z = self.slice(zxbcdt, 0, di)?;
        let xbc = self.slice(zxbcdt, di, di + cd)?;
        let dt = self.slice(zxbcdt, di + cd, di + cd + nh)?;
        // Zamba2's conv always has a bias: HF builds it whatever `use_conv_bias` says.
        let (xbc, conv_state) = self.conv(l, p, xbc, cd, true)?;
        let x = self.slice(xbc, 0, di)?;
        let bm = self.slice(xbc, di, di + gn)?;
        let cm = self.slice(xbc, di + gn, cd)?;
        let dt_bias = self.weight(&format!("{p}dt_bias"), &[nh], None);
        let dt = self.op(OpKind::Add, &[dt, dt_bias])?;
        let mut dt = self.op(OpKind::Act(Act::Softplus), &[dt])?;
        if self.clamps_dt() {
            dt = self.op(
                OpKind::ClampMin {
                    min: m.time_step_min,
                },
                &[dt],
            )?;
        }
        let a_log = self.weight(&format!("{p}A_log"), &[nh], None);
        let attrs = SsdAttrs {
            heads: nh,
            head_dim: m.head_dim,
            groups: m.n_groups,
            state: m.d_state,
        };
        let scan = match self.mode {
            Mode::Prefill => self.op_node(OpKind::SsdScan(attrs), &[x, dt, a_log, bm, cm])?,
            Mode::Decode => {
                let s = self.state(StateRole::Ssm { layer: l })?;
                self.op_node(OpKind::SsdStep(attrs), &[x, dt, a_log, bm, cm, s])?
            }
        };
        let d = self.weight(&format!("{p}D"), &[nh], None);
        let skip = self.op(OpKind::ScaleHeads { heads: nh }, &[x, d])?;
        let y = self.op(OpKind::Add, &[scan.res(0), skip])?;
        let gate = self.op(OpKind::Act(Act::Silu), &[z])?;
        let y = self.op(OpKind::Mul, &[y, gate])?;
        let norm = self.weight(&format!("{p}norm.weight"), &[di], None);
        let y = self.op(
            OpKind::GroupRmsNorm {
                groups: m.n_groups,
                eps: GATED_NORM_EPS,
            },
            &[y, norm],
        )?;
        Ok((y, conv_state, scan.res(1)))
    }

    fn mamba1(
        &mut self,
        l: usize,
        p: &str,
        u: ValueRef,
    ) -> Result<(ValueRef, ValueRef, ValueRef), BuildError> {
        let m = self.spec.mamba.clone();
        let (di, nh, hd, n, r) = (m.d_inner, m.n_heads, m.head_dim, m.d_state, m.dt_rank);
        let t: Dim = match self.mode {
            Mode::Prefill => T,
            Mode::Decode => 1.into(),
        };
        let w = self.weight(
            &format!("{p}in_proj.weight"),
            &[2 * di, self.spec.hidden_size],
            None,
        );
        let b = self.proj_bias(&format!("{p}in_proj.bias"), 2 * di);
        let xz = self.linear_bias(u, w, b)?;
        // HF views the projection as [d_inner, 2]: x and z rows are interleaved (spec §2.4).
        let strided = |start| OpKind::Slice {
            axis: 1,
            start,
            end: 2 * di,
            stride: 2,
        };
        let x = self.op(strided(0), &[xz])?;
        let z = self.op(strided(1), &[xz])?;
        let (x, conv_state) = self.conv(l, p, x, di, m.conv_bias)?;
        let x = self.op(
            OpKind::Reshape {
                dims: vec![t, nh.into(), hd.into()],
            },
            &[x],
        )?;
        let x_proj = self.weight(&format!("{p}x_proj_weight"), &[nh, r + 2 * n, hd], None);
        let s = self.op(OpKind::HeadLinear { heads: nh }, &[x, x_proj])?;
        let axis2 = |start, end| OpKind::Slice {
            axis: 2,
            start,
            end,
            stride: 1,
        };
        let dr = self.op(axis2(0, r), &[s])?;
        let bm = self.op(axis2(r, r + n), &[s])?;
        let cm = self.op(axis2(r + n, r + 2 * n), &[s])?;
        let dt_w = self.weight(&format!("{p}dt_proj_weight"), &[nh, hd, r], None);
        let dt = self.op(OpKind::HeadLinear { heads: nh }, &[dr, dt_w])?;
        let dt_b = self.weight(&format!("{p}dt_proj_bias"), &[nh, hd], None);
        let dt = self.op(OpKind::Add, &[dt, dt_b])?;
        let mut dt = self.op(OpKind::Act(Act::Softplus), &[dt])?;
        if self.clamps_dt() {
            dt = self.op(
                OpKind::ClampMin {
                    min: m.time_step_min,
                },
                &[dt],
            )?;
        }
        let a_log = self.weight(&format!("{p}A_log"), &[nh, hd, n], None);
        let attrs = ScanAttrs {
            heads: nh,
            head_dim: hd,
            state: n,
        };
        let scan = match self.mode {
            Mode::Prefill => self.op_node(OpKind::SelectiveScan(attrs), &[x, dt, a_log, bm, cm])?,
            Mode::Decode => {
                let st = self.state(StateRole::Ssm { layer: l })?;
                self.op_node(OpKind::SelectiveStep(attrs), &[x, dt, a_log, bm, cm, st])?
            }
        };
        let d = self.weight(&format!("{p}D"), &[nh, hd], None);
        let skip = self.op(OpKind::Mul, &[x, d])?;
        let y = self.op(OpKind::Add, &[scan.res(0), skip])?;
        let y = self.op(
            OpKind::Reshape {
                dims: vec![t, di.into()],
            },
            &[y],
        )?;
        let gate = self.op(OpKind::Act(Act::Silu), &[z])?;
        let y = self.op(OpKind::Mul, &[y, gate])?;
        Ok((y, conv_state, scan.res(1)))
    }
}
