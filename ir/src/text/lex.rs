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

/// Splits `src` into tokens.
pub fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0usize, 1usize, 1usize);
    let err = |line, col, msg: String| ParseError { line, col, msg };
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        let start = i;
        let bump = |i: &mut usize, col: &mut usize| {
            *i += 1;
            *col += 1;
        };
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            bump(&mut i, &mut col);
            continue;
        }
        if c == ';' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let tok = if c == '%' || c == '@' {
            bump(&mut i, &mut col);
            while i < chars.len() && (is_ident_char(chars[i]) || (c == '@' && chars[i] == '-')) {
                bump(&mut i, &mut col);
            }
            let word: String = chars[start + 1..i].iter().collect();
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
            bump(&mut i, &mut col);
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None | Some('\n') => return Err(err(tl, tc, "unterminated string".into())),
                    Some('"') => {
                        bump(&mut i, &mut col);
                        break;
                    }
                    Some('\\') => {
                        let (c, len) = escape(&chars[i + 1..])
                            .ok_or_else(|| err(line, col, "unknown escape in string".into()))?;
                        s.push(c);
                        i += 1 + len;
                        col += 1 + len;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        bump(&mut i, &mut col);
                    }
                }
            }
            Tok::Str(s)
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            number(&chars, &mut i, &mut col).map_err(|m| err(tl, tc, m))?
        } else if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && is_ident_char(chars[i]) {
                bump(&mut i, &mut col);
            }
            Tok::Ident(chars[start..i].iter().collect())
        } else if "=,:{}()[]".contains(c) {
            bump(&mut i, &mut col);
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
    out.push(Token {
        tok: Tok::Eof,
        line,
        col,
    });
    Ok(out)
}

/// Reads an integer, a float (Rust's `{:?}` spellings, `inf`/`NaN` excluded) or a hex
/// integer (`0x…`, used by content hashes).
fn number(chars: &[char], i: &mut usize, col: &mut usize) -> Result<Tok, String> {
    let start = *i;
    if chars[*i] == '0' && chars.get(*i + 1) == Some(&'x') {
        *i += 2;
        while *i < chars.len() && chars[*i].is_ascii_hexdigit() {
            *i += 1;
        }
        *col += *i - start;
        let text: String = chars[start + 2..*i].iter().collect();
        return u64::from_str_radix(&text, 16)
            .map(Tok::Int)
            .map_err(|_| format!("bad hex number `0x{text}`"));
    }
    let mut float = false;
    *i += 1;
    while *i < chars.len() {
        let c = chars[*i];
        let prev = chars[*i - 1];
        if c.is_ascii_digit() {
        } else if c == '.' || c == 'e' || c == 'E' {
            float = true;
        } else if (c == '-' || c == '+') && (prev == 'e' || prev == 'E') {
        } else {
            break;
        }
        *i += 1;
    }
    *col += *i - start;
    let text: String = chars[start..*i].iter().collect();
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
