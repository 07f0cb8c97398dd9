//! Execution programs: the kernel-level form of a graph that an engine stores and a
//! runtime follows.
//!
//! Kernelize lowers each fused op of an optimised graph to steps — launches of generated
//! kernels ([`crate::KernelKind`], one MLIR function each) and matrix products for a tuned GEMM
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

use crate::expr::{Domain, Expr};

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
    /// [`crate::Kernel::symbol`]; the exported function is `zk_<symbol>`.
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

/// Which entry a program is; it fixes the calls the program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramName {
    /// Tokens from a state at any position (the empty state at 0 for a new prompt): logits
    /// of every position, and the state, updated in place.
    Prefill,
    /// As `Prefill`, but the logits of the last position only (what generation needs).
    PrefillLast,
    /// One token from a state, updated in place.
    Decode,
}

impl ProgramName {
    pub const ALL: [ProgramName; 3] = [
        ProgramName::Prefill,
        ProgramName::PrefillLast,
        ProgramName::Decode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProgramName::Prefill => "prefill",
            ProgramName::PrefillLast => "prefill_last",
            ProgramName::Decode => "decode",
        }
    }

    /// The calls this program serves: decode takes one token; a prefill takes any number,
    /// from the empty state or continuing a sequence from its position.
    pub fn domain(self) -> Domain {
        Domain {
            one_token: self == ProgramName::Decode,
            from_start: false,
        }
    }
}

impl std::fmt::Display for ProgramName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The steps of one entry graph, with the sizes the runtime allocates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    pub name: ProgramName,
    pub steps: Vec<Step>,
    /// Element count of each activation slot: the largest value it holds, per candidate
    /// value (the runtime takes the maximum at the actual sizes).
    pub slots: Vec<Vec<Expr>>,
    /// Element count of each workspace.
    pub scratch: Vec<Expr>,
    /// Shape of each output as expressions (`logits`, states, caches), by name.
    pub outputs: Vec<(String, Vec<Expr>)>,
}
