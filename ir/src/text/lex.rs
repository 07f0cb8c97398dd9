//! Tokens of the `.zir` text form. `;` starts a comment that runs to the end of the line.

use super::ParseError;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// `%name` or `%12`.
    Value(String),
    /// `@12`: a parameter.
    ParamRef(u32),
    /// `@name`: a module or graph name.
    AtName(String),
    Ident(String),
    Int(u64),
    Float(f64),
    Str(String),
    Punct(char),
    Eof,
}

#[derive(Clone, Debug)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
    pub col: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

/// The unread rest of the source, and the position of its first character.
struct Cursor<'a> {
    rest: &'a [char],
    line: usize,
    col: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.first().copied()
    }

    /// The character after the next one.
    fn peek2(&self) -> Option<char> {
        self.rest.get(1).copied()
    }

    /// Steps over the next character without moving the column.
    fn step(&mut self) {
        if let Some((_, rest)) = self.rest.split_first() {
            self.rest = rest;
        }
    }

    /// Steps over the next character on the current line.
    fn bump(&mut self) {
        self.step();
        self.col += 1;
    }

    /// Steps over `n` characters on the current line.
    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    /// Steps over the next character if `keep` accepts it, and returns it.
    fn bump_if(&mut self, keep: impl FnOnce(char) -> bool) -> Option<char> {
        let c = self.peek().filter(|&c| keep(c))?;
        self.bump();
        Some(c)
    }
}

/// The tokens of `src`, and the end-of-input token that follows them.
pub fn lex(src: &str) -> Result<(Vec<Token>, Token), ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut cur = Cursor {
        rest: &chars,
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    let err = |line, col, msg: String| ParseError { line, col, msg };
    while let Some(c) = cur.peek() {
        let (tl, tc) = (cur.line, cur.col);
        if c == '\n' {
            cur.step();
            cur.line += 1;
            cur.col = 1;
            continue;
        }
        if c.is_whitespace() {
            cur.bump();
            continue;
        }
        if c == ';' {
            // The column stays: a newline, which resets it, or the end of input follows.
            while cur.peek().is_some_and(|c| c != '\n') {
                cur.step();
            }
            continue;
        }
        let tok = if c == '%' || c == '@' {
            cur.bump();
            let mut word = String::new();
            while let Some(d) = cur.bump_if(|d| is_ident_char(d) || (c == '@' && d == '-')) {
                word.push(d);
            }
            if word.is_empty() {
                return Err(err(tl, tc, format!("`{c}` must be followed by a name")));
            }
            match c {
                '%' => Tok::Value(word),
                _ if word.chars().all(|d| d.is_ascii_digit()) => {
                    Tok::ParamRef(word.parse().map_err(|_| {
                        err(tl, tc, format!("parameter number `{word}` is too large"))
                    })?)
                }
                _ => Tok::AtName(word),
            }
        } else if c == '"' {
            cur.bump();
            let mut s = String::new();
            loop {
                match cur.rest {
                    [] | ['\n', ..] => return Err(err(tl, tc, "unterminated string".into())),
                    ['"', ..] => {
                        cur.bump();
                        break;
                    }
                    ['\\', after @ ..] => {
                        let (c, len) = escape(after).ok_or_else(|| {
                            err(cur.line, cur.col, "unknown escape in string".into())
                        })?;
                        s.push(c);
                        cur.skip(1 + len);
                    }
                    [ch, ..] => {
                        s.push(*ch);
                        cur.bump();
                    }
                }
            }
            Tok::Str(s)
        } else if c.is_ascii_digit()
            || (c == '-' && cur.peek2().is_some_and(|d| d.is_ascii_digit()))
        {
            number(&mut cur).map_err(|m| err(tl, tc, m))?
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut word = String::new();
            while let Some(d) = cur.bump_if(is_ident_char) {
                word.push(d);
            }
            Tok::Ident(word)
        } else if "=,:{}()[]".contains(c) {
            cur.bump();
            Tok::Punct(c)
        } else {
            return Err(err(tl, tc, format!("unexpected character `{c}`")));
        };
        out.push(Token {
            tok,
            line: tl,
            col: tc,
        });
    }
    let eof = Token {
        tok: Tok::Eof,
        line: cur.line,
        col: cur.col,
    };
    Ok((out, eof))
}

/// Reads an integer, a float (Rust's `{:?}` spellings, `inf`/`NaN` excluded) or a hex
/// integer (`0x…`, used by content hashes), starting at a digit or a `-`.
fn number(cur: &mut Cursor) -> Result<Tok, String> {
    if cur.peek() == Some('0') && cur.peek2() == Some('x') {
        cur.skip(2);
        let mut text = String::new();
        while let Some(d) = cur.bump_if(|d| d.is_ascii_hexdigit()) {
            text.push(d);
        }
        return u64::from_str_radix(&text, 16)
            .map(Tok::Int)
            .map_err(|_| format!("bad hex number `0x{text}`"));
    }
    let mut float = false;
    // The first character (a digit or `-`) is read whatever it is.
    let mut text = String::new();
    let mut prev = cur.bump_if(|_| true);
    text.extend(prev);
    while let Some(c) = cur.bump_if(|c| {
        c.is_ascii_digit()
            || matches!(c, '.' | 'e' | 'E')
            || (matches!(c, '-' | '+') && matches!(prev, Some('e' | 'E')))
    }) {
        float |= matches!(c, '.' | 'e' | 'E');
        text.push(c);
        prev = Some(c);
    }
    if float {
        text.parse::<f64>()
            .map(Tok::Float)
            .map_err(|_| format!("bad number `{text}`"))
    } else if let Some(neg) = text.strip_prefix('-') {
        neg.parse::<f64>()
            .map(|x| Tok::Float(-x))
            .map_err(|_| format!("bad number `{text}`"))
    } else {
        text.parse::<u64>()
            .map(Tok::Int)
            .map_err(|_| format!("bad number `{text}`"))
    }
}

/// The character an escape after a backslash stands for (`\"`, `\\`, `\n`, `\t`, `\r`,
/// `\u{hex}`), and how many characters after the backslash it takes.
fn escape(rest: &[char]) -> Option<(char, usize)> {
    match rest.first()? {
        '"' => Some(('"', 1)),
        '\\' => Some(('\\', 1)),
        'n' => Some(('\n', 1)),
        't' => Some(('\t', 1)),
        'r' => Some(('\r', 1)),
        'u' => {
            if rest.get(1) != Some(&'{') {
                return None;
            }
            let close = rest.iter().take(10).position(|&c| c == '}')?;
            let hex: String = rest.get(2..close)?.iter().collect();
            let c = u32::from_str_radix(&hex, 16)
                .ok()
                .and_then(char::from_u32)?;
            Some((c, close + 1))
        }
        _ => None,
    }
}
