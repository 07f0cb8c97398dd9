//! Matrix-vector products for one-row (decode) inputs: the kernel that streams the weights,
//! so decode runs at the speed of this loop.
//!
//! On the host each grid iteration computes [`Frame::block`] rows of one part together, one
//! from each of `block` contiguous stripes of the range (see [`strided_blocks`]): every
//! `VW`-chunk of `x` is loaded once and multiplied into all of them, each row keeps its own
//! accumulator, and bf16/f16 weights are widened to f32 in registers (bf16: 16 values read
//! as eight 32-bit lanes whose shifted and masked halves are the even and odd elements,
//! multiplied by `x`'s even and odd elements; f16: `extf`), and bf16 rows are prefetched
//! into L2 2 KiB ahead of the loads ([`ahead`]). On the GPU a warp computes one
//! row ([`warp_rows`]): its
//! loads of the row are one coalesced stretch, and shuffles add the lanes' sums.

use super::emit::{Emitter, V, VW};
use super::rows::{dots, load_f32, load_f32_aligned};
use super::warp::{first_lane, team_stack, team_sums};
use super::{Batch, Frame, Target, WARP};
use melior::dialect::arith::CmpiPredicate;
use zambac_engine::Elem;
use zambac_engine::Role;

/// `VW`-chunks of each row per loop iteration, each with its own accumulator. With
/// [`super::GEMV_ROWS`] rows per block, one chunk per row already gives eight independent
/// FMA chains; more unrolling (LLVM unrolls this loop again) only adds spills.
const UNROLL: usize = 1;

/// How far ahead (in elements) the host loop prefetches each weight row into L2: 2 KiB of
/// bf16 rows; none for other element types. One Zen 4 VM, the Zamba2-1.2B bf16 decode's
/// Gemv kernels per token (`bench --profile`, six alternating runs, 2026-12-05): 68–95 ms,
/// median 76, against 74–99, median 86, without; into L1 (`prefetcht0`) the same distance
/// lost (110–121 against 78–88 ms per token), as every distance did in an earlier session.
/// In a slower minute (five rounds, none / 2 KiB / 4 KiB): medians 97.2 / 95.0 / 95.5 ms.
/// f32 rows 2 KiB ahead: 181 / 126 / 117 / 178 / 178 ms without against 181 / 122 / 118 /
/// 181 / 175 with — nothing, so f32 rows are not prefetched. One prefetch per 64-byte line
/// of each row ([`dots`] reads a line per iteration), where a prefetch per 32-byte chunk
/// before issued every line's twice: the 100M bf16 engine's Gemv per token (five
/// alternating runs) 6.63–7.17 ms, median 6.98, against 6.06–7.18, median 6.44; the 1.2B's
/// unchanged within the noise (68–103 against 68–97 ms).
fn ahead(elem: Elem) -> usize {
    match elem {
        Elem::Bf16 => 1024,
        _ => 0,
    }
}

/// One part of a Gemv: its weight, output and first grid index.
#[derive(Clone, Copy)]
struct Part<'c> {
    w: V<'c>,
    y: V<'c>,
    first: usize,
    rows: usize,
}

/// The operands shared by every row block.
#[derive(Clone, Copy)]
struct Shape<'c> {
    x: V<'c>,
    k: usize,
    /// Elements between consecutive weight rows (`k` unless a window of a wider weight).
    ld: usize,
    elem: Elem,
    accumulate: bool,
}

/// [`zambac_engine::KernelKind::Gemv`].
pub(crate) fn gemv<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    k: usize,
    rows: &[usize],
    elem: Elem,
    accumulate: bool,
    ld: usize,
) {
    let shape = Shape {
        x: f.view(Role::X),
        k,
        ld,
        elem,
        accumulate,
    };
    let mut first = 0;
    let parts: Vec<Part<'c>> = rows
        .iter()
        .enumerate()
        .map(|(q, &rows)| {
            let part = Part {
                w: f.view(Role::part_w(q)),
                y: f.view(Role::part_y(q)),
                first,
                rows,
            };
            first += rows;
            part
        })
        .collect();
    if f.gpu_schedule {
        warp_rows(e, f, &shape, &parts);
        return;
    }
    if f.block == 1 {
        single_row(e, &shape, &parts, f.item);
        return;
    }
    strided_blocks(e, f, &shape, &parts);
}

/// The host schedule. The rows of a part that fall in `[begin, end)` are cut into `block`
/// equal, contiguous stripes of `stripe` rows plus a few leftover rows; block `b` computes row
/// `b` of every stripe. Each of the `block` weight streams thus walks consecutive rows —
/// consecutive memory — for the whole range, which keeps the hardware prefetchers running;
/// taking `block` adjacent rows instead restarts every stream after one row (8 KiB of bf16),
/// which measured 10–15% slower. Iterations are numbered `(item − begin) / block`; the parts'
/// stripe blocks take the first numbers in part order, and the next number computes every
/// leftover row. There are always enough numbers: a leftover row means the range is not a
/// multiple of `block`, so it has one iteration more than there are full stripe blocks.
fn strided_blocks<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    shape: &Shape<'c>,
    parts: &[Part<'c>],
) {
    let block = f.block;
    let ordinal = e.divui(e.subi(f.item, f.begin), e.index(block as i64));
    let mut taken = e.index(0);
    let mut leftovers = Vec::with_capacity(parts.len());
    for part in parts {
        let lo = e.maxsi(f.begin, e.index(part.first as i64));
        let hi = e.minsi(f.end, e.index((part.first + part.rows) as i64));
        let count = e.maxsi(e.subi(hi, lo), e.index(0));
        let stripe = e.divui(count, e.index(block as i64));
        let mine = e.subi(ordinal, taken);
        let inside = e.andi(
            e.cmpi(CmpiPredicate::Sge, mine, e.index(0)),
            e.cmpi(CmpiPredicate::Slt, mine, stripe),
        );
        e.when(inside, |e| {
            let first = e.addi(e.subi(lo, e.index(part.first as i64)), mine);
            let rows: Vec<V<'c>> = (0..block)
                .map(|i| e.addi(first, e.muli(stripe, e.index(i as i64))))
                .collect();
            row_block(e, shape, part, &rows);
        });
        taken = e.addi(taken, stripe);
        leftovers.push((e.addi(lo, e.mul_k(stripe, block)), hi));
    }
    e.when(e.cmpi(CmpiPredicate::Eq, ordinal, taken), |e| {
        for (part, (from, to)) in parts.iter().zip(&leftovers) {
            e.for_(*from, *to, e.index(1), &[], |e, row, _| {
                let local = e.subi(row, e.index(part.first as i64));
                row_block(e, shape, part, &[local]);
                vec![]
            });
        }
    });
}

/// Sequences of a batched Gemv ([`super::Variant::Batched`]) whose sums a warp forms in one
/// pass over its weight row: `VW` accumulators per sequence per lane, 32 for 4 sequences.
/// Larger batches take several passes, the later ones reading the row from cache.
pub(crate) const BATCH_TILE: usize = 4;

/// f32 elements of private memory a batched Gemv needs on `target` (the host run of the
/// GPU schedule keeps every lane's partials of a pass).
pub(crate) fn batched_stack(target: Target) -> usize {
    match target {
        Target::HostWithGpuSchedule => team_stack(WARP, BATCH_TILE),
        _ => 0,
    }
}

/// The GPU schedule: the warp of grid index `row` computes that row. The row is read in
/// rounds of `32·VW` elements; in each, lane `l` takes elements `l, l + 32, …, l + 32·(VW−1)`,
/// so each of the warp's load instructions reads 32 consecutive elements — 128 bytes of f32,
/// 64 of bf16, whole sectors — whatever the row's alignment; then the elements past the last
/// whole round one apiece. [`team_sums`] adds the 32 partial sums and the first lane stores
/// the row. (Before, lane `l` took the `VW`-chunk `l` of each round: the loads of a chunk,
/// which the backend cannot widen without knowing the alignment, became `VW` scalar loads
/// each touching 32 sectors, one element of each.)
///
/// The batched form does the same for [`BATCH_TILE`] sequences per pass over the row: each
/// weight element loaded once is multiplied into every sequence's accumulators, and each
/// sequence's partials are formed, folded and summed over the warp in exactly the order of
/// the single form — so every sequence gets the bits it gets alone.
fn warp_rows<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, shape: &Shape<'c>, parts: &[Part<'c>]) {
    let row = f.item;
    let one = |e: &Emitter<'c, '_>, part: &Part<'c>| {
        let local = e.subi(row, e.index(part.first as i64));
        let base = e.mul_k(local, shape.ld);
        match &f.batch {
            None => {
                let x = [e.index(0)];
                let sums = team_sums(e, f, 1, |e, lane| lane_dots(e, shape, part, base, &x, lane));
                store_row(e, f, shape, part, (local, sums[0]), None);
            }
            Some(batch) => batched_row(e, f, shape, part, (local, base), batch),
        }
    };
    if let [part] = parts {
        one(e, part);
        return;
    }
    for part in parts {
        e.when(contains(e, part, row, 1), |e| one(e, part));
    }
}

/// `y[at] (+)= sum` in the warp's first lane (and only for a real sequence, `real`).
fn store_row<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    shape: &Shape<'c>,
    part: &Part<'c>,
    (at, sum): (V<'c>, V<'c>),
    real: Option<V<'c>>,
) {
    let first = first_lane(e, f);
    let store = match real {
        Some(real) => e.andi(first, real),
        None => first,
    };
    e.when(store, |e| {
        let mut sum = sum;
        if shape.accumulate {
            sum = e.addf(e.load(part.y, at), sum);
        }
        e.store(sum, part.y, at);
    });
}

/// Row `local` (starting at element `base` of the weight) for every sequence of `batch`,
/// [`BATCH_TILE`] per pass; a pass past the last sequence recomputes the last one and
/// stores nothing for it.
fn batched_row<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    shape: &Shape<'c>,
    part: &Part<'c>,
    (local, base): (V<'c>, V<'c>),
    batch: &Batch<'c>,
) {
    let step = e.index(BATCH_TILE as i64);
    e.for_(e.index(0), batch.sequences, step, &[], |e, tile, _| {
        let last = e.subi(batch.sequences, e.index(1));
        let seqs: Vec<(V<'c>, V<'c>)> = (0..BATCH_TILE)
            .map(|j| {
                let b = e.add_k(tile, j);
                (e.minsi(b, last), e.cmpi(CmpiPredicate::Sle, b, last))
            })
            .collect();
        let xs: Vec<V<'c>> = seqs
            .iter()
            .map(|(b, _)| e.muli(*b, batch.x_stride))
            .collect();
        let sums = team_sums(e, f, BATCH_TILE, |e, lane| {
            lane_dots(e, shape, part, base, &xs, lane)
        });
        for ((b, real), sum) in seqs.iter().zip(sums) {
            let at = e.addi(e.muli(*b, batch.y_stride), local);
            store_row(e, f, shape, part, (at, sum), Some(*real));
        }
        vec![]
    });
}

/// One lane's share of `x · W[row]` for the row starting at `base`, for each input that
/// starts at element `xs[j]` of `x` (see [`warp_rows`]): each weight element is loaded once
/// and multiplied into every input's accumulators, and each input's sum is formed as for
/// that input alone.
fn lane_dots<'c>(
    e: &Emitter<'c, '_>,
    shape: &Shape<'c>,
    part: &Part<'c>,
    base: V<'c>,
    xs: &[V<'c>],
    lane: V<'c>,
) -> Vec<V<'c>> {
    let round = WARP * VW;
    let rounds = shape.k / round;
    let n = xs.len();
    let mut sums = vec![e.f32(0.0); n];
    if rounds > 0 {
        // The lane's chunk of each round; one accumulator per element of the chunk and
        // input: VW independent FMA chains each.
        let chunk = e.mul_k(lane, VW);
        let zero = vec![e.f32(0.0); VW * n];
        let pass = |e: &Emitter<'c, '_>, align: Option<u64>| {
            e.for_k(0, rounds, 1, &zero, |e, r, accs| {
                let first = e.addi(e.mul_k(r, round), chunk);
                let elements = |e: &Emitter<'c, '_>, mem: V<'c>, at: V<'c>, elem: Elem| {
                    let values = load_f32_aligned(e, mem, at, VW, elem, align);
                    (0..VW).map(|i| e.extract(values, i)).collect::<Vec<_>>()
                };
                let ws = elements(e, part.w, e.addi(base, first), shape.elem);
                let mut next = accs.to_vec();
                for (j, x0) in xs.iter().enumerate() {
                    let xv = elements(e, shape.x, e.addi(*x0, first), Elem::F32);
                    for i in 0..VW {
                        next[j * VW + i] = e.fma(xv[i], ws[i], accs[j * VW + i]);
                    }
                }
                next
            })
        };
        // Rows and inputs at 16-byte boundaries (the usual case: weights and buffers are
        // allocated aligned, rows and offsets are whole multiples) are read with 16-byte
        // vector loads; others element by element — the same additions either way.
        let aligned = aligned16(e, shape, part, base, xs);
        let types = vec![e.f32_t(); VW * n];
        let accs = e.if_(aligned, &types, |e| pass(e, Some(16)), |e| pass(e, None));
        for (j, sum) in sums.iter_mut().enumerate() {
            let own = &accs[j * VW..(j + 1) * VW];
            *sum = own[1..].iter().fold(own[0], |t, a| e.addf(t, *a));
        }
    }
    let tail = rounds * round;
    if tail < shape.k {
        let x_at = |e: &Emitter<'c, '_>, j: usize, at: V<'c>| e.load(shape.x, e.addi(xs[j], at));
        let from = e.add_k(lane, tail);
        sums = e.for_(
            from,
            e.index(shape.k as i64),
            e.index(WARP as i64),
            &sums,
            |e, at, acc| {
                let wv = e.extract(load_f32(e, part.w, e.addi(base, at), 1, shape.elem), 0);
                (0..n).map(|j| e.fma(x_at(e, j, at), wv, acc[j])).collect()
            },
        );
    }
    sums
}

/// Whether the weight row at element `base` of `part`'s weight and every input at `xs[j]`
/// of `x` start at a multiple of 16 bytes (then so does every lane's chunk of a round:
/// rounds and chunks are whole multiples of 16 bytes).
fn aligned16<'c>(
    e: &Emitter<'c, '_>,
    shape: &Shape<'c>,
    part: &Part<'c>,
    base: V<'c>,
    xs: &[V<'c>],
) -> V<'c> {
    let misaligned = |e: &Emitter<'c, '_>, mem: V<'c>, at: V<'c>, bytes: usize| {
        let address = e.addi(e.address(mem), e.mul_k(at, bytes));
        e.remui(address, e.index(16))
    };
    let w_bytes = match shape.elem {
        Elem::Bf16 | Elem::F16 => 2,
        _ => 4,
    };
    let mut off = misaligned(e, part.w, base, w_bytes);
    for x0 in xs {
        off = e.ori(off, misaligned(e, shape.x, *x0, 4));
    }
    e.cmpi(CmpiPredicate::Eq, off, e.index(0))
}

/// Whether grid rows `[row, row + n)` all belong to `part`.
fn contains<'c>(e: &Emitter<'c, '_>, part: &Part<'c>, row: V<'c>, n: usize) -> V<'c> {
    let starts = e.cmpi(CmpiPredicate::Sge, row, e.index(part.first as i64));
    let ends = e.cmpi(
        CmpiPredicate::Sle,
        e.add_k(row, n),
        e.index((part.first + part.rows) as i64),
    );
    e.andi(starts, ends)
}

/// Grid row `row` alone, in whichever part holds it.
fn single_row<'c>(e: &Emitter<'c, '_>, shape: &Shape<'c>, parts: &[Part<'c>], row: V<'c>) {
    if let [part] = parts {
        row_block(e, shape, part, &[row]);
        return;
    }
    for part in parts {
        e.when(contains(e, part, row, 1), |e| {
            let local = e.subi(row, e.index(part.first as i64));
            row_block(e, shape, part, &[local]);
        });
    }
}

/// `y[row] (+)= x · W[row]` for each of the part's (local) `rows`, sharing the loads of `x`.
fn row_block<'c>(e: &Emitter<'c, '_>, shape: &Shape<'c>, part: &Part<'c>, rows: &[V<'c>]) {
    let bases: Vec<V<'c>> = rows.iter().map(|row| e.mul_k(*row, shape.ld)).collect();
    let x = (shape.x, e.index(0));
    let sums = dots(
        e,
        x,
        (part.w, shape.elem),
        &bases,
        (shape.k, ahead(shape.elem)),
        UNROLL,
    );
    for (row, mut sum) in rows.iter().zip(sums) {
        if shape.accumulate {
            sum = e.addf(e.load(part.y, *row), sum);
        }
        e.store(sum, part.y, *row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rows::main_step;
    use zambac_engine::{GEMV_LANES, gemv_main_step};

    /// The host Gemv sums each row as the engine contract says (`zambac_engine::
    /// gemv_main_step`): batched decode reproduces that order to give each sequence the bits
    /// it gets alone, so a change here must change the contract (and the runtime) with it.
    #[test]
    fn the_host_gemv_sums_rows_in_the_contracts_order() {
        assert_eq!(VW, GEMV_LANES);
        assert_eq!(UNROLL, 1, "the contract has one accumulator per row");
        for elem in [Elem::F32, Elem::Bf16, Elem::F16] {
            assert_eq!(
                main_step(elem, ahead(elem), UNROLL),
                gemv_main_step(elem),
                "{elem}"
            );
        }
    }
}
