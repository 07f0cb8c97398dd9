//! `zambac build`: model → optimised IR → kernels and programs → generated code → engine.

use std::path::{Path, PathBuf};

use zambac_ir::{Bindings, Elem, Module};
use zambac_kernelize::{Lowered, Mamba2Lowering, Mamba2Prefill, StateElems, kernelize_with};

use crate::error::{CliError, CliResult};
use crate::fmt::{bytes, count};
use crate::model::{self, Input, WeightSource};
use crate::pass_args::{PassArgs, run_pipeline};

/// Options of `zambac build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// A model description (.toml), a Hugging Face config.json, or a checkpoint directory.
    pub input: PathBuf,
    /// Engine directory to write (default: `<model name>.engine`).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Code to generate: `cpu` (host machine code), `sm_90` (PTX for H100) or `all`.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "sm_90", "all"])]
    pub target: String,
    /// The grid schedule of the host code: `host` (blocked for CPUs), or `gpu` — the GPU
    /// kernels' schedule (lanes, warps as loops) compiled for the CPU, to check the GPU
    /// code's arithmetic on whole models without a GPU (slower).
    #[arg(long, default_value = "host", value_parser = ["host", "gpu"])]
    pub host_schedule: String,
    /// How a prefill's Mamba2 scans are lowered: `sequential` (one kernel; each head walks
    /// every token), `chunked` (three kernels over up to 32 chunks of the call, in parallel:
    /// twice the work, a longest chain of 288 steps instead of 4,096 at 4,096 tokens), or `auto`
    /// (default): chunked when the engine carries GPU code, which every backend then runs.
    #[arg(long, default_value = "auto", value_parser = ["auto", "sequential", "chunked"])]
    pub mamba2_prefill: String,
    /// How a decode step's Mamba2 conv and scan are lowered: `separate` (a conv kernel,
    /// then the scan), `fused` (one kernel; the gate norm after it shifts the conv state:
    /// one launch fewer per layer, B and C computed by every head), or `auto` (default):
    /// fused when the engine carries GPU code.
    #[arg(long, default_value = "auto", value_parser = ["auto", "separate", "fused"])]
    pub mamba2_decode: String,
    /// Weights: a checkpoint directory or `random[:SEED]` (default: the checkpoint the
    /// input is, else random with seed 0).
    #[arg(long)]
    pub weights: Option<String>,
    /// Storage type of the matrix weights: `f32` or `bf16` (default: the model's dtype).
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    /// Storage of the KV caches: `f32`, or `bf16` (half the memory and the bytes each decode
    /// step reads; every key and value rounded to bf16 when written).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub kv_dtype: String,
    /// Operands of prompt attention's two products on the CPU (q·kᵀ, then the softmax
    /// weights times v): `f32`, or `bf16` — q and the weights rounded to bf16 and multiplied
    /// with the bf16 caches in pairs by AVX-512 BF16's `vdpbf16ps`, summed in f32: about
    /// twice the products' speed on long prompts, logits within a few hundredths of the f32
    /// products'. Needs `--kv-dtype bf16`, `--target cpu` and a host CPU with `avx512bf16`.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub attention_products: String,
    /// Storage of the Mamba layers' SSM states: `f32`, or `bf16` (half the state memory and
    /// the state bytes each decode step reads and writes — what batched decode spends most on
    /// after the weights; every value rounded to bf16 when a kernel stores it, as Hugging
    /// Face keeps the state of a bf16 model and vLLM's `mamba_ssm_cache_dtype` does).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub state_dtype: String,
    /// Context length the summary reports memory for (tokens).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
    /// When Δ is clamped at time_step_min: `hf5` (prefill only; default), `always`, `none`.
    #[arg(long)]
    pub dt_clamp: Option<String>,
    /// Multiply RoPE θ by 8^(hd/(hd−2)), as transformers 4.49–4.57 did for a config with
    /// `use_long_context: true` (transformers 5, and zambac by default, do not): for a
    /// checkpoint tuned with that rescale.
    #[arg(long)]
    pub hf4_long_context: bool,
    /// Compile and report, but write no engine (and read no weights).
    #[arg(long)]
    pub check: bool,
    /// What to write: `engine`, or `ptx` — only the GPU code (`kernels.ptx` and its launch
    /// table `gpu.json`, no weights), so that the released 7B configs can be compiled and
    /// checked with ptxas on a small machine. `ptx` needs `--target sm_90`.
    #[arg(long, default_value = "engine", value_parser = ["engine", "ptx"])]
    pub emit: String,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// LLVM CPU to generate host code for (default: this machine's, e.g. `znver3`). The
    /// portable levels `x86-64`, `x86-64-v2`, `x86-64-v3` (AVX2) and `x86-64-v4` (AVX-512)
    /// imply their features; any other CPU needs `--cpu-features` too, so the engine can
    /// record what its code needs.
    #[arg(long)]
    pub cpu: Option<String>,
    /// LLVM feature string for the host CPU (default: this machine's, or the `--cpu`
    /// level's). With `+avx2`, vector `exp`/`erf`/`tanh`/`log1p` call glibc's libmvec;
    /// without it, scalar libm per lane.
    #[arg(long)]
    pub cpu_features: Option<String>,
    /// Compile every kernel, without reading or filling the compile cache
    /// (`$XDG_CACHE_HOME/zambac`, else `~/.cache/zambac`).
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub passes: PassArgs,
}

/// What a build produced, for the summary.
pub struct Compiled {
    pub input: Input,
    /// The checkpoint tensor of each parameter, by parameter name (checkpoint inputs).
    pub sources: std::collections::BTreeMap<String, String>,
    pub module: Module,
    pub lowered: Lowered,
    pub ops_before: (usize, usize),
    pub dtype: Elem,
}

pub fn run(args: &BuildArgs) -> CliResult<()> {
    if args.emit == "ptx" && args.target != "sm_90" {
        return Err(CliError::Input(format!(
            "--emit ptx writes GPU code only: add --target sm_90 (the target is `{}`)",
            args.target
        )));
    }
    let compiled = compile(args)?;
    if args.emit == "ptx" {
        return crate::engine_out::write_ptx(&compiled, args);
    }
    if args.check {
        let code = generate_code(&compiled, args)?;
        let cached = code.host.as_ref().map_or(0, |h| h.cached);
        let gpu = code.gpu.as_ref().map(GpuSummary::of);
        print_summary(&compiled, args, None, cached, gpu);
        return Ok(());
    }
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.engine", compiled.input.spec.name)));
    let (cached, gpu) = crate::engine_out::write(&compiled, args, &out)?;
    print_summary(&compiled, args, Some(&out), cached, gpu);
    Ok(())
}

/// Host code (and PTX for `--target sm_90|all`).
pub fn generate_code(c: &Compiled, args: &BuildArgs) -> CliResult<GeneratedCode> {
    let dumps = args.passes.dump_dir.as_ref().map(|d| d.join("codegen"));
    let codegen_err = |e: zambac_codegen::CodegenError| {
        CliError::Internal(anyhow::anyhow!("code generation failed: {e}"))
    };
    let host = if args.target != "sm_90" {
        let target = host_target(args)?;
        Some(
            zambac_codegen::compile_host_scheduled(
                &c.lowered.kernels,
                &target,
                if args.host_schedule == "gpu" {
                    zambac_codegen::kernels::Target::HostWithGpuSchedule
                } else {
                    zambac_codegen::kernels::Target::Host
                },
                dumps.as_deref(),
                kernel_cache(args).as_ref(),
            )
            .map_err(codegen_err)?,
        )
    } else {
        None
    };
    let gpu = if args.target != "cpu" {
        let target = zambac_codegen::GpuTarget::sm_90(zambac_codegen::toolchain::libdevice());
        Some(
            zambac_codegen::compile_gpu(&c.lowered.kernels, &target, dumps.as_deref())
                .map_err(codegen_err)?,
        )
    } else {
        None
    };
    Ok(GeneratedCode { host, gpu })
}

/// The compile cache the build uses: the user's, unless `--no-cache`.
fn kernel_cache(args: &BuildArgs) -> Option<zambac_codegen::KernelCache> {
    if args.no_cache {
        return None;
    }
    let dir = zambac_codegen::KernelCache::default_dir()?;
    Some(zambac_codegen::KernelCache::new(
        dir,
        zambac_codegen::cache::compiler_id(),
    ))
}

/// What code generation produced.
pub struct GeneratedCode {
    pub host: Option<zambac_codegen::HostLibrary>,
    pub gpu: Option<zambac_codegen::GpuModule>,
}

/// The CPU to generate host code for, with every extension its code may use spelled out
/// (the engine records them and a runtime checks them against its CPU).
pub fn host_target(args: &BuildArgs) -> CliResult<zambac_codegen::HostTarget> {
    let native = zambac_codegen::HostTarget::native();
    let features = match (&args.cpu, &args.cpu_features) {
        (_, Some(f)) => f.clone(),
        (None, None) => native.features,
        (Some(cpu), None) if *cpu == native.cpu => native.features,
        (Some(cpu), None) => psabi_features(cpu).ok_or_else(|| {
            CliError::input(format!(
                "error: --cpu {cpu}: give its extensions with --cpu-features (e.g. \
                 `+avx2,+fma`), or use a portable level: x86-64, x86-64-v2, x86-64-v3, \
                 x86-64-v4"
            ))
        })?,
    };
    Ok(zambac_codegen::HostTarget {
        cpu: args.cpu.clone().unwrap_or(native.cpu),
        features,
    })
}

/// `--attention-products bf16` needs bf16 caches, host code only (the GPU's prompt attention
/// keeps f32 products) and a host CPU with `vdpbf16ps`.
fn check_bf16_attention(args: &BuildArgs) -> CliResult<()> {
    let refuse = |why: String| {
        Err(CliError::input(format!(
            "error: --attention-products bf16 {why}"
        )))
    };
    if args.kv_dtype != "bf16" {
        return refuse(format!(
            "multiplies the caches as they are stored: add --kv-dtype bf16 (it is `{}`)",
            args.kv_dtype
        ));
    }
    if args.target != "cpu" || args.host_schedule != "host" {
        return refuse(format!(
            "is for the CPU's prompt attention: it needs --target cpu and --host-schedule host \
             (they are `{}` and `{}`)",
            args.target, args.host_schedule
        ));
    }
    let target = host_target(args)?;
    if !target.has_avx512_bf16() {
        return refuse(format!(
            "needs a host CPU with AVX-512 BF16 (`+avx512bf16`); host code is generated for \
             `{}` with `{}`",
            target.cpu, target.features
        ));
    }
    Ok(())
}

/// The extensions the x86-64 psABI levels guarantee, as an LLVM feature string.
fn psabi_features(cpu: &str) -> Option<String> {
    const V1: &str = "+sse,+sse2,+cx8,+cmov,+fxsr,+mmx";
    const V2: &str = ",+cx16,+popcnt,+sse3,+sse4.1,+sse4.2,+ssse3,+sahf";
    const V3: &str = ",+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave";
    const V4: &str = ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl";
    let levels = match cpu {
        "x86-64" => [V1, "", "", ""],
        "x86-64-v2" => [V1, V2, "", ""],
        "x86-64-v3" => [V1, V2, V3, ""],
        "x86-64-v4" => [V1, V2, V3, V4],
        _ => return None,
    };
    Some(levels.concat())
}

/// Frontend, IR, passes and kernelize.
pub fn compile(args: &BuildArgs) -> CliResult<Compiled> {
    let dt_clamp = args
        .dt_clamp
        .as_deref()
        .map(model::parse_dt_clamp)
        .transpose()?;
    let mut input = model::open(&args.input, args.weights.as_deref(), dt_clamp)?;
    if args.hf4_long_context {
        input
            .spec
            .rescale_theta_as_hf4_long_context()
            .map_err(|e| CliError::input(format!("error: --hf4-long-context: {e}")))?;
    }
    compile_input(input, args)
}

/// IR, passes and kernelize for a model already opened (a description `args.input` names,
/// or a variant of one).
pub fn compile_input(input: Input, args: &BuildArgs) -> CliResult<Compiled> {
    let dtype = engine_dtype(args.dtype.as_deref(), &input);
    let mut module = zambac_ir::build(&input.spec)?;
    let sources = match (&input.weights, args.check) {
        (WeightSource::Checkpoint(dir), false) => {
            hash_checkpoint_weights(&mut module, &input, dir)?
        }
        _ => Default::default(),
    };
    let ops_before = ops(&module);
    let bind = Bindings {
        t: args.context,
        c: args.context,
    };
    run_pipeline(&mut module, &args.passes, bind)?;
    let elem = |flag: &str| {
        if flag == "bf16" {
            Elem::Bf16
        } else {
            Elem::F32
        }
    };
    let state = StateElems {
        kv: elem(&args.kv_dtype),
        ssm: elem(&args.state_dtype),
        attention_products: elem(&args.attention_products),
    };
    if state.attention_products == Elem::Bf16 {
        check_bf16_attention(args)?;
    }
    let gpu = args.target != "cpu";
    let chosen = |flag: &str, yes: &str| if flag == "auto" { gpu } else { flag == yes };
    let mamba2 = Mamba2Lowering {
        prefill: if chosen(&args.mamba2_prefill, "chunked") {
            Mamba2Lowering::gpu().prefill
        } else {
            Mamba2Prefill::Sequential
        },
        fused_step: chosen(&args.mamba2_decode, "fused"),
    };
    let lowered = kernelize_with(&module, dtype, state, mamba2)
        .map_err(|e| CliError::input(format!("error: {e}")))?;
    Ok(Compiled {
        input,
        sources,
        module,
        lowered,
        ops_before,
        dtype,
    })
}

fn engine_dtype(flag: Option<&str>, input: &Input) -> Elem {
    match flag {
        Some("bf16") => Elem::Bf16,
        Some(_) => Elem::F32,
        None => match input.spec.dtype {
            zambac_frontend::DType::Bf16 => Elem::Bf16,
            _ => Elem::F32,
        },
    }
}

/// Checks the checkpoint against the model and records each tensor's content hash, so
/// `dedup-weights` stores identical tensors once. Returns parameter name → tensor name.
fn hash_checkpoint_weights(
    m: &mut Module,
    input: &Input,
    dir: &Path,
) -> CliResult<std::collections::BTreeMap<String, String>> {
    let ck = zambac_weights::Checkpoint::open(dir)?;
    let resolved = zambac_weights::resolve(m, &input.spec, &ck)?;
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    let mut sources = std::collections::BTreeMap::new();
    for (p, src) in m.params.iter_mut().zip(resolved.sources) {
        p.hash = ck.content_hash(&src);
        sources.insert(p.name.clone(), src);
    }
    Ok(sources)
}

fn ops(m: &Module) -> (usize, usize) {
    let n = |g: &str| m.graph(g).map_or(0, |g| g.op_count());
    (n("prefill"), n("decode"))
}

/// Bytes of the engine's weights: each parameter once, matrices in the engine dtype.
pub fn weight_bytes(c: &Compiled) -> u64 {
    c.module
        .params
        .iter()
        .zip(&c.lowered.weight_elems)
        .map(|(p, e)| (p.numel() * e.size()) as u64)
        .sum()
}

/// The numbers of the summary.
#[derive(serde::Serialize)]
struct Summary {
    model: String,
    engine: Option<String>,
    weights: String,
    params: u64,
    weight_bytes: u64,
    dtype: String,
    ops_before: [usize; 2],
    ops_after: [usize; 2],
    kernels: usize,
    /// Kernels whose host code came from the compile cache.
    kernels_cached: usize,
    gemm_calls: usize,
    /// Kernel launches of one decode step (what a GPU pays a launch for, even in a graph).
    decode_launches: usize,
    context: usize,
    peak_prefill_activation_bytes: u64,
    peak_decode_activation_bytes: u64,
    state_bytes: u64,
    /// Weight elements one decode step of this engine reads: every weight its program
    /// touches, a shared block's once per invocation, windows only their columns.
    decode_weight_elems_read: u64,
    /// The GPU code, when built for a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu: Option<GpuSummary>,
}

/// What the build summary says of the GPU code: the chip, the kernels' largest launch
/// resources, and the spills `ptxas` found (absent when it was not found).
#[derive(serde::Serialize, Clone, Debug)]
pub struct GpuSummary {
    chip: String,
    kernels: usize,
    max_threads_per_grid_index: u32,
    block_size: u32,
    max_registers: Option<u32>,
    max_shared_bytes: Option<u64>,
    spill_bytes: Option<u64>,
}

impl GpuSummary {
    pub fn of(gpu: &zambac_codegen::GpuModule) -> GpuSummary {
        let kernels = gpu.ptxas.as_ref().map(|r| r.kernels().collect::<Vec<_>>());
        GpuSummary {
            chip: gpu.chip.clone(),
            kernels: gpu.kernels.len(),
            max_threads_per_grid_index: gpu.kernels.iter().map(|k| k.lanes).max().unwrap_or(1),
            block_size: gpu.kernels.iter().map(|k| k.block_size).max().unwrap_or(0),
            max_registers: kernels
                .as_ref()
                .map(|k| k.iter().map(|f| f.registers).max().unwrap_or(0)),
            max_shared_bytes: kernels
                .as_ref()
                .map(|k| k.iter().map(|f| f.shared_bytes).max().unwrap_or(0)),
            spill_bytes: gpu.ptxas.as_ref().map(|r| r.total_spill_bytes()),
        }
    }
}

fn print_summary(
    c: &Compiled,
    args: &BuildArgs,
    engine: Option<&Path>,
    cached: usize,
    gpu: Option<GpuSummary>,
) {
    let mut s = summary(c, args, engine, cached);
    s.gpu = gpu;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return;
    }
    match engine {
        Some(dir) => println!("built {} → {}", s.model, dir.display()),
        None => println!("checked {} (no engine written)", s.model),
    }
    let rows = [
        ("weights", s.weights.clone()),
        (
            "parameters",
            format!("{} (each shared block once)", count(s.params)),
        ),
        (
            "weight bytes",
            format!(
                "{} ({}; matrices {}, other weights f32)",
                count(s.weight_bytes),
                bytes(s.weight_bytes),
                s.dtype
            ),
        ),
        (
            "ops",
            format!(
                "prefill {} → {}, decode {} → {} (after the pass pipeline)",
                s.ops_before[0], s.ops_after[0], s.ops_before[1], s.ops_after[1]
            ),
        ),
        (
            "kernels",
            format!(
                "{} generated ({} from the compile cache), {} GEMM library calls over all \
                 programs; {} launches per decode step",
                s.kernels, s.kernels_cached, s.gemm_calls, s.decode_launches
            ),
        ),
        (
            "decode reads",
            format!(
                "{} weight elements per token (a shared block's once per invocation, \
                 but for the hoisted embedding halves)",
                count(s.decode_weight_elems_read)
            ),
        ),
        (
            "peak memory",
            format!(
                "activations {} for a {}-token prefill, {} per decode step; states + KV cache {} at context {}",
                bytes(s.peak_prefill_activation_bytes),
                s.context,
                bytes(s.peak_decode_activation_bytes),
                bytes(s.state_bytes),
                s.context
            ),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<13} {v}");
    }
    if let Some(g) = &s.gpu {
        let known =
            |v: Option<u64>, unit: &str| v.map_or("?".to_string(), |v| format!("{v} {unit}"));
        println!(
            "  {:<13} {} kernels for {}: blocks of {} threads, up to {} threads per grid index, \
             up to {} and {} of shared memory per block; {}",
            "gpu code",
            g.kernels,
            g.chip,
            g.block_size,
            g.max_threads_per_grid_index,
            known(g.max_registers.map(u64::from), "registers per thread"),
            known(g.max_shared_bytes, "bytes"),
            match g.spill_bytes {
                Some(b) => format!("ptxas: {b} bytes of spills"),
                None => "ptxas not found: not assembled".to_string(),
            }
        );
    }
}

fn summary(c: &Compiled, args: &BuildArgs, engine: Option<&Path>, cached: usize) -> Summary {
    let spec = &c.input.spec;
    let after = ops(&c.module);
    let weights = match &c.input.weights {
        WeightSource::Random(seed) => {
            format!("random (seed {seed}): the description has no checkpoint")
        }
        WeightSource::Checkpoint(d) => format!("checkpoint {}", d.display()),
    };
    let bind = Bindings {
        t: args.context,
        c: args.context,
    };
    let decode_bind = Bindings {
        t: 1,
        c: args.context,
    };
    let peak = |g: &str, b: &Bindings| {
        c.module
            .graph(g)
            .and_then(|g| zambac_ir::plan::peak_activation_bytes(g, b))
            .unwrap_or(0) as u64
    };
    let gemm_calls = c
        .lowered
        .programs
        .iter()
        .map(|p| {
            p.steps
                .iter()
                .filter(|s| matches!(s, zambac_engine::Step::Gemm { .. }))
                .count()
        })
        .sum();
    Summary {
        model: spec.name.clone(),
        engine: engine.map(|e| e.display().to_string()),
        weights,
        params: zambac_ir::cost::ParamBreakdown::of(&c.module).total,
        weight_bytes: weight_bytes(c),
        dtype: c.dtype.to_string(),
        ops_before: [c.ops_before.0, c.ops_before.1],
        ops_after: [after.0, after.1],
        kernels: c.lowered.kernels.len(),
        kernels_cached: cached,
        gemm_calls,
        decode_launches: c
            .lowered
            .programs
            .iter()
            .filter(|p| p.name == zambac_engine::ProgramName::Decode)
            .flat_map(|p| &p.steps)
            .filter(|s| matches!(s, zambac_engine::Step::Launch { .. }))
            .count(),
        context: args.context,
        peak_prefill_activation_bytes: peak("prefill", &bind),
        peak_decode_activation_bytes: peak("decode", &decode_bind),
        // As the engine stores them: f32 words, two bf16 values each in bf16 caches.
        state_bytes: c
            .lowered
            .state
            .iter()
            .filter_map(|s| s.bytes(args.context))
            .fold(0, u64::saturating_add),
        decode_weight_elems_read: c.module.graph("decode").map_or(0, |g| {
            zambac_ir::cost::weight_elems_read(g, &Bindings { t: 1, c: 1 })
        }),
        gpu: None,
    }
}
