//! The kernel ABI in MLIR: the grid function every kernel is built as, the host trampoline
//! that exposes it as `zk_<symbol>(bufs, ints, begin, end)`, and the parameter list of the
//! GPU entry that the outliner derives from it.
//!
//! The grid function takes raw pointers (not memref descriptors) and builds its memrefs
//! inside the parallel loop body. On the host this costs nothing (the descriptors are loop
//! invariant and fold away); on the GPU it means the outlined kernel captures only the
//! function's own arguments, so every `.entry` takes plain pointers and integers in an order
//! that [`gpu_params`] reads back from the launch the outliner left behind.

use super::emit::{Emitter, VectorCalls};
use super::rows::storage_type;
use super::{Frame, block_size, checked_signature, emit_kind};
use crate::error::CodegenError;
use melior::Context;
use melior::ir::attribute::{DenseI32ArrayAttribute, StringAttribute};
use melior::ir::block::BlockArgument;
use melior::ir::operation::OperationLike;
use melior::ir::{BlockLike, Location, Module, OperationRef, RegionLike};
use std::cell::Cell;

use zambac_engine::Kernel;
use zambac_engine::signature::Signature;

/// Which lowering a kernel module is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Host code: blocked grid iterations and a `zk_<symbol>` trampoline.
    Host,
    /// GPU code: one grid index per iteration (one per thread), no trampoline.
    Gpu,
    /// Host code with the GPU's schedule (one grid index per iteration) and the host
    /// trampoline: the GPU kernels' arithmetic, runnable — and testable — without a GPU.
    HostWithGpuSchedule,
}

impl Target {
    fn is_host(self) -> bool {
        self != Target::Gpu
    }

    /// One grid index per iteration, as on the GPU.
    pub(crate) fn gpu_schedule(self) -> bool {
        self != Target::Host
    }
}

/// How host code computes transcendental functions (`exp`, `erf`, `tanh`, `log1p`, `expm1`)
/// of the 8-lane f32 vectors the kernels work in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorMath {
    /// `math` ops, left to MLIR and LLVM: on x86-64 a scalar libm call per lane.
    Ops,
    /// Calls to glibc's libmvec AVX2 variants (`_ZGVdN8v_expf`, ...): the target must have
    /// AVX2 and `host.so` must link `libmvec`. Ignored for the GPU.
    Libmvec,
}

/// One parameter of a GPU kernel entry, in `.param` order: the engine contract's type.
pub use zambac_engine::GpuParam;

/// The name of the grid function of the kernel `symbol`.
pub fn grid_function(symbol: &str) -> String {
    format!("zkg_{symbol}")
}

/// Which form of a kernel a module holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The kernel as the programs launch it.
    Single,
    /// A Gemv for a batch of sequences ([`zambac_engine::GpuBatchedEntry`]): after the
    /// kind's integer arguments, three more — the number of sequences and the distances
    /// between consecutive sequences' inputs and outputs, in elements.
    Batched,
}

/// Integer arguments a [`Variant::Batched`] grid function takes after the kind's own.
pub const BATCH_INTS: usize = 3;

/// Builds the module of one kernel for `target`: the grid function, plus on the host the
/// `zk_<symbol>` trampoline, with transcendental functions computed as `math` says.
pub fn build_module<'c>(
    cx: &'c Context,
    kernel: &Kernel,
    target: Target,
    math: VectorMath,
) -> Result<Module<'c>, CodegenError> {
    build_module_variant(cx, kernel, target, math, Variant::Single)
}

/// [`build_module`] for a form of the kernel; [`Variant::Batched`] only for a Gemv on a
/// GPU schedule.
pub fn build_module_variant<'c>(
    cx: &'c Context,
    kernel: &Kernel,
    target: Target,
    math: VectorMath,
    variant: Variant,
) -> Result<Module<'c>, CodegenError> {
    let signature = checked_signature(kernel)?;
    if variant == Variant::Batched
        && (!matches!(kernel.kind, zambac_engine::KernelKind::Gemv { .. })
            || !target.gpu_schedule())
    {
        return Err(CodegenError::InvalidKernel {
            symbol: kernel.symbol.clone(),
            reason: format!(
                "only a Gemv on a GPU schedule has a batched form, not {} for {target:?}",
                kernel.kind.name()
            ),
        });
    }
    let module = Module::new(Location::unknown(cx));
    let calls = VectorCalls::default();
    let libmvec = math == VectorMath::Libmvec && target.is_host();
    {
        let body = module.body();
        let e = Emitter::new(cx, &body, libmvec.then_some(&calls));
        if let Some(role) = grid(&e, kernel, &signature, target, variant) {
            return Err(CodegenError::InvalidKernel {
                symbol: kernel.symbol.clone(),
                reason: format!(
                    "codegen for {} asked for a `{role}` view, which its signature lacks",
                    kernel.kind.name()
                ),
            });
        }
        if target.is_host() {
            let lanes = super::lanes(&kernel.kind, target);
            trampoline(&e, &kernel.symbol, &signature, lanes, variant);
        }
        for name in calls.borrow().iter() {
            e.declare_vector_function(name);
        }
    }
    Ok(module)
}

/// Emits the grid function; returns a role the kind's emitter asked for but the signature
/// does not have (a codegen bug).
fn grid<'c>(
    e: &Emitter<'c, '_>,
    kernel: &Kernel,
    signature: &Signature,
    target: Target,
    variant: Variant,
) -> Option<zambac_engine::Role> {
    let views = signature.views.len();
    let ints = signature.ints.len() + extra_ints(variant);
    let missing = Cell::new(None);
    let mut arguments = vec![e.ptr_t(); views];
    arguments.extend(vec![e.index_t(); ints + 2]);
    let block = block_size(&kernel.kind, target);
    let name = grid_function(&kernel.symbol);
    let stack = match variant {
        Variant::Single => super::stack_size(&kernel.kind, target),
        Variant::Batched => super::gemv::batched_stack(target),
    };
    let alloca = |e: &Emitter<'c, '_>| (stack > 0).then(|| e.alloca_f32(stack));
    // A team of several warps adds their totals through workgroup memory on the GPU.
    let team = super::team(&kernel.kind);
    let warps = team / super::WARP;
    let shared = (target == Target::Gpu && super::warp_kind(&kernel.kind) && warps > 1)
        .then(|| format!("zkw_{}", kernel.symbol));
    if let Some(name) = &shared {
        e.workgroup_global(name, warps);
    }
    e.function(&name, &arguments, target.is_host(), |e, args| {
        let (begin, end) = (args[views + ints], args[views + ints + 1]);
        // The host's buffer sits in the function's entry block, reused by every iteration;
        // on the GPU the parallel body becomes the kernel, so each thread allocates its own
        // there (the outlined kernel must not capture a host stack address).
        let host_stack = if target == Target::Gpu {
            None
        } else {
            alloca(e)
        };
        // With several threads per grid index, `begin` and `end` count threads (grid
        // indices × lanes): the caller scales them, so the loop's bounds stay the function's
        // own arguments (a bound computed here would be captured from the host by the GPU
        // kernel).
        let lanes = super::lanes(&kernel.kind, target);
        e.parallel(begin, end, e.index(block as i64), |e, index| {
            let (item, lane) = match lanes {
                1 => (index, e.index(0)),
                n => (
                    e.divui(index, e.index(n as i64)),
                    e.remui(index, e.index(n as i64)),
                ),
            };
            let stack = host_stack.or_else(|| alloca(e));
            let shared = shared.as_ref().map(|name| e.workgroup_buffer(name, warps));
            let memrefs = signature
                .views
                .iter()
                .zip(args)
                .map(|(view, ptr)| e.memref_at(*ptr, storage_type(e, view.elem)))
                .collect();
            let frame = Frame {
                views: memrefs,
                signature,
                missing: Cell::new(None),
                ints: args[views..views + ints - extra_ints(variant)].to_vec(),
                batch: (variant == Variant::Batched).then(|| super::Batch {
                    sequences: args[views + ints - BATCH_INTS],
                    x_stride: args[views + ints - BATCH_INTS + 1],
                    y_stride: args[views + ints - BATCH_INTS + 2],
                }),
                item,
                begin,
                end,
                block,
                stack,
                gpu_schedule: target.gpu_schedule(),
                lanes,
                lane,
                warp_threads: target == Target::Gpu,
                team,
                shared,
            };
            emit_kind(e, &frame, &kernel.kind);
            if let Some(role) = frame.missing.get() {
                missing.set(Some(role));
            }
        });
    });
    missing.get()
}

/// Integer arguments `variant` adds to the kind's.
fn extra_ints(variant: Variant) -> usize {
    match variant {
        Variant::Single => 0,
        Variant::Batched => BATCH_INTS,
    }
}

/// `zk_<symbol>(void *const *bufs, const int64_t *ints, int64_t begin, int64_t end)`: loads
/// the view pointers and integers and calls the grid function, which LLVM then inlines; the
/// grid range, in grid indices, becomes threads for a schedule with several `lanes`.
fn trampoline(
    e: &Emitter<'_, '_>,
    symbol: &str,
    signature: &Signature,
    lanes: usize,
    variant: Variant,
) {
    let ptr = e.ptr_t();
    let i64_t = e.int_t(64);
    let grid = grid_function(symbol);
    e.function(
        &format!("zk_{symbol}"),
        &[ptr, ptr, i64_t, i64_t],
        false,
        |e, args| {
            let index = |v| e.cast("index_cast", v, e.index_t());
            let mut operands: Vec<_> = (0..signature.views.len())
                .map(|j| e.load_slot(args[0], j, ptr))
                .collect();
            let ints = signature.ints.len() + extra_ints(variant);
            operands.extend((0..ints).map(|i| index(e.load_slot(args[1], i, i64_t))));
            let threads = |v| match lanes {
                1 => index(v),
                n => e.mul_k(index(v), n),
            };
            operands.push(threads(args[2]));
            operands.push(threads(args[3]));
            e.call(&grid, &operands);
        },
    );
}

/// Reads the parameters of the kernel outlined from `kernel`'s grid function in `module`
/// (after [`crate::pipelines::gpu_mapping`]): each operand of its `gpu.launch_func` must be an
/// argument of the grid function, which says what it is.
pub fn gpu_params(module: &Module, kernel: &Kernel) -> Result<Vec<GpuParam>, CodegenError> {
    gpu_params_variant(module, kernel, Variant::Single)
}

/// [`gpu_params`] of a form of the kernel.
pub fn gpu_params_variant(
    module: &Module,
    kernel: &Kernel,
    variant: Variant,
) -> Result<Vec<GpuParam>, CodegenError> {
    let abi_error = |detail: &str| CodegenError::GpuAbi {
        symbol: kernel.symbol.clone(),
        detail: detail.to_string(),
    };
    let signature = checked_signature(kernel)?;
    let (views, ints) = (signature.views.len(), signature.ints.len());
    let name = grid_function(&kernel.symbol);
    let function = top_level(module, "func.func", &name)
        .ok_or_else(|| abi_error("the grid function is missing after outlining"))?;
    let entry = function
        .region(0)
        .ok()
        .and_then(|region| region.first_block())
        .ok_or_else(|| abi_error("the grid function has no body"))?;
    let mut launches = Vec::new();
    let mut next = entry.first_operation();
    while let Some(op) = next {
        if op.name().as_string_ref().as_str() == Ok("gpu.launch_func") {
            launches.push(op);
        }
        next = op.next_in_block();
    }
    let [launch] = launches[..] else {
        return Err(abi_error(&format!(
            "expected one gpu.launch_func, found {}",
            launches.len()
        )));
    };
    let segments = launch
        .attribute("operandSegmentSizes")
        .ok()
        .and_then(|attribute| DenseI32ArrayAttribute::try_from(attribute).ok())
        .ok_or_else(|| abi_error("gpu.launch_func has no operandSegmentSizes"))?;
    let sizes: Vec<usize> = (0..segments.len())
        .map(|i| segments.element(i).map(|n| n as usize))
        .collect::<Result<_, _>>()
        .map_err(|_| abi_error("unreadable operandSegmentSizes"))?;
    // Segments: async deps, grid x/y/z, block x/y/z, cluster x/y/z, dynamic shared memory,
    // kernel operands, async object.
    const KERNEL_OPERANDS: usize = 11;
    let start: usize = sizes.iter().take(KERNEL_OPERANDS).sum();
    let count = *sizes
        .get(KERNEL_OPERANDS)
        .ok_or_else(|| abi_error("gpu.launch_func has fewer operand segments than expected"))?;
    (start..start + count)
        .map(|index| {
            let operand = launch
                .operand(index)
                .map_err(|_| abi_error("operand index out of range"))?;
            let argument = BlockArgument::try_from(operand)
                .map_err(|_| abi_error("the kernel captures a value computed on the host"))?;
            let extra = extra_ints(variant);
            match argument.argument_number() {
                j if j < views => Ok(GpuParam::View(j)),
                i if i < views + ints => Ok(GpuParam::Int(i - views)),
                i if i < views + ints + extra => Ok(match i - views - ints {
                    0 => GpuParam::Sequences,
                    1 => GpuParam::InputStride,
                    _ => GpuParam::OutputStride,
                }),
                b if b == views + ints + extra => Ok(GpuParam::Begin),
                _ => Ok(GpuParam::End),
            }
        })
        .collect()
}

/// The top-level operation `kind` of `module` whose `sym_name` is `name`.
pub(crate) fn top_level<'c, 'a>(
    module: &'a Module<'c>,
    kind: &str,
    name: &str,
) -> Option<OperationRef<'c, 'a>> {
    let mut next = module.body().first_operation();
    while let Some(op) = next {
        let symbol = op
            .attribute("sym_name")
            .ok()
            .and_then(|attribute| StringAttribute::try_from(attribute).ok())
            .map(|attribute| attribute.value().to_string());
        if op.name().as_string_ref().as_str() == Ok(kind) && symbol.as_deref() == Some(name) {
            return Some(op);
        }
        next = op.next_in_block();
    }
    None
}
