//! `zambac bench`: the runtime's benchmark, as `zambac-run bench` runs it.

pub use zambac_runtime::cli::BenchArgs;

use crate::error::CliResult;

pub fn run(args: &BenchArgs) -> CliResult<()> {
    Ok(zambac_runtime::cli::bench(args)?)
}
