//! `fuse-epilogues`: cheap pointwise work moves into the op that produces its input.
//!
//! - RoPE into the q/k projection: `rope(linear(..)[, pos])` → `linear{epi=rope}`.
//! - The MLP gate: `act(gu[:, :F]) ⊙ gu[:, F:]` with `gu = linear(..)` →
//!   `linear{epi=<act>_gate}` (Zamba2's fused gate_up_proj); `act(linear(..))` →
//!   `linear{epi=<act>}` and `g ⊙ linear(..)` → `linear{epi=mul}` (Zamba v1's separate
//!   gate and up projections).
//! - Residual add + RMSNorm: `rms_norm(a + b)` → `add_rms_norm` (both the sum, which
//!   stays the residual stream, and the normalised value in one pass).
//! - The embedding concatenation: `rms_norm(concat(h, emb))` → `concat_rms_norm`, which
//!   normalises the two halves in place of a materialised `[T, 2H]` copy.
//!
//! Run after `fuse-adapters` so RoPE and gates attach to the fused adapter projection.

use zambac_ir::op::{Act, Epilogue, LinearAttrs};
use zambac_ir::{Graph, Module, NodeId, OpKind, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::{Matcher, find, is_slice, rewire};

pub struct FuseEpilogues;

/// A rewrite: add `kind(operands)` and replace `old[i]` by its result `i`.
struct Rewrite {
    kind: OpKind,
    operands: Vec<ValueRef>,
    at: NodeId,
    old: Vec<ValueRef>,
}

type Rule = fn(&Graph, NodeId) -> Option<Rewrite>;

/// Rules in priority order, each with the name its statistic uses.
const RULES: [(&str, Rule); 6] = [
    ("rope", rope),
    ("act-gate", act_gate),
    ("act", act),
    ("mul", mul),
    ("add+rms_norm", add_rms_norm),
    ("concat+rms_norm", concat_rms_norm),
];

impl Pass for FuseEpilogues {
    fn name(&self) -> &'static str {
        "fuse-epilogues"
    }

    fn summary(&self) -> &'static str {
        "fuse RoPE, MLP gates, residual add + RMSNorm and the embedding concat into producers"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut total = 0;
        for (name, rule) in RULES {
            let mut count = 0;
            for g in &mut m.graphs {
                for n in find(g, |_| true) {
                    if !g.contains(n) {
                        continue;
                    }
                    if let Some(rw) = rule(g, n) {
                        let loc = g.node(rw.at).loc;
                        let new = g
                            .add_op(rw.kind, &rw.operands, loc)
                            .map_err(|e| PassError {
                                pass: "fuse-epilogues",
                                msg: e.to_string(),
                            })?;
                        let pairs: Vec<_> = rw
                            .old
                            .iter()
                            .enumerate()
                            .map(|(i, &o)| (o, new.res(i as u16)))
                            .collect();
                        rewire(g, &pairs);
                        count += 1;
                    }
                }
            }
            if count > 0 {
                cx.stat(format!("{count} × {name}"));
            }
            total += count;
        }
        Ok(Changed::from(total > 0))
    }
}

/// The attributes of `v`'s producer if it is a linear without an epilogue whose result
/// nothing else reads.
fn bare_linear(g: &Graph, v: ValueRef) -> Option<LinearAttrs> {
    match g.kind(v.node) {
        OpKind::Linear(a) if a.epilogue == Epilogue::None && g.use_count(v) == 1 => Some(a.clone()),
        _ => None,
    }
}

/// `lin`'s producer with epilogue `epi` reading `operand`; `None` if its operands do not
/// match its attributes.
fn with_epilogue(
    g: &Graph,
    lin: ValueRef,
    attrs: LinearAttrs,
    epi: Epilogue,
    operand: Option<ValueRef>,
) -> Option<(OpKind, Vec<ValueRef>)> {
    let ops = g.operands(lin.node);
    let mut args = attrs.operands().pick(&ops)?.copied();
    args.epilogue = operand;
    let attrs = LinearAttrs {
        epilogue: epi,
        ..attrs
    };
    Some((OpKind::Linear(attrs), args.into_vec()))
}

fn rope(g: &Graph, n: NodeId) -> Option<Rewrite> {
    let OpKind::Rope(r) = g.kind(n) else {
        return None;
    };
    let ops = g.operands(n);
    let attrs = bare_linear(g, ops[0])?;
    let pos = ops.get(1).copied();
    let (kind, operands) = with_epilogue(g, ops[0], attrs, Epilogue::Rope(r.clone()), pos)?;
    Some(Rewrite {
        kind,
        operands,
        at: n,
        old: vec![n.out()],
    })
}

fn act_gate(g: &Graph, n: NodeId) -> Option<Rewrite> {
    if !matches!(g.kind(n), OpKind::Mul) {
        return None;
    }
    let ops = g.operands(n);
    let mut m = Matcher::new(g);
    let (_, ao) = m.op(
        ops[0],
        |k| matches!(k, OpKind::Act(a) if *a != Act::Softplus),
    )?;
    let OpKind::Act(a) = *g.kind(ops[0].node) else {
        return None;
    };
    let (_, go) = m.op(ao[0], |k| matches!(k, OpKind::Slice { .. }))?;
    let (_, uo) = m.op(ops[1], |k| matches!(k, OpKind::Slice { .. }))?;
    let gu = go[0];
    if uo[0] != gu {
        return None;
    }
    let OpKind::Linear(attrs) = g.kind(gu.node).clone() else {
        return None;
    };
    if attrs.epilogue != Epilogue::None {
        return None;
    }
    let width = g.ty(gu).last()?.as_const()?;
    let f = width / 2;
    if width % 2 != 0
        || !is_slice(g.kind(ao[0].node), 1, 0, f, 1)
        || !is_slice(g.kind(ops[1].node), 1, f, width, 1)
    {
        return None;
    }
    m.take(n);
    m.take(gu.node);
    if !m.closed(&[n.out()]) {
        return None;
    }
    let (kind, operands) = with_epilogue(g, gu, attrs, Epilogue::ActGate(a), None)?;
    Some(Rewrite {
        kind,
        operands,
        at: n,
        old: vec![n.out()],
    })
}

fn act(g: &Graph, n: NodeId) -> Option<Rewrite> {
    let OpKind::Act(a) = *g.kind(n) else {
        return None;
    };
    let x = g.operands(n)[0];
    let attrs = bare_linear(g, x)?;
    let (kind, operands) = with_epilogue(g, x, attrs, Epilogue::Act(a), None)?;
    Some(Rewrite {
        kind,
        operands,
        at: n,
        old: vec![n.out()],
    })
}

fn mul(g: &Graph, n: NodeId) -> Option<Rewrite> {
    if !matches!(g.kind(n), OpKind::Mul) {
        return None;
    }
    let ops = g.operands(n);
    if g.ty(ops[0]) != g.ty(ops[1]) {
        return None;
    }
    for (lin, other) in [(ops[1], ops[0]), (ops[0], ops[1])] {
        if let Some(attrs) = bare_linear(g, lin) {
            if other.node == lin.node {
                continue;
            }
            let (kind, operands) = with_epilogue(g, lin, attrs, Epilogue::Mul, Some(other))?;
            return Some(Rewrite {
                kind,
                operands,
                at: n,
                old: vec![n.out()],
            });
        }
    }
    None
}

fn add_rms_norm(g: &Graph, n: NodeId) -> Option<Rewrite> {
    let OpKind::RmsNorm { eps } = *g.kind(n) else {
        return None;
    };
    let ops = g.operands(n);
    let sum = ops[0];
    if !matches!(g.kind(sum.node), OpKind::Add) {
        return None;
    }
    let ao = g.operands(sum.node);
    if g.ty(ao[0]) != g.ty(ao[1]) {
        return None;
    }
    Some(Rewrite {
        kind: OpKind::AddRmsNorm { eps },
        operands: vec![ao[0], ao[1], ops[1]],
        at: n,
        old: vec![sum, n.out()],
    })
}

fn concat_rms_norm(g: &Graph, n: NodeId) -> Option<Rewrite> {
    let OpKind::RmsNorm { eps } = *g.kind(n) else {
        return None;
    };
    let ops = g.operands(n);
    let cat = ops[0];
    let last = g.ty(cat).rank().checked_sub(1)?;
    if !matches!(g.kind(cat.node), OpKind::Concat { axis } if *axis == last)
        || g.use_count(cat) != 1
    {
        return None;
    }
    let co = g.operands(cat.node);
    Some(Rewrite {
        kind: OpKind::ConcatRmsNorm { eps },
        operands: vec![co[0], co[1], ops[1]],
        at: n,
        old: vec![n.out()],
    })
}
