//! The small row kernels: embedding lookup, elementwise add/multiply and KV-cache writes.

use super::Frame;
use super::emit::{Emitter, V};
use super::rows::{for_chunks, load_f32, store_f32_as};
use super::warp::{split_chunks, split_range};
use zambac_engine::BinOp;
use zambac_engine::Elem;
use zambac_engine::Role;

/// Copies `n` f32 lanes from `src[sbase..]` (stored as `elem`) to `dst[dbase..]`.
fn copy_row<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (src, sbase, elem): (V<'c>, V<'c>, Elem),
    (dst, dbase): (V<'c>, V<'c>),
    n: usize,
) {
    split_chunks(e, f, n, 2, |e, offset, width| {
        let v = load_f32(e, src, e.addi(sbase, offset), width, elem);
        e.vstore(v, dst, e.addi(dbase, offset));
    });
}

/// [`zambac_engine::KernelKind::Embedding`].
pub(crate) fn embedding<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, hidden: usize, elem: Elem) {
    let (tokens, table, out) = (f.view(Role::Tokens), f.view(Role::Table), f.view(Role::Out));
    let token = e.cast("index_cast", e.load(tokens, f.item), e.index_t());
    let source = (table, e.mul_k(token, hidden), elem);
    copy_row(e, f, source, (out, e.mul_k(f.item, hidden)), hidden);
}

/// [`zambac_engine::KernelKind::Binary`]; views `[a, b, out]`.
pub(crate) fn binary<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    op: BinOp,
    n: usize,
    b_rows: bool,
) {
    let (a, b, out) = (f.view(Role::A), f.view(Role::B), f.view(Role::Out));
    let row = e.mul_k(f.item, n);
    let brow = if b_rows { row } else { e.index(0) };
    split_chunks(e, f, n, 2, |e, offset, width| {
        let x = load_f32(e, a, e.addi(row, offset), width, Elem::F32);
        let y = load_f32(e, b, e.addi(brow, offset), width, Elem::F32);
        let z = match op {
            BinOp::Add => e.addf(x, y),
            BinOp::Mul => e.mulf(x, y),
        };
        e.vstore(z, out, e.addi(row, offset));
    });
}

/// [`zambac_engine::KernelKind::RowScale`].
pub(crate) fn row_scale<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, n: usize) {
    let (y, r, out) = (f.view(Role::Y), f.view(Role::R), f.view(Role::Out));
    let row = e.mul_k(f.item, n);
    let scale = e.load(r, f.item);
    split_chunks(e, f, n, 2, |e, offset, width| {
        let v = load_f32(e, y, e.addi(row, offset), width, Elem::F32);
        e.vstore(e.mulf(v, e.splat(scale, width)), out, e.addi(row, offset));
    });
}

/// [`zambac_engine::KernelKind::KvWrite`].
pub(crate) fn kv_write<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    heads: usize,
    head_dim: usize,
    stored: Elem,
) {
    let (k, cache) = (f.view(Role::K), f.view(Role::Cache));
    let [pos0, capacity] = f.ints[..] else {
        unreachable!("KvWrite has two integer arguments")
    };
    let position = e.addi(pos0, f.item);
    let row = e.mul_k(f.item, heads * head_dim);
    split_range(e, f, heads, |e, h| {
        let source = e.addi(row, e.mul_k(h, head_dim));
        let slot = e.addi(e.muli(h, capacity), position);
        let target = e.mul_k(slot, head_dim);
        for_chunks(e, head_dim, 2, |e, offset, width| {
            let v = load_f32(e, k, e.addi(source, offset), width, Elem::F32);
            store_f32_as(e, v, cache, e.addi(target, offset), width, stored);
        });
    });
}
