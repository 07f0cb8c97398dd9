//! `run`: prefill a prompt, generate, stream the tokens (or text), optionally dump the
//! logits.

use std::io::Write;
use std::path::{Path, PathBuf};

use zambac_engine::Engine;

use crate::cpu::CpuBackend;
use crate::cuda::CudaBackend;
use crate::error::RuntimeError;
use crate::sampling::Sampling;
use crate::session::{Backend, Generation, Options, generate_from};
use crate::tokenizer::Tokenizer;

/// How to generate and what to print: the options every `run` shares.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Threads for the cpu backend (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Prompt token ids, comma-separated.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub tokens: Option<String>,
    /// Prompt text (needs a tokenizer: the engine's, or a tokenizer.json beside the
    /// checkpoint); the output streams.
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Write `logits`, `tokens` and `decode_logits` to a safetensors file.
    #[arg(long, value_name = "FILE")]
    pub dump_logits: Option<PathBuf>,
    /// Print one JSON object at the end instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Products with bf16 weights: `on` rounds the activations to bf16 for AVX-512 BF16
    /// products (oneDNN for 64 rows or more, zambac's `vdpbf16ps` kernel for fewer and for
    /// decode, alone or batched alike), `off` keeps them f32 (exact, the same on every CPU),
    /// `auto` is `on` where the CPU and oneDNN allow it.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub bf16_products: String,
    /// Prefill the prompt in chunks of this many tokens (a long prompt then needs workspace
    /// for one chunk only); the logits are those of one whole prefill.
    #[arg(long, value_name = "N")]
    pub prefill_chunk: Option<usize>,
    /// Continue the sequence saved in this snapshot: the prompt is appended to it.
    #[arg(long, value_name = "FILE")]
    pub load_state: Option<PathBuf>,
    /// Save the sequence's state after the run (everything consumed: the prompt and every
    /// generated token but the last) to this snapshot; `--max-new-tokens 0` prefills only.
    #[arg(long, value_name = "FILE")]
    pub save_state: Option<PathBuf>,
    /// Say on stderr what runs the model: the CPU and its extensions, what the engine's
    /// host code was generated for, the matrix library and its kernels.
    #[arg(long)]
    pub verbose: bool,
    /// Skip hashing the weights when the engine is opened (their sizes, `manifest.json` and
    /// `host.so` are still checked): a faster start for large engines on trusted storage.
    #[arg(long)]
    pub fast_load: bool,
}

/// Options of `zambac-run run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// An engine directory (from `zambac build`).
    pub engine: PathBuf,
    /// Which backend executes the engine: `cpu` (its compiled host code) or `cuda` (its
    /// PTX on an NVIDIA GPU, matrix products by cuBLAS).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub backend: String,
    /// With `--backend cuda`: check every step of every program against the engine's host
    /// code run on the same inputs, and report the steps whose GPU code disagrees (slow; for
    /// finding a faulty GPU kernel). Exits 1 when one does.
    #[arg(long)]
    pub cuda_verify: bool,
    #[command(flatten)]
    pub generate: GenerateArgs,
}

/// `zambac-run run`.
pub fn run(args: &RunArgs) -> Result<(), RuntimeError> {
    let engine = super::open_engine(&args.engine, args.generate.fast_load)?;
    let tokenizer = match &args.generate.prompt {
        Some(_) => Some(engine_tokenizer(&engine)?),
        None => None,
    };
    let prompt = prompt(&args.generate, tokenizer.as_ref())?;
    if args.backend == "cuda" {
        let mut backend = CudaBackend::new(engine, 0)?;
        backend.set_verify(args.cuda_verify)?;
        generate_and_report(
            &mut backend,
            &prompt,
            &args.generate,
            tokenizer.as_ref(),
            &args.backend,
        )?;
        return match backend.verify_report() {
            None => Ok(()),
            Some((checked, failures, worst)) => {
                eprintln!(
                    "cuda-verify: {checked} steps checked; worst disagreement {worst:.3} of the                      tolerance; {} step outputs disagree",
                    failures.len()
                );
                for f in failures {
                    eprintln!("  {f}");
                }
                if failures.is_empty() {
                    Ok(())
                } else {
                    Err(RuntimeError::Internal(
                        "the GPU kernels disagree with the engine's host code".into(),
                    ))
                }
            }
        };
    }
    if args.cuda_verify {
        return Err(RuntimeError::Input(
            "--cuda-verify checks the cuda backend: add --backend cuda".into(),
        ));
    }
    let mut backend = CpuBackend::new(engine, args.generate.threads)?;
    set_bf16_products(&mut backend, &args.generate.bf16_products)?;
    generate_and_report(
        &mut backend,
        &prompt,
        &args.generate,
        tokenizer.as_ref(),
        &args.backend,
    )
}

/// Applies `--bf16-products` (`auto` keeps the backend's choice).
pub fn set_bf16_products(backend: &mut CpuBackend, mode: &str) -> Result<(), RuntimeError> {
    match mode {
        "on" => backend.set_bf16_products(true),
        "off" => backend.set_bf16_products(false),
        _ => Ok(()),
    }
}

/// The tokenizer an engine carries.
pub fn engine_tokenizer(engine: &Engine) -> Result<Tokenizer, RuntimeError> {
    match engine.tokenizer_path() {
        Some(path) => Tokenizer::open(&path, "the engine is incomplete"),
        None => Err(RuntimeError::Input(format!(
            "--prompt needs a tokenizer, but the engine `{}` has none (it was built from a \
             model without a tokenizer.json); pass token ids with --tokens instead",
            engine.dir().display()
        ))),
    }
}

/// The prompt's token ids: `--tokens`, or `--prompt` through the tokenizer.
pub fn prompt(g: &GenerateArgs, tokenizer: Option<&Tokenizer>) -> Result<Vec<i64>, RuntimeError> {
    match (&g.tokens, &g.prompt, tokenizer) {
        (Some(t), _, _) => parse_tokens(t),
        (None, Some(p), Some(tok)) => tok.encode(p),
        _ => Err(RuntimeError::Input(
            "give a prompt with --tokens (or --prompt with a tokenizer)".into(),
        )),
    }
}

/// Generates from `prompt` and prints what `run` prints: the tokens (or text) as they
/// come, or one JSON object with `--json`; writes `--dump-logits`.
pub fn generate_and_report(
    backend: &mut dyn Backend,
    prompt: &[i64],
    g: &GenerateArgs,
    tokenizer: Option<&Tokenizer>,
    backend_name: &str,
) -> Result<(), RuntimeError> {
    let sampling = Sampling {
        temperature: g.temperature,
        top_k: g.top_k,
        top_p: g.top_p,
        seed: g.seed,
    };
    sampling.check().map_err(RuntimeError::Input)?;
    if g.verbose {
        for (label, text) in backend.describe() {
            eprintln!("{label:<13} {text}");
        }
    }
    if g.prefill_chunk == Some(0) {
        return Err(RuntimeError::Input(
            "--prefill-chunk must be at least 1".into(),
        ));
    }
    let state = match &g.load_state {
        Some(path) => {
            let mut s = backend.load_state(path, 0)?;
            let more = prompt.len().saturating_add(g.max_new_tokens.max(1));
            s.grow(s.position().saturating_add(more))?;
            Some(s)
        }
        None => None,
    };
    let opts = Options {
        sampling,
        prefill_chunk: g.prefill_chunk,
    };
    let mut stream = Stream::new(tokenizer, !g.json);
    let (generation, state) = generate_from(backend, state, prompt, g.max_new_tokens, opts, |t| {
        stream.push(t)
    })?;
    stream.finish();
    if let Some(path) = &g.save_state {
        backend.save_state(path, &state)?;
    }
    if let Some(path) = &g.dump_logits {
        dump_logits(path, &generation)?;
    }
    if g.json {
        let text = tokenizer
            .map(|t| t.decode(&generation.tokens))
            .transpose()?;
        let out = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": text,
            "backend": backend_name,
        });
        println!("{out}");
    }
    Ok(())
}

/// Parses `--tokens 1,2,3`.
pub fn parse_tokens(s: &str) -> Result<Vec<i64>, RuntimeError> {
    if s.trim().is_empty() {
        return Err(RuntimeError::Input(
            "--tokens: the token list is empty".into(),
        ));
    }
    s.split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() {
                return Err(RuntimeError::Input(format!(
                    "--tokens: item {} is empty (expected integers like 1,2,3)",
                    i + 1
                )));
            }
            p.parse::<i64>().map_err(|_| {
                RuntimeError::Input(format!(
                    "--tokens: `{p}` is not a token id (expected integers like 1,2,3)"
                ))
            })
        })
        .collect()
}

/// Prints generated tokens as they arrive: text through the tokenizer, else ids.
struct Stream<'a> {
    tokenizer: Option<&'a Tokenizer>,
    enabled: bool,
    tokens: Vec<i64>,
    printed: String,
}

impl<'a> Stream<'a> {
    fn new(tokenizer: Option<&'a Tokenizer>, enabled: bool) -> Self {
        Stream {
            tokenizer,
            enabled,
            tokens: Vec::new(),
            printed: String::new(),
        }
    }

    fn push(&mut self, t: i64) {
        self.tokens.push(t);
        if !self.enabled {
            return;
        }
        let mut out = std::io::stdout().lock();
        match self.tokenizer {
            Some(tok) => {
                // Decode the whole continuation and print what is new, so multi-token
                // characters and merges come out right.
                if let Ok(text) = tok.decode(&self.tokens)
                    && let Some(new) = text.strip_prefix(&self.printed)
                {
                    let _ = write!(out, "{new}");
                    self.printed = text;
                }
            }
            None => {
                let sep = if self.tokens.len() > 1 { "," } else { "" };
                let _ = write!(out, "{sep}{t}");
            }
        }
        let _ = out.flush();
    }

    fn finish(&self) {
        if self.enabled {
            println!();
        }
    }
}

/// Writes `logits` `[T, V]`, `tokens` `[N]` and `decode_logits` `[N, V]` (the last two only
/// when tokens were generated).
fn dump_logits(path: &Path, g: &Generation) -> Result<(), RuntimeError> {
    use safetensors::tensor::{Dtype, TensorView};
    let f32_bytes = |d: &[f32]| d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let logits = f32_bytes(&g.prefill_logits.data);
    let tokens: Vec<u8> = g.tokens.iter().flat_map(|v| v.to_le_bytes()).collect();
    let decode = f32_bytes(&g.decode_logits.data);
    fn view(dt: Dtype, shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>, RuntimeError> {
        TensorView::new(dt, shape, data).map_err(|e| RuntimeError::Internal(e.to_string()))
    }
    let mut views = vec![(
        "logits".to_string(),
        view(Dtype::F32, g.prefill_logits.shape.clone(), &logits)?,
    )];
    if !g.tokens.is_empty() {
        views.push((
            "tokens".into(),
            view(Dtype::I64, vec![g.tokens.len()], &tokens)?,
        ));
        views.push((
            "decode_logits".into(),
            view(Dtype::F32, g.decode_logits.shape.clone(), &decode)?,
        ));
    }
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| RuntimeError::write(format!("--dump-logits {}", path.display()), e))
}
