//! `zambac ir`: print the IR of a model in the `.zir` text form.

use std::path::PathBuf;

use crate::error::CliResult;

/// Options of `zambac ir`.
#[derive(clap::Args, Debug)]
pub struct IrArgs {
    /// A model description (.toml), a Hugging Face config.json, or a checkpoint directory.
    pub input: PathBuf,
    /// Print only this graph (`prefill` or `decode`).
    #[arg(long)]
    pub graph: Option<String>,
}

pub fn run(args: &IrArgs) -> CliResult<()> {
    let loaded = zambac_frontend::load(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let module = zambac_ir::build(&loaded.spec)?;
    match &args.graph {
        None => print!("{}", zambac_ir::print_module(&module)),
        Some(name) => match module.graph(name) {
            Some(g) => print!("{}", zambac_ir::text::print_graph(g)),
            None => {
                return Err(crate::error::CliError::input(format!(
                    "error: --graph: no graph `{name}`; expected `prefill` or `decode`"
                )));
            }
        },
    }
    Ok(())
}
