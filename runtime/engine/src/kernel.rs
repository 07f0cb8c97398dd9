//! The kernels an engine carries: what each computes ([`KernelKind`], specialised to the
//! model's constant sizes) and its exported symbol. The order, roles and element types of
//! each kind's views are data, in [`crate::signature`].

use serde::{Deserialize, Serialize};

use crate::elem::Elem;
use crate::rope::{Rope, RopeScaling};

/// What a generated kernel computes. Every kind is specialised to its constant sizes; the
/// integer arguments listed are the only run-time values. "Rows" means `T` for prefill
/// programs and 1 for decode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum KernelKind {
    /// views `[tokens i64, table [V,H] elem, out [rows,H]]`; grid rows:
    /// `out[r] = table[tokens[r]]`.
    Embedding { hidden: usize, elem: Elem },
    /// views `[x [rows,d], w [d] elem, out [rows,d]]`; grid rows: each of `groups` equal
    /// slices of a row is scaled by `1/sqrt(mean(x²)+eps)`, then multiplied by `w`.
    RmsNorm { d: usize, groups: usize, eps: f64 },
    /// views `[a, b, w, sum, out]`; grid rows: `sum = a + b`, `out = RmsNorm(sum; w)`.
    AddRmsNorm { d: usize, eps: f64 },
    /// views `[a [rows,da], b [rows,db], w [da+db], out [rows,da+db]]`; grid rows:
    /// `out = RmsNorm(concat(a, b); w)`.
    ConcatRmsNorm { da: usize, db: usize, eps: f64 },
    /// views `[a [rows,da], b [rows,db], r [rows]]`; grid rows: `r = 1/sqrt(mean(concat(a,
    /// b)²) + eps)`, the factor RMSNorm of the concatenation scales the row by.
    ConcatRmsScale { da: usize, db: usize, eps: f64 },
    /// views `[y [rows,n], r [rows], out [rows,n]]`; grid rows: `out[t] = r[t]·y[t]`.
    RowScale { n: usize },
    /// Elementwise `out = a + b` or `a ⊙ b` over `[rows, n]`: views `[a, b, out]`, `b`
    /// broadcast over rows when `b_rows` is false; grid rows.
    Binary { op: BinOp, n: usize, b_rows: bool },
    /// Matrix-vector products for one-row inputs, several weights sharing one pass over
    /// `x`: views `[x [k], W_0 [rows_0,k], …, W_p, y_0 [rows_0], …, y_p]`; grid
    /// `Σ rows_i`, index `i` is row `i - Σ_{j<q} rows_j` of part `q`:
    /// `y_q[r] (+)= Σ_k x[k]·W_q[r,k]`.
    Gemv {
        k: usize,
        rows: Vec<usize>,
        elem: Elem,
        accumulate: bool,
        /// Elements between consecutive weight rows when it is not `k` (the product reads
        /// a window of a wider weight).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row_stride: Option<usize>,
    },
    /// Row-wise epilogue of a linear on `y [rows, n]`: views `[y, (bias [n]),
    /// (m [rows, n]), out]`; ints `[pos0]` (`[pos0, rows]` for RoPE whose scaling depends on
    /// the length a call reaches, `pos0 + rows`); grid rows. In order: `+ bias`; then one of
    /// `act(y)`, `act(y[:n/2]) ⊙ y[n/2:]` (out has n/2 columns), `y ⊙ m`, or RoPE at
    /// position `pos0 + r` (rotate-half over each head of `head_dim`; inverse frequencies
    /// `1/θ^(2i/hd)`, scaled as [`crate::rope`] says, and angles `pos·inv_freq` formed in
    /// f32 as transformers does). `out`
    /// may be the same view as `y` except for `Gate`. Also used alone (no linear) for a
    /// pointwise activation or RoPE left unfused.
    Epilogue {
        n: usize,
        bias: bool,
        op: EpilogueOp,
    },
    /// Writes rows `k [rows, heads·hd]` into a cache `[heads, C, hd]` stored as `cache`
    /// (f32, or bf16 rounded to nearest even) at positions `pos0 + r`: views `[k, cache]`;
    /// ints `[pos0, C]`; grid rows.
    KvWrite {
        heads: usize,
        head_dim: usize,
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        cache: Elem,
    },
    /// Causal attention of `rows` queries at positions `pos0 ..` over a cache holding keys
    /// `0 .. pos0 + rows`: views `[q [rows, heads·hd], K [kvh,C,hd], V [kvh,C,hd],
    /// out [rows, heads·hd]]`; ints `[pos0, C, rows]`; grid `heads · rows`. Query `r` of
    /// head `h` attends keys `0 ..= pos0 + r` of KV head `h / (heads/kvh)` with `scale`,
    /// with no workspace (online softmax over tiles of keys).
    AttentionPrefill {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f64,
        /// How the caches are stored (f32 or bf16).
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        kv: Elem,
        /// The operands of the host's two products, `q·kᵀ` and `p·v`: f32, or bf16 (bf16
        /// caches only, an even head dim, host code for a CPU with AVX-512 BF16): q and the
        /// softmax weights rounded to nearest even, pairs of elements multiplied and added
        /// into f32 by `vdpbf16ps`. The GPU's prompt attention keeps f32 products.
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        products: Elem,
    },
    /// One-token attention over a cache, split along the sequence (flash-decoding): views
    /// `[q [heads·hd], K [kvh,C,hd], V [kvh,C,hd], partial [heads·splits, hd+2]]`; ints
    /// `[pos, C]`; grid `heads · splits`. Grid index `h·splits + s` takes keys
    /// `[s·L, min((s+1)·L, n))` of KV head `h / (heads/kvh)`, where `n = min(pos+1, C)` and
    /// `L` = [`decode_split_len`]`(n, splits)`, and writes to its partial row the maximum
    /// `m` of its scores `q·k·scale`, the sum `Σ exp(score − m)` and the unnormalised output
    /// `Σ exp(score − m)·v` — `(−∞, 0, 0…)` for a split with no keys.
    /// [`KernelKind::AttentionCombine`] turns the partials into the output.
    AttentionDecode {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f64,
        /// How the caches are stored (f32 or bf16).
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        kv: Elem,
        /// Parts each head's keys are split into (at most [`MAX_DECODE_SPLITS`]).
        splits: usize,
    },
    /// The second pass of split decode attention: views `[partial [heads·splits, hd+2],
    /// out [heads·hd]]`; grid heads. With `M` the largest maximum of head `h`'s splits,
    /// `out[h] = Σ_s exp(m_s − M)·o_s / Σ_s exp(m_s − M)·l_s`.
    AttentionCombine {
        heads: usize,
        head_dim: usize,
        splits: usize,
    },
    /// Mamba2 conv over the xBC columns `[di, di+cd)` of `zx [rows, width]`: views
    /// `[zx, w [cd,1,K], b [cd], state [cd,K-1], out [rows, cd]]`; ints `[rows]`;
    /// grid channels `cd`. `out[t,c] = silu(b[c] + Σ_j w[c,j]·x[t-(K-1)+j, c])` with
    /// `x[t', c] = zx[t', di + c]` and, for `t' < 0`, the history in `state` when `step`
    /// (column `K-1+t'` of the channel's row) or zero; afterwards `state` holds the last
    /// K-1 inputs (zero-padded on the left when fewer exist).
    Mamba2Conv {
        width: usize,
        di: usize,
        cd: usize,
        k: usize,
        step: bool,
    },
    /// Mamba2 SSD scan: views `[zx [rows,width], xbc [rows,cd], dt_bias [H], A_log [H],
    /// D [H], y [rows, di], state [H,P,N]]`; ints `[rows]`; grid heads. For head `h`, from
    /// `state` when `step` (else zero) and for each row `t`:
    /// `Δ = max(softplus(zx[t, di+cd+h] + dt_bias[h]), dt_min)` (no max when `dt_min` is
    /// None); `S ← exp(Δ·(−exp(A_log[h])))·S + Δ·x⊗B`;
    /// `y[t, hP+p] = S[p]·C + D[h]·x[p]` where x, B (group `h/(H/G)`), C are the column
    /// ranges `[hP, hP+P)`, `[di + gN, …)`, `[di + GN + gN, …)` of `xbc[t]`. `state` ends
    /// holding the final S.
    Mamba2Scan {
        width: usize,
        heads: usize,
        head_dim: usize,
        groups: usize,
        state: usize,
        dt_min: Option<f64>,
        step: bool,
        /// How `state` is stored: f32, or bf16 (`--state-dtype bf16`), rounded to nearest
        /// even wherever the kernel stores it.
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        ssm: Elem,
    },
    /// Pass 1 or 3 of the chunked Mamba2 prefill scan (with [`KernelKind::Mamba2ChunkPass`]
    /// between them), the recurrence of [`KernelKind::Mamba2Scan`] split along the tokens so
    /// that its chunks run in parallel. A call's `rows` tokens are cut into chunks of `L`
    /// tokens, the first `used` of the `chunks` non-empty ([`scan_chunking`]: at most
    /// `chunks`, each at least `min_len` tokens); chunk `c` holds tokens
    /// `[c·L, min((c+1)·L, rows))`. Grid `chunks · heads`, index `c·heads + h`; an index of an
    /// empty chunk does nothing.
    ///
    /// - `outputs: false` (pass 1) — views `[zx, xbc, dt_bias, A_log, chunk_states
    ///   [chunks, H·P·N] f32, chunk_decay [chunks, H] f32]`: head `h`'s scan over chunk `c`
    ///   from a zero state; `chunk_states[c, h]` gets the state it ends with and
    ///   `chunk_decay[c, h]` the product of its tokens' decays `exp(Δ·A)`.
    /// - `outputs: true` (pass 3) — views `[zx, xbc, dt_bias, A_log, D, y, chunk_states]`:
    ///   head `h`'s scan over chunk `c` from the state `chunk_states[c, h]` (the state
    ///   entering the chunk, which the pass left there), writing `y` for the chunk's tokens
    ///   as [`KernelKind::Mamba2Scan`] does; `chunk_states` is left changed.
    ///
    /// Δ, the clamp and the column layout are [`KernelKind::Mamba2Scan`]'s; ints `[rows]`.
    Mamba2ChunkScan {
        width: usize,
        heads: usize,
        head_dim: usize,
        groups: usize,
        state: usize,
        dt_min: Option<f64>,
        chunks: usize,
        min_len: usize,
        outputs: bool,
    },
    /// Pass 2 of the chunked Mamba2 prefill scan: passes the state along the chunks. Views
    /// `[chunk_states [chunks, H·P·N] f32, chunk_decay [chunks, H] f32, state [H,P,N]]`;
    /// ints `[rows]`; grid heads. For head `h`, from `S = state[h]` (the sequence's state
    /// before the call) and for each non-empty chunk `c = 0 .. used` ([`scan_chunking`]):
    /// `E = chunk_states[c, h]`, `chunk_states[c, h] ← S` (the state entering chunk `c`),
    /// `S ← chunk_decay[c, h]·S + E`; then `state[h] ← S`.
    Mamba2ChunkPass {
        heads: usize,
        head_dim: usize,
        state: usize,
        chunks: usize,
        min_len: usize,
        /// How `state` is stored, as for [`KernelKind::Mamba2Scan`].
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        ssm: Elem,
    },
    /// One decode step of a Mamba2 mixer's conv and scan in one kernel: views `[zx
    /// [1,width], conv_w [cd,1,K], conv_b [cd], conv_state [cd,K-1], dt_bias [H], A_log
    /// [H], D [H], y [di], state [H,P,N]]`; grid heads. Channel `c` of xBC is
    /// `silu(b[c] + Σ_{j<K-1} w[c,j]·conv_state[c,j] + w[c,K-1]·zx[di + c])` — the step
    /// [`KernelKind::Mamba2Conv`] computes — and head `h` takes the step
    /// [`KernelKind::Mamba2Scan`] takes over it, each head computing the channels it reads.
    /// `conv_state` is only read: heads share B and C, so no head may shift it before every
    /// other has read it; the [`KernelKind::Mamba2GateNorm`] after it does
    /// (`conv_shift`).
    Mamba2ConvScan {
        width: usize,
        heads: usize,
        head_dim: usize,
        groups: usize,
        state: usize,
        k: usize,
        dt_min: Option<f64>,
        /// How `state` is stored, as for [`KernelKind::Mamba2Scan`].
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        ssm: Elem,
    },
    /// Mamba2 gate and gated group norm: views `[y [rows,di], zx [rows,width],
    /// w [di], out [rows,di]]`; grid rows:
    /// `out = w ⊙ GroupRmsNorm(y ⊙ silu(zx[:, 0..di]))` with `groups` groups. With
    /// `conv_shift` (a decode step after [`KernelKind::Mamba2ConvScan`]; grid 1): a fifth
    /// view, the conv state `[channels, K-1]`, is shifted by the step's input — each
    /// channel's row moves one to the left and ends with `zx[0, di + c]`.
    Mamba2GateNorm {
        width: usize,
        di: usize,
        groups: usize,
        eps: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv_shift: Option<ConvShift>,
    },
    /// Mamba1 conv over the interleaved x columns (`xz[t, 2c]`) of `xz [rows, 2·di]`:
    /// views `[xz, w [di,1,K], (b [di]), state [di,K-1], out [rows,di]]`; ints `[rows]`;
    /// grid channels `di`; as [`KernelKind::Mamba2Conv`] otherwise.
    Mamba1Conv {
        di: usize,
        k: usize,
        bias: bool,
        step: bool,
    },
    /// Mamba1 selective scan with gate: views `[x [rows,di], dt [rows,di] (dt_proj
    /// output), dt_bias [di], A_log [di,N], Bc [rows, nh, R+2N] (x_proj output), D [di],
    /// xz [rows, 2·di], state [di, N], y [rows, di]]`; ints `[rows]`; grid channels `di`.
    /// Channel `c` of head `h = c / P`: `Δ = softplus(dt[t,c] + dt_bias[c])` (max with
    /// `dt_min`), `S ← exp(Δ·(−exp(A_log[c])))⊙S + Δ·x[t,c]·B`, `y = (S·C + D[c]·x[t,c]) ·
    /// silu(xz[t, 2c+1])`, with B, C the columns `[R, R+N)`, `[R+N, R+2N)` of
    /// `Bc[t, h]`.
    Mamba1Scan {
        heads: usize,
        head_dim: usize,
        state: usize,
        dt_rank: usize,
        dt_min: Option<f64>,
        step: bool,
        /// How `state` is stored, as for [`KernelKind::Mamba2Scan`].
        #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
        ssm: Elem,
    },
}

/// The conv state a decode step's [`KernelKind::Mamba2GateNorm`] shifts: `channels` rows of
/// `k - 1` inputs (the xBC channels of a conv of kernel size `k`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvShift {
    pub channels: usize,
    pub k: usize,
}

/// Lanes of a host [`KernelKind::Gemv`]'s accumulator: the width of the vectors its rows are
/// summed in.
pub const GEMV_LANES: usize = 8;

/// How a host [`KernelKind::Gemv`] sums one row's products — part of the engine contract,
/// because a batched decode step, which multiplies B sequences' inputs by the weights in one
/// pass, must give each sequence exactly what decoding it alone gives (the same float
/// operations in the same order, so the same bits):
///
/// 1. One accumulator `acc` of [`GEMV_LANES`] lanes, zero. The first
///    `k / step · step` elements ([`gemv_main_step`]) are taken in chunks of `2·LANES` for
///    bf16 weights — lane `i` gets `acc = fma(x[2i], w[2i], acc)` then
///    `acc = fma(x[2i+1], w[2i+1], acc)`, element indices relative to the chunk — and of
///    `LANES` otherwise (`acc = fma(x[i], w[i], acc)`).
/// 2. The rest in chunks of `LANES` (`acc = fma(x[i], w[i], acc)`), the last one, when
///    narrower, as plain products `p[i] = x[i]·w[i]` apart from `acc`.
/// 3. `sum = ((0 + acc[0]) + acc[1]) + … + acc[LANES−1]`, then `+ ((0 + p[0]) + p[1] …)`
///    when there is a narrow chunk; with `accumulate`, `y = y + sum`.
///
/// Weights are widened to f32 exactly. GPU kernels sum differently (a warp per row).
pub fn gemv_main_step(elem: Elem) -> usize {
    match elem {
        // Whole 64-byte lines of bf16 per iteration (the loop prefetches one per line).
        Elem::Bf16 => 4 * GEMV_LANES,
        _ => GEMV_LANES,
    }
}

/// The most parts [`KernelKind::AttentionDecode`] may split a head's keys into.
pub const MAX_DECODE_SPLITS: usize = 256;

/// How a chunked Mamba2 scan ([`KernelKind::Mamba2ChunkScan`]) cuts a call of `rows`
/// tokens: `(L, used)` — chunks of `L = max(⌈rows / chunks⌉, min_len)` tokens, of which the
/// first `used = ⌈rows / L⌉` (at most `chunks`) hold any. Short calls so touch the
/// workspace of a few chunks, not of all.
pub fn scan_chunking(rows: usize, chunks: usize, min_len: usize) -> (usize, usize) {
    let len = rows.div_ceil(chunks.max(1)).max(min_len).max(1);
    (len, rows.div_ceil(len))
}

/// The most chunks a chunked Mamba2 prefill scan ([`KernelKind::Mamba2ChunkScan`]) cuts a
/// call into: each chunk keeps a whole state per head in its workspace.
pub const MAX_SCAN_CHUNKS: usize = 1024;

/// The fewest keys a split of decode attention takes (but for the last): below it a split's
/// fixed cost (its partial row, its share of the combine) outweighs the keys it reads, so
/// short caches use fewer splits than the kernel has.
pub const DECODE_SPLIT_MIN_KEYS: usize = 64;

/// Split lengths are multiples of this: whole vectors of keys for the host code.
pub const DECODE_SPLIT_ALIGN: usize = 16;

/// Keys per split of decode attention over `keys` cached keys cut into at most `splits`
/// parts: `⌈keys / splits⌉`, at least [`DECODE_SPLIT_MIN_KEYS`], rounded up to a multiple of
/// [`DECODE_SPLIT_ALIGN`]. Split `s` takes keys `[s·L, min((s+1)·L, keys))`, so the first
/// `⌈keys / L⌉` splits are non-empty and together take every key once.
pub fn decode_split_len(keys: usize, splits: usize) -> usize {
    let even = keys.div_ceil(splits.max(1));
    even.max(DECODE_SPLIT_MIN_KEYS)
        .div_ceil(DECODE_SPLIT_ALIGN)
        .saturating_mul(DECODE_SPLIT_ALIGN)
}

impl KernelKind {
    /// A 64-bit digest of everything the kind says (its variant and every size), the same
    /// on every machine and in every build that reads this format.
    pub fn fingerprint(&self) -> u64 {
        // Serialising a kind cannot fail: it holds only numbers, booleans and enums.
        let text = serde_json::to_vec(self).unwrap_or_default();
        xxhash_rust::xxh3::xxh3_64(&text)
    }

    /// The kind's name, without its sizes (for messages and profiles).
    pub fn name(&self) -> &'static str {
        match self {
            KernelKind::Embedding { .. } => "Embedding",
            KernelKind::RmsNorm { .. } => "RmsNorm",
            KernelKind::AddRmsNorm { .. } => "AddRmsNorm",
            KernelKind::ConcatRmsNorm { .. } => "ConcatRmsNorm",
            KernelKind::ConcatRmsScale { .. } => "ConcatRmsScale",
            KernelKind::RowScale { .. } => "RowScale",
            KernelKind::Binary { .. } => "Binary",
            KernelKind::Gemv { .. } => "Gemv",
            KernelKind::Epilogue { .. } => "Epilogue",
            KernelKind::KvWrite { .. } => "KvWrite",
            KernelKind::AttentionPrefill { .. } => "AttentionPrefill",
            KernelKind::AttentionDecode { .. } => "AttentionDecode",
            KernelKind::AttentionCombine { .. } => "AttentionCombine",
            KernelKind::Mamba2Conv { .. } => "Mamba2Conv",
            KernelKind::Mamba2Scan { .. } => "Mamba2Scan",
            KernelKind::Mamba2ChunkScan { .. } => "Mamba2ChunkScan",
            KernelKind::Mamba2ChunkPass { .. } => "Mamba2ChunkPass",
            KernelKind::Mamba2ConvScan { .. } => "Mamba2ConvScan",
            KernelKind::Mamba2GateNorm { .. } => "Mamba2GateNorm",
            KernelKind::Mamba1Conv { .. } => "Mamba1Conv",
            KernelKind::Mamba1Scan { .. } => "Mamba1Scan",
        }
    }
}

/// Elementwise binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinOp {
    Add,
    Mul,
}

/// The part of a linear's epilogue after the bias.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EpilogueOp {
    None,
    Act(ActKind),
    Gate(ActKind),
    Mul,
    Rope {
        heads: usize,
        head_dim: usize,
        theta: f64,
        /// Long-context scaling of the frequencies ([`crate::rope`]); absent: plain RoPE.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scaling: Option<RopeScaling>,
    },
}

impl EpilogueOp {
    /// RoPE whose frequencies depend on the length a call reaches: the kernel then takes
    /// the number of rows too.
    pub fn rope_depends_on_length(&self) -> bool {
        match self {
            EpilogueOp::Rope {
                theta,
                head_dim,
                scaling,
                ..
            } => Rope {
                theta: *theta,
                head_dim: *head_dim,
                scaling: scaling.as_ref(),
            }
            .depends_on_length(),
            _ => false,
        }
    }
}

/// Serialisable twin of [`Act`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActKind {
    Silu,
    Gelu,
    GeluTanh,
    Softplus,
}

/// A kernel to generate: its exported symbol and what it computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub symbol: String,
    pub kind: KernelKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token in exactly one of the used chunks, no chunk shorter than the minimum but
    /// the last, never more chunks than there are.
    #[test]
    fn scan_chunks_take_every_token_once() {
        assert_eq!(scan_chunking(4096, 32, 32), (128, 32));
        assert_eq!(scan_chunking(64, 32, 32), (32, 2));
        assert_eq!(scan_chunking(5, 32, 32), (32, 1));
        assert_eq!(scan_chunking(0, 32, 32), (32, 0));
        for rows in 0..300 {
            for chunks in [1, 2, 3, 7, 32] {
                for min_len in [1, 4, 32] {
                    let (len, used) = scan_chunking(rows, chunks, min_len);
                    assert!(used <= chunks && len >= min_len);
                    assert!(used * len >= rows && used.saturating_sub(1) * len < rows.max(1));
                }
            }
        }
    }

    /// Every key in exactly one split, splits aligned and never shorter than the minimum
    /// (but the last busy one), and no more busy splits than there are.
    #[test]
    fn decode_splits_take_every_key_once() {
        for splits in [1, 2, 3, 7, 16, 64, MAX_DECODE_SPLITS] {
            for keys in (1..2000).chain([4095, 4096, 4097, 32768, 1 << 20]) {
                let len = decode_split_len(keys, splits);
                assert!(len >= DECODE_SPLIT_MIN_KEYS && len.is_multiple_of(DECODE_SPLIT_ALIGN));
                let mut covered = 0;
                for s in 0..splits {
                    let first = (s * len).min(keys);
                    let last = (first + len).min(keys);
                    assert_eq!(first, covered, "{keys} keys, {splits} splits: split {s}");
                    covered = last;
                }
                assert_eq!(covered, keys, "{keys} keys, {splits} splits");
                // Short caches leave splits idle rather than cut them below the minimum.
                if keys <= DECODE_SPLIT_MIN_KEYS {
                    assert_eq!(len, DECODE_SPLIT_MIN_KEYS);
                }
            }
        }
    }
}
