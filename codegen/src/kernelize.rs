//! Kernelize: an optimised, memory-planned module → execution [`Program`]s and the
//! [`Kernel`]s they launch.
//!
//! Each op becomes launches of generated kernels and, for matrix products with more than
//! one row, calls of the tuned GEMM library (`Step::Gemm`): linears with several rows,
//! Mamba1's per-head projections and the two products of prefill attention. One-row
//! products (decode, the last-row head) use the generated `Gemv` kernel, which streams the
//! weights once — an adapter's down-projection in the same pass as its shared projection.
//! Kernels are specialised to the model's constant sizes and deduplicated, so every
//! Mamba layer of a model shares one set of mixer kernels.
//!
//! Values live where the memory plan put them; intermediate results of a fused op (the
//! conv output, the scan output, adapter down-projections, attention scores) live in
//! per-program scratch buffers. Precondition: the module went through the default
//! pipeline (fused Mamba mixers, a memory plan); anything else is a clear error.

use std::collections::BTreeMap;

use zambac_ir::op::{AttnAttrs, Epilogue, LinearAttrs, Mamba1Attrs, Mamba2Attrs};
use zambac_ir::program::{
    ActKind, BinOp, Buffer, EpilogueOp, Expr, Kernel, KernelKind, Matrix, Program, Step, View,
};
use zambac_ir::{Dim, Elem, Graph, Module, NodeId, OpKind, Placement, Sym, ValueRef};

/// Why a module cannot be kernelized.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot generate code for graph @{graph}: {msg}")]
pub struct KernelizeError {
    pub graph: String,
    pub msg: String,
}

/// The lowered form of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    pub kernels: Vec<Kernel>,
    /// `prefill`, `prefill_last`, `decode`.
    pub programs: Vec<Program>,
    /// Storage type of each parameter: `dtype` for matrix weights, f32 for the rest.
    pub weight_elems: Vec<Elem>,
}

/// Lowers `m` for an engine whose matrix weights are stored as `dtype` (f32 or bf16).
pub fn kernelize(m: &Module, dtype: Elem) -> Result<Lowered, KernelizeError> {
    let weight_elems = weight_elems(m, dtype);
    let mut kernels = KernelTable::default();
    let mut programs = Vec::new();
    for (graph, name, last_only) in [
        ("prefill", "prefill", false),
        ("prefill", "prefill_last", true),
        ("decode", "decode", false),
    ] {
        let g = m.graph(graph).ok_or_else(|| KernelizeError {
            graph: graph.into(),
            msg: "the module has no such graph".into(),
        })?;
        let mut lw = GraphLowering::new(g, &weight_elems, &mut kernels, last_only)?;
        lw.lower_all()?;
        programs.push(lw.finish(name));
    }
    Ok(Lowered {
        kernels: kernels.kernels,
        programs,
        weight_elems,
    })
}

/// Parameters read as matrices (linear weights, per-head projections, the embedding)
/// take the engine dtype; all others stay f32.
fn weight_elems(m: &Module, dtype: Elem) -> Vec<Elem> {
    let mut elems = vec![Elem::F32; m.params.len()];
    for g in &m.graphs {
        for n in g.nodes() {
            let ops = g.operands(n);
            let matrix_operands: Vec<usize> = match g.kind(n) {
                OpKind::Embedding => vec![1],
                OpKind::HeadLinear { .. } => vec![1],
                OpKind::Linear(a) => {
                    let mut v = vec![1];
                    if a.lora {
                        let i = 2 + a.bias as usize;
                        v.extend([i, i + 1]);
                    }
                    v
                }
                OpKind::Mamba1Mix(m) | OpKind::Mamba1Step(m) => {
                    let i = 2 + m.conv_bias as usize;
                    vec![i, i + 1]
                }
                _ => vec![],
            };
            for i in matrix_operands {
                if let OpKind::Param(p) = g.kind(ops[i].node) {
                    elems[p.index()] = dtype;
                }
            }
        }
    }
    elems
}

/// Kernels by kind, each generated once.
#[derive(Default)]
struct KernelTable {
    kernels: Vec<Kernel>,
    by_kind: BTreeMap<String, String>,
}

impl KernelTable {
    /// The symbol of `kind`, adding it on first use.
    fn symbol(&mut self, family: &str, kind: KernelKind) -> String {
        let key = format!("{kind:?}");
        if let Some(s) = self.by_kind.get(&key) {
            return s.clone();
        }
        let symbol = format!("{family}_{}", self.kernels.len());
        self.by_kind.insert(key, symbol.clone());
        self.kernels.push(Kernel {
            symbol: symbol.clone(),
            kind,
        });
        symbol
    }
}

struct GraphLowering<'a> {
    g: &'a Graph,
    elems: &'a [Elem],
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
    fn new(
        g: &'a Graph,
        elems: &'a [Elem],
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
            elems,
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

    fn lower_all(&mut self) -> Result<(), KernelizeError> {
        for n in self.g.order() {
            if !self.g.kind(n).is_leaf() {
                self.lower(n)?;
            }
        }
        Ok(())
    }

    fn finish(self, name: &str) -> Program {
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
                let mut dims: Vec<Expr> = self.g.ty(*v).dims.iter().map(|&d| d.into()).collect();
                if n == "logits" && self.last_only {
                    dims[0] = Expr::k(1);
                }
                (n.clone(), dims)
            })
            .collect();
        Program {
            name: name.to_string(),
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

    fn elem(&self, v: ValueRef) -> Elem {
        match self.g.kind(v.node) {
            OpKind::Param(p) => self.elems[p.index()],
            _ => Elem::F32,
        }
    }

    /// Rows of an activation `[rows, …]`: `T` or a constant.
    fn rows(&self, v: ValueRef) -> Expr {
        self.g.ty(v).dims[0].into()
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
                    op: EpilogueOp::Act(a.into()),
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
                let kind = KernelKind::Epilogue {
                    n: self.last(ops[0]),
                    bias: false,
                    op: EpilogueOp::Rope {
                        heads: r.heads,
                        head_dim: r.head_dim,
                        theta: r.theta,
                    },
                };
                let pos0 = self.pos_operand(&ops, 1);
                let views = vec![self.view(ops[0]), self.view(out(0))];
                self.launch("epilogue", kind, self.rows(ops[0]), views, vec![pos0]);
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
                let (k, pos0) = if append {
                    (ops[1], self.pos_operand(&ops, 2))
                } else {
                    (ops[0], Expr::k(0))
                };
                if append && self.view(ops[0]) != self.view(out(0)) {
                    return self.err("a KV append must update its cache in place");
                }
                let kind = KernelKind::KvWrite { heads, head_dim };
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

    /// The position operand at `i` if present, else 0 (prefill starts at position 0).
    fn pos_operand(&self, ops: &[ValueRef], i: usize) -> Expr {
        if ops.len() > i { Expr::POS } else { Expr::k(0) }
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

    fn linear(
        &mut self,
        n: NodeId,
        a: &LinearAttrs,
        ops: &[ValueRef],
    ) -> Result<(), KernelizeError> {
        let out = n.out();
        let (x, w) = (ops[0], ops[1]);
        let (nout, kw) = (self.dim(w, 0), self.dim(w, 1));
        // The input's full width (the adapter reads all of it) and the product's window.
        let kx = self.last(x);
        let (k, w_off, x_off) = match a.window {
            None => (kw, 0, 0),
            Some(win) => (win.len, win.start, if kx == kw { win.start } else { 0 }),
        };
        let bias = a.bias.then(|| ops[2]);
        let lora = a.lora.then(|| {
            let i = 2 + usize::from(a.bias);
            (ops[i], ops[i + 1])
        });
        let hoisted = a.hoisted.then(|| {
            let i = a.hoisted_operand();
            (ops[i], ops[i + 1])
        });
        let extra = ops.get(a.epilogue_operand()).copied();
        // Only the last row matters for the head of `prefill_last`.
        let head_last = self.last_only && Some(out) == self.logits;
        if head_last && hoisted.is_some() {
            // `hoist-shared-input` only rewrites a shared block's input products.
            return self.err("the logits head cannot take a hoisted term");
        }
        let (x_view, rows) = if head_last {
            let last_row = Expr::T.times(kx as i64).plus(Expr::k(-(kx as i64)));
            (self.view(x).shifted(last_row), Expr::k(1))
        } else {
            (self.view(x), self.rows(x))
        };
        let one_row = rows == Expr::k(1);
        let gated = matches!(a.epilogue, Epilogue::ActGate(_));
        let y = if gated {
            self.new_scratch(rows.times(nout as i64))
        } else {
            self.view(out)
        };
        let r = lora.map(|(down, _)| self.dim(down, 0));
        let down = r.map(|r| self.new_scratch(rows.times(r as i64)));
        if lora.is_some_and(|(aw, _)| self.elem(aw) != self.elem(w)) {
            return self.err("an adapter's down-projection and its shared weight differ in type");
        }
        // `y = r ⊙ Y` first; the products then accumulate onto it.
        if let Some((term, scale)) = hoisted {
            let kind = KernelKind::RowScale { n: nout };
            let views = vec![self.view(term), self.view(scale), y.clone()];
            self.launch("row_scale", kind, rows, views, vec![]);
        }
        if one_row && a.window.is_none() && hoisted.is_none() {
            // One pass over `x` for the weight and the adapter's down-projection.
            let mut part_rows = vec![nout];
            let mut views = vec![x_view.clone(), self.view(w)];
            if let Some((aw, _)) = lora {
                part_rows.push(r.unwrap_or(0));
                views.push(self.view(aw));
            }
            views.push(y.clone());
            views.extend(down.clone());
            let grid = part_rows.iter().sum::<usize>() as i64;
            let kind = KernelKind::Gemv {
                k,
                rows: part_rows,
                elem: self.elem(w),
                accumulate: false,
                row_stride: None,
            };
            self.launch("gemv", kind, Expr::k(grid), views, vec![]);
        } else if one_row {
            let views = [
                x_view.clone().shifted(Expr::k(x_off as i64)),
                self.view(w).shifted(Expr::k(w_off as i64)),
                y.clone(),
            ];
            let (elem, ld) = (self.elem(w), (kw != k).then_some(kw));
            self.gemv(views, (nout, k, ld), elem, hoisted.is_some());
            if let (Some((aw, _)), Some(down), Some(r)) = (lora, down.clone(), r) {
                let views = [x_view.clone(), self.view(aw), down];
                self.gemv(views, (r, kx, None), self.elem(aw), false);
            }
        } else {
            let xa = matrix(x_view.clone(), x_off as i64, kx as i64, 1);
            let wt = matrix(self.view(w), w_off as i64, 1, kw as i64);
            let ym = matrix(y.clone(), 0, nout as i64, 1);
            self.gemm(rows, nout, k, xa, wt, ym, hoisted.is_some());
            if let (Some((aw, _)), Some(down), Some(r)) = (lora, down.clone(), r) {
                let xa = matrix(x_view.clone(), 0, kx as i64, 1);
                let at = matrix(self.view(aw), 0, 1, kx as i64);
                self.gemm(rows, r, kx, xa, at, matrix(down, 0, r as i64, 1), false);
            }
        }
        if let (Some((_, bw)), Some(down), Some(r)) = (lora, down, r) {
            if one_row {
                let views = [down, self.view(bw), y.clone()];
                self.gemv(views, (nout, r, None), self.elem(bw), true);
            } else {
                let dm = matrix(down, 0, r as i64, 1);
                let bt = matrix(self.view(bw), 0, 1, r as i64);
                let ym = matrix(y.clone(), 0, nout as i64, 1);
                self.gemm(rows, nout, r, dm, bt, ym, true);
            }
        }
        let op = match a.epilogue {
            Epilogue::None => EpilogueOp::None,
            Epilogue::Act(f) => EpilogueOp::Act(ActKind::from(f)),
            Epilogue::ActGate(f) => EpilogueOp::Gate(ActKind::from(f)),
            Epilogue::Mul => EpilogueOp::Mul,
            Epilogue::Rope(r) => EpilogueOp::Rope {
                heads: r.heads,
                head_dim: r.head_dim,
                theta: r.theta,
            },
        };
        if bias.is_some() || op != EpilogueOp::None {
            let mut views = vec![y];
            views.extend(bias.map(|b| self.view(b)));
            let mut pos0 = Expr::k(0);
            match a.epilogue {
                Epilogue::Mul => views.extend(extra.map(|m| self.view(m))),
                Epilogue::Rope(_) if extra.is_some() => pos0 = Expr::POS,
                _ => {}
            }
            views.push(self.view(out));
            let kind = KernelKind::Epilogue {
                n: nout,
                bias: bias.is_some(),
                op,
            };
            self.launch("epilogue", kind, rows, views, vec![pos0]);
        }
        Ok(())
    }

    /// One single-part Gemv `y (+)= x·Wᵀ` over views `[x, W, y]`; `shape` is (rows of W,
    /// k, row stride of W when not k).
    fn gemv(
        &mut self,
        views: [View; 3],
        (rows, k, row_stride): (usize, usize, Option<usize>),
        elem: Elem,
        accumulate: bool,
    ) {
        let kind = KernelKind::Gemv {
            k,
            rows: vec![rows],
            elem,
            accumulate,
            row_stride,
        };
        self.launch("gemv", kind, Expr::k(rows as i64), views.into(), vec![]);
    }

    fn attention(
        &mut self,
        n: NodeId,
        a: &AttnAttrs,
        ops: &[ValueRef],
    ) -> Result<(), KernelizeError> {
        let (q, kc, vc) = (ops[0], ops[1], ops[2]);
        let out = n.out();
        let (heads, kvh, hd) = (a.heads, a.kv_heads, a.head_dim);
        if ops.len() == 4 {
            if self.rows(q) != Expr::k(1) {
                return self.err("attention from a position is only generated for one token");
            }
            let kind = KernelKind::AttentionDecode {
                heads,
                kv_heads: kvh,
                head_dim: hd,
                scale: a.scale,
            };
            let views = vec![self.view(q), self.view(kc), self.view(vc), self.view(out)];
            self.launch(
                "attention_decode",
                kind,
                Expr::k(heads as i64),
                views,
                vec![Expr::POS, Expr::C],
            );
            return Ok(());
        }
        // Prefill from position 0: per head, S = Q·Kᵀ (GEMM), causal softmax, O = S·V.
        let t = self.rows(q);
        let scores = self.new_scratch(Expr::T2);
        let rep = heads / kvh;
        let qw = (heads * hd) as i64;
        for h in 0..heads {
            let kv_off = Expr::C.times(((h / rep) * hd) as i64);
            let qm = matrix(self.view(q), (h * hd) as i64, qw, 1);
            let km = Matrix {
                view: View::at(self.view(kc).buf, kv_off),
                row_stride: Expr::k(1),
                col_stride: Expr::k(hd as i64),
            };
            let sm = Matrix {
                view: scores.clone(),
                row_stride: Expr::T,
                col_stride: Expr::k(1),
            };
            self.steps.push(Step::Gemm {
                m: t,
                n: Expr::T,
                k: Expr::k(hd as i64),
                a: qm,
                b: km,
                c: sm.clone(),
                accumulate: false,
            });
            let kind = KernelKind::Softmax { scale: a.scale };
            self.launch(
                "softmax",
                kind,
                t,
                vec![scores.clone()],
                vec![Expr::k(0), Expr::T],
            );
            let vm = Matrix {
                view: View::at(self.view(vc).buf, kv_off),
                row_stride: Expr::k(hd as i64),
                col_stride: Expr::k(1),
            };
            let om = matrix(self.view(out), (h * hd) as i64, qw, 1);
            self.steps.push(Step::Gemm {
                m: t,
                n: Expr::k(hd as i64),
                k: Expr::T,
                a: sm,
                b: vm,
                c: om,
                accumulate: false,
            });
        }
        Ok(())
    }

    fn mamba2(
        &mut self,
        n: NodeId,
        m: &Mamba2Attrs,
        ops: &[ValueRef],
        step: bool,
    ) -> Result<(), KernelizeError> {
        let s = m.ssd;
        let (di, gn) = (s.heads * s.head_dim, s.groups * s.state);
        let cd = di + 2 * gn;
        let zx = ops[0];
        let width = self.last(zx);
        let rows = self.rows(zx);
        let (y, conv_state, ssm_state) = (n.res(0), n.res(1), n.res(2));
        if step
            && (self.view(ops[7]) != self.view(conv_state)
                || self.view(ops[8]) != self.view(ssm_state))
        {
            return self.err("a Mamba step must update its states in place");
        }
        let xbc = self.new_scratch(rows.times(cd as i64));
        let kind = KernelKind::Mamba2Conv {
            width,
            di,
            cd,
            k: m.conv,
            step,
        };
        let views = vec![
            self.view(zx),
            self.view(ops[1]),
            self.view(ops[2]),
            self.view(conv_state),
            xbc.clone(),
        ];
        self.launch("mamba2_conv", kind, Expr::k(cd as i64), views, vec![rows]);
        let yscan = self.new_scratch(rows.times(di as i64));
        let kind = KernelKind::Mamba2Scan {
            width,
            heads: s.heads,
            head_dim: s.head_dim,
            groups: s.groups,
            state: s.state,
            dt_min: m.dt_min,
            step,
        };
        let views = vec![
            self.view(zx),
            xbc,
            self.view(ops[3]),
            self.view(ops[4]),
            self.view(ops[5]),
            yscan.clone(),
            self.view(ssm_state),
        ];
        self.launch(
            "mamba2_scan",
            kind,
            Expr::k(s.heads as i64),
            views,
            vec![rows],
        );
        let kind = KernelKind::Mamba2GateNorm {
            width,
            di,
            groups: s.groups,
            eps: m.norm_eps,
        };
        let views = vec![yscan, self.view(zx), self.view(ops[6]), self.view(y)];
        self.launch("mamba2_gate_norm", kind, rows, views, vec![]);
        Ok(())
    }

    fn mamba1(
        &mut self,
        n: NodeId,
        m: &Mamba1Attrs,
        ops: &[ValueRef],
        step: bool,
    ) -> Result<(), KernelizeError> {
        let s = m.scan;
        let (nh, p, st, r) = (s.heads, s.head_dim, s.state, m.dt_rank);
        let di = nh * p;
        let w = r + 2 * st;
        let xz = ops[0];
        let rows = self.rows(xz);
        let (y, conv_state, ssm_state) = (n.res(0), n.res(1), n.res(2));
        let k0 = 2 + m.conv_bias as usize;
        if step
            && (self.view(ops[k0 + 5]) != self.view(conv_state)
                || self.view(ops[k0 + 6]) != self.view(ssm_state))
        {
            return self.err("a Mamba step must update its states in place");
        }
        let xs = self.new_scratch(rows.times(di as i64));
        let kind = KernelKind::Mamba1Conv {
            di,
            k: m.conv,
            bias: m.conv_bias,
            step,
        };
        let mut views = vec![self.view(xz), self.view(ops[1])];
        if m.conv_bias {
            views.push(self.view(ops[2]));
        }
        views.extend([self.view(conv_state), xs.clone()]);
        self.launch("mamba1_conv", kind, Expr::k(di as i64), views, vec![rows]);
        let (x_proj, dt_w, dt_b, a_log, d) =
            (ops[k0], ops[k0 + 1], ops[k0 + 2], ops[k0 + 3], ops[k0 + 4]);
        let bc = self.new_scratch(rows.times((nh * w) as i64));
        let dt = self.new_scratch(rows.times(di as i64));
        for h in 0..nh {
            let a = matrix(xs.clone(), (h * p) as i64, di as i64, 1);
            let b = matrix(self.view(x_proj), (h * w * p) as i64, 1, p as i64);
            let c = matrix(bc.clone(), (h * w) as i64, (nh * w) as i64, 1);
            self.gemm(rows, w, p, a, b, c, false);
        }
        for h in 0..nh {
            let a = matrix(bc.clone(), (h * w) as i64, (nh * w) as i64, 1);
            let b = matrix(self.view(dt_w), (h * p * r) as i64, 1, r as i64);
            let c = matrix(dt.clone(), (h * p) as i64, di as i64, 1);
            self.gemm(rows, p, r, a, b, c, false);
        }
        let kind = KernelKind::Mamba1Scan {
            heads: nh,
            head_dim: p,
            state: st,
            dt_rank: r,
            dt_min: m.dt_min,
            step,
        };
        let views = vec![
            xs,
            dt,
            self.view(dt_b),
            self.view(a_log),
            bc,
            self.view(d),
            self.view(xz),
            self.view(ssm_state),
            self.view(y),
        ];
        self.launch("mamba1_scan", kind, Expr::k(di as i64), views, vec![rows]);
        Ok(())
    }
}

/// A strided matrix at `view + offset`.
fn matrix(view: View, offset: i64, row_stride: i64, col_stride: i64) -> Matrix {
    Matrix {
        view: view.shifted(Expr::k(offset)),
        row_stride: Expr::k(row_stride),
        col_stride: Expr::k(col_stride),
    }
}

/// Element count of a value as an expression.
fn numel(g: &Graph, v: ValueRef) -> Expr {
    let mut e = Expr::k(1);
    let mut syms = Vec::new();
    for d in &g.ty(v).dims {
        match d {
            Dim::Const(c) => e = e.times(*c as i64),
            Dim::Sym(s) => syms.push(*s),
        }
    }
    match syms.as_slice() {
        [] => e,
        [Sym::T] => Expr::T.times(e.k),
        [Sym::C] => Expr::C.times(e.k),
        [Sym::T, Sym::T] => Expr::T2.times(e.k),
        // The builder never makes a value mentioning both T and C, or C twice.
        other => {
            debug_assert!(false, "unexpected symbolic shape {other:?}");
            Expr::T.times(e.k)
        }
    }
}
