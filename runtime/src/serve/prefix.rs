//! Prefix reuse: states of sequences the server has run, keyed by the tokens they consumed
//! (at prefill chunk boundaries and at the end of each request), in an LRU bounded in
//! bytes. A prompt that extends a cached sequence starts from a copy of its state, and only
//! the rest of the prompt is prefilled — which equals prefilling it all (continuation).

use crate::session::State;

struct Entry {
    tokens: Vec<i64>,
    state: State,
    bytes: usize,
    last_used: u64,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    limit: usize,
    bytes: usize,
    clock: u64,
}

/// Bytes a state holds (its tensors' data and the key).
fn size_of(state: &State, tokens: &[i64]) -> usize {
    state.iter().map(|(_, t)| t.data.len() * 4).sum::<usize>() + tokens.len() * 8
}

impl PrefixCache {
    /// A cache holding at most `limit` bytes (0 turns reuse off).
    pub fn new(limit: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            limit,
            bytes: 0,
            clock: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A copy of the state of the longest cached sequence that `prompt` strictly extends
    /// (at least one prompt token is left to prefill, for the logits), and its length.
    pub fn lookup(&mut self, prompt: &[i64]) -> Option<(State, usize)> {
        self.clock += 1;
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|e| e.tokens.len())?;
        best.last_used = self.clock;
        Some((best.state.clone(), best.tokens.len()))
    }

    /// Remembers the state after `tokens`, evicting the least recently used entries to stay
    /// within the limit. A state larger than the whole limit is not kept.
    pub fn insert(&mut self, tokens: &[i64], state: &State) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens == tokens) {
            e.last_used = self.clock;
            return;
        }
        let bytes = size_of(state, tokens);
        if bytes > self.limit {
            return;
        }
        while self.bytes + bytes > self.limit {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            state: state.clone(),
            bytes,
            last_used: self.clock,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use zambac_engine::StateRole;

    fn state(v: f32) -> State {
        let t = Tensor::new(vec![4], vec![v; 4]);
        State::new(vec![(StateRole::Ssm { layer: 0 }, t)], 8, 0)
    }

    #[test]
    fn the_longest_strict_prefix_wins_and_the_oldest_goes_first() {
        let one = size_of(&state(0.0), &[1, 2]);
        let mut c = PrefixCache::new(2 * one);
        c.insert(&[1, 2], &state(1.0));
        c.insert(&[1, 3], &state(2.0));
        assert_eq!(c.len(), 2);
        // Not a strict prefix: the whole prompt is cached, but its logits are not.
        assert!(c.lookup(&[1, 2]).is_none());
        let (s, n) = c.lookup(&[1, 2, 5]).unwrap();
        assert_eq!((n, s.iter().next().unwrap().1.data[0]), (2, 1.0));
        // [1, 3] is now the least recently used and makes room.
        c.insert(&[7, 8], &state(3.0));
        assert_eq!(c.len(), 2);
        assert!(c.lookup(&[1, 3, 4]).is_none());
        assert!(c.lookup(&[1, 2, 4]).is_some());
        assert_eq!(c.bytes(), 2 * one);
        let mut off = PrefixCache::new(0);
        off.insert(&[1], &state(0.0));
        assert!(off.is_empty());
    }
}
