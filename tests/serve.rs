//! `zambac-run serve` through a real HTTP client (ureq): concurrent requests get the tokens
//! a single `run` gives, streaming, cancellation, a full queue, bad requests, prefix reuse,
//! chat templates, stop strings and the API key.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use zambac_engine::Engine;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::sampling::Sampling;
use zambac_runtime::session::generate;

/// The fixture's end-of-sequence token (its config.json).
const EOS: i64 = 2;

/// A running server, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(engine: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(zambac_run_bin())
            .args([
                "serve",
                engine.to_str().unwrap(),
                "--port",
                "0",
                "--threads",
                "2",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let base = first
            .split("on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in `{first}`"))
            .to_string();
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    /// POSTs `body` (sent as is); the status and the body's text.
    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, String) {
        let mut req = Server::agent()
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut r = req.send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.post_raw(path, &body.to_string(), None);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut req = Server::agent().get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut r = req.call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    /// A metric's value from `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics", None);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Opens a stream: the reader of its server-sent events.
    fn stream(&self, body: &Value) -> impl Iterator<Item = String> {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let r = Server::agent()
            .post(format!("{}/v1/completions", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        BufReader::new(r.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
    }
}

/// A word-level tokenizer (`w<id>`) and a chat template beside the fixture's checkpoint.
fn checkpoint_with_tokenizer(dir: &Path) {
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("zamba2-tiny").join(f), dir.join(f)).unwrap();
    }
    let words: serde_json::Map<String, Value> =
        (0..256).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({
        "chat_template": "{{ bos_token }} {% for m in messages %}w{{ 10 + loop.index }} {{ m.content }} {% endfor %}{% if add_generation_prompt %}w99{% endif %}",
        "bos_token": "w1",
        "eos_token": {"content": "w2"}
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

fn engine(tmp: &Path) -> PathBuf {
    let ck = tmp.join("checkpoint");
    std::fs::create_dir_all(&ck).unwrap();
    checkpoint_with_tokenizer(&ck);
    let out = tmp.join("tiny.engine");
    let o = zambac(&["build", ck.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// What `run` gives: the generation of `prompt`, cut after the first end-of-sequence token
/// unless `ignore_eos`.
fn run_gives(
    engine: &Path,
    prompt: &[i64],
    max: usize,
    s: &Sampling,
    ignore_eos: bool,
) -> (Vec<i64>, &'static str) {
    let mut b = CpuBackend::new(Engine::open(engine).unwrap(), 1).unwrap();
    let g = generate(&mut b, prompt, max, s.clone(), |_| {}).unwrap();
    match g.tokens.iter().position(|&t| t == EOS && !ignore_eos) {
        Some(i) => (g.tokens[..=i].to_vec(), "stop"),
        None => (g.tokens, "length"),
    }
}

/// The i-th test request: prompts of different lengths, greedy and sampled, some ignoring
/// the end-of-sequence token.
fn request(i: usize, prompts: &[Vec<i64>]) -> (Vec<i64>, usize, Sampling, bool) {
    let p = &prompts[i % prompts.len()];
    let prompt = p[..p.len().saturating_sub(i / prompts.len() * 2).max(1)].to_vec();
    let sampling = if i.is_multiple_of(2) {
        Sampling::default()
    } else {
        Sampling {
            temperature: 0.7 + 0.1 * (i % 4) as f32,
            top_k: [0, 20, 50][i % 3],
            top_p: [1.0, 0.9][i % 2],
            seed: 1000 + i as u64,
        }
    };
    (prompt, 4 + i % 9, sampling, i.is_multiple_of(3))
}

fn body(prompt: &[i64], max: usize, s: &Sampling, ignore_eos: bool) -> Value {
    json!({
        "model": "checkpoint",
        "prompt": prompt,
        "max_tokens": max,
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "seed": s.seed,
        "ignore_eos": ignore_eos,
    })
}

#[test]
fn concurrent_requests_get_the_tokens_of_a_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &["--max-batch", "16"]);
    let prompts = prompts(&fixture("zamba2-tiny"));
    let n = 20;
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (server, prompts) = (&server, &prompts);
                s.spawn(move || {
                    let (p, max, sampling, ignore) = request(i, prompts);
                    server.post("/v1/completions", &body(&p, max, &sampling, ignore))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, v)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {v}");
        let (p, max, sampling, ignore) = request(i, &prompts);
        let (want, finish) = run_gives(&e, &p, max, &sampling, ignore);
        let c = &v["choices"][0];
        assert_eq!(c["token_ids"], json!(want), "request {i}: {sampling:?}");
        assert_eq!(c["finish_reason"], finish, "request {i}");
        let words: Vec<String> = want.iter().map(|t| format!("w{t}")).collect();
        assert_eq!(c["text"], words.join(" "), "request {i}");
        assert_eq!(v["usage"]["prompt_tokens"], p.len(), "request {i}");
    }
    // The requests were decoded together, not one after the other.
    let steps = server.metric("zambac_decode_batch_size_count");
    let sequences = server.metric("zambac_decode_batch_size_sum");
    assert!(
        sequences / steps > 2.0,
        "{sequences} sequences in {steps} steps"
    );
    assert_eq!(server.metric("zambac_requests_total"), n as f64);

    // And one of them through the command line, as a user runs it.
    let (p, max, sampling, ignore) = request(3, &prompts);
    let ids = p.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let o = zambac_run(&[
        "run",
        e.to_str().unwrap(),
        "--tokens",
        &ids,
        "--max-new-tokens",
        &max.to_string(),
        "--temperature",
        &sampling.temperature.to_string(),
        "--top-k",
        &sampling.top_k.to_string(),
        "--top-p",
        &sampling.top_p.to_string(),
        "--seed",
        &sampling.seed.to_string(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut served = answers[3].1["choices"][0]["token_ids"]
        .as_array()
        .unwrap()
        .clone();
    assert!(ignore, "request 3 ignores the end-of-sequence token");
    served.truncate(max);
    assert_eq!(run["tokens"], json!(served));
}

#[test]
fn a_stream_sends_every_token_then_done() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &[]);
    let prompt = &prompts(&fixture("zamba2-tiny"))[0];
    let s = Sampling {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        seed: 7,
    };
    let mut req = body(prompt, 10, &s, true);
    req["stream_options"] = json!({"include_usage": true});
    let events: Vec<String> = server.stream(&req).collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let ids: Vec<i64> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .flat_map(|c| c["token_ids"].as_array().unwrap().clone())
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert_eq!(ids, run_gives(&e, prompt, 10, &s, true).0);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        text,
        ids.iter()
            .map(|t| format!("w{t}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 10);
}

#[test]
fn a_cancelled_stream_gives_back_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    // One slot, and a generation long enough to still run when the client leaves.
    let server = Server::start(&e, &["--max-batch", "1", "--context", "60000"]);
    let long = body(&[5, 6, 7], 59000, &Sampling::default(), true);
    let mut events = server.stream(&long);
    for _ in 0..3 {
        assert!(events.next().is_some());
    }
    drop(events);
    let t0 = Instant::now();
    let (status, v) = server.post(
        "/v1/completions",
        &body(&[9, 10], 4, &Sampling::default(), true),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["token_ids"].as_array().unwrap().len(), 4);
    assert!(t0.elapsed() < Duration::from_secs(60));
    assert_eq!(server.metric("zambac_requests_cancelled_total"), 1.0);
    assert!(server.metric("zambac_generated_tokens_total") < 59000.0);
}

#[test]
fn a_full_queue_answers_429_and_the_server_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(
        &e,
        &["--max-batch", "1", "--queue", "1", "--context", "60000"],
    );
    let long = body(&[5, 6, 7], 59000, &Sampling::default(), true);
    let mut running = server.stream(&long);
    assert!(running.next().is_some());
    let waiting = server.stream(&long);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("zambac_requests_waiting") < 1.0 {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, v) = server.post(
        "/v1/completions",
        &body(&[9], 2, &Sampling::default(), true),
    );
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("busy"),
        "{v}"
    );
    drop(running);
    drop(waiting);
    while server.metric("zambac_requests_waiting") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request never left the queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, v) = server.post(
        "/v1/completions",
        &body(&[9], 2, &Sampling::default(), true),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(server.metric("zambac_requests_rejected_total"), 1.0);
}

#[test]
fn bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &["--context", "64", "--max-tokens", "8"]);
    let long: Vec<i64> = (0..70).map(|i| i % 200).collect();
    let sixty: Vec<i64> = (0..60).map(|i| i % 200).collect();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/v1/completions", "{\"prompt\": [1, 2".into(), 400, "JSON"),
        ("/v1/completions", "[1, 2]".into(), 400, "invalid type"),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": "many"}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "temperature": "hot"}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": -3}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": 0}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": 1_000_000_000_000i64}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": 1e300}).to_string(),
            400,
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": long, "max_tokens": 4}).to_string(),
            400,
            "context",
        ),
        (
            "/v1/completions",
            json!({"prompt": sixty, "max_tokens": 8}).to_string(),
            400,
            "context",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "max_tokens": 9}).to_string(),
            400,
            "limit",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 300]}).to_string(),
            400,
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": [-1]}).to_string(),
            400,
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": []}).to_string(),
            400,
            "empty",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["w1", "w2"]}).to_string(),
            400,
            "one prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": {"text": "w1"}}).to_string(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"max_tokens": 3}).to_string(),
            400,
            "prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "n": 2}).to_string(),
            400,
            "`n`",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "temperature": -1}).to_string(),
            400,
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "top_p": 0}).to_string(),
            400,
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "top_k": -7}).to_string(),
            400,
            "top_k",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "stop_token_ids": [999]}).to_string(),
            400,
            "stop_token_ids",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1], "model": "gpt-9"}).to_string(),
            404,
            "gpt-9",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}).to_string(),
            400,
            "messages",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": 5}]}).to_string(),
            400,
            "content",
        ),
        ("/v1/nothing", "{}".into(), 404, "route"),
    ];
    for (path, body, status, says) in &cases {
        let (got, text) = server.post_raw(path, body, None);
        assert_eq!(got, *status, "{path} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(says),
            "{path} {body}: `{msg}` does not mention {says}"
        );
    }
    let (status, v) = server.post(
        "/v1/completions",
        &body(&[5, 6], 3, &Sampling::default(), true),
    );
    assert_eq!(status, 200, "{v}");
    // Without `max_tokens`: 16, but never past the server's limit.
    let (status, v) = server.post(
        "/v1/completions",
        &json!({"prompt": [5, 6], "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8, "{v}");
    let (status, health) = server.get("/health", None);
    assert_eq!((status, health.contains("ok")), (200, true));
}

#[test]
fn a_prompt_that_extends_an_earlier_one_starts_from_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &["--prefill-chunk", "8"]);
    let first: Vec<i64> = prompts(&fixture("zamba2-tiny"))
        .into_iter()
        .max_by_key(Vec::len)
        .unwrap();
    let g = Sampling::default();
    let (_, v) = server.post("/v1/completions", &body(&first, 6, &g, true));
    let reply: Vec<i64> = serde_json::from_value(v["choices"][0]["token_ids"].clone()).unwrap();
    // The conversation goes on: the earlier prompt, its reply, and more.
    let mut second = first.clone();
    second.extend_from_slice(&reply);
    second.extend_from_slice(&[17, 18, 19]);
    let (status, v) = server.post("/v1/completions", &body(&second, 6, &g, true));
    assert_eq!(status, 200, "{v}");
    // Everything the first request consumed: its prompt and all but its last token.
    let reused = first.len() + reply.len() - 1;
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], reused,
        "{v}"
    );
    assert_eq!(
        v["choices"][0]["token_ids"],
        json!(run_gives(&e, &second, 6, &g, true).0)
    );
    assert_eq!(server.metric("zambac_prefix_cache_hits_total"), 1.0);
    // A prompt sharing only its first chunks (8 tokens each) reuses those.
    let mut third = first[..20].to_vec();
    third.extend_from_slice(&[40, 41]);
    let (_, v) = server.post("/v1/completions", &body(&third, 5, &g, true));
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"], 16,
        "{v}"
    );
    assert_eq!(
        v["choices"][0]["token_ids"],
        json!(run_gives(&e, &third, 5, &g, true).0)
    );
}

#[test]
fn chat_templates_stop_strings_and_text_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &[]);
    let g = Sampling::default();
    let (status, v) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "w40 w41"}], "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{v}");
    // `w1` (bos), `w11` (the first message), its content, `w99` (the assistant's turn).
    let (want, _) = run_gives(&e, &[1, 11, 40, 41, 99], 5, &g, true);
    assert_eq!(v["choices"][0]["token_ids"], json!(want));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["prompt_tokens"], 5);

    let (ids, _) = run_gives(&e, &[5, 6, 7], 8, &g, true);
    let words: Vec<String> = ids.iter().map(|t| format!("w{t}")).collect();
    let (_, v) = server.post(
        "/v1/completions",
        &json!({"prompt": "w5 w6 w7", "max_tokens": 8, "temperature": 0, "ignore_eos": true, "stop": [words[2].clone()]}),
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(
        v["choices"][0]["text"],
        format!("{} {} ", words[0], words[1]),
        "{v}"
    );
}

#[test]
fn an_api_key_guards_everything_but_health() {
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(&e, &["--api-key", "sesame"]);
    assert_eq!(server.get("/v1/models", None).0, 401);
    assert_eq!(server.get("/v1/models", Some("wrong")).0, 401);
    let (status, text) = server.get("/v1/models", Some("sesame"));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][0]["id"], "checkpoint");
    let req = json!({"prompt": [5], "max_tokens": 2}).to_string();
    assert_eq!(server.post_raw("/v1/completions", &req, None).0, 401);
    assert_eq!(
        server.post_raw("/v1/completions", &req, Some("sesame")).0,
        200
    );
    assert_eq!(server.get("/health", None).0, 200);
    assert_eq!(server.get("/metrics", None).0, 401);

    // Beyond loopback only with a key; a bad flag is refused before anything starts.
    for args in [
        vec!["--host", "0.0.0.0"],
        vec!["--max-batch", "0"],
        vec!["--max-batch", "100000"],
    ] {
        let o = Command::new(zambac_run_bin())
            .args(["serve", e.to_str().unwrap(), "--port", "0"])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// Resident memory of a process (`VmRSS`), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// The server's address as `host:port`.
fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Sends raw bytes on a new connection and returns what came back before the server
/// closed it (or `timeout` passed).
fn raw_exchange(server: &Server, bytes: &[u8], timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr(server)).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// A load of correct, slow, vanishing and garbage clients at once (bounded: 80 correct
/// requests, 100 faulty connections, about a minute): every correct request gets the
/// tokens a single `run` gives; slow clients are cut off by the header deadline; garbage
/// gets a 4xx or a closed connection; afterwards every slot is free and the server's
/// memory is back near its idle level, and it still answers correctly.
#[test]
fn the_server_survives_a_load_of_faults() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let e = engine(tmp.path());
    let server = Server::start(
        &e,
        &[
            "--max-batch",
            "4",
            "--queue",
            "64",
            "--max-connections",
            "24",
            "--read-timeout-s",
            "2",
            "--request-timeout-s",
            "60",
            "--max-body-kib",
            "64",
            "--prefix-cache-mib",
            "1",
        ],
    );
    let pid = server.child.id();
    let prompts = prompts(&fixture("zamba2-tiny"));
    // (prompt, max_tokens, sampling, ignore_eos, the tokens `run` gives)
    type Expected = (Vec<i64>, usize, Sampling, bool, Vec<i64>);
    let expected: Vec<Expected> = (0..16)
        .map(|i| {
            let (p, max, s, ignore) = request(i, &prompts);
            let (want, _) = run_gives(&e, &p, max, &s, ignore);
            (p, max, s, ignore, want)
        })
        .collect();
    let correct = |i: usize| -> Result<(), String> {
        let (p, max, s, ignore, want) = &expected[i % expected.len()];
        let mut b = body(p, *max, s, *ignore);
        if i.is_multiple_of(2) {
            let (status, v) = server.post("/v1/completions", &b);
            if status != 200 {
                return Err(format!("status {status}: {v}"));
            }
            if v["choices"][0]["token_ids"] != json!(want) {
                return Err(format!(
                    "wrong tokens {} for {want:?}",
                    v["choices"][0]["token_ids"]
                ));
            }
        } else {
            b["stream"] = json!(true);
            let ids: Vec<i64> = server
                .stream(&b)
                .take_while(|d| d != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
                .flat_map(|v| {
                    v["choices"][0]["token_ids"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|t| t.as_i64())
                .collect();
            if &ids != want {
                return Err(format!("streamed {ids:?} for {want:?}"));
            }
        }
        Ok(())
    };
    // Warm-up: every path once, then the idle level.
    for i in 0..8 {
        correct(i).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss(pid);

    let big = format!("{{\"prompt\": [{}]}}", vec!["1"; 40_000].join(","));
    let t0 = Instant::now();
    let report = std::thread::scope(|s| {
        // 8 clients × 10 correct requests, half of them streamed.
        let good: Vec<_> = (0..8)
            .map(|c| {
                let correct = &correct;
                s.spawn(move || (0..10).map(|k| correct(c * 10 + k)).collect::<Vec<_>>())
            })
            .collect();
        // 20 slow clients: a request head trickled a byte every 300 ms; the server must
        // close each within the 2 s header deadline (plus scheduling slack).
        let slow: Vec<_> = (0..20)
            .map(|_| {
                let server = &server;
                s.spawn(move || {
                    let mut c = std::net::TcpStream::connect(addr(server)).unwrap();
                    let start = Instant::now();
                    let head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
                    for byte in head {
                        if c.write_all(&[*byte]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(300));
                        if start.elapsed() > Duration::from_secs(15) {
                            break;
                        }
                    }
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut rest = Vec::new();
                    let _ = c.read_to_end(&mut rest);
                    start.elapsed()
                })
            })
            .collect();
        // 20 clients that open a long stream and leave after three events.
        let vanishing: Vec<_> = (0..20)
            .map(|i| {
                let server = &server;
                let prompts = &prompts;
                s.spawn(move || {
                    let b = json!({"prompt": prompts[i % prompts.len()], "max_tokens": 400, "ignore_eos": true});
                    server.stream(&b).take(3).count()
                })
            })
            .collect();
        // 60 garbage connections: not HTTP, broken HTTP, bodies over the limit, bodies
        // that are not the request's JSON, a length that lies.
        let garbage: Vec<_> = (0..60)
            .map(|i| {
                let server = &server;
                let big = &big;
                s.spawn(move || {
                    let (kind, bytes): (&str, Vec<u8>) = match i % 6 {
                        0 => ("not http", (0..200u8).map(|b| b.wrapping_mul(37)).collect()),
                        1 => ("broken request line", b"GET\r\n\r\n".to_vec()),
                        2 => ("body over the limit", format!(
                            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
                            big.len()).into_bytes()),
                        3 => ("bad json", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"prompt\"".to_vec()),
                        4 => ("wrong types", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 31\r\nConnection: close\r\n\r\n{\"prompt\": 5, \"max_tokens\": -1}".to_vec()),
                        _ => ("a length that lies", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"prompt\": [1]}".to_vec()),
                    };
                    let reply = raw_exchange(server, &bytes, Duration::from_secs(10));
                    let status = reply
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse::<u16>().ok());
                    (kind, status)
                })
            })
            .collect();
        let good: Vec<Result<(), String>> =
            good.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let slow: Vec<Duration> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        let vanished: usize = vanishing.into_iter().map(|h| h.join().unwrap()).sum();
        let garbage: Vec<(&str, Option<u16>)> =
            garbage.into_iter().map(|h| h.join().unwrap()).collect();
        (good, slow, vanished, garbage)
    });
    let (good, slow, vanished, garbage) = report;
    let load_s = t0.elapsed().as_secs_f64();

    // Every slot given back: nothing running or waiting once the vanished streams are
    // noticed (each within a step or two).
    let settle = Instant::now();
    while (server.metric("zambac_requests_running") > 0.0
        || server.metric("zambac_requests_waiting") > 0.0)
        && settle.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let running = server.metric("zambac_requests_running");
    let waiting = server.metric("zambac_requests_waiting");
    let cancelled = server.metric("zambac_requests_cancelled_total");
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(pid);
    // And the server still answers correctly.
    for i in 0..4 {
        correct(i).unwrap();
    }

    let failures: Vec<&String> = good.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut by_kind: std::collections::BTreeMap<(&str, Option<u16>), usize> = Default::default();
    for g in &garbage {
        *by_kind.entry(*g).or_default() += 1;
    }
    let slowest = slow.iter().max().copied().unwrap_or_default();
    eprintln!(
        "load of {load_s:.1} s: {} correct requests, {} wrong; {} slow clients cut off after \
         at most {:.1} s; {vanished} events read by 20 vanishing streams ({cancelled} \
         cancellations counted); garbage answered {by_kind:?}; after: {running} running, \
         {waiting} waiting, memory {:.1} MiB idle → {:.1} MiB",
        good.len() - failures.len(),
        failures.len(),
        slow.len(),
        slowest.as_secs_f64(),
        idle as f64 / 1048576.0,
        after as f64 / 1048576.0,
    );
    assert!(
        failures.is_empty(),
        "correct requests failed under load: {failures:?}"
    );
    assert_eq!(good.len(), 80);
    // A client that trickles its head never gets a slot for long: the 2 s deadline
    // (the head is 70 bytes, 21 s at this pace).
    assert!(
        slowest < Duration::from_secs(8),
        "a slow client held on for {slowest:?}"
    );
    assert_eq!(vanished, 60);
    assert!(
        cancelled >= 20.0,
        "{cancelled} cancellations for 20 vanished streams"
    );
    for ((kind, status), n) in &by_kind {
        let ok = match *kind {
            "body over the limit" => *status == Some(413),
            "bad json" | "wrong types" => matches!(status, Some(400 | 415 | 422)),
            // A lying length: the body never completes within the read deadline.
            "a length that lies" => *status == Some(408),
            // Not HTTP at all: a 400 or a closed connection.
            _ => status.is_none_or(|s| s == 400),
        };
        assert!(ok, "{n}× {kind}: status {status:?}");
    }
    assert_eq!((running, waiting), (0.0, 0.0));
    // Memory back near idle: what the load allocated was given back (the allocator may
    // keep a little; a leak of a state per request would be far more).
    assert!(
        after <= idle + (48 << 20),
        "memory grew from {idle} to {after} bytes under the load"
    );
}
