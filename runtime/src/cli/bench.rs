//! `bench`: prefill time, time to first token, decode tokens/s and peak RSS of an engine
//! on the cpu backend, with a per-kernel profile on request.

use std::path::PathBuf;

use crate::bench::{self, BenchReport, human_bytes as bytes};
use crate::cpu::machine::Machine;
use crate::cpu::{CpuBackend, ProfileRow};
use crate::cuda::CudaBackend;
use crate::error::RuntimeError;
use crate::session::Backend;

/// Options of `bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// An engine directory (from `zambac build`).
    pub engine: PathBuf,
    /// Prompt length: prefill computes the last position's logits, as a generating user
    /// pays it.
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Sequences decoded together: each gets a random prompt of `--prompt-len` tokens, then
    /// every decode step advances all of them at once (the weights read once per step);
    /// `decode_tok_per_s` counts the tokens of all of them.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed of the random prompt.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also time every kernel: one more prefill and `--new-tokens` more decode steps run
    /// with a clock around each step, and a table per phase shows where the time goes (each
    /// generated kernel, and the library's matrix products by shape, `gemm MxNxK`).
    #[arg(long)]
    pub profile: bool,
    /// Timed prefills after a warm-up (the median is reported); 0 times only the
    /// generating run's prefill, for prompts so long that one is enough.
    #[arg(long, default_value_t = 3)]
    pub prefill_runs: usize,
    /// Prefill each prompt in chunks of this many tokens, each continuing the state the
    /// one before left: the activations then need room for one chunk only.
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Which backend executes the engine: `cpu` (its compiled host code) or `cuda` (its PTX
    /// on an NVIDIA GPU, matrix products by cuBLAS).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub backend: String,
    /// With `--backend cuda`: run each decode step (batched steps too) as one captured CUDA
    /// graph (`on`) or launch by launch (`off`).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub cuda_graphs: String,
    /// Products with bf16 weights: `on` rounds the activations to bf16 for AVX-512 BF16
    /// products (oneDNN for 64 rows or more, zambac's `vdpbf16ps` kernel for fewer and for
    /// decode, alone or batched alike), `off` keeps them f32 (exact, the same on every CPU),
    /// `auto` is `on` where the CPU and oneDNN allow it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub bf16_products: String,
    /// Skip hashing the weights when the engine is opened (their sizes, `manifest.json` and
    /// `host.so` are still checked): a faster start for large engines on trusted storage.
    #[arg(long)]
    pub fast_load: bool,
}

/// Per-kernel times of one profiled prefill and of the profiled decode steps.
#[derive(serde::Serialize)]
struct Profile {
    prefill: Vec<ProfileRow>,
    decode: Vec<ProfileRow>,
    /// Wall time of the profiled prefill (to its first token) and of all profiled decode
    /// steps: what the kernel times leave out is launch bookkeeping and buffer setup.
    prefill_wall_s: f64,
    decode_wall_s: f64,
}

/// The JSON object: the report, and the profile when asked for.
#[derive(serde::Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    threads: usize,
    gemm_library: String,
    /// Whether products with bf16 weights rounded activations to bf16.
    bf16_products: bool,
    /// The CPU: its model and the extensions that decide which kernels run.
    cpu: &'a Machine,
    host_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
}

/// Benchmarks the engine `args.engine` and prints the report.
pub fn bench(args: &BenchArgs) -> Result<(), RuntimeError> {
    if !args.engine.join(zambac_engine::MANIFEST_FILE).is_file() {
        return Err(RuntimeError::Input(format!(
            "`{}` is not an engine directory (no manifest.json); build one with `zambac build`",
            args.engine.display()
        )));
    }
    if args.prompt_len == 0 {
        return Err(RuntimeError::Input(
            "--prompt-len must be at least 1".into(),
        ));
    }
    if args.batch == 0 {
        return Err(RuntimeError::Input("--batch must be at least 1".into()));
    }
    if args.prefill_chunk == Some(0) {
        return Err(RuntimeError::Input(
            "--prefill-chunk must be at least 1".into(),
        ));
    }
    if args.backend == "cuda" {
        return bench_cuda(args);
    }
    let mut backend = CpuBackend::new(
        super::open_engine(&args.engine, args.fast_load)?,
        args.threads,
    )?;
    super::set_bf16_products(&mut backend, &args.bf16_products)?;
    let capacity = args.prompt_len.saturating_add(args.new_tokens.max(1));
    backend
        .check_batch_fits(args.batch, capacity)
        .map_err(|e| RuntimeError::Input(format!("--batch {}: {e}", args.batch)))?;
    let r = bench::run(
        &mut backend,
        args.prompt_len,
        args.new_tokens,
        args.batch,
        args.seed,
        prefill_options(args),
    )?;
    let profile = if args.profile {
        Some(profile(&mut backend, args)?)
    } else {
        None
    };
    if args.json {
        let out = Output {
            report: &r,
            threads: backend.threads(),
            gemm_library: backend.gemm_library(),
            bf16_products: backend.bf16_products(),
            cpu: Machine::this(),
            host_code: backend.host_code(),
            profile,
        };
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| RuntimeError::Internal(format!("cannot print the report: {e}")))?;
        println!("{text}");
    } else {
        println!("engine        {}", args.engine.display());
        for (label, text) in backend.describe() {
            println!("{label:<13} {text}");
        }
        println!(
            "prefill       {:.4} s for {} tokens ({:.1} tok/s)",
            r.prefill_s, r.prompt_len, r.prefill_tok_per_s
        );
        println!("first token   {:.4} s", r.ttft_s);
        if r.batch == 1 {
            println!(
                "decode        {:.2} tok/s ({:.2} ms/token over {} tokens)",
                r.decode_tok_per_s,
                1e3 / r.decode_tok_per_s,
                r.new_tokens
            );
        } else {
            println!(
                "decode        {:.2} tok/s for {} sequences ({:.2} ms/step over {} steps)",
                r.decode_tok_per_s,
                r.batch,
                1e3 * r.batch as f64 / r.decode_tok_per_s,
                r.new_tokens
            );
        }
        println!("peak RSS      {}", bytes(r.peak_rss_bytes));
        if let Some(p) = profile {
            print_profile(&p, &r);
        }
    }
    Ok(())
}

/// The JSON object of a GPU run: the report and the GPU.
#[derive(serde::Serialize)]
struct CudaOutput<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    backend: &'static str,
    gpu: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Profile>,
}

/// `bench --backend cuda`: the same measurements with the engine on the GPU. Each call
/// returns its logits to the host, so the host's clock times finished GPU work.
fn bench_cuda(args: &BenchArgs) -> Result<(), RuntimeError> {
    let mut backend = CudaBackend::new(super::open_engine(&args.engine, args.fast_load)?, 0)?;
    backend.set_graphs(args.cuda_graphs == "on");
    let r = bench::run(
        &mut backend,
        args.prompt_len,
        args.new_tokens,
        args.batch,
        args.seed,
        prefill_options(args),
    )?;
    let profile = if args.profile {
        Some(profile(&mut backend, args)?)
    } else {
        None
    };
    if args.json {
        let out = CudaOutput {
            report: &r,
            backend: "cuda",
            gpu: backend.device_name(),
            profile,
        };
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| RuntimeError::Internal(format!("cannot print the report: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    println!("engine        {}", args.engine.display());
    for (label, text) in backend.describe() {
        println!("{label:<13} {text}");
    }
    println!(
        "prefill       {:.4} s for {} tokens ({:.1} tok/s)",
        r.prefill_s, r.prompt_len, r.prefill_tok_per_s
    );
    println!("first token   {:.4} s", r.ttft_s);
    println!(
        "decode        {:.2} tok/s over {} steps of {} sequence(s)",
        r.decode_tok_per_s, r.new_tokens, r.batch
    );
    if let Some(p) = profile {
        print_profile(&p, &r);
    }
    Ok(())
}

/// The per-kernel tables of a profiled run.
fn print_profile(p: &Profile, r: &BenchReport) {
    print_table(
        &format!("prefill of {} tokens", r.prompt_len),
        &p.prefill,
        (1, p.prefill_wall_s),
    );
    if r.new_tokens > 0 {
        print_table(
            &if r.batch == 1 {
                format!("decode, per token (mean of {})", r.new_tokens)
            } else {
                format!(
                    "decode, per step of {} sequences (mean of {})",
                    r.batch, r.new_tokens
                )
            },
            &p.decode,
            (r.new_tokens, p.decode_wall_s),
        );
    }
}

fn prefill_options(args: &BenchArgs) -> bench::Prefill {
    bench::Prefill {
        runs: args.prefill_runs,
        chunk: args.prefill_chunk,
    }
}

/// Runs the benchmark's prompt once more and decodes `--new-tokens` greedily (for every
/// sequence of `--batch`), with every step timed; with a batch, the prefill profile covers
/// all the prompts and a decode step's kernels all the sequences.
/// A backend that can time each step of its programs.
trait Profiled: Backend {
    fn profiling(&mut self, on: bool);
    fn profile_rows(&mut self) -> Vec<ProfileRow>;
}

impl Profiled for CpuBackend {
    fn profiling(&mut self, on: bool) {
        self.set_profiling(on);
    }
    fn profile_rows(&mut self) -> Vec<ProfileRow> {
        self.take_profile()
    }
}

impl Profiled for CudaBackend {
    fn profiling(&mut self, on: bool) {
        self.set_profiling(on);
    }
    fn profile_rows(&mut self) -> Vec<ProfileRow> {
        self.take_profile()
    }
}

fn profile<B: Profiled>(backend: &mut B, args: &BenchArgs) -> Result<Profile, RuntimeError> {
    let prompt = bench::random_prompt(backend.vocab_size(), args.prompt_len, args.seed);
    backend.profiling(true);
    let mut prefill = Vec::new();
    let wall = if args.batch == 1 {
        bench::prefill_then_decode(
            backend,
            &prompt,
            args.new_tokens,
            prefill_options(args),
            |b| {
                prefill = b.profile_rows();
            },
        )?
    } else {
        let prompts =
            bench::random_prompts(backend.vocab_size(), args.prompt_len, args.batch, args.seed);
        bench::prefill_then_decode_batch(
            backend,
            &prompts,
            args.new_tokens,
            prefill_options(args),
            |b| {
                prefill = b.profile_rows();
            },
        )?
    };
    let decode = backend.profile_rows();
    backend.profiling(false);
    Ok(Profile {
        prefill,
        decode,
        prefill_wall_s: wall.ttft_s,
        decode_wall_s: wall.decode_s,
    })
}

/// One phase's rows: kind, symbol, launches and time per `per` runs, share of the phase;
/// `wall` is the phase's wall time over all `per` runs.
fn print_table(title: &str, rows: &[ProfileRow], (per, wall): (usize, f64)) {
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    println!(
        "\n{title}: {:.3} ms in kernels of {:.3} ms",
        total * 1e3 / per as f64,
        wall * 1e3 / per as f64
    );
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(6);
    println!(
        "  {:<16} {:<width$} {:>8} {:>10} {:>6} {:>9}",
        "kind", "kernel", "calls", "ms", "share", "GFLOP/s"
    );
    for r in rows {
        let rate = r.gflop_per_s.map_or(String::new(), |g| format!("{g:.1}"));
        println!(
            "  {:<16} {:<width$} {:>8} {:>10.3} {:>5.1}% {:>9}",
            r.kind,
            r.name,
            r.calls / per as u64,
            r.seconds * 1e3 / per as f64,
            100.0 * r.seconds / total.max(f64::MIN_POSITIVE),
            rate
        );
    }
}
