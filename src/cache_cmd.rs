//! `zambac cache`: the compile cache of kernel objects (`zambac_codegen::cache`).

use crate::error::{CliError, CliResult};

/// Options of `zambac cache`.
#[derive(clap::Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheAction {
    /// Where the cache is and what it holds.
    Info,
    /// Remove every cached kernel object.
    Clear,
}

pub fn run(args: &CacheArgs) -> CliResult<()> {
    let dir = zambac_codegen::KernelCache::default_dir().ok_or_else(|| {
        CliError::input("error: no cache directory: neither XDG_CACHE_HOME nor HOME is set")
    })?;
    let cache = zambac_codegen::KernelCache::new(&dir, zambac_codegen::cache::compiler_id());
    match args.action {
        CacheAction::Info => {
            let (entries, bytes) = cache.usage();
            println!("cache     {}", dir.display());
            println!(
                "holds     {entries} kernel objects, {}",
                crate::fmt::bytes(bytes)
            );
            println!("compiler  {}", zambac_codegen::cache::compiler_id());
        }
        CacheAction::Clear => {
            let freed = cache
                .clear()
                .map_err(|e| CliError::input(format!("error: {e}")))?;
            println!(
                "cleared {} ({} freed)",
                dir.display(),
                crate::fmt::bytes(freed)
            );
        }
    }
    Ok(())
}
