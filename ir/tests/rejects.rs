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
//! Both harnesses also assert that the text is rejected, so blessing a snapshot of an
//! accepted text cannot hide a check that stopped biting.

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

/// What `parse_module` says, then every verifier error on the unverified parse.
fn verifier_case(path: &Path) -> String {
    let src = read(path);
    let m = parse_module_unverified(&src)
        .unwrap_or_else(|e| panic!("{}: must parse: {e}", path.display()));
    let checked = match parse_module(&src) {
        Ok(_) => "accepts".to_string(),
        Err(e) => e.to_string(),
    };
    let errors = match verify_module(&m) {
        Ok(()) => panic!("{}: the verifier accepts it", path.display()),
        Err(errors) => errors,
    };
    let mut out = format!("parse_module: {checked}\nverify_module:\n");
    for e in errors {
        out.push_str(&format!("  {e}\n"));
    }
    out
}

#[test]
fn verifier() {
    insta::glob!("verifier/*.zir", |path| {
        insta::assert_snapshot!(verifier_case(path));
    });
}

#[test]
fn parser() {
    insta::glob!("parser/*.zir", |path| {
        let src = read(path);
        let e = match parse_module(&src) {
            Ok(_) => panic!("{}: the parser accepts it", path.display()),
            Err(e) => e,
        };
        insta::assert_snapshot!(show_parse_error(&src, &e));
    });
}
