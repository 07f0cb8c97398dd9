//! Sums across the lanes of a warp — or of a block's warps — written once for both places a
//! GPU schedule runs.
//!
//! On the GPU ([`Frame::warp_threads`]) each lane is a thread: it computes its own partial
//! and a butterfly of `gpu.shuffle xor` (offsets 16, 8, 4, 2, 1) leaves the warp's total in
//! every lane. A team of several warps (a block per row: [`super::block_row`]) then adds the
//! warps' totals through workgroup memory: each warp's first lane writes its total to the
//! warp's slot, a barrier, and every thread adds the slots in warp order (then a second
//! barrier, so the next sum may reuse the slots). On the host the same schedule runs with
//! the team as a loop inside one grid iteration: the partials are computed one after another
//! into the iteration's private buffer, each warp's 32 are combined by the same butterfly,
//! pair by pair, and the warps' totals are added in the same order — the same additions, so
//! the host run of a GPU schedule computes what the GPU computes.

use melior::ir::Attribute;

use super::emit::{Emitter, V, VW};
use super::rows::{load_scalar_f32, store_scalar_as};
use super::{Frame, WARP};
use zambac_engine::Elem;

/// The butterfly's offsets: after the step with offset `o`, lane `l` holds the sum of the
/// `2·o` lanes whose indices agree with `l` above bit `o`.
const OFFSETS: [usize; 5] = [16, 8, 4, 2, 1];

/// f32 elements of the host buffer a [`team_sums`] of `count` values over `team` lanes
/// needs: the partials, then (for several warps, one value) the warps' totals.
pub(crate) fn team_stack(team: usize, count: usize) -> usize {
    let warps = team / WARP;
    count * team + if warps > 1 { warps } else { 0 }
}

/// `Σ_lane partial(lane)` over the frame's team ([`Frame::team`] lanes: a warp, or a
/// block's warps), in every lane. `partial` must depend on nothing but its lane (and values
/// computed before the call). On the GPU every thread of the team must call it.
pub(crate) fn team_sum<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    partial: impl Fn(&Emitter<'c, '_>, V<'c>) -> V<'c>,
) -> V<'c> {
    team_sums(e, f, 1, |e, lane| vec![partial(e, lane)])[0]
}

/// [`team_sum`] of `count` values at once: `partials(e, lane)` gives a lane's `count`
/// partials (computed together, e.g. in one pass over a weight row), and each is summed
/// over the team exactly as [`team_sum`] sums one (a team of several warps passes the
/// values through its workgroup slots one after another).
pub(crate) fn team_sums<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    count: usize,
    partials: impl Fn(&Emitter<'c, '_>, V<'c>) -> Vec<V<'c>>,
) -> Vec<V<'c>> {
    let warps = f.team / WARP;
    if f.warp_threads {
        let values = partials(e, f.lane).into_iter().map(|mut value| {
            for offset in OFFSETS {
                let other = shuffle_xor(e, value, offset);
                value = e.addf(value, other);
            }
            value
        });
        let values: Vec<V<'c>> = values.collect();
        let Some(slots) = f.shared.filter(|_| warps > 1) else {
            return values;
        };
        // The warps' totals of one value after another, through the same slots (the second
        // barrier lets the next value overwrite them).
        let warp = e.divui(f.lane, e.index(WARP as i64));
        return values
            .into_iter()
            .map(|value| {
                e.when(first_lane(e, f), |e| e.store(value, slots, warp));
                e.barrier();
                let total = (1..warps).fold(e.load(slots, e.index(0)), |total, w| {
                    e.addf(total, e.load(slots, e.index(w as i64)))
                });
                e.barrier();
                total
            })
            .collect();
    }
    let Some(buffer) = f.stack else {
        // `stack_size` gives every warp kind a buffer on the host; without one the build is
        // inconsistent, which the verifier would report on the missing value.
        return partials(e, e.index(0));
    };
    // Partial `j` of lane `l` at `j·team + l`; a value's warp totals after all partials.
    e.for_k(0, f.team, 1, &[], |e, lane, _| {
        for (j, value) in partials(e, lane).into_iter().enumerate() {
            e.store(value, buffer, e.add_k(lane, j * f.team));
        }
        vec![]
    });
    // The butterfly of the warp whose lanes start at `base`, as lane 0 computes it.
    let warp_total = |e: &Emitter<'c, '_>, base: V<'c>| {
        let mut lanes: Vec<V<'c>> = (0..WARP)
            .map(|l| e.load(buffer, e.add_k(base, l)))
            .collect();
        for offset in OFFSETS {
            lanes = (0..WARP)
                .map(|l| e.addf(lanes[l], lanes[l ^ offset]))
                .collect();
        }
        lanes[0]
    };
    if warps <= 1 {
        return (0..count)
            .map(|j| warp_total(e, e.index((j * f.team) as i64)))
            .collect();
    }
    let totals = count * f.team;
    (0..count)
        .map(|j| {
            e.for_k(0, warps, 1, &[], |e, w, _| {
                let total = warp_total(e, e.add_k(e.mul_k(w, WARP), j * f.team));
                e.store(total, buffer, e.add_k(w, totals));
                vec![]
            });
            (1..warps).fold(e.load(buffer, e.index(totals as i64)), |total, w| {
                e.addf(total, e.load(buffer, e.index((totals + w) as i64)))
            })
        })
        .collect()
}

/// Whether this thread is its team's first (on the GPU; on the host, where one iteration
/// runs the whole team, always): the one that stores a value the whole team computed.
pub(crate) fn team_leader<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>) -> V<'c> {
    if !f.warp_threads {
        return e.int_const(1, e.int_t(1));
    }
    let lane = e.remui(f.lane, e.index(f.team as i64));
    e.cmpi(melior::dialect::arith::CmpiPredicate::Eq, lane, e.index(0))
}

/// Whether this thread stores its warp's result: the warp's first lane on the GPU; on the
/// host, where one iteration runs the whole warp, always.
pub(crate) fn first_lane<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>) -> V<'c> {
    if !f.warp_threads {
        return e.int_const(1, e.int_t(1));
    }
    let lane = e.remui(f.lane, e.index(WARP as i64));
    e.cmpi(melior::dialect::arith::CmpiPredicate::Eq, lane, e.index(0))
}

/// `gpu.shuffle xor`: the value of lane `lane ^ offset`.
fn shuffle_xor<'c>(e: &Emitter<'c, '_>, value: V<'c>, offset: usize) -> V<'c> {
    let i32_t = e.int_t(32);
    let offset = e.int_const(offset as i64, i32_t);
    let width = e.int_const(WARP as i64, i32_t);
    let mode =
        Attribute::parse(e.cx, "#gpu<shuffle_mode xor>").expect("the gpu dialect's xor mode");
    e.emit(
        "gpu.shuffle",
        &[value, offset, width],
        &[e.f32_t(), e.int_t(1)],
        &[("mode", mode)],
    )[0]
}

/// Runs `body(e, lane)` for this thread's lane on the GPU, or for each of the team's lanes
/// in turn on the host: the second phase of a warp (or block) kernel, after a [`team_sum`],
/// where each lane finishes the elements it read in the first (no lane reads another's).
pub(crate) fn for_lanes<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    body: impl Fn(&Emitter<'c, '_>, V<'c>),
) {
    if f.warp_threads {
        body(e, f.lane);
        return;
    }
    e.for_k(0, f.team, 1, &[], |e, lane, _| {
        body(e, lane);
        vec![]
    });
}

/// A lane's share of `[0, len)` among `team` lanes: in every whole round `r` of `team·per`
/// elements, the elements `r·team·per + lane + team·i` for `i < per` — so each step of a
/// warp reads 32 consecutive elements, whole sectors, whatever the row's alignment (lanes
/// taking `VW`-chunks instead made each of a chunk's `VW` scalar loads touch 32 sectors) —
/// then the elements past the last round one apiece, at `rounds·team·per + lane + team·t`.
/// Calls `f(e, offset, 1)` for each. `per` ([`VW`] unless a kernel's body needs fewer
/// registers) sets the independent work in flight per round.
pub(crate) fn lane_chunks<'c>(
    e: &Emitter<'c, '_>,
    (len, per, team): (usize, usize, usize),
    lane: V<'c>,
    f: impl Fn(&Emitter<'c, '_>, V<'c>, usize),
) {
    let round = team * per;
    let rounds = len / round;
    if rounds > 0 {
        e.for_k(0, rounds, 1, &[], |e, r, _| {
            let first = e.addi(e.mul_k(r, round), lane);
            for i in 0..per {
                f(e, e.add_k(first, i * team), 1);
            }
            vec![]
        });
    }
    let tail = rounds * round;
    if tail < len {
        let from = e.add_k(lane, tail);
        e.for_(
            from,
            e.index(len as i64),
            e.index(team as i64),
            &[],
            |e, j, _| {
                f(e, j, 1);
                vec![]
            },
        );
    }
}

/// As [`lane_chunks`], summing what `f(e, offset, width, acc)` accumulates into `acc` (a
/// `vector<width x f32>`, here of one lane: `per` independent accumulators per round);
/// returns the lane's f32 total.
pub(crate) fn lane_sum_chunks<'c>(
    e: &Emitter<'c, '_>,
    (len, per, team): (usize, usize, usize),
    lane: V<'c>,
    f: impl Fn(&Emitter<'c, '_>, V<'c>, usize, V<'c>) -> V<'c>,
) -> V<'c> {
    let round = team * per;
    let rounds = len / round;
    let mut total = e.f32_splat(0.0, 1);
    if rounds > 0 {
        let zero = vec![e.f32_splat(0.0, 1); per];
        let accs = e.for_k(0, rounds, 1, &zero, |e, r, acc| {
            let first = e.addi(e.mul_k(r, round), lane);
            (0..per)
                .map(|i| f(e, e.add_k(first, i * team), 1, acc[i]))
                .collect()
        });
        total = accs.iter().fold(total, |t, a| e.addf(t, *a));
    }
    let tail = rounds * round;
    if tail < len {
        let from = e.add_k(lane, tail);
        let acc = e.for_(
            from,
            e.index(len as i64),
            e.index(team as i64),
            &[e.f32_splat(0.0, 1)],
            |e, j, acc| vec![f(e, j, 1, acc[0])],
        );
        total = e.addf(total, acc[0]);
    }
    e.reduce("add", total)
}

/// `f(e, offset, width)` over `[0, len)`: every chunk in this iteration ([`for_chunks`]), or,
/// when the frame has several lanes (a warp, or a block for a wide row), this lane's share
/// of them ([`lane_chunks`]) — for kernels whose elements are independent, whose lanes need
/// no exchange.
pub(crate) fn split_chunks<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    len: usize,
    unroll: usize,
    body: impl Fn(&Emitter<'c, '_>, V<'c>, usize),
) {
    if f.lanes > 1 {
        lane_chunks(e, (len, VW, f.lanes), f.lane, body);
    } else {
        super::rows::for_chunks(e, len, unroll, body);
    }
}

/// `body(e, i)` for `i` in `[0, count)`: all of them in this iteration, or every `lanes`-th
/// from this lane's index when the frame has several lanes.
pub(crate) fn split_range<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    count: usize,
    body: impl Fn(&Emitter<'c, '_>, V<'c>),
) {
    let (from, step) = if f.lanes > 1 {
        (f.lane, f.lanes)
    } else {
        (e.index(0), 1)
    };
    e.for_(
        from,
        e.index(count as i64),
        e.index(step as i64),
        &[],
        |e, i, _| {
            body(e, i);
            vec![]
        },
    );
}

/// Elements a lane owns when a warp shares `[0, len)` one element apiece: `lane + 32·i` for
/// `i < ⌈len / 32⌉` (the last round may be partial).
pub(crate) fn lane_elements(len: usize) -> usize {
    len.div_ceil(WARP)
}

/// Element `i` of `lane`'s share of `[0, len)` ([`lane_elements`]), clamped into the range (a
/// lane past its end reads the last element and must not use it), and, in a partial round,
/// whether the element is real.
pub(crate) fn lane_element<'c>(
    e: &Emitter<'c, '_>,
    lane: V<'c>,
    i: usize,
    len: usize,
) -> (V<'c>, Option<V<'c>>) {
    let d = e.add_k(lane, i * WARP);
    if (i + 1) * WARP <= len {
        return (d, None);
    }
    let last = e.index(len as i64 - 1);
    let real = e.cmpi(melior::dialect::arith::CmpiPredicate::Sle, d, last);
    (e.minsi(d, last), Some(real))
}

/// `value` for a real element ([`lane_element`]), zero for one past the end.
pub(crate) fn real_or_zero<'c>(e: &Emitter<'c, '_>, real: Option<V<'c>>, value: V<'c>) -> V<'c> {
    match real {
        Some(real) => e.select(real, value, e.f32(0.0)),
        None => value,
    }
}

/// Runs `body` for a real element only ([`lane_element`]).
pub(crate) fn when_real<'c>(
    e: &Emitter<'c, '_>,
    real: Option<V<'c>>,
    body: impl FnOnce(&Emitter<'c, '_>),
) {
    match real {
        Some(real) => e.when(real, body),
        None => body(e),
    }
}

/// What a warp scan over tokens needs ([`column_scan`]).
pub(crate) struct ColumnScan<'c> {
    /// The state buffer and the first element of the warp's state row.
    pub state: (V<'c>, V<'c>),
    /// How the state buffer stores its values (f32 or bf16).
    pub elem: Elem,
    /// State columns per lane ([`lane_elements`]).
    pub per: usize,
    /// Tokens to take: `first .. end`.
    pub tokens: (V<'c>, V<'c>),
    /// Whether the scan continues the state in the buffer (else it starts from zero).
    pub step: bool,
    /// Whether each token has an output (the warp's sum, stored by `finish`); without one
    /// the lanes only carry their columns (no sums, no exchange).
    pub outputs: bool,
}

/// A warp's scan over tokens `first .. end`, its lanes owning the state columns
/// `column(e, lane, i)` (`i < per`, with [`lane_element`]'s mask) of one state row: per token
/// `token(e, t)` gives what the token's update reads, `update(e, &token, lane, i, s)` the
/// column's new value and its part of the token's output sum, and `finish(e, t, &token, sum)`
/// — in the first lane — stores the output from the warp's sum ([`team_sum`]). On the GPU a
/// lane's columns are registers from the first token to the last (loaded once when
/// continuing, stored once at the end); on the host, where the warp is a loop, they live in
/// the state row.
pub(crate) fn column_scan<'c, T>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    scan: &ColumnScan<'c>,
    column: impl Fn(&Emitter<'c, '_>, V<'c>, usize) -> (V<'c>, Option<V<'c>>),
    token: impl Fn(&Emitter<'c, '_>, V<'c>) -> T,
    update: impl Fn(&Emitter<'c, '_>, &T, V<'c>, usize, V<'c>) -> (V<'c>, V<'c>),
    finish: impl Fn(&Emitter<'c, '_>, V<'c>, &T, V<'c>),
) {
    let (state, row) = scan.state;
    let at = |e: &Emitter<'c, '_>, lane: V<'c>, i: usize| {
        let (c, real) = column(e, lane, i);
        (e.addi(row, c), real)
    };
    if f.warp_threads {
        let init: Vec<V<'c>> = (0..scan.per)
            .map(|i| {
                if scan.step {
                    let (a, real) = at(e, f.lane, i);
                    real_or_zero(e, real, load_scalar_f32(e, state, a, scan.elem))
                } else {
                    e.f32(0.0)
                }
            })
            .collect();
        let (first, end) = scan.tokens;
        let last = e.for_(first, end, e.index(1), &init, |e, t, s| {
            let tok = token(e, t);
            let mut sum = e.f32(0.0);
            let next = (0..scan.per)
                .map(|i| {
                    let (value, part) = update(e, &tok, f.lane, i, s[i]);
                    if scan.outputs {
                        sum = e.addf(sum, part);
                    }
                    value
                })
                .collect();
            if scan.outputs {
                let total = team_sum(e, f, |_, _| sum);
                e.when(first_lane(e, f), |e| finish(e, t, &tok, total));
            }
            next
        });
        for (i, value) in last.iter().enumerate() {
            let (a, real) = at(e, f.lane, i);
            when_real(e, real, |e| store_scalar_as(e, *value, state, a, scan.elem));
        }
        return;
    }
    if !scan.step {
        for_lanes(e, f, |e, lane| {
            for i in 0..scan.per {
                let (a, real) = at(e, lane, i);
                when_real(e, real, |e| {
                    store_scalar_as(e, e.f32(0.0), state, a, scan.elem)
                });
            }
        });
    }
    let (first, end) = scan.tokens;
    e.for_(first, end, e.index(1), &[], |e, t, _| {
        let tok = token(e, t);
        if !scan.outputs {
            for_lanes(e, f, |e, lane| {
                for i in 0..scan.per {
                    let (a, real) = at(e, lane, i);
                    let old = load_scalar_f32(e, state, a, scan.elem);
                    let (value, _) = update(e, &tok, lane, i, old);
                    when_real(e, real, |e| store_scalar_as(e, value, state, a, scan.elem));
                }
            });
            return vec![];
        }
        let total = team_sum(e, f, |e, lane| {
            let mut sum = e.f32(0.0);
            for i in 0..scan.per {
                let (a, real) = at(e, lane, i);
                let old = load_scalar_f32(e, state, a, scan.elem);
                let (value, part) = update(e, &tok, lane, i, old);
                when_real(e, real, |e| store_scalar_as(e, value, state, a, scan.elem));
                sum = e.addf(sum, part);
            }
            sum
        });
        e.when(first_lane(e, f), |e| finish(e, t, &tok, total));
        vec![]
    });
}

/// Values of a lane's elements that stay fixed through a kernel (q in decode attention, `A`
/// in the Mamba1 scan): on the GPU this thread computes its lane's once, into registers; on
/// the host, where the lanes are a loop, [`LaneValues::get`] computes them where they are
/// used.
pub(crate) struct LaneValues<'c, F> {
    own: Vec<V<'c>>,
    value: F,
}

impl<'c, F: Fn(&Emitter<'c, '_>, V<'c>, usize) -> V<'c>> LaneValues<'c, F> {
    /// `value(e, lane, i)` for element `i` of `lane`, for `count` elements per lane.
    pub(crate) fn new(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, count: usize, value: F) -> Self {
        let own = if f.warp_threads {
            (0..count).map(|i| value(e, f.lane, i)).collect()
        } else {
            Vec::new()
        };
        LaneValues { own, value }
    }

    /// Element `i` of `lane` (on the GPU, `lane` is this thread's).
    pub(crate) fn get(&self, e: &Emitter<'c, '_>, lane: V<'c>, i: usize) -> V<'c> {
        match self.own.get(i) {
            Some(v) => *v,
            None => (self.value)(e, lane, i),
        }
    }
}
