//! The OpenAI-compatible request body, checked up front: every field's type (by serde),
//! every value against the engine and the server's limits, before a job is queued.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::chat::Message;
use crate::sampling::Sampling;

/// An error answer: `{"error": {"message", "type", "code"}}` with an HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let body = serde_json::json!({"error": {
            "message": self.message,
            "type": kind,
            "code": self.status.as_u16(),
        }});
        (self.status, Json(body)).into_response()
    }
}

/// The body of `/v1/completions` (`prompt`) and `/v1/chat/completions` (`messages`).
#[derive(Debug, Deserialize)]
pub struct GenRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Keep the `top_k` most likely tokens (0 or -1: all), as vLLM accepts it.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<Stop>,
    /// Token ids that end the generation, besides the model's end-of-sequence tokens.
    #[serde(default)]
    pub stop_token_ids: Vec<i64>,
    /// Keep generating past the model's end-of-sequence tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    pub echo: Option<bool>,
    pub logprobs: Option<Value>,
    pub suffix: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A prompt as sent: text to tokenize, or token ids.
pub enum Prompt {
    Text(String),
    Ids(Vec<i64>),
}

/// What the server allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub vocab: usize,
    pub context: usize,
    pub max_tokens: usize,
}

/// A checked request, ready to become a job once its prompt is tokenized.
pub struct Checked {
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub stops: Vec<String>,
    pub stop_ids: Vec<i64>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// Seeds for requests without one: different for every request.
static SEEDS: AtomicU64 = AtomicU64::new(0);

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

impl GenRequest {
    /// Checks every field but the prompt against `limits`.
    pub fn check(&self, limits: Limits) -> Result<Checked, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad(format!(
                "`n` must be 1 (one choice per request), found {n}"
            )));
        }
        if let Some(n) = self.best_of.filter(|&n| n != 1) {
            return Err(ApiError::bad(format!("`best_of` must be 1, found {n}")));
        }
        if self.echo == Some(true) {
            return Err(ApiError::bad("`echo` is not supported"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
        {
            return Err(ApiError::bad("`logprobs` are not supported"));
        }
        if self.suffix.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad("`suffix` is not supported"));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(m) if m < 1 => {
                return Err(ApiError::bad(format!(
                    "`max_tokens` must be at least 1, found {m}"
                )));
            }
            Some(m) => {
                let m = usize::try_from(m).unwrap_or(usize::MAX);
                if m > limits.max_tokens {
                    return Err(ApiError::bad(format!(
                        "`max_tokens` is {m}, more than this server's limit of {}",
                        limits.max_tokens
                    )));
                }
                Some(m)
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(ApiError::bad(format!(
                "`temperature` must be a number ≥ 0, found {temperature}"
            )));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad(format!(
                "`top_p` must be in (0, 1], found {top_p}"
            )));
        }
        let top_k = match self.top_k.unwrap_or(0) {
            -1 | 0 => 0,
            k if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
            k => {
                return Err(ApiError::bad(format!(
                    "`top_k` must be ≥ 1, or 0 or -1 for all tokens, found {k}"
                )));
            }
        };
        let stops = match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        if stops.len() > 16 {
            return Err(ApiError::bad(format!(
                "at most 16 `stop` strings, found {}",
                stops.len()
            )));
        }
        check_ids(&self.stop_token_ids, limits.vocab, "`stop_token_ids`")?;
        Ok(Checked {
            max_tokens,
            sampling: Sampling {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                seed: self.seed.map_or_else(fresh_seed, |s| s as u64),
            },
            stops,
            stop_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }

    /// The prompt of a completion request: one text or one list of token ids.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let p = self
            .prompt
            .as_ref()
            .ok_or_else(|| ApiError::bad("`prompt` is missing"))?;
        let ids = |v: &[Value]| {
            v.iter()
                .map(|x| {
                    x.as_i64().ok_or_else(|| {
                        ApiError::bad(format!("`prompt` token ids must be integers, found {x}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        match p {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(v) if v.iter().all(Value::is_number) && !v.is_empty() => {
                Ok(Prompt::Ids(ids(v)?))
            }
            Value::Array(v) if v.len() == 1 => match v.first().unwrap_or(&Value::Null) {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(inner) => Ok(Prompt::Ids(ids(inner)?)),
                x => Err(ApiError::bad(format!(
                    "`prompt` must be a string or token ids, found {x}"
                ))),
            },
            Value::Array(v) if v.is_empty() => Err(ApiError::bad("`prompt` is empty")),
            Value::Array(_) => Err(ApiError::bad(
                "`prompt` holds several prompts: send one prompt per request",
            )),
            x => Err(ApiError::bad(format!(
                "`prompt` must be a string or an array of token ids, found {x}"
            ))),
        }
    }

    /// The messages of a chat request, their content as text.
    pub fn messages(&self) -> Result<Vec<Message>, ApiError> {
        let ms = self
            .messages
            .as_ref()
            .ok_or_else(|| ApiError::bad("`messages` is missing"))?;
        if ms.is_empty() {
            return Err(ApiError::bad("`messages` is empty"));
        }
        ms.iter()
            .map(|m| {
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::bad(format!(
                                        "message content of type `{kind}` is not supported (text only)"
                                    )));
                                }
                            }
                        }
                        text
                    }
                };
                Ok(Message {
                    role: m.role.clone(),
                    content,
                })
            })
            .collect()
    }
}

/// Token ids inside the vocabulary.
pub fn check_ids(ids: &[i64], vocab: usize, what: &str) -> Result<(), ApiError> {
    match ids
        .iter()
        .find(|&&t| usize::try_from(t).map_or(true, |t| t >= vocab))
    {
        Some(bad) => Err(ApiError::bad(format!(
            "{what}: token id {bad} is outside the vocabulary (0..{vocab})"
        ))),
        None => Ok(()),
    }
}
