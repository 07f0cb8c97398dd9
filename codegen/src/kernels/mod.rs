//! MLIR for every [`KernelKind`] of a program: one family of kinds per file, and a shared
//! frame that turns the uniform kernel ABI into memrefs and a grid loop. Which views a kind
//! takes, in what order and of which element types, is not restated here: the frame is
//! built from the kind's [`Signature`] in the engine contract, and the families ask for
//! their views by [`Role`]. Kernels whose sizes make no sense have no signature, so they
//! are rejected before any IR is built.
//!
//! Every kernel is one `func.func @zkg_<symbol>` whose arguments are one `!llvm.ptr` per view,
//! one `index` per integer argument and the grid range `begin, end`; its body is a single
//! `scf.parallel` over the grid, each iteration covering `Frame::block` grid indices (1 on
//! the GPU, where MLIR's loop tiling is only correct for unit steps). The host gets a
//! trampoline `zk_<symbol>(bufs, ints, begin, end)` in front of it (`abi`); the GPU
//! lowering outlines the parallel loop into a kernel. `emit` is the builder layer the
//! family files are written in, `rows` the vector loops they share.

mod abi;
mod act;
mod attention;
mod conv;
mod emit;
mod epilogue;
mod gemv;
mod mamba1;
mod mamba2;
mod misc;
mod norm;
mod rows;
mod warp;

pub(crate) use abi::top_level;
pub use abi::{
    BATCH_INTS, GpuParam, Target, Variant, VectorMath, build_module, build_module_variant,
    gpu_params, gpu_params_variant, grid_function,
};

use std::cell::Cell;

use crate::error::CodegenError;
use emit::{Emitter, V};
use zambac_engine::signature::Signature;
use zambac_engine::{Kernel, KernelKind, Role};

/// What one iteration of a kernel's grid loop sees.
pub(crate) struct Frame<'c, 's> {
    /// The views as rank-1 memrefs, in the signature's order.
    views: Vec<V<'c>>,
    signature: &'s Signature,
    /// A role a family asked for that the signature lacks: a codegen bug, reported as an
    /// error after the body is built rather than a panic.
    missing: Cell<Option<Role>>,
    /// The integer arguments, as `index`.
    pub ints: Vec<V<'c>>,
    /// The first grid index of this iteration.
    pub item: V<'c>,
    /// The start of the grid range being computed.
    pub begin: V<'c>,
    /// The end of the grid range being computed (exclusive).
    pub end: V<'c>,
    /// Grid indices per iteration: 1 on the GPU; blocked kinds use more on the host, and the
    /// last iteration of a range may cover fewer (`end` says how many).
    pub block: usize,
    /// A private f32 buffer of [`stack_size`] elements, reused by every iteration of one
    /// call (one per thread).
    pub stack: Option<V<'c>>,
    /// One grid index per thread (the GPU, or its schedule run on the host): kinds that
    /// block work in registers keep fewer values live.
    pub gpu_schedule: bool,
    /// Threads per grid index ([`lanes`]) and this thread's lane among them (`0` when 1).
    pub lanes: usize,
    pub lane: V<'c>,
    /// Whether the lanes of a warp run as threads that exchange values with shuffles (the
    /// GPU) rather than as a loop inside one iteration (the GPU schedule on the host); see
    /// [`warp::team_sum`].
    pub warp_threads: bool,
    /// Threads that share one sum ([`team`]): a warp, or a block of [`BLOCK_ROW`] threads
    /// for a row kernel over a wide row.
    pub team: usize,
    /// On the GPU, for a team of several warps: the block's workgroup memory, one f32 per
    /// warp, through which [`warp::team_sum`] adds the warps' totals.
    pub shared: Option<V<'c>>,
    /// The batch of a [`Variant::Batched`] Gemv.
    pub batch: Option<Batch<'c>>,
}

/// The run-time batch of a [`Variant::Batched`] kernel, as `index` values.
#[derive(Clone, Copy)]
pub(crate) struct Batch<'c> {
    /// Sequences in the batch (at least one).
    pub sequences: V<'c>,
    /// Elements between consecutive sequences' inputs (`x`).
    pub x_stride: V<'c>,
    /// Elements between consecutive sequences' outputs (`y`).
    pub y_stride: V<'c>,
}

impl<'c> Frame<'c, '_> {
    /// The memref of the view playing `role`.
    pub(crate) fn view(&self, role: Role) -> V<'c> {
        match self.signature.index(role).and_then(|i| self.views.get(i)) {
            Some(v) => *v,
            None => {
                self.missing.set(Some(role));
                self.views[0]
            }
        }
    }

    /// Calls `body(e, first, n)` for the grid indices of this iteration: once with
    /// `n = block` when the whole block lies in the range, else once per remaining index with
    /// `n = 1`.
    pub(crate) fn blocks(
        &self,
        e: &Emitter<'c, '_>,
        body: impl Fn(&Emitter<'c, '_>, V<'c>, usize),
    ) {
        if self.block == 1 {
            body(e, self.item, 1);
            return;
        }
        let remaining = e.subi(self.end, self.item);
        let full = e.cmpi(
            melior::dialect::arith::CmpiPredicate::Sge,
            remaining,
            e.index(self.block as i64),
        );
        e.if_(
            full,
            &[],
            |e| {
                body(e, self.item, self.block);
                vec![]
            },
            |e| {
                e.for_(self.item, self.end, e.index(1), &[], |e, index, _| {
                    body(e, index, 1);
                    vec![]
                });
                vec![]
            },
        );
    }
}

/// Grid indices per host iteration of a Gemv: its rows share each load of `x` (8 rows
/// measured fastest on Zen 3 against 2 and 4: more weight streams in flight per core). The
/// convs take [`conv::HOST_CHANNELS`].
const GEMV_ROWS: usize = 8;

/// Threads of a warp: the lanes a butterfly of shuffles combines ([`warp::team_sum`]).
pub(crate) const WARP: usize = 32;

/// Threads of the block that takes one row of a wide row kernel ([`block_row`]): the GPU
/// block size, so that a block is exactly one row and every thread of it reaches the
/// barriers of [`warp::team_sum`].
pub(crate) const BLOCK_ROW: usize = crate::pipelines::GPU_BLOCK_SIZE as usize;

/// Elements a row needs for a block to take it ([`block_row`]): two per thread. Narrower
/// rows keep a warp — a block would leave most of its threads idle.
pub(crate) const BLOCK_ROW_MIN: usize = 2 * BLOCK_ROW;

/// The elements one grid index of a row kernel reduces or writes: a norm's (group's) width,
/// an elementwise kind's row. `None` for kinds that are not row kernels.
fn row_len(kind: &KernelKind) -> Option<usize> {
    use KernelKind as K;
    match kind {
        K::RmsNorm { d, groups, .. } => Some(d / (*groups).max(1)),
        K::AddRmsNorm { d, .. } => Some(*d),
        K::ConcatRmsNorm { da, db, .. } | K::ConcatRmsScale { da, db, .. } => Some(da + db),
        K::Mamba2GateNorm { di, groups, .. } => Some(di / (*groups).max(1)),
        K::Embedding { hidden, .. } => Some(*hidden),
        K::Binary { n, .. } | K::RowScale { n } => Some(*n),
        K::Epilogue { n, op, .. } => match op {
            // RoPE's lanes take whole heads: a warp has enough.
            zambac_engine::EpilogueOp::Rope { .. } => None,
            zambac_engine::EpilogueOp::Gate(_) => Some(n / 2),
            _ => Some(*n),
        },
        _ => None,
    }
}

/// Whether `kind`'s GPU schedule gives each row a block of [`BLOCK_ROW`] threads (a row
/// kernel whose rows have at least [`BLOCK_ROW_MIN`] elements) rather than a warp: a decode
/// step's single row is then read by 8 warps at once instead of one.
pub(crate) fn block_row(kind: &KernelKind) -> bool {
    row_len(kind).is_some_and(|len| len >= BLOCK_ROW_MIN)
}

/// Threads that share a grid index's sums ([`warp::team_sum`]) in `kind`'s GPU schedule.
pub(crate) fn team(kind: &KernelKind) -> usize {
    if block_row(kind) { BLOCK_ROW } else { WARP }
}

/// Whether `kind`'s GPU schedule gives each grid index a warp (or a block: [`block_row`])
/// whose lanes split the work and combine it with [`warp::team_sum`] (a row's dot product
/// or sum of squares).
pub(crate) fn warp_kind(kind: &KernelKind) -> bool {
    matches!(
        kind,
        KernelKind::Gemv { .. }
            | KernelKind::RmsNorm { .. }
            | KernelKind::AddRmsNorm { .. }
            | KernelKind::ConcatRmsNorm { .. }
            | KernelKind::ConcatRmsScale { .. }
            | KernelKind::Mamba2GateNorm { .. }
    )
}

/// Whether `kind`'s GPU schedule splits each grid index's independent elements (or heads)
/// between a warp's lanes, which exchange nothing ([`warp::split_chunks`]).
pub(crate) fn chunk_kind(kind: &KernelKind) -> bool {
    matches!(
        kind,
        KernelKind::Embedding { .. }
            | KernelKind::Binary { .. }
            | KernelKind::RowScale { .. }
            | KernelKind::Epilogue { .. }
            | KernelKind::KvWrite { .. }
            | KernelKind::AttentionCombine { .. }
    )
}

/// Threads per grid index of `kind` on `target`: a warp (or a block, [`block_row`]) for
/// [`warp_kind`]s, decode and prompt attention and the Mamba1 scan's channels on the GPU
/// (on the host the team's lanes are a loop inside one iteration), a warp per state row for
/// the Mamba2 scan (rows are independent; the lanes split a row's columns), else one.
pub fn lanes(kind: &KernelKind, target: Target) -> usize {
    match (target, kind) {
        (Target::Host, _) => 1,
        // A warp per state row on the GPU; on the host each row is an iteration whose
        // warp is a loop.
        (
            Target::Gpu,
            KernelKind::Mamba2Scan { head_dim, .. }
            | KernelKind::Mamba2ConvScan { head_dim, .. }
            | KernelKind::Mamba2ChunkScan { head_dim, .. }
            | KernelKind::Mamba2ChunkPass { head_dim, .. },
        ) => (*head_dim).max(1) * WARP,
        // Decode attention: a warp per split whose lanes split the head dim (on the host
        // the warp is a loop).
        (Target::Gpu, KernelKind::AttentionDecode { .. }) => WARP,
        (_, KernelKind::AttentionDecode { .. }) => 1,
        // Prompt attention: a warp per query row, the same warp loop.
        (Target::Gpu, KernelKind::AttentionPrefill { .. }) => WARP,
        (_, KernelKind::AttentionPrefill { .. }) => 1,
        (
            Target::HostWithGpuSchedule,
            KernelKind::Mamba2ConvScan { head_dim, .. }
            | KernelKind::Mamba2ChunkScan { head_dim, .. }
            | KernelKind::Mamba2ChunkPass { head_dim, .. },
        ) => (*head_dim).max(1),
        (_, KernelKind::Mamba2Scan { head_dim, .. }) => (*head_dim).max(1),
        // A warp per channel on the GPU (its lanes split the state columns); on the host
        // each channel is an iteration whose warp is a loop.
        (Target::Gpu, KernelKind::Mamba1Scan { .. }) => WARP,
        (Target::Gpu, k) if warp_kind(k) => team(k),
        (_, k) if chunk_kind(k) => team(k),
        _ => 1,
    }
}

/// Threads per block of `kind`'s GPU kernel: [`crate::pipelines::GPU_BLOCK_SIZE`], but two
/// warps for decode attention, whose few hundred warps (heads × splits, 256 for the 1.2B)
/// would otherwise fill only 32 blocks — 32 of an H100's 132 SMs.
pub fn gpu_block_size(kind: &KernelKind) -> u32 {
    match kind {
        KernelKind::AttentionDecode { .. } => 2 * WARP as u32,
        _ => crate::pipelines::GPU_BLOCK_SIZE,
    }
}

/// Grid indices per iteration of `kind` on `target`.
pub(crate) fn block_size(kind: &KernelKind, target: Target) -> usize {
    match (target, kind) {
        (Target::Gpu | Target::HostWithGpuSchedule, _) => 1,
        (Target::Host, KernelKind::Gemv { .. }) => GEMV_ROWS,
        (Target::Host, KernelKind::Mamba2Conv { .. } | KernelKind::Mamba1Conv { .. }) => {
            conv::HOST_CHANNELS
        }
        (Target::Host, _) => 1,
    }
}

/// f32 elements of private working memory one call of `kind` needs (0: none).
pub(crate) fn stack_size(kind: &KernelKind, target: Target) -> usize {
    if target == Target::HostWithGpuSchedule {
        if warp_kind(kind) {
            return warp::team_stack(team(kind), 1);
        }
        if matches!(
            kind,
            KernelKind::Mamba2Scan { .. }
                | KernelKind::Mamba2ConvScan { .. }
                | KernelKind::Mamba2ChunkScan { .. }
                | KernelKind::Mamba1Scan { .. }
        ) {
            return WARP;
        }
    }
    match kind {
        // The host stages a block's conv weights and state ([`conv::host_stack`]).
        KernelKind::Mamba2Conv { k, .. } | KernelKind::Mamba1Conv { k, .. }
            if target == Target::Host =>
        {
            conv::host_stack(*k)
        }
        // The host's Mamba2 scan carries a bf16 state through a call in an f32 copy of the
        // head's `P × N` values.
        KernelKind::Mamba2Scan {
            head_dim,
            state,
            ssm: zambac_engine::Elem::Bf16,
            ..
        } if target == Target::Host => head_dim * state,
        // The host stages a fused conv's channels for the head: x, then B and C.
        KernelKind::Mamba2ConvScan {
            head_dim, state, ..
        } if target == Target::Host => head_dim + 2 * state,
        // The GPU schedule on the host carries a bf16 state row along the chunks in f32.
        KernelKind::Mamba2ChunkPass {
            state,
            ssm: zambac_engine::Elem::Bf16,
            ..
        } if target == Target::HostWithGpuSchedule => *state,
        KernelKind::AttentionDecode { head_dim, .. } if target == Target::HostWithGpuSchedule => {
            attention::decode_warp_stack(*head_dim)
        }
        KernelKind::AttentionPrefill {
            head_dim, products, ..
        } => match target {
            // The GPU schedule keeps no blocks of queries (a warp per query, its lanes'
            // elements in registers; on the host, where the warp is a loop, in the stack).
            Target::Gpu => 0,
            Target::HostWithGpuSchedule => attention::decode_warp_stack(*head_dim),
            Target::Host => {
                attention::prefill_stack(*head_dim, attention::Blocking::new(), *products)
            }
        },
        _ => 0,
    }
}

/// Emits the body of one grid iteration of `kind`.
fn emit_kind<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, kind: &KernelKind) {
    use KernelKind as K;
    match kind {
        K::Embedding { hidden, elem } => misc::embedding(e, f, *hidden, *elem),
        K::RmsNorm { d, groups, eps } => norm::rms_norm(e, f, *d, *groups, *eps),
        K::AddRmsNorm { d, eps } => norm::add_rms_norm(e, f, *d, *eps),
        K::ConcatRmsNorm { da, db, eps } => norm::concat_rms_norm(e, f, *da, *db, *eps),
        K::ConcatRmsScale { da, db, eps } => norm::concat_rms_scale(e, f, *da, *db, *eps),
        K::RowScale { n } => misc::row_scale(e, f, *n),
        K::Binary { op, n, b_rows } => misc::binary(e, f, *op, *n, *b_rows),
        K::Gemv {
            k,
            rows,
            elem,
            accumulate,
            row_stride,
        } => gemv::gemv(e, f, *k, rows, *elem, *accumulate, row_stride.unwrap_or(*k)),
        K::Epilogue { n, bias, op } => epilogue::epilogue(e, f, *n, *bias, op),
        K::KvWrite {
            heads,
            head_dim,
            cache,
        } => misc::kv_write(e, f, *heads, *head_dim, *cache),
        K::AttentionPrefill {
            heads,
            kv_heads,
            head_dim,
            scale,
            kv,
            products,
        } => attention::prefill(
            e,
            f,
            &attention::Heads::new(*heads, *kv_heads, *head_dim, *scale, *kv)
                .with_products(*products),
        ),
        K::AttentionDecode {
            heads,
            kv_heads,
            head_dim,
            scale,
            kv,
            splits,
        } => attention::decode(
            e,
            f,
            &attention::Heads::new(*heads, *kv_heads, *head_dim, *scale, *kv),
            *splits,
        ),
        K::AttentionCombine {
            head_dim, splits, ..
        } => attention::combine(e, f, *head_dim, *splits),
        K::Mamba2Conv {
            width,
            di,
            cd,
            k,
            step,
        } => conv::mamba2(e, f, *width, *di, *cd, *k, *step),
        K::Mamba2Scan {
            width,
            heads,
            head_dim,
            groups,
            state,
            dt_min,
            step,
            ssm,
        } => mamba2::scan(
            e,
            f,
            &mamba2::ScanShape::new(*width, (*heads, *head_dim), (*groups, *state), *ssm),
            *dt_min,
            *step,
        ),
        K::Mamba2ChunkScan {
            width,
            heads,
            head_dim,
            groups,
            state,
            dt_min,
            chunks,
            min_len,
            outputs,
        } => mamba2::chunk_scan(
            e,
            f,
            &mamba2::ScanShape::new(
                *width,
                (*heads, *head_dim),
                (*groups, *state),
                zambac_engine::Elem::F32,
            ),
            *dt_min,
            (*chunks, *min_len),
            *outputs,
        ),
        K::Mamba2ChunkPass {
            heads,
            head_dim,
            state,
            chunks,
            min_len,
            ssm,
        } => mamba2::chunk_pass(e, f, (*heads, *head_dim, *state), (*chunks, *min_len), *ssm),
        K::Mamba2ConvScan {
            width,
            heads,
            head_dim,
            groups,
            state,
            k,
            dt_min,
            ssm,
        } => mamba2::conv_scan(
            e,
            f,
            &mamba2::ScanShape::new(*width, (*heads, *head_dim), (*groups, *state), *ssm),
            *k,
            *dt_min,
        ),
        K::Mamba2GateNorm {
            width,
            di,
            groups,
            eps,
            conv_shift,
        } => norm::gate_norm(e, f, (*width, *di, *groups, *eps), *conv_shift),
        K::Mamba1Conv { di, k, bias, step } => conv::mamba1(e, f, *di, *k, *bias, *step),
        K::Mamba1Scan {
            heads,
            head_dim,
            state,
            dt_rank,
            dt_min,
            step,
            ssm,
        } => mamba1::scan(
            e,
            f,
            &mamba1::ScanShape {
                heads: *heads,
                head_dim: *head_dim,
                state: *state,
                dt_rank: *dt_rank,
                ssm: *ssm,
            },
            *dt_min,
            *step,
        ),
    }
}

/// The kind's signature, after checking its symbol and sizes (a kind whose sizes make no
/// sense has none).
pub(crate) fn checked_signature(kernel: &Kernel) -> Result<Signature, CodegenError> {
    let invalid = |reason: String| CodegenError::InvalidKernel {
        symbol: kernel.symbol.clone(),
        reason,
    };
    zambac_engine::check_symbol(&kernel.symbol).map_err(invalid)?;
    kernel.kind.signature().map_err(invalid)
}
