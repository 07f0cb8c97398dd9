//! Attention over a KV cache: one token ([`zambac_engine::KernelKind::AttentionDecode`], one
//! head per grid index) and a prompt of any length
//! ([`zambac_engine::KernelKind::AttentionPrefill`], one block of queries of one head per
//! grid index).
//!
//! Neither has a workspace for the scores, so the softmax is computed online (flash
//! attention): keys are taken in blocks, each block's scores are formed, and the running
//! maximum `m`, the running sum `l` and the output accumulator are rescaled when the maximum
//! grows. In decode the accumulator lives in `out` itself (one row of `head_dim` floats,
//! cached), which keeps register use independent of `head_dim` on the GPU.

use super::emit::{Emitter, V, VW};
use super::rows::{dots, for_chunks, load_f32, load_scalar_f32};
use super::warp::{Combine, first_lane, warp_reduce, warp_sum};
use super::{Frame, WARP};
use melior::dialect::arith::{CmpfPredicate, CmpiPredicate};
use zambac_engine::Elem;
use zambac_engine::Role;

/// Keys per block of the online softmax: one vector of scores.
const KEYS: usize = VW;

/// The attention an invocation computes: its heads, their size, the softmax scale and how
/// the caches are stored.
pub(crate) struct Heads {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    kv: Elem,
}

impl Heads {
    pub(crate) fn new(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f64,
        kv: Elem,
    ) -> Heads {
        Heads {
            heads,
            kv_heads,
            head_dim,
            scale,
            kv,
        }
    }
}

/// What every key block reads.
struct Head<'c> {
    q: (V<'c>, V<'c>),
    k: V<'c>,
    v: V<'c>,
    out: (V<'c>, V<'c>),
    kv_base: V<'c>,
    head_dim: usize,
    scale: f32,
    kv: Elem,
}

/// [`zambac_engine::KernelKind::AttentionDecode`].
pub(crate) fn decode<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, a: &Heads) {
    let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
    let (q, k, v, out) = (
        f.view(Role::Q),
        f.view(Role::K),
        f.view(Role::V),
        f.view(Role::Out),
    );
    let [pos, capacity] = f.ints[..] else {
        unreachable!("AttentionDecode has two integer arguments")
    };
    let kv_head = e.divui(f.item, e.index((heads / kv_heads) as i64));
    let row = e.mul_k(f.item, head_dim);
    let head = Head {
        q: (q, row),
        k,
        v,
        out: (out, row),
        kv_base: e.mul_k(e.muli(kv_head, capacity), head_dim),
        head_dim,
        scale: a.scale as f32,
        kv: a.kv,
    };
    let keys = e.minsi(e.add_k(pos, 1), capacity);
    if f.gpu_schedule && split_keys(head_dim) {
        decode_warp(e, f, &head, keys);
        return;
    }
    if f.lanes > 1 {
        // The GPU schedule: a thread per output element, each computing every score (the
        // same loads across the head's threads) and accumulating its element.
        let d = f.lane;
        let blocks = e.mul_k(e.divui(keys, e.index(KEYS as i64)), KEYS);
        let start = [e.f32(f32::NEG_INFINITY), e.f32(0.0), e.f32(0.0)];
        let state = e.for_(
            e.index(0),
            blocks,
            e.index(KEYS as i64),
            &start,
            |e, j, state| key_block_lane(e, &head, j, KEYS, state, d),
        );
        let state = e.for_(blocks, keys, e.index(1), &state, |e, j, state| {
            key_block_lane(e, &head, j, 1, state, d)
        });
        e.store(e.divf(state[2], state[1]), out, e.addi(row, d));
        return;
    }
    attend(e, &head, keys);
}

/// `out = softmax(q·Kᵀ·scale)·V` over the first `keys` cached keys of `head`, the output
/// row accumulated in place.
fn attend<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, keys: V<'c>) {
    let (out, row) = head.out;
    let hd = head.head_dim;
    for_chunks(e, hd, 1, |e, offset, width| {
        e.vstore(e.f32_splat(0.0, width), out, e.addi(row, offset));
    });
    let blocks = e.mul_k(e.divui(keys, e.index(KEYS as i64)), KEYS);
    let start = [e.f32(f32::NEG_INFINITY), e.f32(0.0)];
    let state = e.for_(
        e.index(0),
        blocks,
        e.index(KEYS as i64),
        &start,
        |e, j, state| key_block(e, head, j, KEYS, state),
    );
    let state = e.for_(blocks, keys, e.index(1), &state, |e, j, state| {
        key_block(e, head, j, 1, state)
    });
    let sum = state[1];
    for_chunks(e, hd, 1, |e, offset, width| {
        let at = e.addi(row, offset);
        let o = load_f32(e, out, at, width, Elem::F32);
        e.vstore(e.divf(o, e.splat(sum, width)), out, at);
    });
}

/// Whether decode attention's GPU schedule splits the keys between a warp's lanes
/// ([`decode_warp`]): when the head dim is whole vectors; else a thread per output element.
pub(crate) fn split_keys(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(VW)
}

/// Private f32 elements of [`decode_warp`]: a thread's accumulator on the GPU; on the host
/// the warp's exchange buffer, then each lane's running max, sum and accumulator.
pub(crate) fn decode_warp_stack(head_dim: usize, on_gpu: bool) -> usize {
    if on_gpu {
        head_dim
    } else {
        WARP + WARP * (head_dim + 2)
    }
}

/// Decode attention's GPU schedule (flash-decoding within a warp): the head's warp splits
/// the keys, lane `l` taking keys `l, l + 32, …` with its own running max and sum (in
/// registers) and output accumulator (in its private buffer: a 128-wide accumulator in
/// registers spills); the warp then combines them — the max of the maxima, each lane's sum
/// and accumulator rescaled to it and summed ([`warp_reduce`]) — and the first lane stores
/// the row. On the host the lanes run one after another, each leaving its state in the
/// iteration's buffer for the combine.
fn decode_warp<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, head: &Head<'c>, keys: V<'c>) {
    let hd = head.head_dim;
    let (q, qrow) = head.q;
    let Some(buffer) = f.stack else {
        unreachable!("decode attention's GPU schedule has a stack buffer")
    };
    let width = hd + 2;
    // Where lane `lane`'s max, sum and accumulator live in the buffer: the thread's own
    // buffer on the GPU (max and sum stay in registers there), a slice per lane on the host.
    let slot = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| {
        if f.warp_threads {
            e.index((i - 2) as i64)
        } else {
            e.add_k(e.mul_k(lane, width), WARP + i)
        }
    };
    let lane_state = |e: &Emitter<'c, '_>, lane: V<'c>| -> Vec<V<'c>> {
        let o = slot(e, lane, 2);
        e.for_k(0, hd, VW, &[], |e, c, _| {
            e.vstore(e.f32_splat(0.0, VW), buffer, e.addi(o, c));
            vec![]
        });
        let init = [e.f32(f32::NEG_INFINITY), e.f32(0.0)];
        e.for_(lane, keys, e.index(WARP as i64), &init, |e, j, st| {
            let base = e.addi(head.kv_base, e.mul_k(j, hd));
            // Loops over the head dim, not unrolled chunks: unrolled, a 128-wide head's
            // loads are all scheduled first and spill.
            let acc = e.for_k(0, hd, VW, &[e.f32_splat(0.0, VW)], |e, c, acc| {
                let qv = load_f32(e, q, e.addi(qrow, c), VW, Elem::F32);
                let kv = load_f32(e, head.k, e.addi(base, c), VW, head.kv);
                vec![e.fma(qv, kv, acc[0])]
            })[0];
            let score = e.mulf(e.reduce("add", acc), e.f32(head.scale));
            let max = e.maxf(st[0], score);
            let correction = e.math("exp", e.subf(st[0], max));
            let weight = e.math("exp", e.subf(score, max));
            e.for_k(0, hd, VW, &[], |e, c, _| {
                let at = e.addi(o, c);
                let v = load_f32(e, head.v, e.addi(base, c), VW, head.kv);
                let kept = e.mulf(
                    load_f32(e, buffer, at, VW, Elem::F32),
                    e.splat(correction, VW),
                );
                e.vstore(e.fma(e.splat(weight, VW), v, kept), buffer, at);
                vec![]
            });
            vec![max, e.fma(st[1], correction, weight)]
        })
    };
    let (out, row) = head.out;
    let element =
        |e: &Emitter<'c, '_>, lane: V<'c>, d: V<'c>| e.load(buffer, e.addi(slot(e, lane, 2), d));
    if f.warp_threads {
        let st = lane_state(e, f.lane);
        combine_lanes(e, f, out, row, hd, |_, _| (st[0], st[1]), element);
        return;
    }
    e.for_k(0, WARP, 1, &[], |e, lane, _| {
        let st = lane_state(e, lane);
        e.store(st[0], buffer, slot(e, lane, 0));
        e.store(st[1], buffer, slot(e, lane, 1));
        vec![]
    });
    combine_lanes(
        e,
        f,
        out,
        row,
        hd,
        |e, lane| {
            (
                e.load(buffer, slot(e, lane, 0)),
                e.load(buffer, slot(e, lane, 1)),
            )
        },
        element,
    );
}

/// The combine of [`decode_warp`]: `stats(lane)` gives a lane's max and sum, `element(lane,
/// d)` element `d` of its accumulator; the first lane stores `out[row + d]`.
fn combine_lanes<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    out: V<'c>,
    row: V<'c>,
    hd: usize,
    stats: impl Fn(&Emitter<'c, '_>, V<'c>) -> (V<'c>, V<'c>),
    element: impl Fn(&Emitter<'c, '_>, V<'c>, V<'c>) -> V<'c>,
) {
    let max = warp_reduce(e, f, Combine::Max, |e, lane| stats(e, lane).0);
    // A lane that took no key has max −∞ and weight exp(−∞) = 0.
    let scale = |e: &Emitter<'c, '_>, lane: V<'c>| e.math("exp", e.subf(stats(e, lane).0, max));
    let sum = warp_sum(e, f, |e, lane| e.mulf(stats(e, lane).1, scale(e, lane)));
    let first = first_lane(e, f);
    // A loop, not `hd` unrolled sums: unrolled, the GPU keeps every lane's element live.
    e.for_k(0, hd, 1, &[], |e, d, _| {
        let o = warp_sum(e, f, |e, lane| e.mulf(element(e, lane, d), scale(e, lane)));
        e.when(first, |e| {
            e.store(e.divf(o, sum), out, e.addi(row, d));
        });
        vec![]
    });
}

/// One step of the online softmax over keys `[first, first + n)`: the new running max, the
/// factor that rescales what was accumulated before, each key's weight, the new sum, and
/// the keys' row offsets in the cache.
struct Step<'c> {
    max: V<'c>,
    correction: V<'c>,
    weights: Vec<V<'c>>,
    sum: V<'c>,
    bases: Vec<V<'c>>,
}

fn softmax_step<'c>(
    e: &Emitter<'c, '_>,
    head: &Head<'c>,
    first: V<'c>,
    n: usize,
    (max, sum): (V<'c>, V<'c>),
) -> Step<'c> {
    let hd = head.head_dim;
    let bases: Vec<V<'c>> = (0..n)
        .map(|b| e.addi(head.kv_base, e.mul_k(e.add_k(first, b), hd)))
        .collect();
    let scores = if n == VW && hd >= VW {
        block_scores(e, head, &bases)
    } else {
        e.vector_of(&dots(e, head.q, (head.k, head.kv), &bases, hd, 1))
    };
    let scores = e.mulf(scores, e.f32_splat(head.scale, n));
    let new_max = e.maxf(max, e.reduce("maximumf", scores));
    let correction = e.math("exp", e.subf(max, new_max));
    let weights = e.math("exp", e.subf(scores, e.splat(new_max, n)));
    let new_sum = e.fma(sum, correction, e.reduce("add", weights));
    Step {
        max: new_max,
        correction,
        weights: (0..n).map(|b| e.extract(weights, b)).collect(),
        sum: new_sum,
        bases,
    }
}

/// Folds keys `[first, first + n)` into the running `(max, sum)` and the accumulator.
fn key_block<'c>(
    e: &Emitter<'c, '_>,
    head: &Head<'c>,
    first: V<'c>,
    n: usize,
    state: &[V<'c>],
) -> Vec<V<'c>> {
    let hd = head.head_dim;
    let step = softmax_step(e, head, first, n, (state[0], state[1]));
    let (out, row) = head.out;
    for_chunks(e, hd, 1, |e, offset, width| {
        let at = e.addi(row, offset);
        let mut o = e.mulf(
            load_f32(e, out, at, width, Elem::F32),
            e.splat(step.correction, width),
        );
        for (b, base) in step.bases.iter().enumerate() {
            let value = load_f32(e, head.v, e.addi(*base, offset), width, head.kv);
            o = e.fma(e.splat(step.weights[b], width), value, o);
        }
        e.vstore(o, out, at);
    });
    vec![step.max, step.sum]
}

/// As [`key_block`] for the thread of output element `d` (the GPU schedule): the
/// accumulator is that one element, carried in a register (`state[2]`).
fn key_block_lane<'c>(
    e: &Emitter<'c, '_>,
    head: &Head<'c>,
    first: V<'c>,
    n: usize,
    state: &[V<'c>],
    d: V<'c>,
) -> Vec<V<'c>> {
    let step = softmax_step(e, head, first, n, (state[0], state[1]));
    let mut o = e.mulf(state[2], step.correction);
    for (b, base) in step.bases.iter().enumerate() {
        let value = e.extract(load_f32(e, head.v, e.addi(*base, d), 1, head.kv), 0);
        o = e.fma(step.weights[b], value, o);
    }
    vec![step.max, step.sum, o]
}

/// The scores `q · K[base_b]` of a full block of `VW` keys as one vector: one accumulator
/// per key over the head dim, then the accumulators summed into the lanes of one vector by
/// a tree of shuffles and adds (`VW − 1` adds) instead of a reduction per key.
fn block_scores<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, bases: &[V<'c>]) -> V<'c> {
    let hd = head.head_dim;
    let (q, row) = head.q;
    let main = hd / VW * VW;
    let zeros = vec![e.f32_splat(0.0, VW); bases.len()];
    let accs = e.for_k(0, main, VW, &zeros, |e, j, accs| {
        let qv = load_f32(e, q, e.addi(row, j), VW, Elem::F32);
        bases
            .iter()
            .zip(accs)
            .map(|(base, acc)| {
                let kv = load_f32(e, head.k, e.addi(*base, j), VW, head.kv);
                e.fma(qv, kv, *acc)
            })
            .collect()
    });
    let mut sums = lane_sums(e, accs);
    if main < hd {
        // The last columns, narrower than a vector: one reduction per key.
        let width = hd - main;
        let at = e.index(main as i64);
        let qv = load_f32(e, q, e.addi(row, at), width, Elem::F32);
        let tail: Vec<V<'c>> = bases
            .iter()
            .map(|base| {
                let kv = load_f32(e, head.k, e.addi(*base, at), width, head.kv);
                e.reduce("add", e.mulf(qv, kv))
            })
            .collect();
        sums = e.addf(sums, e.vector_of(&tail));
    }
    sums
}

/// `VW` vectors of `VW` lanes to one vector whose lane `i` is the sum of vector `i`'s lanes:
/// at each level, pairs are interleaved in blocks of `s` lanes and the two halves added.
fn lane_sums<'c>(e: &Emitter<'c, '_>, mut vs: Vec<V<'c>>) -> V<'c> {
    let mut s = 1;
    while vs.len() > 1 {
        let mask = |offset: usize| -> Vec<i64> {
            (0..VW)
                .map(|i| {
                    let (group, within) = (i / (2 * s) * 2 * s, i % (2 * s));
                    let from_b = within >= s;
                    let lane = group + within % s + offset;
                    (lane + if from_b { VW } else { 0 }) as i64
                })
                .collect()
        };
        let (lo, hi) = (mask(0), mask(s));
        vs = vs
            .chunks(2)
            .map(|pair| {
                let (a, b) = (pair[0], pair[1]);
                e.addf(e.shuffle(a, b, &lo), e.shuffle(a, b, &hi))
            })
            .collect();
        s *= 2;
    }
    vs[0]
}

/// Queries per prefill block: two vectors of lanes, each lane one query.
const QUERIES: usize = 2 * VW;
/// Query vectors of a block.
const QV: usize = QUERIES / VW;
/// The register blocking of the prefill's two products.
#[derive(Clone, Copy)]
pub(crate) struct Blocking {
    /// Keys whose scores one pass over the head dim forms (`QV · keys` accumulators).
    keys: usize,
    /// Head-dim columns one pass over a tile's keys accumulates (`QV · columns`).
    columns: usize,
    /// Keys per tile of the online softmax: whole groups of `keys`, so that the rounded-up
    /// span of a tile's groups never passes the tile's room in the stack buffer.
    tile: usize,
    /// Blocks of `QUERIES` queries one grid index computes, each tile of keys and values
    /// read once for all of them (from cache after the first).
    sub: usize,
}

impl Blocking {
    /// On the host, six keys or columns: 12 accumulators, which with the loads fit AVX2's
    /// 16 vector registers, and measured 15% faster than four and as fast as eight on Zen 4
    /// (100M engine, f32, 4096-token prefill: 720, 610 and 626 ms in attention). Four
    /// blocks of queries per grid index: one block streamed each head's keys and values
    /// from memory once per 16 queries, which held 16k-token prefills of the 100M engine to
    /// 134 GFLOP/s in attention against 165 at 4k. (The GPU schedule blocks nothing: a
    /// thread per query, [`prefill_row`].)
    pub(crate) fn new() -> Blocking {
        let (keys, columns, sub) = (6, 6, 4);
        Blocking {
            keys,
            columns,
            tile: 10 * keys,
            sub,
        }
    }

    /// Queries per grid index.
    fn queries(self) -> usize {
        self.sub * QUERIES
    }
}

/// [`zambac_engine::KernelKind::AttentionPrefill`]: grid index `h·rows + r` computes the
/// queries `r ..` of head `h` of [`Blocking::queries`] when `r` is a multiple of that, and
/// nothing otherwise, so every query is computed once whichever thread owns the first index.
/// Those queries are [`Blocking::sub`] blocks of `QUERIES`, which take each tile of keys in
/// turn, so that a tile is read from memory once for all of them.
///
/// A block is held transposed — lane `j` of every vector is query `r + j` — so both
/// products are broadcasts of one cached key or value element against a vector of queries:
/// `S[·, k] += Qᵀ[d] · K[k, d]` and `Oᵀ[d] += P[·, k] · V[k, d]`, with a few keys or columns
/// per pass held in registers ([`Blocking`]). Keys are taken in tiles up to the
/// block's last query; tiles above the causal diagonal are never visited, and inside the
/// diagonal tiles a key past a lane's own position scores −∞. Queries past the last row
/// repeat the last row and are not stored.
pub(crate) fn prefill<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, a: &Heads) {
    let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
    let [pos, capacity, rows] = f.ints[..] else {
        unreachable!("AttentionPrefill has three integer arguments")
    };
    if f.gpu_schedule {
        prefill_row(e, f, a, (pos, capacity, rows));
        return;
    }
    let blocking = Blocking::new();
    let head = e.divui(f.item, rows);
    let first = e.subi(f.item, e.muli(head, rows));
    let starts_block = e.cmpi(
        CmpiPredicate::Eq,
        e.remui(first, e.index(blocking.queries() as i64)),
        e.index(0),
    );
    let Some(stack) = f.stack else {
        unreachable!("AttentionPrefill has a stack buffer")
    };
    e.when(starts_block, |e| {
        let block = Block {
            q: f.view(Role::Q),
            k: f.view(Role::K),
            v: f.view(Role::V),
            out: f.view(Role::Out),
            head_dim,
            width: heads * head_dim,
            column: e.mul_k(head, head_dim),
            kv_base: e.muli(
                e.mul_k(e.divui(head, e.index((heads / kv_heads) as i64)), head_dim),
                capacity,
            ),
            first,
            last_row: e.subi(rows, e.index(1)),
            pos,
            stack,
            blocking,
            kv: a.kv,
        };
        prefill_item(e, &block, a.scale as f32);
    });
}

/// The GPU schedule of prompt attention: grid index `h·rows + r` is a thread of its own for
/// query `r` of head `h`, which runs the decode loop ([`key_block`]) over the keys up to its
/// position. Every grid index works (the host schedule's blocks of 16 queries would leave 15
/// of every 16 threads of a warp idle), the threads of a warp read the same key and value
/// rows at once, and nothing but the output row is kept.
fn prefill_row<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    a: &Heads,
    (pos, capacity, rows): (V<'c>, V<'c>, V<'c>),
) {
    let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
    let h = e.divui(f.item, rows);
    let r = e.subi(f.item, e.muli(h, rows));
    let kv_head = e.divui(h, e.index((heads / kv_heads) as i64));
    let row = e.addi(e.mul_k(r, heads * head_dim), e.mul_k(h, head_dim));
    let head = Head {
        q: (f.view(Role::Q), row),
        k: f.view(Role::K),
        v: f.view(Role::V),
        out: (f.view(Role::Out), row),
        kv_base: e.mul_k(e.muli(kv_head, capacity), head_dim),
        head_dim,
        scale: a.scale as f32,
        kv: a.kv,
    };
    let keys = e.minsi(e.addi(e.add_k(pos, 1), r), capacity);
    attend(e, &head, keys);
}

/// Private f32 elements of a prefill call: for each block, `Qᵀ`, `Oᵀ`, the running maximum
/// and sum and the causal limit of each query; and one tile of scores.
pub(crate) fn prefill_stack(head_dim: usize, blocking: Blocking) -> usize {
    blocking.sub * block_stack(head_dim) + blocking.tile * QUERIES
}

/// A block's part of the stack: `Qᵀ`, `Oᵀ` (`head_dim` rows each), then one row each of
/// running maxima, running sums and causal limits.
fn block_stack(head_dim: usize) -> usize {
    (2 * head_dim + 3) * QUERIES
}

/// What the work on one block of queries reads.
struct Block<'c> {
    q: V<'c>,
    k: V<'c>,
    v: V<'c>,
    out: V<'c>,
    head_dim: usize,
    /// Row width of `q` and `out`.
    width: usize,
    /// The head's first column in `q` and `out`.
    column: V<'c>,
    /// The KV head's first element in the caches.
    kv_base: V<'c>,
    /// The first row of the grid index's queries.
    first: V<'c>,
    last_row: V<'c>,
    pos: V<'c>,
    /// [`prefill_stack`] elements: `Qᵀ`, `Oᵀ`, the tile's scores.
    stack: V<'c>,
    blocking: Blocking,
    /// How the caches are stored.
    kv: Elem,
}

/// One block of `QUERIES` queries: its first row, and its parts of the stack.
struct Query<'c> {
    first: V<'c>,
    /// Keys the block attends: up to its last row's position.
    keys: V<'c>,
    qt: Part<'c>,
    ot: Part<'c>,
    /// Rows 0, 1, 2: running maxima, running sums, causal limits (as f32).
    stats: Part<'c>,
}

impl<'c> Query<'c> {
    fn new(e: &Emitter<'c, '_>, b: &Block<'c>, s: V<'c>) -> Query<'c> {
        let hd = b.head_dim;
        let first = e.addi(b.first, e.mul_k(s, QUERIES));
        let last = e.minsi(e.add_k(first, QUERIES - 1), b.last_row);
        let base = e.mul_k(s, block_stack(hd));
        Query {
            first,
            keys: e.add_k(e.addi(b.pos, last), 1),
            qt: Part(base),
            ot: Part(e.add_k(base, hd * QUERIES)),
            stats: Part(e.add_k(base, 2 * hd * QUERIES)),
        }
    }

    /// The row of lane `j` (the last row for lanes past it).
    fn row(&self, e: &Emitter<'c, '_>, b: &Block<'c>, j: usize) -> V<'c> {
        e.minsi(e.add_k(self.first, j), b.last_row)
    }

    /// Where lane `j`'s row of this head starts in `q` and `out`.
    fn row_base(&self, e: &Emitter<'c, '_>, b: &Block<'c>, j: usize) -> V<'c> {
        e.addi(e.mul_k(self.row(e, b, j), b.width), b.column)
    }

    /// Statistic `which` (0 maxima, 1 sums, 2 limits) of query vector `v`.
    fn stat(&self, e: &Emitter<'c, '_>, b: &Block<'c>, which: usize, v: usize) -> V<'c> {
        self.stats.load(e, b.stack, e.index(which as i64), v)
    }

    fn set_stat(&self, e: &Emitter<'c, '_>, b: &Block<'c>, which: usize, v: usize, x: V<'c>) {
        e.vstore(x, b.stack, self.stats.lanes(e, e.index(which as i64), v));
    }
}

/// Calls `body` with each block of the grid index that has a row.
fn for_blocks<'c>(e: &Emitter<'c, '_>, b: &Block<'c>, body: impl Fn(&Emitter<'c, '_>, &Query<'c>)) {
    e.for_k(0, b.blocking.sub, 1, &[], |e, s, _| {
        let q = Query::new(e, b, s);
        let any = e.cmpi(CmpiPredicate::Sle, q.first, b.last_row);
        e.when(any, |e| body(e, &q));
        vec![]
    });
}

fn prefill_item<'c>(e: &Emitter<'c, '_>, b: &Block<'c>, scale: f32) {
    let hd = b.head_dim;
    let bk = b.blocking;
    // Qᵀ, a zero Oᵀ, maxima −∞, sums 0 and each lane's causal limit, per block.
    for_blocks(e, b, |e, q| {
        let bases: Vec<V<'c>> = (0..QUERIES).map(|j| q.row_base(e, b, j)).collect();
        e.for_k(0, hd, 1, &[], |e, d, _| {
            for v in 0..QV {
                let lanes: Vec<V<'c>> = bases[v * VW..(v + 1) * VW]
                    .iter()
                    .map(|base| e.load(b.q, e.addi(*base, d)))
                    .collect();
                e.vstore(e.vector_of(&lanes), b.stack, q.qt.lanes(e, d, v));
                e.vstore(e.f32_splat(0.0, VW), b.stack, q.ot.lanes(e, d, v));
            }
            vec![]
        });
        for v in 0..QV {
            let limits: Vec<V<'c>> = (0..VW)
                .map(|lane| e.index_to_f32(e.addi(b.pos, q.row(e, b, v * VW + lane))))
                .collect();
            q.set_stat(e, b, 0, v, e.f32_splat(f32::NEG_INFINITY, VW));
            q.set_stat(e, b, 1, v, e.f32_splat(0.0, VW));
            q.set_stat(e, b, 2, v, e.vector_of(&limits));
        }
    });
    let last = e.minsi(e.add_k(b.first, bk.queries() - 1), b.last_row);
    let keys = e.add_k(e.addi(b.pos, last), 1);
    // Scores go to the one tile of scores after the blocks' parts.
    let p = Part(e.index((bk.sub * block_stack(hd)) as i64));
    e.for_(
        e.index(0),
        keys,
        e.index(bk.tile as i64),
        &[],
        |e, tile, _| {
            for_blocks(e, b, |e, q| {
                let in_reach = e.cmpi(CmpiPredicate::Slt, tile, q.keys);
                e.when(in_reach, |e| fold_tile(e, b, q, tile, p, scale));
            });
            vec![]
        },
    );
    for_blocks(e, b, |e, q| {
        let sums: Vec<V<'c>> = (0..QV).map(|v| q.stat(e, b, 1, v)).collect();
        let bases: Vec<V<'c>> = (0..QUERIES).map(|j| q.row_base(e, b, j)).collect();
        e.for_k(0, hd, 1, &[], |e, d, _| {
            for (v, sum) in sums.iter().enumerate() {
                let o = e.divf(q.ot.load(e, b.stack, d, v), *sum);
                for lane in 0..VW {
                    let j = v * VW + lane;
                    let row = e.add_k(q.first, j);
                    let inside = e.cmpi(CmpiPredicate::Sle, row, b.last_row);
                    let value = e.extract(o, lane);
                    e.when(inside, |e| {
                        e.store(value, b.out, e.addi(bases[j], d));
                    });
                }
            }
            vec![]
        });
    });
}

/// Folds the keys `tile ..` (up to a tile, within the block's reach) into block `q`: its
/// scores, the online softmax's rescaling, and the weighted values.
fn fold_tile<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    q: &Query<'c>,
    tile: V<'c>,
    p: Part<'c>,
    scale: f32,
) {
    let bk = b.blocking;
    let n = e.minsi(e.index(bk.tile as i64), e.subi(q.keys, tile));
    // Groups cover the tile's keys rounded up to whole groups; keys past the block's last
    // are read at that key and masked out by every lane's limit.
    let groups = e.divui(e.add_k(n, bk.keys - 1), e.index(bk.keys as i64));
    let span = e.mul_k(groups, bk.keys);
    let limits: Vec<V<'c>> = (0..QV).map(|v| q.stat(e, b, 2, v)).collect();
    let ctx = Tile {
        tile,
        last_key: e.subi(q.keys, e.index(1)),
        qt: q.qt,
        ot: q.ot,
        p,
        limits: &limits,
        blocking: bk,
    };
    let tile_max = scores(e, b, &ctx, groups, scale);
    let m: Vec<V<'c>> = (0..QV).map(|v| q.stat(e, b, 0, v)).collect();
    let new_m: Vec<V<'c>> = (0..QV).map(|v| e.maxf(m[v], tile_max[v])).collect();
    let correction: Vec<V<'c>> = (0..QV)
        .map(|v| e.math("exp", e.subf(m[v], new_m[v])))
        .collect();
    let zeros = vec![e.f32_splat(0.0, VW); QV];
    let sums = e.for_(e.index(0), span, e.index(1), &zeros, |e, j, sums| {
        (0..QV)
            .map(|v| {
                let at = p.lanes(e, j, v);
                let s = e.vload(b.stack, at, VW, e.f32_t());
                let w = e.math("exp", e.subf(s, new_m[v]));
                e.vstore(w, b.stack, at);
                e.addf(sums[v], w)
            })
            .collect()
    });
    weighted_values(e, b, &ctx, span, &correction);
    for v in 0..QV {
        let l = q.stat(e, b, 1, v);
        q.set_stat(e, b, 0, v, new_m[v]);
        q.set_stat(e, b, 1, v, e.fma(l, correction[v], sums[v]));
    }
}

/// A part of the stack buffer: its first element.
#[derive(Clone, Copy)]
struct Part<'c>(V<'c>);

impl<'c> Part<'c> {
    /// The first element of query vector `v` of row `row` (a head-dim column or a key):
    /// rows hold `QUERIES` lanes.
    fn lanes(self, e: &Emitter<'c, '_>, row: V<'c>, v: usize) -> V<'c> {
        e.addi(e.add_k(e.mul_k(row, QUERIES), v * VW), self.0)
    }

    /// Query vector `v` of row `row` of the part, in `stack`.
    fn load(self, e: &Emitter<'c, '_>, stack: V<'c>, row: V<'c>, v: usize) -> V<'c> {
        e.vload(stack, self.lanes(e, row, v), VW, e.f32_t())
    }
}

/// The tile being folded in.
struct Tile<'c, 'a> {
    tile: V<'c>,
    last_key: V<'c>,
    qt: Part<'c>,
    ot: Part<'c>,
    p: Part<'c>,
    limits: &'a [V<'c>],
    blocking: Blocking,
}

/// Scaled, masked scores of the tile's key groups into `p`; returns each query vector's
/// maximum over them.
fn scores<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    t: &Tile<'c, '_>,
    groups: V<'c>,
    scale: f32,
) -> Vec<V<'c>> {
    let hd = b.head_dim;
    let start = vec![e.f32_splat(f32::NEG_INFINITY, VW); QV];
    e.for_(e.index(0), groups, e.index(1), &start, |e, g, maxes| {
        let group = t.blocking.keys;
        let first = e.addi(t.tile, e.mul_k(g, group));
        let keys: Vec<V<'c>> = (0..group).map(|r| e.add_k(first, r)).collect();
        let bases: Vec<V<'c>> = keys
            .iter()
            .map(|k| e.addi(b.kv_base, e.mul_k(e.minsi(*k, t.last_key), hd)))
            .collect();
        let zeros = vec![e.f32_splat(0.0, VW); QV * group];
        let acc = e.for_k(0, hd, 1, &zeros, |e, d, acc| {
            let qs: Vec<V<'c>> = (0..QV).map(|v| t.qt.load(e, b.stack, d, v)).collect();
            let mut next = acc.to_vec();
            for (r, base) in bases.iter().enumerate() {
                let kv = e.splat(load_scalar_f32(e, b.k, e.addi(*base, d), b.kv), VW);
                for v in 0..QV {
                    next[r * QV + v] = e.fma(qs[v], kv, next[r * QV + v]);
                }
            }
            next
        });
        let mut maxes = maxes.to_vec();
        for (r, key) in keys.iter().enumerate() {
            let key_f = e.splat(e.index_to_f32(*key), VW);
            let slot = e.add_k(e.mul_k(g, group), r);
            for v in 0..QV {
                let s = e.mulf(acc[r * QV + v], e.f32_splat(scale, VW));
                let seen = e.cmpf(CmpfPredicate::Ole, key_f, t.limits[v]);
                let s = e.select(seen, s, e.f32_splat(f32::NEG_INFINITY, VW));
                e.vstore(s, b.stack, t.p.lanes(e, slot, v));
                maxes[v] = e.maxf(maxes[v], s);
            }
        }
        maxes
    })
}

/// `Oᵀ ← Oᵀ · correction + Σ_k P[·, k] · V[k, ·]` over the tile's `span` keys, a few
/// head-dim columns at a time (a narrower last pass when they do not divide it).
fn weighted_values<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    t: &Tile<'c, '_>,
    span: V<'c>,
    correction: &[V<'c>],
) {
    let hd = b.head_dim;
    let pass = |e: &Emitter<'c, '_>, d0: V<'c>, columns: usize| {
        let init: Vec<V<'c>> = (0..columns * QV)
            .map(|i| {
                let (c, v) = (i / QV, i % QV);
                e.mulf(t.ot.load(e, b.stack, e.add_k(d0, c), v), correction[v])
            })
            .collect();
        let acc = e.for_(e.index(0), span, e.index(1), &init, |e, j, acc| {
            let key = e.minsi(e.addi(t.tile, j), t.last_key);
            let base = e.addi(e.addi(b.kv_base, e.mul_k(key, hd)), d0);
            let ps: Vec<V<'c>> = (0..QV).map(|v| t.p.load(e, b.stack, j, v)).collect();
            let mut next = acc.to_vec();
            for c in 0..columns {
                let value = e.splat(load_scalar_f32(e, b.v, e.add_k(base, c), b.kv), VW);
                for v in 0..QV {
                    next[c * QV + v] = e.fma(ps[v], value, next[c * QV + v]);
                }
            }
            next
        });
        for (i, a) in acc.iter().enumerate() {
            let (c, v) = (i / QV, i % QV);
            e.vstore(*a, b.stack, t.ot.lanes(e, e.add_k(d0, c), v));
        }
    };
    let columns = t.blocking.columns;
    let main = hd / columns * columns;
    if main > 0 {
        e.for_k(0, main, columns, &[], |e, d0, _| {
            pass(e, d0, columns);
            vec![]
        });
    }
    if main < hd {
        pass(e, e.index(main as i64), hd - main);
    }
}
