//! The HTTP side (axum): OpenAI-compatible routes, server-sent events, the API key, and the
//! bounded queue into the engine thread.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{ApiError, Checked, GenRequest, Limits, Prompt, check_ids};
use super::chat::ChatTemplate;
use super::metrics::Metrics;
use super::scheduler::{Event, Finish, Job};
use super::text::TextStream;
use crate::tokenizer::Tokenizer;

/// What every handler shares.
pub struct App {
    pub jobs: SyncSender<Job>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub chat: Option<ChatTemplate>,
    pub model_id: String,
    pub limits: Limits,
    pub eos: Vec<i64>,
    pub api_key: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Cleared when the engine thread stops.
    pub engine_alive: Arc<AtomicBool>,
    pub queue: usize,
    pub created: u64,
    pub next_id: AtomicU64,
    /// From a request's arrival to its last token (`--request-timeout-s`).
    pub request_timeout: Duration,
    /// For a request's head and its body (`--read-timeout-s`).
    pub read_timeout: Duration,
    /// The largest body accepted, in bytes (`--max-body-kib`).
    pub body_limit: usize,
}

type Shared = Arc<App>;

/// The routes, with bodies above `app.body_limit` bytes refused (413).
pub fn router(app: Shared) -> Router {
    let body_limit = app.body_limit;
    let api = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        // The JSON extractor's own limit (2 MB by default) follows --max-body-kib.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(app.clone(), read_body))
        .layer(middleware::from_fn_with_state(app.clone(), deadline))
        .with_state(app)
}

/// Bounds the time from a request's arrival to its answer's head (reading the body,
/// waiting for a slot, and for an answer that is not streamed, the whole generation) by
/// `--request-timeout-s`: past it, 504, and dropping the handler cancels its job. A stream
/// keeps the same deadline for its events ([`Reply::stream`]).
async fn deadline(State(app): State<Shared>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(app.request_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => timed_out(&app).into_response(),
    }
}

/// Reads the whole body within `--read-timeout-s` (the head had the same time, under
/// hyper's header deadline): a client whose body trickles or never comes (a
/// `Content-Length` that lies) gets 408 instead of holding its connection; a body over
/// `--max-body-kib` gets 413.
async fn read_body(State(app): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, app.body_limit);
    match tokio::time::timeout(app.read_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the server accepts ({} bytes, --max-body-kib)",
                app.body_limit
            ),
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (--read-timeout-s)",
                app.read_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

fn timed_out(app: &App) -> ApiError {
    app.metrics.timed_out.inc();
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "the request took longer than the server allows ({} s, --request-timeout-s)",
            app.request_timeout.as_secs()
        ),
    )
}

/// `Authorization: Bearer <key>` on every route but `/health`, when the server has a key.
async fn authorize(State(app): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid API key is required: `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn health(State(app): State<Shared>) -> Response {
    if app.engine_alive.load(Ordering::Relaxed) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped").into_response()
    }
}

async fn metrics(State(app): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn models(State(app): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model_id,
            "object": "model",
            "created": app.created,
            "owned_by": "zambac",
            "max_model_len": app.limits.context,
        }],
    }))
}

/// Which API a request came through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

async fn completions(
    State(app): State<Shared>,
    body: Result<Json<GenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let checked = prepare(&app, &req)?;
    let prompt = match req.prompt()? {
        Prompt::Ids(ids) => ids,
        Prompt::Text(text) => tokenizer(&app)?
            .encode(&text)
            .map_err(|e| ApiError::bad(e.to_string()))?,
    };
    respond(app, Api::Completions, prompt, checked, 16).await
}

async fn chat_completions(
    State(app): State<Shared>,
    body: Result<Json<GenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(rejection)?;
    let checked = prepare(&app, &req)?;
    let messages = req.messages()?;
    let template = app.chat.as_ref().ok_or_else(|| {
        ApiError::bad("this engine has no chat template (its checkpoint's tokenizer_config.json has none): use /v1/completions")
    })?;
    let text = template.render(&messages).map_err(ApiError::bad)?;
    let prompt = tokenizer(&app)?
        .encode_with(&text, false)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let room = app
        .limits
        .context
        .saturating_sub(prompt.len())
        .min(app.limits.max_tokens);
    respond(app, Api::Chat, prompt, checked, room.max(1)).await
}

/// A body that is not JSON, or not the request's shape: 400 (415 without a JSON content
/// type), with serde's message naming the field; a body over `--max-body-kib`: 413.
fn rejection(e: JsonRejection) -> ApiError {
    let status = match e.status() {
        s @ (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::PAYLOAD_TOO_LARGE) => s,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, e.body_text())
}

fn tokenizer(app: &App) -> Result<&Tokenizer, ApiError> {
    app.tokenizer
        .as_deref()
        .ok_or_else(|| ApiError::bad("this engine has no tokenizer: send the prompt as token ids"))
}

/// Checks the fields every generation request shares.
fn prepare(app: &App, req: &GenRequest) -> Result<Checked, ApiError> {
    if let Some(m) = req.model.as_deref().filter(|m| *m != app.model_id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model `{m}` does not exist: this server serves `{}`",
                app.model_id
            ),
        ));
    }
    let checked = req.check(app.limits)?;
    if !checked.stops.is_empty() && app.tokenizer.is_none() {
        return Err(ApiError::bad(
            "`stop` strings need a tokenizer, and this engine has none: use `stop_token_ids`",
        ));
    }
    Ok(checked)
}

/// Queues the job and answers: one JSON body, or a stream of events.
async fn respond(
    app: Shared,
    api: Api,
    prompt: Vec<i64>,
    checked: Checked,
    default_max: usize,
) -> Result<Response, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::bad("the prompt is empty"));
    }
    check_ids(&prompt, app.limits.vocab, "`prompt`")?;
    let max_tokens = checked
        .max_tokens
        .unwrap_or(default_max.min(app.limits.max_tokens));
    let context = app.limits.context;
    if prompt.len() + max_tokens > context {
        return Err(ApiError::bad(format!(
            "this model's context is {context} tokens, and the request needs {} ({} in the prompt, {max_tokens} to generate)",
            prompt.len() + max_tokens,
            prompt.len()
        )));
    }
    let mut stop_ids = checked.stop_ids.clone();
    if !checked.ignore_eos {
        stop_ids.extend_from_slice(&app.eos);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let prompt_len = prompt.len();
    let job = Job {
        prompt,
        max_tokens,
        sampling: checked.sampling.clone(),
        stop_ids,
        events: tx,
        received: Instant::now(),
    };
    // Counted as waiting before the engine thread can take it (and count it out).
    app.metrics.waiting.inc();
    match app.jobs.try_send(job) {
        Ok(()) => {
            app.metrics.requests.inc();
        }
        Err(TrySendError::Full(_)) => {
            app.metrics.waiting.dec();
            app.metrics.rejected.inc();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is busy: {} requests are already waiting; retry later",
                    app.queue
                ),
            ));
        }
        Err(TrySendError::Disconnected(_)) => {
            app.metrics.waiting.dec();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine has stopped",
            ));
        }
    }
    let id = format!(
        "{}-{}",
        if api == Api::Chat { "chatcmpl" } else { "cmpl" },
        app.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let text = TextStream::new(app.tokenizer.clone(), checked.stops.clone());
    let deadline = tokio::time::Instant::now() + app.request_timeout;
    let reply = Reply {
        app,
        api,
        id,
        prompt_len,
        text,
        reused: 0,
        include_usage: checked.include_usage,
        deadline,
    };
    if checked.stream {
        Ok(reply.stream(rx))
    } else {
        reply.whole(rx).await
    }
}

/// One request's answer under construction.
struct Reply {
    app: Shared,
    api: Api,
    id: String,
    prompt_len: usize,
    text: TextStream,
    reused: usize,
    include_usage: bool,
    /// When the request has had its time (`--request-timeout-s`).
    deadline: tokio::time::Instant,
}

impl Reply {
    fn created() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn usage(&self) -> Value {
        let n = self.text.ids().len();
        json!({
            "prompt_tokens": self.prompt_len,
            "completion_tokens": n,
            "total_tokens": self.prompt_len + n,
            "prompt_tokens_details": {"cached_tokens": self.reused},
        })
    }

    /// Takes one event; `Some(finish)` when the generation is over (a stop string counts).
    fn take(
        &mut self,
        event: Event,
    ) -> Result<(String, Option<i64>, Option<&'static str>), ApiError> {
        match event {
            Event::Token { id, reused } => {
                if let Some(r) = reused {
                    self.reused = r;
                }
                let piece = self.text.push(id);
                let finish = self.text.stopped().then_some(Finish::Stop.as_str());
                Ok((piece, Some(id), finish))
            }
            Event::Finished(f) => Ok((self.text.finish(), None, Some(f.as_str()))),
            Event::Failed(msg) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("generation failed: {msg}"),
            )),
        }
    }

    /// Waits for the whole generation and answers with one body.
    async fn whole(mut self, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        let finish = loop {
            let Some(event) = rx.recv().await else {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the engine stopped during the generation",
                ));
            };
            if let (_, _, Some(f)) = self.take(event)? {
                break f;
            }
        };
        // Dropping `rx` cancels the job if a stop string ended it early.
        drop(rx);
        let (text, ids) = (self.text.text(), self.text.ids());
        let choice = match self.api {
            Api::Completions => json!({
                "index": 0, "text": text, "token_ids": ids, "finish_reason": finish, "logprobs": null,
            }),
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "token_ids": ids,
                "finish_reason": finish,
                "logprobs": null,
            }),
        };
        Ok(Json(json!({
            "id": self.id,
            "object": if self.api == Api::Chat { "chat.completion" } else { "text_completion" },
            "created": Reply::created(),
            "model": self.app.model_id,
            "choices": [choice],
            "usage": self.usage(),
        }))
        .into_response())
    }

    /// A chunk of the stream.
    fn chunk(&self, piece: &str, id: Option<i64>, finish: Option<&str>, first: bool) -> Value {
        let ids: Vec<i64> = id.into_iter().collect();
        let choice = match self.api {
            Api::Completions => json!({
                "index": 0, "text": piece, "token_ids": ids, "finish_reason": finish, "logprobs": null,
            }),
            Api::Chat => {
                let delta = if first {
                    json!({"content": piece, "role": "assistant"})
                } else {
                    json!({"content": piece})
                };
                json!({"index": 0, "delta": delta, "token_ids": ids, "finish_reason": finish, "logprobs": null})
            }
        };
        json!({
            "id": self.id,
            "object": if self.api == Api::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": Reply::created(),
            "model": self.app.model_id,
            "choices": [choice],
        })
    }

    /// Answers with server-sent events: a chunk per token, the finish reason, `[DONE]`.
    /// A client that leaves closes the stream, which drops `rx` and frees the slot.
    fn stream(mut self, mut rx: UnboundedReceiver<Event>) -> Response {
        let (tx, out) = mpsc::channel::<Result<Sse, Infallible>>(64);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    e = rx.recv() => Ok(e),
                    () = tokio::time::sleep_until(self.deadline) => Err(timed_out(&self.app)),
                };
                let event = match event {
                    Ok(e) => e.map(|e| self.take(e)),
                    Err(timeout) => Some(Err(timeout)),
                };
                let sse = match event {
                    Some(Ok((piece, id, finish))) => {
                        let c = self.chunk(&piece, id, finish, first);
                        first = false;
                        let last = finish.is_some();
                        if tx.send(Ok(Sse::default().data(c.to_string()))).await.is_err() {
                            return;
                        }
                        if !last {
                            continue;
                        }
                        drop(rx);
                        if self.include_usage {
                            let mut u = self.chunk("", None, None, false);
                            if let Some(fields) = u.as_object_mut() {
                                fields.insert("choices".into(), json!([]));
                                fields.insert("usage".into(), self.usage());
                            }
                            let _ = tx.send(Ok(Sse::default().data(u.to_string()))).await;
                        }
                        Sse::default().data("[DONE]")
                    }
                    Some(Err(e)) => Sse::default().data(
                        json!({"error": {"message": e.message, "type": "server_error", "code": e.status.as_u16()}})
                            .to_string(),
                    ),
                    None => Sse::default().data(
                        json!({"error": {"message": "the engine stopped during the generation", "type": "server_error", "code": 500}})
                            .to_string(),
                    ),
                };
                let _ = tx.send(Ok(sse)).await;
                return;
            }
        });
        axum::response::Sse::new(ReceiverStream::new(out))
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}
