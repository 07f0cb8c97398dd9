//! Execution programs: the kernel-level form of a graph that an engine stores and a
//! runtime follows.
//!
//! `codegen` lowers each fused op of an optimised graph to steps — launches of generated
//! kernels ([`KernelKind`], one MLIR function each) and matrix products for a tuned GEMM
//! library ([`Step::Gemm`]) — over the buffers of the memory plan. The runtime needs no
//! compiler to execute a program: it evaluates sizes ([`Expr`]), binds buffers and calls
//! the kernels through one C ABI:
//!
//! ```c
//! void zk_<symbol>(void *const *bufs, const int64_t *ints, int64_t begin, int64_t end);
//! ```
//!
//! A launch covers the grid indices `[0, grid)`; the runtime may split that range across
//! threads, so a kernel must compute index `i` independently of every other index.
//! `bufs[j]` points at the first element of the launch's j-th buffer view; `ints` holds
//! the launch's integer arguments, evaluated. All activations are row-major f32; token
//! ids and positions are i64. Matrix weights (of linears, per-head linears and the
//! embedding) are stored f32 or bf16 as the engine chooses — kernels that read them say
//! which in `elem`, and [`Step::Gemm`] operands carry the parameter's own type; every
//! other weight (norms, conv, A_log, D, Δ biases, linear biases) is f32.

use serde::{Deserialize, Serialize};

use crate::op::Act;
use crate::types::Elem;

/// An integer known when a program runs: `t2·T² + t·T + c·C + p·pos + k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Expr {
    /// Coefficient of `T²` (attention-score workspaces).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub t2: i64,
    /// Coefficient of `T` (tokens in the call).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub t: i64,
    /// Coefficient of `C` (KV-cache capacity).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub c: i64,
    /// Coefficient of `pos` (position of the first token of the call).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub p: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub k: i64,
}

fn is_zero(x: &i64) -> bool {
    *x == 0
}

impl Expr {
    const ZERO: Expr = Expr {
        t2: 0,
        t: 0,
        c: 0,
        p: 0,
        k: 0,
    };
    pub const T: Expr = Expr { t: 1, ..Expr::ZERO };
    pub const T2: Expr = Expr {
        t2: 1,
        ..Expr::ZERO
    };
    pub const C: Expr = Expr { c: 1, ..Expr::ZERO };
    pub const POS: Expr = Expr { p: 1, ..Expr::ZERO };

    pub const fn k(k: i64) -> Expr {
        Expr { k, ..Expr::ZERO }
    }

    /// `self · m`.
    pub fn times(self, m: i64) -> Expr {
        Expr {
            t2: self.t2 * m,
            t: self.t * m,
            c: self.c * m,
            p: self.p * m,
            k: self.k * m,
        }
    }

    /// `self + o`.
    pub fn plus(self, o: Expr) -> Expr {
        Expr {
            t2: self.t2 + o.t2,
            t: self.t + o.t,
            c: self.c + o.c,
            p: self.p + o.p,
            k: self.k + o.k,
        }
    }

    /// The value for a call with `t` tokens at position `pos` and capacity `c`, or None
    /// on overflow (expressions come from engine files, which are user input).
    pub fn eval(&self, t: usize, c: usize, pos: usize) -> Option<i64> {
        let v = |x: usize| i64::try_from(x).ok();
        let (t, c, pos) = (v(t)?, v(c)?, v(pos)?);
        let terms = [
            self.t2.checked_mul(t.checked_mul(t)?)?,
            self.t.checked_mul(t)?,
            self.c.checked_mul(c)?,
            self.p.checked_mul(pos)?,
            self.k,
        ];
        terms.iter().try_fold(0i64, |acc, x| acc.checked_add(*x))
    }
}

impl From<crate::types::Dim> for Expr {
    fn from(d: crate::types::Dim) -> Expr {
        match d {
            crate::types::Dim::Const(n) => Expr::k(n as i64),
            crate::types::Dim::Sym(crate::types::Sym::T) => Expr::T,
            crate::types::Dim::Sym(crate::types::Sym::C) => Expr::C,
        }
    }
}

/// A storage location of a program.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Buffer {
    /// Parameter `i` of the engine's weight table.
    Weight(u32),
    /// A graph input: `tokens`/`token` (i64), `pos` (i64 scalar).
    Input(String),
    /// A graph output held across calls: `logits`, `conv.{l}`, `ssm.{l}`, `k.{l}`, `v.{l}`.
    /// In `decode` a state read and written by a step is the same buffer (updated in place).
    Output(String),
    /// Activation slot `i` of the graph's memory plan.
    Slot(u32),
    /// Workspace `i` of the program, sized by [`Program::scratch`].
    Scratch(u32),
}

/// A buffer plus an element offset into it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub buf: Buffer,
    #[serde(default, skip_serializing_if = "is_default")]
    pub offset: Expr,
}

fn is_default(e: &Expr) -> bool {
    *e == Expr::default()
}

impl View {
    pub fn of(buf: Buffer) -> View {
        View {
            buf,
            offset: Expr::default(),
        }
    }

    pub fn at(buf: Buffer, offset: Expr) -> View {
        View { buf, offset }
    }

    /// The same buffer, `by` elements further on.
    pub fn shifted(self, by: Expr) -> View {
        View {
            offset: self.offset.plus(by),
            ..self
        }
    }
}

/// A strided matrix operand: element `(i, j)` is at `offset + i·row_stride + j·col_stride`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Matrix {
    pub view: View,
    pub row_stride: Expr,
    pub col_stride: Expr,
}

/// One instruction of a program.
// A program is a short list read once per call; boxing the larger variant would only add
// an indirection to the executor's hot loop.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Call a generated kernel over grid indices `[0, grid)`. `kernel` is the
    /// [`Kernel::symbol`]; the exported function is `zk_<symbol>`.
    Launch {
        kernel: String,
        grid: Expr,
        views: Vec<View>,
        ints: Vec<Expr>,
    },
    /// `C (+)= A·B` with `A [m,k]`, `B [k,n]` (B is a weight when it is a parameter, then
    /// in its stored element type; everything else f32), for the GEMM library.
    Gemm {
        m: Expr,
        n: Expr,
        k: Expr,
        a: Matrix,
        b: Matrix,
        c: Matrix,
        /// Add to `C` instead of overwriting it.
        accumulate: bool,
    },
}

/// The steps of one entry graph, with the sizes the runtime allocates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// `prefill`, `prefill_last` (only the last position's logits) or `decode`.
    pub name: String,
    pub steps: Vec<Step>,
    /// Element count of each activation slot: the largest value it holds, per candidate
    /// value (the runtime takes the maximum at the actual sizes).
    pub slots: Vec<Vec<Expr>>,
    /// Element count of each workspace.
    pub scratch: Vec<Expr>,
    /// Shape of each output as expressions (`logits`, states, caches), by name.
    pub outputs: Vec<(String, Vec<Expr>)>,
}

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
    /// (m [rows, n]), out]`; ints `[pos0]`; grid rows. In order: `+ bias`; then one of
    /// `act(y)`, `act(y[:n/2]) ⊙ y[n/2:]` (out has n/2 columns), `y ⊙ m`, or RoPE at
    /// position `pos0 + r` (rotate-half over each head of `head_dim`; inverse frequencies
    /// `1/θ^(2i/hd)` and angles `pos·inv_freq` formed in f32 as transformers does). `out`
    /// may be the same view as `y` except for `Gate`. Also used alone (no linear) for a
    /// pointwise activation or RoPE left unfused.
    Epilogue {
        n: usize,
        bias: bool,
        op: EpilogueOp,
    },
    /// Writes rows `k [rows, heads·hd]` into a cache `[heads, C, hd]` at positions
    /// `pos0 + r`: views `[k, cache]`; ints `[pos0, C]`; grid rows.
    KvWrite { heads: usize, head_dim: usize },
    /// Causal softmax of attention scores `s [rows, ld]` in place: query `r` keeps columns
    /// `0 ..= pos0 + r` (scaled by `scale`, normalised), the rest of its `ld` columns
    /// become 0. views `[s]`; ints `[pos0, ld]` (`ld` = row width = row stride of `s`);
    /// grid rows.
    Softmax { scale: f64 },
    /// One-token attention over a cache: views `[q [heads·hd], K [kvh,C,hd],
    /// V [kvh,C,hd], out [heads·hd]]`; ints `[pos, C]`; grid heads: head `h` attends keys
    /// `0 ..= pos` of KV head `h / (heads/kvh)` with `scale`.
    AttentionDecode {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f64,
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
    },
    /// Mamba2 gate and gated group norm: views `[y [rows,di], zx [rows,width],
    /// w [di], out [rows,di]]`; grid rows:
    /// `out = w ⊙ GroupRmsNorm(y ⊙ silu(zx[:, 0..di]))` with `groups` groups.
    Mamba2GateNorm {
        width: usize,
        di: usize,
        groups: usize,
        eps: f64,
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
    },
}

/// Elementwise binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinOp {
    Add,
    Mul,
}

/// The part of a linear's epilogue after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum EpilogueOp {
    None,
    Act(ActKind),
    Gate(ActKind),
    Mul,
    Rope {
        heads: usize,
        head_dim: usize,
        theta: f64,
    },
}

/// Serialisable twin of [`Act`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActKind {
    Silu,
    Gelu,
    GeluTanh,
    Softplus,
}

impl From<Act> for ActKind {
    fn from(a: Act) -> ActKind {
        match a {
            Act::Silu => ActKind::Silu,
            Act::Gelu => ActKind::Gelu,
            Act::GeluTanh => ActKind::GeluTanh,
            Act::Softplus => ActKind::Softplus,
        }
    }
}

/// A kernel to generate: its exported symbol and what it computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub symbol: String,
    pub kind: KernelKind,
}
