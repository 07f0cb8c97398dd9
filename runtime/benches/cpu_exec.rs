//! Costs of the cpu backend's machinery, apart from any generated kernel: the overhead of
//! one launch (inline and split across the pool) and GEMM throughput with f32 and bf16
//! weights, at the shape of a 1–3B model's MLP over a 512-, 64- and 1-token prompt.
//!
//! `cargo bench -p zambac-runtime --bench cpu_exec` (prints a table; no assertions).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use zambac_engine::{
    Buffer, Companions, Elem, Engine, EngineWriter, EpilogueOp, Expr, Kernel, KernelKind,
    ManifestParts, Matrix, ModelInfo, Program, ProgramName, Step, View,
};
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::session::Backend;

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let host = common::build_host_so(tmp.path(), "");
    println!("machine: {} threads available", threads_available());
    engine_io(tmp.path(), &host);
    launch_overhead(tmp.path(), &host);
    // 32 and 16 rows: a batched decode step (bf16 weights: the few-row kernel).
    for m in [512, 64, 32, 16, 1] {
        for elem in [Elem::F32, Elem::Bf16] {
            gemm_throughput(tmp.path(), &host, elem, m, 2048, 8192);
        }
    }
    // A narrower model's batched decode step (the Zamba2-100M's in_proj).
    gemm_throughput(tmp.path(), &host, Elem::Bf16, 16, 768, 3224);
}

fn threads_available() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Program `name` of the benchmark engines: `steps` and nothing else (no state; the logits
/// are never written).
fn program(name: ProgramName, steps: Vec<Step>, slots: Vec<Vec<Expr>>) -> Program {
    let rows = match name {
        ProgramName::Prefill => Expr::T,
        _ => Expr::k(1),
    };
    Program {
        name,
        steps,
        slots,
        scratch: vec![],
        outputs: vec![("logits".into(), vec![rows, Expr::k(common::V as i64)])],
    }
}

/// The toy's dimensions without its state; `weight_elem` as its weights are stored.
fn model(weight_elem: Elem) -> ModelInfo {
    ModelInfo {
        state: vec![],
        weight_elem,
        ..common::model()
    }
}

fn companions(host: &[u8]) -> Companions<'_> {
    Companions {
        host,
        gpu: None,
        tokenizer: None,
    }
}

fn engine(
    dir: &Path,
    host: &[u8],
    weights: &[(&str, Vec<usize>, Vec<f32>, Elem)],
    prefill: Program,
) -> Engine {
    let decode = program(
        ProgramName::Decode,
        prefill.steps.clone(),
        prefill.slots.clone(),
    );
    let mut w = EngineWriter::create(dir).unwrap();
    for (name, shape, data, elem) in weights {
        w.add_weight(name, shape, data, *elem).unwrap();
    }
    // An epilogue over rows of one element, whose C body does nothing.
    let kernels = vec![Kernel {
        symbol: "empty".into(),
        kind: KernelKind::Epilogue {
            n: 1,
            bias: false,
            op: EpilogueOp::None,
        },
    }];
    let elem = weights.first().map_or(Elem::F32, |w| w.3);
    let parts = ManifestParts {
        zambac_version: "bench".into(),
        model: model(elem),
        source: serde_json::Value::Null,
        kernels,
        programs: vec![prefill, decode],
        host_target: Some(zambac_engine::TargetCpu {
            cpu: "x86-64".into(),
            features: "+sse,+sse2".into(),
        }),
        build: serde_json::Value::Null,
    };
    w.finish(parts, companions(host)).unwrap();
    Engine::open(dir).unwrap()
}

/// Seconds per call of `prefill` on one token, best of `reps` after a warm-up.
fn time_prefill(b: &mut CpuBackend, tokens: &[i64], reps: usize) -> f64 {
    b.prefill(tokens, tokens.len()).unwrap();
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            b.prefill(tokens, tokens.len()).unwrap();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Writing (with f32 → bf16 rounding) and opening (checksumming) 1 GiB of f32 weights.
fn engine_io(dir: &Path, host: &[u8]) {
    let data: Vec<f32> = (0..1usize << 26).map(|i| i as f32 * 1e-3).collect();
    for elem in [Elem::F32, Elem::Bf16] {
        let out = dir.join(format!("io-{}", elem.name()));
        let t0 = Instant::now();
        let mut w = EngineWriter::create(&out).unwrap();
        for i in 0..4 {
            w.add_weight(&format!("w{i}"), &[data.len()], &data, elem)
                .unwrap();
        }
        let bytes = w.bytes_written() as f64;
        let parts = ManifestParts {
            zambac_version: "bench".into(),
            model: model(elem),
            source: serde_json::Value::Null,
            kernels: vec![],
            programs: vec![
                program(ProgramName::Prefill, vec![], vec![]),
                program(ProgramName::Decode, vec![], vec![]),
            ],
            host_target: Some(zambac_engine::TargetCpu {
                cpu: "x86-64".into(),
                features: "+sse,+sse2".into(),
            }),
            build: serde_json::Value::Null,
        };
        w.finish(parts, companions(host)).unwrap();
        let write = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        drop(Engine::open(&out).unwrap());
        let open = t0.elapsed().as_secs_f64();
        println!(
            "engine of 1 GiB f32 input stored {}: write {:.2} s ({:.0} MB/s of input), \
             open + verify {:.2} s ({:.1} GB/s of weights.bin)",
            elem.name(),
            write,
            4.0 * data.len() as f64 * 4.0 / write / 1e6,
            open,
            bytes / open / 1e9
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

fn launch_overhead(dir: &Path, host: &[u8]) {
    const LAUNCHES: usize = 20_000;
    for grid in [1, 2, 64] {
        // Views of a slot as large as the grid, as the kind's signature asks.
        let rows = View::of(Buffer::Slot(0));
        let step = Step::Launch {
            kernel: "empty".into(),
            grid: Expr::k(grid),
            views: vec![rows.clone(), rows],
            ints: vec![Expr::k(0)],
        };
        let p = program(
            ProgramName::Prefill,
            vec![step; LAUNCHES],
            vec![vec![Expr::k(grid)]],
        );
        let e = engine(&dir.join(format!("launch{grid}")), host, &[], p);
        let mut b = CpuBackend::new(e, 0).unwrap();
        let s = time_prefill(&mut b, &[0], 5);
        println!(
            "launch overhead, grid {grid:>3}, {} threads: {:.3} µs per launch",
            b.threads(),
            s / LAUNCHES as f64 * 1e6
        );
    }
}

fn gemm_throughput(dir: &Path, host: &[u8], elem: Elem, m: usize, k: usize, n: usize) {
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let mat = |view, rs: i64, cs: i64| Matrix {
        view,
        row_stride: Expr::k(rs),
        col_stride: Expr::k(cs),
    };
    // y[T, n] = x[T, k] · Wᵀ with W [n, k] row-major, as a linear layer stores it.
    let step = Step::Gemm {
        m: Expr::T,
        n: Expr::k(n as i64),
        k: Expr::k(k as i64),
        a: mat(View::of(Buffer::Slot(0)), k as i64, 1),
        b: mat(View::of(Buffer::Weight(0)), 1, k as i64),
        c: mat(View::of(Buffer::Slot(1)), n as i64, 1),
        accumulate: false,
    };
    let slots = vec![vec![Expr::T.times(k as i64)], vec![Expr::T.times(n as i64)]];
    let out = dir.join(format!("gemm-{m}-{}", elem.name()));
    let e = engine(
        &out,
        host,
        &[("w", vec![n, k], w, elem)],
        program(ProgramName::Prefill, vec![step], slots),
    );
    let mut b = CpuBackend::new(e, 0).unwrap();
    let tokens = vec![1i64; m];
    let flops = 2.0 * (m * n * k) as f64;
    // bf16 weights: widened to f32 (exact), then — where the CPU has AVX-512 BF16 — as bf16
    // products (oneDNN from 64 rows, the few-row kernel below that).
    let modes: &[(bool, &str)] = match elem {
        Elem::Bf16 => &[(false, " (widened)"), (true, " (bf16 products)")],
        _ => &[(false, "")],
    };
    for &(bf16, label) in modes {
        if b.set_bf16_products(bf16).is_err() {
            println!(
                "GEMM {m}×{k}×{n}, B {}{label}: not available here",
                elem.name()
            );
            continue;
        }
        let s = time_prefill(&mut b, &tokens, 5);
        println!(
            "GEMM {m}×{k}×{n}, B {}{label}, {} threads: {:.1} ms, {:.1} GFLOP/s",
            elem.name(),
            b.threads(),
            s * 1e3,
            flops / s / 1e9
        );
    }
}
