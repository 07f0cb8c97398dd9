//! Opening engines for `zambac run` and `zambac bench`: the cpu backend, the reference
//! interpreter over an engine's weights, and temporary engines for inputs that are not
//! engines yet.

use std::path::Path;

use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::engine::Engine;
use zambac_runtime::reference::ReferenceBackend;
use zambac_runtime::session::Backend;

use crate::build_cmd::{BuildArgs, compile};
use crate::error::{CliError, CliResult};
use crate::pass_args::PassArgs;

/// Whether `path` is (or claims to be) an engine directory: it holds any engine file. A
/// damaged engine is then reported by the engine loader, naming what is missing.
pub fn is_engine(path: &Path) -> bool {
    use zambac_runtime::engine::{HOST_FILE, MANIFEST_FILE, WEIGHTS_FILE};
    [MANIFEST_FILE, WEIGHTS_FILE, HOST_FILE]
        .iter()
        .any(|f| path.join(f).is_file())
}

pub fn cpu_backend(dir: &Path, threads: usize) -> CliResult<Box<dyn Backend>> {
    Ok(Box::new(open_cpu(dir, threads)?))
}

/// The cpu backend on the engine in `dir` (0 threads: one per core).
pub fn open_cpu(dir: &Path, threads: usize) -> CliResult<CpuBackend> {
    let engine = Engine::open(dir)?;
    Ok(CpuBackend::new(engine, threads)?)
}

/// The reference interpreter on the unoptimised graph of an engine's model, with the
/// engine's weights (bf16 ones widened exactly).
pub fn reference_backend(dir: &Path) -> CliResult<Box<dyn Backend>> {
    let (module, weights) = reference_model(dir)?;
    Ok(Box::new(ReferenceBackend::new(module, weights)?))
}

/// What [`reference_backend`] interprets: the unoptimised module of an engine's model and
/// the engine's weights as f32 tensors, in the module's parameter order.
pub fn reference_model(dir: &Path) -> CliResult<(zambac_ir::Module, Vec<zambac_runtime::Tensor>)> {
    let engine = Engine::open(dir)?;
    let spec = engine.manifest().spec.clone();
    let module = zambac_ir::build(&spec)?;
    let by_name: std::collections::BTreeMap<&str, usize> = engine
        .manifest()
        .weights
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.as_str(), i))
        .collect();
    let mut weights = Vec::with_capacity(module.params.len());
    for p in &module.params {
        let view = by_name.get(p.name.as_str()).and_then(|&i| engine.weight(i)).ok_or_else(|| {
            CliError::input(format!(
                "error: {}: the engine has no weight `{}` (it was merged with an identical tensor); run the reference backend on the checkpoint instead",
                dir.display(),
                p.name
            ))
        })?;
        weights.push(zambac_runtime::Tensor::new(p.shape.clone(), view.to_f32()));
    }
    Ok((module, weights))
}

/// Compiles `input` into an engine in a temporary directory and opens it on the cpu
/// backend. The directory lives as long as the returned guard.
pub fn compile_temporary(
    input: &Path,
    weights: Option<&str>,
    dt_clamp: Option<&str>,
    threads: usize,
) -> CliResult<(tempfile::TempDir, Box<dyn Backend>)> {
    let tmp = tempfile::tempdir().map_err(|e| CliError::Internal(e.into()))?;
    let out = tmp.path().join("model.engine");
    let args = BuildArgs {
        input: input.to_path_buf(),
        output: Some(out.clone()),
        target: "cpu".into(),
        weights: weights.map(str::to_string),
        dtype: None,
        context: 4096,
        dt_clamp: dt_clamp.map(str::to_string),
        check: false,
        json: false,
        cpu: None,
        cpu_features: None,
        passes: PassArgs::default(),
    };
    let compiled = compile(&args)?;
    crate::engine_out::write(&compiled, &args, &out)?;
    let backend = cpu_backend(&out, threads)?;
    Ok((tmp, backend))
}
