//! RMSNorm and its fused forms, one row per grid index: plain (with equal groups), after a
//! residual add, over a concatenation, and Mamba2's gate + grouped norm.
//!
//! Each row is read twice — once for the sum of squares, once to scale — in `VW`-wide
//! chunks; the second pass hits L1/L2 because a row is at most a few KiB. On the GPU a warp
//! takes a row — a block of 8 warps when the row is wide ([`super::block_row`]): each lane
//! sums the squares of its elements (every 32nd, or 256th, so that each warp reads
//! consecutive elements: [`lane_sum_chunks`]), a [`team_sum`] gives every lane the row's
//! total, and each lane scales the elements it read.

use super::Frame;
use super::act::silu;
use super::emit::{Emitter, V, VW};
use super::rows::{for_chunks, load_f32, sum_chunks};
use super::warp::{for_lanes, lane_chunks, lane_sum_chunks, team_leader, team_sum};
use zambac_engine::Role;
use zambac_engine::{ConvShift, Elem};

/// `Σ` over a row of `n` elements of what `body(e, offset, width, acc)` accumulates: by one
/// thread on the host, by the lanes of a warp or block and a [`team_sum`] in a GPU schedule, each
/// lane taking `per` elements per round ([`lane_sum_chunks`]).
fn row_sum<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (n, per): (usize, usize),
    body: impl Fn(&Emitter<'c, '_>, V<'c>, usize, V<'c>) -> V<'c>,
) -> V<'c> {
    if f.gpu_schedule {
        team_sum(e, f, |e, lane| {
            lane_sum_chunks(e, (n, per, f.team), lane, &body)
        })
    } else {
        sum_chunks(e, n, UNROLL, body)
    }
}

/// `body(e, offset, width)` over a row of `n` elements, split as [`row_sum`] splits it with
/// the same `per` (each lane the elements it summed: a lane reads back only what it wrote).
fn row_each<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (n, per): (usize, usize),
    body: impl Fn(&Emitter<'c, '_>, V<'c>, usize),
) {
    if f.gpu_schedule {
        for_lanes(e, f, |e, lane| {
            lane_chunks(e, (n, per, f.team), lane, &body)
        });
    } else {
        for_chunks(e, n, 2, body);
    }
}

/// Elements per lane and round of the gate norm's GPU schedule (see [`lane_sum_chunks`]):
/// one — the warp still reads 32 consecutive elements per step.
const GATE_PER_LANE: usize = 1;

/// Accumulators of the sum-of-squares loop: enough independent chains to hide FMA latency.
const UNROLL: usize = 4;

/// `1 / sqrt(ss / n + eps)`.
fn inv_rms<'c>(e: &Emitter<'c, '_>, ss: V<'c>, n: usize, eps: f64) -> V<'c> {
    let mean = e.divf(ss, e.f32(n as f32));
    let root = e.math("sqrt", e.addf(mean, e.f32(eps as f32)));
    e.divf(e.f32(1.0), root)
}

fn load<'c>(e: &Emitter<'c, '_>, mem: V<'c>, base: V<'c>, offset: V<'c>, width: usize) -> V<'c> {
    load_f32(e, mem, e.addi(base, offset), width, Elem::F32)
}

/// `Σ x²` over `x[base .. base+n]`.
fn sum_squares<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    x: V<'c>,
    base: V<'c>,
    n: usize,
) -> V<'c> {
    row_sum(e, f, (n, VW), |e, offset, width, acc| {
        let v = load(e, x, base, offset, width);
        e.fma(v, v, acc)
    })
}

/// `out[obase + j] = src[sbase + j] · inv · w[wbase + j]` for `j < n`, split as a
/// [`row_sum`] with `per`.
fn scale_row<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (src, sbase): (V<'c>, V<'c>),
    (w, wbase): (V<'c>, V<'c>),
    (out, obase): (V<'c>, V<'c>),
    inv: V<'c>,
    (n, per): (usize, usize),
) {
    row_each(e, f, (n, per), |e, offset, width| {
        let v = load(e, src, sbase, offset, width);
        let s = load(e, w, wbase, offset, width);
        let y = e.mulf(e.mulf(v, e.splat(inv, width)), s);
        e.vstore(y, out, e.addi(obase, offset));
    });
}

/// [`zambac_engine::KernelKind::RmsNorm`].
pub(crate) fn rms_norm<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    d: usize,
    groups: usize,
    eps: f64,
) {
    let (x, w, out) = (f.view(Role::X), f.view(Role::W), f.view(Role::Out));
    let gw = d / groups;
    let row = e.mul_k(f.item, d);
    e.for_k(0, groups, 1, &[], |e, g, _| {
        let wbase = e.mul_k(g, gw);
        let base = e.addi(row, wbase);
        let inv = inv_rms(e, sum_squares(e, f, x, base, gw), gw, eps);
        scale_row(e, f, (x, base), (w, wbase), (out, base), inv, (gw, VW));
        vec![]
    });
}

/// [`zambac_engine::KernelKind::AddRmsNorm`]: the sum is stored in the first pass and
/// normalised from there in the second.
pub(crate) fn add_rms_norm<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, d: usize, eps: f64) {
    let (a, b, w, sum, out) = (
        f.view(Role::A),
        f.view(Role::B),
        f.view(Role::W),
        f.view(Role::Sum),
        f.view(Role::Out),
    );
    let row = e.mul_k(f.item, d);
    let ss = row_sum(e, f, (d, VW), |e, offset, width, acc| {
        let s = e.addf(
            load(e, a, row, offset, width),
            load(e, b, row, offset, width),
        );
        e.vstore(s, sum, e.addi(row, offset));
        e.fma(s, s, acc)
    });
    let inv = inv_rms(e, ss, d, eps);
    scale_row(e, f, (sum, row), (w, e.index(0)), (out, row), inv, (d, VW));
}

/// [`zambac_engine::KernelKind::ConcatRmsNorm`].
pub(crate) fn concat_rms_norm<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    da: usize,
    db: usize,
    eps: f64,
) {
    let (a, b, w, out) = (
        f.view(Role::A),
        f.view(Role::B),
        f.view(Role::W),
        f.view(Role::Out),
    );
    let (arow, brow) = (e.mul_k(f.item, da), e.mul_k(f.item, db));
    let orow = e.mul_k(f.item, da + db);
    let inv = concat_inv_rms(e, f, (a, arow, da), (b, brow, db), eps);
    if da > 0 {
        scale_row(e, f, (a, arow), (w, e.index(0)), (out, orow), inv, (da, VW));
    }
    if db > 0 {
        let (wb, ob) = (e.index(da as i64), e.add_k(orow, da));
        scale_row(e, f, (b, brow), (w, wb), (out, ob), inv, (db, VW));
    }
}

/// [`zambac_engine::KernelKind::ConcatRmsScale`].
pub(crate) fn concat_rms_scale<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    da: usize,
    db: usize,
    eps: f64,
) {
    let (a, b, r) = (f.view(Role::A), f.view(Role::B), f.view(Role::R));
    let (arow, brow) = (e.mul_k(f.item, da), e.mul_k(f.item, db));
    let inv = concat_inv_rms(e, f, (a, arow, da), (b, brow, db), eps);
    if f.gpu_schedule {
        e.when(team_leader(e, f), |e| e.store(inv, r, f.item));
    } else {
        e.store(inv, r, f.item);
    }
}

/// `1/rms` of the concatenation of the rows `a[arow .. arow+da]` and `b[brow .. brow+db]`.
fn concat_inv_rms<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (a, arow, da): (V<'c>, V<'c>, usize),
    (b, brow, db): (V<'c>, V<'c>, usize),
    eps: f64,
) -> V<'c> {
    let mut ss = e.f32(0.0);
    if da > 0 {
        ss = e.addf(ss, sum_squares(e, f, a, arow, da));
    }
    if db > 0 {
        ss = e.addf(ss, sum_squares(e, f, b, brow, db));
    }
    inv_rms(e, ss, da + db, eps)
}

/// [`zambac_engine::KernelKind::Mamba2GateNorm`]: the gated values `y ⊙ silu(z)` are
/// stored to `out` in the first pass (so SiLU's exponential runs once per element) and scaled
/// in place in the second.
pub(crate) fn gate_norm<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (width, di, groups, eps): (usize, usize, usize, f64),
    conv_shift: Option<ConvShift>,
) {
    if let Some(shift) = conv_shift {
        shift_conv_state(e, f, di, shift);
    }
    let (y, zx, w, out) = (
        f.view(Role::Y),
        f.view(Role::Zx),
        f.view(Role::W),
        f.view(Role::Out),
    );
    let gw = di / groups;
    let (yrow, zrow) = (e.mul_k(f.item, di), e.mul_k(f.item, width));
    e.for_k(0, groups, 1, &[], |e, g, _| {
        let wbase = e.mul_k(g, gw);
        let (ybase, zbase) = (e.addi(yrow, wbase), e.addi(zrow, wbase));
        // One chunk per iteration: SiLU's exponential already gives each iteration enough
        // independent work, and four unrolled chunks of it spill on the GPU — as did 2, 4 or
        // 8 elements per lane and round there for one released config or another (ptxas
        // kept the kernel to 32–40 registers and spilled 8–20 bytes).
        let ss = row_sum(e, f, (gw, GATE_PER_LANE), |e, offset, lanes, acc| {
            let z = load(e, zx, zbase, offset, lanes);
            let gated = e.mulf(load(e, y, ybase, offset, lanes), silu(e, z));
            e.vstore(gated, out, e.addi(ybase, offset));
            e.fma(gated, gated, acc)
        });
        let inv = inv_rms(e, ss, gw, eps);
        scale_row(
            e,
            f,
            (out, ybase),
            (w, wbase),
            (out, ybase),
            inv,
            (gw, GATE_PER_LANE),
        );
        vec![]
    });
}

/// A decode step's conv state moved one input to the left, the step's input (`zx[0, di +
/// c]`) last: channel `c`'s row of `K − 1` values. Spread over the team's lanes in a GPU
/// schedule (channel `c` by lane `c mod team`).
fn shift_conv_state<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, di: usize, shift: ConvShift) {
    let (zx, state) = (f.view(Role::Zx), f.view(Role::ConvState));
    let keep = shift.k.saturating_sub(1);
    if keep == 0 {
        return;
    }
    let channel = |e: &Emitter<'c, '_>, c: V<'c>| {
        let row = e.mul_k(c, keep);
        for j in 0..keep - 1 {
            let next = e.load(state, e.add_k(row, j + 1));
            e.store(next, state, e.add_k(row, j));
        }
        let input = e.load(zx, e.add_k(c, di));
        e.store(input, state, e.add_k(row, keep - 1));
    };
    let channels = e.index(shift.channels as i64);
    if f.gpu_schedule {
        let team = e.index(f.team as i64);
        for_lanes(e, f, |e, lane| {
            let first = e.remui(lane, team);
            e.for_(first, channels, team, &[], |e, c, _| {
                channel(e, c);
                vec![]
            });
        });
    } else {
        e.for_(e.index(0), channels, e.index(1), &[], |e, c, _| {
            channel(e, c);
            vec![]
        });
    }
}
