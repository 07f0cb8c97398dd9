//! `materialize`: rebuilds the weights of an engine built with seeded random weights from
//! its seed, so that a benchmark engine of billions of parameters can travel as its
//! manifest and code alone (`weights.bin` left behind) and be completed where it runs.
//!
//! The values come from the same generator the compiler used
//! ([`zambac_engine::random::values`]) and go through the same writer, so the result is
//! the engine the compiler wrote, byte for byte: every tensor's checksum is compared with
//! the manifest's before the engine is accepted.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use zambac_engine::{
    Companions, EngineWriter, GpuFiles, MANIFEST_FILE, Manifest, ManifestParts, PTX_FILE,
    TOKENIZER_FILE, random, validate,
};

use crate::error::RuntimeError;

/// Options of `materialize`.
#[derive(clap::Args, Debug)]
pub struct MaterializeArgs {
    /// An engine directory built with random weights (`weights.bin` may be missing).
    pub engine: PathBuf,
    /// Where to write the complete engine.
    #[arg(short, long)]
    pub out: PathBuf,
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, RuntimeError> {
    let path = dir.join(file);
    std::fs::read(&path)
        .map_err(|e| RuntimeError::load(path.display().to_string(), None, e.to_string()))
}

/// The seed of an engine built with random weights, from the build record.
fn seed_of(m: &Manifest, manifest: &str) -> Result<u64, RuntimeError> {
    let recorded = m
        .build
        .get("weights")
        .and_then(|w| w.as_str())
        .unwrap_or("");
    recorded
        .strip_prefix("random:")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            RuntimeError::load(
                manifest,
                None,
                format!(
                    "build.weights is `{recorded}`: only an engine built with random weights \
                     (`random:<seed>`) can be rebuilt from its seed"
                ),
            )
        })
}

/// `zambac-run materialize`.
pub fn materialize(args: &MaterializeArgs) -> Result<(), RuntimeError> {
    let manifest_path = args.engine.join(MANIFEST_FILE).display().to_string();
    let m = Manifest::parse(&read(&args.engine, MANIFEST_FILE)?)
        .map_err(|e| RuntimeError::load(&manifest_path, None, e))?;
    validate::manifest(&m).map_err(|e| RuntimeError::load(&manifest_path, None, e))?;
    let seed = seed_of(&m, &manifest_path)?;
    let host = read(&args.engine, &m.host.file)?;
    let ptx = match &m.gpu {
        Some(_) => Some(read(&args.engine, PTX_FILE)?),
        None => None,
    };
    let tokenizer = match &m.model.tokenizer {
        Some(_) => Some(read(&args.engine, TOKENIZER_FILE)?),
        None => None,
    };
    let values: Vec<Vec<f32>> = m
        .weights
        .par_iter()
        .map(|w| random::values(&w.name, &w.shape, seed))
        .collect();
    let mut writer = EngineWriter::create(&args.out)?;
    for (w, data) in m.weights.iter().zip(&values) {
        match &w.column_blocks {
            Some(blocks) => writer.add_blocked_weight(&w.name, &w.shape, data, w.elem, blocks)?,
            None => writer.add_weight(&w.name, &w.shape, data, w.elem)?,
        };
    }
    drop(values);
    let mut model = m.model.clone();
    model.tokenizer = None;
    let parts = ManifestParts {
        zambac_version: m.zambac_version.clone(),
        model,
        source: m.source.clone(),
        kernels: m.kernels.clone(),
        programs: m.programs.clone(),
        host_target: m.host_target.clone(),
        build: m.build.clone(),
    };
    let files = Companions {
        host: &host,
        gpu: m.gpu.as_ref().zip(ptx.as_deref()).map(|(g, ptx)| GpuFiles {
            ptx,
            chip: &g.chip,
            kernels: &g.kernels,
        }),
        tokenizer: tokenizer.as_deref(),
    };
    let written = writer.finish(parts, files)?;
    if let Some((w, _)) = written
        .weights
        .iter()
        .zip(&m.weights)
        .find(|(new, old)| new.xxh3 != old.xxh3)
    {
        return Err(RuntimeError::load(
            &manifest_path,
            Some(&w.name),
            "the regenerated values do not match the manifest's checksum (the engine was \
             built by another generator)",
        ));
    }
    eprintln!(
        "materialized {} weights ({} bytes) from seed {seed} into {}",
        written.weights.len(),
        written.weights.iter().map(|w| w.bytes).sum::<u64>(),
        args.out.display()
    );
    Ok(())
}
