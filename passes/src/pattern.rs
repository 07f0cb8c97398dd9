//! Small helpers for matching op patterns in a graph.
//!
//! A [`Matcher`] walks from a root through producers, checking each op's kind and
//! remembering every node it matched, so a fusion can finally check the pattern is
//! *closed*: nothing outside it reads an intermediate value.

use std::collections::BTreeSet;

use zambac_ir::{Graph, NodeId, OpKind, ValueRef};

pub struct Matcher<'g> {
    pub g: &'g Graph,
    pub nodes: BTreeSet<NodeId>,
}

impl<'g> Matcher<'g> {
    pub fn new(g: &'g Graph) -> Matcher<'g> {
        Matcher {
            g,
            nodes: BTreeSet::new(),
        }
    }

    /// The producer of `v` if its kind satisfies `pred` (recorded as part of the pattern),
    /// with its operands.
    pub fn op(
        &mut self,
        v: ValueRef,
        pred: impl Fn(&OpKind) -> bool,
    ) -> Option<(NodeId, Vec<ValueRef>)> {
        let kind = self.g.kind(v.node);
        if kind.is_leaf() || !pred(kind) {
            return None;
        }
        self.nodes.insert(v.node);
        Some((v.node, self.g.operands(v.node)))
    }

    /// Records a node found some other way (e.g. a user) as part of the pattern.
    pub fn take(&mut self, n: NodeId) {
        self.nodes.insert(n);
    }

    /// `v` itself if it is a parameter.
    pub fn param(&self, v: ValueRef) -> Option<ValueRef> {
        matches!(self.g.kind(v.node), OpKind::Param(_)).then_some(v)
    }

    /// The only consumer of `v`, if it has exactly one use and it satisfies `pred`.
    pub fn sole_user(
        &mut self,
        v: ValueRef,
        pred: impl Fn(&OpKind) -> bool,
    ) -> Option<(NodeId, Vec<ValueRef>)> {
        if self.g.use_count(v) != 1 {
            return None;
        }
        let (n, _) = *self.g.value_users(v).first()?;
        if !pred(self.g.kind(n)) {
            return None;
        }
        self.nodes.insert(n);
        Some((n, self.g.operands(n)))
    }

    /// Whether only pattern nodes read the pattern's values, apart from `escaping`
    /// (the values the fused op will provide).
    pub fn closed(&self, escaping: &[ValueRef]) -> bool {
        closed(self.g, &self.nodes, escaping)
    }
}

/// Whether every result of `nodes` other than `escaping` is used only inside `nodes`.
pub fn closed(g: &Graph, nodes: &BTreeSet<NodeId>, escaping: &[ValueRef]) -> bool {
    nodes.iter().all(|&n| {
        (0..g.node(n).results.len()).all(|r| {
            let v = n.res(r as u16);
            escaping.contains(&v)
                || (!g.is_output(v) && g.value_users(v).iter().all(|(u, _)| nodes.contains(u)))
        })
    })
}

/// A slice along `axis` with the given bounds and stride.
pub fn is_slice(k: &OpKind, axis: usize, start: usize, end: usize, stride: usize) -> bool {
    matches!(k, OpKind::Slice { axis: a, start: s, end: e, stride: st }
        if *a == axis && *s == start && *e == end && *st == stride)
}

/// Nodes of `g` in canonical order whose kind satisfies `pred`.
pub fn find(g: &Graph, pred: impl Fn(&OpKind) -> bool) -> Vec<NodeId> {
    g.order().into_iter().filter(|&n| pred(g.kind(n))).collect()
}

/// Replaces each `(old, new)` value everywhere it is used, then erases the old producers
/// (and, transitively, their operands' producers) that nothing reads any more — the
/// pattern a fusion replaced.
pub fn rewire(g: &mut Graph, pairs: &[(ValueRef, ValueRef)]) {
    for &(old, new) in pairs {
        g.replace_all_uses(old, new);
    }
    erase_dead(g, pairs.iter().map(|(old, _)| old.node).collect());
}

/// Removes the given nodes if unused, and then any producer left unused by that.
/// Graph inputs are never removed; parameters are (the table is compacted by `dce`).
pub fn erase_dead(g: &mut Graph, mut work: Vec<NodeId>) -> usize {
    let mut removed = 0;
    while let Some(n) = work.pop() {
        if !g.contains(n) || matches!(g.kind(n), OpKind::Input { .. }) {
            continue;
        }
        let used = (0..g.node(n).results.len()).any(|r| g.use_count(n.res(r as u16)) > 0);
        if used {
            continue;
        }
        work.extend(g.operands(n).into_iter().map(|v| v.node));
        g.remove_node(n);
        removed += 1;
    }
    removed
}
