//! `explore --measure`: every valid variant built into a CPU engine (random weights, a fixed
//! seed, the compile cache shared across variants) and measured by the runtime in a process
//! of its own — so each peak RSS is that variant's — beside estimates computed from the same
//! compiled graphs the engine runs (the bytes a decode step reads and the FLOPs of the
//! measured prefill, after every pass).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use zambac_frontend::ModelSpec;
use zambac_ir::Bindings;
use zambac_ir::cost::{H100_BANDWIDTH, H100_BF16_FLOPS, Report, graph_flops};

use super::{Outcome, Variant};
use crate::build_cmd::{BuildArgs, compile_input};
use crate::error::{CliError, CliResult};
use crate::model::{Input, WeightSource};
use crate::pass_args::PassArgs;

/// How variants are measured.
pub struct Options {
    /// The description the variants come from (its directory is searched for a tokenizer,
    /// as by `zambac build`).
    pub input: PathBuf,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// The context the KV cache and state are sized for.
    pub context: usize,
    /// Sequences decoded together.
    pub batch: usize,
    pub seed: u64,
    pub no_cache: bool,
}

/// What one variant measured, beside the estimates from its compiled graphs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Measured {
    /// Seconds to build the engine (compile, write random weights).
    pub build_s: f64,
    pub kernels: usize,
    pub kernels_from_cache: usize,
    /// Prefill of `prompt_len` tokens (the runtime's median of 3).
    pub prefill_s: f64,
    /// Tokens decoded per second, all `--batch` sequences' counted.
    pub decode_tok_per_s: f64,
    /// The benchmark process's peak resident memory.
    pub peak_rss_bytes: u64,
    /// KV cache and recurrent state the engine allocates for the batch's sequences at the
    /// context.
    pub kv_and_state_bytes: u64,
    /// The estimates' inputs and results, from the graphs the engine was built from.
    pub estimate: Estimate,
}

/// Roofline estimates from the compiled graphs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Estimate {
    /// KV cache + state of the batch's sequences at the context.
    pub kv_and_state_bytes: u64,
    /// Bytes one decode step of the batch moves (weights read once, states read and
    /// written, KV read).
    pub decode_bytes_per_token: f64,
    /// FLOPs of the measured prefill.
    pub prefill_flops: f64,
    pub h100_decode_tok_per_s: f64,
    pub h100_prefill_s: f64,
}

/// Measures every valid variant in place (`specs[i]` is variant `i`'s model); a variant
/// that fails to build or run gets its reason, and the sweep goes on.
pub fn all(
    variants: &mut [Variant],
    specs: &[Option<&ModelSpec>],
    opts: &Options,
) -> CliResult<()> {
    let work = tempfile::tempdir().map_err(|e| CliError::Internal(e.into()))?;
    let bar = ProgressBar::new(variants.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} variants ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    for (i, (v, spec)) in variants.iter_mut().zip(specs).enumerate() {
        bar.set_message(format!("variant {}", i + 1));
        if let (Outcome::Costed { measured, .. }, Some(spec)) = (&mut v.outcome, spec) {
            let dir = work.path().join(format!("variant-{i}.engine"));
            let result = one(spec, opts, &dir, &bar).map_err(|e| e.to_string());
            *measured = Some(result);
            let _ = std::fs::remove_dir_all(&dir);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Builds and measures one variant.
fn one(spec: &ModelSpec, opts: &Options, dir: &Path, bar: &ProgressBar) -> CliResult<Measured> {
    let args = BuildArgs {
        input: opts.input.clone(),
        output: Some(dir.to_path_buf()),
        target: "cpu".into(),
        host_schedule: "host".into(),
        mamba2_prefill: "auto".into(),
        mamba2_decode: "auto".into(),
        emit: "engine".into(),
        weights: None,
        dtype: None,
        kv_dtype: "f32".into(),
        attention_products: "f32".into(),
        state_dtype: "f32".into(),
        context: opts.context,
        dt_clamp: None,
        hf4_long_context: false,
        check: false,
        json: false,
        cpu: None,
        cpu_features: None,
        no_cache: opts.no_cache,
        passes: PassArgs::default(),
    };
    let input = Input {
        spec: spec.clone(),
        weights: WeightSource::Random(opts.seed),
    };
    bar.set_message("building");
    let started = Instant::now();
    let compiled = compile_input(input, &args)?;
    let (kernels_from_cache, _) = crate::engine_out::write(&compiled, &args, dir)?;
    let build_s = started.elapsed().as_secs_f64();
    let estimate = estimate(spec, &compiled.module, opts);
    bar.set_message("measuring");
    let report = bench(dir, opts)?;
    let field = |k: &str| {
        report
            .get(k)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| {
                CliError::Internal(anyhow::anyhow!("the benchmark's report has no `{k}`"))
            })
    };
    Ok(Measured {
        build_s,
        kernels: compiled.lowered.kernels.len(),
        kernels_from_cache,
        prefill_s: field("prefill_s")?,
        decode_tok_per_s: field("decode_tok_per_s")?,
        peak_rss_bytes: field("peak_rss_bytes")? as u64,
        kv_and_state_bytes: allocated_state(dir, opts.context)? * opts.batch as u64,
        estimate,
    })
}

/// Estimates from the optimised module the engine was built from.
fn estimate(spec: &ModelSpec, module: &zambac_ir::Module, opts: &Options) -> Estimate {
    let mut report = Report::new(spec, module, &[opts.context]);
    report.scale_sequences(opts.batch);
    let (kv_cache_bytes, decode_bytes_per_token) = report
        .contexts
        .first()
        .map_or((0, 0.0), |c| (c.kv_cache_bytes, c.decode_bytes_per_token));
    let prefill_flops = module.graph("prefill").map_or(0.0, |g| {
        graph_flops(
            g,
            &Bindings {
                t: opts.prompt_len,
                c: opts.prompt_len + opts.new_tokens.max(1),
            },
        )
    });
    Estimate {
        kv_and_state_bytes: kv_cache_bytes + report.recurrent_state_bytes,
        decode_bytes_per_token,
        prefill_flops,
        h100_decode_tok_per_s: opts.batch as f64 * H100_BANDWIDTH / decode_bytes_per_token.max(1.0),
        h100_prefill_s: prefill_flops / H100_BF16_FLOPS,
    }
}

/// The runtime's benchmark of the engine, in a process of its own: `zambac-run` beside this
/// binary, else this binary's own `bench` (the same code).
fn bench(dir: &Path, opts: &Options) -> CliResult<serde_json::Value> {
    let me = std::env::current_exe().map_err(|e| CliError::Internal(e.into()))?;
    let runtime = me.with_file_name(format!("zambac-run{}", std::env::consts::EXE_SUFFIX));
    let program = if runtime.is_file() { runtime } else { me };
    let out = Command::new(&program)
        .arg("bench")
        .arg(dir)
        .args([
            "--prompt-len",
            &opts.prompt_len.to_string(),
            "--new-tokens",
            &opts.new_tokens.to_string(),
            "--batch",
            &opts.batch.to_string(),
            "--json",
        ])
        .output()
        .map_err(|e| CliError::Internal(anyhow::anyhow!("running {}: {e}", program.display())))?;
    if !out.status.success() {
        return Err(CliError::Internal(anyhow::anyhow!(
            "the benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| CliError::Internal(anyhow::anyhow!("the benchmark's report: {e}")))
}

/// Bytes of the state the engine's layout allocates for one sequence at `context` (every
/// state tensor is f32).
fn allocated_state(dir: &Path, context: usize) -> CliResult<u64> {
    let engine = zambac_engine::Engine::open(dir)?;
    let mut total = 0u64;
    for s in &engine.manifest().model.state {
        let dims = s.dims(context).ok_or_else(|| {
            CliError::Internal(anyhow::anyhow!("state `{}` at context {context}", s.role))
        })?;
        total += 4 * dims.iter().map(|&d| d as u64).product::<u64>();
    }
    Ok(total)
}
