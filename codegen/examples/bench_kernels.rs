//! Times the generated host kernels that decide decode and prefill speed, next to this
//! machine's memory bandwidth measured in the same run.
//!
//! ```text
//! cargo run --release -p zambac-codegen --example bench_kernels
//! ```
//!
//! - bandwidth: a plain Rust streaming read (sum of a 512 MiB buffer), 1 and 2 threads;
//! - Gemv (f32 and bf16 weights, 16384 × 4096, far larger than the caches): GB/s of weights
//!   streamed, 1 thread and the grid split across 2 threads as the runtime does;
//! - Mamba2Scan at Zamba2-1.2B prefill sizes (T = 512, 64 heads × 64 × 64 state): GFLOP/s,
//!   counting 5 flops per state element per token;
//! - compile time of a realistic set of kernels for the host and for sm_90.
//!
//! Every figure is the best of several repetitions.

use libloading::Library;
use std::time::{Duration, Instant};
use zambac_codegen::toolchain;
use zambac_codegen::{GpuTarget, HostTarget, compile_gpu, compile_host};
use zambac_engine::Elem;
use zambac_engine::{ActKind, EpilogueOp, Kernel, KernelKind};

type Entry = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64);

/// Rounds of the bandwidth-bound measurements; each round times every contender once, so
/// that the machine's noise (a VM shares its memory bandwidth) hits them alike, and each
/// contender's best round is reported.
const ROUNDS: usize = 24;

fn time(run: impl FnOnce()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
}

/// Sums `data` as u32 words: integer adds vectorise freely, so the loop is memory-bound.
/// Compiled for AVX2 (checked at run time) so the baseline is not held back by SSE2.
#[target_feature(enable = "avx2")]
fn stream_avx2(data: &[u32]) -> u32 {
    let mut lanes = [0u32; 32];
    for chunk in data.chunks_exact(32) {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(*value);
        }
    }
    lanes.iter().fold(0, |a, b| a.wrapping_add(*b))
}

fn stream(data: &[u32]) -> u32 {
    assert!(is_x86_feature_detected!("avx2"), "the benchmark needs AVX2");
    // SAFETY: AVX2 is present (checked above).
    unsafe { stream_avx2(data) }
}

/// One streaming read of `data` split across `threads`.
fn read(data: &[u32], threads: usize) -> Duration {
    let chunk = data.len().div_ceil(threads);
    time(|| {
        std::thread::scope(|scope| {
            for part in data.chunks(chunk) {
                scope.spawn(move || std::hint::black_box(stream(part)));
            }
        });
    })
}

struct Lib {
    library: Library,
    _directory: tempfile::TempDir,
}

impl Lib {
    fn build(kernels: &[Kernel]) -> Lib {
        let compiled =
            compile_host(kernels, &HostTarget::native(), None, None).expect("compile_host");
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("host.so");
        std::fs::write(&path, compiled.bytes).expect("write host.so");
        // SAFETY: a library we just generated.
        let library = unsafe { Library::new(&path) }.expect("dlopen");
        Lib {
            library,
            _directory: directory,
        }
    }

    fn entry(&self, symbol: &str) -> Entry {
        // SAFETY: every `zk_` symbol has the `Entry` signature.
        unsafe {
            *self
                .library
                .get::<Entry>(format!("zk_{symbol}").as_bytes())
                .expect("symbol")
        }
    }
}

/// Raw views that may be shared by the threads of one launch (they write disjoint rows).
#[derive(Clone, Copy)]
struct Views<'a>(&'a [*mut u8]);
// SAFETY: the threads of a launch write disjoint grid indices of these buffers.
unsafe impl Send for Views<'_> {}
unsafe impl Sync for Views<'_> {}

/// Runs `entry` over `[0, grid)` split evenly across `threads`: the first range on this
/// thread, the others on scoped threads (one spawn per extra thread, ~20 µs).
fn launch(entry: Entry, views: &[*mut u8], ints: &[i64], grid: usize, threads: usize) {
    let views = Views(views);
    let chunk = grid.div_ceil(threads);
    let run = move |begin: usize| {
        let views = views;
        let end = (begin + chunk).min(grid);
        // SAFETY: views sized for the kernel; ranges are disjoint.
        unsafe { entry(views.0.as_ptr(), ints.as_ptr(), begin as i64, end as i64) }
    };
    std::thread::scope(|scope| {
        for begin in (chunk..grid).step_by(chunk) {
            scope.spawn(move || run(begin));
        }
        run(0);
    });
}

/// A Gemv kernel with its buffers, ready to launch.
struct Gemv {
    lib: Lib,
    weights: Vec<u32>,
    x: Vec<f32>,
    y: Vec<f32>,
    rows: usize,
}

impl Gemv {
    const ROWS: usize = 16384;
    const K: usize = 4096;

    fn new(elem: Elem) -> Gemv {
        let kernel = Kernel {
            symbol: "gemv".into(),
            kind: KernelKind::Gemv {
                k: Self::K,
                rows: vec![Self::ROWS],
                elem,
                accumulate: false,
                row_stride: None,
            },
        };
        let bytes = Self::ROWS * Self::K * if elem == Elem::F32 { 4 } else { 2 };
        Gemv {
            lib: Lib::build(&[kernel]),
            // 1.0 in bf16 pairs and a small normal f32: no subnormals, no NaNs.
            weights: vec![0x3f80_3f80; bytes / 4],
            x: vec![0.5; Self::K],
            y: vec![0.0; Self::ROWS],
            rows: Self::ROWS,
        }
    }

    fn bytes(&self) -> usize {
        self.weights.len() * 4
    }

    fn run(&mut self, threads: usize) -> Duration {
        let views = [
            self.x.as_mut_ptr().cast(),
            self.weights.as_mut_ptr().cast(),
            self.y.as_mut_ptr().cast(),
        ];
        let entry = self.lib.entry("gemv");
        let rows = self.rows;
        time(|| launch(entry, &views, &[], rows, threads))
    }
}

fn bench_scan(threads: usize) -> f64 {
    let (t, heads, p, n, groups) = (512usize, 64, 64, 64, 1);
    let di = heads * p;
    let cd = di + 2 * groups * n;
    let width = di + cd + heads;
    let kernel = Kernel {
        symbol: "scan".into(),
        kind: KernelKind::Mamba2Scan {
            width,
            heads,
            head_dim: p,
            groups,
            state: n,
            dt_min: Some(0.001),
            step: false,
            ssm: Elem::F32,
        },
    };
    let lib = Lib::build(&[kernel]);
    let mut zx = vec![-1.0f32; t * width];
    let mut xbc = vec![0.01f32; t * cd];
    let mut per_head = [
        vec![0.5f32; heads],
        vec![0.1f32; heads],
        vec![1.0f32; heads],
    ];
    let mut y = vec![0.0f32; t * di];
    let mut state = vec![0.0f32; heads * p * n];
    let [dt_bias, a_log, d] = &mut per_head;
    let views = [
        zx.as_mut_ptr().cast(),
        xbc.as_mut_ptr().cast(),
        dt_bias.as_mut_ptr().cast(),
        a_log.as_mut_ptr().cast(),
        d.as_mut_ptr().cast(),
        y.as_mut_ptr().cast(),
        state.as_mut_ptr().cast(),
    ];
    let entry = lib.entry("scan");
    let best = (0..5)
        .map(|_| time(|| launch(entry, &views, &[t as i64], heads, threads)))
        .min()
        .unwrap_or_default();
    (5 * t * heads * p * n) as f64 / best.as_secs_f64() / 1e9
}

/// The kernels of one Zamba2-1.2B-sized decode step (a representative set, not a program).
fn decode_kernels() -> Vec<Kernel> {
    let (h, di, heads, n) = (2048, 4096, 64, 64);
    let cd = di + 2 * n;
    let width = di + cd + heads;
    let kinds = vec![
        KernelKind::Embedding {
            hidden: h,
            elem: Elem::Bf16,
        },
        KernelKind::RmsNorm {
            d: h,
            groups: 1,
            eps: 1e-5,
        },
        KernelKind::AddRmsNorm { d: h, eps: 1e-5 },
        KernelKind::ConcatRmsNorm {
            da: h,
            db: h,
            eps: 1e-5,
        },
        KernelKind::Gemv {
            k: h,
            rows: vec![width],
            elem: Elem::Bf16,
            accumulate: false,
            row_stride: None,
        },
        KernelKind::Gemv {
            k: 2 * h,
            rows: vec![2 * h, 2 * h, 2 * h],
            elem: Elem::Bf16,
            accumulate: false,
            row_stride: None,
        },
        KernelKind::Gemv {
            k: di,
            rows: vec![h],
            elem: Elem::Bf16,
            accumulate: true,
            row_stride: None,
        },
        KernelKind::Gemv {
            k: h,
            rows: vec![32000],
            elem: Elem::Bf16,
            accumulate: false,
            row_stride: None,
        },
        KernelKind::Epilogue {
            n: 2 * h,
            bias: false,
            op: EpilogueOp::Rope {
                heads: 32,
                head_dim: 128,
                theta: 10000.0,
                scaling: None,
            },
        },
        KernelKind::Epilogue {
            n: 16384,
            bias: false,
            op: EpilogueOp::Gate(ActKind::Gelu),
        },
        KernelKind::KvWrite {
            heads: 32,
            head_dim: 128,
            cache: Elem::F32,
        },
        KernelKind::AttentionDecode {
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
            scale: 0.125,
            kv: Elem::F32,
            splits: 8,
        },
        KernelKind::AttentionCombine {
            heads: 32,
            head_dim: 128,
            splits: 8,
        },
        KernelKind::AttentionPrefill {
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
            scale: 0.125,
            kv: Elem::F32,
            products: Elem::F32,
        },
        KernelKind::Mamba2Conv {
            width,
            di,
            cd,
            k: 4,
            step: true,
        },
        KernelKind::Mamba2Conv {
            width,
            di,
            cd,
            k: 4,
            step: false,
        },
        KernelKind::Mamba2Scan {
            width,
            heads,
            head_dim: 64,
            groups: 1,
            state: n,
            dt_min: None,
            step: true,
            ssm: Elem::F32,
        },
        KernelKind::Mamba2Scan {
            width,
            heads,
            head_dim: 64,
            groups: 1,
            state: n,
            dt_min: Some(0.001),
            step: false,
            ssm: Elem::F32,
        },
        KernelKind::Mamba2GateNorm {
            width,
            di,
            groups: 1,
            eps: 1e-5,
            conv_shift: None,
        },
        KernelKind::Binary {
            op: zambac_engine::BinOp::Add,
            n: h,
            b_rows: true,
        },
        KernelKind::Epilogue {
            n: 8192,
            bias: true,
            op: EpilogueOp::Act(ActKind::Silu),
        },
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Kernel {
            symbol: format!("k{i}"),
            kind,
        })
        .collect()
}

fn gb_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e9
}

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {threads} hardware threads");
    let data: Vec<u32> = (0..(128u32 << 20)).collect();
    let mut gemvs = [Gemv::new(Elem::F32), Gemv::new(Elem::Bf16)];
    // best[contender][threads - 1]: read, Gemv f32, Gemv bf16.
    let mut best = [[Duration::MAX; 2]; 3];
    for _ in 0..ROUNDS {
        for t in 1..=2 {
            best[0][t - 1] = best[0][t - 1].min(read(&data, t));
            for (gemv, slot) in gemvs.iter_mut().zip(&mut best[1..]) {
                slot[t - 1] = slot[t - 1].min(gemv.run(t));
            }
        }
    }
    let read_bytes = data.len() * 4;
    let read_rate = [
        gb_per_s(read_bytes, best[0][0]),
        gb_per_s(read_bytes, best[0][1]),
    ];
    println!(
        "plain Rust streaming read (512 MiB): {:6.1} GB/s (1 thread), {:6.1} GB/s (2 threads)",
        read_rate[0], read_rate[1]
    );
    for (gemv, times) in gemvs.iter().zip(&best[1..]) {
        let rate = [
            gb_per_s(gemv.bytes(), times[0]),
            gb_per_s(gemv.bytes(), times[1]),
        ];
        println!(
            "Gemv {} 16384x4096 ({} MiB): {:6.1} GB/s (1 thread, {:3.0}% of read), {:6.1} GB/s (2 threads, {:3.0}% of read), {:.2} ms",
            if gemv.bytes() == Gemv::ROWS * Gemv::K * 4 {
                " f32"
            } else {
                "bf16"
            },
            gemv.bytes() >> 20,
            rate[0],
            100.0 * rate[0] / read_rate[0],
            rate[1],
            100.0 * rate[1] / read_rate[1],
            times[1].as_secs_f64() * 1e3,
        );
    }
    println!(
        "bf16 vs f32 Gemv time, 2 threads: {:.2}x faster",
        best[1][1].as_secs_f64() / best[2][1].as_secs_f64()
    );
    let (one, two) = (bench_scan(1), bench_scan(2));
    println!(
        "Mamba2Scan T=512 64x64x64: {one:6.1} GFLOP/s (1 thread), {two:6.1} GFLOP/s (2 threads)"
    );
    let kernels = decode_kernels();
    let started = Instant::now();
    compile_host(&kernels, &HostTarget::native(), None, None).expect("compile_host");
    let host = started.elapsed();
    let started = Instant::now();
    let gpu = compile_gpu(&kernels, &GpuTarget::sm_90(toolchain::libdevice()), None);
    let gpu_time = started.elapsed();
    let ptxas = match &gpu {
        Ok(module) if module.ptxas.is_some() => "ptxas: 0 spills",
        Ok(_) => "ptxas not found",
        Err(_) => "failed",
    };
    println!(
        "compile {} kernels: host {:.2} s, sm_90 {:.2} s ({ptxas})",
        kernels.len(),
        host.as_secs_f64(),
        gpu_time.as_secs_f64()
    );
    if let Err(error) = gpu {
        println!("GPU compile error: {error}");
    }
}
