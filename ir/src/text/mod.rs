//! The `.zir` text form: printer and parser. `print(parse(text)) == text` for every text
//! the printer writes, which is what snapshots, dumps and filetests rely on.

mod lex;
mod parse;
mod print;

pub use parse::{parse_module, parse_module_unverified};
pub use print::{print_graph, print_module};

/// A syntax or typing error in `.zir` text, with its 1-based position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{line}:{col}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}
