//! The Mamba1 selective scan with its gate ([`zambac_engine::KernelKind::Mamba1Scan`]),
//! one channel per grid index.
//!
//! A channel's state is one row of `N` values with its own `A` row, so unlike Mamba2 the
//! decay `exp(Δ·A)` is a vector per token. The state row and `A` stay in registers as
//! `VW`-wide vectors for the whole token loop; B and C are read from the head's x_proj row.
//!
//! On the GPU each channel is a warp ([`scan_warp`]): its lanes split the state columns and
//! a butterfly sums `S·C` per token, so a model's few thousand channels fill the GPU with
//! warps instead of a few thousand lone threads.

use super::Frame;
use super::act::{silu, softplus};
use super::emit::{Emitter, V, VW};
use super::rows::{load_f32, store_f32_as, tail_chunks};
use super::warp::{ColumnScan, LaneValues, column_scan, lane_element, lane_elements, real_or_zero};
use zambac_engine::Elem;
use zambac_engine::Role;

/// The sizes of a Mamba1 scan.
pub(crate) struct ScanShape {
    pub heads: usize,
    pub head_dim: usize,
    pub state: usize,
    pub dt_rank: usize,
    /// How the state is stored (f32 or bf16).
    pub ssm: Elem,
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
    let head = e.divui(c, e.index(s.head_dim as i64));
    let channel = Channel {
        x,
        dt,
        bc,
        xz,
        state,
        y,
        skip: e.load(d, c),
        bias: e.load(dt_bias, c),
        dt_min: dt_min.map(|min| e.f32(min as f32)),
        c,
        head,
        di,
        heads: s.heads,
        dt_rank: s.dt_rank,
        n,
    };
    if f.gpu_schedule {
        scan_warp(e, f, &channel, a_log, rows, (step, s.ssm));
        return;
    }
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
                load_f32(e, state, e.add_k(row, offset), width, s.ssm)
            } else {
                e.f32_splat(0.0, width)
            }
        })
        .collect();
    let last = e.for_(e.index(0), rows, e.index(1), &initial, |e, t, states| {
        let token = channel.token(e, t);
        let (delta, xv, dx) = (token.delta, token.x, token.dx);
        let (b_at, c_at) = (token.b_at, token.c_at);
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
        channel.finish(e, t, xv, out);
        next
    });
    for (i, &(offset, width)) in chunks.iter().enumerate() {
        store_f32_as(e, last[i], state, e.add_k(row, offset), width, s.ssm);
    }
}

/// What every token of one channel reads and writes.
struct Channel<'c> {
    x: V<'c>,
    dt: V<'c>,
    bc: V<'c>,
    xz: V<'c>,
    state: V<'c>,
    y: V<'c>,
    /// `D[c]`, `dt_bias[c]` and the Δ floor.
    skip: V<'c>,
    bias: V<'c>,
    dt_min: Option<V<'c>>,
    /// The channel and its head.
    c: V<'c>,
    head: V<'c>,
    di: usize,
    heads: usize,
    dt_rank: usize,
    n: usize,
}

/// One token of a channel: Δ, x, Δ·x and where its B and C start in the x_proj output.
struct Token<'c> {
    delta: V<'c>,
    x: V<'c>,
    dx: V<'c>,
    b_at: V<'c>,
    c_at: V<'c>,
}

impl<'c> Channel<'c> {
    fn token(&self, e: &Emitter<'c, '_>, t: V<'c>) -> Token<'c> {
        let at = e.addi(e.mul_k(t, self.di), self.c);
        let mut delta = softplus(e, e.addf(e.load(self.dt, at), self.bias));
        if let Some(min) = self.dt_min {
            delta = e.maxf(delta, min);
        }
        let x = e.load(self.x, at);
        let bc_row = e.mul_k(
            e.addi(e.mul_k(t, self.heads), self.head),
            self.dt_rank + 2 * self.n,
        );
        let b_at = e.add_k(bc_row, self.dt_rank);
        Token {
            delta,
            x,
            dx: e.mulf(delta, x),
            b_at,
            c_at: e.add_k(b_at, self.n),
        }
    }

    /// Stores token `t`'s output from its x and `S·C`: `(S·C + D·x)·silu(z)`.
    fn finish(&self, e: &Emitter<'c, '_>, t: V<'c>, x: V<'c>, sc: V<'c>) {
        let at = e.addi(e.mul_k(t, self.di), self.c);
        let out = e.fma(self.skip, x, sc);
        let z_at = e.add_k(e.addi(e.mul_k(t, 2 * self.di), e.mul_k(self.c, 2)), 1);
        let z = e.load(self.xz, z_at);
        e.store(e.mulf(out, silu(e, z)), self.y, at);
    }
}

/// The GPU schedule: a warp per channel, lane `l` owning state columns `l, l + 32, …` (with
/// their `A`). Per token every lane updates its columns — `S ← exp(Δ·A)·S + (Δ·x)·B` — and
/// forms its part of `S·C`; a butterfly ([`team_sum`]) completes it and the first lane stores
/// the gated output. On the GPU a lane's columns and their `A` stay in registers for the
/// whole scan (the state is loaded once when continuing and stored once at the end); on the
/// host the lanes are a loop (see [`team_sum`]) and the columns live in the state row.
fn scan_warp<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    ch: &Channel<'c>,
    a_log: V<'c>,
    rows: V<'c>,
    (step, elem): (bool, Elem),
) {
    let n = ch.n;
    let row = e.mul_k(ch.c, n);
    let per = lane_elements(n);
    let column = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| lane_element(e, lane, i, n);
    let a = LaneValues::new(e, f, per, |e, lane, i| {
        let at = e.addi(row, column(e, lane, i).0);
        e.negf(e.math("exp", e.load(a_log, at)))
    });
    // Element `i` of `lane` after `token`, from `s`; and its part of `S·C` (zero for a lane
    // past the last column).
    let update = |e: &Emitter<'c, '_>, token: &Token<'c>, lane: V<'c>, i: usize, s: V<'c>| {
        let (col, real) = column(e, lane, i);
        let decay = e.math("exp", e.mulf(token.delta, a.get(e, lane, i)));
        let b = e.load(ch.bc, e.addi(token.b_at, col));
        let s = e.fma(b, token.dx, e.mulf(s, decay));
        let cv = e.load(ch.bc, e.addi(token.c_at, col));
        (s, real_or_zero(e, real, e.mulf(s, cv)))
    };
    let scan = ColumnScan {
        state: (ch.state, row),
        elem,
        per,
        tokens: (e.index(0), rows),
        step,
        outputs: true,
    };
    column_scan(
        e,
        f,
        &scan,
        column,
        |e, t| ch.token(e, t),
        update,
        |e, t, token, sc| ch.finish(e, t, token.x, sc),
    );
}
