//! `zambac run`: generate from a model with a chosen backend.

use std::io::Write;
use std::path::PathBuf;

use zambac_runtime::reference::ReferenceBackend;
use zambac_runtime::sampling::Sampling;
use zambac_runtime::session::{Backend, Generation, generate};

use crate::error::{CliError, CliResult};
use crate::model;
use crate::text::Tokenizer;

/// Options of `zambac run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// An engine directory (from `zambac build`), a Hugging Face checkpoint directory,
    /// or a description (.toml / config.json) run with random weights.
    pub input: PathBuf,
    /// Which backend executes the model: `cpu` (compiled host code; inputs that are not
    /// engines are compiled into a temporary one first) or `reference` (the interpreter).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "reference"])]
    pub backend: String,
    /// Threads for the cpu backend (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Prompt token ids, comma-separated.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    pub tokens: Option<String>,
    /// Prompt text (needs a tokenizer.json beside the checkpoint); the output streams.
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
    /// Weights for a description: a checkpoint directory or `random[:SEED]`.
    #[arg(long)]
    pub weights: Option<String>,
    /// When Δ is clamped at time_step_min: `hf5` (prefill only; default), `always`, `none`.
    #[arg(long)]
    pub dt_clamp: Option<String>,
}

pub fn run(args: &RunArgs) -> CliResult<()> {
    let tokenizer = match &args.prompt {
        Some(_) => Some(Tokenizer::beside(&args.input)?),
        None => None,
    };
    let prompt: Vec<i64> = match (&args.tokens, &args.prompt, &tokenizer) {
        (Some(t), _, _) => parse_tokens(t)?,
        (None, Some(p), Some(tok)) => tok.encode(p)?,
        _ => unreachable!("clap requires --tokens or --prompt"),
    };
    // Keeps a temporary engine alive while it runs.
    let mut _temp = None;
    let mut backend: Box<dyn Backend> = if crate::engines::is_engine(&args.input) {
        if args.weights.is_some() || args.dt_clamp.is_some() {
            return Err(CliError::input(
                "error: --weights and --dt-clamp are fixed when an engine is built; pass them to `zambac build`",
            ));
        }
        match args.backend.as_str() {
            "cpu" => crate::engines::cpu_backend(&args.input, args.threads)?,
            _ => crate::engines::reference_backend(&args.input)?,
        }
    } else {
        let dt_clamp = args
            .dt_clamp
            .as_deref()
            .map(model::parse_dt_clamp)
            .transpose()?;
        match args.backend.as_str() {
            "cpu" => {
                let (dir, backend) = crate::engines::compile_temporary(
                    &args.input,
                    args.weights.as_deref(),
                    args.dt_clamp.as_deref(),
                    args.threads,
                )?;
                _temp = Some(dir);
                backend
            }
            _ => {
                let input = model::open(&args.input, args.weights.as_deref(), dt_clamp)?;
                let module = zambac_ir::build(&input.spec)?;
                let (weights, warnings) = model::load_weights(&module, &input)?;
                for w in warnings {
                    eprintln!("warning: {w}");
                }
                Box::new(ReferenceBackend::new(module, weights)?)
            }
        }
    };
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let mut stream = Stream::new(tokenizer.as_ref(), !args.json);
    let generation = generate(
        backend.as_mut(),
        &prompt,
        args.max_new_tokens,
        sampling,
        |t| stream.push(t),
    )?;
    stream.finish();
    if let Some(path) = &args.dump_logits {
        dump_logits(path, &generation)?;
    }
    if args.json {
        let text = tokenizer
            .as_ref()
            .map(|t| t.decode(&generation.tokens))
            .transpose()?;
        let out = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": text,
            "backend": args.backend,
        });
        println!("{out}");
    }
    Ok(())
}

/// Parses `--tokens 1,2,3`.
pub fn parse_tokens(s: &str) -> CliResult<Vec<i64>> {
    let parts: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(CliError::input("error: --tokens: the token list is empty"));
    }
    parts
        .iter()
        .map(|p| {
            p.parse::<i64>().map_err(|_| {
                CliError::input(format!(
                    "error: --tokens: `{p}` is not a token id (expected integers like 1,2,3)"
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
fn dump_logits(path: &std::path::Path, g: &Generation) -> CliResult<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let f32_bytes = |d: &[f32]| d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let logits = f32_bytes(&g.prefill_logits.data);
    let tokens: Vec<u8> = g.tokens.iter().flat_map(|v| v.to_le_bytes()).collect();
    let decode = f32_bytes(&g.decode_logits.data);
    fn view(dt: Dtype, shape: Vec<usize>, data: &[u8]) -> CliResult<TensorView<'_>> {
        TensorView::new(dt, shape, data).map_err(|e| CliError::Internal(anyhow::anyhow!("{e}")))
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
    safetensors::serialize_to_file(views, None, path).map_err(|e| {
        CliError::input(format!(
            "error: --dump-logits: cannot write `{}`: {e}",
            path.display()
        ))
    })
}
