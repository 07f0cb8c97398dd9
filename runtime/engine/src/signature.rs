//! Each kernel kind's calling convention as data: its views in order — the role each
//! plays, its element type, whether the kernel reads or writes it, and how many elements
//! it reaches — its integer arguments, its grid, and the relations its arguments must
//! satisfy.
//!
//! Codegen builds every kernel's function from [`KernelKind::signature`] (argument list,
//! element type of each memref, views looked up by [`Role`]); the validator checks every
//! launch of every program against it before anything runs. It is the one place the ABI
//! of a kernel kind is written down.

use crate::elem::Elem;
use crate::kernel::{EpilogueOp, KernelKind};

/// The part a view plays in its kernel, by which codegen finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The main input rows.
    X,
    /// First and second operands of a binary op or a concatenation.
    A,
    B,
    /// A norm's weight.
    W,
    Bias,
    /// The elementwise multiplier of a `Mul` epilogue.
    M,
    /// The residual sum an add+norm writes beside its output.
    Sum,
    /// Per-row scale factors.
    R,
    /// A linear's pre-epilogue output, or a Mamba scan's output.
    Y,
    Out,
    Tokens,
    Table,
    Q,
    K,
    V,
    /// A KV cache being written.
    Cache,
    /// Mamba2 in_proj output `[z, xBC, dt]`.
    Zx,
    /// Mamba2 conv output `[x, B, C]`.
    Xbc,
    /// Mamba1 in_proj output, x and z interleaved.
    Xz,
    Dt,
    /// Mamba1 x_proj output `[dt, B, C]` per head.
    Bc,
    DtBias,
    ALog,
    D,
    ConvW,
    ConvB,
    /// A recurrent state, read and updated in place.
    State,
    /// A Mamba2 conv state read by a fused conv and scan, shifted by the gate norm after it.
    ConvState,
    /// Per-split partial results of decode attention (max, sum, unnormalised output).
    Partial,
    /// The chunked Mamba2 scan's per-chunk states (a chunk's own, then the state entering it).
    ChunkStates,
    /// The chunked Mamba2 scan's per-chunk products of decays.
    ChunkDecay,
    /// Weight of part `q` of a multi-part Gemv.
    PartW(u16),
    /// Output of part `q` of a multi-part Gemv.
    PartY(u16),
}

impl Role {
    /// The weight of part `q` of a multi-part Gemv.
    pub fn part_w(q: usize) -> Role {
        Role::PartW(part(q))
    }

    /// The output of part `q` of a multi-part Gemv.
    pub fn part_y(q: usize) -> Role {
        Role::PartY(part(q))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Role::X => "x",
            Role::A => "a",
            Role::B => "b",
            Role::W => "w",
            Role::Bias => "bias",
            Role::M => "m",
            Role::Sum => "sum",
            Role::R => "r",
            Role::Y => "y",
            Role::Out => "out",
            Role::Tokens => "tokens",
            Role::Table => "table",
            Role::Q => "q",
            Role::K => "k",
            Role::V => "v",
            Role::Cache => "cache",
            Role::Zx => "zx",
            Role::Xbc => "xbc",
            Role::Xz => "xz",
            Role::Dt => "dt",
            Role::Bc => "bc",
            Role::DtBias => "dt_bias",
            Role::ALog => "A_log",
            Role::D => "D",
            Role::ConvW => "conv_w",
            Role::ConvB => "conv_b",
            Role::State => "state",
            Role::Partial => "partial",
            Role::ChunkStates => "chunk_states",
            Role::ConvState => "conv_state",
            Role::ChunkDecay => "chunk_decay",
            Role::PartW(q) => return write!(f, "w[{q}]"),
            Role::PartY(q) => return write!(f, "y[{q}]"),
        };
        f.write_str(name)
    }
}

/// What a kernel does with a view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// Read, then written in place (states, accumulating outputs, in-place softmax).
    ReadWrite,
}

impl Access {
    pub fn writes(self) -> bool {
        self != Access::Read
    }
}

/// A run-time quantity of one launch that extents and relations are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// The launch's grid size.
    Grid,
    /// Integer argument `j` of the launch.
    Int(usize),
    /// The model's vocabulary size (rows of the embedding table).
    Vocab,
}

/// `Σ coef · Π factors + konst`: a number of elements, or a bound, of one launch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Extent {
    pub terms: Vec<(i64, Vec<Factor>)>,
    pub konst: i64,
}

impl Extent {
    /// A fixed number of elements.
    pub fn of(n: usize) -> Extent {
        Extent {
            terms: Vec::new(),
            konst: to_i64(n),
        }
    }

    /// `coef · factor`.
    pub fn per(factor: Factor, coef: usize) -> Extent {
        Extent {
            terms: vec![(to_i64(coef), vec![factor])],
            konst: 0,
        }
    }

    /// `coef · a · b`.
    pub fn per2(a: Factor, b: Factor, coef: usize) -> Extent {
        Extent {
            terms: vec![(to_i64(coef), vec![a, b])],
            konst: 0,
        }
    }

    /// `self + k` (k may be negative).
    pub fn plus(mut self, k: i64) -> Extent {
        self.konst = self.konst.saturating_add(k);
        self
    }

    /// `self + o`.
    pub fn and(mut self, o: Extent) -> Extent {
        self.terms.extend(o.terms);
        self.konst = self.konst.saturating_add(o.konst);
        self
    }
}

/// Sizes in kinds come from files; an absurd one saturates, and the validator's checked
/// arithmetic then refuses it instead of wrapping.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One view of a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewSig {
    pub role: Role,
    pub elem: Elem,
    pub access: Access,
    /// How many elements from the view's start the kernel may touch.
    pub extent: Extent,
}

/// What one integer argument means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntArg {
    /// Position of the launch's first row (RoPE angle, KV-cache row, causal limit).
    Pos,
    /// KV-cache capacity `C` of the cache views.
    Capacity,
    /// Number of rows of a kernel whose grid runs over channels or heads.
    Rows,
}

impl std::fmt::Display for IntArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntArg::Pos => "position",
            IntArg::Capacity => "capacity",
            IntArg::Rows => "rows",
        })
    }
}

/// How large a launch's grid must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridRule {
    /// Any size: the grid is the rows of the call, and the extents follow it.
    Rows,
    /// Exactly this many indices (channels, heads, output rows).
    Exactly(usize),
}

/// A kernel kind's calling convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub views: Vec<ViewSig>,
    pub ints: Vec<IntArg>,
    pub grid: GridRule,
    /// Relations `lhs ≤ rhs` that every launch must satisfy for the kernel to stay in
    /// bounds (a cache row written must exist, a causal limit must fit the row).
    pub requires: Vec<(Extent, Extent)>,
}

impl Signature {
    /// Index of the view playing `role`.
    pub fn index(&self, role: Role) -> Option<usize> {
        self.views.iter().position(|v| v.role == role)
    }
}

/// Builds a signature view by view.
struct Sig(Signature);

impl Sig {
    fn new(grid: GridRule, ints: &[IntArg]) -> Sig {
        Sig(Signature {
            views: Vec::new(),
            ints: ints.to_vec(),
            grid,
            requires: Vec::new(),
        })
    }

    fn view(mut self, role: Role, elem: Elem, access: Access, extent: Extent) -> Sig {
        self.0.views.push(ViewSig {
            role,
            elem,
            access,
            extent,
        });
        self
    }

    fn read(self, role: Role, extent: Extent) -> Sig {
        self.view(role, Elem::F32, Access::Read, extent)
    }

    fn write(self, role: Role, extent: Extent) -> Sig {
        self.view(role, Elem::F32, Access::Write, extent)
    }

    fn update(self, role: Role, extent: Extent) -> Sig {
        self.view(role, Elem::F32, Access::ReadWrite, extent)
    }

    fn when(self, cond: bool, f: impl FnOnce(Sig) -> Sig) -> Sig {
        if cond { f(self) } else { self }
    }

    fn requires(mut self, lhs: Extent, rhs: Extent) -> Sig {
        self.0.requires.push((lhs, rhs));
        self
    }
}

use Factor::{Grid, Int};

/// What every Mamba2 scan kind reads first, `[zx (the Δ columns), xbc, dt_bias, A_log]`,
/// for a scan of `(width, heads, head_dim, groups, state)`, with ints `[rows]` and the grid
/// `grid`.
fn mamba2_scan_inputs(grid: GridRule, sizes: (usize, usize, usize, usize, usize)) -> Sig {
    let (width, heads, head_dim, groups, state) = sizes;
    let m = |a: usize, b: usize| a.saturating_mul(b);
    let di = m(heads, head_dim);
    let cd = di.saturating_add(m(2, m(groups, state)));
    let dt_col = di.saturating_add(cd);
    Sig::new(grid, &[IntArg::Rows])
        .read(Role::Zx, window(rows_of(0, width), width, dt_col, heads))
        .read(Role::Xbc, rows_of(0, cd))
        .read(Role::DtBias, Extent::of(heads))
        .read(Role::ALog, Extent::of(heads))
}

/// `n` elements per grid index.
fn rows(n: usize) -> Extent {
    Extent::per(Grid, n)
}

/// `n` elements per row, rows counted by integer argument `j`.
fn rows_of(j: usize, n: usize) -> Extent {
    Extent::per(Int(j), n)
}

/// Columns `[first, first + len)` of rows `width` wide, rows counted by `rows`: the last
/// row's window ends `width - first - len` elements before the end of the last row.
fn window(rows: Extent, width: usize, first: usize, len: usize) -> Extent {
    let unused = width.saturating_sub(first.saturating_add(len));
    rows.plus(-to_i64(unused))
}

impl KernelKind {
    /// The calling convention of this kind, after checking that its sizes make sense.
    pub fn signature(&self) -> Result<Signature, String> {
        crate::sizes::check(self)?;
        Ok(self.signature_unchecked())
    }

    fn signature_unchecked(&self) -> Signature {
        use GridRule::{Exactly, Rows};
        use IntArg as I;
        use KernelKind as K;
        use Role as R;
        let m = |a: usize, b: usize| a.saturating_mul(b);
        match self {
            K::Embedding { hidden, elem } => Sig::new(Rows, &[])
                .view(R::Tokens, Elem::I64, Access::Read, rows(1))
                .view(
                    R::Table,
                    *elem,
                    Access::Read,
                    Extent::per(Factor::Vocab, *hidden),
                )
                .write(R::Out, rows(*hidden)),
            K::RmsNorm { d, .. } => Sig::new(Rows, &[])
                .read(R::X, rows(*d))
                .read(R::W, Extent::of(*d))
                .write(R::Out, rows(*d)),
            K::AddRmsNorm { d, .. } => Sig::new(Rows, &[])
                .read(R::A, rows(*d))
                .read(R::B, rows(*d))
                .read(R::W, Extent::of(*d))
                .write(R::Sum, rows(*d))
                .write(R::Out, rows(*d)),
            K::ConcatRmsNorm { da, db, .. } => Sig::new(Rows, &[])
                .read(R::A, rows(*da))
                .read(R::B, rows(*db))
                .read(R::W, Extent::of(da.saturating_add(*db)))
                .write(R::Out, rows(da.saturating_add(*db))),
            K::ConcatRmsScale { da, db, .. } => Sig::new(Rows, &[])
                .read(R::A, rows(*da))
                .read(R::B, rows(*db))
                .write(R::R, rows(1)),
            K::RowScale { n } => Sig::new(Rows, &[])
                .read(R::Y, rows(*n))
                .read(R::R, rows(1))
                .write(R::Out, rows(*n)),
            K::Binary { n, b_rows, .. } => Sig::new(Rows, &[])
                .read(R::A, rows(*n))
                .read(R::B, if *b_rows { rows(*n) } else { Extent::of(*n) })
                .write(R::Out, rows(*n)),
            K::Gemv {
                k,
                rows: parts,
                elem,
                accumulate,
                row_stride,
            } => {
                let stride = row_stride.unwrap_or(*k);
                let out = if *accumulate {
                    Access::ReadWrite
                } else {
                    Access::Write
                };
                let total = parts.iter().fold(0usize, |a, &r| a.saturating_add(r));
                let mut sig = Sig::new(Exactly(total), &[]).read(R::X, Extent::of(*k));
                for (q, &r) in parts.iter().enumerate() {
                    let last_row = m(r.saturating_sub(1), stride);
                    sig = sig.view(
                        Role::part_w(q),
                        *elem,
                        Access::Read,
                        Extent::of(last_row.saturating_add(*k)),
                    );
                }
                for (q, &r) in parts.iter().enumerate() {
                    sig = sig.view(Role::part_y(q), Elem::F32, out, Extent::of(r));
                }
                sig
            }
            K::Epilogue { n, bias, op } => {
                let out_cols = if matches!(op, EpilogueOp::Gate(_)) {
                    n / 2
                } else {
                    *n
                };
                let ints: &[IntArg] = if op.rope_depends_on_length() {
                    &[I::Pos, I::Rows]
                } else {
                    &[I::Pos]
                };
                Sig::new(Rows, ints)
                    .read(R::Y, rows(*n))
                    .when(*bias, |s| s.read(R::Bias, Extent::of(*n)))
                    .when(matches!(op, EpilogueOp::Mul), |s| s.read(R::M, rows(*n)))
                    .write(R::Out, rows(out_cols))
                    .when(op.rope_depends_on_length(), |s| {
                        s.requires(rows(1), rows_of(1, 1))
                            .requires(rows_of(1, 1), rows(1))
                    })
            }
            K::KvWrite {
                heads,
                head_dim,
                cache,
            } => Sig::new(Rows, &[I::Pos, I::Capacity])
                .read(R::K, rows(m(*heads, *head_dim)))
                .view(
                    R::Cache,
                    *cache,
                    Access::Write,
                    rows_of(1, m(*heads, *head_dim)),
                )
                .requires(Extent::per(Int(0), 1).and(rows(1)), rows_of(1, 1)),
            K::AttentionPrefill {
                heads,
                kv_heads,
                head_dim,
                kv,
                ..
            } => Sig::new(Rows, &[I::Pos, I::Capacity, I::Rows])
                .read(R::Q, rows_of(2, m(*heads, *head_dim)))
                .view(R::K, *kv, Access::Read, rows_of(1, m(*kv_heads, *head_dim)))
                .view(R::V, *kv, Access::Read, rows_of(1, m(*kv_heads, *head_dim)))
                .write(R::Out, rows_of(2, m(*heads, *head_dim)))
                .requires(Extent::per(Int(0), 1).and(rows_of(2, 1)), rows_of(1, 1))
                .requires(rows(1), rows_of(2, *heads))
                .requires(rows_of(2, *heads), rows(1)),
            K::AttentionDecode {
                heads,
                kv_heads,
                head_dim,
                kv,
                splits,
                ..
            } => Sig::new(Exactly(m(*heads, *splits)), &[I::Pos, I::Capacity])
                .read(R::Q, Extent::of(m(*heads, *head_dim)))
                .view(R::K, *kv, Access::Read, rows_of(1, m(*kv_heads, *head_dim)))
                .view(R::V, *kv, Access::Read, rows_of(1, m(*kv_heads, *head_dim)))
                .write(
                    R::Partial,
                    Extent::of(m(m(*heads, *splits), head_dim.saturating_add(2))),
                )
                .requires(Extent::per(Int(0), 1).plus(1), rows_of(1, 1)),
            K::AttentionCombine {
                heads,
                head_dim,
                splits,
            } => Sig::new(Exactly(*heads), &[])
                .read(
                    R::Partial,
                    Extent::of(m(m(*heads, *splits), head_dim.saturating_add(2))),
                )
                .write(R::Out, Extent::of(m(*heads, *head_dim))),
            K::Mamba2Conv {
                width, di, cd, k, ..
            } => Sig::new(Exactly(*cd), &[I::Rows])
                .read(R::Zx, window(rows_of(0, *width), *width, *di, *cd))
                .read(R::ConvW, Extent::of(m(*cd, *k)))
                .read(R::ConvB, Extent::of(*cd))
                .update(R::State, Extent::of(m(*cd, k.saturating_sub(1))))
                .write(R::Out, rows_of(0, *cd)),
            K::Mamba2Scan {
                width,
                heads,
                head_dim,
                groups,
                state,
                ssm,
                ..
            } => {
                let di = m(*heads, *head_dim);
                let sizes = (*width, *heads, *head_dim, *groups, *state);
                mamba2_scan_inputs(Exactly(*heads), sizes)
                    .read(R::D, Extent::of(*heads))
                    .write(R::Y, rows_of(0, di))
                    .view(R::State, *ssm, Access::ReadWrite, Extent::of(m(di, *state)))
            }
            K::Mamba2ChunkScan {
                width,
                heads,
                head_dim,
                groups,
                state,
                chunks,
                outputs,
                ..
            } => {
                let di = m(*heads, *head_dim);
                let states = || Extent::of(m(*chunks, m(di, *state)));
                let sizes = (*width, *heads, *head_dim, *groups, *state);
                mamba2_scan_inputs(Exactly(m(*chunks, *heads)), sizes)
                    .when(*outputs, |s| {
                        s.read(R::D, Extent::of(*heads))
                            .write(R::Y, rows_of(0, di))
                            .update(R::ChunkStates, states())
                    })
                    .when(!*outputs, |s| {
                        s.write(R::ChunkStates, states())
                            .write(R::ChunkDecay, Extent::of(m(*chunks, *heads)))
                    })
            }
            K::Mamba2ChunkPass {
                heads,
                head_dim,
                state,
                chunks,
                ssm,
                ..
            } => {
                let di = m(*heads, *head_dim);
                Sig::new(Exactly(*heads), &[I::Rows])
                    .update(R::ChunkStates, Extent::of(m(*chunks, m(di, *state))))
                    .read(R::ChunkDecay, Extent::of(m(*chunks, *heads)))
                    .view(R::State, *ssm, Access::ReadWrite, Extent::of(m(di, *state)))
            }
            K::Mamba2GateNorm {
                width,
                di,
                conv_shift: None,
                ..
            } => Sig::new(Rows, &[])
                .read(R::Y, rows(*di))
                .read(R::Zx, window(rows(*width), *width, 0, *di))
                .read(R::W, Extent::of(*di))
                .write(R::Out, rows(*di)),
            K::Mamba2GateNorm {
                width,
                di,
                conv_shift: Some(shift),
                ..
            } => Sig::new(Exactly(1), &[])
                .read(R::Y, Extent::of(*di))
                .read(
                    R::Zx,
                    window(
                        Extent::of(*width),
                        *width,
                        0,
                        di.saturating_add(shift.channels),
                    ),
                )
                .read(R::W, Extent::of(*di))
                .write(R::Out, Extent::of(*di))
                .update(
                    R::ConvState,
                    Extent::of(m(shift.channels, shift.k.saturating_sub(1))),
                ),
            K::Mamba2ConvScan {
                width,
                heads,
                head_dim,
                groups,
                state,
                k,
                ssm,
                ..
            } => {
                let di = m(*heads, *head_dim);
                let cd = di.saturating_add(m(2, m(*groups, *state)));
                let dt_col = di.saturating_add(cd);
                Sig::new(Exactly(*heads), &[])
                    .read(
                        R::Zx,
                        window(
                            Extent::of(*width),
                            *width,
                            di,
                            dt_col.saturating_add(*heads).saturating_sub(di),
                        ),
                    )
                    .read(R::ConvW, Extent::of(m(cd, *k)))
                    .read(R::ConvB, Extent::of(cd))
                    .read(R::ConvState, Extent::of(m(cd, k.saturating_sub(1))))
                    .read(R::DtBias, Extent::of(*heads))
                    .read(R::ALog, Extent::of(*heads))
                    .read(R::D, Extent::of(*heads))
                    .write(R::Y, Extent::of(di))
                    .view(R::State, *ssm, Access::ReadWrite, Extent::of(m(di, *state)))
            }
            K::Mamba1Conv { di, k, bias, .. } => Sig::new(Exactly(*di), &[I::Rows])
                .read(R::Xz, rows_of(0, m(2, *di)))
                .read(R::ConvW, Extent::of(m(*di, *k)))
                .when(*bias, |s| s.read(R::ConvB, Extent::of(*di)))
                .update(R::State, Extent::of(m(*di, k.saturating_sub(1))))
                .write(R::Out, rows_of(0, *di)),
            K::Mamba1Scan {
                heads,
                head_dim,
                state,
                dt_rank,
                ssm,
                ..
            } => {
                let di = m(*heads, *head_dim);
                let bc = m(*heads, dt_rank.saturating_add(m(2, *state)));
                Sig::new(Exactly(di), &[I::Rows])
                    .read(R::X, rows_of(0, di))
                    .read(R::Dt, rows_of(0, di))
                    .read(R::DtBias, Extent::of(di))
                    .read(R::ALog, Extent::of(m(di, *state)))
                    .read(R::Bc, rows_of(0, bc))
                    .read(R::D, Extent::of(di))
                    .read(R::Xz, rows_of(0, m(2, di)))
                    .view(R::State, *ssm, Access::ReadWrite, Extent::of(m(di, *state)))
                    .write(R::Y, rows_of(0, di))
            }
        }
        .0
    }
}

fn part(q: usize) -> u16 {
    u16::try_from(q).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{ActKind, BinOp};

    fn kinds() -> Vec<KernelKind> {
        use KernelKind as K;
        vec![
            K::Embedding {
                hidden: 8,
                elem: Elem::Bf16,
            },
            K::RmsNorm {
                d: 8,
                groups: 2,
                eps: 1e-5,
            },
            K::AddRmsNorm { d: 8, eps: 1e-5 },
            K::ConcatRmsNorm {
                da: 8,
                db: 8,
                eps: 1e-5,
            },
            K::ConcatRmsScale {
                da: 8,
                db: 8,
                eps: 1e-5,
            },
            K::RowScale { n: 4 },
            K::Binary {
                op: BinOp::Add,
                n: 8,
                b_rows: false,
            },
            K::Gemv {
                k: 8,
                rows: vec![4, 2],
                elem: Elem::F32,
                accumulate: true,
                row_stride: Some(16),
            },
            K::Epilogue {
                n: 8,
                bias: true,
                op: EpilogueOp::Mul,
            },
            K::Epilogue {
                n: 8,
                bias: false,
                op: EpilogueOp::Gate(ActKind::Silu),
            },
            K::KvWrite {
                heads: 2,
                head_dim: 4,
                cache: Elem::F32,
            },
            K::AttentionPrefill {
                heads: 4,
                kv_heads: 2,
                head_dim: 4,
                scale: 0.5,
                kv: Elem::F32,
                products: Elem::F32,
            },
            K::AttentionDecode {
                heads: 4,
                kv_heads: 2,
                head_dim: 4,
                scale: 0.5,
                kv: Elem::F32,
                splits: 3,
            },
            K::AttentionCombine {
                heads: 4,
                head_dim: 4,
                splits: 3,
            },
            K::Mamba2Conv {
                width: 40,
                di: 8,
                cd: 16,
                k: 4,
                step: false,
            },
            K::Mamba2Scan {
                width: 36,
                heads: 2,
                head_dim: 4,
                groups: 1,
                state: 4,
                dt_min: None,
                step: true,
                ssm: Elem::F32,
            },
            K::Mamba2ChunkScan {
                width: 36,
                heads: 2,
                head_dim: 4,
                groups: 1,
                state: 4,
                dt_min: None,
                chunks: 3,
                min_len: 2,
                outputs: false,
            },
            K::Mamba2ChunkScan {
                width: 36,
                heads: 2,
                head_dim: 4,
                groups: 1,
                state: 4,
                dt_min: Some(1e-3),
                chunks: 3,
                min_len: 2,
                outputs: true,
            },
            K::Mamba2ChunkPass {
                heads: 2,
                head_dim: 4,
                state: 4,
                chunks: 3,
                min_len: 2,
                ssm: Elem::Bf16,
            },
            K::Mamba2GateNorm {
                width: 36,
                di: 8,
                groups: 1,
                eps: 1e-5,
                conv_shift: None,
            },
            K::Mamba2GateNorm {
                width: 36,
                di: 8,
                groups: 1,
                eps: 1e-5,
                conv_shift: Some(crate::ConvShift { channels: 16, k: 4 }),
            },
            K::Mamba2ConvScan {
                width: 36,
                heads: 2,
                head_dim: 4,
                groups: 1,
                state: 4,
                k: 4,
                dt_min: None,
                ssm: Elem::Bf16,
            },
            K::Mamba1Conv {
                di: 8,
                k: 4,
                bias: false,
                step: true,
            },
            K::Mamba1Scan {
                heads: 2,
                head_dim: 4,
                state: 4,
                dt_rank: 2,
                dt_min: Some(1e-3),
                step: false,
                ssm: Elem::Bf16,
            },
        ]
    }

    #[test]
    fn roles_are_unique_and_views_typed() {
        for kind in kinds() {
            let sig = kind.signature().unwrap();
            for (i, v) in sig.views.iter().enumerate() {
                assert_eq!(
                    sig.index(v.role),
                    Some(i),
                    "{kind:?}: role {} twice",
                    v.role
                );
            }
            assert!(
                sig.views.iter().any(|v| v.access.writes()),
                "{kind:?} writes nothing"
            );
        }
    }

    #[test]
    fn optional_views_follow_the_kind() {
        let with = KernelKind::Epilogue {
            n: 8,
            bias: true,
            op: EpilogueOp::Mul,
        };
        let roles: Vec<Role> = with
            .signature()
            .unwrap()
            .views
            .iter()
            .map(|v| v.role)
            .collect();
        assert_eq!(roles, [Role::Y, Role::Bias, Role::M, Role::Out]);
        let gemv = KernelKind::Gemv {
            k: 8,
            rows: vec![4, 2],
            elem: Elem::Bf16,
            accumulate: false,
            row_stride: Some(16),
        };
        let sig = gemv.signature().unwrap();
        assert_eq!(sig.grid, GridRule::Exactly(6));
        let w1 = &sig.views[sig.index(Role::PartW(1)).unwrap()];
        assert_eq!((w1.elem, w1.extent.konst), (Elem::Bf16, 16 + 8));
        assert_eq!(
            sig.views[sig.index(Role::PartY(0)).unwrap()].access,
            Access::Write
        );
    }

    #[test]
    fn window_extents_end_at_the_last_column_read() {
        let conv = KernelKind::Mamba2Conv {
            width: 40,
            di: 8,
            cd: 16,
            k: 4,
            step: false,
        };
        let sig = conv.signature().unwrap();
        // (rows - 1)·40 + 8 + 16 = 40·rows - 16
        assert_eq!(sig.views[0].extent, Extent::per(Int(0), 40).plus(-16));
    }

    #[test]
    fn nonsense_sizes_have_no_signature() {
        let bad = KernelKind::AttentionDecode {
            heads: 3,
            kv_heads: 2,
            head_dim: 4,
            scale: 1.0,
            kv: Elem::F32,
            splits: 1,
        };
        assert!(bad.signature().unwrap_err().contains("kv_heads"));
        for splits in [0, crate::MAX_DECODE_SPLITS + 1] {
            let bad = KernelKind::AttentionCombine {
                heads: 2,
                head_dim: 4,
                splits,
            };
            assert!(bad.signature().unwrap_err().contains("splits"), "{splits}");
        }
    }
}
