//! Opening engines for `zambac run`: the cpu backend, the reference interpreter over an
//! engine's weights, and temporary engines for inputs that are not engines yet.

use std::path::Path;

use zambac_engine::Engine;
use zambac_reference::ReferenceBackend;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::session::Backend;

use crate::build_cmd::{BuildArgs, compile};
use crate::error::{CliError, CliResult};
use crate::pass_args::PassArgs;

/// Whether `path` is (or claims to be) an engine directory: it holds any engine file. A
/// damaged engine is then reported by the engine loader, naming what is missing.
pub fn is_engine(path: &Path) -> bool {
    use zambac_engine::{HOST_FILE, MANIFEST_FILE, WEIGHTS_FILE};
    [MANIFEST_FILE, WEIGHTS_FILE, HOST_FILE]
        .iter()
        .any(|f| path.join(f).is_file())
}

/// The cpu backend on an opened engine (0 threads: one per core), its bf16 products as
/// `--bf16-products` says (`auto`, `on`, `off`).
pub fn cpu_backend(
    engine: Engine,
    threads: usize,
    bf16_products: &str,
) -> CliResult<Box<dyn Backend>> {
    let mut b = CpuBackend::new(engine, threads)?;
    zambac_runtime::cli::set_bf16_products(&mut b, bf16_products)?;
    Ok(Box::new(b))
}

/// The reference interpreter on the unoptimised graph of an engine's model, with the
/// engine's weights (bf16 ones widened exactly).
pub fn reference_backend(engine: &Engine) -> CliResult<Box<dyn Backend>> {
    let (module, weights) = reference_model_of(engine)?;
    Ok(Box::new(ReferenceBackend::new(module, weights)?))
}

/// [`reference_model_of`] the engine in `dir`.
pub fn reference_model(dir: &Path) -> CliResult<(zambac_ir::Module, Vec<zambac_runtime::Tensor>)> {
    reference_model_of(&Engine::open(dir)?)
}

/// What [`reference_backend`] interprets: the unoptimised module of the model an engine
/// was compiled from (the description the compiler recorded in its manifest) and the
/// engine's weights as f32 tensors, in the module's parameter order.
pub fn reference_model_of(
    engine: &Engine,
) -> CliResult<(zambac_ir::Module, Vec<zambac_runtime::Tensor>)> {
    let dir = engine.dir();
    let spec: zambac_frontend::ModelSpec = serde_json::from_value(engine.manifest().source.clone())
        .map_err(|e| {
            CliError::input(format!(
                "error: {}: the engine does not record a model description this zambac can \
                 interpret ({e}); run the reference backend on the model itself",
                dir.join(zambac_engine::MANIFEST_FILE).display()
            ))
        })?;
    let module = zambac_ir::build(&spec)?;
    crate::model::check_f32_weights_fit(&module, "the reference interpreter")?;
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
        let values = view.to_f32();
        if values.len() != p.numel() {
            return Err(CliError::input(format!(
                "error: {}: weight `{}` holds {} values, but the model needs shape {:?}",
                dir.display(),
                p.name,
                values.len(),
                p.shape
            )));
        }
        weights.push(zambac_runtime::Tensor::new(p.shape.clone(), values));
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
    bf16_products: &str,
) -> CliResult<(tempfile::TempDir, Box<dyn Backend>)> {
    let tmp = tempfile::tempdir().map_err(|e| CliError::Internal(e.into()))?;
    let out = tmp.path().join("model.engine");
    let args = BuildArgs {
        input: input.to_path_buf(),
        output: Some(out.clone()),
        target: "cpu".into(),
        host_schedule: "host".into(),
        mamba2_prefill: "auto".into(),
        mamba2_decode: "auto".into(),
        emit: "engine".into(),
        weights: weights.map(str::to_string),
        dtype: None,
        kv_dtype: "f32".into(),
        attention_products: "f32".into(),
        state_dtype: "f32".into(),
        context: 4096,
        dt_clamp: dt_clamp.map(str::to_string),
        hf4_long_context: false,
        check: false,
        json: false,
        cpu: None,
        cpu_features: None,
        no_cache: false,
        passes: PassArgs::default(),
    };
    let compiled = compile(&args)?;
    crate::engine_out::write(&compiled, &args, &out)?;
    let backend = cpu_backend(Engine::open(&out)?, threads, bf16_products)?;
    Ok((tmp, backend))
}
