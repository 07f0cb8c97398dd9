//! The engine thread: continuous batching over one backend.
//!
//! Each iteration admits waiting jobs into free slots (restoring the longest cached prefix
//! of each prompt), drops sequences whose client left, prefills up to `prefill_chunk`
//! prompt tokens in all (so a long prompt never stalls the others for its whole length),
//! then advances every sequence that is generating by one batched decode step. A job
//! samples with its own [`Sampler`], seeded as `run` seeds it, so it gets the tokens a
//! single `run` with the same settings gives.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use super::prefix::PrefixCache;
use crate::sampling::{Sampler, Sampling};
use crate::session::{Backend, State};

/// One generation request, as the engine thread takes it.
pub struct Job {
    pub prompt: Vec<i64>,
    /// Tokens to generate at most (≥ 1).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end the generation (they are reported, then it stops).
    pub stop_ids: Vec<i64>,
    /// Where the tokens go; a closed receiver cancels the job.
    pub events: UnboundedSender<Event>,
    pub received: Instant,
}

/// What the engine thread reports for a job.
#[derive(Debug)]
pub enum Event {
    /// The next generated token; `reused` (first token only) is how many prompt tokens came
    /// from the prefix cache.
    Token { id: i64, reused: Option<usize> },
    /// No more tokens: `max_tokens` reached (`length`) or a stop token (`stop`).
    Finished(Finish),
    /// The backend failed on this job.
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Length,
    Stop,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
        }
    }
}

/// A sequence in a slot.
struct Seq {
    job: Job,
    state: State,
    /// Prompt tokens in the state.
    fed: usize,
    reused: usize,
    sampler: Sampler,
    generated: Vec<i64>,
    /// The last sampled token, not yet fed back.
    pending: Option<i64>,
    done: bool,
}

/// Settings of the engine thread.
pub struct Limits {
    pub max_batch: usize,
    pub prefill_chunk: usize,
}

pub struct Scheduler<B: Backend> {
    backend: B,
    jobs: Receiver<Job>,
    limits: Limits,
    cache: PrefixCache,
    metrics: Arc<Metrics>,
    active: Vec<Seq>,
}

impl<B: Backend> Scheduler<B> {
    pub fn new(
        backend: B,
        jobs: Receiver<Job>,
        limits: Limits,
        cache: PrefixCache,
        metrics: Arc<Metrics>,
    ) -> Self {
        Scheduler {
            backend,
            jobs,
            limits,
            cache,
            metrics,
            active: Vec::new(),
        }
    }

    /// Serves jobs until every sender is gone.
    pub fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            self.drop_cancelled();
            self.prefill();
            self.decode();
            self.retire();
            self.metrics.running.set(self.active.len() as i64);
        }
    }

    /// Fills free slots with waiting jobs; waits for one when nothing runs. False when the
    /// server is gone.
    fn admit(&mut self) -> bool {
        while self.active.len() < self.limits.max_batch {
            let job = if self.active.is_empty() {
                match self.jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return false,
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return false,
                }
            };
            self.metrics.waiting.dec();
            if job.events.is_closed() {
                self.metrics.cancelled.inc();
                continue;
            }
            let capacity = job.prompt.len() + job.max_tokens;
            let restored = self.cache.lookup(&job.prompt);
            let state = match restored {
                Some((mut state, len)) => state.grow(capacity).map(|()| (state, len)),
                None => self.backend.new_state(capacity).map(|s| (s, 0)),
            };
            match state {
                Ok((state, fed)) => {
                    if fed > 0 {
                        self.metrics.prefix_hits.inc();
                        self.metrics.prefix_tokens.inc_by(fed as u64);
                    }
                    self.metrics.prompt_tokens.inc_by(job.prompt.len() as u64);
                    let sampler = Sampler::new(job.sampling.clone());
                    self.active.push(Seq {
                        job,
                        state,
                        fed,
                        reused: fed,
                        sampler,
                        generated: Vec::new(),
                        pending: None,
                        done: false,
                    });
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                }
            }
        }
        true
    }

    /// Frees the slots of sequences whose client left.
    fn drop_cancelled(&mut self) {
        let before = self.active.len();
        self.active.retain(|s| !s.job.events.is_closed());
        self.metrics
            .cancelled
            .inc_by((before - self.active.len()) as u64);
    }

    /// Up to `prefill_chunk` prompt tokens in all, the oldest sequences first; a sequence
    /// whose prompt is complete samples its first token. The state at every chunk boundary
    /// goes into the prefix cache.
    fn prefill(&mut self) {
        let mut budget = self.limits.prefill_chunk;
        for s in self.active.iter_mut().filter(|s| !s.done) {
            let len = s.job.prompt.len();
            if budget == 0 {
                break;
            }
            if s.fed == len {
                continue;
            }
            let n = budget.min(len - s.fed);
            let part = s.job.prompt.get(s.fed..s.fed + n).unwrap_or_default();
            // A chunk that leaves part of the prompt for later needs no logits: only the
            // last row's head product is computed (the state is the same either way). The
            // last chunk computes all its rows, as `zambac-run run` does, so that the first
            // token is the one a single run samples.
            let result = if s.fed + n < len {
                self.backend.extend_last(part, &mut s.state)
            } else {
                self.backend.extend(part, &mut s.state)
            };
            match result {
                Ok(logits) => {
                    s.fed += n;
                    budget -= n;
                    if s.fed < len {
                        let fed = s.job.prompt.get(..s.fed).unwrap_or_default();
                        self.cache.insert(fed, &s.state);
                    } else {
                        let first = s.sampler.pick(logits.row(n - 1));
                        let ttft = s.job.received.elapsed().as_secs_f64();
                        self.metrics.ttft.observe(ttft);
                        emit(s, first, &self.metrics);
                    }
                }
                Err(e) => fail(s, e.to_string()),
            }
        }
    }

    /// One batched step for every sequence with a token to feed back.
    fn decode(&mut self) {
        let ready = |s: &Seq| s.pending.is_some() && !s.done;
        let tokens: Vec<i64> = self
            .active
            .iter()
            .filter(|s| ready(s))
            .filter_map(|s| s.pending)
            .collect();
        if tokens.is_empty() {
            return;
        }
        let step = Instant::now();
        let result = {
            let mut states: Vec<&mut State> = self
                .active
                .iter_mut()
                .filter(|s| ready(s))
                .map(|s| &mut s.state)
                .collect();
            self.backend.decode_batch(&tokens, &mut states)
        };
        self.metrics.step.observe(step.elapsed().as_secs_f64());
        self.metrics.batch.observe(tokens.len() as f64);
        // `ready` still selects the same sequences: only the one just handled changes.
        for (i, s) in self.active.iter_mut().filter(|s| ready(s)).enumerate() {
            match &result {
                Ok(logits) => {
                    let t = s.sampler.pick(logits.row(i));
                    emit(s, t, &self.metrics);
                }
                Err(e) => fail(s, e.to_string()),
            }
        }
    }

    /// Finished sequences leave; the state of each (everything it consumed) goes into the
    /// prefix cache, for a follow-up prompt that extends the conversation.
    fn retire(&mut self) {
        // `partition` keeps the admission order: the oldest sequences prefill first.
        let (done, running): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|s| s.done);
        self.active = running;
        for s in done {
            if let Some((_, fed_back)) = s.generated.split_last()
                && s.fed == s.job.prompt.len()
            {
                let mut consumed = s.job.prompt.clone();
                consumed.extend_from_slice(fed_back);
                self.cache.insert(&consumed, &s.state);
            }
        }
        self.metrics.prefix_bytes.set(self.cache.bytes() as i64);
    }
}

/// Reports `token` and decides whether the sequence goes on.
fn emit(s: &mut Seq, token: i64, metrics: &Metrics) {
    s.generated.push(token);
    metrics.generated_tokens.inc();
    let reused = (s.generated.len() == 1).then_some(s.reused);
    if s.job
        .events
        .send(Event::Token { id: token, reused })
        .is_err()
    {
        // The client left.
        metrics.cancelled.inc();
        s.done = true;
        return;
    }
    let finish = if s.job.stop_ids.contains(&token) {
        Some(Finish::Stop)
    } else if s.generated.len() >= s.job.max_tokens {
        Some(Finish::Length)
    } else {
        None
    };
    match finish {
        Some(f) => {
            let _ = s.job.events.send(Event::Finished(f));
            s.done = true;
            s.pending = None;
        }
        None => s.pending = Some(token),
    }
}

fn fail(s: &mut Seq, msg: String) {
    let _ = s.job.events.send(Event::Failed(msg));
    s.done = true;
    s.pending = None;
    // Its state may be half-updated: never cache it.
    s.generated.clear();
}
