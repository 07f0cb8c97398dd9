//! Generation: prefill fills every state (conv, SSM, KV), then decode advances one token
//! at a time from those states — never by re-running the prompt.

use std::collections::HashMap;

use crate::error::RuntimeError;
use crate::sampling::{Sampler, Sampling};
use crate::tensor::{Tensor, Value};

/// Named recurrent states and KV caches of one sequence.
pub type State = HashMap<String, Value>;

/// Something that executes a model's `prefill` and `decode`.
pub trait Backend {
    /// Vocabulary size (columns of the logits).
    fn vocab_size(&self) -> usize;
    /// Runs the prompt from an empty state; returns logits `[T, V]` and the state, whose
    /// KV caches hold `capacity` positions.
    fn prefill(&mut self, tokens: &[i64], capacity: usize)
    -> Result<(Tensor, State), RuntimeError>;
    /// As [`Backend::prefill`], but returns only the last position's logits, `[1, V]`:
    /// what generation needs, and what a compiled backend can compute without the full
    /// `[T, V]` head product (benchmarks time this).
    fn prefill_last(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let (logits, state) = self.prefill(tokens, capacity)?;
        let last = logits.row(logits.rows().saturating_sub(1)).to_vec();
        Ok((Tensor::new(vec![1, last.len()], last), state))
    }

    /// Advances one token at position `pos`; returns logits `[1, V]` and the new state.
    fn decode(
        &mut self,
        token: i64,
        pos: usize,
        state: State,
    ) -> Result<(Tensor, State), RuntimeError>;
}

/// What one generation produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Prefill logits, every position: `[prompt_len, V]`.
    pub prefill_logits: Tensor,
    /// The generated tokens.
    pub tokens: Vec<i64>,
    /// The logits each generated token was chosen from: `[N, V]`; row 0 is the last
    /// prefill row.
    pub decode_logits: Tensor,
}

/// Checks token ids against the vocabulary: an error for the user, not a crash.
pub fn check_tokens(tokens: &[i64], vocab: usize) -> Result<(), RuntimeError> {
    if tokens.is_empty() {
        return Err(RuntimeError::Input(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        return Err(RuntimeError::Input(format!(
            "token id {bad} is outside the vocabulary (0..{vocab})"
        )));
    }
    Ok(())
}

/// Prefills `prompt`, then generates `max_new` tokens, calling `on_token` for each.
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[i64],
    max_new: usize,
    sampling: Sampling,
    mut on_token: impl FnMut(i64),
) -> Result<Generation, RuntimeError> {
    let vocab = backend.vocab_size();
    check_tokens(prompt, vocab)?;
    let capacity = prompt.len() + max_new.max(1);
    let (prefill_logits, mut state) = backend.prefill(prompt, capacity)?;
    let mut sampler = Sampler::new(sampling);
    let mut tokens = Vec::with_capacity(max_new);
    let mut rows: Vec<f32> = Vec::with_capacity(max_new * vocab);
    let mut row = prefill_logits.row(prompt.len() - 1).to_vec();
    for i in 0..max_new {
        let tok = sampler.pick(&row);
        tokens.push(tok);
        rows.extend_from_slice(&row);
        on_token(tok);
        if i + 1 == max_new {
            break;
        }
        let (logits, next) = backend.decode(tok, prompt.len() + i, state)?;
        state = next;
        row = logits.row(0).to_vec();
    }
    Ok(Generation {
        prefill_logits,
        tokens,
        decode_logits: Tensor::new(vec![max_new, vocab], rows),
    })
}
