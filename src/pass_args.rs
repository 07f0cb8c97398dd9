//! The pass-manager flags shared by `zambac build` and `zambac ir`.

use std::path::PathBuf;

/// Observe and control the optimisation pipeline.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PassArgs {
    /// Print the IR before this pass (repeatable).
    #[arg(long, value_name = "PASS")]
    pub print_ir_before: Vec<String>,
    /// Print the IR after this pass (repeatable).
    #[arg(long, value_name = "PASS")]
    pub print_ir_after: Vec<String>,
    /// Print the IR after every pass.
    #[arg(long)]
    pub print_ir_after_all: bool,
    /// Write the IR after every pass to DIR/NNN-<pass>.zir (and generated code, on build).
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Print a table of pass times and op counts.
    #[arg(long)]
    pub time_passes: bool,
    /// Skip this pass (repeatable).
    #[arg(long, value_name = "PASS")]
    pub disable_pass: Vec<String>,
    /// Run exactly these passes, in order, instead of the default pipeline.
    #[arg(long, value_name = "A,B,...", value_delimiter = ',')]
    pub passes: Option<Vec<String>>,
}

impl PassArgs {
    pub fn options(&self) -> zambac_passes::Options {
        zambac_passes::Options {
            print_before: self.print_ir_before.clone(),
            print_after: self.print_ir_after.clone(),
            print_after_all: self.print_ir_after_all,
            dump_dir: self.dump_dir.clone(),
            time_passes: self.time_passes,
            disabled: self.disable_pass.clone(),
            passes: self.passes.clone(),
        }
    }

    /// Whether any flag asks for the pipeline (so `zambac ir` should run it).
    pub fn any(&self) -> bool {
        !self.print_ir_before.is_empty()
            || !self.print_ir_after.is_empty()
            || self.print_ir_after_all
            || self.dump_dir.is_some()
            || self.time_passes
            || !self.disable_pass.is_empty()
            || self.passes.is_some()
    }
}

/// Runs the pipeline on `m`, printing requested IR to stderr, and returns the manager
/// (for timings and statistics).
pub fn run_pipeline(
    m: &mut zambac_ir::Module,
    args: &PassArgs,
    bind: zambac_ir::Bindings,
) -> crate::error::CliResult<zambac_passes::PassManager> {
    let mut pm = zambac_passes::PassManager::new(args.options())?;
    let mut cx = zambac_passes::PassCx::new(bind);
    pm.run(m, &mut cx, &mut std::io::stderr())?;
    if args.time_passes {
        eprint!("{}", pm.timing_table());
        for (pass, stat) in &pm.stats {
            eprintln!("  {pass}: {stat}");
        }
    }
    Ok(pm)
}
