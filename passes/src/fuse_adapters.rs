//! `fuse-adapters`: `x·Wᵀ + (x·Aᵀ)·Bᵀ` → one `linear{lora}`.
//!
//! The shared projection `W` and the invocation's down-projection `A` read the same input,
//! so the fused op computes them in one pass over `x` (a product with the row
//! concatenation `[W; A]`, formed by the kernel from the two parameters — the shared `W`
//! stays stored once), and adds the up-projection `(x·Aᵀ)·Bᵀ` in its epilogue.
//!
//! Matches `add(linear(x, W[, b]), linear(linear(x, A), B))` with plain linears and
//! parameter weights, operands of the add in either order; the intermediate values must
//! have no other users.

use zambac_ir::op::{Epilogue, LinearAttrs};
use zambac_ir::{Graph, Module, NodeId, OpKind, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::{Matcher, find, rewire};

pub struct FuseAdapters;

impl Pass for FuseAdapters {
    fn name(&self) -> &'static str {
        "fuse-adapters"
    }

    fn summary(&self) -> &'static str {
        "fuse LoRA adapters into their shared projection (one pass over the input)"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut fused = 0;
        for g in &mut m.graphs {
            for add in find(g, |k| matches!(k, OpKind::Add)) {
                if let Some((operands, attrs)) = match_lora(g, add) {
                    let loc = g.node(add).loc;
                    let n = g
                        .add_op(OpKind::Linear(attrs), &operands, loc)
                        .map_err(|e| PassError {
                            pass: "fuse-adapters",
                            msg: e.to_string(),
                        })?;
                    rewire(g, &[(add.out(), n.out())]);
                    fused += 1;
                }
            }
        }
        if fused > 0 {
            cx.stat(format!("{fused} adapters fused"));
        }
        Ok(Changed::from(fused > 0))
    }
}

fn plain(k: &OpKind) -> Option<LinearAttrs> {
    match k {
        OpKind::Linear(a) if !a.lora && a.epilogue == Epilogue::None => Some(a.clone()),
        _ => None,
    }
}

/// Operands and attributes of the fused linear for the adapter sum at `add`.
fn match_lora(g: &Graph, add: NodeId) -> Option<(Vec<ValueRef>, LinearAttrs)> {
    let ops = g.operands(add);
    for (base, up) in [(ops[0], ops[1]), (ops[1], ops[0])] {
        let mut m = Matcher::new(g);
        m.take(add);
        let Some(attrs) = plain(g.kind(base.node)) else {
            continue;
        };
        let Some((_, bo)) = m.op(base, |k| plain(k).is_some()) else {
            continue;
        };
        let Some((_, uo)) = m.op(up, |k| plain(k).is_some_and(|a| !a.bias)) else {
            continue;
        };
        let Some((_, do_)) = m.op(uo[0], |k| plain(k).is_some_and(|a| !a.bias)) else {
            continue;
        };
        let x = bo[0];
        if do_[0] != x
            || m.param(bo[1]).is_none()
            || m.param(do_[1]).is_none()
            || m.param(uo[1]).is_none()
        {
            continue;
        }
        if !m.closed(&[add.out()]) {
            continue;
        }
        let mut args = attrs.operands().pick(&bo)?.copied();
        args.lora = Some((do_[1], uo[1]));
        return Some((
            args.into_vec(),
            LinearAttrs {
                lora: true,
                ..attrs
            },
        ));
    }
    None
}
