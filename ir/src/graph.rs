//! The IR containers: a [`Module`] holds the parameter table and the entry graphs; a
//! [`Graph`] is a dataflow graph of ops on petgraph's `StableGraph`.
//!
//! Node = op, edge = a value flowing from one result of its producer into one operand
//! slot of its consumer; the edge carries both indices, so operand order is exact and
//! multi-result ops need no extra nodes. Parameters live at module level and are shared
//! by both entry graphs; inside a graph each used parameter is one `param` node, so every
//! invocation of a shared block reads the *same* node.

use std::collections::BTreeMap;
use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use crate::op::OpKind;
use crate::signature::{TypeError, infer};
use crate::types::{Elem, TensorType};

/// Index of a parameter in [`Module::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

impl ParamId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ParamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A node (op) of a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NodeIndex<u32>);

/// One result of one node: a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueRef {
    pub node: NodeId,
    pub result: u16,
}

impl NodeId {
    /// The node's first (usually only) result.
    pub fn out(self) -> ValueRef {
        ValueRef {
            node: self,
            result: 0,
        }
    }

    /// The node's `i`-th result.
    pub fn res(self, i: u16) -> ValueRef {
        ValueRef {
            node: self,
            result: i,
        }
    }
}

/// A weight tensor of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Stable name: the checkpoint tensor name (HF naming, spec §4).
    pub name: String,
    /// Storage element type.
    pub elem: Elem,
    pub shape: Vec<usize>,
    /// Tie key: parameters with equal keys are the same tensor by construction (one shared
    /// block seen through several invocations). `dedup-weights` merges them.
    pub tie: Option<String>,
    /// Content hash, when weights are bound: equal (elem, shape, hash) ⇒ stored once.
    pub hash: Option<u64>,
}

impl Param {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> usize {
        self.numel() * self.elem.size()
    }

    pub fn ty(&self) -> TensorType {
        TensorType::new(self.elem, self.shape.iter().map(|&n| n.into()))
    }
}

/// Where in the model an op comes from (for reading dumps and per-layer statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Loc {
    /// Token embedding (and graph boundary).
    #[default]
    Embed,
    /// Decoder layer `l`.
    Layer(u32),
    /// Final norm and LM head.
    Head,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Embed => f.write_str("embed"),
            Loc::Layer(l) => write!(f, "{l}"),
            Loc::Head => f.write_str("head"),
        }
    }
}

/// An op with its inferred result types.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: OpKind,
    pub results: Vec<TensorType>,
    pub loc: Loc,
}

/// An edge: result `result` of the source feeds operand `slot` of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Use {
    pub slot: u16,
    pub result: u16,
}

/// Where a value lives at run time, decided by the `plan-memory` pass.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placement {
    /// A reusable activation buffer.
    Slot(u32),
    /// The persistent buffer of a graph output (a state, a KV cache, the logits); a
    /// decode graph's state input of the same name is the same buffer (updated in place).
    Output(String),
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Slot(s) => write!(f, "s{s}"),
            Placement::Output(n) => write!(f, "{n}"),
        }
    }
}

/// One entry graph (`prefill` or `decode`).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub g: StableGraph<Node, Use>,
    /// Input nodes in signature order.
    pub inputs: Vec<NodeId>,
    /// Named outputs in signature order.
    pub outputs: Vec<(String, ValueRef)>,
    /// The memory plan, once `plan-memory` has run: a placement for every computed value.
    /// Any later change to the graph drops it (the pass manager does).
    pub plan: Option<BTreeMap<ValueRef, Placement>>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            ..Graph::default()
        }
    }

    pub fn node(&self, n: NodeId) -> &Node {
        &self.g[n.0]
    }

    pub fn node_mut(&mut self, n: NodeId) -> &mut Node {
        &mut self.g[n.0]
    }

    pub fn kind(&self, n: NodeId) -> &OpKind {
        &self.g[n.0].kind
    }

    pub fn contains(&self, n: NodeId) -> bool {
        self.g.contains_node(n.0)
    }

    /// The type of a value of this graph.
    ///
    /// # Panics
    ///
    /// If `v` is not a value of this graph, as `self.g[n]` does for a node it lacks. Code
    /// that reads a graph not yet verified asks [`Graph::value_ty`] instead.
    pub fn ty(&self, v: ValueRef) -> &TensorType {
        // Passes, lowerings and the cost model call this on the operands of verified
        // graphs, where every value exists: the verifier reads every operand and output
        // with `value_ty`, and the parser only names results it has created.
        #[allow(clippy::indexing_slicing, reason = "documented panic, like `Index`")]
        &self.g[v.node.0].results[v.result as usize]
    }

    /// The type of a value, or `None` if the graph has no such node or the node no such
    /// result.
    pub fn value_ty(&self, v: ValueRef) -> Option<&TensorType> {
        self.g.node_weight(v.node.0)?.results.get(v.result as usize)
    }

    /// All nodes, in index order (not a topological order; see [`Graph::order`]).
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().map(NodeId)
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }

    /// Adds a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> ValueRef {
        let n = NodeId(self.g.add_node(Node {
            kind: OpKind::Input { name: name.into() },
            results: vec![ty],
            loc: Loc::Embed,
        }));
        self.inputs.push(n);
        n.out()
    }

    /// Adds a `param` node for `id` (callers keep one per parameter and graph).
    pub fn add_param(&mut self, id: ParamId, p: &Param) -> ValueRef {
        NodeId(self.g.add_node(Node {
            kind: OpKind::Param(id),
            results: vec![p.ty()],
            loc: Loc::Embed,
        }))
        .out()
    }

    /// The `param` node of `id` in this graph, if the graph uses it.
    pub fn param_node(&self, id: ParamId) -> Option<NodeId> {
        self.nodes()
            .find(|&n| matches!(self.kind(n), OpKind::Param(p) if *p == id))
    }

    /// Adds an op after checking its operands and inferring its result types.
    pub fn add_op(
        &mut self,
        kind: OpKind,
        operands: &[ValueRef],
        loc: Loc,
    ) -> Result<NodeId, TypeError> {
        let tys: Vec<&TensorType> = operands.iter().map(|&v| self.ty(v)).collect();
        let results = infer(&kind, &tys)?;
        Ok(self.add_op_typed(kind, operands, results, loc))
    }

    /// Adds an op with the result types the caller states, unchecked. Only the unverified
    /// parser uses it, so that the verifier, not the parser, sees what a text claims.
    pub(crate) fn add_op_typed(
        &mut self,
        kind: OpKind,
        operands: &[ValueRef],
        results: Vec<TensorType>,
        loc: Loc,
    ) -> NodeId {
        let n = NodeId(self.g.add_node(Node { kind, results, loc }));
        for (slot, v) in operands.iter().enumerate() {
            self.g.add_edge(
                v.node.0,
                n.0,
                Use {
                    slot: slot as u16,
                    result: v.result,
                },
            );
        }
        n
    }

    /// The operands of `n`, in slot order.
    pub fn operands(&self, n: NodeId) -> Vec<ValueRef> {
        let mut ops: Vec<(u16, ValueRef)> = self
            .g
            .edges_directed(n.0, Direction::Incoming)
            .map(|e| {
                (
                    e.weight().slot,
                    ValueRef {
                        node: NodeId(e.source()),
                        result: e.weight().result,
                    },
                )
            })
            .collect();
        ops.sort_by_key(|(slot, _)| *slot);
        ops.into_iter().map(|(_, v)| v).collect()
    }

    /// The consumers of any result of `n`: (consumer, operand slot, result index).
    pub fn users(&self, n: NodeId) -> Vec<(NodeId, u16, u16)> {
        let mut u: Vec<_> = self
            .g
            .edges_directed(n.0, Direction::Outgoing)
            .map(|e| (NodeId(e.target()), e.weight().slot, e.weight().result))
            .collect();
        u.sort();
        u
    }

    /// Consumers of one value: (consumer, operand slot).
    pub fn value_users(&self, v: ValueRef) -> Vec<(NodeId, u16)> {
        self.users(v.node)
            .into_iter()
            .filter(|&(_, _, r)| r == v.result)
            .map(|(n, s, _)| (n, s))
            .collect()
    }

    /// Whether a value is a graph output.
    pub fn is_output(&self, v: ValueRef) -> bool {
        self.outputs.iter().any(|(_, o)| *o == v)
    }

    /// Number of uses of a value, graph outputs included.
    pub fn use_count(&self, v: ValueRef) -> usize {
        self.value_users(v).len() + self.outputs.iter().filter(|(_, o)| *o == v).count()
    }

    /// Makes every use of `from` (operands and graph outputs) use `to` instead.
    pub fn replace_all_uses(&mut self, from: ValueRef, to: ValueRef) {
        let edges: Vec<(EdgeIndex, NodeIndex, u16)> = self
            .g
            .edges_directed(from.node.0, Direction::Outgoing)
            .filter(|e| e.weight().result == from.result)
            .map(|e| (e.id(), e.target(), e.weight().slot))
            .collect();
        for (e, target, slot) in edges {
            self.g.remove_edge(e);
            self.g.add_edge(
                to.node.0,
                target,
                Use {
                    slot,
                    result: to.result,
                },
            );
        }
        for (_, o) in self.outputs.iter_mut() {
            if *o == from {
                *o = to;
            }
        }
    }

    /// Removes a node and its edges. Callers make sure it has no remaining uses.
    pub fn remove_node(&mut self, n: NodeId) {
        self.g.remove_node(n.0);
        self.inputs.retain(|&i| i != n);
    }

    /// The graph's canonical order: a topological order that groups ops by [`Loc`] and,
    /// within a location, follows a depth-first walk from the outputs. It depends only on
    /// the graph's structure, never on node indices, so passes that build the same graph
    /// print the same text. Leaves (inputs, params) come first, in the order they are
    /// first used.
    pub fn order(&self) -> Vec<NodeId> {
        let rank = self.dfs_rank();
        let mut indeg: BTreeMap<NodeId, usize> = BTreeMap::new();
        for n in self.nodes() {
            let distinct: std::collections::BTreeSet<NodeIndex> = self
                .g
                .edges_directed(n.0, Direction::Incoming)
                .map(|e| e.source())
                .collect();
            indeg.insert(n, distinct.len());
        }
        let key = |n: NodeId| {
            let node = self.node(n);
            let not_leaf = !node.kind.is_leaf();
            (
                not_leaf,
                node.loc,
                rank.get(&n).copied().unwrap_or(usize::MAX),
                n,
            )
        };
        let mut ready: std::collections::BTreeSet<_> = indeg
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(&n, _)| key(n))
            .collect();
        let mut out = Vec::with_capacity(self.node_count());
        while let Some(k) = ready.pop_first() {
            let n = k.3;
            out.push(n);
            let targets: std::collections::BTreeSet<NodeIndex> = self
                .g
                .edges_directed(n.0, Direction::Outgoing)
                .map(|e| e.target())
                .collect();
            for t in targets {
                // `indeg` counts every node, and every edge ends at one.
                let Some(d) = indeg.get_mut(&NodeId(t)) else {
                    continue;
                };
                *d -= 1;
                if *d == 0 {
                    ready.insert(key(NodeId(t)));
                }
            }
        }
        out
    }

    /// Post-order rank of every node reachable from the outputs, visiting outputs in
    /// signature order and operands in slot order.
    fn dfs_rank(&self) -> BTreeMap<NodeId, usize> {
        let mut rank = BTreeMap::new();
        let mut visiting = std::collections::BTreeSet::new();
        for (_, root) in &self.outputs {
            let mut stack = vec![(root.node, false)];
            while let Some((n, expanded)) = stack.pop() {
                if rank.contains_key(&n) {
                    continue;
                }
                if expanded {
                    let r = rank.len();
                    rank.insert(n, r);
                    continue;
                }
                if !visiting.insert(n) {
                    continue;
                }
                stack.push((n, true));
                for v in self.operands(n).into_iter().rev() {
                    if !rank.contains_key(&v.node) {
                        stack.push((v.node, false));
                    }
                }
            }
        }
        rank
    }

    /// Whether an acyclic path exists; used by the verifier.
    pub fn is_acyclic(&self) -> bool {
        !petgraph::algo::is_cyclic_directed(&self.g)
    }

    /// Number of compute ops (everything but inputs and params).
    pub fn op_count(&self) -> usize {
        self.nodes().filter(|&n| !self.kind(n).is_leaf()).count()
    }
}

/// A compiled model: its parameters and its entry graphs.
#[derive(Clone, Debug, Default)]
pub struct Module {
    pub name: String,
    pub params: Vec<Param>,
    pub graphs: Vec<Graph>,
}

impl Module {
    /// Parameter `id`, if the table has it.
    pub fn param(&self, id: ParamId) -> Option<&Param> {
        self.params.get(id.index())
    }

    /// Adds a parameter to the table.
    pub fn add_param(&mut self, p: Param) -> ParamId {
        self.params.push(p);
        ParamId(self.params.len() as u32 - 1)
    }

    /// The graph called `name`.
    pub fn graph(&self, name: &str) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.name == name)
    }

    pub fn graph_mut(&mut self, name: &str) -> Option<&mut Graph> {
        self.graphs.iter_mut().find(|g| g.name == name)
    }

    /// Total elements of all parameters.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(Param::numel).sum()
    }

    /// Total bytes of all parameters.
    pub fn param_bytes(&self) -> usize {
        self.params.iter().map(Param::bytes).sum()
    }

    /// Drops parameters no graph uses and renumbers the rest densely, keeping their
    /// relative order. Returns how many were dropped.
    ///
    /// A `param` node whose id is past the table (a module the verifier rejects) keeps
    /// its id, which stays past the (now shorter) table for the verifier to report.
    pub fn compact_params(&mut self) -> usize {
        let used: std::collections::BTreeSet<ParamId> = self
            .graphs
            .iter()
            .flat_map(|g| {
                g.nodes().filter_map(|n| match g.kind(n) {
                    OpKind::Param(p) => Some(*p),
                    _ => None,
                })
            })
            .collect();
        let all = std::mem::take(&mut self.params);
        let before = all.len();
        let mut remap = BTreeMap::new();
        for (i, p) in all.into_iter().enumerate() {
            let old = ParamId(i as u32);
            if used.contains(&old) {
                remap.insert(old, ParamId(self.params.len() as u32));
                self.params.push(p);
            }
        }
        for g in &mut self.graphs {
            let ids: Vec<NodeId> = g.nodes().collect();
            for n in ids {
                if let OpKind::Param(p) = &mut g.node_mut(n).kind
                    && let Some(&new) = remap.get(p)
                {
                    *p = new;
                }
            }
        }
        before - self.params.len()
    }
}
