//! `zambac-run serve`: an engine behind an OpenAI-compatible HTTP API, with continuous
//! batching.
//!
//! - [`http`] — the routes (axum): `/v1/completions`, `/v1/chat/completions`, `/v1/models`,
//!   `/health`, `/metrics`; server-sent events; the API key; a bounded queue (429 when
//!   full);
//! - [`api`] — the request body and its checks, made before anything is queued;
//! - [`scheduler`] — the engine thread: admits jobs into free slots, prefills in chunks,
//!   decodes every running sequence in one batched step, drops those whose client left;
//! - [`prefix`] — reuse of the states of earlier prompts that a new prompt extends;
//! - [`chat`], [`text`] — chat templates and incremental detokenization with stop strings;
//! - [`metrics`] — Prometheus metrics.

pub mod api;
pub mod chat;
pub mod http;
mod listen;
pub mod metrics;
pub mod prefix;
pub mod scheduler;
pub mod text;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::cli::set_bf16_products;
use crate::cpu::CpuBackend;
use crate::error::RuntimeError;
use crate::tokenizer::Tokenizer;

/// Options of `zambac-run serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// An engine directory (from `zambac build`).
    pub engine: PathBuf,
    /// Address to listen on. Anything but a loopback address needs `--api-key`.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Clients must send `Authorization: Bearer <KEY>` (every route but /health).
    #[arg(long, env = "ZAMBAC_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoded together at most (each holds a state and KV caches for the whole
    /// context; refused at start-up when they do not fit in memory).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Requests that may wait for a slot; more are answered 429.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Tokens a sequence may hold (prompt and generation); default: the checkpoint's
    /// `max_position_embeddings`, else 4096.
    #[arg(long)]
    pub context: Option<usize>,
    /// The most tokens one request may generate (default: the context).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Prompt tokens prefilled per scheduler step, over all new requests: a long prompt
    /// then delays the others' next token by one chunk at most.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Memory for the states of earlier prompts that new prompts may extend (0: no reuse).
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mib: usize,
    /// The model name clients send (default: the engine's model name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Threads for the cpu backend (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Products with bf16 weights: as for `run`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub bf16_products: String,
    /// Connections held open at once; more wait in the listen backlog until one closes.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's line and headers once it connects (or
    /// between requests on a kept-alive connection), and again its body: a head that is
    /// late closes the connection, a body that is late gets 408.
    #[arg(long, default_value_t = 10)]
    pub read_timeout_s: u64,
    /// Seconds a request may take: from its arrival to its answer (504 past it), and for a
    /// stream from its start to its last event (then it ends with an error event); either
    /// way its slot is freed.
    #[arg(long, default_value_t = 600)]
    pub request_timeout_s: u64,
    /// The largest request body accepted, in KiB (larger ones get 413).
    #[arg(long, default_value_t = 1024)]
    pub max_body_kib: usize,
    /// Skip hashing the weights when the engine is opened (their sizes, `manifest.json` and
    /// `host.so` are still checked): a faster start for large engines on trusted storage.
    #[arg(long)]
    pub fast_load: bool,
}

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<(), RuntimeError> {
    if !args.host.is_loopback() && args.api_key.is_none() {
        return Err(RuntimeError::Input(format!(
            "--host {}: serving beyond this machine needs --api-key (or ZAMBAC_API_KEY)",
            args.host
        )));
    }
    for (flag, v) in [
        ("--max-batch", args.max_batch),
        ("--queue", args.queue),
        ("--prefill-chunk", args.prefill_chunk),
        ("--max-connections", args.max_connections),
        ("--max-body-kib", args.max_body_kib),
    ] {
        if v == 0 {
            return Err(RuntimeError::Input(format!("{flag} must be at least 1")));
        }
    }
    let engine = crate::cli::open_engine(&args.engine, args.fast_load)?;
    let info = engine.manifest().model.clone();
    let tokenizer = match engine.tokenizer_path() {
        Some(p) => Some(Arc::new(Tokenizer::open(&p, "the engine is incomplete")?)),
        None => None,
    };
    let g = &info.generation;
    let chat = match (&g.chat_template, &tokenizer) {
        (Some(t), Some(_)) => Some(
            chat::ChatTemplate::new(t.clone(), g.bos_token.clone(), g.eos_token.clone())
                .map_err(|e| RuntimeError::load(args.engine.display().to_string(), None, e))?,
        ),
        _ => None,
    };
    let context = args.context.or(g.max_position_embeddings).unwrap_or(4096);
    if context < 2 {
        return Err(RuntimeError::Input(format!(
            "--context {context}: a sequence needs room for a prompt token and a generated one"
        )));
    }
    let max_tokens = args.max_tokens.unwrap_or(context).clamp(1, context - 1);

    // The engine thread owns the backend; it reports whether it started.
    let (jobs, queue) = std::sync::mpsc::sync_channel(args.queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let metrics = Arc::new(metrics::Metrics::new());
    let alive = Arc::new(AtomicBool::new(true));
    let thread = {
        let (metrics, alive) = (metrics.clone(), alive.clone());
        let (threads, bf16, max_batch) = (args.threads, args.bf16_products.clone(), args.max_batch);
        let limits_chunk = args.prefill_chunk;
        let limits = scheduler::Limits {
            max_batch,
            prefill_chunk: args.prefill_chunk,
        };
        let cache_bytes = args.prefix_cache_mib.saturating_mul(1 << 20);
        let cache = prefix::PrefixCache::new(cache_bytes);
        std::thread::Builder::new()
            .name("zambac-engine".into())
            .spawn(move || {
                // `/health` turns 503 when this thread ends, however it ends.
                let _alive = Alive(alive);
                let started = CpuBackend::new(engine, threads).and_then(|mut b| {
                    set_bf16_products(&mut b, &bf16)?;
                    b.check_batch_fits(max_batch, context).map_err(|e| {
                        RuntimeError::Input(format!(
                            "--max-batch {max_batch}: {e} (lower --max-batch or --context)"
                        ))
                    })?;
                    // Every slot full, plus the workspace of the largest prefill call.
                    let footprint = crate::session::Footprint {
                        sequences: max_batch,
                        capacity: context,
                        rows: limits_chunk.clamp(1, context),
                        kept_rows: max_batch,
                        prompt_tokens: 0,
                        cache_bytes: cache_bytes as u64,
                    };
                    crate::session::check_fits(&b, "serving", footprint).map_err(|e| {
                        RuntimeError::Input(format!(
                            "{e} (lower --max-batch, --context, --prefill-chunk or --prefix-cache-mib)"
                        ))
                    })?;
                    Ok(b)
                });
                match started {
                    Ok(b) => {
                        let _ = ready_tx.send(Ok(()));
                        scheduler::Scheduler::new(b, queue, limits, cache, metrics).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| RuntimeError::Internal(format!("cannot start the engine thread: {e}")))?
    };
    ready_rx
        .recv()
        .map_err(|_| RuntimeError::Internal("the engine thread stopped at start-up".into()))??;

    let read_timeout = Duration::from_secs(args.read_timeout_s.max(1));
    let app = Arc::new(http::App {
        jobs,
        tokenizer,
        chat,
        model_id: args.model_name.clone().unwrap_or(info.name.clone()),
        limits: api::Limits {
            vocab: info.vocab_size,
            context,
            max_tokens,
        },
        eos: g.eos_token_ids.clone(),
        api_key: args.api_key.clone(),
        metrics,
        engine_alive: alive,
        queue: args.queue,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        next_id: AtomicU64::new(1),
        request_timeout: Duration::from_secs(args.request_timeout_s.max(1)),
        read_timeout,
        body_limit: args.max_body_kib.saturating_mul(1024),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RuntimeError::Internal(format!("cannot start the HTTP runtime: {e}")))?;
    let addr = SocketAddr::new(args.host, args.port);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| RuntimeError::Input(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| RuntimeError::Internal(format!("no local address: {e}")))?;
        eprintln!(
            "zambac-run serve: {} on http://{local} (batch {}, context {context}, queue {})",
            app.model_id, args.max_batch, args.queue
        );
        let limits = listen::ConnLimits {
            max_connections: args.max_connections,
            header_timeout: read_timeout,
            drain: Duration::from_secs(5),
        };
        listen::serve(listener, http::router(app), limits, shutdown()).await;
        Ok::<(), RuntimeError>(())
    })?;
    // The router (and with it the job queue's sender) is gone: the engine thread ends.
    let _ = thread.join();
    Ok(())
}

/// Clears the engine's liveness flag when dropped (also when its thread unwinds).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown() {
    let int = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = int.await;
                    return;
                }
            };
        tokio::select! {
            _ = int => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = int.await;
}
