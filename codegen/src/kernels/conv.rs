//! The depthwise causal convolutions of the Mamba mixers, followed by SiLU: Mamba2's over the
//! xBC columns of the in-projection output, Mamba1's over its interleaved x columns.
//!
//! A grid index is a channel. On the GPU a thread takes one channel over all tokens, its last
//! `K−1` inputs riding along the token loop in registers (a warp's neighbouring channels
//! make each of its loads one coalesced stretch). The host takes [`super::Frame::block`]
//! neighbouring channels per iteration token by token: each token's channels are one
//! contiguous stretch of the input row, computed a vector of [`VECTOR`] channels at a time
//! (plus a shuffle to pick Mamba1's even columns), the `K−1` earlier inputs read back from
//! the rows just read (still in the first-level cache). A channel at a time over all tokens
//! would walk the input's rows — each a different page for long prompts — for every few
//! channels.

use super::Frame;
use super::act::silu;
use super::emit::{Emitter, V};
use super::rows::load_f32;
use melior::dialect::arith::CmpiPredicate;
use zambac_engine::Elem;
use zambac_engine::Role;

/// Where a channel's input for token `t` is.
#[derive(Clone, Copy)]
enum Input<'c> {
    /// `mem[t·stride + first + c]`.
    Columns {
        mem: V<'c>,
        stride: usize,
        first: usize,
    },
    /// `mem[t·2·channels + 2c]`.
    Interleaved { mem: V<'c>, channels: usize },
}

/// One conv kernel's operands.
struct Conv<'c> {
    input: Input<'c>,
    channels: usize,
    k: usize,
    step: bool,
    w: V<'c>,
    bias: Option<V<'c>>,
    state: V<'c>,
    out: V<'c>,
}

/// [`zambac_engine::KernelKind::Mamba2Conv`].
pub(crate) fn mamba2<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    width: usize,
    di: usize,
    cd: usize,
    k: usize,
    step: bool,
) {
    let (zx, w, b, state, out) = (
        f.view(Role::Zx),
        f.view(Role::ConvW),
        f.view(Role::ConvB),
        f.view(Role::State),
        f.view(Role::Out),
    );
    let input = Input::Columns {
        mem: zx,
        stride: width,
        first: di,
    };
    let conv = Conv {
        input,
        channels: cd,
        k,
        step,
        w,
        bias: Some(b),
        state,
        out,
    };
    run(e, f, &conv);
}

/// [`zambac_engine::KernelKind::Mamba1Conv`].
pub(crate) fn mamba1<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    di: usize,
    k: usize,
    bias: bool,
    step: bool,
) {
    let conv = Conv {
        input: Input::Interleaved {
            mem: f.view(Role::Xz),
            channels: di,
        },
        channels: di,
        k,
        step,
        w: f.view(Role::ConvW),
        bias: bias.then(|| f.view(Role::ConvB)),
        state: f.view(Role::State),
        out: f.view(Role::Out),
    };
    run(e, f, &conv);
}

/// Channels a host iteration takes token by token ([`super::Frame::block`]): 2 KB of each
/// input row.
pub(crate) const HOST_CHANNELS: usize = 512;

/// Channels the host computes together, one vector lane each: the width of the libmvec
/// functions SiLU's `exp` goes to ([`Emitter::math`]), whose lanes give the bits a single
/// channel gets.
const VECTOR: usize = 8;

/// f32 elements of the host's working memory: the block's weights transposed (`K` rows of
/// [`HOST_CHANNELS`]), then its conv state as it was before the call (`K−1` rows).
pub(crate) fn host_stack(k: usize) -> usize {
    (2 * k - 1) * HOST_CHANNELS
}

fn run<'c>(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, conv: &Conv<'c>) {
    match f.stack {
        Some(stack) if !f.gpu_schedule && f.block == HOST_CHANNELS => {
            by_token(e, conv, f.ints[0], (f.item, f.end), stack)
        }
        _ => f.blocks(e, |e, first, n| channels(e, conv, f.ints[0], first, n)),
    }
}

/// Loads `[x[t, c] for c in first..first+n]`.
fn load_input<'c>(
    e: &Emitter<'c, '_>,
    input: Input<'c>,
    t: V<'c>,
    first: V<'c>,
    n: usize,
) -> V<'c> {
    match input {
        Input::Columns {
            mem,
            stride,
            first: column,
        } => {
            let at = e.add_k(e.addi(e.mul_k(t, stride), first), column);
            load_f32(e, mem, at, n, Elem::F32)
        }
        Input::Interleaved { mem, channels } => {
            let at = e.addi(e.mul_k(t, 2 * channels), e.mul_k(first, 2));
            if n == 1 {
                return load_f32(e, mem, at, 1, Elem::F32);
            }
            // The pair of the last channel ends the load, so it stays inside the row.
            let pairs = load_f32(e, mem, at, 2 * n, Elem::F32);
            let even: Vec<i64> = (0..n as i64).map(|i| 2 * i).collect();
            e.shuffle(pairs, pairs, &even)
        }
    }
}

/// `[mem[(first + i)·stride + j] for i < n]` as a vector.
fn gather<'c>(
    e: &Emitter<'c, '_>,
    mem: V<'c>,
    first: V<'c>,
    n: usize,
    stride: usize,
    j: usize,
) -> V<'c> {
    let lanes: Vec<V<'c>> = (0..n)
        .map(|i| e.load(mem, e.add_k(e.mul_k(e.add_k(first, i), stride), j)))
        .collect();
    e.vector_of(&lanes)
}

/// Channels `[first, first + n)` over all `rows` tokens.
fn channels<'c>(e: &Emitter<'c, '_>, c: &Conv<'c>, rows: V<'c>, first: V<'c>, n: usize) {
    let k = c.k;
    let weights: Vec<V<'c>> = (0..k).map(|j| gather(e, c.w, first, n, k, j)).collect();
    let bias = match c.bias {
        Some(b) => load_f32(e, b, first, n, Elem::F32),
        None => e.f32_splat(0.0, n),
    };
    let history: Vec<V<'c>> = (0..k - 1)
        .map(|j| {
            if c.step {
                gather(e, c.state, first, n, k - 1, j)
            } else {
                e.f32_splat(0.0, n)
            }
        })
        .collect();
    let history = e.for_(e.index(0), rows, e.index(1), &history, |e, t, history| {
        let x = load_input(e, c.input, t, first, n);
        let mut acc = bias;
        for (j, past) in history.iter().enumerate() {
            acc = e.fma(weights[j], *past, acc);
        }
        acc = e.fma(weights[k - 1], x, acc);
        let at = e.addi(e.mul_k(t, c.channels), first);
        e.vstore(silu(e, acc), c.out, at);
        let mut next: Vec<V<'c>> = history.iter().skip(1).copied().collect();
        if k > 1 {
            next.push(x);
        }
        next
    });
    for (j, column) in history.iter().enumerate() {
        for i in 0..n {
            let at = e.add_k(e.mul_k(e.add_k(first, i), k - 1), j);
            e.store(e.extract(*column, i), c.state, at);
        }
    }
}

/// The host's iteration: channels `[first, min(first + HOST_CHANNELS, end))` token by token.
/// A channel's output is formed with the same operations in the same order as in
/// [`channels`], so a channel's bits do not depend on which path or block computed it.
fn by_token<'c>(
    e: &Emitter<'c, '_>,
    c: &Conv<'c>,
    rows: V<'c>,
    (first, end): (V<'c>, V<'c>),
    stack: V<'c>,
) {
    let k = c.k;
    let n = e.minsi(e.subi(end, first), e.index(HOST_CHANNELS as i64));
    let whole = e.mul_k(e.divui(n, e.index(VECTOR as i64)), VECTOR);
    // Where the staged weights and the state before the call lie in `stack`.
    let weight_at = |e: &Emitter<'c, '_>, j: usize, o: V<'c>| e.add_k(o, j * HOST_CHANNELS);
    let past_at = |e: &Emitter<'c, '_>, j: V<'c>, o: V<'c>| {
        e.addi(e.add_k(e.mul_k(j, HOST_CHANNELS), k * HOST_CHANNELS), o)
    };
    e.for_(e.index(0), n, e.index(1), &[], |e, o, _| {
        let channel = e.addi(first, o);
        for j in 0..k {
            let w = e.load(c.w, e.add_k(e.mul_k(channel, k), j));
            e.store(w, stack, weight_at(e, j, o));
        }
        for j in 0..k - 1 {
            let past = if c.step {
                e.load(c.state, e.add_k(e.mul_k(channel, k - 1), j))
            } else {
                e.f32(0.0)
            };
            e.store(past, stack, past_at(e, e.index(j as i64), o));
        }
        vec![]
    });
    // The input `t − (K−1) + j` of channels `o..o+width` of the block: a row of the call,
    // or before the first one, the state staged above.
    let earlier = |e: &Emitter<'c, '_>, t: V<'c>, j: usize, o: V<'c>, width: usize, head: bool| {
        let reach = e.add_k(t, j);
        let row = e.subi(reach, e.index((k - 1) as i64));
        if !head {
            return load_input(e, c.input, row, e.addi(first, o), width);
        }
        let inside = e.cmpi(CmpiPredicate::Sge, reach, e.index((k - 1) as i64));
        let x = load_input(
            e,
            c.input,
            e.maxsi(row, e.index(0)),
            e.addi(first, o),
            width,
        );
        let column = e.minsi(reach, e.index(k.saturating_sub(2) as i64));
        let past = load_f32(e, stack, past_at(e, column, o), width, Elem::F32);
        e.select(inside, x, past)
    };
    let token = |e: &Emitter<'c, '_>, t: V<'c>, o: V<'c>, width: usize, head: bool| {
        let weight = |j| load_f32(e, stack, weight_at(e, j, o), width, Elem::F32);
        let channel = e.addi(first, o);
        let mut acc = match c.bias {
            Some(b) => load_f32(e, b, channel, width, Elem::F32),
            None => e.f32_splat(0.0, width),
        };
        for j in 0..k - 1 {
            acc = e.fma(weight(j), earlier(e, t, j, o, width, head), acc);
        }
        let x = load_input(e, c.input, t, channel, width);
        acc = e.fma(weight(k - 1), x, acc);
        let at = e.addi(e.mul_k(t, c.channels), channel);
        e.vstore(silu(e, acc), c.out, at);
    };
    let tokens = |e: &Emitter<'c, '_>, from: V<'c>, to: V<'c>, head: bool| {
        e.for_(from, to, e.index(1), &[], |e, t, _| {
            e.for_(e.index(0), whole, e.index(VECTOR as i64), &[], |e, o, _| {
                token(e, t, o, VECTOR, head);
                vec![]
            });
            e.for_(whole, n, e.index(1), &[], |e, o, _| {
                token(e, t, o, 1, head);
                vec![]
            });
            vec![]
        });
    };
    // The first K−1 tokens may reach back into the state; the rest read only rows.
    let head = e.minsi(rows, e.index((k - 1) as i64));
    tokens(e, e.index(0), head, true);
    tokens(e, head, rows, false);
    // The new state: the last K−1 inputs of the state before the call and the call's rows
    // (a branch, not a select: a call of no rows has no row to read).
    e.for_(e.index(0), n, e.index(1), &[], |e, o, _| {
        let channel = e.addi(first, o);
        for j in 0..k - 1 {
            let reach = e.add_k(rows, j);
            let inside = e.cmpi(CmpiPredicate::Sge, reach, e.index((k - 1) as i64));
            let v = e.if_(
                inside,
                &[e.f32_t()],
                |e| {
                    let row = e.subi(reach, e.index((k - 1) as i64));
                    vec![e.extract(load_input(e, c.input, row, channel, 1), 0)]
                },
                |e| {
                    let column = e.minsi(reach, e.index(k.saturating_sub(2) as i64));
                    vec![e.load(stack, past_at(e, column, o))]
                },
            )[0];
            e.store(v, c.state, e.add_k(e.mul_k(channel, k - 1), j));
        }
        vec![]
    });
}
