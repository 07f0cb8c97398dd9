//! Loops over contiguous runs of elements in vector chunks, and loads that widen stored
//! weights to f32: the building blocks every row-wise kernel shares.
//!
//! Kernels are specialised to their sizes, so a run of constant length becomes a vector loop
//! of `VW`-wide chunks (unrolled `unroll` times, with independent accumulators so that
//! reductions are not one long dependency chain) plus a tail of constant chunks, the last one
//! narrower than `VW` when the length is not a multiple of it.

use super::emit::{Emitter, V, VW};
use melior::ir::Type;
use zambac_engine::Elem;

/// The element type a view of `elem` has in the kernel's memrefs. bf16 is kept as raw `i16`
/// bits and widened by a shift, which is exact and needs no bf16 support from the target.
pub(crate) fn storage_type<'c>(e: &Emitter<'c, '_>, elem: Elem) -> Type<'c> {
    match elem {
        Elem::F32 => e.f32_t(),
        Elem::Bf16 => e.int_t(16),
        Elem::F16 => Type::float16(e.cx),
        Elem::I64 => e.int_t(64),
    }
}

/// Loads `width` elements of a view stored as `elem` at `mem[index]`, as f32 lanes.
pub(crate) fn load_f32<'c>(
    e: &Emitter<'c, '_>,
    mem: V<'c>,
    index: V<'c>,
    width: usize,
    elem: Elem,
) -> V<'c> {
    load_f32_aligned(e, mem, index, width, elem, None)
}

/// [`load_f32`], promising with `align` (bytes) that `mem[index]` lies at a multiple of it
/// ([`Emitter::vload_aligned`]).
pub(crate) fn load_f32_aligned<'c>(
    e: &Emitter<'c, '_>,
    mem: V<'c>,
    index: V<'c>,
    width: usize,
    elem: Elem,
    align: Option<u64>,
) -> V<'c> {
    let vload = |ty| match align {
        Some(align) => e.vload_aligned(mem, index, width, ty, align),
        None => e.vload(mem, index, width, ty),
    };
    match elem {
        Elem::Bf16 => {
            let bits = vload(e.int_t(16));
            let wide = e.cast("extui", bits, e.vec_t(width, e.int_t(32)));
            let shifted = e.shli(wide, e.int_splat(16, 32, width));
            e.cast("bitcast", shifted, e.vf32(width))
        }
        Elem::F16 => {
            let half = vload(Type::float16(e.cx));
            e.cast("extf", half, e.vf32(width))
        }
        Elem::F32 | Elem::I64 => vload(e.f32_t()),
    }
}

/// Stores the f32 lanes `v` (`width` of them) at `mem[index]` as `elem`: f32 as they are,
/// bf16 rounded to nearest even (see [`bf16_bits`]).
pub(crate) fn store_f32_as<'c>(
    e: &Emitter<'c, '_>,
    v: V<'c>,
    mem: V<'c>,
    index: V<'c>,
    width: usize,
    elem: Elem,
) {
    if elem != Elem::Bf16 {
        e.vstore(v, mem, index);
        return;
    }
    e.vstore(bf16_bits(e, v, Some(width)), mem, index);
}

/// Stores the f32 scalar `v` at `mem[index]` as `elem`, rounded as [`store_f32_as`] rounds.
pub(crate) fn store_scalar_as<'c>(
    e: &Emitter<'c, '_>,
    v: V<'c>,
    mem: V<'c>,
    index: V<'c>,
    elem: Elem,
) {
    if elem != Elem::Bf16 {
        e.store(v, mem, index);
        return;
    }
    e.store(bf16_bits(e, v, None), mem, index);
}

/// The bf16 bits of f32 `v` — a vector of `width` lanes, or a scalar for `None` — rounded to
/// nearest even: `(bits + 0x7fff + lsb) >> 16`, as `to_bf16` in the tests and torch's
/// `.to(bfloat16)` for finite values.
pub(crate) fn bf16_bits<'c>(e: &Emitter<'c, '_>, v: V<'c>, width: Option<usize>) -> V<'c> {
    let ty = |bits: u32| match width {
        Some(w) => e.vec_t(w, e.int_t(bits)),
        None => e.int_t(bits),
    };
    let int = |value: i64| match width {
        Some(w) => e.int_splat(value, 32, w),
        None => e.int_const(value, e.int_t(32)),
    };
    let bits = e.cast("bitcast", v, ty(32));
    let lsb = e.andi(e.shrui(bits, int(16)), int(1));
    let rounded = e.addi(e.addi(bits, int(0x7fff)), lsb);
    e.cast("trunci", e.shrui(rounded, int(16)), ty(16))
}

/// One element of a view stored as `elem`, as an f32 scalar.
pub(crate) fn load_scalar_f32<'c>(
    e: &Emitter<'c, '_>,
    mem: V<'c>,
    index: V<'c>,
    elem: Elem,
) -> V<'c> {
    match elem {
        Elem::Bf16 => {
            let bits = e.load(mem, index);
            let wide = e.cast("extui", bits, e.int_t(32));
            let shifted = e.shli(wide, e.int_const(16, e.int_t(32)));
            e.cast("bitcast", shifted, e.f32_t())
        }
        _ => e.load(mem, index),
    }
}

/// Calls `f(e, offset, width)` for chunks covering `[0, len)`: a loop of `unroll` × `VW`
/// elements per iteration, then constant chunks of `VW` and one narrower chunk.
pub(crate) fn for_chunks<'c>(
    e: &Emitter<'c, '_>,
    len: usize,
    unroll: usize,
    f: impl Fn(&Emitter<'c, '_>, V<'c>, usize),
) {
    let step = VW * unroll;
    let main = len / step * step;
    if main > 0 {
        e.for_k(0, main, step, &[], |e, j, _| {
            for u in 0..unroll {
                f(e, e.add_k(j, u * VW), VW);
            }
            vec![]
        });
    }
    for (offset, width) in tail_chunks(main, len) {
        f(e, e.index(offset as i64), width);
    }
}

/// The constant chunks covering `[from, len)`: full vectors, then one narrower vector.
pub(crate) fn tail_chunks(from: usize, len: usize) -> Vec<(usize, usize)> {
    let mut chunks = Vec::new();
    let mut offset = from;
    while offset < len {
        let width = VW.min(len - offset);
        chunks.push((offset, width));
        offset += width;
    }
    chunks
}

/// `Σ` over `[0, len)` of the lanes that `f(e, offset, width, acc)` accumulates into `acc`
/// (a `vector<width x f32>`, e.g. `fma(x, x, acc)`); returns an f32 scalar. The main loop
/// keeps `unroll` accumulators.
pub(crate) fn sum_chunks<'c>(
    e: &Emitter<'c, '_>,
    len: usize,
    unroll: usize,
    f: impl Fn(&Emitter<'c, '_>, V<'c>, usize, V<'c>) -> V<'c>,
) -> V<'c> {
    let step = VW * unroll;
    let main = len / step * step;
    let zero = e.f32_splat(0.0, VW);
    let mut accs = vec![zero; unroll];
    if main > 0 {
        accs = e.for_k(0, main, step, &accs, |e, j, accs| {
            (0..unroll)
                .map(|u| f(e, e.add_k(j, u * VW), VW, accs[u]))
                .collect()
        });
    }
    let mut total = accs[0];
    for acc in &accs[1..] {
        total = e.addf(total, *acc);
    }
    let mut narrow = None;
    for (offset, width) in tail_chunks(main, len) {
        let at = e.index(offset as i64);
        if width == VW {
            total = f(e, at, VW, total);
        } else {
            narrow = Some(f(e, at, width, e.f32_splat(0.0, width)));
        }
    }
    let sum = e.reduce("add", total);
    match narrow {
        Some(part) => e.addf(sum, e.reduce("add", part)),
        None => sum,
    }
}

/// `2·VW` bf16 values at `w[index]` read as `VW` 32-bit lanes and widened without a
/// shuffle: lane `i` holds elements `2i` (low half) and `2i + 1` (high half), so `lane << 16`
/// is the even elements as f32 and `lane & 0xffff0000` (−0x10000 as i32) the odd ones — two
/// ALU operations per 16 values instead of a zero-extension (a shuffle) and a shift per 8.
fn bf16_pairs<'c>(e: &Emitter<'c, '_>, w: V<'c>, index: V<'c>) -> (V<'c>, V<'c>) {
    let bits = e.vload(w, index, 2 * VW, e.int_t(16));
    let lanes = e.emit1("vector.bitcast", &[bits], e.vec_t(VW, e.int_t(32)), &[]);
    let even = e.shli(lanes, e.int_splat(16, 32, VW));
    let odd = e.andi(lanes, e.int_splat(-0x1_0000, 32, VW));
    (
        e.cast("bitcast", even, e.vf32(VW)),
        e.cast("bitcast", odd, e.vf32(VW)),
    )
}

/// The `2·VW` f32 values at `x[index]` as their even and their odd elements, matching
/// [`bf16_pairs`].
fn even_odd<'c>(e: &Emitter<'c, '_>, x: V<'c>, index: V<'c>) -> (V<'c>, V<'c>) {
    let a = load_f32(e, x, index, VW, Elem::F32);
    let b = load_f32(e, x, e.add_k(index, VW), VW, Elem::F32);
    let pick = |odd: i64| -> Vec<i64> { (0..VW as i64).map(|i| 2 * i + odd).collect() };
    (e.shuffle(a, b, &pick(0)), e.shuffle(a, b, &pick(1)))
}

/// Elements of a row [`dots`]' main loop takes per chunk: bf16 rows are read two elements
/// per 32-bit lane (see [`bf16_pairs`]).
fn pair_chunk(elem: Elem) -> usize {
    if elem == Elem::Bf16 { 2 * VW } else { VW }
}

/// Elements of a row [`dots`]' main loop takes per iteration. With prefetching (`ahead >
/// 0`), an iteration reads whole 64-byte lines of each row (a line's chunks into the same
/// accumulators) and prefetches each row once: one prefetch per line, not one per chunk.
pub(crate) fn main_step(elem: Elem, ahead: usize, unroll: usize) -> usize {
    let chunk = pair_chunk(elem) * unroll;
    let line = 64 / elem.size();
    let lines = if ahead > 0 && line > chunk && line.is_multiple_of(chunk) {
        line / chunk
    } else {
        1
    };
    chunk * lines
}

/// Dot products of one vector with several rows: `x[xbase ..][..len] · w[base_r ..][..len]`
/// for each `base_r` (rows of `w` stored as `elem`). Each chunk of `x` is loaded once for all
/// rows, and each row keeps `unroll` accumulators in the main loop. With `ahead > 0` the
/// main loop also prefetches each row `ahead` elements past the chunk it reads, into L2.
pub(crate) fn dots<'c>(
    e: &Emitter<'c, '_>,
    (x, xbase): (V<'c>, V<'c>),
    (w, elem): (V<'c>, Elem),
    bases: &[V<'c>],
    (len, ahead): (usize, usize),
    unroll: usize,
) -> Vec<V<'c>> {
    let n = bases.len();
    let chunk = pair_chunk(elem);
    let line = 64 / elem.size();
    let step = main_step(elem, ahead, unroll);
    let lines = step / (chunk * unroll);
    let main = len / step * step;
    let mut accs = vec![e.f32_splat(0.0, VW); n * unroll];
    if main > 0 {
        accs = e.for_k(0, main, step, &accs, |e, j, accs| {
            let mut next = accs.to_vec();
            for v in 0..unroll * lines {
                let (u, at) = (v % unroll, e.add_k(j, v * chunk));
                if ahead > 0 && (v * chunk).is_multiple_of(line) {
                    for base in bases {
                        e.prefetch_l2(w, e.add_k(e.addi(*base, at), ahead));
                    }
                }
                if elem == Elem::Bf16 {
                    let (even, odd) = even_odd(e, x, e.addi(xbase, at));
                    for (r, base) in bases.iter().enumerate() {
                        let (lo, hi) = bf16_pairs(e, w, e.addi(*base, at));
                        let acc = e.fma(even, lo, next[r * unroll + u]);
                        next[r * unroll + u] = e.fma(odd, hi, acc);
                    }
                    continue;
                }
                let xv = load_f32(e, x, e.addi(xbase, at), VW, Elem::F32);
                for (r, base) in bases.iter().enumerate() {
                    let wv = load_f32(e, w, e.addi(*base, at), VW, elem);
                    next[r * unroll + u] = e.fma(xv, wv, next[r * unroll + u]);
                }
            }
            next
        });
    }
    let mut totals: Vec<V<'c>> = accs
        .chunks(unroll)
        .map(|row| row[1..].iter().fold(row[0], |sum, acc| e.addf(sum, *acc)))
        .collect();
    let mut narrow: Vec<Option<V<'c>>> = vec![None; n];
    for (offset, width) in tail_chunks(main, len) {
        let at = e.index(offset as i64);
        let xv = load_f32(e, x, e.addi(xbase, at), width, Elem::F32);
        for (r, base) in bases.iter().enumerate() {
            let wv = load_f32(e, w, e.addi(*base, at), width, elem);
            if width == VW {
                totals[r] = e.fma(xv, wv, totals[r]);
            } else {
                narrow[r] = Some(e.mulf(xv, wv));
            }
        }
    }
    totals
        .into_iter()
        .zip(narrow)
        .map(|(total, narrow)| {
            let sum = e.reduce("add", total);
            match narrow {
                Some(part) => e.addf(sum, e.reduce("add", part)),
                None => sum,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_chunks_end_with_one_narrow_vector() {
        assert_eq!(tail_chunks(16, 27), vec![(16, 8), (24, 3)]);
        assert_eq!(tail_chunks(16, 16), vec![]);
        assert_eq!(tail_chunks(0, 5), vec![(0, 5)]);
    }
}
