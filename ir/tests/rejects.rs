//! Negative filetests: texts the IR must reject, each snapshotted with its error.
//!
//! Two layers reject bad IR, and each suite targets one:
//!
//! - `parser/*.zir` — [`parse_module`] rejects syntax (lexer and grammar), unresolved
//!   names (values, parameters), malformed attributes, and, because it rebuilds every op
//!   through type inference, operands an op does not accept and written result types that
//!   disagree with the inferred ones, as well as graph, input and output names given twice.
//!   Each case hits a different one of those checks; the snapshot is the error and the line
//!   it points at.
//! - `verifier/*.zir` — [`verify_module`]. Since the parser already rejects mistyped ops
//!   and duplicate names, these texts are read with [`parse_module_unverified`], which keeps
//!   the written types and duplicate names, so that the verifier is what rejects them.
//!   Memory plans (`in s3`) are checked only by the verifier, in both parsers. The snapshot
//!   shows what `parse_module` says about the same text (which layer would stop it first)
//!   and every error the verifier reports. Checks that no text can reach — a cycle (values
//!   are defined before use), a parameter with two nodes (every `@N` is one node), an edge
//!   into a missing operand slot — are unit-tested in `ir/src/verify.rs`.
//!
//! Both harnesses also assert, after the glob, that every text was rejected, so blessing a
//! snapshot of an accepted text cannot hide a check that stopped biting.

use std::path::Path;

use zambac_ir::text::ParseError;
use zambac_ir::{parse_module, parse_module_unverified, verify_module};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The error followed by the line it points at, with a caret under the column.
fn show_parse_error(src: &str, e: &ParseError) -> String {
    let line = src.lines().nth(e.line.saturating_sub(1)).unwrap_or("");
    let caret = " ".repeat(e.col.saturating_sub(1));
    format!("{e}\n{line}\n{caret}^\n")
}

/// What `parse_module` says, then every verifier error on the unverified parse; and
/// whether the verifier rejected the module.
fn verifier_case(path: &Path) -> (String, bool) {
    let src = read(path);
    let m = parse_module_unverified(&src)
        .unwrap_or_else(|e| panic!("{}: must parse: {e}", path.display()));
    let checked = match parse_module(&src) {
        Ok(_) => "accepts".to_string(),
        Err(e) => e.to_string(),
    };
    let mut out = format!("parse_module: {checked}\nverify_module:");
    match verify_module(&m) {
        Ok(()) => {
            out.push_str(" accepts\n");
            (out, false)
        }
        Err(errors) => {
            out.push('\n');
            for e in errors {
                out.push_str(&format!("  {e}\n"));
            }
            (out, true)
        }
    }
}

/// The parser's error for a case, or `None` if it parses.
fn parser_case(path: &Path) -> Option<String> {
    let src = read(path);
    parse_module(&src).err().map(|e| show_parse_error(&src, &e))
}

/// Fails naming every case that was accepted. Runs after the glob, so a broken check
/// shows how many cases it lets through rather than the first one.
fn assert_all_rejected(what: &str, accepted: &[String]) {
    assert!(
        accepted.is_empty(),
        "{what} accepts {} case(s): {accepted:?}",
        accepted.len()
    );
}

#[test]
fn verifier() {
    let mut accepted = Vec::new();
    insta::glob!("verifier/*.zir", |path| {
        let (out, rejected) = verifier_case(path);
        if !rejected {
            accepted.push(path.display().to_string());
        }
        insta::assert_snapshot!(out);
    });
    assert_all_rejected("the verifier", &accepted);
}

#[test]
fn parser() {
    let mut accepted = Vec::new();
    insta::glob!("parser/*.zir", |path| {
        let out = parser_case(path).unwrap_or_else(|| {
            accepted.push(path.display().to_string());
            "accepts\n".to_string()
        });
        insta::assert_snapshot!(out);
    });
    assert_all_rejected("the parser", &accepted);
}
