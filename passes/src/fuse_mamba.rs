//! `fuse-mamba`: each Mamba mixer between `in_proj` and `out_proj` becomes one op.
//!
//! Mamba2: the in_proj split (z | xBC | dt), the causal conv1d + SiLU, the B/C split,
//! `softplus(dt + dt_bias)` with its clamp, the SSD scan, the D skip, the SiLU(z) gate and
//! the gated group RMSNorm → `mamba2_mix` (prefill, chunked scan from a zero state) or
//! `mamba2_step` (decode: one fused single-step update of the conv and SSM states).
//! Mamba1 likewise: the interleaved x/z split, conv + SiLU, the per-head x_proj and
//! dt_proj, softplus, the selective scan, the D skip and the SiLU(z) gate → `mamba1_mix`
//! / `mamba1_step`.
//!
//! Precondition: the mixer is written as `ir::build` writes it (operands of `add`/`mul`
//! in either order). A chain whose intermediate values are read elsewhere is left alone.
//! The fused op reads `in_proj`'s output once; the replaced ops are left for `dce`.

use zambac_ir::op::{Act, Mamba1Attrs, Mamba2Attrs, ScanAttrs, SsdAttrs};
use zambac_ir::operands::Mamba1Args;
use zambac_ir::{Graph, Loc, Module, NodeId, OpKind, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::{Matcher, find, is_slice, rewire};

pub struct FuseMamba;

impl Pass for FuseMamba {
    fn name(&self) -> &'static str {
        "fuse-mamba"
    }

    fn summary(&self) -> &'static str {
        "fuse each Mamba mixer (conv, dt, scan, D skip, gate, gated norm) into one op"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut fused = 0;
        for g in &mut m.graphs {
            let scans = find(g, |k| {
                matches!(
                    k,
                    OpKind::SsdScan(_)
                        | OpKind::SsdStep(_)
                        | OpKind::SelectiveScan(_)
                        | OpKind::SelectiveStep(_)
                )
            });
            for scan in scans {
                let plan = match g.kind(scan) {
                    OpKind::SsdScan(s) | OpKind::SsdStep(s) => match_mamba2(g, scan, *s),
                    OpKind::SelectiveScan(s) | OpKind::SelectiveStep(s) => {
                        match_mamba1(g, scan, *s)
                    }
                    _ => None,
                };
                if let Some(plan) = plan {
                    apply(g, plan).map_err(|msg| PassError {
                        pass: "fuse-mamba",
                        msg,
                    })?;
                    fused += 1;
                }
            }
        }
        if fused > 0 {
            cx.stat(format!("{fused} mixers fused"));
        }
        Ok(Changed::from(fused > 0))
    }
}

/// A matched mixer: the fused op to add and the values it replaces.
struct Fusion {
    kind: OpKind,
    operands: Vec<ValueRef>,
    loc: Loc,
    /// (old value, result index of the fused op)
    replaces: Vec<(ValueRef, u16)>,
}

fn apply(g: &mut Graph, f: Fusion) -> Result<(), String> {
    let n = g
        .add_op(f.kind, &f.operands, f.loc)
        .map_err(|e| e.to_string())?;
    let pairs: Vec<_> = f.replaces.iter().map(|&(old, r)| (old, n.res(r))).collect();
    rewire(g, &pairs);
    Ok(())
}

/// The operand of a binary op other than `known`, if `known` is one of its operands.
fn other(ops: &[ValueRef], known: ValueRef) -> Option<ValueRef> {
    match ops {
        [a, b] if *a == known => Some(*b),
        [a, b] if *b == known => Some(*a),
        _ => None,
    }
}

/// The Δ chain `[clamp_min](softplus(add(raw, bias)))`: returns (raw, bias, clamp).
fn match_dt(m: &mut Matcher, dt: ValueRef) -> Option<(ValueRef, ValueRef, Option<f64>)> {
    let (sp, clamp) = match m.g.kind(dt.node) {
        OpKind::ClampMin { min } => {
            let min = *min;
            let (_, ops) = m.op(dt, |_| true)?;
            (ops[0], Some(min))
        }
        _ => (dt, None),
    };
    let (_, ops) = m.op(sp, |k| matches!(k, OpKind::Act(Act::Softplus)))?;
    let (_, ops) = m.op(ops[0], |k| matches!(k, OpKind::Add))?;
    let bias = m.param(ops[1])?;
    Some((ops[0], bias, clamp))
}

/// The conv: prefill `causal_conv1d(x, w, [b])` + `conv_state(x)`, or decode
/// `conv_step(x, state, w, [b])`. Returns (conv output, conv input, weights, state in,
/// new-state value).
#[allow(clippy::type_complexity)]
fn match_conv(
    m: &mut Matcher,
    conv_out: ValueRef,
    kernel: usize,
    bias: bool,
) -> Option<(ValueRef, Vec<ValueRef>, Option<ValueRef>, ValueRef)> {
    match m.g.kind(conv_out.node) {
        OpKind::CausalConv1d { kernel: k, bias: b } if *k == kernel && *b == bias => {
            let (_, ops) = m.op(conv_out, |_| true)?;
            let x = ops[0];
            let weights: Vec<ValueRef> = ops[1..]
                .iter()
                .map(|&w| m.param(w))
                .collect::<Option<_>>()?;
            let state_users: Vec<NodeId> = m
                .g
                .value_users(x)
                .into_iter()
                .map(|(n, _)| n)
                .filter(|&n| matches!(m.g.kind(n), OpKind::ConvState { kernel: k } if *k == kernel))
                .collect();
            let [state] = state_users[..] else {
                return None;
            };
            m.take(state);
            Some((x, weights, None, state.out()))
        }
        OpKind::ConvStep { kernel: k, bias: b }
            if *k == kernel && *b == bias && conv_out.result == 0 =>
        {
            let (n, ops) = m.op(conv_out, |_| true)?;
            let weights: Vec<ValueRef> = ops[2..]
                .iter()
                .map(|&w| m.param(w))
                .collect::<Option<_>>()?;
            Some((ops[0], weights, Some(ops[1]), n.res(1)))
        }
        _ => None,
    }
}

fn match_mamba2(g: &Graph, scan: NodeId, s: SsdAttrs) -> Option<Fusion> {
    let mut m = Matcher::new(g);
    m.take(scan);
    let ops = g.operands(scan);
    let step = ops.len() == 6;
    let (di, gn) = (s.heads * s.head_dim, s.groups * s.state);
    let cd = di + 2 * gn;
    // x, B, C: slices of silu(conv(xBC)).
    let (_, xo) = m.op(ops[0], |k| is_slice(k, 1, 0, di, 1))?;
    let act = xo[0];
    m.op(ops[3], |k| is_slice(k, 1, di, di + gn, 1))
        .filter(|(_, o)| o[0] == act)?;
    m.op(ops[4], |k| is_slice(k, 1, di + gn, cd, 1))
        .filter(|(_, o)| o[0] == act)?;
    let (_, ao) = m.op(act, |k| matches!(k, OpKind::Act(Act::Silu)))?;
    let kernel = match g.kind(ao[0].node) {
        OpKind::CausalConv1d { kernel, .. } | OpKind::ConvStep { kernel, .. } => *kernel,
        _ => return None,
    };
    let (xbc, conv_w, conv_state_in, conv_state) = match_conv(&mut m, ao[0], kernel, true)?;
    let (_, xo) = m.op(xbc, |k| is_slice(k, 1, di, di + cd, 1))?;
    let zx = xo[0];
    let (dt_raw, dt_bias, dt_min) = match_dt(&mut m, ops[1])?;
    m.op(dt_raw, |k| is_slice(k, 1, di + cd, di + cd + s.heads, 1))
        .filter(|(_, o)| o[0] == zx)?;
    let a_log = m.param(ops[2])?;
    // y + D·x, gated by silu(z), group-normalised.
    let y = scan.res(0);
    let (add, add_ops) = m.sole_user(y, |k| matches!(k, OpKind::Add))?;
    let (_, so) = m.op(other(&add_ops, y)?, |k| {
        matches!(k, OpKind::ScaleHeads { .. })
    })?;
    if so[0] != ops[0] {
        return None;
    }
    let d = m.param(so[1])?;
    let (mul, mul_ops) = m.sole_user(add.out(), |k| matches!(k, OpKind::Mul))?;
    let (_, go) = m.op(other(&mul_ops, add.out())?, |k| {
        matches!(k, OpKind::Act(Act::Silu))
    })?;
    m.op(go[0], |k| is_slice(k, 1, 0, di, 1))
        .filter(|(_, o)| o[0] == zx)?;
    let (norm, no) = m.sole_user(mul.out(), |k| matches!(k, OpKind::GroupRmsNorm { .. }))?;
    let OpKind::GroupRmsNorm { groups, eps } = g.kind(norm) else {
        return None;
    };
    if *groups != s.groups {
        return None;
    }
    let norm_w = m.param(no[1])?;
    let escaping = [norm.out(), conv_state, scan.res(1)];
    if !m.closed(&escaping) || conv_w.len() != 2 {
        return None;
    }
    let attrs = Mamba2Attrs {
        ssd: s,
        conv: kernel,
        chunk: CHUNK,
        dt_min,
        norm_eps: *eps,
    };
    let mut operands = vec![zx, conv_w[0], conv_w[1], dt_bias, a_log, d, norm_w];
    if step {
        operands.extend([conv_state_in?, ops[5]]);
    }
    Some(Fusion {
        kind: if step {
            OpKind::Mamba2Step(attrs)
        } else {
            OpKind::Mamba2Mix(attrs)
        },
        operands,
        loc: g.node(scan).loc,
        replaces: vec![(norm.out(), 0), (conv_state, 1), (scan.res(1), 2)],
    })
}

/// Chunk length of the fused prefill scan. The IR builder's graphs carry no chunk size
/// (it has no mathematical effect), so the fused op uses the Zamba2 default.
const CHUNK: usize = 256;

fn match_mamba1(g: &Graph, scan: NodeId, s: ScanAttrs) -> Option<Fusion> {
    let mut m = Matcher::new(g);
    m.take(scan);
    let ops = g.operands(scan);
    let step = ops.len() == 6;
    let di = s.heads * s.head_dim;
    let n = s.state;
    let x3 = ops[0];
    let (_, ro) = m.op(x3, |k| matches!(k, OpKind::Reshape { .. }))?;
    let (_, ao) = m.op(ro[0], |k| matches!(k, OpKind::Act(Act::Silu)))?;
    let (kernel, bias) = match g.kind(ao[0].node) {
        OpKind::CausalConv1d { kernel, bias } | OpKind::ConvStep { kernel, bias } => {
            (*kernel, *bias)
        }
        _ => return None,
    };
    let (x, conv_w, conv_state_in, conv_state) = match_conv(&mut m, ao[0], kernel, bias)?;
    let (_, xo) = m.op(x, |k| is_slice(k, 1, 0, 2 * di, 2))?;
    let xz = xo[0];
    // B and C from the per-head x_proj.
    let (_, bo) = m.op(ops[3], |k| {
        matches!(
            k,
            OpKind::Slice {
                axis: 2,
                stride: 1,
                ..
            }
        )
    })?;
    let proj = bo[0];
    let (_, po) = m.op(proj, |k| matches!(k, OpKind::HeadLinear { .. }))?;
    if po[0] != x3 {
        return None;
    }
    let x_proj = m.param(po[1])?;
    let r = g.ty(proj).dims[2].as_const()? - 2 * n;
    if !is_slice(g.kind(ops[3].node), 2, r, r + n, 1) {
        return None;
    }
    m.op(ops[4], |k| is_slice(k, 2, r + n, r + 2 * n, 1))
        .filter(|(_, o)| o[0] == proj)?;
    // Δ = softplus(dt_proj(δr) + bias).
    let (dt_lin, dt_b, dt_min) = match_dt(&mut m, ops[1])?;
    let (_, lo) = m.op(dt_lin, |k| matches!(k, OpKind::HeadLinear { .. }))?;
    let dt_w = m.param(lo[1])?;
    m.op(lo[0], |k| is_slice(k, 2, 0, r, 1))
        .filter(|(_, o)| o[0] == proj)?;
    let a_log = m.param(ops[2])?;
    // y + D·x, back to [T, d_inner], gated by silu(z).
    let y = scan.res(0);
    let (add, add_ops) = m.sole_user(y, |k| matches!(k, OpKind::Add))?;
    let (_, mo) = m.op(other(&add_ops, y)?, |k| matches!(k, OpKind::Mul))?;
    let d = m.param(other(&mo, x3)?)?;
    let (reshape, _) = m.sole_user(add.out(), |k| matches!(k, OpKind::Reshape { .. }))?;
    let (mul, mul_ops) = m.sole_user(reshape.out(), |k| matches!(k, OpKind::Mul))?;
    let (_, go) = m.op(other(&mul_ops, reshape.out())?, |k| {
        matches!(k, OpKind::Act(Act::Silu))
    })?;
    m.op(go[0], |k| is_slice(k, 1, 1, 2 * di, 2))
        .filter(|(_, o)| o[0] == xz)?;
    let escaping = [mul.out(), conv_state, scan.res(1)];
    if !m.closed(&escaping) {
        return None;
    }
    let attrs = Mamba1Attrs {
        scan: s,
        conv: kernel,
        conv_bias: bias,
        dt_rank: r,
        dt_min,
    };
    let states = if step {
        Some((conv_state_in?, ops[5]))
    } else {
        None
    };
    let operands = Mamba1Args {
        xz,
        conv_weight: *conv_w.first()?,
        conv_bias: conv_w.get(1).copied(),
        x_proj,
        dt_proj_weight: dt_w,
        dt_proj_bias: dt_b,
        a_log,
        d,
        states,
    };
    Some(Fusion {
        kind: if step {
            OpKind::Mamba1Step(attrs)
        } else {
            OpKind::Mamba1Mix(attrs)
        },
        operands: operands.into_vec(),
        loc: g.node(scan).loc,
        replaces: vec![(mul.out(), 0), (conv_state, 1), (scan.res(1), 2)],
    })
}
