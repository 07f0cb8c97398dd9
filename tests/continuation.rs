//! Continuation: a prefill that starts from a sequence's state at position p > 0 equals
//! prefilling the whole prompt from 0 — split anywhere in a fixture's 37-token prompt, in
//! chunks, and through a state snapshot saved to a file and restored.

mod common;

use common::*;
use zambac_engine::Engine;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::session::{Backend, State};

fn engine(tmp: &std::path::Path, name: &str) -> std::path::PathBuf {
    engine_built(tmp, name, "host")
}

/// The fixture's engine with the host's Mamba2 forms (`host`) or the GPU's (`gpu`: chunked
/// prefill scans, fused decode steps).
fn engine_built(tmp: &std::path::Path, name: &str, forms: &str) -> std::path::PathBuf {
    let dir = tmp.join(format!("{name}-{forms}.engine"));
    let (prefill, decode) = match forms {
        "gpu" => ("chunked", "fused"),
        _ => ("sequential", "separate"),
    };
    let o = zambac(&[
        "build",
        fixture(name).to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--mamba2-prefill",
        prefill,
        "--mamba2-decode",
        decode,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

/// The states of two runs agree tensor by tensor.
fn state_diff(a: &State, b: &State) -> f32 {
    a.iter()
        .map(|(role, t)| max_diff(&t.data, &b.get(role).unwrap().data))
        .fold(0.0, f32::max)
}

/// Every split point of the longest prompt — one token, inside the prompt, one before the
/// end — on every fixture: the two prefills' logits are the one prefill's, the states they
/// leave agree, and decoding on from either gives the same logits; the whole prompt's
/// logits still match Hugging Face.
#[test]
fn a_prefill_split_anywhere_equals_one_prefill() {
    split_anywhere("host");
}

/// [`a_prefill_split_anywhere_equals_one_prefill`] with the GPU's Mamba2 forms: chunked
/// prefill scans over calls of 1 to 36 tokens — one chunk up to 32 tokens, two past it —
/// each continuing the state the call before left, and fused decode steps after them.
#[test]
fn a_split_prefill_equals_one_with_the_gpu_mamba2_forms() {
    split_anywhere("gpu");
}

fn split_anywhere(forms: &str) {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        let dir = engine_built(tmp.path(), &name, forms);
        let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
        b.set_bf16_products(false).unwrap();
        let prompt = prompts(&fixture(&name))
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap();
        let n = prompt.len();
        let capacity = n + 4;
        let (whole, whole_state) = b.prefill(&prompt, capacity).unwrap();
        let hf = tensor(
            &zambac_weights::Checkpoint::open_file(&fixture(&name).join("expected.safetensors"))
                .unwrap(),
            "logits_2",
        );
        assert!(
            max_diff(&whole.data, &hf.data) <= 2e-4,
            "{name}: whole prefill vs HF"
        );
        let mut continued_from_whole = whole_state.clone();
        let next = b.decode(7, &mut continued_from_whole).unwrap();
        for split in 1..n {
            let mut state = b.new_state(capacity).unwrap();
            let first = b.extend(&prompt[..split], &mut state).unwrap();
            assert_eq!(state.position(), split);
            let second = b.extend(&prompt[split..], &mut state).unwrap();
            assert_eq!(state.position(), n);
            let mut rows = first.data.clone();
            rows.extend_from_slice(&second.data);
            let d = max_diff(&rows, &whole.data);
            assert!(d <= 2e-4, "{name}: split at {split}: logits differ by {d}");
            let s = state_diff(&state, &whole_state);
            assert!(s <= 2e-4, "{name}: split at {split}: states differ by {s}");
            let after = b.decode(7, &mut state).unwrap();
            let d = max_diff(&after.data, &next.data);
            assert!(d <= 2e-4, "{name}: split at {split}: decode differs by {d}");
        }
    }
}

/// Prefilling in chunks (`--prefill-chunk`) prints the tokens of one whole prefill, and the
/// dumped logits agree; a snapshot saved after a prefix and restored continues exactly as
/// the uninterrupted run (the state round-trips bit for bit).
#[test]
fn chunks_and_snapshots_continue_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = engine(tmp.path(), "zamba2-tiny");
    let prompt = prompts(&fixture("zamba2-tiny"))
        .into_iter()
        .max_by_key(Vec::len)
        .unwrap();
    let ids = |t: &[i64]| t.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let e = dir.to_str().unwrap();
    let whole = zambac_run(&[
        "run",
        e,
        "--tokens",
        &ids(&prompt),
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let want: serde_json::Value = serde_json::from_str(&stdout(&whole)).unwrap();
    for chunk in ["1", "5", "16", "36"] {
        let c = zambac_run(&[
            "run",
            e,
            "--tokens",
            &ids(&prompt),
            "--max-new-tokens",
            "8",
            "--json",
            "--prefill-chunk",
            chunk,
        ]);
        assert!(c.status.success(), "{}", stderr(&c));
        let got: serde_json::Value = serde_json::from_str(&stdout(&c)).unwrap();
        assert_eq!(got["tokens"], want["tokens"], "chunks of {chunk}");
    }
    let snap = tmp.path().join("prefix.state");
    let (head, tail) = prompt.split_at(20);
    let s = zambac_run(&[
        "run",
        e,
        "--tokens",
        &ids(head),
        "--max-new-tokens",
        "0",
        "--save-state",
        snap.to_str().unwrap(),
    ]);
    assert!(s.status.success(), "{}", stderr(&s));
    let r = zambac_run(&[
        "run",
        e,
        "--tokens",
        &ids(tail),
        "--max-new-tokens",
        "8",
        "--json",
        "--load-state",
        snap.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let got: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
    assert_eq!(got["tokens"], want["tokens"]);

    // In process: the restored state is the saved one, exactly.
    let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
    let mut state = b.new_state(prompt.len() + 8).unwrap();
    b.extend(head, &mut state).unwrap();
    let file = tmp.path().join("exact.state");
    b.save_state(&file, &state).unwrap();
    let restored = b.load_state(&file, prompt.len() + 8).unwrap();
    assert_eq!(restored.position(), 20);
    assert_eq!(state_diff(&restored, &state), 0.0);
    let (mut x, mut y) = (state, restored);
    let a = b.extend(tail, &mut x).unwrap();
    let c = b.extend(tail, &mut y).unwrap();
    assert_eq!(a.data, c.data, "a restored state continues bit for bit");
}

/// A snapshot of another engine, a damaged one, a truncated one, or something that is not
/// a snapshot at all exits with code 2 and says which.
#[test]
fn foreign_or_damaged_snapshots_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = engine(tmp.path(), "zamba2-tiny");
    let other = engine(tmp.path(), "zamba2-tiny-norope-1block");
    let snap = tmp.path().join("s.state");
    let s = zambac_run(&[
        "run",
        mine.to_str().unwrap(),
        "--tokens",
        "5,6,7",
        "--max-new-tokens",
        "2",
        "--save-state",
        snap.to_str().unwrap(),
    ]);
    assert!(s.status.success(), "{}", stderr(&s));
    let bytes = std::fs::read(&snap).unwrap();
    let flipped = tmp.path().join("flipped.state");
    let mut f = bytes.clone();
    let last = f.len() - 3;
    f[last] ^= 0x55;
    std::fs::write(&flipped, &f).unwrap();
    let truncated = tmp.path().join("truncated.state");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let junk = tmp.path().join("junk.state");
    std::fs::write(&junk, b"not a snapshot").unwrap();
    let cases = [
        (&other, &snap, "another engine"),
        (&mine, &flipped, "checksum"),
        (&mine, &truncated, "snapshot"),
        (&mine, &junk, "snapshot"),
        (&mine, &tmp.path().join("missing.state"), "cannot read"),
    ];
    for (engine, file, needle) in cases {
        let out = zambac_run(&[
            "run",
            engine.to_str().unwrap(),
            "--tokens",
            "1",
            "--load-state",
            file.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let r = zambac(&[
        "run",
        mine.to_str().unwrap(),
        "--backend",
        "reference",
        "--tokens",
        "1",
        "--load-state",
        snap.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
}
