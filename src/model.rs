//! Opening a model input: a description or checkpoint, and where its weights come from.

use std::path::{Path, PathBuf};

use zambac_frontend::{DtClamp, InputKind, ModelSpec};
use zambac_ir::Module;
use zambac_runtime::Tensor;
use zambac_weights::{Checkpoint, bind, random};

use crate::error::{CliError, CliResult};

/// Where a model's weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightSource {
    /// A Hugging Face checkpoint directory.
    Checkpoint(PathBuf),
    /// Seeded random weights (descriptions without a checkpoint).
    Random(u64),
}

/// The seed used when a description has no weights and none is given.
pub const DEFAULT_SEED: u64 = 0;

/// A model to compile or run.
pub struct Input {
    pub spec: ModelSpec,
    pub weights: WeightSource,
}

/// Parses `--weights PATH | random[:SEED]`.
pub fn parse_weights(s: &str) -> CliResult<WeightSource> {
    if s == "random" {
        return Ok(WeightSource::Random(DEFAULT_SEED));
    }
    if let Some(seed) = s.strip_prefix("random:") {
        return seed.parse().map(WeightSource::Random).map_err(|_| {
            CliError::input(format!(
                "error: --weights: expected `random:SEED` with an integer seed, found `{s}`"
            ))
        });
    }
    let p = PathBuf::from(s);
    if !p.is_dir() {
        return Err(CliError::input(format!(
            "error: --weights: `{s}` is not a checkpoint directory (or `random[:SEED]`)"
        )));
    }
    Ok(WeightSource::Checkpoint(p))
}

/// Loads the description at `path` and decides the weights: `--weights` if given, else
/// the checkpoint the path is, else random with the default seed.
pub fn open(path: &Path, weights: Option<&str>, dt_clamp: Option<DtClamp>) -> CliResult<Input> {
    let loaded = zambac_frontend::load(path)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let mut spec = loaded.spec;
    if let Some(c) = dt_clamp {
        spec.mamba.dt_clamp = c;
    }
    let weights = match weights {
        Some(w) => parse_weights(w)?,
        None => match loaded.kind {
            InputKind::CheckpointDir(dir) => WeightSource::Checkpoint(dir),
            _ => WeightSource::Random(DEFAULT_SEED),
        },
    };
    Ok(Input { spec, weights })
}

/// Parses `--dt-clamp`.
pub fn parse_dt_clamp(s: &str) -> CliResult<DtClamp> {
    match s {
        "hf5" => Ok(DtClamp::Hf5),
        "always" => Ok(DtClamp::Always),
        "none" => Ok(DtClamp::None),
        _ => Err(CliError::input(format!(
            "error: --dt-clamp: expected `hf5`, `always` or `none`, found `{s}`"
        ))),
    }
}

/// The f32 weights of every parameter of `m`, and warnings from loading them.
pub fn load_weights(m: &Module, input: &Input) -> CliResult<(Vec<Tensor>, Vec<String>)> {
    check_f32_weights_fit(m, "the reference interpreter")?;
    match &input.weights {
        WeightSource::Random(seed) => Ok((random(m, *seed), vec![])),
        WeightSource::Checkpoint(dir) => {
            let ck = Checkpoint::open(dir)?;
            let b = bind(m, &input.spec, &ck)?;
            Ok((b.tensors, b.warnings))
        }
    }
}

/// Refuses, before any weight is read or drawn, a model whose parameters as f32 tensors
/// (how the reference interpreter holds them) do not fit in the memory available now.
pub fn check_f32_weights_fit(m: &Module, who: &str) -> CliResult<()> {
    let values = m
        .params
        .iter()
        .fold(0u64, |n, p| n.saturating_add(p.numel() as u64));
    let mut budget = zambac_engine::resources::Budget::new();
    budget.add_n(format!("{} parameters as f32", m.params.len()), values, 4);
    budget
        .check_memory(&format!("the model `{}` in {who}", m.name))
        .map_err(|e| CliError::Input(format!("error: {e}; run it as an engine instead")))
}
