//! `zambac-run`: the small runtime a user deploys beside an engine. It runs and benchmarks
//! engines built by `zambac build`, and links no compiler: no MLIR, no LLVM, no frontend.

use clap::{Parser, Subcommand};
use zambac_runtime::cli;

#[derive(Parser)]
#[command(
    name = "zambac-run",
    version,
    about = "Runs zambac engines (built by `zambac build`) without the compiler"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate from an engine: prefill the prompt, then decode token by token.
    Run(cli::RunArgs),
    /// Measure an engine: prefill, time to first token, decode tokens/s, peak RSS.
    Bench(cli::BenchArgs),
    /// Serve an engine over HTTP (OpenAI-compatible), decoding concurrent requests together.
    Serve(zambac_runtime::serve::ServeArgs),
    /// Rebuild the weights of an engine built with random weights from its seed (for
    /// engines that travel without `weights.bin`); every tensor's checksum is verified.
    Materialize(cli::MaterializeArgs),
}

fn main() {
    cli::quiet_on_closed_pipe();
    let result = match &Cli::parse().command {
        Command::Run(a) => cli::run(a),
        Command::Bench(a) => cli::bench(a),
        Command::Serve(a) => zambac_runtime::serve::serve(a),
        Command::Materialize(a) => cli::materialize(a),
    };
    if let Err(e) = result {
        std::process::exit(cli::report(&e));
    }
}
