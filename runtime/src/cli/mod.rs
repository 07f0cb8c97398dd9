//! `run` and `bench` as command lines, shared by the runtime binary `zambac-run` and the
//! compiler binary `zambac`: the same flags, the same output, the same `--dump-logits`
//! file. The compiler adds what only it can do (compile a model first, or interpret it).

mod bench;
mod materialize;
mod run;

pub use bench::{BenchArgs, bench};
pub use materialize::{MaterializeArgs, materialize};
pub use run::{
    GenerateArgs, RunArgs, engine_tokenizer, generate_and_report, parse_tokens, prompt, run,
    set_bf16_products,
};

use crate::error::RuntimeError;

/// Opens an engine, hashing its weights unless `fast_load` (`--fast-load`) says not to.
pub fn open_engine(
    dir: &std::path::Path,
    fast_load: bool,
) -> Result<zambac_engine::Engine, RuntimeError> {
    let verify = if fast_load {
        zambac_engine::Verify::SkipWeightHashes
    } else {
        zambac_engine::Verify::Full
    };
    Ok(zambac_engine::Engine::open_with(dir, verify)?)
}

/// Lets a closed standard output (`zambac-run run … | head`) end the process quietly, as it
/// ends any Unix filter, instead of failing the next write; Rust ignores SIGPIPE by
/// default, which turns every `println!` after the reader left into a panic.
pub fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up, before any thread
    // exists, has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Prints `e` the way both binaries do and returns the exit code: 2 for what the user can
/// fix (bad input, a damaged engine), 1 for internal errors.
pub fn report(e: &RuntimeError) -> i32 {
    if e.is_user_error() {
        eprintln!("error: {}", e.to_string().trim_end());
        2
    } else {
        eprintln!("{e}");
        1
    }
}
