//! The `.zir` printer: the one text form used by dumps, snapshots and filetests.
//!
//! Deterministic by construction: parameters print in table order, ops in
//! [`Graph::order`] (structure-based), values are numbered densely in print order, and
//! floats use Rust's shortest round-trip formatting so the parser reads back the same bits.

use std::collections::HashMap;
use std::fmt::Write;

use crate::graph::{Graph, Loc, Module, ValueRef};
use crate::op::{Attr, OpKind};

/// Prints a whole module: header, parameter table, graphs.
pub fn print_module(m: &Module) -> String {
    let mut s = String::new();
    writeln!(s, "module {}", at_name(&m.name)).unwrap();
    if !m.params.is_empty() {
        s.push('\n');
    }
    for (i, p) in m.params.iter().enumerate() {
        write!(s, "param @{i} {} : {}", quote(&p.name), p.ty()).unwrap();
        if let Some(t) = &p.tie {
            write!(s, " tie={}", quote(t)).unwrap();
        }
        if let Some(h) = p.hash {
            write!(s, " hash=0x{h:016x}").unwrap();
        }
        s.push('\n');
    }
    for g in &m.graphs {
        s.push('\n');
        s.push_str(&print_graph(g));
    }
    s
}

/// Prints one graph.
pub fn print_graph(g: &Graph) -> String {
    let mut names: HashMap<ValueRef, String> = HashMap::new();
    let mut s = String::new();
    write!(s, "graph @{}(", g.name).unwrap();
    for (i, &n) in g.inputs.iter().enumerate() {
        let OpKind::Input { name } = g.kind(n) else {
            unreachable!("graph inputs are input nodes")
        };
        if i > 0 {
            s.push_str(", ");
        }
        write!(s, "%{name}: {}", g.node(n).results[0]).unwrap();
        names.insert(n.out(), format!("%{name}"));
    }
    s.push_str(") {\n");
    let mut next = 0usize;
    let mut loc: Option<Loc> = None;
    for n in g.order() {
        let node = g.node(n);
        match &node.kind {
            OpKind::Input { .. } => continue,
            OpKind::Param(p) => {
                names.insert(n.out(), p.to_string());
                continue;
            }
            _ => {}
        }
        if loc != Some(node.loc) {
            match node.loc {
                Loc::Layer(l) => writeln!(s, "layer {l}:").unwrap(),
                other => writeln!(s, "{other}:").unwrap(),
            }
            loc = Some(node.loc);
        }
        s.push_str("  ");
        for r in 0..node.results.len() {
            if r > 0 {
                s.push_str(", ");
            }
            let name = format!("%{next}");
            next += 1;
            s.push_str(&name);
            names.insert(n.res(r as u16), name);
        }
        write!(s, " = {}", node.kind.name()).unwrap();
        print_attrs(&mut s, &node.kind);
        for (i, v) in g.operands(n).iter().enumerate() {
            s.push_str(if i == 0 { " " } else { ", " });
            s.push_str(value_name(&names, *v));
        }
        s.push_str(" :");
        for (i, t) in node.results.iter().enumerate() {
            s.push_str(if i == 0 { " " } else { ", " });
            write!(s, "{t}").unwrap();
            if let Some(p) = g.plan.as_ref().and_then(|p| p.get(&n.res(i as u16))) {
                write!(s, " in {p}").unwrap();
            }
        }
        s.push('\n');
    }
    s.push_str("  return");
    for (i, (name, v)) in g.outputs.iter().enumerate() {
        s.push_str(if i == 0 { "\n    " } else { ",\n    " });
        write!(s, "{name} = {}", value_name(&names, *v)).unwrap();
    }
    s.push_str("\n}\n");
    s
}

/// The printed name of a value. Only an invalid graph (a cycle) uses a value before the
/// order defines it; it still prints, so the verifier can show the graph.
fn value_name(names: &HashMap<ValueRef, String>, v: ValueRef) -> &str {
    names.get(&v).map(String::as_str).unwrap_or("%<undefined>")
}

fn print_attrs(s: &mut String, kind: &OpKind) {
    let attrs = kind.attrs();
    if attrs.is_empty() {
        return;
    }
    s.push('{');
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        match v {
            Attr::Flag => {}
            Attr::Int(n) => write!(s, "={n}").unwrap(),
            Attr::Float(x) => write!(s, "={x:?}").unwrap(),
            Attr::Ident(x) => write!(s, "={x}").unwrap(),
            Attr::Str(x) => write!(s, "={}", quote(x)).unwrap(),
            Attr::Dims(d) => {
                s.push_str("=[");
                for (j, dim) in d.iter().enumerate() {
                    if j > 0 {
                        s.push(',');
                    }
                    write!(s, "{dim}").unwrap();
                }
                s.push(']');
            }
        }
    }
    s.push('}');
}

/// Module names print bare when they are identifiers, quoted otherwise.
/// A module name as the parser reads it back: `@name` when the lexer takes the whole name
/// as one `@` word (letters, digits, `_`, `.`, `-`, not all digits — that would be a
/// parameter reference), else the name as a string literal, which `at_name` also accepts.
fn at_name(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !name.chars().all(|c| c.is_ascii_digit());
    if bare {
        format!("@{name}")
    } else {
        quote(name)
    }
}

/// A string literal as the lexer reads it: `"` and `\\` escaped, control characters as
/// `\n`, `\t`, `\r` or `\u{…}` (Rust's `{:?}` escapes more than the lexer reads).
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
