//! The cpu backend against plain Rust: a tiny `host.so` compiled from C with the `zk_` ABI
//! and the contract's toy program, which mixes launches and GEMMs (strides, accumulation,
//! a bf16 weight in a GEMM and in a Gemv, a state updated in place, KV caches of capacity
//! C, `pos` in offsets and in integer arguments).

mod common;

use std::path::Path;

use common::{H, Reference, V, assert_close, conv0, k0, v0};
use zambac_engine::{Buffer, Engine, Expr, StateRole, StateSpec, View};
use zambac_runtime::RuntimeError;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::sampling::Sampling;
use zambac_runtime::session::{Backend, State, generate};
use zambac_runtime::tensor::Tensor;

use common::fixture;

fn backend(dir: &Path, threads: usize) -> CpuBackend {
    CpuBackend::new(Engine::open(dir).unwrap(), threads).unwrap()
}

fn state_f32(s: &State, role: StateRole) -> &[f32] {
    &s.get(role).unwrap_or_else(|| panic!("no `{role}`")).data
}

const PROMPT: [i64; 5] = [3, 1, 7, 0, 5];

#[test]
fn prefill_and_decode_match_plain_rust() {
    let f = fixture();
    for threads in [1, 2] {
        let mut b = backend(&f.dir, threads);
        let capacity = 9;
        let (logits, state) = b.prefill(&PROMPT, capacity).unwrap();
        let mut r = Reference::new(capacity);
        let want = r.run(&PROMPT, 0);
        assert_eq!(logits.shape, vec![PROMPT.len(), V]);
        assert_close(&logits.data, &want.concat(), "prefill logits");
        assert_eq!(
            (state.position(), state.capacity()),
            (PROMPT.len(), capacity)
        );
        let roles: Vec<StateRole> = state.iter().map(|(role, _)| role).collect();
        assert_eq!(roles, [conv0(), k0(), v0()], "the engine's layout order");
        assert_close(state_f32(&state, conv0()), &r.conv, "conv.0 after prefill");
        assert_close(state_f32(&state, k0()), &r.k, "k.0 after prefill");
        assert_close(state_f32(&state, v0()), &r.v, "v.0 after prefill");
        assert_eq!(state.get(k0()).unwrap().shape, [1, capacity, H]);
        assert_eq!(state.get(conv0()).unwrap().shape, [1, H]);

        let mut state = state;
        for (i, tok) in [2i64, 6, 4].into_iter().enumerate() {
            let pos = PROMPT.len() + i;
            assert_eq!(state.position(), pos);
            let logits = b.decode(tok, &mut state).unwrap();
            assert_eq!(state.position(), pos + 1, "decode moves the position on");
            let want = r.run(&[tok], pos);
            assert_eq!(logits.shape, vec![1, V]);
            assert_close(&logits.data, &want[0], "decode logits");
            assert_close(state_f32(&state, conv0()), &r.conv, "conv.0 after decode");
            assert_close(state_f32(&state, k0()), &r.k, "k.0 after decode");
            assert_close(state_f32(&state, v0()), &r.v, "v.0 after decode");
        }
    }
}

/// The cache is written up to its last row (position C - 1) and no further.
#[test]
fn decode_fills_the_cache_to_capacity() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let capacity = PROMPT.len() + 2;
    let (_, mut state) = b.prefill(&PROMPT, capacity).unwrap();
    let mut r = Reference::new(capacity);
    r.run(&PROMPT, 0);
    for tok in [6, 2] {
        let pos = state.position();
        let logits = b.decode(tok, &mut state).unwrap();
        assert_close(&logits.data, &r.run(&[tok], pos)[0], "decode logits");
    }
    assert_eq!(state.position(), capacity);
    assert_close(state_f32(&state, k0()), &r.k, "a full k.0");
    assert_close(state_f32(&state, v0()), &r.v, "a full v.0");
    let last = &state_f32(&state, k0())[(capacity - 1) * H..];
    assert!(
        last.iter().any(|&x| x != 0.0),
        "the last cache row is written"
    );
    let before = state.clone();
    assert!(matches!(
        b.decode(1, &mut state),
        Err(RuntimeError::Input(msg)) if msg.contains("past the KV-cache capacity")
    ));
    assert_eq!(state, before, "a refused decode leaves the state alone");
}

#[test]
fn prefill_last_is_the_last_row_of_prefill() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let (all, s1) = b.prefill(&PROMPT, 8).unwrap();
    let (last, s2) = b.prefill_last(&PROMPT, 8).unwrap();
    assert_eq!(last.shape, vec![1, V]);
    assert_eq!(last.data, all.row(PROMPT.len() - 1));
    assert_eq!(s1, s2);
}

#[test]
fn two_threads_give_the_same_bits_as_one() {
    let f = fixture();
    let (mut one, mut two) = (backend(&f.dir, 1), backend(&f.dir, 2));
    assert_eq!((one.threads(), two.threads()), (1, 2));
    let a = generate(&mut one, &PROMPT, 3, Sampling::default(), |_| {}).unwrap();
    let b = generate(&mut two, &PROMPT, 3, Sampling::default(), |_| {}).unwrap();
    assert_eq!(a.prefill_logits, b.prefill_logits);
    assert_eq!(a.decode_logits, b.decode_logits);
    assert_eq!(a.tokens, b.tokens);
}

/// Adds a launch of `mark` over an odd grid writing to a state of its own, so the chunking
/// itself is visible.
#[test]
fn launches_split_the_grid_into_contiguous_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    let dir = tmp.path().join("mark.engine");
    let mut kernels = common::kernels();
    kernels.push(common::mark_kernel());
    let mut parts = common::parts(kernels);
    let grid = 1001;
    let marks: StateRole = "conv.9".parse().unwrap();
    let shape = vec![Expr::k(grid), Expr::k(2)];
    parts.model.state.push(StateSpec {
        role: marks,
        shape: shape.clone(),
        elem: zambac_engine::Elem::F32,
    });
    for p in &mut parts.programs {
        let marks = View::of(Buffer::Output(marks.name()));
        p.steps.push(common::launch(
            "mark",
            Expr::k(grid),
            vec![marks.clone(), marks],
            vec![Expr::k(0)],
        ));
        p.outputs.push(("conv.9".into(), shape.clone()));
    }
    common::write_parts(&dir, &host, parts);

    let run = |threads| {
        let (_, s) = backend(&dir, threads).prefill(&PROMPT, 8).unwrap();
        s.get(marks).unwrap().data.clone()
    };
    let (one, two) = (run(1), run(2));
    for i in 0..grid as usize {
        assert_eq!(one[2 * i], (3 * i + 1) as f32);
        assert_eq!(two[2 * i], (3 * i + 1) as f32);
        assert_eq!(one[2 * i + 1], 0.0, "one thread runs one chunk");
        let begin = if i < 500 { 0.0 } else { 500.0 };
        assert_eq!(two[2 * i + 1], begin, "index {i}");
    }
}

#[test]
fn a_missing_kernel_symbol_is_a_load_error() {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    let dir = tmp.path().join("e");
    common::write_parts(&dir, &host, common::renamed("row_scale", "nope"));
    match CpuBackend::new(Engine::open(&dir).unwrap(), 1) {
        Err(RuntimeError::Load { file, msg, .. }) => {
            assert!(file.ends_with("host.so"), "{file}");
            assert!(msg.contains("zk_nope"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a missing symbol went unnoticed"),
    }
}

/// An engine the validator refuses never reaches a backend, and the runtime reports it as
/// the user's `Load` error naming the manifest, the program and the step.
#[test]
fn a_damaged_manifest_is_a_load_error_naming_the_step() {
    let f = fixture();
    let path = f.dir.join(zambac_engine::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // B's column stride runs past the end of w1 (16 elements).
    m["programs"][0]["steps"][common::STEP_GEMM_W1]["Gemm"]["b"]["col_stride"] =
        serde_json::json!({ "k": 5 });
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = match Engine::open(&f.dir) {
        Err(e) => RuntimeError::from(e),
        Ok(_) => panic!("an out-of-bounds GEMM operand was accepted"),
    };
    assert!(
        matches!(&err, RuntimeError::Load { file, .. } if file.ends_with("manifest.json")),
        "{err}"
    );
    assert!(err.is_user_error());
    assert!(
        err.to_string().contains("program `prefill`, step 1 (GEMM)"),
        "{err}"
    );
}

#[test]
fn bad_run_inputs_are_input_errors() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    fn input<T>(r: Result<T, RuntimeError>) -> bool {
        matches!(r, Err(RuntimeError::Input(_)))
    }
    assert!(
        input(b.prefill(&[1, V as i64], 8)),
        "token outside the vocabulary"
    );
    assert!(input(b.prefill(&[], 8)), "empty prompt");
    assert!(input(b.prefill(&PROMPT, 3)), "capacity below the prompt");
    let (_, mut full) = b.prefill(&PROMPT, 5).unwrap();
    assert!(
        input(b.decode(1, &mut full)),
        "position past the KV capacity"
    );
    let (_, state) = b.prefill(&PROMPT, 6).unwrap();
    assert!(input(b.decode(-1, &mut state.clone())), "negative token");
    assert!(
        input(b.decode(V as i64, &mut state.clone())),
        "token = vocab"
    );

    let mut partial = state.clone();
    assert!(partial.remove(conv0()).is_some());
    match b.decode(1, &mut partial) {
        Err(RuntimeError::Input(msg)) => assert!(msg.contains("conv.0"), "{msg}"),
        other => panic!("a state without conv.0 decoded: {other:?}"),
    }

    // A state whose cache does not have the capacity the state claims.
    let mut tensors: Vec<(StateRole, Tensor)> = state.iter().map(|(r, t)| (r, t.clone())).collect();
    tensors[1].1 = Tensor::zeros(vec![1, 7, H]);
    let mut odd = State::new(tensors, state.capacity(), state.position());
    match b.decode(1, &mut odd) {
        Err(RuntimeError::Input(msg)) => assert!(msg.contains("state `k.0` has shape"), "{msg}"),
        other => panic!("a mis-shaped cache decoded: {other:?}"),
    }
    // The good state still works after all that.
    assert!(b.decode(1, &mut state.clone()).is_ok());
}

#[test]
fn bench_reports_times_and_memory() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let r = zambac_runtime::bench::run(&mut b, 6, 4, 1, 7, Default::default()).unwrap();
    assert!(r.prefill_s > 0.0 && r.ttft_s > 0.0 && r.decode_tok_per_s > 0.0);
    assert_eq!(
        (r.prompt_len, r.new_tokens, r.prefill_runs_s.len()),
        (6, 4, 3)
    );
    assert!(r.peak_rss_bytes > 0);
    let json = serde_json::to_value(&r).unwrap();
    for key in ["prefill_s", "decode_tok_per_s", "peak_rss_bytes"] {
        assert!(json.get(key).is_some(), "{key}");
    }
    assert!(json.get("prefill_chunk").is_none());
}

/// A long prompt's benchmark: no warm-up or separate runs, the prompt in chunks.
#[test]
fn bench_can_time_one_chunked_prefill() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let prefill = zambac_runtime::bench::Prefill {
        runs: 0,
        chunk: Some(4),
    };
    let r = zambac_runtime::bench::run(&mut b, 11, 2, 1, 7, prefill).unwrap();
    assert_eq!(r.prefill_runs_s, vec![r.prefill_s]);
    assert!(r.prefill_s > 0.0 && r.ttft_s >= r.prefill_s);
    assert_eq!(r.prefill_chunk, Some(4));
}
