//! Attention over a KV cache: one token ([`zambac_engine::KernelKind::AttentionDecode`], one
//! split of one head's keys per grid index, merged by
//! [`zambac_engine::KernelKind::AttentionCombine`]) and a prompt of any length
//! ([`zambac_engine::KernelKind::AttentionPrefill`], one block of queries of one head per
//! grid index).
//!
//! Neither has a workspace for the scores, so the softmax is computed online (flash
//! attention): keys are taken in blocks, each block's scores are formed, and the running
//! maximum `m`, the running sum `l` and the output accumulator are rescaled when the maximum
//! grows. Decode splits each head's keys along the sequence (flash-decoding), so a long
//! cache is read by many threads even when a model has fewer heads than the machine has
//! threads or the GPU has SMs: each split leaves `m`, `l` and its unnormalised accumulator in
//! a partial row, and the combine rescales the splits to their largest `m`.

use super::emit::{Emitter, V, VW};
use super::rows::{dots, for_chunks, load_f32, load_scalar_f32};
use super::warp::{
    LaneValues, first_lane, for_lanes, lane_element, lane_elements, real_or_zero, split_chunks,
    team_sum, when_real,
};
use super::{Frame, WARP};
use melior::dialect::arith::{CmpfPredicate, CmpiPredicate};
use zambac_engine::{DECODE_SPLIT_ALIGN, DECODE_SPLIT_MIN_KEYS, Elem, Role};

mod bf16;

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
    /// The host prefill's product operands ([`bf16`]).
    products: Elem,
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
            products: Elem::F32,
        }
    }

    /// The host prefill multiplies `products` operands (f32, or bf16 pairs: [`bf16`]).
    pub(crate) fn with_products(self, products: Elem) -> Heads {
        Heads { products, ..self }
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

/// [`zambac_engine::KernelKind::AttentionDecode`]: grid index `h·splits + s` folds split
/// `s` of head `h`'s keys into its partial row `[max, sum, unnormalised output]`.
pub(crate) fn decode<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, a: &Heads, splits: usize) {
    let (heads, kv_heads, head_dim) = (a.heads, a.kv_heads, a.head_dim);
    let (q, k, v, partial) = (
        f.view(Role::Q),
        f.view(Role::K),
        f.view(Role::V),
        f.view(Role::Partial),
    );
    let [pos, capacity] = f.ints[..] else {
        unreachable!("AttentionDecode has two integer arguments")
    };
    let h = e.divui(f.item, e.index(splits as i64));
    let split = e.subi(f.item, e.mul_k(h, splits));
    let kv_head = e.divui(h, e.index((heads / kv_heads) as i64));
    let prow = e.mul_k(f.item, head_dim + 2);
    let head = Head {
        q: (q, e.mul_k(h, head_dim)),
        k,
        v,
        out: (partial, e.add_k(prow, 2)),
        kv_base: e.mul_k(e.muli(kv_head, capacity), head_dim),
        head_dim,
        scale: a.scale as f32,
        kv: a.kv,
    };
    // The split's keys, as `decode_split_len` defines them.
    let keys = e.minsi(e.add_k(pos, 1), capacity);
    let even = e.divui(e.add_k(keys, splits - 1), e.index(splits as i64));
    let len = e.maxsi(even, e.index(DECODE_SPLIT_MIN_KEYS as i64));
    let len = e.mul_k(
        e.divui(
            e.add_k(len, DECODE_SPLIT_ALIGN - 1),
            e.index(DECODE_SPLIT_ALIGN as i64),
        ),
        DECODE_SPLIT_ALIGN,
    );
    let first = e.minsi(e.muli(split, len), keys);
    let last = e.minsi(e.addi(first, len), keys);
    let stats = if f.gpu_schedule {
        decode_warp(e, f, &head, (first, last), false)
    } else {
        attend_range(e, &head, first, last)
    };
    let first_lane = first_lane(e, f);
    e.when(first_lane, |e| {
        e.store(stats[0], partial, prow);
        e.store(stats[1], partial, e.add_k(prow, 1));
    });
}

/// [`zambac_engine::KernelKind::AttentionCombine`]: head `h`'s output from its splits'
/// partial rows, each rescaled to the largest maximum. On the GPU a warp's lanes split the
/// output elements (each computes the maximum and the sum itself).
pub(crate) fn combine<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, head_dim: usize, splits: usize) {
    let (partial, out) = (f.view(Role::Partial), f.view(Role::Out));
    let width = head_dim + 2;
    let first = e.mul_k(f.item, splits * width);
    let row = |e: &Emitter<'c, '_>, s: V<'c>| e.addi(first, e.mul_k(s, width));
    let max = e.for_k(0, splits, 1, &[e.f32(f32::NEG_INFINITY)], |e, s, m| {
        vec![e.maxf(m[0], e.load(partial, row(e, s)))]
    })[0];
    // A split with no keys has max −∞: its weight exp(−∞ − max) is 0 (split 0 always has
    // keys, so `max` is finite).
    let weight =
        |e: &Emitter<'c, '_>, s: V<'c>| e.math("exp", e.subf(e.load(partial, row(e, s)), max));
    let sum = e.for_k(0, splits, 1, &[e.f32(0.0)], |e, s, l| {
        let l_s = e.load(partial, e.add_k(row(e, s), 1));
        vec![e.fma(l_s, weight(e, s), l[0])]
    })[0];
    // Split by split, each weight computed once: `out = Σ_s (exp(m_s − max) / sum)·o_s`,
    // with one division: a `div.rn` per split made ptxas spill (12 bytes at 32 registers on
    // sm_90, the 1.2B's 8 splits).
    let inverse = e.divf(e.f32(1.0), sum);
    let orow = e.mul_k(f.item, head_dim);
    split_chunks(e, f, head_dim, 1, |e, offset, w| {
        e.vstore(e.f32_splat(0.0, w), out, e.addi(orow, offset));
    });
    e.for_k(0, splits, 1, &[], |e, s, _| {
        let scale = e.mulf(weight(e, s), inverse);
        split_chunks(e, f, head_dim, 1, |e, offset, w| {
            let at = e.addi(orow, offset);
            let part = load_f32(
                e,
                partial,
                e.addi(e.add_k(row(e, s), 2), offset),
                w,
                Elem::F32,
            );
            let o = load_f32(e, out, at, w, Elem::F32);
            e.vstore(e.fma(e.splat(scale, w), part, o), out, at);
        });
        vec![]
    });
}

/// Folds cached keys `[first, last)` of `head` into its output row (zeroed first): leaves
/// `Σ exp(score − max)·v` there and returns `[max, Σ exp(score − max)]` — `[−∞, 0]` and a
/// zero row for an empty range.
fn attend_range<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, first: V<'c>, last: V<'c>) -> Vec<V<'c>> {
    let (out, row) = head.out;
    for_chunks(e, head.head_dim, 1, |e, offset, width| {
        e.vstore(e.f32_splat(0.0, width), out, e.addi(row, offset));
    });
    let start = [e.f32(f32::NEG_INFINITY), e.f32(0.0)];
    for_key_steps(e, (first, last), KEYS, &start, |e, j, n, state| {
        key_block(e, head, j, n, state)
    })
}

/// Folds keys `[first, last)` into loop-carried `state`: `body(e, j, n, state)` over steps of
/// `n = step` keys from `first`, then of one key for the rest.
fn for_key_steps<'c>(
    e: &Emitter<'c, '_>,
    (first, last): (V<'c>, V<'c>),
    step: usize,
    state: &[V<'c>],
    body: impl Fn(&Emitter<'c, '_>, V<'c>, usize, &[V<'c>]) -> Vec<V<'c>>,
) -> Vec<V<'c>> {
    let count = e.subi(last, first);
    let steps_end = e.addi(first, e.mul_k(e.divui(count, e.index(step as i64)), step));
    let state = e.for_(first, steps_end, e.index(step as i64), state, |e, j, st| {
        body(e, j, step, st)
    });
    e.for_(steps_end, last, e.index(1), &state, |e, j, st| {
        body(e, j, 1, st)
    })
}

/// Keys a warp folds per step of [`decode_warp`]: independent score reductions in flight.
const WARP_KEYS: usize = 4;

/// Private f32 elements of [`decode_warp`] on the host, where the warp is a loop: the warp's
/// exchange buffer, then each lane's output elements (on the GPU they are registers).
pub(crate) fn decode_warp_stack(head_dim: usize) -> usize {
    WARP + WARP * lane_elements(head_dim)
}

/// Decode attention's GPU schedule over keys `[first, last)`: a warp whose lanes split the
/// head dim — lane `l` owns elements `l, l + 32, …` of q, of each key and value row (the
/// warp reads whole rows, coalesced) and of the output. Per step of [`WARP_KEYS`] keys each
/// lane forms its part of every score, a butterfly ([`team_sum`]) completes them in every
/// lane, and every lane applies the same online-softmax update to its own elements, so the
/// running max and sum agree across the warp without exchange. Returns `[max, sum]`; each
/// lane stores its output elements, unnormalised (a split's partial row) or, with
/// `normalise`, divided by the sum (a whole row; one reciprocal per lane). On the host the
/// lanes are loops and their elements live in the stack buffer.
fn decode_warp<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    head: &Head<'c>,
    (first, last): (V<'c>, V<'c>),
    normalise: bool,
) -> Vec<V<'c>> {
    let hd = head.head_dim;
    let per = lane_elements(hd);
    let (q, qrow) = head.q;
    let (out, orow) = head.out;
    let element = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| lane_element(e, lane, i, hd);
    let value = |e: &Emitter<'c, '_>, m: V<'c>, at: V<'c>, elem: Elem| {
        e.extract(load_f32(e, m, at, 1, elem), 0)
    };
    let q_own = LaneValues::new(e, f, per, |e, lane, i| {
        value(e, q, e.addi(qrow, element(e, lane, i).0), Elem::F32)
    });
    // Lane `lane`'s part of key `j`'s score.
    let part = |e: &Emitter<'c, '_>, j: V<'c>, lane: V<'c>| {
        let base = e.addi(head.kv_base, e.mul_k(j, hd));
        let mut acc = e.f32(0.0);
        for i in 0..per {
            let (d, real) = element(e, lane, i);
            let p = e.mulf(
                q_own.get(e, lane, i),
                value(e, head.k, e.addi(base, d), head.kv),
            );
            acc = e.addf(acc, real_or_zero(e, real, p));
        }
        acc
    };
    // One step over keys `[j, j + n)`: the scores, the new max, the rescale of what was
    // accumulated and each key's weight.
    let step = |e: &Emitter<'c, '_>, j: V<'c>, n: usize, max: V<'c>, sum: V<'c>| {
        let scores: Vec<V<'c>> = (0..n)
            .map(|b| {
                let s = team_sum(e, f, |e, lane| part(e, e.add_k(j, b), lane));
                e.mulf(s, e.f32(head.scale))
            })
            .collect();
        let new_max = scores.iter().fold(max, |m, s| e.maxf(m, *s));
        let correction = e.math("exp", e.subf(max, new_max));
        let weights: Vec<V<'c>> = scores
            .iter()
            .map(|s| e.math("exp", e.subf(*s, new_max)))
            .collect();
        let new_sum = weights
            .iter()
            .fold(e.mulf(sum, correction), |l, w| e.addf(l, *w));
        (new_max, correction, weights, new_sum)
    };
    // Element `i` of `lane` after the step: `acc·correction + Σ_b weight_b·v[j + b]`.
    let update = |e: &Emitter<'c, '_>,
                  j: V<'c>,
                  lane: V<'c>,
                  i: usize,
                  acc: V<'c>,
                  correction: V<'c>,
                  weights: &[V<'c>]| {
        let (d, _) = element(e, lane, i);
        weights
            .iter()
            .enumerate()
            .fold(e.mulf(acc, correction), |o, (b, w)| {
                let base = e.addi(head.kv_base, e.mul_k(e.add_k(j, b), hd));
                e.fma(*w, value(e, head.v, e.addi(base, d), head.kv), o)
            })
    };
    // `scale`: 1 / sum when normalising, else none.
    let store = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize, acc: V<'c>, scale: Option<V<'c>>| {
        let (d, real) = element(e, lane, i);
        let acc = scale.map_or(acc, |s| e.mulf(acc, s));
        when_real(e, real, |e| e.store(acc, out, e.addi(orow, d)));
    };
    let reciprocal = |e: &Emitter<'c, '_>, sum: V<'c>| normalise.then(|| e.divf(e.f32(1.0), sum));
    if f.warp_threads {
        // The lane's elements are registers carried by the key loops.
        let mut init = vec![e.f32(f32::NEG_INFINITY), e.f32(0.0)];
        init.extend((0..per).map(|_| e.f32(0.0)));
        let st = for_key_steps(e, (first, last), WARP_KEYS, &init, |e, j, n, st| {
            let (max, correction, weights, sum) = step(e, j, n, st[0], st[1]);
            let mut next = vec![max, sum];
            next.extend((0..per).map(|i| update(e, j, f.lane, i, st[2 + i], correction, &weights)));
            next
        });
        let scale = reciprocal(e, st[1]);
        for i in 0..per {
            store(e, f.lane, i, st[2 + i], scale);
        }
        return st[..2].to_vec();
    }
    let Some(buffer) = f.stack else {
        unreachable!("decode attention's GPU schedule has a stack buffer on the host")
    };
    let slot = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| e.add_k(e.mul_k(lane, per), WARP + i);
    for_lanes(e, f, |e, lane| {
        for i in 0..per {
            e.store(e.f32(0.0), buffer, slot(e, lane, i));
        }
    });
    let init = [e.f32(f32::NEG_INFINITY), e.f32(0.0)];
    let st = for_key_steps(e, (first, last), WARP_KEYS, &init, |e, j, n, st| {
        let (max, correction, weights, sum) = step(e, j, n, st[0], st[1]);
        for_lanes(e, f, |e, lane| {
            for i in 0..per {
                let at = slot(e, lane, i);
                let acc = e.load(buffer, at);
                e.store(update(e, j, lane, i, acc, correction, &weights), buffer, at);
            }
        });
        vec![max, sum]
    });
    let scale = reciprocal(e, st[1]);
    for_lanes(e, f, |e, lane| {
        for i in 0..per {
            store(e, lane, i, e.load(buffer, slot(e, lane, i)), scale);
        }
    });
    st
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
        e.vector_of(&dots(e, head.q, (head.k, head.kv), &bases, (hd, 0), 1))
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
    /// warp per query, [`prefill_row`].)
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
            products: a.products,
        };
        prefill_item(e, &block, a.scale as f32);
    });
}

/// The GPU schedule of prompt attention: grid index `h·rows + r` is a warp of its own for
/// query `r` of head `h`, which runs decode attention's warp loop ([`decode_warp`]: the
/// lanes split the head dim, q and the output row stay in registers, the warp reads each
/// key and value row whole, coalesced) over the keys up to its position, then stores the
/// row divided by its sum. Before, a thread per query ran the host's loop, rescaling and
/// rewriting its output row in memory after every 8 keys.
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
    decode_warp(e, f, &head, (e.index(0), keys), true);
}

/// Private f32 elements of a prefill call: for each block, `Qᵀ`, `Oᵀ`, the running maximum
/// and sum and the causal limit of each query; one tile of scores; with bf16 products, the
/// tile's weights and values as bf16 pairs ([`bf16::stack`]).
pub(crate) fn prefill_stack(head_dim: usize, blocking: Blocking, products: Elem) -> usize {
    let pairs = match products {
        Elem::Bf16 => bf16::stack(head_dim, blocking),
        _ => 0,
    };
    scores_at(head_dim, blocking) + blocking.tile * QUERIES + pairs
}

/// Where the tile of scores starts in the stack: after the blocks' parts.
fn scores_at(head_dim: usize, blocking: Blocking) -> usize {
    blocking.sub * block_stack(head_dim)
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
    /// The products' operands: f32, or bf16 pairs ([`bf16`]).
    products: Elem,
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
                if b.products == Elem::F32 {
                    let lanes: Vec<V<'c>> = bases[v * VW..(v + 1) * VW]
                        .iter()
                        .map(|base| e.load(b.q, e.addi(*base, d)))
                        .collect();
                    e.vstore(e.vector_of(&lanes), b.stack, q.qt.lanes(e, d, v));
                }
                e.vstore(e.f32_splat(0.0, VW), b.stack, q.ot.lanes(e, d, v));
            }
            vec![]
        });
        if b.products == Elem::Bf16 {
            bf16::store_queries(e, b, q, &bases);
        }
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
    let p = Part(e.index(scores_at(hd, bk) as i64));
    e.for_(
        e.index(0),
        keys,
        e.index(bk.tile as i64),
        &[],
        |e, tile, _| {
            if b.products == Elem::Bf16 {
                // The tile's values as pairs, once for every block: up to the last block's
                // reach, whole groups of keys.
                let n = e.minsi(e.index(bk.tile as i64), e.subi(keys, tile));
                bf16::store_values(e, b, tile, span(e, bk, n), e.subi(keys, e.index(1)));
            }
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
    if b.products == Elem::Bf16 {
        bf16::store_weights(e, b, &ctx, span);
    }
    weighted_values(e, b, &ctx, span, &correction);
    for v in 0..QV {
        let l = q.stat(e, b, 1, v);
        q.set_stat(e, b, 0, v, new_m[v]);
        q.set_stat(e, b, 1, v, e.fma(l, correction[v], sums[v]));
    }
}

/// `n` keys rounded up to whole groups of [`Blocking::keys`].
fn span<'c>(e: &Emitter<'c, '_>, bk: Blocking, n: V<'c>) -> V<'c> {
    let groups = e.divui(e.add_k(n, bk.keys - 1), e.index(bk.keys as i64));
    e.mul_k(groups, bk.keys)
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
        let acc = if b.products == Elem::Bf16 {
            bf16::score_sums(e, b, t, &bases, zeros)
        } else {
            e.for_k(0, hd, 1, &zeros, |e, d, acc| {
                let qs: Vec<V<'c>> = (0..QV).map(|v| t.qt.load(e, b.stack, d, v)).collect();
                let mut next = acc.to_vec();
                for (r, base) in bases.iter().enumerate() {
                    let kv = e.splat(load_scalar_f32(e, b.k, e.addi(*base, d), b.kv), VW);
                    for v in 0..QV {
                        next[r * QV + v] = e.fma(qs[v], kv, next[r * QV + v]);
                    }
                }
                next
            })
        };
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
        let acc = if b.products == Elem::Bf16 {
            bf16::weighted_sums(e, b, span, (d0, columns), init)
        } else {
            e.for_(e.index(0), span, e.index(1), &init, |e, j, acc| {
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
            })
        };
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
