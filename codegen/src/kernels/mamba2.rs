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
//!
//! The same recurrence serves the GPU's forms: the chunked prefill scan ([`chunk_scan`]
//! over one chunk of the tokens, [`chunk_pass`] carrying the state along the chunks) and a
//! decode step with its conv ([`conv_scan`]: the xBC channels computed where they are read).

use super::act::{silu, softplus};
use super::emit::{Emitter, V, VW};
use super::rows::{
    for_chunks, load_f32, load_scalar_f32, store_f32_as, store_scalar_as, tail_chunks,
};
use super::warp::{ColumnScan, column_scan, lane_element, lane_elements, real_or_zero, when_real};
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

impl ScanShape {
    pub(crate) fn new(
        width: usize,
        (heads, head_dim): (usize, usize),
        (groups, state): (usize, usize),
        ssm: Elem,
    ) -> ScanShape {
        ScanShape {
            width,
            heads,
            head_dim,
            groups,
            state,
            ssm,
        }
    }
}

/// Everything one head's chunks read.
#[derive(Clone, Copy)]
struct Head<'c> {
    zx: V<'c>,
    /// The conv's output rows `[rows, cd]`; not read when `conv` computes the channels.
    xbc: V<'c>,
    /// One token's xBC channels computed from the conv's operands instead of read from
    /// `xbc` ([`zambac_engine::KernelKind::Mamba2ConvScan`]; the GPU schedule only).
    conv: Option<ConvIn<'c>>,
    /// The output `y` and `D[h]`, for a scan that writes its outputs (the first pass of
    /// the chunked scan only carries the state).
    out: Option<(V<'c>, V<'c>)>,
    state: V<'c>,
    /// How `state` is stored.
    ssm: Elem,
    /// `A = −exp(A_log[h])`, `dt_bias[h]`.
    a: V<'c>,
    dt_bias: V<'c>,
    dt_min: Option<f32>,
    /// Column of this head's Δ input in `zx`, of its x in `xbc`, and of its group's B and C.
    dt_column: V<'c>,
    x_column: V<'c>,
    /// Column of this head's first output in `y` (its x column in the conv's rows).
    y_column: V<'c>,
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

/// The operands of a decode step's conv, from which [`Head::channel`] computes xBC channels.
#[derive(Clone, Copy)]
struct ConvIn<'c> {
    zx: V<'c>,
    w: V<'c>,
    b: V<'c>,
    state: V<'c>,
    k: usize,
    di: usize,
}

impl<'c> ConvIn<'c> {
    /// Channel `c` of the step's conv output: `silu(b[c] + Σ_{j<K-1} w[c,j]·state[c,j] +
    /// w[c,K-1]·zx[di + c])`.
    fn channel(&self, e: &Emitter<'c, '_>, c: V<'c>) -> V<'c> {
        let k = self.k;
        let (w_row, s_row) = (e.mul_k(c, k), e.mul_k(c, k - 1));
        let mut acc = e.load(self.b, c);
        for j in 0..k - 1 {
            let w = e.load(self.w, e.add_k(w_row, j));
            acc = e.fma(w, e.load(self.state, e.add_k(s_row, j)), acc);
        }
        let input = e.load(self.zx, e.add_k(c, self.di));
        acc = e.fma(e.load(self.w, e.add_k(w_row, k - 1)), input, acc);
        silu(e, acc)
    }
}

impl<'c> Head<'c> {
    /// The xBC value at flat index `index` of the conv's rows (`t·cd + column`); a fused
    /// step has one token, so there the index is the channel, which the conv computes.
    fn channel(&self, e: &Emitter<'c, '_>, index: V<'c>) -> V<'c> {
        match &self.conv {
            Some(conv) => conv.channel(e, index),
            None => e.load(self.xbc, index),
        }
    }

    /// Head `h` of a scan of shape `s` reading xBC from `xbc`, its state at `state_base` of
    /// `state` (stored as `ssm`); with `y` and `D` when `outputs`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        e: &Emitter<'c, '_>,
        f: &Frame<'c, '_>,
        s: &ScanShape,
        dt_min: Option<f64>,
        (h, xbc): (V<'c>, V<'c>),
        (state, state_base, ssm): (V<'c>, V<'c>, Elem),
        outputs: bool,
    ) -> Head<'c> {
        let (p, n) = (s.head_dim, s.state);
        let di = s.heads * p;
        let gn = s.groups * n;
        let cd = di + 2 * gn;
        let group = e.divui(h, e.index((s.heads / s.groups) as i64));
        let b_column = e.add_k(e.mul_k(group, n), di);
        let out = outputs.then(|| (f.view(Role::Y), e.load(f.view(Role::D), h)));
        Head {
            zx: f.view(Role::Zx),
            xbc,
            conv: None,
            out,
            state,
            ssm,
            a: e.negf(e.math("exp", e.load(f.view(Role::ALog), h))),
            dt_bias: e.load(f.view(Role::DtBias), h),
            dt_min: dt_min.map(|min| min as f32),
            dt_column: e.add_k(h, di + cd),
            x_column: e.mul_k(h, p),
            y_column: e.mul_k(h, p),
            b_column,
            c_column: e.add_k(b_column, gn),
            state_base,
            width: s.width,
            cd,
            di,
            p,
            n,
        }
    }

    /// Token `t`'s Δ (softplus, clamped) and decay `exp(Δ·A)`, one token at a time.
    fn delta_decay(&self, e: &Emitter<'c, '_>, t: V<'c>) -> (V<'c>, V<'c>) {
        let raw = e.load(self.zx, e.addi(e.mul_k(t, self.width), self.dt_column));
        let mut delta = softplus(e, e.addf(raw, self.dt_bias));
        if let Some(min) = self.dt_min {
            delta = e.maxf(delta, e.f32(min));
        }
        (delta, e.math("exp", e.mulf(delta, self.a)))
    }
}

/// [`zambac_engine::KernelKind::Mamba2Scan`].
pub(crate) fn scan<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    dt_min: Option<f64>,
    step: bool,
) {
    let rows = f.ints[0];
    let h = f.item;
    let state = (f.view(Role::State), e.mul_k(h, s.head_dim * s.state), s.ssm);
    let head = Head::new(e, f, s, dt_min, (h, f.view(Role::Xbc)), state, true);
    let tokens = (e.index(0), rows);
    if f.gpu_schedule {
        scan_warp(e, f, &head, tokens, step);
        return;
    }
    // A bf16 state read by one token is stored once anyway; for more tokens it is carried
    // through the call in an f32 copy of the head's rows (the stack), widened once and
    // rounded once at the end, as the GPU schedule keeps it in registers: the rounding does
    // not depend on how the tokens are blocked.
    match f.stack {
        Some(work) if s.ssm == Elem::Bf16 => {
            let one = e.cmpi(CmpiPredicate::Eq, rows, e.index(1));
            e.when(one, |e| in_place(e, &head, tokens, step));
            let more = e.cmpi(CmpiPredicate::Ne, rows, e.index(1));
            e.when(more, |e| through_copy(e, &head, work, tokens, step));
        }
        _ => in_place(e, &head, tokens, step),
    }
}

/// [`zambac_engine::KernelKind::Mamba2ConvScan`]: head `f.item`'s decode step with the
/// xBC channels it reads computed from the conv's operands. The GPU schedule computes each
/// where the scan reads it (every lane its state columns' B and C); the host computes the
/// head's `P + 2N` channels into its stack first and scans from there.
pub(crate) fn conv_scan<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    k: usize,
    dt_min: Option<f64>,
) {
    let h = f.item;
    let (p, n) = (s.head_dim, s.state);
    let conv = ConvIn {
        zx: f.view(Role::Zx),
        w: f.view(Role::ConvW),
        b: f.view(Role::ConvB),
        state: f.view(Role::ConvState),
        k,
        di: s.heads * p,
    };
    let state = (f.view(Role::State), e.mul_k(h, p * n), s.ssm);
    let head = Head::new(e, f, s, dt_min, (h, conv.zx), state, true);
    let token = (e.index(0), e.index(1));
    if f.gpu_schedule {
        let head = Head {
            conv: Some(conv),
            ..head
        };
        scan_warp(e, f, &head, token, true);
        return;
    }
    let Some(stage) = f.stack else {
        // `stack_size` gives this kind its stack on the host; without one the build is
        // inconsistent, which the verifier reports on the missing value.
        return;
    };
    // The head's x, then its group's B and C, at columns 0, P and P + N of the stack.
    for (from, count, at) in [
        (head.x_column, p, 0),
        (head.b_column, n, p),
        (head.c_column, n, p + n),
    ] {
        e.for_k(0, count, 1, &[], |e, i, _| {
            let value = conv.channel(e, e.addi(from, i));
            e.store(value, stage, e.add_k(i, at));
            vec![]
        });
    }
    let staged = Head {
        xbc: stage,
        x_column: e.index(0),
        b_column: e.index(p as i64),
        c_column: e.index((p + n) as i64),
        cd: p + 2 * n,
        ..head
    };
    in_place(e, &staged, token, true);
}

/// [`zambac_engine::KernelKind::Mamba2ChunkScan`]: grid index `c·heads + h` scans head `h`
/// over chunk `c` with the state in the chunk's row of `chunk_states` — from zero, keeping
/// the state and the product of the decays (pass 1), or from the state the pass left there,
/// writing `y` (pass 3) — as [`scan`] scans a whole call.
pub(crate) fn chunk_scan<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    dt_min: Option<f64>,
    (chunks, min_len): (usize, usize),
    outputs: bool,
) {
    let rows = f.ints[0];
    let heads = e.index(s.heads as i64);
    let (c, h) = (e.divui(f.item, heads), e.remui(f.item, heads));
    let (len, used) = chunking(e, rows, chunks, min_len);
    // An empty chunk (past the `used` ones) has nothing to do.
    e.when(e.cmpi(CmpiPredicate::Ult, c, used), |e| {
        let first = e.muli(c, len);
        let tokens = (first, e.minsi(e.addi(first, len), rows));
        chunk_tokens(e, f, s, dt_min, (h, tokens), outputs);
    });
}

/// [`zambac_engine::scan_chunking`] of a call of `rows` tokens: `(L, used)` as indices.
fn chunking<'c>(e: &Emitter<'c, '_>, rows: V<'c>, chunks: usize, min_len: usize) -> (V<'c>, V<'c>) {
    let even = e.divui(
        e.add_k(rows, chunks.max(1) - 1),
        e.index(chunks.max(1) as i64),
    );
    let len = e.maxsi(even, e.index(min_len.max(1) as i64));
    let used = e.divui(e.addi(rows, e.subi(len, e.index(1))), len);
    (len, used)
}

/// Head `h`'s scan over `tokens`, the non-empty chunk of grid index `f.item` (see
/// [`chunk_scan`]).
fn chunk_tokens<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    s: &ScanShape,
    dt_min: Option<f64>,
    (h, tokens): (V<'c>, (V<'c>, V<'c>)),
    outputs: bool,
) {
    let states = f.view(Role::ChunkStates);
    let row = (states, e.mul_k(f.item, s.head_dim * s.state), Elem::F32);
    let head = Head::new(e, f, s, dt_min, (h, f.view(Role::Xbc)), row, outputs);
    if f.gpu_schedule {
        scan_warp(e, f, &head, tokens, outputs);
    } else {
        in_place(e, &head, tokens, outputs);
    }
    if outputs {
        return;
    }
    // The chunk's decay: the product of its tokens', by one thread.
    let store_decay = |e: &Emitter<'c, '_>| {
        let one = e.f32(1.0);
        let product = e.for_(tokens.0, tokens.1, e.index(1), &[one], |e, t, acc| {
            vec![e.mulf(acc[0], head.delta_decay(e, t).1)]
        });
        e.store(product[0], f.view(Role::ChunkDecay), f.item);
    };
    if f.gpu_schedule {
        // By the first lane of state row 0: thread 0 of the grid index on the GPU; on the
        // host, where an iteration is a row and its warp a loop, row 0's iteration.
        e.when(e.cmpi(CmpiPredicate::Eq, f.lane, e.index(0)), store_decay);
    } else {
        store_decay(e);
    }
}

/// [`zambac_engine::KernelKind::Mamba2ChunkPass`]: head `f.item`'s state carried along the
/// chunks, each chunk's row of `chunk_states` swapped for the state entering it.
pub(crate) fn chunk_pass<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    (heads, p, n): (usize, usize, usize),
    (chunks, min_len): (usize, usize),
    ssm: Elem,
) {
    let (_, used) = chunking(e, f.ints[0], chunks, min_len);
    let (states, decays, state) = (
        f.view(Role::ChunkStates),
        f.view(Role::ChunkDecay),
        f.view(Role::State),
    );
    let h = f.item;
    let head_base = e.mul_k(h, p * n);
    // Chunk `c`'s decay and the first element of head `h`'s rows in `chunk_states`.
    let chunk = |e: &Emitter<'c, '_>, c: V<'c>| {
        let at = e.addi(e.mul_k(c, heads), h);
        (e.load(decays, at), e.mul_k(at, p * n))
    };
    if !f.gpu_schedule {
        for_chunks(e, p * n, 2, |e, offset, width| {
            let at = e.addi(head_base, offset);
            let start = load_f32(e, state, at, width, ssm);
            let end = e.for_(e.index(0), used, e.index(1), &[start], |e, c, s| {
                let (decay, base) = chunk(e, c);
                let own_at = e.addi(base, offset);
                let own = load_f32(e, states, own_at, width, Elem::F32);
                e.vstore(s[0], states, own_at);
                vec![e.fma(e.splat(decay, width), s[0], own)]
            });
            store_f32_as(e, end[0], state, at, width, ssm);
        });
        return;
    }
    // A warp per state row, as in the scan: lane `l` carries columns `l, l + 32, …`.
    let row = if f.warp_threads {
        e.divui(f.lane, e.index(WARP as i64))
    } else {
        f.lane
    };
    let column = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| {
        lane_element(e, e.remui(lane, e.index(WARP as i64)), i, n)
    };
    let row_offset = e.mul_k(row, n);
    let state_row = e.addi(head_base, row_offset);
    // On the host the lanes are a loop through the buffer between chunks: a bf16 state is
    // carried in an f32 copy of the row (the stack) and rounded once, as the GPU's registers
    // carry it.
    let carry = match f.stack {
        Some(work) if !f.warp_threads && ssm == Elem::Bf16 => {
            e.for_k(0, n, 1, &[], |e, i, _| {
                let value = load_scalar_f32(e, state, e.addi(state_row, i), ssm);
                e.store(value, work, i);
                vec![]
            });
            Some(work)
        }
        _ => None,
    };
    let scan = ColumnScan {
        state: carry.map_or((state, state_row), |work| (work, e.index(0))),
        elem: if carry.is_some() { Elem::F32 } else { ssm },
        per: lane_elements(n),
        tokens: (e.index(0), used),
        step: true,
        outputs: false,
    };
    column_scan(
        e,
        f,
        &scan,
        column,
        |e, c| {
            let (decay, base) = chunk(e, c);
            (decay, e.addi(base, row_offset))
        },
        |e, &(decay, base), lane, i, s| {
            let (col, real) = column(e, lane, i);
            let at = e.addi(base, col);
            let own = e.load(states, at);
            when_real(e, real, |e| e.store(s, states, at));
            (e.fma(decay, s, own), e.f32(0.0))
        },
        |_, _, _, _| {},
    );
    if let Some(work) = carry {
        e.for_k(0, n, 1, &[], |e, i, _| {
            let value = e.load(work, i);
            store_scalar_as(e, value, state, e.addi(state_row, i), ssm);
            vec![]
        });
    }
}

/// The scan over tokens `first .. end` with the state where it is stored (zeroed first
/// for a new prompt).
fn in_place<'c>(e: &Emitter<'c, '_>, head: &Head<'c>, (first, end): (V<'c>, V<'c>), step: bool) {
    if !step {
        for_chunks(e, head.p * head.n, 2, |e, offset, width| {
            let at = e.addi(head.state_base, offset);
            store_f32_as(e, e.f32_splat(0.0, width), head.state, at, width, head.ssm);
        });
    }
    let whole = e.mul_k(e.divui(e.subi(end, first), e.index(TOKENS as i64)), TOKENS);
    let full = e.addi(first, whole);
    e.for_(first, full, e.index(TOKENS as i64), &[], |e, t, _| {
        tokens(e, head, t, TOKENS);
        vec![]
    });
    e.for_(full, end, e.index(1), &[], |e, t, _| {
        tokens(e, head, t, 1);
        vec![]
    });
}

/// The scan with the state carried in `work` (`P × N` f32): widened from where it is stored
/// (or zero), scanned in place there, and stored back rounded once.
fn through_copy<'c>(
    e: &Emitter<'c, '_>,
    head: &Head<'c>,
    work: V<'c>,
    tokens: (V<'c>, V<'c>),
    step: bool,
) {
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
    in_place(e, &copy, tokens, true);
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
                    let decayed = e.mulf(s[i], e.splat(decays[j], width));
                    s[i] = e.fma(b, e.splat(dbx, width), decayed);
                    if head.out.is_none() {
                        continue;
                    }
                    let c = load_f32(e, head.xbc, e.add_k(c_at, offset), width, Elem::F32);
                    if width == VW {
                        accs[i % 2] = e.fma(s[i], c, accs[i % 2]);
                    } else {
                        narrow = Some(e.mulf(s[i], c));
                    }
                }
                let Some((y, d)) = head.out else {
                    continue;
                };
                let mut out = e.sum_any_order(e.addf(accs[0], accs[1]));
                if let Some(part) = narrow {
                    out = e.addf(out, e.sum_any_order(part));
                }
                let y_at = e.addi(y_rows[j], e.addi(head.y_column, p));
                out = if block == 0 {
                    e.fma(d, xs[j], out)
                } else {
                    e.addf(e.load(y, y_at), out)
                };
                e.store(out, y, y_at);
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
fn scan_warp<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    head: &Head<'c>,
    tokens: (V<'c>, V<'c>),
    step: bool,
) {
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
        let (delta, decay) = head.delta_decay(e, t);
        let xbc_row = e.mul_k(t, head.cd);
        let x = head.channel(e, e.addi(xbc_row, x_at));
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
        let b = head.channel(e, e.addi(b_at, c));
        let s = e.fma(b, dbx, e.mulf(s, decay));
        if head.out.is_none() {
            return (s, e.f32(0.0));
        }
        let cv = head.channel(e, e.addi(c_at, c));
        (s, real_or_zero(e, real, e.mulf(s, cv)))
    };
    let scan = ColumnScan {
        state: (head.state, row),
        elem: head.ssm,
        per,
        tokens,
        step,
        outputs: head.out.is_some(),
    };
    column_scan(
        e,
        f,
        &scan,
        column,
        token,
        update,
        |e, t, &(_, _, x, _, _), sum| {
            if let Some((y, d)) = head.out {
                let y_at = e.addi(e.mul_k(t, head.di), e.addi(head.y_column, p));
                e.store(e.fma(d, x, sum), y, y_at);
            }
        },
    );
}
