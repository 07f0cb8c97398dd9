//! MLIR for every [`KernelKind`] of a program: one family of kinds per file, a shared frame
//! that turns the uniform kernel ABI into memrefs and a grid loop, and the checks that reject
//! kernels whose sizes make no sense before any IR is built.
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

pub(crate) use abi::top_level;
pub use abi::{GpuParam, Target, VectorMath, build_module, gpu_params, grid_function};

use crate::error::CodegenError;
use emit::{Emitter, V};
use zambac_ir::program::{EpilogueOp, Kernel, KernelKind};
use zambac_ir::types::Elem;

/// What one iteration of a kernel's grid loop sees.
pub(crate) struct Frame<'c> {
    /// The views as rank-1 memrefs, in the kind's documented order.
    pub views: Vec<V<'c>>,
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
}

impl<'c> Frame<'c> {
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

/// The ABI of a kernel: element types of its views and the number of integer arguments.
pub(crate) struct Signature {
    pub views: Vec<Elem>,
    pub ints: usize,
}

/// Grid indices per host iteration of the blocked kinds: Gemv rows share each load of `x`
/// (8 rows measured fastest on Zen 3 against 2 and 4: more weight streams in flight per core),
/// conv channels fill a vector.
const GEMV_ROWS: usize = 8;
const CONV_CHANNELS: usize = 8;

/// Grid indices per iteration of `kind` on `target`.
pub(crate) fn block_size(kind: &KernelKind, target: Target) -> usize {
    match (target, kind) {
        (Target::Gpu | Target::HostWithGpuSchedule, _) => 1,
        (Target::Host, KernelKind::Gemv { .. }) => GEMV_ROWS,
        (Target::Host, KernelKind::Mamba2Conv { .. } | KernelKind::Mamba1Conv { .. }) => {
            CONV_CHANNELS
        }
        (Target::Host, _) => 1,
    }
}

/// The views and integer arguments `kind` takes, as its doc comment in `program.rs` lists them.
pub(crate) fn signature(kind: &KernelKind) -> Signature {
    use KernelKind as K;
    let f32s = |n: usize| vec![Elem::F32; n];
    let (views, ints) = match kind {
        K::Embedding { elem, .. } => (vec![Elem::I64, *elem, Elem::F32], 0),
        K::RmsNorm { .. } | K::Binary { .. } | K::ConcatRmsScale { .. } | K::RowScale { .. } => {
            (f32s(3), 0)
        }
        K::AddRmsNorm { .. } => (f32s(5), 0),
        K::ConcatRmsNorm { .. } | K::Mamba2GateNorm { .. } => (f32s(4), 0),
        K::Gemv { rows, elem, .. } => {
            let mut views = vec![Elem::F32];
            views.extend(rows.iter().map(|_| *elem));
            views.extend(rows.iter().map(|_| Elem::F32));
            (views, 0)
        }
        K::Epilogue { bias, op, .. } => {
            let extra = usize::from(*bias) + usize::from(matches!(op, EpilogueOp::Mul));
            (f32s(2 + extra), 1)
        }
        K::KvWrite { .. } => (f32s(2), 2),
        K::Softmax { .. } => (f32s(1), 2),
        K::AttentionDecode { .. } => (f32s(4), 2),
        K::Mamba2Conv { .. } => (f32s(5), 1),
        K::Mamba2Scan { .. } => (f32s(7), 1),
        K::Mamba1Conv { bias, .. } => (f32s(4 + usize::from(*bias)), 1),
        K::Mamba1Scan { .. } => (f32s(9), 1),
    };
    Signature { views, ints }
}

/// Emits the body of one grid iteration of `kind`.
fn emit_kind<'c>(e: &Emitter<'c, '_>, f: &Frame<'c>, kind: &KernelKind) {
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
        K::Epilogue { n, bias, op } => epilogue::epilogue(e, f, *n, *bias, *op),
        K::KvWrite { heads, head_dim } => misc::kv_write(e, f, *heads, *head_dim),
        K::Softmax { scale } => misc::softmax(e, f, *scale),
        K::AttentionDecode {
            heads,
            kv_heads,
            head_dim,
            scale,
        } => attention::decode(e, f, *heads, *kv_heads, *head_dim, *scale),
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
        } => mamba2::scan(
            e,
            f,
            &mamba2::ScanShape {
                width: *width,
                heads: *heads,
                head_dim: *head_dim,
                groups: *groups,
                state: *state,
            },
            *dt_min,
            *step,
        ),
        K::Mamba2GateNorm {
            width,
            di,
            groups,
            eps,
        } => norm::gate_norm(e, f, *width, *di, *groups, *eps),
        K::Mamba1Conv { di, k, bias, step } => conv::mamba1(e, f, *di, *k, *bias, *step),
        K::Mamba1Scan {
            heads,
            head_dim,
            state,
            dt_rank,
            dt_min,
            step,
        } => mamba1::scan(
            e,
            f,
            &mamba1::ScanShape {
                heads: *heads,
                head_dim: *head_dim,
                state: *state,
                dt_rank: *dt_rank,
            },
            *dt_min,
            *step,
        ),
    }
}

/// Rejects symbols that are not C identifiers and sizes that no program can mean (zero
/// sizes, groups that do not divide, a grouped-query ratio that is not whole, …).
pub(crate) fn validate(kernel: &Kernel) -> Result<(), CodegenError> {
    let invalid = |reason: String| CodegenError::InvalidKernel {
        symbol: kernel.symbol.clone(),
        reason,
    };
    let symbol = &kernel.symbol;
    let identifier = !symbol.is_empty()
        && !symbol.starts_with(|c: char| c.is_ascii_digit())
        && symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Err(invalid(
            "the symbol must be a C identifier ([A-Za-z_][A-Za-z0-9_]*)".into(),
        ));
    }
    check_sizes(&kernel.kind).map_err(invalid)
}

fn check_sizes(kind: &KernelKind) -> Result<(), String> {
    use KernelKind as K;
    let positive = |what: &str, n: usize| {
        if n == 0 {
            Err(format!("{what} must be positive"))
        } else {
            Ok(())
        }
    };
    let divides = |what: &str, part: usize, whole: usize| {
        if part == 0 || !whole.is_multiple_of(part) {
            Err(format!("{what} ({part}) must divide {whole}"))
        } else {
            Ok(())
        }
    };
    let weight = |elem: Elem| {
        if elem == Elem::I64 {
            Err("weights must be f32, bf16 or f16, not i64".to_string())
        } else {
            Ok(())
        }
    };
    match kind {
        K::Embedding { hidden, elem } => positive("hidden", *hidden).and(weight(*elem)),
        K::RmsNorm { d, groups, .. } => positive("d", *d).and(divides("groups", *groups, *d)),
        K::AddRmsNorm { d, .. } => positive("d", *d),
        K::ConcatRmsNorm { da, db, .. } | K::ConcatRmsScale { da, db, .. } => {
            positive("da + db", da + db)
        }
        K::RowScale { n } => positive("n", *n),
        K::Binary { n, .. } => positive("n", *n),
        K::Gemv {
            k,
            rows,
            elem,
            row_stride,
            ..
        } => {
            positive("k", *k)?;
            if row_stride.is_some_and(|ld| ld < *k) {
                return Err(format!("row stride {row_stride:?} is shorter than k = {k}"));
            }
            positive("the number of parts", rows.len())?;
            weight(*elem)
        }
        K::Epilogue { n, op, .. } => {
            positive("n", *n)?;
            match op {
                EpilogueOp::Gate(_) => divides("2", 2, *n),
                EpilogueOp::Rope {
                    heads, head_dim, ..
                } => {
                    divides("2", 2, *head_dim)?;
                    if heads * head_dim != *n {
                        return Err(format!("RoPE heads·head_dim = {} ≠ n", heads * head_dim));
                    }
                    positive("head_dim", *head_dim)
                }
                _ => Ok(()),
            }
        }
        K::KvWrite { heads, head_dim } => positive("heads", *heads).and(positive("hd", *head_dim)),
        K::Softmax { .. } => Ok(()),
        K::AttentionDecode {
            heads,
            kv_heads,
            head_dim,
            ..
        } => {
            positive("head_dim", *head_dim)?;
            positive("heads", *heads)?;
            divides("kv_heads", *kv_heads, *heads)
        }
        K::Mamba2Conv {
            width, di, cd, k, ..
        } => {
            positive("cd", *cd)?;
            positive("k", *k)?;
            wide_enough(*width, di + cd)
        }
        K::Mamba2Scan {
            width,
            heads,
            head_dim,
            groups,
            state,
            ..
        } => {
            positive("head_dim", *head_dim)?;
            positive("state", *state)?;
            positive("heads", *heads)?;
            divides("groups", *groups, *heads)?;
            let di = heads * head_dim;
            wide_enough(*width, 2 * di + 2 * groups * state + heads)
        }
        K::Mamba2GateNorm {
            width, di, groups, ..
        } => {
            positive("di", *di)?;
            divides("groups", *groups, *di)?;
            wide_enough(*width, *di)
        }
        K::Mamba1Conv { di, k, .. } => positive("di", *di).and(positive("k", *k)),
        K::Mamba1Scan {
            heads,
            head_dim,
            state,
            ..
        } => positive("heads", *heads)
            .and(positive("head_dim", *head_dim))
            .and(positive("state", *state)),
    }
}

fn wide_enough(width: usize, needed: usize) -> Result<(), String> {
    if width < needed {
        Err(format!(
            "width {width} is smaller than the {needed} columns the kernel reads"
        ))
    } else {
        Ok(())
    }
}
