//! `zambac bench`: prefill time, time to first token, decode throughput and peak memory of
//! a backend on a random prompt, measured the same way for every backend.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::RuntimeError;
use crate::sampling::argmax;
use crate::session::{Backend, State};
use crate::tensor::Tensor;

/// How the benchmark prefills its prompts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefill {
    /// Timed prefills after one warm-up; the median is reported. With 0 there is neither:
    /// the prefill of the generating run is the only one, and its time is the one reported
    /// (for prompts long enough that one prefill is all a user wants to wait for).
    pub runs: usize,
    /// Tokens per call when a prompt is prefilled in chunks (each continuing the state the
    /// one before left), which bounds the activations by one chunk; `None`: one call.
    pub chunk: Option<usize>,
}

impl Default for Prefill {
    fn default() -> Self {
        Prefill {
            runs: 3,
            chunk: None,
        }
    }
}

impl Prefill {
    /// The prompt run from the empty state into a cache of `capacity` positions, chunk by
    /// chunk; the last token's logits and the state.
    fn run<B: Backend + ?Sized>(
        &self,
        backend: &mut B,
        prompt: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let Some(chunk) = self.chunk.filter(|c| *c < prompt.len()) else {
            return backend.prefill_last(prompt, capacity);
        };
        let mut state = backend.new_state(capacity)?;
        let mut logits = None;
        for part in prompt.chunks(chunk.max(1)) {
            logits = Some(backend.extend_last(part, &mut state)?);
        }
        let logits = logits
            .ok_or_else(|| RuntimeError::Input("the prompt needs at least one token".into()))?;
        Ok((logits, state))
    }
}

/// What one benchmark measured. Times in seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Sequences decoded together in each step (each after a prompt of its own).
    pub batch: usize,
    /// Tokens per prefill call when the prompt was prefilled in chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<usize>,
    /// Median time of `prefill_last` over the prompt (after a warm-up run), or the time of
    /// the generating run's prefill when no separate run was asked for.
    pub prefill_s: f64,
    /// Prompt tokens per second of that median.
    pub prefill_tok_per_s: f64,
    /// Every timed prefill, in the order they ran.
    pub prefill_runs_s: Vec<f64>,
    /// From the start of a prefill to the first generated token.
    pub ttft_s: f64,
    /// Tokens decoded per second after the prompts, those of all `batch` sequences counted
    /// (0 when no token is decoded).
    pub decode_tok_per_s: f64,
    /// The greedy tokens each sequence generated — its first token (from the prompt's
    /// logits), then one per decode step —, to compare backends, builds or batch sizes.
    pub tokens: Vec<Vec<i64>>,
    /// The process's peak resident memory (`VmHWM`), 0 where the OS does not report it.
    pub peak_rss_bytes: u64,
}

/// Runs `prompt_len` random tokens (drawn from `seed`) through prefill, then decodes
/// `new_tokens` greedily — for `batch` sequences at once when `batch > 1`, each after its
/// own random prompt (seeds `seed`, `seed + 1`, …), all advanced by one batched step.
pub fn run(
    backend: &mut dyn Backend,
    prompt_len: usize,
    new_tokens: usize,
    batch: usize,
    seed: u64,
    prefill: Prefill,
) -> Result<BenchReport, RuntimeError> {
    if prompt_len == 0 {
        return Err(RuntimeError::Input(
            "the benchmark prompt needs at least one token".into(),
        ));
    }
    if batch == 0 {
        return Err(RuntimeError::Input(
            "the batch needs at least one sequence".into(),
        ));
    }
    let capacity = prompt_len.checked_add(new_tokens.max(1)).ok_or_else(|| {
        RuntimeError::Input(format!(
            "{prompt_len} prompt tokens and {new_tokens} new tokens are more than any context holds"
        ))
    })?;
    let footprint = crate::session::Footprint {
        sequences: batch,
        capacity,
        rows: prefill.chunk.unwrap_or(prompt_len).clamp(1, prompt_len),
        kept_rows: batch,
        prompt_tokens: prompt_len.saturating_mul(batch.saturating_add(1)),
        cache_bytes: 0,
    };
    crate::session::check_fits(backend, "this benchmark", footprint)?;
    let prompt = random_prompt(backend.vocab_size(), prompt_len, seed);
    let mut times = Vec::with_capacity(prefill.runs);
    if prefill.runs > 0 {
        prefill.run(backend, &prompt, capacity)?;
    }
    for _ in 0..prefill.runs {
        let t0 = Instant::now();
        prefill.run(backend, &prompt, capacity)?;
        times.push(t0.elapsed().as_secs_f64());
    }

    let generated = if batch == 1 {
        prefill_then_decode(backend, &prompt, new_tokens, prefill, |_| {})?
    } else {
        let prompts = random_prompts(backend.vocab_size(), prompt_len, batch, seed);
        prefill_then_decode_batch(backend, &prompts, new_tokens, prefill, |_| {})?
    };
    let Generated {
        prefill_s: generating_prefill_s,
        ttft_s,
        decode_s,
        tokens,
    } = generated;
    if times.is_empty() {
        times.push(generating_prefill_s);
    }
    let prefill_runs_s = times.clone();
    times.sort_by(f64::total_cmp);
    let prefill_s = times
        .get(times.len() / 2)
        .copied()
        .unwrap_or(generating_prefill_s);
    Ok(BenchReport {
        prompt_len,
        new_tokens,
        batch,
        prefill_chunk: prefill.chunk,
        prefill_s,
        prefill_tok_per_s: prompt_len as f64 / prefill_s,
        prefill_runs_s,
        ttft_s,
        decode_tok_per_s: if new_tokens == 0 {
            0.0
        } else {
            (batch * new_tokens) as f64 / decode_s
        },
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        tokens,
    })
}

/// Wall times of one [`prefill_then_decode`], in seconds, and what it generated.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The (first) prompt's prefill.
    pub prefill_s: f64,
    /// From the start of the prefill to the first token.
    pub ttft_s: f64,
    /// All decode steps.
    pub decode_s: f64,
    /// Each sequence's greedy tokens: the first, then one per decode step.
    pub tokens: Vec<Vec<i64>>,
}

/// A generating user's run: `prefill_last` over `prompt`, the greedy first token, then
/// `new_tokens` greedy decode steps. `after_prefill` runs between the two phases, outside
/// both clocks (the profiler takes the prefill's kernel times there).
pub fn prefill_then_decode<B: Backend + ?Sized>(
    backend: &mut B,
    prompt: &[i64],
    new_tokens: usize,
    prefill: Prefill,
    after_prefill: impl FnOnce(&mut B),
) -> Result<Generated, RuntimeError> {
    let capacity = prompt.len() + new_tokens.max(1);
    let t0 = Instant::now();
    let (logits, mut state) = prefill.run(backend, prompt, capacity)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut token = argmax(logits.row(0)) as i64;
    let ttft_s = t0.elapsed().as_secs_f64();
    after_prefill(backend);

    let mut generated = Vec::with_capacity(new_tokens + 1);
    generated.push(token);
    let t0 = Instant::now();
    for _ in 0..new_tokens {
        let logits = backend.decode(token, &mut state)?;
        token = argmax(logits.row(0)) as i64;
        generated.push(token);
    }
    Ok(Generated {
        prefill_s,
        ttft_s,
        decode_s: t0.elapsed().as_secs_f64(),
        tokens: vec![generated],
    })
}

/// A server's run of several users: each prompt prefilled (`prefill_last`) and its greedy
/// first token taken, then `new_tokens` batched decode steps advancing every sequence at
/// once. `ttft_s` is the first sequence's; `after_prefill` runs between the two phases,
/// outside both clocks.
pub fn prefill_then_decode_batch<B: Backend + ?Sized>(
    backend: &mut B,
    prompts: &[Vec<i64>],
    new_tokens: usize,
    prefill: Prefill,
    after_prefill: impl FnOnce(&mut B),
) -> Result<Generated, RuntimeError> {
    let mut ttft_s = 0.0;
    let mut prefill_s = 0.0;
    let mut tokens = Vec::with_capacity(prompts.len());
    let mut states = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let t0 = Instant::now();
        let (logits, state) = prefill.run(backend, prompt, prompt.len() + new_tokens.max(1))?;
        if i == 0 {
            prefill_s = t0.elapsed().as_secs_f64();
        }
        tokens.push(argmax(logits.row(0)) as i64);
        if i == 0 {
            ttft_s = t0.elapsed().as_secs_f64();
        }
        states.push(state);
    }
    after_prefill(backend);
    let mut generated: Vec<Vec<i64>> = tokens.iter().map(|t| vec![*t]).collect();
    let t0 = Instant::now();
    for _ in 0..new_tokens {
        let mut refs: Vec<&mut crate::session::State> = states.iter_mut().collect();
        let logits = backend.decode_batch(&tokens, &mut refs)?;
        for (i, (t, g)) in tokens.iter_mut().zip(&mut generated).enumerate() {
            *t = argmax(logits.row(i)) as i64;
            g.push(*t);
        }
    }
    Ok(Generated {
        prefill_s,
        ttft_s,
        decode_s: t0.elapsed().as_secs_f64(),
        tokens: generated,
    })
}

/// The benchmark's prompt: `len` token ids drawn uniformly from the vocabulary by `seed`.
pub fn random_prompt(vocab: usize, len: usize, seed: u64) -> Vec<i64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect()
}

/// The prompts of a batch: `count` random prompts, seeded `seed`, `seed + 1`, …
pub fn random_prompts(vocab: usize, len: usize, count: usize, seed: u64) -> Vec<Vec<i64>> {
    (0..count as u64)
        .map(|i| random_prompt(vocab, len, seed.wrapping_add(i)))
        .collect()
}

/// `VmHWM` of this process, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub use zambac_engine::resources::human_bytes;
