//! Diagnostics: what went wrong in a model description, said for the person who wrote it.
//!
//! One [`Diagnostic`] names the file (or a label such as `--sweep shared.every=4`), the
//! place in it, the key, what was expected and what was found. A [`FrontendError`] carries
//! every independent problem found in one input, so a user fixes them in one round.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term;

/// One problem in one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The path of the input, or a label for inputs that are not files (`--sweep k=v`).
    pub file: String,
    /// Byte range of the offending key or value in the input, when known.
    pub span: Option<Range<usize>>,
    /// 1-based line and column (in characters) of the start of `span`.
    pub line_col: Option<(usize, usize)>,
    /// The key as the user wrote it: a dotted TOML key (`mamba.d_state`) or a JSON key
    /// (`mamba_d_state`).
    pub key: String,
    /// What the key should have held.
    pub expected: String,
    /// What it held.
    pub found: String,
    /// Extra explanation: why the rule exists, or how to fix it.
    pub note: Option<String>,
    /// The input text, kept for [`Diagnostic::render`].
    source: Option<Arc<str>>,
}

impl Diagnostic {
    /// A diagnostic about a whole file (unreadable, missing): no position.
    pub fn new(
        file: impl Into<String>,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            span: None,
            line_col: None,
            key: key.into(),
            expected: expected.into(),
            found: found.into(),
            note: None,
            source: None,
        }
    }

    /// A diagnostic at `span` of `source`; the span is clamped into the text.
    pub fn at(
        file: impl Into<String>,
        source: &Arc<str>,
        span: Range<usize>,
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Diagnostic {
        let span = clamp_span(source, span);
        Diagnostic {
            line_col: Some(line_col(source, span.start)),
            span: Some(span),
            source: Some(Arc::clone(source)),
            ..Diagnostic::new(file, key, expected, found)
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.note = Some(note.into());
        self
    }

    /// The input text this diagnostic points into, if any.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The message without the location: "`key`: expected …, found …".
    pub fn message(&self) -> String {
        format!(
            "`{}`: expected {}, found {}",
            self.key, self.expected, self.found
        )
    }

    /// `file:line:col`, or just `file` when the position is unknown.
    pub fn location(&self) -> String {
        match self.line_col {
            Some((line, col)) => format!("{}:{line}:{col}", self.file),
            None => self.file.clone(),
        }
    }

    /// A source snippet with the offending text underlined (codespan-reporting, no colour).
    pub fn render(&self) -> String {
        let (Some(source), Some(span)) = (&self.source, &self.span) else {
            return self.render_plain();
        };
        let file = SimpleFile::new(self.file.as_str(), source.as_ref());
        let mut report = Report::error().with_message(self.message()).with_label(
            Label::primary((), span.clone()).with_message(format!("found {}", self.found)),
        );
        if let Some(note) = &self.note {
            report = report.with_note(note.clone());
        }
        term::emit_into_string(&term::Config::default(), &file, &report)
            .unwrap_or_else(|_| self.render_plain())
    }

    fn render_plain(&self) -> String {
        let mut out = format!("{self}\n");
        if let Some(note) = &self.note {
            out.push_str(&format!("  = {note}\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location(), self.message())
    }
}

/// Every problem found in one input (never empty).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}", display_lines(.diagnostics))]
pub struct FrontendError {
    diagnostics: Vec<Diagnostic>,
}

impl FrontendError {
    /// Wraps the diagnostics; an empty list becomes one generic diagnostic so that an
    /// error value always explains itself.
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> FrontendError {
        if diagnostics.is_empty() {
            diagnostics.push(Diagnostic::new(
                "<input>",
                "<input>",
                "a valid model description",
                "an error that was not described (a zambac bug)",
            ));
        }
        FrontendError { diagnostics }
    }

    pub fn single(diagnostic: Diagnostic) -> FrontendError {
        FrontendError::new(vec![diagnostic])
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics
    }

    /// All diagnostics rendered as snippets, then a count when there are several.
    pub fn render(&self) -> String {
        let mut out: String = self.diagnostics.iter().map(Diagnostic::render).collect();
        if self.diagnostics.len() > 1 {
            out.push_str(&format!("{} errors\n", self.diagnostics.len()));
        }
        out
    }
}

impl From<Diagnostic> for FrontendError {
    fn from(d: Diagnostic) -> FrontendError {
        FrontendError::single(d)
    }
}

fn display_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset.min(text.len()));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

fn clamp_span(text: &str, span: Range<usize>) -> Range<usize> {
    let start = floor_char_boundary(text, span.start.min(text.len()));
    let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
    start..end
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn line_col_counts_lines_and_characters() {
        let t = "ab\nçd = 1\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        // `d` comes after the two-byte `ç`: column 2.
        assert_eq!(line_col(t, 5), (2, 2));
        assert_eq!(line_col(t, 100), (3, 1));
    }

    #[test]
    fn display_is_one_line_with_location_and_key() {
        let d = Diagnostic::at(
            "m.toml",
            &src("[mamba]\nd_state = -4\n"),
            18..20,
            "mamba.d_state",
            "a positive integer",
            "`-4`",
        );
        assert_eq!(
            d.to_string(),
            "m.toml:2:11: error: `mamba.d_state`: expected a positive integer, found `-4`"
        );
    }

    #[test]
    fn display_without_position_names_the_file() {
        let d = Diagnostic::new("x.toml", "x.toml", "a readable file", "no such file");
        assert_eq!(
            d.to_string(),
            "x.toml: error: `x.toml`: expected a readable file, found no such file"
        );
        assert!(d.render().contains("x.toml: error"));
    }

    #[test]
    fn spans_outside_the_text_are_clamped() {
        let d = Diagnostic::at("f", &src("é"), 1..99, "k", "e", "f");
        assert_eq!(d.span, Some(0..2));
        assert!(!d.render().is_empty());
    }

    #[test]
    fn render_has_snippet_and_note() {
        let d = Diagnostic::at(
            "m.toml",
            &src("[model]\nhidden_size = 0\n"),
            22..23,
            "model.hidden_size",
            "a positive integer",
            "`0`",
        )
        .with_note("sizes must be at least 1");
        let r = d.render();
        assert!(r.contains("hidden_size = 0"), "{r}");
        assert!(r.contains("sizes must be at least 1"), "{r}");
        assert!(r.contains("m.toml:2:15"), "{r}");
    }

    #[test]
    fn empty_error_still_explains_itself() {
        let e = FrontendError::new(vec![]);
        assert_eq!(e.diagnostics().len(), 1);
    }
}
