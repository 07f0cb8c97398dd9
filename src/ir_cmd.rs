//! `zambac ir`: print the IR of a model in the `.zir` text form, as built or after the
//! optimisation pipeline.

use std::path::PathBuf;

use crate::error::{CliError, CliResult};
use crate::pass_args::{PassArgs, run_pipeline};

/// Options of `zambac ir`.
#[derive(clap::Args, Debug)]
pub struct IrArgs {
    /// A model description (.toml), a Hugging Face config.json, or a checkpoint directory.
    pub input: PathBuf,
    /// Print only this graph (`prefill` or `decode`).
    #[arg(long)]
    pub graph: Option<String>,
    /// Run the default optimisation pipeline before printing (implied by pass flags).
    #[arg(long, short = 'O')]
    pub optimize: bool,
    /// Token count the memory planner sizes buffers for.
    #[arg(long, default_value_t = 512)]
    pub plan_tokens: usize,
    #[command(flatten)]
    pub passes: PassArgs,
}

pub fn run(args: &IrArgs) -> CliResult<()> {
    let loaded = zambac_frontend::load(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let mut module = zambac_ir::build(&loaded.spec)?;
    if args.optimize || args.passes.any() {
        let bind = zambac_ir::Bindings {
            t: args.plan_tokens,
            c: args.plan_tokens,
        };
        run_pipeline(&mut module, &args.passes, bind)?;
    }
    match &args.graph {
        None => print!("{}", zambac_ir::print_module(&module)),
        Some(name) => match module.graph(name) {
            Some(g) => print!("{}", zambac_ir::text::print_graph(g)),
            None => {
                return Err(CliError::input(format!(
                    "error: --graph: no graph `{name}`; expected `prefill` or `decode`"
                )));
            }
        },
    }
    Ok(())
}
