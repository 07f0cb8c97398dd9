//! The server's Prometheus metrics (`/metrics`, OpenMetrics text through the
//! `prometheus-client` crate).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    pub requests: Counter,
    pub rejected: Counter,
    pub cancelled: Counter,
    pub timed_out: Counter,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub prefix_hits: Counter,
    pub prefix_tokens: Counter,
    pub running: Gauge,
    pub waiting: Gauge,
    pub batch: Histogram,
    pub prefix_bytes: Gauge,
    pub ttft: Histogram,
    pub step: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("zambac");
        let m = Metrics {
            requests: Counter::default(),
            rejected: Counter::default(),
            cancelled: Counter::default(),
            timed_out: Counter::default(),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            prefix_hits: Counter::default(),
            prefix_tokens: Counter::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            prefix_bytes: Gauge::default(),
            ttft: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            step: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Generation requests accepted",
            m.requests.clone(),
        );
        r.register(
            "requests_rejected",
            "Requests refused because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "requests_cancelled",
            "Requests whose client left before the end",
            m.cancelled.clone(),
        );
        r.register(
            "requests_timed_out",
            "Requests that ran past --request-timeout-s",
            m.timed_out.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of accepted requests",
            m.prompt_tokens.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        r.register(
            "prefix_cache_hits",
            "Prompts that started from a cached prefix",
            m.prefix_hits.clone(),
        );
        r.register(
            "prefix_cache_reused_tokens",
            "Prompt tokens restored instead of prefilled",
            m.prefix_tokens.clone(),
        );
        r.register(
            "requests_running",
            "Sequences in the batch",
            m.running.clone(),
        );
        r.register(
            "requests_waiting",
            "Requests in the queue",
            m.waiting.clone(),
        );
        r.register(
            "decode_batch_size",
            "Sequences in each decode step",
            m.batch.clone(),
        );
        r.register(
            "prefix_cache_bytes",
            "Bytes held by the prefix cache",
            m.prefix_bytes.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "From a request's arrival to its first token",
            m.ttft.clone(),
        );
        r.register(
            "decode_step_seconds",
            "Wall time of one batched decode step",
            m.step.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
