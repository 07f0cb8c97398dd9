//! `zambac`: a compiler for Zamba-family hybrid language models.

use clap::{Parser, Subcommand};
use zambac::{bench_cmd, build_cmd, cache_cmd, explore, ir_cmd, run_cmd};

#[derive(Parser)]
#[command(
    name = "zambac",
    version,
    about = "A compiler for Zamba-family hybrid Mamba/attention models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model into an engine.
    Build(build_cmd::BuildArgs),
    /// Cost a model and its variants: parameters, bytes, KV cache, state, FLOPs, roofline.
    Explore(explore::ExploreArgs),
    /// Print the IR (.zir) of a model.
    Ir(ir_cmd::IrArgs),
    /// Measure an engine: prefill, time to first token, decode tokens/s, peak RSS.
    Bench(bench_cmd::BenchArgs),
    /// Generate from a model: prefill the prompt, then decode token by token.
    Run(run_cmd::RunArgs),
    /// The compile cache of kernel objects: `info`, `clear`.
    Cache(cache_cmd::CacheArgs),
}

fn main() {
    zambac_runtime::cli::quiet_on_closed_pipe();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Build(a) => build_cmd::run(a),
        Command::Explore(a) => explore::run(a),
        Command::Ir(a) => ir_cmd::run(a),
        Command::Run(a) => run_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::Cache(a) => cache_cmd::run(a),
    };
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(e.exit_code());
    }
}
