//! The Mamba2 SSD recurrence ([`zambac_engine::KernelKind::Mamba2Scan`]), one head per
//! grid index: the kernel that dominates prefill after the matrix products.
//!
//! For each head the state is `P` rows of `N` values. Tokens are taken [`TOKENS`] at a time:
//! their Δ and decay `exp(Δ·A)` are computed together as one vector (one exponential per
//! token and head, not per state row). Then for each state row `p` the row is loaded into
//! registers — [`COLUMNS`] values at a time, as `VW`-wide vectors — and carried through
//! those tokens: `S ← decay·S + (Δ·x)·B`, `y = S·C (+ D·x)`, reading B and C from the
//! token's xBC row (L1-resident), and stored back once. Within a chunk of tokens the only
//! memory traffic per state row is B, C and x; the state itself never leaves registers.
//!
//! On the GPU each state row is a warp of its own ([`scan_warp`]): the rows share nothing but
//! the head's Δ, B and C, and a row's 32 lanes split its state columns.

use super::act::softplus;
use super::emit::{Emitter, V, VW};
use super::rows::{for_chunks, load_f32, store_f32_as, tail_chunks};
use super::warp::{ColumnScan, column_scan, lane_element, lane_elements, real_or_zero};
use super::{Frame, WARP};
use melior::dialect::arith::CmpiPredicate;
use zambac_engine::Elem;
use zambac_engine::Role;

/// Tokens per chunk: one vector of Δ values.
const TOKENS: usize = VW;

/// State values per register block: 8 vectors of 8, which leaves AVX2 registers for B, C and
/// two accumulators.
const COLUMNS: usize = 8 * VW;

/// The sizes of a Mamba2 scan.
pub(crate) struct ScanShape {
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub state: usize,
    /// How the state is stored (f32 or bf16).
    pub ssm: Elem,
}

/// Everything one head's chunks read.
#[derive(Clone, Copy)]
struct Head<'c> {
    zx: V<'c>,
    xbc: V<'c>,
    y: V<'c>,
    state: V<'c>,
    /// How `state` is stored.
    ssm: Elem,
    /// `A = −exp(A_log[h])`, `D[h]`, `dt_bias[h]`.
    a: V<'c>,
    d: V<'c>,
    dt_bias: V<'c>,
    dt_min: Option<f32>,
    /// Column of this head's Δ input in `zx`, of its x in `xbc`, and of its group's B and C.
    dt_column: V<'c>,
    x_column: V<'c>,
    b_column: V<'c>,
    c_column: V<'c>,
    /// First element of this head's state.
    state_base: V<'c>,
    width: usize,
    cd: usize,
    di: usize,
    p: usize,
    n: usize,
}

/// [`zambac_engine::KernelKind::Mamba2Scan`].
pub(crate) fn scan<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    dt_min: Option<f64>,
    step: bool,
) {
    let (zx, xbc, dt_bias, a_log, d, y, state) = (
        f.view(Role::Zx),
        f.view(Role::Xbc),
        f.view(Role::DtBias),
        f.view(Role::ALog),
        f.view(Role::D),
        f.view(Role::Y),
        f.view(Role::State),
    );
    let rows = f.ints[0];
    let h = f.item;
    let (p, n) = (s.head_dim, s.state);
    let di = s.heads * p;
    let gn = s.groups * n;
    let cd = di + 2 * gn;
    let group = e.divui(h, e.index((s.heads / s.groups) as i64));
    let b_column = e.add_k(e.mul_k(group, n), di);
    let head = Head {
        zx,
        xbc,
        y,
        state,
        ssm: s.ssm,
        a: e.negf(e.math("exp", e.load(a_log, h))),
        d: e.load(d, h),
        dt_bias: e.load(dt_bias, h),
        dt_min: dt_min.map(|min| min as f32),
        dt_column: e.add_k(h, di + cd),
        x_column: e.mul_k(h, p),
        b_column,
        c_column: e.add_k(b_column, gn),
        state_base: e.mul_k(h, p * n),
        width: s.width,
        cd,
        di,
        p,
        n,
    };
    if f.gpu_schedule {
        scan_warp(e, f, &head, rows, step);
        return;
    }
    // A bf16 state read by one token is stored once anyway; for more tokens it is carried
    // through the call in an f32 copy of the head's rows (the stack), widened once and
    // rounded once at the end, as the GPU schedule keeps it in registers: the rounding does
    // not depend on how the tokens are blocked.
    match f.stack {
        Some(work) if s.ssm == Elem::Bf16 => {
            let one = e.cmpi(CmpiPredicate::Eq, rows, e.index(1));
            e.when(one, |e| in_place(e, &head, rows, step));
            let more = e.cmpi(CmpiPredicate::Ne, rows, e.index(1));
            e.when(more, |e| through_copy(e, &head, work, rows, step));
        }
        _ => in_place(e, &head, rows, step),
    }
}

/// The scan over `rows` tokens with the state where it is stored (zeroed first for a new
/// prompt).
fn in_place<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, rows: V<'c>, step: bool) {
    if !step {
        for_chunks(e, head.p * head.n, 2, |e, offset, width| {
            let at = e.addi(head.state_base, offset);
            store_f32_as(e, e.f32_splat(0.0, width), head.state, at, width, head.ssm);
        });
    }
    let full = e.mul_k(e.divui(rows, e.index(TOKENS as i64)), TOKENS);
    e.for_(e.index(0), full, e.index(TOKENS as i64), &[], |e, t, _| {
        tokens(e, head, t, TOKENS);
        vec![]
    });
    e.for_(full, rows, e.index(1), &[], |e, t, _| {
        tokens(e, head, t, 1);
        vec![]
    });
}

/// The scan with the state carried in `work` (`P × N` f32): widened from where it is stored
/// (or zero), scanned in place there, and stored back rounded once.
fn through_copy<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, work: V<'c>, rows: V<'c>, step: bool) {
    let copy = Head {
        state: work,
        state_base: e.index(0),
        ssm: Elem::F32,
        ..*head
    };
    let len = head.p * head.n;
    for_chunks(e, len, 2, |e, offset, width| {
        let value = if step {
            load_f32(
                e,
                head.state,
                e.addi(head.state_base, offset),
                width,
                head.ssm,
            )
        } else {
            e.f32_splat(0.0, width)
        };
        e.vstore(value, work, offset);
    });
    in_place(e, &copy, rows, true);
    for_chunks(e, len, 2, |e, offset, width| {
        let value = load_f32(e, work, offset, width, Elem::F32);
        let at = e.addi(head.state_base, offset);
        store_f32_as(e, value, head.state, at, width, head.ssm);
    });
}

/// Tokens `[first, first + count)` of one head.
fn tokens<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, first: V<'c>, count: usize) {
    let rows: Vec<V<'c>> = (0..count).map(|j| e.add_k(first, j)).collect();
    let raw: Vec<V<'c>> = rows
        .iter()
        .map(|t| e.load(head.zx, e.addi(e.mul_k(*t, head.width), head.dt_column)))
        .collect();
    let mut delta = softplus(e, e.addf(e.vector_of(&raw), e.splat(head.dt_bias, count)));
    if let Some(min) = head.dt_min {
        delta = e.maxf(delta, e.f32_splat(min, count));
    }
    let decay = e.math("exp", e.mulf(delta, e.splat(head.a, count)));
    let deltas: Vec<V<'c>> = (0..count).map(|j| e.extract(delta, j)).collect();
    let decays: Vec<V<'c>> = (0..count).map(|j| e.extract(decay, j)).collect();
    let xbc_rows: Vec<V<'c>> = rows.iter().map(|t| e.mul_k(*t, head.cd)).collect();
    let y_rows: Vec<V<'c>> = rows.iter().map(|t| e.mul_k(*t, head.di)).collect();
    e.for_k(0, head.p, 1, &[], |e, p, _| {
        let x_at = e.addi(head.x_column, p);
        let xs: Vec<V<'c>> = xbc_rows
            .iter()
            .map(|row| e.load(head.xbc, e.addi(*row, x_at)))
            .collect();
        let state_row = e.addi(head.state_base, e.mul_k(p, head.n));
        for block in (0..head.n).step_by(COLUMNS) {
            let chunks = tail_chunks(block, head.n.min(block + COLUMNS));
            let mut s: Vec<V<'c>> = chunks
                .iter()
                .map(|&(offset, width)| {
                    let at = e.add_k(state_row, offset);
                    load_f32(e, head.state, at, width, head.ssm)
                })
                .collect();
            for j in 0..count {
                let b_at = e.addi(xbc_rows[j], head.b_column);
                let c_at = e.addi(xbc_rows[j], head.c_column);
                let dbx = e.mulf(deltas[j], xs[j]);
                let mut accs = [e.f32_splat(0.0, VW), e.f32_splat(0.0, VW)];
                let mut narrow = None;
                for (i, &(offset, width)) in chunks.iter().enumerate() {
                    let b = load_f32(e, head.xbc, e.add_k(b_at, offset), width, Elem::F32);
                    let c = load_f32(e, head.xbc, e.add_k(c_at, offset), width, Elem::F32);
                    let decayed = e.mulf(s[i], e.splat(decays[j], width));
                    s[i] = e.fma(b, e.splat(dbx, width), decayed);
                    if width == VW {
                        accs[i % 2] = e.fma(s[i], c, accs[i % 2]);
                    } else {
                        narrow = Some(e.mulf(s[i], c));
                    }
                }
                let mut out = e.sum_any_order(e.addf(accs[0], accs[1]));
                if let Some(part) = narrow {
                    out = e.addf(out, e.sum_any_order(part));
                }
                let y_at = e.addi(y_rows[j], x_at);
                out = if block == 0 {
                    e.fma(head.d, xs[j], out)
                } else {
                    e.addf(e.load(head.y, y_at), out)
                };
                e.store(out, head.y, y_at);
            }
            for (i, &(offset, width)) in chunks.iter().enumerate() {
                let at = e.add_k(state_row, offset);
                store_f32_as(e, s[i], head.state, at, width, head.ssm);
            }
        }
        vec![]
    });
}

/// The GPU schedule: a warp per state row `p` of a head, its 32 lanes taking the state
/// columns `n ≡ lane (mod 32)`. For each token every lane updates its columns
/// (`S ← decay·S + (Δ·x)·B`) and sums its part of `S·C`; a [`team_sum`] gives the row's
/// `y`, which the first lane stores with the `D` skip. Δ, the decay and x are the same for
/// the whole warp and each lane computes them itself. On the GPU a lane's columns stay in
/// registers from the first token to the last (loaded once when continuing a state, stored
/// once at the end); on the host, where the warp is a loop, they live in the state buffer.
fn scan_warp<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, head: &Head<'c>, rows: V<'c>, step: bool) {
    // On the GPU the grid index has `P·32` threads: lane `l` is row `l / 32`, column lane
    // `l % 32`; on the host an iteration is a row and its warp a loop (see `team_sum`).
    let p = if f.warp_threads {
        e.divui(f.lane, e.index(WARP as i64))
    } else {
        f.lane
    };
    let per = lane_elements(head.n);
    // Element `i` of `lane`: its state column, and whether it is one (see `lane_element`).
    let column = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| {
        lane_element(e, e.remui(lane, e.index(WARP as i64)), i, head.n)
    };
    let row = e.addi(head.state_base, e.mul_k(p, head.n));
    let x_at = e.addi(head.x_column, p);
    // Token `t`'s decay, Δ·x, x, and where its B and C start.
    let token = |e: &Emitter<'c, '_>, t: V<'c>| {
        let raw = e.load(head.zx, e.addi(e.mul_k(t, head.width), head.dt_column));
        let mut delta = softplus(e, e.addf(raw, head.dt_bias));
        if let Some(min) = head.dt_min {
            delta = e.maxf(delta, e.f32(min));
        }
        let decay = e.math("exp", e.mulf(delta, head.a));
        let xbc_row = e.mul_k(t, head.cd);
        let x = e.load(head.xbc, e.addi(xbc_row, x_at));
        let b_at = e.addi(xbc_row, head.b_column);
        let c_at = e.addi(xbc_row, head.c_column);
        (decay, e.mulf(delta, x), x, b_at, c_at)
    };
    // Element `i` of `lane` after token `(decay, dbx, _, b_at, c_at)`, from `s`; and its part
    // of `S·C` (zero for a lane past the last column).
    let update = |e: &Emitter<'c, '_>,
                  &(decay, dbx, _, b_at, c_at): &(V<'c>, V<'c>, V<'c>, V<'c>, V<'c>),
                  lane: V<'c>,
                  i: usize,
                  s: V<'c>| {
        let (c, real) = column(e, lane, i);
        let b = e.load(head.xbc, e.addi(b_at, c));
        let s = e.fma(b, dbx, e.mulf(s, decay));
        let cv = e.load(head.xbc, e.addi(c_at, c));
        (s, real_or_zero(e, real, e.mulf(s, cv)))
    };
    let scan = ColumnScan {
        state: (head.state, row),
        elem: head.ssm,
        per,
        rows,
        step,
    };
    column_scan(
        e,
        f,
        &scan,
        column,
        token,
        update,
        |e, t, &(_, _, x, _, _), y| {
            let y_at = e.addi(e.mul_k(t, head.di), x_at);
            e.store(e.fma(head.d, x, y), head.y, y_at);
        },
    );
}
