//! A spanned value tree shared by both input formats.
//!
//! TOML (`toml::de::DeTable`) and JSON (`jsonc_parser` AST) are converted into this one tree
//! so that type checks, unknown-key detection and diagnostics are written once
//! ([`crate::reader`]). Entries keep source order, so errors come out in reading order.

use std::ops::Range;

pub(crate) type Span = Range<usize>;

/// A value and the byte range of its text.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub span: Span,
    pub val: Val,
}

#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// JSON `null` (TOML has none).
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Node>),
    Table(Table),
    /// A value this frontend has no use for (a TOML datetime, an integer beyond i64); the
    /// text says what it is, for messages.
    Other(&'static str),
}

/// A table (TOML) or object (JSON), entries in source order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

impl Table {
    /// The first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

impl Val {
    /// What kind of value this is, with an article: "a string", "an integer".
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Str(_) => "a string",
            Val::Array(_) => "an array",
            Val::Table(_) => "a table",
            Val::Other(what) => what,
        }
    }
}

impl Node {
    /// How a diagnostic shows this value: its source text when short and on one line
    /// (`` `-4` ``, `` `"bff16"` ``), else its kind.
    pub fn describe(&self, source: &str) -> String {
        let text = source.get(self.span.clone()).unwrap_or("").trim();
        let scalar = !matches!(self.val, Val::Array(_) | Val::Table(_));
        if scalar && !text.is_empty() && text.len() <= 60 && !text.contains('\n') {
            format!("`{text}`")
        } else if let Val::Array(items) = &self.val {
            format!("an array of {} element(s)", items.len())
        } else {
            self.val.kind().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_uses_source_text_for_scalars() {
        let src = "x = -4";
        let n = Node {
            span: 4..6,
            val: Val::Int(-4),
        };
        assert_eq!(n.describe(src), "`-4`");
        let t = Node {
            span: 0..6,
            val: Val::Table(Table::default()),
        };
        assert_eq!(t.describe(src), "a table");
        let a = Node {
            span: 0..6,
            val: Val::Array(vec![n]),
        };
        assert_eq!(a.describe(src), "an array of 1 element(s)");
    }
}
