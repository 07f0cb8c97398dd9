//! The `.zir` printer: the one text form used by dumps, snapshots and filetests.
//!
//! Deterministic by construction: parameters print in table order, ops in
//! [`Graph::order`] (structure-based), values are numbered densely in print order, and
//! floats use Rust's shortest round-trip formatting so the parser reads back the same bits.

use std::collections::HashMap;
use std::fmt::{self, Write};

use crate::graph::{Graph, Loc, Module, ValueRef};
use crate::op::{Attr, OpKind};

/// Prints a whole module: header, parameter table, graphs.
pub fn print_module(m: &Module) -> String {
    ModuleText(m).to_string()
}

/// Prints one graph.
pub fn print_graph(g: &Graph) -> String {
    GraphText(g).to_string()
}

/// A module in the text form.
struct ModuleText<'a>(&'a Module);

impl fmt::Display for ModuleText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        writeln!(f, "module {}", at_name(&m.name))?;
        if !m.params.is_empty() {
            f.write_char('\n')?;
        }
        for (i, p) in m.params.iter().enumerate() {
            write!(f, "param @{i} {} : {}", quote(&p.name), p.ty())?;
            if let Some(t) = &p.tie {
                write!(f, " tie={}", quote(t))?;
            }
            if let Some(h) = p.hash {
                write!(f, " hash=0x{h:016x}")?;
            }
            f.write_char('\n')?;
        }
        for g in &m.graphs {
            f.write_char('\n')?;
            GraphText(g).fmt(f)?;
        }
        Ok(())
    }
}

/// A graph in the text form.
struct GraphText<'a>(&'a Graph);

impl fmt::Display for GraphText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.0;
        let mut names: HashMap<ValueRef, String> = HashMap::new();
        write!(f, "graph @{}(", g.name)?;
        for (i, &n) in g.inputs.iter().enumerate() {
            let OpKind::Input { name } = g.kind(n) else {
                unreachable!("graph inputs are input nodes")
            };
            if i > 0 {
                f.write_str(", ")?;
            }
            // An input has one result; a broken one still prints, for the verifier.
            write!(f, "%{name}:")?;
            for (r, t) in g.node(n).results.iter().enumerate() {
                f.write_str(if r == 0 { " " } else { ", " })?;
                write!(f, "{t}")?;
            }
            names.insert(n.out(), format!("%{name}"));
        }
        f.write_str(") {\n")?;
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
                    Loc::Layer(l) => writeln!(f, "layer {l}:")?,
                    other => writeln!(f, "{other}:")?,
                }
                loc = Some(node.loc);
            }
            f.write_str("  ")?;
            for r in 0..node.results.len() {
                if r > 0 {
                    f.write_str(", ")?;
                }
                let name = format!("%{next}");
                next += 1;
                f.write_str(&name)?;
                names.insert(n.res(r as u16), name);
            }
            write!(f, " = {}", node.kind.name())?;
            write_attrs(f, &node.kind)?;
            for (i, v) in g.operands(n).iter().enumerate() {
                f.write_str(if i == 0 { " " } else { ", " })?;
                f.write_str(value_name(&names, *v))?;
            }
            f.write_str(" :")?;
            for (i, t) in node.results.iter().enumerate() {
                f.write_str(if i == 0 { " " } else { ", " })?;
                write!(f, "{t}")?;
                if let Some(p) = g.plan.as_ref().and_then(|p| p.get(&n.res(i as u16))) {
                    write!(f, " in {p}")?;
                }
            }
            f.write_char('\n')?;
        }
        f.write_str("  return")?;
        for (i, (name, v)) in g.outputs.iter().enumerate() {
            f.write_str(if i == 0 { "\n    " } else { ",\n    " })?;
            write!(f, "{name} = {}", value_name(&names, *v))?;
        }
        f.write_str("\n}\n")
    }
}

/// The printed name of a value. Only an invalid graph (a cycle) uses a value before the
/// order defines it; it still prints, so the verifier can show the graph.
fn value_name(names: &HashMap<ValueRef, String>, v: ValueRef) -> &str {
    names.get(&v).map(String::as_str).unwrap_or("%<undefined>")
}

fn write_attrs(f: &mut fmt::Formatter<'_>, kind: &OpKind) -> fmt::Result {
    let attrs = kind.attrs();
    if attrs.is_empty() {
        return Ok(());
    }
    f.write_char('{')?;
    for (i, (k, v)) in attrs.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(k)?;
        match v {
            Attr::Flag => {}
            Attr::Int(n) => write!(f, "={n}")?,
            Attr::Float(x) => write!(f, "={x:?}")?,
            Attr::Ident(x) => write!(f, "={x}")?,
            Attr::Str(x) => write!(f, "={}", quote(x))?,
            Attr::Dims(d) => {
                f.write_str("=[")?;
                for (j, dim) in d.iter().enumerate() {
                    if j > 0 {
                        f.write_char(',')?;
                    }
                    write!(f, "{dim}")?;
                }
                f.write_char(']')?;
            }
        }
    }
    f.write_char('}')
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
