//! Prompt attention's two products with bf16 operands
//! ([`zambac_engine::KernelKind::AttentionPrefill`]'s `products`), on CPUs with AVX-512 BF16.
//!
//! `vdpbf16ps` (MLIR's `x86vector.avx512.dot`, 256-bit form) multiplies the pairs of bf16
//! in each 32-bit lane of two vectors and adds both products into that lane's f32
//! accumulator: twice the multiply-adds per instruction of an f32 FMA. The f32 schedule's
//! broadcasts carry over with pairs along each product's sum:
//!
//! - `S[·, k] += Qᵀ[d, d+1] · K[k, d..d+2]`: the block's queries are stored as pairs of
//!   head-dim columns (lane `i` of row `d/2` holds `q_i[d], q_i[d+1]`, rounded to bf16), and
//!   key `k`'s elements `d`, `d + 1` are one 32-bit word of the bf16 cache, broadcast.
//! - `Oᵀ[d] += P[·, k..k+2] · V[k..k+2, d]`: after the softmax, the tile's weights are
//!   stored as pairs of keys (lane `i` of row `k/2` holds `p_i[k], p_i[k+1]`), and the
//!   tile's values once per tile as pairs of rows (word `(k/2)·hd + d` holds `V[k, d],
//!   V[k+1, d]`), so a column's pair is again one broadcast word.
//!
//! Scores, maxima, the softmax's exponentials and sums, and the output stay f32: what is
//! rounded is q and the weights (the caches are bf16 already).

use super::{Block, Blocking, QUERIES, QV, Query, Tile, scores_at};
use crate::kernels::emit::{Emitter, V, VW};
use crate::kernels::rows::{bf16_bits, for_chunks};

/// bf16 elements of a pair vector: two per f32 lane.
const PAIRS: usize = 2 * VW;

/// f32 elements of the stack after the tile of scores: the tile's weights as pairs of keys
/// (`tile / 2` rows of `QUERIES` words), then its values as pairs of rows (`tile / 2` rows of
/// `head_dim` words).
pub(super) fn stack(head_dim: usize, blocking: Blocking) -> usize {
    debug_assert!(
        blocking.keys.is_multiple_of(2),
        "a group of keys must hold whole pairs: spans of keys are whole groups"
    );
    blocking.tile.div_ceil(2) * (QUERIES + head_dim)
}

/// Where the weight pairs start: after the tile of scores.
fn weights_at(b: &Block<'_>) -> usize {
    scores_at(b.head_dim, b.blocking) + b.blocking.tile * QUERIES
}

/// Where the value pairs start: after the weight pairs.
fn values_at(b: &Block<'_>) -> usize {
    weights_at(b) + b.blocking.tile.div_ceil(2) * QUERIES
}

/// `vector<2·VW x bf16>`.
fn pair_t<'c>(e: &Emitter<'c, '_>) -> melior::ir::Type<'c> {
    e.parse_type(&format!("vector<{PAIRS}xbf16>"))
}

/// The `VW` f32 words `words` as the `2·VW` bf16 they hold.
fn pairs<'c>(e: &Emitter<'c, '_>, words: V<'c>) -> V<'c> {
    e.emit1("vector.bitcast", &[words], pair_t(e), &[])
}

/// One f32 word (a pair of bf16) in every lane.
fn splat_pair<'c>(e: &Emitter<'c, '_>, word: V<'c>) -> V<'c> {
    pairs(e, e.splat(word, VW))
}

/// Lane `i`: `acc[i] + a[2i]·b[2i] + a[2i+1]·b[2i+1]`, summed in f32 (`vdpbf16ps`).
fn dot<'c>(e: &Emitter<'c, '_>, acc: V<'c>, a: V<'c>, b: V<'c>) -> V<'c> {
    e.emit1("x86vector.avx512.dot", &[acc, a, b], e.vf32(VW), &[])
}

/// `lo` and `hi` (`VW` f32 each) rounded to bf16 (nearest even, as the caches are) and
/// interleaved, as `VW` words: word `i` holds `lo[i]`, then `hi[i]`.
fn round_pairs<'c>(e: &Emitter<'c, '_>, lo: V<'c>, hi: V<'c>) -> V<'c> {
    let mask: Vec<i64> = (0..VW as i64).flat_map(|i| [i, i + VW as i64]).collect();
    let bits = bf16_bits(e, e.shuffle(lo, hi, &mask), Some(PAIRS));
    e.emit1("vector.bitcast", &[bits], e.vf32(VW), &[])
}

/// Block `q`'s queries as pairs of head-dim columns into its `Qᵀ` part: row `d/2`, lane `i`
/// holds query `i`'s elements `d`, `d + 1`. `bases`: where each lane's row of this head
/// starts in `q`.
pub(super) fn store_queries<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    q: &Query<'c>,
    bases: &[V<'c>],
) {
    e.for_k(0, b.head_dim / 2, 1, &[], |e, half, _| {
        let d = e.mul_k(half, 2);
        for v in 0..QV {
            let column = |next: usize| {
                let lanes: Vec<V<'c>> = bases[v * VW..(v + 1) * VW]
                    .iter()
                    .map(|base| e.load(b.q, e.add_k(e.addi(*base, d), next)))
                    .collect();
                e.vector_of(&lanes)
            };
            let words = round_pairs(e, column(0), column(1));
            e.vstore(words, b.stack, q.qt.lanes(e, half, v));
        }
        vec![]
    });
}

/// The unscaled scores of the keys whose cache rows start at `bases`, against the tile's
/// block of queries: `acc[r·QV + v]` for key `r` and query vector `v`, from `zeros`.
pub(super) fn score_sums<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    t: &Tile<'c, '_>,
    bases: &[V<'c>],
    zeros: Vec<V<'c>>,
) -> Vec<V<'c>> {
    let broadcast: Vec<i64> = (0..PAIRS as i64).map(|i| i % 2).collect();
    e.for_k(0, b.head_dim / 2, 1, &zeros, |e, half, acc| {
        let qs: Vec<V<'c>> = (0..QV)
            .map(|v| pairs(e, t.qt.load(e, b.stack, half, v)))
            .collect();
        let d = e.mul_k(half, 2);
        let mut next = acc.to_vec();
        for (r, base) in bases.iter().enumerate() {
            let two = e.vload(b.k, e.addi(*base, d), 2, e.int_t(16));
            let k = e.emit1(
                "vector.bitcast",
                &[e.shuffle(two, two, &broadcast)],
                pair_t(e),
                &[],
            );
            for v in 0..QV {
                next[r * QV + v] = dot(e, next[r * QV + v], qs[v], k);
            }
        }
        next
    })
}

/// The tile's values as pairs of rows, once for every block: keys `tile ..
/// tile + span` (`span` even; keys past `last_key` read at it, their weights are 0), word
/// `(j·hd + d)` holding `V[tile + 2j, d]`, `V[tile + 2j + 1, d]`.
pub(super) fn store_values<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    tile: V<'c>,
    span: V<'c>,
    last_key: V<'c>,
) {
    let hd = b.head_dim;
    let at = values_at(b);
    let rows = e.divui(span, e.index(2));
    e.for_(e.index(0), rows, e.index(1), &[], |e, j, _| {
        let row = |next: usize| {
            let key = e.minsi(e.add_k(e.addi(tile, e.mul_k(j, 2)), next), last_key);
            e.addi(b.kv_base, e.mul_k(key, hd))
        };
        let (first, second) = (row(0), row(1));
        let out = e.add_k(e.mul_k(j, hd), at);
        for_chunks(e, hd, 1, |e, offset, width| {
            let a = e.vload(b.v, e.addi(first, offset), width, e.int_t(16));
            let c = e.vload(b.v, e.addi(second, offset), width, e.int_t(16));
            let mask: Vec<i64> = (0..width as i64)
                .flat_map(|i| [i, i + width as i64])
                .collect();
            let words = e.emit1(
                "vector.bitcast",
                &[e.shuffle(a, c, &mask)],
                e.vf32(width),
                &[],
            );
            e.vstore(words, b.stack, e.addi(out, offset));
        });
        vec![]
    });
}

/// The block's softmax weights of the tile (f32 in the scores part) as pairs of keys: row
/// `j`, lane `i` holds query `i`'s weights of keys `2j`, `2j + 1`, rounded to bf16.
pub(super) fn store_weights<'c>(e: &Emitter<'c, '_>, b: &Block<'c>, t: &Tile<'c, '_>, span: V<'c>) {
    let at = e.index(weights_at(b) as i64);
    let rows = e.divui(span, e.index(2));
    e.for_(e.index(0), rows, e.index(1), &[], |e, j, _| {
        let key = e.mul_k(j, 2);
        for v in 0..QV {
            let lo = t.p.load(e, b.stack, key, v);
            let hi = t.p.load(e, b.stack, e.add_k(key, 1), v);
            let words = round_pairs(e, lo, hi);
            e.vstore(words, b.stack, super::Part(at).lanes(e, j, v));
        }
        vec![]
    });
}

/// `init + Σ_k P[·, k] · V[k, d0 + c]` over the tile's `span` keys in pairs, for the
/// `columns` head-dim columns from `d0`: `acc[c·QV + v]`.
pub(super) fn weighted_sums<'c>(
    e: &Emitter<'c, '_>,
    b: &Block<'c>,
    span: V<'c>,
    (d0, columns): (V<'c>, usize),
    init: Vec<V<'c>>,
) -> Vec<V<'c>> {
    let hd = b.head_dim;
    let weights = super::Part(e.index(weights_at(b) as i64));
    let values = e.addi(e.index(values_at(b) as i64), d0);
    let rows = e.divui(span, e.index(2));
    e.for_(e.index(0), rows, e.index(1), &init, |e, j, acc| {
        let ps: Vec<V<'c>> = (0..QV)
            .map(|v| pairs(e, weights.load(e, b.stack, j, v)))
            .collect();
        let row = e.addi(e.mul_k(j, hd), values);
        let mut next = acc.to_vec();
        for c in 0..columns {
            let value = splat_pair(e, e.load(b.stack, e.add_k(row, c)));
            for v in 0..QV {
                next[c * QV + v] = dot(e, next[c * QV + v], ps[v], value);
            }
        }
        next
    })
}
