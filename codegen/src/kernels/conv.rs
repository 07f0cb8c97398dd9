//! The depthwise causal convolutions of the Mamba mixers, followed by SiLU: Mamba2's over the
//! xBC columns of the in-projection output, Mamba1's over its interleaved x columns.
//!
//! A grid index is a channel. The host computes [`super::Frame::block`] neighbouring
//! channels together, one lane each, so every token is one contiguous vector load (plus a
//! shuffle to pick Mamba1's even columns). The last `K−1` inputs of the channels ride along
//! the token loop in registers and are written back as the new conv state.

use super::Frame;
use super::act::silu;
use super::emit::{Emitter, V};
use super::rows::load_f32;
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
    f.blocks(e, |e, first, n| channels(e, &conv, f.ints[0], first, n));
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
    f.blocks(e, |e, first, n| channels(e, &conv, f.ints[0], first, n));
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
