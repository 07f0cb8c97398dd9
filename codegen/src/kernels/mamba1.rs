//! The Mamba1 selective scan with its gate ([`zambac_engine::KernelKind::Mamba1Scan`]),
//! one channel per grid index.
//!
//! A channel's state is one row of `N` values with its own `A` row, so unlike Mamba2 the
//! decay `exp(Δ·A)` is a vector per token. The state row and `A` stay in registers as
//! `VW`-wide vectors for the whole token loop; B and C are read from the head's x_proj row.

use super::Frame;
use super::act::{silu, softplus};
use super::emit::{Emitter, V, VW};
use super::rows::{load_f32, tail_chunks};
use zambac_engine::Elem;
use zambac_engine::Role;

/// The sizes of a Mamba1 scan.
pub(crate) struct ScanShape {
    pub heads: usize,
    pub head_dim: usize,
    pub state: usize,
    pub dt_rank: usize,
}

/// [`zambac_engine::KernelKind::Mamba1Scan`].
pub(crate) fn scan<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    dt_min: Option<f64>,
    step: bool,
) {
    let (x, dt, dt_bias, a_log, bc, d, xz, state, y) = (
        f.view(Role::X),
        f.view(Role::Dt),
        f.view(Role::DtBias),
        f.view(Role::ALog),
        f.view(Role::Bc),
        f.view(Role::D),
        f.view(Role::Xz),
        f.view(Role::State),
        f.view(Role::Y),
    );
    let rows = f.ints[0];
    let c = f.item;
    let n = s.state;
    let di = s.heads * s.head_dim;
    let bc_width = s.dt_rank + 2 * n;
    let head = e.divui(c, e.index(s.head_dim as i64));
    let chunks = tail_chunks(0, n);
    let row = e.mul_k(c, n);
    let a: Vec<V<'c>> = chunks
        .iter()
        .map(|&(offset, width)| {
            let a_log = load_f32(e, a_log, e.add_k(row, offset), width, Elem::F32);
            e.negf(e.math("exp", a_log))
        })
        .collect();
    let initial: Vec<V<'c>> = chunks
        .iter()
        .map(|&(offset, width)| {
            if step {
                load_f32(e, state, e.add_k(row, offset), width, Elem::F32)
            } else {
                e.f32_splat(0.0, width)
            }
        })
        .collect();
    let skip = e.load(d, c);
    let bias = e.load(dt_bias, c);
    let min = dt_min.map(|min| e.f32(min as f32));
    let last = e.for_(e.index(0), rows, e.index(1), &initial, |e, t, states| {
        let at = e.addi(e.mul_k(t, di), c);
        let mut delta = softplus(e, e.addf(e.load(dt, at), bias));
        if let Some(min) = min {
            delta = e.maxf(delta, min);
        }
        let xv = e.load(x, at);
        let dx = e.mulf(delta, xv);
        let bc_row = e.mul_k(e.addi(e.mul_k(t, s.heads), head), bc_width);
        let b_at = e.add_k(bc_row, s.dt_rank);
        let c_at = e.add_k(b_at, n);
        let mut next = Vec::with_capacity(states.len());
        let mut acc = e.f32_splat(0.0, VW);
        let mut narrow = None;
        for (i, &(offset, width)) in chunks.iter().enumerate() {
            let decay = e.math("exp", e.mulf(e.splat(delta, width), a[i]));
            let b = load_f32(e, bc, e.add_k(b_at, offset), width, Elem::F32);
            let cv = load_f32(e, bc, e.add_k(c_at, offset), width, Elem::F32);
            let s_new = e.fma(b, e.splat(dx, width), e.mulf(decay, states[i]));
            if width == VW {
                acc = e.fma(s_new, cv, acc);
            } else {
                narrow = Some(e.mulf(s_new, cv));
            }
            next.push(s_new);
        }
        let mut out = e.reduce("add", acc);
        if let Some(part) = narrow {
            out = e.addf(out, e.reduce("add", part));
        }
        out = e.fma(skip, xv, out);
        let z = e.load(xz, e.add_k(e.addi(e.mul_k(t, 2 * di), e.mul_k(c, 2)), 1));
        e.store(e.mulf(out, silu(e, z)), y, at);
        next
    });
    for (i, &(offset, _)) in chunks.iter().enumerate() {
        e.vstore(last[i], state, e.add_k(row, offset));
    }
}
