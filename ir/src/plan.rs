//! Memory plans: liveness of values, checking a plan, and its peak size.
//!
//! The `plan-memory` pass decides placements; this module holds what every stage needs to
//! read one: live ranges over the canonical order, the check that no two values share a
//! slot while both are live, and slot sizes at concrete bindings.

use std::collections::BTreeMap;

use crate::graph::{Graph, Placement, ValueRef};
use crate::types::Bindings;

/// Live range of every computed value, as positions in `g.order()`: from its definition
/// to its last use (graph outputs live to the end).
pub fn live_ranges(g: &Graph) -> BTreeMap<ValueRef, (usize, usize)> {
    let order = g.order();
    let mut ranges = BTreeMap::new();
    for (i, &n) in order.iter().enumerate() {
        if g.kind(n).is_leaf() {
            continue;
        }
        for r in 0..g.node(n).results.len() {
            ranges.insert(n.res(r as u16), (i, i));
        }
        for v in g.operands(n) {
            if let Some(range) = ranges.get_mut(&v) {
                range.1 = i;
            }
        }
    }
    for (_, v) in &g.outputs {
        if let Some(range) = ranges.get_mut(v) {
            range.1 = order.len();
        }
    }
    ranges
}

/// Checks that a plan places every computed value, places only graph outputs in output
/// buffers (under their own names), and never lets two live values share a slot.
pub fn check(g: &Graph, plan: &BTreeMap<ValueRef, Placement>) -> Result<(), String> {
    let ranges = live_ranges(g);
    let mut by_slot: BTreeMap<u32, Vec<(usize, usize, ValueRef)>> = BTreeMap::new();
    for (v, &(start, end)) in &ranges {
        match plan.get(v) {
            None => {
                return Err(format!(
                    "result {} of `{}` node {} has no placement",
                    v.result,
                    g.kind(v.node).name(),
                    v.node.0.index()
                ));
            }
            Some(Placement::Output(name)) => {
                if !g.outputs.iter().any(|(n, o)| n == name && o == v) {
                    return Err(format!(
                        "a value that is not output `{name}` is placed in it"
                    ));
                }
            }
            Some(Placement::Slot(s)) => by_slot.entry(*s).or_default().push((start, end, *v)),
        }
    }
    for (slot, mut vals) in by_slot {
        vals.sort();
        for ((_, end, _), (next_start, _, _)) in vals.iter().zip(vals.iter().skip(1)) {
            if next_start <= end {
                return Err(format!(
                    "slot s{slot} holds two values that are live at once"
                ));
            }
        }
    }
    Ok(())
}

/// Bytes of each slot at the given bindings (the largest value it ever holds).
pub fn slot_bytes(g: &Graph, plan: &BTreeMap<ValueRef, Placement>, bind: &Bindings) -> Vec<usize> {
    let mut by_slot: BTreeMap<usize, usize> = BTreeMap::new();
    for (v, p) in plan {
        if let Placement::Slot(s) = p {
            let size = by_slot.entry(*s as usize).or_default();
            *size = (*size).max(g.ty(*v).bytes(bind));
        }
    }
    // Slots numbered below the highest that hold nothing take no bytes.
    let count = by_slot.last_key_value().map_or(0, |(&s, _)| s + 1);
    (0..count)
        .map(|s| by_slot.get(&s).copied().unwrap_or(0))
        .collect()
}

/// Peak activation bytes of a planned graph: the sum of its slots.
pub fn peak_activation_bytes(g: &Graph, bind: &Bindings) -> Option<usize> {
    let plan = g.plan.as_ref()?;
    Some(slot_bytes(g, plan, bind).iter().sum())
}

/// Bytes of the graph's outputs that are states and caches (placed once, persistent).
pub fn state_bytes(g: &Graph, bind: &Bindings) -> usize {
    g.outputs
        .iter()
        .filter(|(n, _)| n != "logits")
        .map(|(_, v)| g.ty(*v).bytes(bind))
        .sum()
}
