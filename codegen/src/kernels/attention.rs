//! One-token attention over a KV cache ([`zambac_engine::KernelKind::AttentionDecode`]),
//! one head per grid index.
//!
//! There is no workspace for the scores, so the softmax is computed online (as in flash
//! decoding): keys are taken in blocks of [`KEYS`], each block's scores are formed with one
//! pass over `q`, and the running maximum `m`, the running sum `l` and the output
//! accumulator are rescaled when the maximum grows. The accumulator lives in `out` itself
//! (one row of `head_dim` floats, cached), which keeps register use independent of
//! `head_dim` on the GPU.

use super::Frame;
use super::emit::{Emitter, V, VW};
use super::rows::{dots, for_chunks, load_f32};
use zambac_engine::Elem;
use zambac_engine::Role;

/// Keys per block of the online softmax: one vector of scores.
const KEYS: usize = VW;

/// What every key block reads.
struct Head<'c> {
    q: (V<'c>, V<'c>),
    k: V<'c>,
    v: V<'c>,
    out: (V<'c>, V<'c>),
    kv_base: V<'c>,
    head_dim: usize,
    scale: f32,
}

/// [`zambac_engine::KernelKind::AttentionDecode`].
pub(crate) fn decode<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
) {
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
        scale: scale as f32,
    };
    let keys = e.minsi(e.add_k(pos, 1), capacity);
    for_chunks(e, head_dim, 1, |e, offset, width| {
        e.vstore(e.f32_splat(0.0, width), out, e.addi(row, offset));
    });
    let blocks = e.mul_k(e.divui(keys, e.index(KEYS as i64)), KEYS);
    let start = [e.f32(f32::NEG_INFINITY), e.f32(0.0)];
    let state = e.for_(
        e.index(0),
        blocks,
        e.index(KEYS as i64),
        &start,
        |e, j, state| key_block(e, &head, j, KEYS, state),
    );
    let state = e.for_(blocks, keys, e.index(1), &state, |e, j, state| {
        key_block(e, &head, j, 1, state)
    });
    let sum = state[1];
    for_chunks(e, head_dim, 1, |e, offset, width| {
        let at = e.addi(row, offset);
        let o = load_f32(e, out, at, width, Elem::F32);
        e.vstore(e.divf(o, e.splat(sum, width)), out, at);
    });
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
    let bases: Vec<V<'c>> = (0..n)
        .map(|b| e.addi(head.kv_base, e.mul_k(e.add_k(first, b), hd)))
        .collect();
    let scores = dots(e, head.q, (head.k, Elem::F32), &bases, hd, 1);
    let scores = e.mulf(e.vector_of(&scores), e.f32_splat(head.scale, n));
    let (max, sum) = (state[0], state[1]);
    let new_max = e.maxf(max, e.reduce("maximumf", scores));
    let correction = e.math("exp", e.subf(max, new_max));
    let weights = e.math("exp", e.subf(scores, e.splat(new_max, n)));
    let new_sum = e.fma(sum, correction, e.reduce("add", weights));
    let lanes: Vec<V<'c>> = (0..n).map(|b| e.extract(weights, b)).collect();
    let (out, row) = head.out;
    for_chunks(e, hd, 1, |e, offset, width| {
        let at = e.addi(row, offset);
        let mut o = e.mulf(
            load_f32(e, out, at, width, Elem::F32),
            e.splat(correction, width),
        );
        for (b, base) in bases.iter().enumerate() {
            let value = load_f32(e, head.v, e.addi(*base, offset), width, Elem::F32);
            o = e.fma(e.splat(lanes[b], width), value, o);
        }
        e.vstore(o, out, at);
    });
    vec![new_max, new_sum]
}
