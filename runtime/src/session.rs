//! Generation: prefill fills every state (conv, SSM, KV), then decode advances one token
//! at a time from those states — never by re-running the prompt.

use zambac_engine::{StateRole, StateSpec};

use crate::error::RuntimeError;
use crate::sampling::{Sampler, Sampling};
use crate::tensor::Tensor;

/// The complete state of one sequence: every recurrent state and KV cache of the model, in
/// the engine's state layout order, the KV-cache capacity they were allocated for, and the
/// position of the next token (the tokens consumed so far).
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    tensors: Vec<(StateRole, Tensor)>,
    capacity: usize,
    position: usize,
}

impl State {
    /// A state holding `tensors` at `position`, with caches of `capacity` tokens.
    pub fn new(tensors: Vec<(StateRole, Tensor)>, capacity: usize, position: usize) -> State {
        State {
            tensors,
            capacity,
            position,
        }
    }

    /// The zero state of a layout: nothing consumed yet.
    pub fn zeros(layout: &[StateSpec], capacity: usize) -> Result<State, RuntimeError> {
        let tensors = layout
            .iter()
            .map(|s| {
                let dims = s.dims(capacity).ok_or_else(|| {
                    RuntimeError::Input(format!(
                        "state `{}` does not fit a capacity of {capacity} tokens",
                        s.role
                    ))
                })?;
                Tensor::try_zeros(dims).map(|t| (s.role, t))
            })
            .collect::<Result<_, _>>()?;
        Ok(State::new(tensors, capacity, 0))
    }

    /// Positions each KV cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tokens consumed so far: the position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Moves the position on by `tokens` consumed.
    pub fn advance(&mut self, tokens: usize) {
        self.position += tokens;
    }

    /// Whether the model keeps KV caches (it has attention invocations).
    pub fn has_caches(&self) -> bool {
        self.tensors.iter().any(|(r, _)| r.is_cache())
    }

    pub fn get(&self, role: StateRole) -> Option<&Tensor> {
        self.tensors
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| t)
    }

    pub fn get_mut(&mut self, role: StateRole) -> Option<&mut Tensor> {
        self.tensors
            .iter_mut()
            .find(|(r, _)| *r == role)
            .map(|(_, t)| t)
    }

    /// Takes a tensor out (a state missing it is no longer usable for decoding).
    pub fn remove(&mut self, role: StateRole) -> Option<Tensor> {
        let i = self.tensors.iter().position(|(r, _)| *r == role)?;
        Some(self.tensors.remove(i).1)
    }

    /// The tensors in layout order.
    pub fn iter(&self) -> impl Iterator<Item = (StateRole, &Tensor)> {
        self.tensors.iter().map(|(r, t)| (*r, t))
    }

    /// The tensors, for a backend that runs on them by value and puts them back with
    /// [`State::restore`].
    pub fn take_tensors(&mut self) -> Vec<(StateRole, Tensor)> {
        std::mem::take(&mut self.tensors)
    }

    pub fn restore(&mut self, tensors: Vec<(StateRole, Tensor)>) {
        self.tensors = tensors;
    }
}

/// Something that executes a model's `prefill` and `decode`.
pub trait Backend {
    /// Vocabulary size (columns of the logits).
    fn vocab_size(&self) -> usize;
    /// Runs the prompt from an empty state; returns logits `[T, V]` and the state, whose
    /// KV caches hold `capacity` positions and whose position is the prompt's length.
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

    /// Advances one token at the state's position; returns logits `[1, V]`. The state is
    /// updated in place and its position moves on by one. After an error the state may be
    /// partly updated and must not be used again.
    fn decode(&mut self, token: i64, state: &mut State) -> Result<Tensor, RuntimeError>;

    /// What executes the model, as `label: text` lines for `--verbose` and reports.
    fn describe(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Checks that a state can take one more token: its caches have room.
pub fn check_room(state: &State) -> Result<(), RuntimeError> {
    if state.has_caches() && state.position() >= state.capacity() {
        return Err(RuntimeError::Input(format!(
            "position {} is past the KV-cache capacity {}",
            state.position(),
            state.capacity()
        )));
    }
    Ok(())
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
        let logits = backend.decode(tok, &mut state)?;
        row = logits.row(0).to_vec();
    }
    Ok(Generation {
        prefill_logits,
        tokens,
        decode_logits: Tensor::new(vec![max_new, vocab], rows),
    })
}
