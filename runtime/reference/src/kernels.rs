//! The reference math, one plain function per primitive (spec §2, §5).
//!
//! Written for obviousness: straight loops over the formulas, reductions accumulated in
//! f64 and rounded once, results stored in f32. Fused ops in `mod.rs` are compositions of
//! these same functions, so a fusion pass can only change what is computed, never how
//! a primitive rounds.

// Loops index several arrays with the formulas' own indices; iterator chains would hide
// the correspondence with the spec.
#![allow(clippy::needless_range_loop)]

use rayon::prelude::*;
use zambac_engine::Rope;

use zambac_runtime::Tensor;

/// `Σ a·b` accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `y = x·Wᵀ (+ b)` for `x [.., K]`, `W [N, K]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let (n, k) = (w.shape[0], w.shape[1]);
    let rows = x.rows();
    debug_assert_eq!(x.last(), k);
    let one_row = |t: usize, out: &mut [f32]| {
        let xr = x.row(t);
        for (j, o) in out.iter_mut().enumerate() {
            let bias = b.map_or(0.0, |b| b.data[j] as f64);
            *o = (dot(xr, &w.data[j * k..(j + 1) * k]) + bias) as f32;
        }
    };
    let mut y = vec![0.0f32; rows * n];
    if rows >= 4 {
        y.par_chunks_mut(n)
            .enumerate()
            .for_each(|(t, out)| one_row(t, out));
    } else {
        // Few rows (decode): split the output columns across threads instead.
        for t in 0..rows {
            let xr = x.row(t);
            y[t * n..(t + 1) * n]
                .par_chunks_mut(256)
                .enumerate()
                .for_each(|(c, out)| {
                    for (jj, o) in out.iter_mut().enumerate() {
                        let j = c * 256 + jj;
                        let bias = b.map_or(0.0, |b| b.data[j] as f64);
                        *o = (dot(xr, &w.data[j * k..(j + 1) * k]) + bias) as f32;
                    }
                });
        }
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("x has rank ≥ 1") = n;
    Tensor::new(shape, y)
}

/// Per-head linear: `x [T, nh, K]`, `W [nh, N, K]` → `[T, nh, N]`.
pub fn head_linear(x: &Tensor, w: &Tensor) -> Tensor {
    let (t, nh, k) = (x.shape[0], x.shape[1], x.shape[2]);
    let n = w.shape[1];
    let mut y = vec![0.0f32; t * nh * n];
    for tt in 0..t {
        for h in 0..nh {
            let xr = &x.data[(tt * nh + h) * k..(tt * nh + h + 1) * k];
            for j in 0..n {
                let wr = &w.data[(h * n + j) * k..(h * n + j + 1) * k];
                y[(tt * nh + h) * n + j] = dot(xr, wr) as f32;
            }
        }
    }
    Tensor::new(vec![t, nh, n], y)
}

/// Elementwise `a ∘ b` where `b`'s shape is a suffix of `a`'s (broadcast over the rest).
pub fn broadcast(a: &Tensor, b: &Tensor, f: impl Fn(f32, f32) -> f32) -> Tensor {
    let m = b.numel().max(1);
    let data = a
        .data
        .iter()
        .enumerate()
        .map(|(i, &x)| f(x, b.data[i % m]))
        .collect();
    Tensor::new(a.shape.clone(), data)
}

pub fn map(x: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::new(x.shape.clone(), x.data.iter().map(|&v| f(v)).collect())
}

pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

/// Exact erf GELU.
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// tanh-approximated GELU.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())) as f32
}

/// `log(1 + eˣ)`, or `x` above torch's threshold 20.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (x as f64).exp().ln_1p() as f32
    }
}

/// RMSNorm of each row over its last axis, split into `groups` equal slices.
pub fn group_rms_norm(x: &Tensor, w: &Tensor, groups: usize, eps: f64) -> Tensor {
    let d = x.last();
    let gw = d / groups;
    let mut out = x.data.clone();
    for row in out.chunks_mut(d) {
        for (g, seg) in row.chunks_mut(gw).enumerate() {
            let ms = seg.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / gw as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            for (i, v) in seg.iter_mut().enumerate() {
                *v = (w.data[g * gw + i] as f64 * (*v as f64 * inv)) as f32;
            }
        }
    }
    Tensor::new(x.shape.clone(), out)
}

/// `1/sqrt(mean(concat(a, b)²) + eps)` of each row: the factor RMSNorm of the
/// concatenation scales it by.
pub fn concat_rms_scale(a: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let (da, db) = (a.last(), b.last());
    let rows = a.rows();
    let scale = (0..rows)
        .map(|t| {
            let ss = |row: &[f32]| row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
            let ms = (ss(a.row(t)) + ss(b.row(t))) / (da + db) as f64;
            (1.0 / (ms + eps).sqrt()) as f32
        })
        .collect();
    Tensor::new(a.shape[..a.shape.len() - 1].to_vec(), scale)
}

/// Concatenation along `axis`.
pub fn concat(a: &Tensor, b: &Tensor, axis: usize) -> Tensor {
    let outer: usize = a.shape[..axis].iter().product();
    let ia: usize = a.shape[axis..].iter().product();
    let ib: usize = b.shape[axis..].iter().product();
    let mut data = Vec::with_capacity(a.numel() + b.numel());
    for o in 0..outer {
        data.extend_from_slice(&a.data[o * ia..(o + 1) * ia]);
        data.extend_from_slice(&b.data[o * ib..(o + 1) * ib]);
    }
    let mut shape = a.shape.clone();
    shape[axis] += b.shape[axis];
    Tensor::new(shape, data)
}

/// `x[start:end:stride]` along `axis`.
pub fn slice(x: &Tensor, axis: usize, start: usize, end: usize, stride: usize) -> Tensor {
    let outer: usize = x.shape[..axis].iter().product();
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let picked: Vec<usize> = (start..end).step_by(stride).collect();
    let mut data = Vec::with_capacity(outer * picked.len() * inner);
    for o in 0..outer {
        for &i in &picked {
            let base = (o * len + i) * inner;
            data.extend_from_slice(&x.data[base..base + inner]);
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = picked.len();
    Tensor::new(shape, data)
}

/// Depthwise causal conv over time from a zero history: `x [T, Ch]`, `w [Ch, 1, K]`.
pub fn causal_conv1d(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let (t, ch) = (x.shape[0], x.shape[1]);
    let k = w.shape[2];
    let mut y = vec![0.0f32; t * ch];
    for tt in 0..t {
        for c in 0..ch {
            let mut acc = b.map_or(0.0, |b| b.data[c] as f64);
            for j in 0..k {
                // Tap j sees input t − (K−1) + j.
                if let Some(src) = (tt + j).checked_sub(k - 1) {
                    acc += w.data[c * k + j] as f64 * x.data[src * ch + c] as f64;
                }
            }
            y[tt * ch + c] = acc as f32;
        }
    }
    Tensor::new(vec![t, ch], y)
}

/// The last `K−1` inputs as a `[Ch, K−1]` state, zero-padded on the left.
pub fn conv_state(x: &Tensor, k: usize) -> Tensor {
    let (t, ch) = (x.shape[0], x.shape[1]);
    let mut s = vec![0.0f32; ch * (k - 1)];
    for j in 0..k - 1 {
        // Column j holds input T − (K−1) + j.
        if let Some(src) = (t + j).checked_sub(k - 1) {
            for c in 0..ch {
                s[c * (k - 1) + j] = x.data[src * ch + c];
            }
        }
    }
    Tensor::new(vec![ch, k - 1], s)
}

/// One conv step: window = `[state, x]`; returns (output `[1, Ch]`, new state).
pub fn conv_step(x: &Tensor, state: &Tensor, w: &Tensor, b: Option<&Tensor>) -> (Tensor, Tensor) {
    let ch = x.shape[1];
    let k = w.shape[2];
    let mut y = vec![0.0f32; ch];
    let mut ns = vec![0.0f32; ch * (k - 1)];
    for c in 0..ch {
        let window: Vec<f32> = state.data[c * (k - 1)..(c + 1) * (k - 1)]
            .iter()
            .copied()
            .chain([x.data[c]])
            .collect();
        let mut acc = b.map_or(0.0, |b| b.data[c] as f64);
        for j in 0..k {
            acc += w.data[c * k + j] as f64 * window[j] as f64;
        }
        y[c] = acc as f32;
        ns[c * (k - 1)..(c + 1) * (k - 1)].copy_from_slice(&window[1..]);
    }
    (
        Tensor::new(vec![1, ch], y),
        Tensor::new(vec![ch, k - 1], ns),
    )
}

/// `x ⊙ d[head]` for `x [T, heads·P]`.
pub fn scale_heads(x: &Tensor, d: &Tensor, heads: usize) -> Tensor {
    let w = x.last();
    let p = w / heads;
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| v * d.data[(i % w) / p])
        .collect();
    Tensor::new(x.shape.clone(), data)
}

/// Mamba2 SSD recurrence (spec §2.3 step 7) over `T` tokens from state `s0` (`[H,P,N]`).
/// `x [T, H·P]`, `dt [T, H]` (already softplus-ed and clamped), `B, C [T, G·N]`.
/// Returns `y [T, H·P]` (without the D skip) and the final state.
#[allow(clippy::too_many_arguments)]
pub fn ssd(
    x: &Tensor,
    dt: &Tensor,
    a_log: &Tensor,
    b: &Tensor,
    c: &Tensor,
    s0: Option<&Tensor>,
    (heads, p, groups, n): (usize, usize, usize, usize),
) -> (Tensor, Tensor) {
    let t = x.shape[0];
    let per_group = heads / groups;
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let g = h / per_group;
            let a = -(a_log.data[h] as f64).exp();
            let mut s: Vec<f64> = match s0 {
                Some(s0) => s0.data[h * p * n..(h + 1) * p * n]
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                None => vec![0.0; p * n],
            };
            let mut y = vec![0.0f32; t * p];
            for tt in 0..t {
                let d = dt.data[tt * heads + h] as f64;
                let decay = (d * a).exp();
                let bg = &b.data[tt * groups * n + g * n..tt * groups * n + (g + 1) * n];
                let cg = &c.data[tt * groups * n + g * n..tt * groups * n + (g + 1) * n];
                for pp in 0..p {
                    let xv = x.data[tt * heads * p + h * p + pp] as f64;
                    let row = &mut s[pp * n..(pp + 1) * n];
                    let mut acc = 0.0;
                    for nn in 0..n {
                        row[nn] = decay * row[nn] + d * xv * bg[nn] as f64;
                        acc += row[nn] * cg[nn] as f64;
                    }
                    y[tt * p + pp] = acc as f32;
                }
            }
            (y, s.into_iter().map(|v| v as f32).collect())
        })
        .collect();
    let mut y = vec![0.0f32; t * heads * p];
    let mut s = Vec::with_capacity(heads * p * n);
    for (h, (yh, sh)) in results.into_iter().enumerate() {
        for tt in 0..t {
            y[tt * heads * p + h * p..tt * heads * p + (h + 1) * p]
                .copy_from_slice(&yh[tt * p..(tt + 1) * p]);
        }
        s.extend(sh);
    }
    (
        Tensor::new(vec![t, heads * p], y),
        Tensor::new(vec![heads, p, n], s),
    )
}

/// Mamba1 selective scan (spec §2.4 step 3) per head and channel from state `s0`
/// (`[nh, P, N]`). `x, dt [T, nh, P]`, `A_log [nh, P, N]`, `B, C [T, nh, N]`.
/// Returns `y [T, nh, P]` (without the D skip) and the final state.
pub fn selective_scan(
    x: &Tensor,
    dt: &Tensor,
    a_log: &Tensor,
    b: &Tensor,
    c: &Tensor,
    s0: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let (t, nh, p) = (x.shape[0], x.shape[1], x.shape[2]);
    let n = a_log.shape[2];
    let mut y = vec![0.0f32; t * nh * p];
    let mut s_out = vec![0.0f32; nh * p * n];
    for h in 0..nh {
        for ch in 0..p {
            let base = (h * p + ch) * n;
            let mut s: Vec<f64> = match s0 {
                Some(s0) => s0.data[base..base + n].iter().map(|&v| v as f64).collect(),
                None => vec![0.0; n],
            };
            for tt in 0..t {
                let i = (tt * nh + h) * p + ch;
                let (d, xv) = (dt.data[i] as f64, x.data[i] as f64);
                let bc = (tt * nh + h) * n;
                let mut acc = 0.0;
                for nn in 0..n {
                    let a = -(a_log.data[base + nn] as f64).exp();
                    s[nn] = (d * a).exp() * s[nn] + d * b.data[bc + nn] as f64 * xv;
                    acc += s[nn] * c.data[bc + nn] as f64;
                }
                y[i] = acc as f32;
            }
            for nn in 0..n {
                s_out[base + nn] = s[nn] as f32;
            }
        }
    }
    (
        Tensor::new(vec![t, nh, p], y),
        Tensor::new(vec![nh, p, n], s_out),
    )
}

/// RoPE (NeoX rotate-half over the whole head) on `x [T, heads·hd]` at positions
/// `pos0 .. pos0+T`, with the frequencies of a call reaching `pos0 + T` positions and cos
/// and sin scaled by the attention factor. Angles, cos and sin are formed in f32 as
/// transformers does (spec §6.1).
pub fn rope(x: &Tensor, heads: usize, rope: &Rope<'_>, pos0: usize) -> Tensor {
    let t = x.shape[0];
    let hd = rope.head_dim;
    let half = hd / 2;
    let inv_freq = rope.inv_freq((pos0 + t) as u64);
    let factor = rope.attention_factor();
    let mut out = x.data.clone();
    for tt in 0..t {
        let pos = (pos0 + tt) as f32;
        for h in 0..heads {
            let base = tt * heads * hd + h * hd;
            for m in 0..half {
                let ang = pos * inv_freq[m];
                let (sin, cos) = ((ang.sin() * factor) as f64, (ang.cos() * factor) as f64);
                let (a, b) = (x.data[base + m] as f64, x.data[base + m + half] as f64);
                out[base + m] = (a * cos - b * sin) as f32;
                out[base + m + half] = (b * cos + a * sin) as f32;
            }
        }
    }
    Tensor::new(x.shape.clone(), out)
}

/// Writes rows `k [T, heads·hd]` into `cache [heads, C, hd]` at positions `pos0..`.
pub fn kv_write(cache: &mut Tensor, k: &Tensor, pos0: usize) {
    let (heads, cap, hd) = (cache.shape[0], cache.shape[1], cache.shape[2]);
    for tt in 0..k.shape[0] {
        let p = pos0 + tt;
        assert!(p < cap, "KV cache overflow is checked by the session");
        for h in 0..heads {
            let src = &k.data[tt * heads * hd + h * hd..tt * heads * hd + (h + 1) * hd];
            cache.data[(h * cap + p) * hd..(h * cap + p + 1) * hd].copy_from_slice(src);
        }
    }
}

/// Causal attention: query `t` (absolute position `pos0 + t`) attends keys `0..=pos0+t`
/// of its KV head (`h / (heads / kv_heads)`), softmax in f64.
pub fn attention(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    heads: usize,
    scale: f64,
    pos0: usize,
) -> Tensor {
    let t = q.shape[0];
    let (kvh, cap, hd) = (kc.shape[0], kc.shape[1], kc.shape[2]);
    let rep = heads / kvh;
    let mut out = vec![0.0f32; t * heads * hd];
    out.par_chunks_mut(heads * hd)
        .enumerate()
        .for_each(|(tt, orow)| {
            let last = pos0 + tt;
            for h in 0..heads {
                let kvhead = h / rep;
                let qv = &q.data[tt * heads * hd + h * hd..tt * heads * hd + (h + 1) * hd];
                let key = |j: usize| &kc.data[(kvhead * cap + j) * hd..(kvhead * cap + j + 1) * hd];
                let scores: Vec<f64> = (0..=last).map(|j| dot(qv, key(j)) * scale).collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for d in 0..hd {
                    let acc: f64 = exps
                        .iter()
                        .enumerate()
                        .map(|(j, e)| e * vc.data[(kvhead * cap + j) * hd + d] as f64)
                        .sum();
                    orow[h * hd + d] = (acc / sum) as f32;
                }
            }
        });
    Tensor::new(vec![t, heads * hd], out)
}
