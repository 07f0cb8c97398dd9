//! `plan-memory`: where every value lives at run time.
//!
//! Graph outputs (logits, conv and SSM states, KV caches) are placed once in their own
//! persistent buffers; in `decode` an output state reuses its input's buffer, so the
//! states are updated in place. Every other value gets an activation slot by a linear
//! scan over the canonical order: a slot is reused once the last reader of its value has
//! run, preferring the smallest free slot that is large enough (sizes compared at the
//! pass's planning bindings). The plan is recorded on the graph, printed with the IR
//! (`in s3`, `in conv.0`), checked by the verifier, and gives the peak activation bytes.

use std::collections::BTreeMap;

use zambac_ir::plan::{live_ranges, peak_activation_bytes};
use zambac_ir::{Bindings, Graph, Module, Placement, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};

pub struct PlanMemory;

impl Pass for PlanMemory {
    fn name(&self) -> &'static str {
        "plan-memory"
    }

    fn summary(&self) -> &'static str {
        "assign activation buffers by liveness; place states and KV caches once"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut changed = false;
        for g in &mut m.graphs {
            let bind = if g.name == "decode" {
                Bindings {
                    t: 1,
                    ..cx.plan_bindings
                }
            } else {
                cx.plan_bindings
            };
            let plan = plan(g, &bind);
            changed |= g.plan.as_ref() != Some(&plan);
            g.plan = Some(plan);
            let peak = peak_activation_bytes(g, &bind).unwrap_or(0);
            let slots = g
                .plan
                .iter()
                .flat_map(|p| p.values())
                .filter_map(|p| match p {
                    Placement::Slot(s) => Some(*s),
                    _ => None,
                })
                .max()
                .map_or(0, |s| s + 1);
            cx.stat(format!(
                "@{}: {slots} slots, peak {peak} activation bytes at T={}, C={}",
                g.name, bind.t, bind.c
            ));
        }
        Ok(Changed::from(changed))
    }
}

fn plan(g: &Graph, bind: &Bindings) -> BTreeMap<ValueRef, Placement> {
    let ranges = live_ranges(g);
    let mut plan = BTreeMap::new();
    // Values ordered by definition; slots hold (size, busy until).
    let mut by_start: Vec<(usize, usize, ValueRef)> =
        ranges.iter().map(|(v, &(s, e))| (s, e, *v)).collect();
    by_start.sort();
    let mut slots: Vec<(usize, Option<usize>)> = Vec::new();
    for (start, end, v) in by_start {
        if let Some((name, _)) = g.outputs.iter().find(|(_, o)| *o == v) {
            plan.insert(v, Placement::Output(name.clone()));
            continue;
        }
        let size = g.ty(v).bytes(bind);
        // A slot is free if its last value's final reader ran before this definition.
        let free = |busy: Option<usize>| busy.is_none_or(|b| b < start);
        let fit = slots
            .iter()
            .enumerate()
            .filter(|(_, (sz, busy))| free(*busy) && *sz >= size)
            .min_by_key(|(_, (sz, _))| *sz)
            .map(|(i, _)| i)
            .or_else(|| {
                // No free slot is large enough: grow the largest free one.
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, busy))| free(*busy))
                    .max_by_key(|(_, (sz, _))| *sz)
                    .map(|(i, _)| i)
            });
        let i = match fit {
            Some(i) => i,
            None => {
                slots.push((0, None));
                slots.len() - 1
            }
        };
        slots[i] = (slots[i].0.max(size), Some(end));
        plan.insert(v, Placement::Slot(i as u32));
    }
    plan
}
