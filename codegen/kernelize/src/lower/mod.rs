//! Lowering one graph: each op of the fused, memory-planned graph becomes launches and
//! GEMM steps over the planned buffers. Linears (products, adapters, epilogues) are in
//! [`linear`], the attention and Mamba mixers in [`mixers`].

mod linear;
mod mixers;

use std::collections::BTreeMap;

use zambac_engine::{
    BinOp, Buffer, EpilogueOp, Expr, KernelKind, Matrix, Program, ProgramName, Step, View,
};
use zambac_ir::{Dim, Elem, Graph, NodeId, OpKind, Placement, Sym, ValueRef};

use crate::{KernelTable, KernelizeError, act_kind, dim_expr, matrix, numel};

/// How the engine stores each parameter.
#[derive(Clone, Copy)]
pub(crate) struct Storage<'a> {
    pub elems: &'a [Elem],
    pub blocks: &'a [Option<Vec<usize>>],
    /// How the KV caches are stored (f32 or bf16).
    pub kv: Elem,
    /// How the SSM states are stored (f32 or bf16).
    pub ssm: Elem,
    /// What prompt attention multiplies (f32, or bf16 pairs).
    pub attention_products: Elem,
    /// How the Mamba2 mixers are lowered.
    pub mamba2: crate::Mamba2Lowering,
}

pub(crate) struct GraphLowering<'a> {
    g: &'a Graph,
    storage: Storage<'a>,
    kernels: &'a mut KernelTable,
    plan: &'a BTreeMap<ValueRef, Placement>,
    last_only: bool,
    steps: Vec<Step>,
    scratch: Vec<Expr>,
    /// Scratch buffers not yet taken by the op being lowered. Scratch only lives during
    /// one op, so each op reuses the buffers of earlier ops (of equal size).
    scratch_free: Vec<u32>,
    /// The value that becomes the `logits` output.
    logits: Option<ValueRef>,
}

impl<'a> GraphLowering<'a> {
    pub(crate) fn new(
        g: &'a Graph,
        storage: Storage<'a>,
        kernels: &'a mut KernelTable,
        last_only: bool,
    ) -> Result<Self, KernelizeError> {
        let plan = g.plan.as_ref().ok_or_else(|| KernelizeError {
            graph: g.name.clone(),
            msg: "the graph has no memory plan; run the default pipeline (plan-memory)".into(),
        })?;
        let logits = g
            .outputs
            .iter()
            .find(|(n, _)| n == "logits")
            .map(|(_, v)| *v);
        Ok(GraphLowering {
            g,
            storage,
            kernels,
            plan,
            last_only,
            steps: Vec::new(),
            scratch: Vec::new(),
            scratch_free: Vec::new(),
            logits,
        })
    }

    fn err<T>(&self, msg: impl Into<String>) -> Result<T, KernelizeError> {
        Err(KernelizeError {
            graph: self.g.name.clone(),
            msg: msg.into(),
        })
    }

    pub(crate) fn lower_all(&mut self) -> Result<(), KernelizeError> {
        for n in self.g.order() {
            if !self.g.kind(n).is_leaf() {
                self.lower(n)?;
            }
        }
        Ok(())
    }

    pub(crate) fn finish(self, name: ProgramName) -> Program {
        let mut slots: Vec<Vec<Expr>> = Vec::new();
        for (v, p) in self.plan {
            if let Placement::Slot(s) = p {
                let s = *s as usize;
                if slots.len() <= s {
                    slots.resize(s + 1, Vec::new());
                }
                let e = numel(self.g, *v);
                if !slots[s].contains(&e) {
                    slots[s].push(e);
                }
            }
        }
        let outputs = self
            .g
            .outputs
            .iter()
            .map(|(n, v)| {
                let mut dims: Vec<Expr> = self.g.ty(*v).dims.iter().map(|&d| dim_expr(d)).collect();
                if n == "logits" && self.last_only {
                    dims[0] = Expr::k(1);
                }
                (n.clone(), dims)
            })
            .collect();
        Program {
            name,
            steps: self.steps,
            slots,
            scratch: self.scratch,
            outputs,
        }
    }

    /// A slice of a parameter along its first axis with stride 1: contiguous, so a view
    /// into the weight at an offset.
    fn weight_slice(&self, n: NodeId) -> Option<View> {
        let OpKind::Slice {
            axis: 0,
            start,
            stride: 1,
            ..
        } = *self.g.kind(n)
        else {
            return None;
        };
        let src = self.g.operands(n)[0];
        let OpKind::Param(p) = self.g.kind(src.node) else {
            return None;
        };
        let row: usize = self.g.ty(src).dims[1..]
            .iter()
            .map(|d| d.as_const().unwrap_or(0))
            .product();
        Some(View::at(Buffer::Weight(p.0), Expr::k((start * row) as i64)))
    }

    /// Where a value lives.
    fn view(&self, v: ValueRef) -> View {
        if let Some(view) = self.weight_slice(v.node) {
            return view;
        }
        match self.g.kind(v.node) {
            OpKind::Param(p) => View::of(Buffer::Weight(p.0)),
            OpKind::Input { name } => {
                // In decode a state input is the same buffer as the state output.
                let is_state = self.g.outputs.iter().any(|(n, _)| n == name);
                View::of(if is_state {
                    Buffer::Output(name.clone())
                } else {
                    Buffer::Input(name.clone())
                })
            }
            _ => match &self.plan[&v] {
                Placement::Slot(s) => View::of(Buffer::Slot(*s)),
                Placement::Output(n) => View::of(Buffer::Output(n.clone())),
            },
        }
    }

    /// Whether `v` is a parameter stored in column blocks.
    fn column_blocked(&self, v: ValueRef) -> bool {
        match self.g.kind(v.node) {
            OpKind::Param(p) => self.storage.blocks[p.index()].is_some(),
            _ => false,
        }
    }

    fn elem(&self, v: ValueRef) -> Elem {
        match self.g.kind(v.node) {
            OpKind::Param(p) => self.storage.elems[p.index()],
            _ => Elem::F32,
        }
    }

    /// Rows of an activation `[rows, …]`: `T` or a constant.
    fn rows(&self, v: ValueRef) -> Expr {
        dim_expr(self.g.ty(v).dims[0])
    }

    /// The constant size of dimension `axis` of `v`.
    fn dim(&self, v: ValueRef, axis: usize) -> usize {
        self.g.ty(v).dims[axis].as_const().unwrap_or(0)
    }

    fn last(&self, v: ValueRef) -> usize {
        self.g.ty(v).last().and_then(|d| d.as_const()).unwrap_or(0)
    }

    fn new_scratch(&mut self, elems: Expr) -> View {
        let reuse = self
            .scratch_free
            .iter()
            .position(|&i| self.scratch[i as usize] == elems);
        let i = match reuse {
            Some(at) => self.scratch_free.remove(at),
            None => {
                self.scratch.push(elems);
                self.scratch.len() as u32 - 1
            }
        };
        View::of(Buffer::Scratch(i))
    }

    fn launch(
        &mut self,
        family: &str,
        kind: KernelKind,
        grid: Expr,
        views: Vec<View>,
        ints: Vec<Expr>,
    ) {
        let kernel = self.kernels.symbol(family, kind);
        self.steps.push(Step::Launch {
            kernel,
            grid,
            views,
            ints,
        });
    }

    fn lower(&mut self, n: NodeId) -> Result<(), KernelizeError> {
        self.scratch_free = (0..self.scratch.len() as u32).collect();
        let g = self.g;
        let ops = g.operands(n);
        let out = |r: u16| n.res(r);
        match g.kind(n).clone() {
            OpKind::Embedding => {
                let kind = KernelKind::Embedding {
                    hidden: self.dim(ops[1], 1),
                    elem: self.elem(ops[1]),
                };
                let views = vec![self.view(ops[0]), self.view(ops[1]), self.view(out(0))];
                self.launch("embedding", kind, self.rows(out(0)), views, vec![]);
            }
            OpKind::RmsNorm { eps } | OpKind::GroupRmsNorm { eps, .. } => {
                let groups = match g.kind(n) {
                    OpKind::GroupRmsNorm { groups, .. } => *groups,
                    _ => 1,
                };
                let kind = KernelKind::RmsNorm {
                    d: self.last(ops[0]),
                    groups,
                    eps,
                };
                let views = vec![self.view(ops[0]), self.view(ops[1]), self.view(out(0))];
                self.launch("rms_norm", kind, self.row_count(ops[0]), views, vec![]);
            }
            OpKind::AddRmsNorm { eps } => {
                let kind = KernelKind::AddRmsNorm {
                    d: self.last(ops[0]),
                    eps,
                };
                let views = vec![
                    self.view(ops[0]),
                    self.view(ops[1]),
                    self.view(ops[2]),
                    self.view(out(0)),
                    self.view(out(1)),
                ];
                self.launch("add_rms_norm", kind, self.row_count(ops[0]), views, vec![]);
            }
            OpKind::ConcatRmsNorm { eps } => {
                let kind = KernelKind::ConcatRmsNorm {
                    da: self.last(ops[0]),
                    db: self.last(ops[1]),
                    eps,
                };
                let views = vec![
                    self.view(ops[0]),
                    self.view(ops[1]),
                    self.view(ops[2]),
                    self.view(out(0)),
                ];
                self.launch(
                    "concat_rms_norm",
                    kind,
                    self.row_count(ops[0]),
                    views,
                    vec![],
                );
            }
            OpKind::ConcatRmsScale { eps } => {
                let kind = KernelKind::ConcatRmsScale {
                    da: self.last(ops[0]),
                    db: self.last(ops[1]),
                    eps,
                };
                let views = vec![self.view(ops[0]), self.view(ops[1]), self.view(out(0))];
                self.launch(
                    "concat_rms_scale",
                    kind,
                    self.row_count(ops[0]),
                    views,
                    vec![],
                );
            }
            // A contiguous slice of a weight is only a view of it (see `view`).
            OpKind::Slice { .. } if self.weight_slice(n).is_some() => {}
            OpKind::Add | OpKind::Mul => {
                let op = if matches!(g.kind(n), OpKind::Add) {
                    BinOp::Add
                } else {
                    BinOp::Mul
                };
                let b_rows = g.ty(ops[1]).rank() == g.ty(ops[0]).rank();
                let kind = KernelKind::Binary {
                    op,
                    n: self.last(ops[0]),
                    b_rows,
                };
                let views = vec![self.view(ops[0]), self.view(ops[1]), self.view(out(0))];
                self.launch("binary", kind, self.row_count(ops[0]), views, vec![]);
            }
            OpKind::Act(a) => {
                let kind = KernelKind::Epilogue {
                    n: self.last(ops[0]),
                    bias: false,
                    op: EpilogueOp::Act(act_kind(a)),
                };
                let views = vec![self.view(ops[0]), self.view(out(0))];
                self.launch(
                    "epilogue",
                    kind,
                    self.row_count(ops[0]),
                    views,
                    vec![Expr::k(0)],
                );
            }
            OpKind::Rope(r) => {
                let op = linear::rope_op(&r);
                let rows = self.rows(ops[0]);
                let ints = linear::rope_ints(&op, rows);
                let kind = KernelKind::Epilogue {
                    n: self.last(ops[0]),
                    bias: false,
                    op,
                };
                let views = vec![self.view(ops[0]), self.view(out(0))];
                self.launch("epilogue", kind, rows, views, ints);
            }
            OpKind::Linear(a) => self.linear(n, &a, &ops)?,
            OpKind::HeadLinear { heads } => {
                let (rows, k) = (self.rows(ops[0]), self.dim(ops[0], 2));
                let nout = self.dim(ops[1], 1);
                for h in 0..heads {
                    let a = matrix(self.view(ops[0]), (h * k) as i64, (heads * k) as i64, 1);
                    let b = matrix(self.view(ops[1]), (h * nout * k) as i64, 1, k as i64);
                    let c = matrix(
                        self.view(out(0)),
                        (h * nout) as i64,
                        (heads * nout) as i64,
                        1,
                    );
                    self.gemm(rows, nout, k, a, b, c, false);
                }
            }
            OpKind::KvStore { heads, head_dim } | OpKind::KvAppend { heads, head_dim } => {
                let append = matches!(g.kind(n), OpKind::KvAppend { .. });
                // Rows land at the call's positions: a prefill continues from `pos` (0 for
                // a new prompt), a decode step writes its one row at `pos`.
                let k = if append { ops[1] } else { ops[0] };
                let pos0 = Expr::POS;
                if append && self.view(ops[0]) != self.view(out(0)) {
                    return self.err("a KV append must update its cache in place");
                }
                let kind = KernelKind::KvWrite {
                    heads,
                    head_dim,
                    cache: self.storage.kv,
                };
                let views = vec![self.view(k), self.view(out(0))];
                self.launch("kv_write", kind, self.rows(k), views, vec![pos0, Expr::C]);
            }
            OpKind::Attention(a) => self.attention(n, &a, &ops)?,
            OpKind::Mamba2Mix(m) | OpKind::Mamba2Step(m) => {
                let step = matches!(g.kind(n), OpKind::Mamba2Step(_));
                self.mamba2(n, &m, &ops, step)?
            }
            OpKind::Mamba1Mix(m) | OpKind::Mamba1Step(m) => {
                let step = matches!(g.kind(n), OpKind::Mamba1Step(_));
                self.mamba1(n, &m, &ops, step)?
            }
            other => {
                return self.err(format!(
                    "`{}` has no CPU kernel; it only appears when fusion passes are disabled \
                     (the code generator needs the fused Mamba mixers and epilogues of the \
                     default pipeline)",
                    other.name()
                ));
            }
        }
        Ok(())
    }

    /// Number of rows of an activation of any rank (all but the last dimension).
    fn row_count(&self, v: ValueRef) -> Expr {
        let ty = self.g.ty(v);
        let mut e = Expr::k(1);
        for d in &ty.dims[..ty.rank() - 1] {
            e = match d {
                Dim::Const(c) => e.times(*c as i64),
                Dim::Sym(Sym::T) => Expr::T.times(e.k),
                Dim::Sym(Sym::C) => Expr::C.times(e.k),
            };
        }
        e
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        m: Expr,
        n: usize,
        k: usize,
        a: Matrix,
        b: Matrix,
        c: Matrix,
        accumulate: bool,
    ) {
        self.steps.push(Step::Gemm {
            m,
            n: Expr::k(n as i64),
            k: Expr::k(k as i64),
            a,
            b,
            c,
            accumulate,
        });
    }
}
