//! Typed, spanned access to the keys of one table, shared by the TOML and JSON readers.
//!
//! [`Cx`] collects the diagnostics and warnings of one input; [`Fields`] reads the keys of
//! one table with type checks. A getter that finds a wrong value records an error and
//! returns `None`, so the caller carries on and reports every independent problem.

use std::fmt::Display;
use std::sync::Arc;

use crate::error::{Diagnostic, FrontendError, line_col};
use crate::node::{Node, Span, Table, Val};

/// Largest size (dimension, count, rank) accepted anywhere (16.7M): sums and products of a
/// few sizes stay far from overflow, and nothing real comes near it. The size of the whole
/// model is bounded separately (`resolve::MAX_ELEMENTS`).
pub(crate) const MAX_SIZE: i64 = 1 << 24;

/// Most layers a model may have (the layer list is materialised).
pub(crate) const MAX_LAYERS: usize = 100_000;

/// A value and where it came from: the key that set it (or would have, for a default)
/// and the span to point at when a later cross-check fails.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct At<T> {
    pub value: T,
    pub key: String,
    pub span: Span,
}

impl<T> At<T> {
    pub fn new(value: T, key: impl Into<String>, span: Span) -> At<T> {
        At {
            value,
            key: key.into(),
            span,
        }
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> At<U> {
        At {
            value: f(self.value),
            key: self.key,
            span: self.span,
        }
    }
}

/// The diagnostics context of one input text.
pub(crate) struct Cx {
    pub file: String,
    pub src: Arc<str>,
    errors: Vec<Diagnostic>,
    warnings: Vec<String>,
}

impl Cx {
    pub fn new(file: &str, src: &str) -> Cx {
        Cx {
            file: file.to_string(),
            src: Arc::from(src),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error and returns it, so the caller may attach a note.
    pub fn error(
        &mut self,
        span: Span,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::at(self.file.clone(), &self.src, span, key, expected, found);
        let last = self.errors.len();
        self.errors.push(d);
        #[allow(clippy::indexing_slicing, reason = "the element just pushed")]
        &mut self.errors[last]
    }

    /// Records a warning, prefixed with `file:line:col` and the key.
    pub fn warn(&mut self, span: Span, key: &str, message: impl Display) {
        let (line, col) = line_col(&self.src, span.start);
        self.warnings
            .push(format!("{}:{line}:{col}: `{key}`: {message}", self.file));
    }

    /// The source text of a value, for "found …".
    pub fn describe(&self, node: &Node) -> String {
        node.describe(&self.src)
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The result of reading this input: the value if no error was recorded.
    pub fn finish<T>(self, value: Option<T>) -> Result<(T, Vec<String>), FrontendError> {
        match value {
            Some(v) if self.errors.is_empty() => Ok((v, self.warnings)),
            _ => {
                let mut errors = self.errors;
                // Reading order groups related checks; the user reads the file top down.
                errors.sort_by_key(|d| d.span.as_ref().map_or(usize::MAX, |s| s.start));
                Err(FrontendError::new(errors))
            }
        }
    }
}

/// The keys of one table. `prefix` turns a key name into what the user wrote
/// (`"mamba."` for TOML tables, `""` for a JSON object); `span` is where errors about
/// missing keys point (the table header, or the object's opening brace).
pub(crate) struct Fields<'t> {
    table: &'t Table,
    prefix: String,
    span: Span,
}

impl<'t> Fields<'t> {
    pub fn new(table: &'t Table, prefix: impl Into<String>, span: Span) -> Fields<'t> {
        Fields {
            table,
            prefix: prefix.into(),
            span,
        }
    }

    /// The key as the user wrote it.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Where errors about this table as a whole point.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// The value of `name`, JSON `null` included.
    pub fn node(&self, name: &str) -> Option<&'t Node> {
        self.table.get(name).map(|e| &e.value)
    }

    /// Whether `name` is present with a value other than `null`.
    pub fn present(&self, name: &str) -> bool {
        self.node(name).is_some_and(|n| !matches!(n.val, Val::Null))
    }

    /// A default value, attributed to `name` and pointing at the table.
    pub fn default_at<T>(&self, name: &str, value: T) -> At<T> {
        At::new(value, self.key(name), self.span())
    }

    /// Records "`name` is required".
    pub fn missing(&self, cx: &mut Cx, name: &str, expected: &str) {
        cx.error(
            self.span(),
            self.key(name),
            expected,
            "nothing (the key is missing)",
        );
    }

    fn type_error(&self, cx: &mut Cx, name: &str, node: &Node, expected: &str) {
        let found = cx.describe(node);
        cx.error(node.span.clone(), self.key(name), expected, found);
    }

    pub fn int(&self, cx: &mut Cx, name: &str) -> Option<At<i64>> {
        let node = self.node(name)?;
        match node.val {
            Val::Int(v) => Some(At::new(v, self.key(name), node.span.clone())),
            _ => {
                self.type_error(cx, name, node, "an integer");
                None
            }
        }
    }

    fn bounded_int(&self, cx: &mut Cx, name: &str, min: i64, expected: &str) -> Option<At<usize>> {
        let node = self.node(name)?;
        match node.val {
            Val::Int(v) if v >= min && v <= MAX_SIZE => usize::try_from(v)
                .ok()
                .map(|v| At::new(v, self.key(name), node.span.clone())),
            Val::Int(v) if v > MAX_SIZE => {
                let found = cx.describe(node);
                cx.error(
                    node.span.clone(),
                    self.key(name),
                    format!("{expected} no larger than {MAX_SIZE}"),
                    found,
                );
                None
            }
            _ => {
                self.type_error(cx, name, node, expected);
                None
            }
        }
    }

    /// An integer ≥ 1.
    pub fn pos_int(&self, cx: &mut Cx, name: &str) -> Option<At<usize>> {
        self.bounded_int(cx, name, 1, "a positive integer")
    }

    /// An integer ≥ 0.
    pub fn nonneg_int(&self, cx: &mut Cx, name: &str) -> Option<At<usize>> {
        self.bounded_int(cx, name, 0, "a non-negative integer")
    }

    /// A finite number > 0 (an integer is accepted).
    pub fn pos_float(&self, cx: &mut Cx, name: &str) -> Option<At<f64>> {
        let node = self.node(name)?;
        let v = match node.val {
            Val::Float(v) => v,
            Val::Int(v) => v as f64,
            _ => f64::NAN,
        };
        if v.is_finite() && v > 0.0 {
            Some(At::new(v, self.key(name), node.span.clone()))
        } else {
            self.type_error(cx, name, node, "a positive finite number");
            None
        }
    }

    pub fn bool(&self, cx: &mut Cx, name: &str) -> Option<At<bool>> {
        let node = self.node(name)?;
        match node.val {
            Val::Bool(v) => Some(At::new(v, self.key(name), node.span.clone())),
            _ => {
                self.type_error(cx, name, node, "`true` or `false`");
                None
            }
        }
    }

    pub fn str(&self, cx: &mut Cx, name: &str) -> Option<At<String>> {
        let node = self.node(name)?;
        match &node.val {
            Val::Str(s) => Some(At::new(s.clone(), self.key(name), node.span.clone())),
            _ => {
                self.type_error(cx, name, node, "a string");
                None
            }
        }
    }

    /// A string that must be one of `options`; a near miss gets a did-you-mean.
    pub fn choice<T: Copy>(&self, cx: &mut Cx, name: &str, options: &[(&str, T)]) -> Option<At<T>> {
        let s = self.str(cx, name)?;
        if let Some((_, v)) = options.iter().find(|(o, _)| *o == s.value) {
            return Some(s.map(|_| *v));
        }
        let names: Vec<&str> = options.iter().map(|(o, _)| *o).collect();
        let mut expected = one_of(&names);
        if let Some(best) = suggest(&s.value, &names) {
            expected.push_str(&format!(" (did you mean \"{best}\"?)"));
        }
        cx.error(s.span, s.key, expected, format!("\"{}\"", s.value));
        None
    }

    /// A nested table.
    pub fn table(&self, cx: &mut Cx, name: &str) -> Option<(&'t Table, Span)> {
        let node = self.node(name)?;
        match &node.val {
            Val::Table(t) => Some((t, node.span.clone())),
            _ => {
                self.type_error(cx, name, node, "a table");
                None
            }
        }
    }

    /// An array of integers ≥ 0 (each element checked, every bad one reported).
    pub fn index_list(&self, cx: &mut Cx, name: &str) -> Option<At<Vec<(usize, Span)>>> {
        let node = self.node(name)?;
        let Val::Array(items) = &node.val else {
            self.type_error(cx, name, node, "an array of non-negative integers");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.val {
                Val::Int(v) if (0..=MAX_SIZE).contains(&v) => {
                    out.push((v as usize, item.span.clone()))
                }
                _ => {
                    let found = cx.describe(item);
                    cx.error(
                        item.span.clone(),
                        format!("{}[{i}]", self.key(name)),
                        "a non-negative integer",
                        found,
                    );
                    ok = false;
                }
            }
        }
        ok.then(|| At::new(out, self.key(name), node.span.clone()))
    }

    /// An array of finite numbers > 0 (each element checked, every bad one reported).
    pub fn pos_float_list(&self, cx: &mut Cx, name: &str) -> Option<At<Vec<f64>>> {
        let node = self.node(name)?;
        let Val::Array(items) = &node.val else {
            self.type_error(cx, name, node, "an array of positive numbers");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let v = match item.val {
                Val::Float(v) => v,
                Val::Int(v) => v as f64,
                _ => f64::NAN,
            };
            if v.is_finite() && v > 0.0 {
                out.push(v);
            } else {
                let found = cx.describe(item);
                cx.error(
                    item.span.clone(),
                    format!("{}[{i}]", self.key(name)),
                    "a positive finite number",
                    found,
                );
                ok = false;
            }
        }
        ok.then(|| At::new(out, self.key(name), node.span.clone()))
    }

    /// Whether `name` is present with a value other than JSON `null` (which transformers
    /// reads as "not given").
    pub fn given(&self, name: &str) -> bool {
        self.node(name).is_some_and(|n| !matches!(n.val, Val::Null))
    }

    /// Errors for every key not in `known`, each with a suggestion: a key of this table
    /// spelled alike, or the same key in another table (`elsewhere` lists dotted keys).
    pub fn reject_unknown(&self, cx: &mut Cx, what: &str, known: &[&str], elsewhere: &[&str]) {
        for e in &self.table.entries {
            if known.contains(&e.key.as_str()) {
                continue;
            }
            let home = elsewhere
                .iter()
                .find(|k| k.rsplit('.').next() == Some(e.key.as_str()));
            let mut expected = format!("a key of {what}");
            if let Some(home) = home {
                expected.push_str(&format!(" (did you mean `{home}`?)"));
            } else if let Some(best) = suggest(&e.key, known) {
                expected.push_str(&format!(" (did you mean `{}`?)", self.key(best)));
            }
            cx.error(
                e.key_span.clone(),
                self.key(&e.key),
                expected,
                format!("unknown key `{}`", e.key),
            )
            .note = Some(format!("valid keys of {what}: {}", known.join(", ")));
        }
    }

    /// Warnings for every key in neither `known` nor `ignored` (JSON configs carry many
    /// keys that do not matter; a misspelt one still deserves a word).
    pub fn warn_unknown(&self, cx: &mut Cx, known: &[&str], ignored: &[&str]) {
        for e in &self.table.entries {
            if known.contains(&e.key.as_str()) || ignored.contains(&e.key.as_str()) {
                continue;
            }
            let mut msg = "unknown key, ignored".to_string();
            if let Some(best) = suggest(&e.key, known) {
                msg.push_str(&format!(" (did you mean `{}`?)", self.key(best)));
            }
            cx.warn(e.key_span.clone(), &self.key(&e.key), msg);
        }
    }
}

/// `"a", "b" or "c"`.
pub(crate) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match quoted.split_last() {
        None => "nothing".into(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Entry;

    fn table(entries: &[(&str, Val)]) -> Table {
        Table {
            entries: entries
                .iter()
                .enumerate()
                .map(|(i, (k, v))| Entry {
                    key: k.to_string(),
                    key_span: i..i + 1,
                    value: Node {
                        span: i..i + 1,
                        val: v.clone(),
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn suggest_finds_typos_only() {
        let keys = ["d_state", "d_conv", "expand"];
        assert_eq!(suggest("d_sate", &keys), Some("d_state"));
        assert_eq!(suggest("D_STATE", &keys), Some("d_state"));
        assert_eq!(suggest("vocabulary", &keys), None);
    }

    #[test]
    fn one_of_lists_choices() {
        assert_eq!(one_of(&["a"]), "\"a\"");
        assert_eq!(one_of(&["a", "b", "c"]), "\"a\", \"b\" or \"c\"");
    }

    #[test]
    fn getters_check_types_and_ranges() {
        let t = table(&[
            ("a", Val::Int(-1)),
            ("b", Val::Int(3)),
            ("c", Val::Str("x".into())),
            ("d", Val::Int(MAX_SIZE + 1)),
        ]);
        let f = Fields::new(&t, "s.", 0..0);
        let mut cx = Cx::new("f", "abcd");
        assert!(f.pos_int(&mut cx, "a").is_none());
        assert_eq!(f.pos_int(&mut cx, "b").map(|a| a.value), Some(3));
        assert!(f.bool(&mut cx, "c").is_none());
        assert!(f.pos_int(&mut cx, "d").is_none());
        assert!(f.pos_int(&mut cx, "missing").is_none());
        let err = cx.finish(Some(())).unwrap_err();
        let keys: Vec<&str> = err.diagnostics().iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["s.a", "s.c", "s.d"]);
    }

    #[test]
    fn unknown_keys_get_suggestions() {
        let t = table(&[("d_sate", Val::Int(1)), ("hidden_size", Val::Int(1))]);
        let f = Fields::new(&t, "mamba.", 0..0);
        let mut cx = Cx::new("f", "ab");
        f.reject_unknown(&mut cx, "[mamba]", &["d_state"], &["model.hidden_size"]);
        let err = cx.finish(Some(())).unwrap_err();
        let d = err.diagnostics();
        assert!(d[0].expected.contains("`mamba.d_state`"), "{}", d[0]);
        assert!(d[1].expected.contains("`model.hidden_size`"), "{}", d[1]);
    }
}
