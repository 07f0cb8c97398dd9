//! The `zambac-run` binary end to end on the toy engine: it prints what the cpu backend
//! computes in-process (tokens, `--json`, `--dump-logits`, `bench --json`), and a damaged
//! engine or bad input exits with code 2 and a message naming what is wrong, never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use zambac_engine::{Engine, MANIFEST_FILE};
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::sampling::Sampling;
use zambac_runtime::session::{Generation, generate};

const PROMPT: [i64; 5] = [3, 1, 7, 0, 5];
const NEW: usize = 6;

use common::fixture;

fn zambac_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zambac-run"))
        .args(args)
        .output()
        .expect("running zambac-run")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn prompt_arg() -> String {
    PROMPT.map(|t| t.to_string()).join(",")
}

/// What `run --threads 1` with the default (greedy) sampling should print.
fn in_process(dir: &Path) -> Generation {
    let mut b = CpuBackend::new(Engine::open(dir).unwrap(), 1).unwrap();
    generate(&mut b, &PROMPT, NEW, Sampling::default(), |_| {}).unwrap()
}

fn run_args<'a>(dir: &'a Path, prompt: &'a str, new: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        path(dir),
        "--tokens",
        prompt,
        "--max-new-tokens",
        new,
        "--threads",
        "1",
    ]
}

#[test]
fn run_prints_the_tokens_the_backend_generates() {
    let f = fixture();
    let want = in_process(&f.dir);
    let (prompt, new) = (prompt_arg(), NEW.to_string());
    let out = zambac_run(&run_args(&f.dir, &prompt, &new));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed: Vec<i64> = stdout(&out)
        .trim()
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(printed, want.tokens);
    assert_eq!(printed.len(), NEW);
}

#[test]
fn run_json_and_dump_logits() {
    let f = fixture();
    let want = in_process(&f.dir);
    let dump = f.tmp.path().join("logits.safetensors");
    let (prompt, new) = (prompt_arg(), NEW.to_string());
    let mut args = run_args(&f.dir, &prompt, &new);
    args.extend(["--json", "--dump-logits", path(&dump)]);
    let out = zambac_run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["tokens"], serde_json::json!(want.tokens));
    assert_eq!(json["prompt_tokens"], serde_json::json!(PROMPT));
    assert_eq!(json["backend"], "cpu");

    let bytes = std::fs::read(&dump).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.dtype(), safetensors::Dtype::F32);
    assert_eq!(logits.shape(), [PROMPT.len(), common::V]);
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    // The same engine on the same thread count: the same bits.
    assert_eq!(f32s(logits.data()), want.prefill_logits.data);
    let decode = st.tensor("decode_logits").unwrap();
    assert_eq!(decode.shape(), [NEW, common::V]);
    assert_eq!(f32s(decode.data()), want.decode_logits.data);
    let tokens: Vec<i64> = st
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(tokens, want.tokens);
}

#[test]
fn bench_json_reports_the_measurements() {
    let f = fixture();
    let out = zambac_run(&[
        "bench",
        path(&f.dir),
        "--prompt-len",
        "4",
        "--new-tokens",
        "3",
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(json["prompt_len"], 4);
    assert_eq!(json["new_tokens"], 3);
    assert_eq!(json["threads"], 2);
    for key in ["prefill_s", "ttft_s", "decode_tok_per_s"] {
        assert!(json[key].as_f64().is_some_and(|s| s > 0.0), "{key}: {json}");
    }
    assert!(json["gemm_library"].is_string(), "{json}");
}

/// Removes a view from decode's `add` launch; both commands refuse the engine.
#[test]
fn a_damaged_manifest_exits_2_naming_the_program_and_step() {
    let f = fixture();
    let manifest = f.dir.join(MANIFEST_FILE);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["programs"][2]["steps"][common::STEP_ADD]["Launch"]["views"]
        .as_array_mut()
        .unwrap()
        .pop();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let prompt = prompt_arg();
    let run = run_args(&f.dir, &prompt, "2");
    let bench = ["bench", path(&f.dir), "--prompt-len", "2", "--json"];
    for args in [&run[..], &bench[..]] {
        let out = zambac_run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(path(&manifest)), "names the file: {err}");
        assert!(
            err.contains("program `decode`, step 3 (kernel `add`, Binary)"),
            "{err}"
        );
        assert!(err.contains("the launch passes 2"), "{err}");
        assert!(stdout(&out).is_empty(), "nothing runs: {}", stdout(&out));
    }
}

#[test]
fn bad_input_exits_2() {
    let f = fixture();
    let cases: [(&str, &str); 3] = [
        ("8", "outside the vocabulary"),
        ("1,x", "is not a token id"),
        ("-1", "outside the vocabulary"),
    ];
    for (tokens, why) in cases {
        // `=`: clap would take a separate `-1` for a flag.
        let out = zambac_run(&["run", path(&f.dir), &format!("--tokens={tokens}")]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "--tokens {tokens}: {err}");
        assert!(err.contains(why), "--tokens {tokens}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let nowhere = f.tmp.path().join("nowhere");
    let out = zambac_run(&["run", path(&nowhere), "--tokens", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no such engine directory"),
        "{}",
        stderr(&out)
    );
}

/// A reader that goes away (`zambac-run run … | head -c 1`) ends the process the way it
/// ends any Unix filter — by SIGPIPE — not with a panic on the next write.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let f = fixture();
    let prompt = prompt_arg();
    let mut args = run_args(&f.dir, &prompt, "64");
    args.push("--json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zambac-run"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?}: {err}",
        out.status
    );
}

/// SIGPIPE's number on Linux and the BSDs.
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}
