//! The cpu backend against plain Rust: a tiny `host.so` compiled from C with the `zk_` ABI
//! and a hand-written program mixing launches and GEMMs (strides, accumulation, a bf16
//! weight, a state updated in place, a KV cache, `pos` in offsets and ints).

mod common;

use std::path::{Path, PathBuf};

use common::{H, Reference, V, assert_close};
use zambac_ir::program::{Buffer, Expr, Matrix, Step, View};
use zambac_runtime::RuntimeError;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::engine::{Engine, EngineWriter};
use zambac_runtime::sampling::Sampling;
use zambac_runtime::session::{Backend, State, generate};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    let dir = tmp.path().join("toy.engine");
    common::write_engine(&dir, &host);
    Fixture { _tmp: tmp, dir }
}

fn backend(dir: &Path, threads: usize) -> CpuBackend {
    CpuBackend::new(Engine::open(dir).unwrap(), threads).unwrap()
}

fn state_f32<'a>(s: &'a State, name: &str) -> &'a [f32] {
    &s[name].f32().unwrap().data
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
        assert_close(state_f32(&state, "conv.0"), &r.conv, "conv.0 after prefill");
        assert_close(state_f32(&state, "k.0"), &r.k, "k.0 after prefill");
        assert_eq!(state["k.0"].shape(), &[1, capacity, H]);

        let mut state = state;
        for (i, tok) in [2i64, 6, 4].into_iter().enumerate() {
            let pos = PROMPT.len() + i;
            let (logits, next) = b.decode(tok, pos, state).unwrap();
            state = next;
            let want = r.run(&[tok], pos);
            assert_eq!(logits.shape, vec![1, V]);
            assert_close(&logits.data, &want[0], "decode logits");
            assert_close(state_f32(&state, "conv.0"), &r.conv, "conv.0 after decode");
            assert_close(state_f32(&state, "k.0"), &r.k, "k.0 after decode");
        }
    }
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

/// Adds a launch of `mark` over an odd grid writing to a state output, so the chunking
/// itself is visible.
#[test]
fn launches_split_the_grid_into_contiguous_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    let dir = tmp.path().join("mark.engine");
    let mut parts = common::parts(common::kernels());
    let grid = 1001;
    for p in &mut parts.programs {
        p.steps.push(Step::Launch {
            kernel: "mark".into(),
            grid: Expr::k(grid),
            views: vec![View::of(Buffer::Output("conv.9".into()))],
            ints: vec![],
        });
        p.outputs
            .push(("conv.9".into(), vec![Expr::k(grid), Expr::k(2)]));
    }
    let mut w = EngineWriter::create(&dir).unwrap();
    for (name, shape, data, dtype) in common::weights() {
        w.add_weight(name, &shape, &data, dtype).unwrap();
    }
    w.finish(parts, &host, None).unwrap();

    let run = |threads| {
        let (_, s) = backend(&dir, threads).prefill(&PROMPT, 8).unwrap();
        s["conv.9"].f32().unwrap().data.clone()
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
    let mut kernels = common::kernels();
    kernels[3].symbol = "nope".into();
    let mut w = EngineWriter::create(&dir).unwrap();
    for (name, shape, data, dtype) in common::weights() {
        w.add_weight(name, &shape, &data, dtype).unwrap();
    }
    w.finish(common::parts(kernels), &host, None).unwrap();
    match CpuBackend::new(Engine::open(&dir).unwrap(), 1) {
        Err(RuntimeError::Load { file, msg, .. }) => {
            assert!(file.ends_with("host.so"), "{file}");
            assert!(msg.contains("zk_nope"), "{msg}");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a missing symbol went unnoticed"),
    }
}

#[test]
fn an_out_of_bounds_gemm_operand_is_an_error_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    let dir = tmp.path().join("e");
    let mut parts = common::parts(common::kernels());
    // B's column stride runs past the end of w1 (16 elements).
    parts.programs[0].steps[1] = Step::Gemm {
        m: Expr::T,
        n: Expr::k(H as i64),
        k: Expr::k(H as i64),
        a: Matrix {
            view: View::of(Buffer::Slot(0)),
            row_stride: Expr::k(H as i64),
            col_stride: Expr::k(1),
        },
        b: Matrix {
            view: View::of(Buffer::Weight(1)),
            row_stride: Expr::k(1),
            col_stride: Expr::k(5),
        },
        c: Matrix {
            view: View::of(Buffer::Slot(1)),
            row_stride: Expr::k(H as i64),
            col_stride: Expr::k(1),
        },
        accumulate: false,
    };
    let mut w = EngineWriter::create(&dir).unwrap();
    for (name, shape, data, dtype) in common::weights() {
        w.add_weight(name, &shape, &data, dtype).unwrap();
    }
    w.finish(parts, &host, None).unwrap();
    let err = backend(&dir, 2).prefill(&PROMPT, 8).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Load { file, .. } if file.ends_with("manifest.json")),
        "{err}"
    );
    assert!(err.to_string().contains("step 1"), "{err}");
}

#[test]
fn bad_run_inputs_are_input_errors() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let input = |r: Result<_, RuntimeError>| matches!(r, Err(RuntimeError::Input(_)));
    assert!(
        input(b.prefill(&[1, V as i64], 8)),
        "token outside the vocabulary"
    );
    assert!(input(b.prefill(&[], 8)), "empty prompt");
    assert!(input(b.prefill(&PROMPT, 3)), "capacity below the prompt");
    let (_, state) = b.prefill(&PROMPT, 5).unwrap();
    assert!(
        input(b.decode(1, 5, state.clone())),
        "position past the KV capacity"
    );
    assert!(input(b.decode(-1, 4, state.clone())), "negative token");
    let mut partial = state;
    partial.remove("conv.0");
    assert!(input(b.decode(1, 4, partial)), "state without conv.0");
}

#[test]
fn bench_reports_times_and_memory() {
    let f = fixture();
    let mut b = backend(&f.dir, 2);
    let r = zambac_runtime::bench::run(&mut b, 6, 4, 7).unwrap();
    assert!(r.prefill_s > 0.0 && r.ttft_s > 0.0 && r.decode_tok_per_s > 0.0);
    assert!(r.peak_rss_bytes > 0);
    let json = serde_json::to_value(&r).unwrap();
    for key in ["prefill_s", "decode_tok_per_s", "peak_rss_bytes"] {
        assert!(json.get(key).is_some(), "{key}");
    }
}
