//! The verifier: structural and typing invariants every graph satisfies before and after
//! every pass. A failure after a pass is a compiler bug; the pass manager names the pass.

use std::collections::BTreeSet;

use petgraph::Direction;

use crate::graph::{Graph, Module};
use crate::op::OpKind;
use crate::signature::infer;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("graph @{graph}: {msg}")]
pub struct VerifyError {
    pub graph: String,
    pub msg: String,
}

/// Checks a whole module; returns every problem found.
pub fn verify_module(m: &Module) -> Result<(), Vec<VerifyError>> {
    let mut errs = Vec::new();
    let mut names = BTreeSet::new();
    for g in &m.graphs {
        if !names.insert(&g.name) {
            errs.push(VerifyError {
                graph: g.name.clone(),
                msg: "graph name is used twice".into(),
            });
        }
        verify_graph(m, g, &mut errs);
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

fn verify_graph(m: &Module, g: &Graph, errs: &mut Vec<VerifyError>) {
    let mut err = |msg: String| {
        errs.push(VerifyError {
            graph: g.name.clone(),
            msg,
        })
    };
    if !g.is_acyclic() {
        err("the graph has a cycle".into());
        return;
    }
    let mut input_nodes = BTreeSet::new();
    let mut input_names = BTreeSet::new();
    let mut param_nodes = BTreeSet::new();
    for n in g.nodes() {
        let node = g.node(n);
        let what = format!("`{}` node {}", node.kind.name(), n.0.index());
        for e in g.g.edges_directed(n.0, Direction::Outgoing) {
            if e.weight().result as usize >= node.results.len() {
                err(format!("{what} has no result {}", e.weight().result));
            }
        }
        let ops = g.operands(n);
        let slots: Vec<u16> = {
            let mut s: Vec<u16> =
                g.g.edges_directed(n.0, Direction::Incoming)
                    .map(|e| e.weight().slot)
                    .collect();
            s.sort();
            s
        };
        if slots.iter().enumerate().any(|(i, &s)| s as usize != i) {
            err(format!(
                "{what} has operand slots {slots:?}, expected 0..{}",
                slots.len()
            ));
            continue;
        }
        match &node.kind {
            OpKind::Input { name } => {
                input_nodes.insert(n);
                if !input_names.insert(name.clone()) {
                    err(format!("input `%{name}` is declared twice"));
                }
                if !ops.is_empty() || node.results.len() != 1 {
                    err(format!(
                        "input `%{name}` must have no operands and one result"
                    ));
                }
            }
            OpKind::Param(p) => {
                match m.params.get(p.index()) {
                    None => err(format!("{what} refers to missing parameter {p}")),
                    Some(param) if node.results != [param.ty()] => err(format!(
                        "{what} has type {} but parameter {p} is {}",
                        node.results[0],
                        param.ty()
                    )),
                    Some(_) => {}
                }
                if !param_nodes.insert(*p) {
                    err(format!("parameter {p} has more than one node"));
                }
            }
            kind => {
                let tys: Vec<_> = ops.iter().map(|&v| g.ty(v)).collect();
                match infer(kind, &tys) {
                    Ok(r) if r == node.results => {}
                    Ok(r) => err(format!(
                        "{what} records results {:?} but its operands give {:?}",
                        node.results
                            .iter()
                            .map(|t| t.to_string())
                            .collect::<Vec<_>>(),
                        r.iter().map(|t| t.to_string()).collect::<Vec<_>>()
                    )),
                    Err(e) => err(format!("{what}: {e}")),
                }
            }
        }
    }
    let listed: BTreeSet<_> = g.inputs.iter().copied().collect();
    if listed != input_nodes || listed.len() != g.inputs.len() {
        err("the input list does not match the graph's input nodes".into());
    }
    if let Some(plan) = &g.plan
        && let Err(e) = crate::plan::check(g, plan)
    {
        err(format!("memory plan: {e}"));
    }
    let mut out_names = BTreeSet::new();
    for (name, v) in &g.outputs {
        if !out_names.insert(name) {
            err(format!("output `{name}` is returned twice"));
        }
        if !g.contains(v.node) || v.result as usize >= g.node(v.node).results.len() {
            err(format!("output `{name}` refers to a missing value"));
        }
    }
}
