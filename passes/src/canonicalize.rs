//! `canonicalize`: local simplifications that give later patterns one form to match.
//!
//! - A slice that keeps a whole axis (start 0, end = size, stride 1) is its operand.
//! - A slice of a slice along the same axis is one slice.
//! - A reshape to the operand's own shape is the operand; a reshape of a reshape is one.
//! - Common subexpressions: two ops of the same kind on the same operands are one
//!   (every op is pure, so this is always sound).

use std::collections::BTreeMap;

use zambac_ir::{Graph, Module, NodeId, OpKind, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::rewire;

pub struct Canonicalize;

impl Pass for Canonicalize {
    fn name(&self) -> &'static str {
        "canonicalize"
    }

    fn summary(&self) -> &'static str {
        "fold identity and nested views, merge identical ops"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let (mut folded, mut merged) = (0, 0);
        for g in &mut m.graphs {
            // A fold can expose another (a merged reshape may be an identity): repeat
            // until nothing changes. Every fold removes an op, so this terminates.
            loop {
                let mut round = 0;
                for n in g.order() {
                    if g.contains(n)
                        && fold(g, n).map_err(|msg| PassError {
                            pass: "canonicalize",
                            msg,
                        })?
                    {
                        round += 1;
                    }
                }
                folded += round;
                if round == 0 {
                    break;
                }
            }
            merged += cse(g);
        }
        if folded + merged > 0 {
            cx.stat(format!(
                "{folded} views folded, {merged} duplicate ops merged"
            ));
        }
        Ok(Changed::from(folded + merged > 0))
    }
}

/// Applies one folding rule at `n`, if any matches.
fn fold(g: &mut Graph, n: NodeId) -> Result<bool, String> {
    let kind = g.kind(n).clone();
    let ops = g.operands(n);
    match kind {
        OpKind::Slice {
            axis,
            start,
            end,
            stride,
        } => {
            let x = ops[0];
            if start == 0 && stride == 1 && g.ty(x).dims[axis].as_const() == Some(end) {
                rewire(g, &[(n.out(), x)]);
                return Ok(true);
            }
            if let OpKind::Slice {
                axis: a2,
                start: s2,
                stride: st2,
                ..
            } = *g.kind(x.node)
                && a2 == axis
            {
                // Element i of the outer slice is element start + i·stride of the inner
                // one, i.e. s2 + (start + i·stride)·st2 of the base.
                let count = (end - start).div_ceil(stride);
                let new_start = s2 + start * st2;
                let new_stride = stride * st2;
                let new_end = new_start + (count - 1) * new_stride + 1;
                let base = g.operands(x.node)[0];
                let k = OpKind::Slice {
                    axis,
                    start: new_start,
                    end: new_end,
                    stride: new_stride,
                };
                let loc = g.node(n).loc;
                let m = g.add_op(k, &[base], loc).map_err(|e| e.to_string())?;
                rewire(g, &[(n.out(), m.out())]);
                return Ok(true);
            }
            Ok(false)
        }
        OpKind::Reshape { dims } => {
            let x = ops[0];
            if g.ty(x).dims == dims {
                rewire(g, &[(n.out(), x)]);
                return Ok(true);
            }
            if matches!(g.kind(x.node), OpKind::Reshape { .. }) {
                let base = g.operands(x.node)[0];
                let loc = g.node(n).loc;
                let m = g
                    .add_op(OpKind::Reshape { dims }, &[base], loc)
                    .map_err(|e| e.to_string())?;
                rewire(g, &[(n.out(), m.out())]);
                return Ok(true);
            }
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// Merges ops with equal kinds and operands, keeping the first in canonical order.
fn cse(g: &mut Graph) -> usize {
    let mut seen: BTreeMap<String, NodeId> = BTreeMap::new();
    let mut merged = 0;
    for n in g.order() {
        if !g.contains(n) || g.kind(n).is_leaf() {
            continue;
        }
        // The printed attributes identify a kind exactly (the text form round-trips).
        let key = format!("{:?}|{:?}", g.kind(n), g.operands(n));
        match seen.get(&key) {
            Some(&first) => {
                let pairs: Vec<(ValueRef, ValueRef)> = (0..g.node(n).results.len())
                    .map(|r| (n.res(r as u16), first.res(r as u16)))
                    .collect();
                rewire(g, &pairs);
                merged += 1;
            }
            None => {
                seen.insert(key, n);
            }
        }
    }
    merged
}
