//! The verifier: structural and typing invariants every graph satisfies before and after
//! every pass. A failure after a pass is a compiler bug; the pass manager names the pass.

use std::collections::BTreeSet;

use petgraph::Direction;

use crate::graph::{Graph, Module, ValueRef};
use crate::op::OpKind;
use crate::signature::infer;
use crate::types::TensorType;

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
                    Some(param) if node.results != [param.ty()] => {
                        let has = match node.results.as_slice() {
                            [t] => format!("type {t}"),
                            ts => format!("{} results", ts.len()),
                        };
                        err(format!(
                            "{what} has {has} but parameter {p} is {}",
                            param.ty()
                        ))
                    }
                    Some(_) => {}
                }
                if !param_nodes.insert(*p) {
                    err(format!("parameter {p} has more than one node"));
                }
            }
            kind => {
                // An operand read from a result its producer lacks is reported at the
                // producer; without its type there is nothing to infer from.
                let Some(tys) = operand_types(g, &ops) else {
                    continue;
                };
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
        if g.value_ty(*v).is_none() {
            err(format!("output `{name}` refers to a missing value"));
        }
    }
}

/// The types of `ops`, or `None` if one names a result its producer does not have.
fn operand_types<'g>(g: &'g Graph, ops: &[ValueRef]) -> Option<Vec<&'g TensorType>> {
    ops.iter().map(|&v| g.value_ty(v)).collect()
}

/// The checks that no `.zir` text can reach, since the parser defines every value before
/// its use, gives each parameter one node and numbers operand slots itself. The checks a
/// text can reach are the negative filetests in `ir/tests/verifier/`.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Loc, NodeId, Param, ParamId, Use};
    use crate::types::Elem;

    /// `y = silu(linear(x, @0))`, with the linear node returned for tampering.
    fn module() -> (Module, NodeId) {
        let w = Param {
            name: "w".into(),
            elem: Elem::F32,
            shape: vec![8, 4],
            tie: None,
            hash: None,
        };
        let mut g = Graph::new("prefill");
        let x = g.add_input("x", TensorType::f32(crate::dims![crate::types::T, 4]));
        let wv = g.add_param(ParamId(0), &w);
        let lin = g
            .add_op(
                OpKind::Linear(crate::op::LinearAttrs::PLAIN),
                &[x, wv],
                Loc::Layer(0),
            )
            .expect("a well-typed linear");
        let y = g
            .add_op(
                OpKind::Act(crate::op::Act::Silu),
                &[lin.out()],
                Loc::Layer(0),
            )
            .expect("a well-typed silu");
        g.outputs.push(("y".into(), y.out()));
        let m = Module {
            name: "m".into(),
            params: vec![w],
            graphs: vec![g],
        };
        (m, lin)
    }

    fn messages(m: &Module) -> Vec<String> {
        match verify_module(m) {
            Ok(()) => vec![],
            Err(errs) => errs.into_iter().map(|e| e.msg).collect(),
        }
    }

    fn graph(m: &mut Module) -> &mut Graph {
        &mut m.graphs[0]
    }

    #[test]
    fn the_untampered_module_verifies() {
        assert_eq!(messages(&module().0), Vec::<String>::new());
    }

    #[test]
    fn a_cycle() {
        let (mut m, lin) = module();
        let g = graph(&mut m);
        let silu = g.users(lin)[0].0;
        g.g.add_edge(silu.0, lin.0, Use { slot: 2, result: 0 });
        assert_eq!(messages(&m), ["the graph has a cycle"]);
    }

    #[test]
    fn a_parameter_with_two_nodes() {
        let (mut m, _) = module();
        let w = m.params[0].clone();
        graph(&mut m).add_param(ParamId(0), &w);
        assert_eq!(messages(&m), ["parameter @0 has more than one node"]);
    }

    #[test]
    fn a_param_node_for_a_missing_parameter() {
        let (mut m, _) = module();
        let w = m.params[0].clone();
        let n = graph(&mut m).add_param(ParamId(7), &w).node;
        assert_eq!(
            messages(&m),
            [format!(
                "`param` node {} refers to missing parameter @7",
                n.0.index()
            )]
        );
    }

    #[test]
    fn a_param_node_whose_type_is_not_the_parameters() {
        let (mut m, lin) = module();
        let g = graph(&mut m);
        let w = g.operands(lin)[1].node;
        g.node_mut(w).results = vec![TensorType::f32(crate::dims![8, 5])];
        let msgs = messages(&m);
        let wrong_type = format!(
            "`param` node {} has type f32[8,5] but parameter @0 is f32[8,4]",
            w.0.index()
        );
        assert_eq!(msgs.first(), Some(&wrong_type), "{msgs:?}");
    }

    #[test]
    fn an_operand_slot_gap() {
        let (mut m, lin) = module();
        let g = graph(&mut m);
        let w = g.operands(lin)[1].node;
        let e = g.g.find_edge(w.0, lin.0).expect("the weight edge");
        g.g[e].slot = 2;
        assert_eq!(
            messages(&m),
            [format!(
                "`linear` node {} has operand slots [0, 2], expected 0..2",
                lin.0.index()
            )]
        );
    }

    #[test]
    fn an_edge_from_a_result_the_producer_lacks() {
        let (mut m, lin) = module();
        let g = graph(&mut m);
        let silu = g.users(lin)[0].0;
        let e =
            g.g.find_edge(lin.0, silu.0)
                .expect("the linear → silu edge");
        g.g[e].result = 3;
        assert_eq!(
            messages(&m),
            [format!("`linear` node {} has no result 3", lin.0.index())]
        );
    }

    #[test]
    fn an_output_of_a_missing_value() {
        let (mut m, lin) = module();
        graph(&mut m).outputs[0].1 = ValueRef {
            node: lin,
            result: 4,
        };
        assert_eq!(messages(&m), ["output `y` refers to a missing value"]);
    }

    #[test]
    fn an_input_node_missing_from_the_input_list() {
        let (mut m, _) = module();
        graph(&mut m).inputs.clear();
        assert_eq!(
            messages(&m),
            ["the input list does not match the graph's input nodes"]
        );
    }
}
