//! The `[shared]` schedule: which layers are hybrid (`every`/`offset` or `layers`) and
//! which block each invocation uses (`assignment`, default round-robin).

use crate::node::Span;
use crate::reader::{At, Cx, Fields};

/// The hybrid layer indices, ascending, from `every`/`offset` or `layers`.
pub(super) fn read_schedule(
    cx: &mut Cx,
    f: &Fields<'_>,
    num_layers: Option<usize>,
) -> Option<Vec<usize>> {
    let (has_every, has_offset, has_layers) =
        (f.present("every"), f.present("offset"), f.present("layers"));
    if has_layers && (has_every || has_offset) {
        let other = if has_every { "every" } else { "offset" };
        let node = f.node(other)?;
        cx.error(
            node.span.clone(),
            f.key(other),
            "either `every` (with `offset`) or `layers`, not both",
            format!("`{other}` next to `layers`"),
        );
        return None;
    }
    if has_layers {
        let list = f.index_list(cx, "layers")?;
        return check_layer_list(cx, list, num_layers?);
    }
    if !has_every {
        let expected =
            "the hybrid layers: `every` (with optional `offset`) or an explicit `layers` list";
        if has_offset {
            let node = f.node("offset")?;
            cx.error(
                node.span.clone(),
                f.key("every"),
                expected,
                "`offset` without `every`",
            );
        } else {
            f.missing(cx, "every", expected);
        }
        return None;
    }
    let every = f.pos_int(cx, "every");
    let offset = f
        .nonneg_int(cx, "offset")
        .unwrap_or_else(|| f.default_at("offset", 0));
    let (every, num_layers) = (every?.value, num_layers?);
    if offset.value >= num_layers {
        cx.error(
            offset.span,
            offset.key,
            format!("a layer index below num_layers = {num_layers}"),
            offset.value.to_string(),
        );
        return None;
    }
    Some((offset.value..num_layers).step_by(every).collect())
}

fn check_layer_list(
    cx: &mut Cx,
    list: At<Vec<(usize, Span)>>,
    num_layers: usize,
) -> Option<Vec<usize>> {
    let mut ok = true;
    let mut prev: Option<usize> = None;
    for (i, (l, span)) in list.value.iter().enumerate() {
        let key = format!("{}[{i}]", list.key);
        if *l >= num_layers {
            cx.error(
                span.clone(),
                key,
                format!("a layer index below num_layers = {num_layers}"),
                l.to_string(),
            );
            ok = false;
        } else if let Some(p) = prev.filter(|p| l <= p) {
            let what = if *l == p {
                "a duplicate of the previous index"
            } else {
                "an index below the previous one"
            };
            cx.error(
                span.clone(),
                key,
                format!("an index above {p} (the list must be strictly ascending)"),
                format!("{l}, {what}"),
            );
            ok = false;
        }
        prev = Some(*l);
    }
    ok.then(|| list.value.into_iter().map(|(l, _)| l).collect())
}

/// Block of each invocation: `assignment`, or round-robin `i mod blocks`.
pub(super) fn read_assignment(
    cx: &mut Cx,
    f: &Fields<'_>,
    invocations: usize,
    blocks: usize,
) -> Option<Vec<usize>> {
    if f.node("assignment").is_none() {
        return Some((0..invocations).map(|i| i % blocks).collect());
    }
    let list = f.index_list(cx, "assignment")?;
    let mut ok = true;
    if list.value.len() != invocations {
        cx.error(
            list.span.clone(),
            list.key.clone(),
            format!("one block index per hybrid layer ({invocations})"),
            format!("{} entries", list.value.len()),
        );
        ok = false;
    }
    for (i, (b, span)) in list.value.iter().enumerate() {
        if *b >= blocks {
            cx.error(
                span.clone(),
                format!("{}[{i}]", list.key),
                format!("a block index below shared.blocks = {blocks}"),
                b.to_string(),
            );
            ok = false;
        }
    }
    ok.then(|| list.value.into_iter().map(|(b, _)| b).collect())
}
