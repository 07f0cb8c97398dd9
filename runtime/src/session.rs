//! Generation: prefill fills every state (conv, SSM, KV), then decode advances one token
//! at a time from those states — never by re-running the prompt.

use std::any::Any;
use std::sync::Arc;

use zambac_engine::{StateRole, StateSpec};

use crate::error::RuntimeError;
use crate::sampling::{Sampler, Sampling};
use crate::tensor::Tensor;

/// The complete state of one sequence: every recurrent state and KV cache of the model, in
/// the engine's state layout order, the KV-cache capacity they were allocated for, and the
/// position of the next token (the tokens consumed so far).
///
/// A GPU backend keeps the tensors in device memory between calls ([`State::device`]):
/// then the host tensors are empty until [`State::to_host`] copies them back. Clones share
/// the device copy; a backend that is about to update a shared device copy duplicates it
/// first, so a clone never changes under its owner.
#[derive(Clone, Debug)]
pub struct State {
    tensors: Vec<(StateRole, Tensor)>,
    capacity: usize,
    position: usize,
    device: Option<Arc<dyn DeviceState>>,
}

/// A sequence's tensors held in a device's memory by the backend that runs it.
pub trait DeviceState: Send + Sync + std::fmt::Debug + Any {
    /// Copies the tensors back, in the engine's state layout order.
    fn download(&self) -> Result<Vec<(StateRole, Tensor)>, RuntimeError>;
    /// What the tensors are, in layout order.
    fn roles(&self) -> Vec<StateRole>;
    /// For the backend that made it, to recognise its own kind.
    fn as_any(&self) -> &dyn Any;
}

impl PartialEq for State {
    /// Equal tensors, capacity and position; device copies are equal only when shared.
    fn eq(&self, other: &State) -> bool {
        self.tensors == other.tensors
            && self.capacity == other.capacity
            && self.position == other.position
            && match (&self.device, &other.device) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl State {
    /// A state holding `tensors` at `position`, with caches of `capacity` tokens.
    pub fn new(tensors: Vec<(StateRole, Tensor)>, capacity: usize, position: usize) -> State {
        State {
            tensors,
            capacity,
            position,
            device: None,
        }
    }

    /// The device copy of the tensors, when a GPU backend holds them.
    pub fn device(&self) -> Option<&Arc<dyn DeviceState>> {
        self.device.as_ref()
    }

    /// Hands the tensors to a device: the host copies are dropped until [`State::to_host`].
    pub fn set_device(&mut self, device: Arc<dyn DeviceState>) {
        self.tensors.clear();
        self.device = Some(device);
    }

    /// Brings device-held tensors back to the host (nothing to do when they are there).
    pub fn to_host(&mut self) -> Result<(), RuntimeError> {
        if let Some(device) = &self.device {
            self.tensors = device.download()?;
            self.device = None;
        }
        Ok(())
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

    /// Gives the KV caches room for `capacity` positions (keeping what they hold); a
    /// smaller capacity than the current one leaves them as they are.
    pub fn grow(&mut self, capacity: usize) -> Result<(), RuntimeError> {
        if capacity <= self.capacity {
            return Ok(());
        }
        self.to_host()?;
        for (role, t) in &mut self.tensors {
            if !role.is_cache() {
                continue;
            }
            let &[heads, old, hd] = t.shape.as_slice() else {
                return Err(RuntimeError::Internal(format!(
                    "cache `{role}` has shape {:?}",
                    t.shape
                )));
            };
            let mut grown = Tensor::try_zeros(vec![heads, capacity, hd])?;
            // Each head's `old` rows move to the start of its `capacity` rows.
            for (to, from) in grown
                .data
                .chunks_exact_mut((capacity * hd).max(1))
                .zip(t.data.chunks_exact((old * hd).max(1)))
            {
                if let Some(rows) = to.get_mut(..from.len()) {
                    rows.copy_from_slice(from);
                }
            }
            *t = grown;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Moves the position on by `tokens` consumed.
    pub fn advance(&mut self, tokens: usize) {
        self.position += tokens;
    }

    /// Whether the model keeps KV caches (it has attention invocations).
    pub fn has_caches(&self) -> bool {
        match &self.device {
            Some(d) => d.roles().iter().any(|r| r.is_cache()),
            None => self.tensors.iter().any(|(r, _)| r.is_cache()),
        }
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

/// Something that executes a model: prefills (from the empty state or continuing a
/// sequence) and one-token decode steps.
pub trait Backend {
    /// Vocabulary size (columns of the logits).
    fn vocab_size(&self) -> usize;

    /// The empty state of a sequence whose KV caches hold `capacity` positions.
    fn new_state(&self, capacity: usize) -> Result<State, RuntimeError>;

    /// Runs `tokens` from `state`, at its position, updating it in place and moving its
    /// position on; returns the logits of every token, `[T, V]`. A new prompt starts from
    /// [`Backend::new_state`]; a continued one from the state an earlier call left — the
    /// result is the same as running all the tokens at once.
    fn extend(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError>;

    /// As [`Backend::extend`], but returns only the last token's logits, `[1, V]`: what
    /// generation needs, and what a compiled backend computes without the full `[T, V]`
    /// head product (benchmarks time this).
    fn extend_last(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        let logits = self.extend(tokens, state)?;
        let last = logits.row(logits.rows().saturating_sub(1)).to_vec();
        Ok(Tensor::new(vec![1, last.len()], last))
    }

    /// Runs the prompt from the empty state; returns logits `[T, V]` and the state, whose
    /// KV caches hold `capacity` positions and whose position is the prompt's length.
    fn prefill(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let mut state = self.new_state(capacity)?;
        let logits = self.extend(tokens, &mut state)?;
        Ok((logits, state))
    }

    /// As [`Backend::prefill`], with only the last position's logits, `[1, V]`.
    fn prefill_last(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let mut state = self.new_state(capacity)?;
        let logits = self.extend_last(tokens, &mut state)?;
        Ok((logits, state))
    }

    /// Advances one token at the state's position; returns logits `[1, V]`. The state is
    /// updated in place and its position moves on by one. After an error the state may be
    /// partly updated and must not be used again.
    fn decode(&mut self, token: i64, state: &mut State) -> Result<Tensor, RuntimeError>;

    /// Advances every sequence by one token (`tokens[i]` to `states[i]`, each at its own
    /// position); returns their logits `[B, V]`. Each sequence gets the logits decoding it
    /// alone would give. A backend that cannot batch decodes them one after the other.
    fn decode_batch(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        decode_each(self, tokens, states)
    }

    /// Host bytes of one sequence's state (recurrent states and KV caches) with caches of
    /// `capacity` positions, saturating. A backend that does not plan its memory (the
    /// reference interpreter) counts nothing here.
    fn state_bytes(&self, _capacity: usize) -> u64 {
        0
    }

    /// Host bytes of one call over `rows` tokens with caches of `capacity` positions: its
    /// activations and workspaces and the logits it returns, saturating. By default the
    /// logits only.
    fn call_bytes(&self, rows: usize, _capacity: usize) -> u64 {
        logit_bytes(rows, self.vocab_size())
    }

    /// What executes the model, as `label: text` lines for `--verbose` and reports.
    fn describe(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Saves a sequence's state to a snapshot file ([`crate::snapshot`]).
    fn save_state(&self, path: &std::path::Path, _state: &State) -> Result<(), RuntimeError> {
        Err(RuntimeError::Input(format!(
            "--save-state {}: this backend cannot save states; use an engine on the cpu backend",
            path.display()
        )))
    }

    /// Restores a snapshot, with KV caches of at least `capacity` positions.
    fn load_state(&self, path: &std::path::Path, _capacity: usize) -> Result<State, RuntimeError> {
        Err(RuntimeError::Input(format!(
            "--load-state {}: this backend cannot restore states; use an engine on the cpu backend",
            path.display()
        )))
    }
}

/// Bytes of a sequence's state in `layout` with caches of `capacity` positions, saturating.
pub fn layout_bytes(layout: &[StateSpec], capacity: usize) -> u64 {
    layout
        .iter()
        .map(|s| s.bytes(capacity).unwrap_or(u64::MAX))
        .fold(0u64, u64::saturating_add)
}

/// Bytes of `rows` rows of f32 logits over `vocab` columns, saturating.
pub fn logit_bytes(rows: usize, vocab: usize) -> u64 {
    (rows as u64).saturating_mul(vocab as u64).saturating_mul(4)
}

/// What a run will hold in memory at its peak, part by part.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    /// New sequences' states to allocate, each with caches of `capacity` positions.
    pub sequences: usize,
    pub capacity: usize,
    /// The most tokens one call runs (the prompt, or its largest chunk).
    pub rows: usize,
    /// Rows of logits handed back and kept by the caller.
    pub kept_rows: usize,
    /// Prompt token ids held (8 bytes each).
    pub prompt_tokens: usize,
    /// Memory set aside for saved states (a server's prefix cache).
    pub cache_bytes: u64,
}

/// Refuses `what` before anything is allocated when its states, one call's workspace and
/// the logits kept would not fit in the memory available now — with the bytes each part
/// needs. Sizes whose byte counts overflow are refused the same way.
pub fn check_fits(backend: &dyn Backend, what: &str, f: Footprint) -> Result<(), RuntimeError> {
    let mut budget = zambac_engine::resources::Budget::new();
    let state = backend.state_bytes(f.capacity);
    let states = if f.sequences == 1 {
        format!("state and KV caches at {} positions", f.capacity)
    } else {
        format!(
            "{} states and KV caches at {} positions",
            f.sequences, f.capacity
        )
    };
    budget
        .add_n(states, f.sequences as u64, state)
        .add(
            format!("workspace for a call over {} tokens", f.rows),
            backend.call_bytes(f.rows, f.capacity),
        )
        .add(
            format!("logits kept ({} rows)", f.kept_rows),
            logit_bytes(f.kept_rows, backend.vocab_size()),
        )
        .add_n("prompt ids", f.prompt_tokens as u64, 8)
        .add("prefix cache", f.cache_bytes);
    budget.check_memory(what).map_err(RuntimeError::Input)
}

/// Checks that a state can take one more token: its caches have room.
pub fn check_room(state: &State) -> Result<(), RuntimeError> {
    check_room_for(state, 1)
}

/// [`Backend::decode_batch`] as single decodes, one sequence after the other.
pub fn decode_each<B: Backend + ?Sized>(
    backend: &mut B,
    tokens: &[i64],
    states: &mut [&mut State],
) -> Result<Tensor, RuntimeError> {
    check_batch(tokens, states.len())?;
    let mut rows = Vec::with_capacity(tokens.len() * backend.vocab_size());
    for (t, s) in tokens.iter().zip(states.iter_mut()) {
        rows.extend_from_slice(&backend.decode(*t, s)?.data);
    }
    Ok(Tensor::new(vec![tokens.len(), backend.vocab_size()], rows))
}

/// Checks that a batched step has one token per sequence.
pub fn check_batch(tokens: &[i64], sequences: usize) -> Result<(), RuntimeError> {
    if tokens.len() == sequences {
        Ok(())
    } else {
        Err(RuntimeError::Internal(format!(
            "{} tokens for {sequences} sequences",
            tokens.len()
        )))
    }
}

/// Checks that a state's caches have room for `tokens` more tokens.
pub fn check_room_for(state: &State, tokens: usize) -> Result<(), RuntimeError> {
    let end = state.position().saturating_add(tokens);
    if state.has_caches() && end > state.capacity() {
        return Err(RuntimeError::Input(format!(
            "{tokens} more token(s) at position {} go past the KV-cache capacity {}",
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

/// How [`generate`] runs a request.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub sampling: Sampling,
    /// Prefill the prompt in chunks of this many tokens (all at once when `None`): a long
    /// prompt then never holds a batch for its whole length, and needs workspace for one
    /// chunk only.
    pub prefill_chunk: Option<usize>,
}

/// Prefills `prompt`, then generates `max_new` tokens, calling `on_token` for each.
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[i64],
    max_new: usize,
    sampling: Sampling,
    on_token: impl FnMut(i64),
) -> Result<Generation, RuntimeError> {
    let opts = Options {
        sampling,
        prefill_chunk: None,
    };
    generate_from(backend, None, prompt, max_new, opts, on_token).map(|(g, _)| g)
}

/// [`generate`] continuing from `state` (a sequence so far: its tokens are not run again)
/// or from the empty state; returns the generation and the state after everything it
/// consumed (the prompt and every generated token but the last, which was never fed back).
pub fn generate_from(
    backend: &mut dyn Backend,
    state: Option<State>,
    prompt: &[i64],
    max_new: usize,
    opts: Options,
    mut on_token: impl FnMut(i64),
) -> Result<(Generation, State), RuntimeError> {
    let vocab = backend.vocab_size();
    check_tokens(prompt, vocab)?;
    let too_long = || {
        RuntimeError::Input(format!(
            "a prompt of {} tokens and {max_new} new tokens is more than any context holds",
            prompt.len()
        ))
    };
    let consumed = prompt
        .len()
        .checked_add(max_new.saturating_sub(1))
        .ok_or_else(too_long)?;
    let capacity = match &state {
        Some(s) => s.capacity(),
        None => consumed.checked_add(1).ok_or_else(too_long)?,
    };
    let chunk = opts.prefill_chunk.unwrap_or(prompt.len()).max(1);
    let footprint = Footprint {
        sequences: usize::from(state.is_none()),
        capacity,
        rows: chunk.min(prompt.len()),
        kept_rows: prompt.len().saturating_add(max_new),
        prompt_tokens: 0,
        cache_bytes: 0,
    };
    check_fits(backend, "this run", footprint)?;
    let mut state = match state {
        Some(s) => s,
        None => backend.new_state(capacity)?,
    };
    check_room_for(&state, consumed)?;
    let mut prefill_rows: Vec<f32> = Vec::with_capacity(prompt.len() * vocab);
    for part in prompt.chunks(chunk) {
        let logits = backend.extend(part, &mut state)?;
        prefill_rows.extend_from_slice(&logits.data);
    }
    let prefill_logits = Tensor::new(vec![prompt.len(), vocab], prefill_rows);
    let mut sampler = Sampler::new(opts.sampling);
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
    let generation = Generation {
        prefill_logits,
        tokens,
        decode_logits: Tensor::new(vec![max_new, vocab], rows),
    };
    Ok((generation, state))
}
