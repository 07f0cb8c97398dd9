//! Text to [`Node`] trees: TOML through `toml::de::DeTable`, JSON through `jsonc_parser`
//! (strict JSON: no comments, no trailing commas). A syntax error becomes a diagnostic at
//! the parser's position, attributed to the nearest key so the reader knows where to look.

use jsonc_parser::ast;
use toml::de::{DeTable, DeValue};

use crate::node::{Entry, Node, Span, Table, Val};
use crate::reader::Cx;

/// Parses a TOML document; `None` after recording a syntax error.
pub(crate) fn parse_toml(cx: &mut Cx) -> Option<Table> {
    let src = cx.src.clone();
    match DeTable::parse(&src) {
        Ok(doc) => Some(toml_table(doc.get_ref())),
        Err(e) => {
            let at = e.span().map_or(src.len(), |s| s.start);
            let key = nearest_toml_key(&src, at).unwrap_or_else(|| "TOML syntax".into());
            cx.error(
                at..e.span().map_or(at, |s| s.end.max(at)),
                key,
                "valid TOML",
                e.message().to_string(),
            );
            None
        }
    }
}

fn toml_table(t: &DeTable<'_>) -> Table {
    let mut entries: Vec<Entry> = t
        .iter()
        .map(|(k, v)| Entry {
            key: k.get_ref().to_string(),
            key_span: k.span(),
            value: Node {
                span: v.span(),
                val: toml_value(v.get_ref()),
            },
        })
        .collect();
    // The table is ordered by key name; diagnostics read better in source order.
    entries.sort_by_key(|e| e.key_span.start);
    Table { entries }
}

fn toml_value(v: &DeValue<'_>) -> Val {
    match v {
        DeValue::String(s) => Val::Str(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_or(Val::Other("an integer too large"), Val::Int),
        DeValue::Float(f) => f
            .as_str()
            .parse()
            .map_or(Val::Other("a malformed float"), Val::Float),
        DeValue::Boolean(b) => Val::Bool(*b),
        DeValue::Datetime(_) => Val::Other("a date-time"),
        DeValue::Array(items) => Val::Array(
            items
                .iter()
                .map(|i| Node {
                    span: i.span(),
                    val: toml_value(i.get_ref()),
                })
                .collect(),
        ),
        DeValue::Table(t) => Val::Table(toml_table(t)),
    }
}

/// The dotted key of the line holding byte `at`, or of the table header above it.
fn nearest_toml_key(src: &str, at: usize) -> Option<String> {
    let at = at.min(src.len());
    let line_start = src
        .get(..at)
        .and_then(|s| s.rfind('\n'))
        .map_or(0, |i| i + 1);
    let line = src
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let header_of = |l: &str| {
        let l = l.trim().trim_start_matches('[');
        let name = l.split(']').next().unwrap_or("").trim();
        (!name.is_empty()).then(|| name.to_string())
    };
    if line.trim_start().starts_with('[') {
        return header_of(line);
    }
    let table = src
        .get(..line_start)
        .unwrap_or("")
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('['))
        .and_then(header_of);
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && line.contains('=') && !k.starts_with('#'));
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_string()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// Parses a JSON document; `None` after recording a syntax error or a duplicate key.
pub(crate) fn parse_json(cx: &mut Cx) -> Option<Node> {
    let src = cx.src.clone();
    let options = jsonc_parser::ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    };
    match jsonc_parser::parse_to_ast(&src, &Default::default(), &options) {
        Ok(parsed) => match parsed.value {
            Some(v) => {
                let node = json_value(cx, &v);
                (!cx.has_errors()).then_some(node)
            }
            None => {
                cx.error(0..0, "JSON syntax", "a JSON object", "an empty file");
                None
            }
        },
        Err(e) => {
            use jsonc_parser::errors::ParseErrorKind as K;
            // The parser blames an unclosed object on its opening brace; the reader wants
            // to know where the text stopped.
            let r = match e.kind() {
                K::UnterminatedObject | K::UnterminatedArray => src.len()..src.len(),
                _ => e.range().start..e.range().end,
            };
            let key = nearest_json_key(&src, r.start).unwrap_or_else(|| "JSON syntax".into());
            cx.error(r, key, "valid JSON", e.kind().to_string().to_lowercase());
            None
        }
    }
}

fn json_value(cx: &mut Cx, v: &ast::Value<'_>) -> Node {
    let span = |r: jsonc_parser::common::Range| -> Span { r.start..r.end };
    match v {
        ast::Value::StringLit(s) => Node {
            span: span(s.range),
            val: Val::Str(s.value.to_string()),
        },
        ast::Value::NumberLit(n) => Node {
            span: span(n.range),
            val: json_number(n.value),
        },
        ast::Value::BooleanLit(b) => Node {
            span: span(b.range),
            val: Val::Bool(b.value),
        },
        ast::Value::NullKeyword(n) => Node {
            span: span(n.range),
            val: Val::Null,
        },
        ast::Value::Array(a) => Node {
            span: span(a.range),
            val: Val::Array(a.elements.iter().map(|e| json_value(cx, e)).collect()),
        },
        ast::Value::Object(o) => {
            let mut entries: Vec<Entry> = Vec::with_capacity(o.properties.len());
            for p in &o.properties {
                let (key, key_span) = match &p.name {
                    ast::ObjectPropName::String(s) => (s.value.to_string(), span(s.range)),
                    ast::ObjectPropName::Word(w) => (w.value.to_string(), span(w.range)),
                };
                if let Some(first) = entries.iter().find(|e| e.key == key) {
                    let (line, col) = crate::error::line_col(&cx.src, first.key_span.start);
                    cx.error(
                        key_span.clone(),
                        key.clone(),
                        "each key once",
                        format!("a second `{key}` (the first is at line {line}, column {col})"),
                    );
                }
                let value = json_value(cx, &p.value);
                entries.push(Entry {
                    key,
                    key_span,
                    value,
                });
            }
            Node {
                span: span(o.range),
                val: Val::Table(Table { entries }),
            }
        }
    }
}

fn json_number(text: &str) -> Val {
    if text.contains(['.', 'e', 'E']) {
        text.parse()
            .map_or(Val::Other("a malformed number"), Val::Float)
    } else {
        text.parse()
            .map_or(Val::Other("an integer too large"), Val::Int)
    }
}

/// The last object key that starts before byte `at` (a tiny scan that skips strings).
fn nearest_json_key(src: &str, at: usize) -> Option<String> {
    let bytes = src.as_bytes();
    let end = at.min(bytes.len());
    let mut last = None;
    let mut i = 0;
    while i < end {
        if bytes.get(i) != Some(&b'"') {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut j = start;
        while let Some(&b) = bytes.get(j).filter(|&&b| b != b'"') {
            j += if b == b'\\' { 2 } else { 1 };
        }
        let after = src.get(j.min(src.len()) + 1..).unwrap_or("");
        if after.trim_start().starts_with(':') {
            last = src.get(start..j.min(src.len())).map(str::to_string);
        }
        i = j + 1;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_entries_keep_source_order_and_spans() {
        let mut cx = Cx::new("t.toml", "[model]\nz = 1\na = 0x10\n");
        let t = parse_toml(&mut cx).unwrap();
        let Val::Table(model) = &t.entries[0].value.val else {
            panic!()
        };
        let keys: Vec<&str> = model.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["z", "a"]);
        assert!(matches!(model.entries[1].value.val, Val::Int(16)));
        assert_eq!(&cx.src[model.entries[1].value.span.clone()], "0x10");
    }

    #[test]
    fn toml_syntax_error_names_nearest_key() {
        let mut cx = Cx::new("t.toml", "[mamba]\nd_state = \n");
        assert!(parse_toml(&mut cx).is_none());
        let e = cx.finish(Some(())).unwrap_err();
        assert_eq!(e.diagnostics()[0].key, "mamba.d_state");
        assert_eq!(e.diagnostics()[0].line_col, Some((2, 11)));
    }

    #[test]
    fn nearest_toml_key_handles_headers() {
        assert_eq!(nearest_toml_key("[mamba\n", 3).as_deref(), Some("mamba"));
        assert_eq!(nearest_toml_key("x\n", 0), None);
    }

    #[test]
    fn json_numbers_and_null() {
        let mut cx = Cx::new(
            "c.json",
            r#"{"a": 1, "b": 1e-05, "c": null, "d": 99999999999999999999}"#,
        );
        let n = parse_json(&mut cx).unwrap();
        let Val::Table(t) = n.val else { panic!() };
        assert!(matches!(t.entries[0].value.val, Val::Int(1)));
        assert!(matches!(t.entries[1].value.val, Val::Float(f) if f == 1e-5));
        assert!(matches!(t.entries[2].value.val, Val::Null));
        assert!(matches!(t.entries[3].value.val, Val::Other(_)));
    }

    #[test]
    fn json_syntax_and_duplicates() {
        let mut cx = Cx::new(
            "c.json",
            "{\n  \"hidden_size\": 64,\n  \"vocab_size\": 12,\n}",
        );
        assert!(parse_json(&mut cx).is_none());
        let e = cx.finish(Some(())).unwrap_err();
        assert_eq!(e.diagnostics()[0].key, "vocab_size");

        let mut cx = Cx::new("c.json", r#"{"a": 1, "a": 2}"#);
        assert!(parse_json(&mut cx).is_none());
        let e = cx.finish(Some(())).unwrap_err();
        assert!(e.diagnostics()[0].found.contains("second `a`"));
    }

    #[test]
    fn nearest_json_key_skips_string_values() {
        let src = r#"{"a": "x:", "b": [1, "#;
        assert_eq!(nearest_json_key(src, src.len()).as_deref(), Some("b"));
    }
}
