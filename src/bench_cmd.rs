//! `zambac bench`: prefill time, time to first token, decode tokens/s and peak RSS of an
//! engine on the cpu backend.

use std::path::PathBuf;

use crate::error::{CliError, CliResult};

/// Options of `zambac bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// An engine directory (from `zambac build`).
    pub engine: PathBuf,
    /// Prompt length: prefill computes the last position's logits, as a generating user
    /// pays it.
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed of the random prompt.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchArgs) -> CliResult<()> {
    if !crate::engines::is_engine(&args.engine) {
        return Err(CliError::input(format!(
            "error: `{}` is not an engine directory (no manifest.json); build one with `zambac build`",
            args.engine.display()
        )));
    }
    if args.prompt_len == 0 {
        return Err(CliError::input("error: --prompt-len must be at least 1"));
    }
    let mut backend = crate::engines::cpu_backend(&args.engine, args.threads)?;
    let r = zambac_runtime::bench::run(
        backend.as_mut(),
        args.prompt_len,
        args.new_tokens,
        args.seed,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(anyhow::Error::from)?
        );
    } else {
        println!("engine        {}", args.engine.display());
        println!(
            "prefill       {:.4} s for {} tokens ({:.1} tok/s)",
            r.prefill_s, r.prompt_len, r.prefill_tok_per_s
        );
        println!("first token   {:.4} s", r.ttft_s);
        println!(
            "decode        {:.2} tok/s ({:.2} ms/token over {} tokens)",
            r.decode_tok_per_s,
            1e3 / r.decode_tok_per_s,
            r.new_tokens
        );
        println!("peak RSS      {}", crate::fmt::bytes(r.peak_rss_bytes));
    }
    Ok(())
}
