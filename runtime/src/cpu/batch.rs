//! Batched decode on the cpu backend: B sequences, each at its own position with its own
//! state and KV capacity, advanced by one token in one step of the decode program
//! ([`super::exec::Executor::run_batch`]: the weights are read once for all of them).

use zambac_engine::Elem;

use super::CpuBackend;
use super::exec::{CallBuffers, Dims, Region, SeqCall};
use crate::error::RuntimeError;
use crate::session::{Backend, State, check_batch, check_room, check_tokens};
use crate::tensor::Tensor;
use zambac_engine::resources::{available_memory, human_bytes};

/// Sequences one batched step takes at most, whatever the memory allows.
pub const MAX_BATCH: usize = 256;

impl CpuBackend {
    /// One decode step for every sequence: `tokens[i]` advances `states[i]`.
    pub(super) fn step_batch(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        check_batch(tokens, states.len())?;
        for s in states.iter_mut() {
            s.to_host()?;
        }
        if tokens.len() > MAX_BATCH {
            return Err(RuntimeError::Input(format!(
                "a batch of {} sequences is more than the {MAX_BATCH} one step takes",
                tokens.len()
            )));
        }
        check_tokens(tokens, self.vocab)?;
        // One sequence: the single-sequence decode (its Gemv kernels stream the weights at
        // full speed; a one-row product would not) — but with bf16 products, which round
        // the activations, the products of a batch of one (see `decode`).
        if let ([token], [state]) = (tokens, &mut *states)
            && !self.bf16
        {
            return self.decode(*token, state);
        }
        self.step_together(tokens, states)
    }

    /// [`Self::step_batch`] for checked tokens and host states: one step of the decode
    /// program for all the sequences together, the weights read once.
    pub(super) fn step_together(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        // Every sequence's logits go straight into its row of the step's `[B, vocab]`.
        let vocab = self.vocab;
        let mut rows = Tensor::try_zeros(vec![tokens.len(), vocab])?;
        let mut outputs = Vec::with_capacity(tokens.len());
        let mut dims = Vec::with_capacity(tokens.len());
        for (s, row) in states
            .iter_mut()
            .zip(rows.data.chunks_exact_mut(vocab.max(1)))
        {
            check_room(s)?;
            let d = Dims {
                t: 1,
                c: s.capacity(),
                pos: s.position(),
            };
            outputs.push(self.outputs_into(&self.decode, d, s, Region::f32(row))?);
            dims.push(d);
        }
        let mut token_bufs: Vec<[i64; 1]> = tokens.iter().map(|&t| [t]).collect();
        let mut pos_bufs = dims
            .iter()
            .map(|d| {
                i64::try_from(d.pos)
                    .map(|p| [p])
                    .map_err(|_| RuntimeError::Input(format!("position {} is too large", d.pos)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let i64_region = |b: &mut [i64; 1]| Region {
            ptr: b.as_mut_ptr().cast(),
            len: 1,
            kind: Elem::I64,
        };
        let seqs: Vec<SeqCall<'_>> = token_bufs
            .iter_mut()
            .zip(pos_bufs.iter_mut())
            .zip(&outputs)
            .zip(&dims)
            .map(|(((t, p), o), d)| SeqCall {
                d: *d,
                call: CallBuffers {
                    tokens: i64_region(t),
                    pos: i64_region(p),
                    outputs: o,
                },
            })
            .collect();
        let name = self.decode.name;
        self.exec
            .run_batch(&self.decode, &seqs)
            .map_err(|e| self.manifest_error(format!("program `{name}` (batched), {e}")))?;
        for s in states.iter_mut() {
            s.advance(1);
        }
        Ok(rows)
    }

    /// Refuses `batch` sequences of `capacity` tokens when their states and KV caches do not
    /// fit in the memory available now, saying how much they need and how many fit.
    pub fn check_batch_fits(&self, batch: usize, capacity: usize) -> Result<(), RuntimeError> {
        let fits = self.max_batch(capacity);
        if batch <= fits {
            return Ok(());
        }
        let one = self.state_bytes(capacity);
        Err(RuntimeError::Input(format!(
            "{batch} sequences of {capacity} tokens each need {} of state and KV cache ({} \
             each); at most {fits} fit in the memory available now",
            human_bytes(one.saturating_mul(batch as u64)),
            human_bytes(one),
        )))
    }

    /// How many sequences at `capacity` tokens of context fit in the memory available now
    /// (each needs its state and KV caches), capped at [`MAX_BATCH`].
    pub fn max_batch(&self, capacity: usize) -> usize {
        let per_sequence = self.state_bytes(capacity).max(1);
        let available = available_memory().unwrap_or(u64::MAX);
        usize::try_from(available / per_sequence)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_BATCH)
    }
}
