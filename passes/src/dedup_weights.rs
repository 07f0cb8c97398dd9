//! `dedup-weights`: one copy of every shared tensor.
//!
//! Two parameters are the same tensor when they carry the same tie key (a shared block
//! seen through several invocations) or when their contents are known to be identical
//! (same element type, shape and content hash — e.g. the per-layer copies of a shared
//! block in an untied transformers-5.23 checkpoint). Every use is redirected to the first
//! of them, so all invocations read one parameter node, and the copies leave the table.
//! Afterwards an engine's weight bytes are the unique parameter bytes.

use std::collections::BTreeMap;

use zambac_ir::{Elem, Module, OpKind, ParamId};

use crate::manager::{Changed, Pass, PassCx, PassError};

pub struct DedupWeights;

impl Pass for DedupWeights {
    fn name(&self) -> &'static str {
        "dedup-weights"
    }

    fn summary(&self) -> &'static str {
        "give every shared or identical weight a single parameter"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let canon = canonical_ids(m)?;
        let merged: Vec<(usize, usize)> = canon
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != **c)
            .map(|(i, &c)| (i, c))
            .collect();
        if merged.is_empty() {
            return Ok(Changed::No);
        }
        let bytes: usize = merged.iter().map(|&(i, _)| m.params[i].bytes()).sum();
        for g in &mut m.graphs {
            let mut node_of: BTreeMap<u32, zambac_ir::NodeId> = BTreeMap::new();
            let param_nodes: Vec<_> = g
                .nodes()
                .filter(|&n| matches!(g.kind(n), OpKind::Param(_)))
                .collect();
            for &n in &param_nodes {
                if let OpKind::Param(p) = g.kind(n)
                    && canon[p.index()] == p.index()
                {
                    node_of.insert(p.0, n);
                }
            }
            for n in param_nodes {
                let OpKind::Param(p) = *g.kind(n) else {
                    continue;
                };
                let c = canon[p.index()];
                if c == p.index() {
                    continue;
                }
                match node_of.get(&(c as u32)) {
                    Some(&keep) => {
                        g.replace_all_uses(n.out(), keep.out());
                        g.remove_node(n);
                    }
                    None => {
                        g.node_mut(n).kind = OpKind::Param(ParamId(c as u32));
                        node_of.insert(c as u32, n);
                    }
                }
            }
        }
        m.compact_params();
        cx.stat(format!(
            "{} parameters merged ({} bytes)",
            merged.len(),
            bytes
        ));
        Ok(Changed::Yes)
    }
}

/// For every parameter, the index of the first parameter that is the same tensor: the
/// smallest index of its class under "same tie key" and "same content".
fn canonical_ids(m: &Module) -> Result<Vec<usize>, PassError> {
    let mut parent: Vec<usize> = (0..m.params.len()).collect();
    fn find(parent: &mut [usize], i: usize) -> usize {
        let mut r = i;
        while parent[r] != r {
            r = parent[r];
        }
        parent[i] = r;
        r
    }
    fn union(parent: &mut [usize], a: usize, b: usize) {
        let (ra, rb) = (find(parent, a), find(parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    }
    let mut by_tie: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_content: BTreeMap<(Elem, &[usize], u64), usize> = BTreeMap::new();
    for (i, p) in m.params.iter().enumerate() {
        if let Some(t) = &p.tie {
            let first = *by_tie.entry(t).or_insert(i);
            let f = &m.params[first];
            if f.shape != p.shape || f.elem != p.elem {
                return Err(PassError {
                    pass: "dedup-weights",
                    msg: format!(
                        "`{}` and `{}` are tied by `{t}` but have types {} and {}",
                        f.name,
                        p.name,
                        f.ty(),
                        p.ty()
                    ),
                });
            }
            union(&mut parent, first, i);
        }
        if let Some(h) = p.hash {
            let first = *by_content.entry((p.elem, &p.shape, h)).or_insert(i);
            union(&mut parent, first, i);
        }
    }
    Ok((0..m.params.len()).map(|i| find(&mut parent, i)).collect())
}
