//! Generated tokens as text, piece by piece: each token's text is what decoding all the
//! tokens so far adds; bytes of an unfinished character are held back, and so is any tail
//! that may be the start of a `stop` string, until the next token decides. A stop string
//! ends the text (it is not part of it).

use std::sync::Arc;

use crate::tokenizer::Tokenizer;

pub struct TextStream {
    tokenizer: Option<Arc<Tokenizer>>,
    stops: Vec<String>,
    ids: Vec<i64>,
    /// The text handed out so far.
    sent: String,
    stopped: bool,
}

impl TextStream {
    pub fn new(tokenizer: Option<Arc<Tokenizer>>, stops: Vec<String>) -> TextStream {
        TextStream {
            tokenizer,
            stops,
            ids: Vec::new(),
            sent: String::new(),
            stopped: false,
        }
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn text(&self) -> &str {
        &self.sent
    }

    /// Adds a token; returns the text that can be handed out now.
    pub fn push(&mut self, id: i64) -> String {
        self.ids.push(id);
        self.advance(false)
    }

    /// The rest of the text, at the end of the generation.
    pub fn finish(&mut self) -> String {
        self.advance(true)
    }

    fn advance(&mut self, last: bool) -> String {
        let Some(tok) = &self.tokenizer else {
            return String::new();
        };
        if self.stopped {
            return String::new();
        }
        let Ok(text) = tok.decode(&self.ids) else {
            return String::new();
        };
        // Decoding more tokens may respell earlier text (a leading space); then wait for
        // text that extends what was sent.
        let Some(new) = text.strip_prefix(self.sent.as_str()) else {
            return String::new();
        };
        if !last && new.ends_with('\u{FFFD}') {
            return String::new();
        }
        // A stop string anywhere in the text not yet final (it may start in what was
        // held back).
        let search_from =
            floor_boundary(&text, self.sent.len().saturating_sub(self.longest_stop()));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| {
                text[search_from..]
                    .find(s.as_str())
                    .map(|i| search_from + i)
            })
            .min();
        let end = match hit {
            Some(i) => {
                self.stopped = true;
                i.max(self.sent.len())
            }
            None if last => text.len(),
            None => text.len() - self.held_back(&text),
        };
        let end = floor_boundary(&text, end.max(self.sent.len()));
        let out = text[self.sent.len()..end].to_string();
        self.sent.push_str(&out);
        out
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }

    /// Bytes at the end of `text` that could begin a stop string.
    fn held_back(&self, text: &str) -> usize {
        let mut keep = 0;
        for s in &self.stops {
            for n in (1..s.len()).rev() {
                if n <= text.len() && s.is_char_boundary(n) && text.ends_with(&s[..n]) {
                    keep = keep.max(n);
                    break;
                }
            }
        }
        keep
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
