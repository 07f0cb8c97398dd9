//! `zambac run`: generate from a model with a chosen backend. Engines run exactly as
//! `zambac-run run` runs them (the same options and output, from the runtime's `cli`);
//! the compiler adds inputs that still need compiling and the reference interpreter.

use std::path::PathBuf;

use zambac_reference::ReferenceBackend;
use zambac_runtime::cli::{GenerateArgs, generate_and_report, prompt};
use zambac_runtime::session::Backend;
use zambac_runtime::tokenizer::Tokenizer;

use crate::error::{CliError, CliResult};
use crate::model;

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
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Weights for a description: a checkpoint directory or `random[:SEED]`.
    #[arg(long)]
    pub weights: Option<String>,
    /// When Δ is clamped at time_step_min: `hf5` (prefill only; default), `always`, `none`.
    #[arg(long)]
    pub dt_clamp: Option<String>,
}

pub fn run(args: &RunArgs) -> CliResult<()> {
    let wants_text = args.generate.prompt.is_some();
    let engine = if crate::engines::is_engine(&args.input) {
        if args.weights.is_some() || args.dt_clamp.is_some() {
            return Err(CliError::input(
                "error: --weights and --dt-clamp are fixed when an engine is built; pass them to `zambac build`",
            ));
        }
        Some(zambac_runtime::cli::open_engine(
            &args.input,
            args.generate.fast_load,
        )?)
    } else {
        None
    };
    let tokenizer = match (&engine, wants_text) {
        (_, false) => None,
        (Some(e), true) => Some(zambac_runtime::cli::engine_tokenizer(e)?),
        (None, true) => Some(Tokenizer::beside(&args.input)?),
    };
    // The prompt before any compiling: a bad `--tokens` is reported at once.
    let prompt = prompt(&args.generate, tokenizer.as_ref())?;
    // Keeps a temporary engine alive while it runs.
    let mut _temp = None;
    let mut backend: Box<dyn Backend> = match (engine, args.backend.as_str()) {
        (Some(engine), "cpu") => crate::engines::cpu_backend(
            engine,
            args.generate.threads,
            &args.generate.bf16_products,
        )?,
        (Some(engine), _) => crate::engines::reference_backend(&engine)?,
        (None, "cpu") => {
            let (dir, backend) = crate::engines::compile_temporary(
                &args.input,
                args.weights.as_deref(),
                args.dt_clamp.as_deref(),
                args.generate.threads,
                &args.generate.bf16_products,
            )?;
            _temp = Some(dir);
            backend
        }
        (None, _) => {
            let dt_clamp = args
                .dt_clamp
                .as_deref()
                .map(model::parse_dt_clamp)
                .transpose()?;
            let input = model::open(&args.input, args.weights.as_deref(), dt_clamp)?;
            let module = zambac_ir::build(&input.spec)?;
            let (weights, warnings) = model::load_weights(&module, &input)?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Box::new(ReferenceBackend::new(module, weights)?)
        }
    };
    generate_and_report(
        backend.as_mut(),
        &prompt,
        &args.generate,
        tokenizer.as_ref(),
        &args.backend,
    )?;
    Ok(())
}
