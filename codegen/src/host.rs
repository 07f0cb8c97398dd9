//! Compiling a program's kernels into the engine's `host.so`.
//!
//! Each kernel is its own MLIR module (built, lowered with the host pipeline, optimised with
//! LLVM O3 for the host target, emitted as an object); the objects are linked into one
//! shared library exporting `zk_<symbol>` for every kernel. The output depends only on the
//! kernels and the target: objects are produced and linked in the kernels' order, and the
//! link is deterministic (see [`crate::link`]).

use crate::cache::KernelCache;
use crate::dump::Dumps;
use crate::error::CodegenError;
use crate::kernels::{Target, build_module};
use crate::link::link_shared_library;
use crate::llvm::{HostTarget, compile_host_object};
use crate::mlir::{MlirContext, lower_to_host};
use std::collections::BTreeSet;
use std::path::Path;
use zambac_engine::{Elem, Kernel, KernelKind};

/// A linked `host.so`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLibrary {
    /// The shared library's bytes.
    pub bytes: Vec<u8>,
    /// The exported kernel entry points, `zk_<symbol>`, in the kernels' order.
    pub symbols: Vec<String>,
    /// How many kernels' objects came from the compile cache.
    pub cached: usize,
}

/// Compiles `kernels` for `target` into one shared library, taking what `cache` holds
/// from it and adding what it lacks. With `dumps`, writes `<symbol>.mlir` (as built),
/// `<symbol>.lowered.mlir` (LLVM dialect) and `<symbol>.ll` (after O3) for each kernel —
/// compiling every kernel, since a cached object has no intermediate forms to dump.
pub fn compile_host(
    kernels: &[Kernel],
    target: &HostTarget,
    dumps: Option<&Path>,
    cache: Option<&KernelCache>,
) -> Result<HostLibrary, CodegenError> {
    compile_host_scheduled(kernels, target, Target::Host, dumps, cache)
}

/// [`compile_host`] with the grid schedule of `schedule`: [`Target::Host`] (the host's
/// blocked iterations), or [`Target::HostWithGpuSchedule`] — the GPU kernels' arithmetic,
/// lanes and all, as host code, so that whole models check the GPU schedules on a CPU.
pub fn compile_host_scheduled(
    kernels: &[Kernel],
    target: &HostTarget,
    schedule: Target,
    dumps: Option<&Path>,
    cache: Option<&KernelCache>,
) -> Result<HostLibrary, CodegenError> {
    check_unique(kernels)?;
    if schedule == Target::Gpu {
        return Err(CodegenError::InvalidKernel {
            symbol: String::new(),
            reason: "host code cannot have the GPU target; use HostWithGpuSchedule".into(),
        });
    }
    let cache = cache.filter(|_| dumps.is_none());
    let dumps = Dumps::new(dumps)?;
    let mlir = MlirContext::new();
    let mut objects = Vec::with_capacity(kernels.len());
    let mut cached = 0;
    for kernel in kernels {
        let symbol = &kernel.symbol;
        if let KernelKind::AttentionPrefill {
            products: Elem::Bf16,
            ..
        } = kernel.kind
            && (schedule != Target::Host || !target.has_avx512_bf16())
        {
            return Err(CodegenError::InvalidKernel {
                symbol: symbol.clone(),
                reason: format!(
                    "bf16 attention products are host-schedule code for CPUs with AVX-512 BF16; \
                     the target is `{}` with `{}`",
                    target.cpu, target.features
                ),
            });
        }
        let mut module = build_module(mlir.context(), kernel, schedule, target.vector_math())?;
        let key = cache.map(|c| {
            let math = format!("{:?}", target.vector_math());
            c.key(&module.as_operation().to_string(), target, &math)
        });
        if let (Some(c), Some(key)) = (cache, &key)
            && let Some(object) = c.get(key)
        {
            objects.push(object);
            cached += 1;
            continue;
        }
        dumps.write(&format!("{symbol}.mlir"), || {
            module.as_operation().to_string()
        })?;
        lower_to_host(&mlir, &mut module)?;
        dumps.write(&format!("{symbol}.lowered.mlir"), || {
            module.as_operation().to_string()
        })?;
        let object = compile_host_object(&mlir, &module, target)?;
        dumps.write(&format!("{symbol}.ll"), || object.llvm_ir.clone())?;
        if let (Some(c), Some(key)) = (cache, &key) {
            c.put(key, &object.object)?;
        }
        objects.push(object.object);
    }
    if objects.is_empty() {
        // The linker needs at least one input; an empty module gives an empty library.
        let mut empty = mlir.parse_module("")?;
        lower_to_host(&mlir, &mut empty)?;
        objects.push(compile_host_object(&mlir, &empty, target)?.object);
    }
    let directory =
        tempfile::tempdir().map_err(|error| CodegenError::io("temporary directory", error))?;
    let library = directory.path().join("host.so");
    let inputs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    link_shared_library(&inputs, &library)?;
    let bytes = std::fs::read(&library).map_err(|error| CodegenError::io(&library, error))?;
    Ok(HostLibrary {
        bytes,
        cached,
        symbols: kernels
            .iter()
            .map(|kernel| format!("zk_{}", kernel.symbol))
            .collect(),
    })
}

/// Symbols name exported functions, so two kernels may not share one.
pub(crate) fn check_unique(kernels: &[Kernel]) -> Result<(), CodegenError> {
    let mut seen = BTreeSet::new();
    for kernel in kernels {
        if !seen.insert(kernel.symbol.as_str()) {
            return Err(CodegenError::DuplicateSymbol(kernel.symbol.clone()));
        }
    }
    Ok(())
}
