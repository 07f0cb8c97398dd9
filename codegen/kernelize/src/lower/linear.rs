//! Linears: a GEMM for several rows, the generated Gemv for one; LoRA adapters, hoisted
//! terms, windows and epilogues around the product.

use zambac_engine::{EpilogueOp, Expr, KernelKind, View};
use zambac_ir::op::{Epilogue, LinearAttrs, RopeAttrs};
use zambac_ir::operands::LinearArgs;
use zambac_ir::{Elem, NodeId, ValueRef};

use super::GraphLowering;
use crate::{KernelizeError, act_kind, matrix};

impl GraphLowering<'_> {
    pub(super) fn linear(
        &mut self,
        n: NodeId,
        a: &LinearAttrs,
        ops: &[ValueRef],
    ) -> Result<(), KernelizeError> {
        let out = n.out();
        let Some(args) = a.operands().pick(ops) else {
            return self.err(format!(
                "a linear with {} operands does not match its attributes",
                ops.len()
            ));
        };
        let LinearArgs {
            x,
            w,
            bias,
            lora,
            hoisted,
            epilogue: epilogue_operand,
        } = args.copied();
        let (nout, kw) = (self.dim(w, 0), self.dim(w, 1));
        // The input's full width (the adapter reads all of it), the product's window, where
        // the window starts in the weight and the weight's row stride there: a window of a
        // column-blocked weight is its own contiguous `[nout, len]` block.
        let kx = self.last(x);
        let (k, w_off, x_off, ld) = match a.window {
            None => (kw, 0, 0, kw),
            Some(win) => {
                let x_off = if kx == kw { win.start } else { 0 };
                if self.column_blocked(w) {
                    (win.len, nout * win.start, x_off, win.len)
                } else {
                    (win.len, win.start, x_off, kw)
                }
            }
        };
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
            let (elem, ld) = (self.elem(w), (ld != k).then_some(ld));
            self.gemv(views, (nout, k, ld), elem, hoisted.is_some());
            if let (Some((aw, _)), Some(down), Some(r)) = (lora, down.clone(), r) {
                let views = [x_view.clone(), self.view(aw), down];
                self.gemv(views, (r, kx, None), self.elem(aw), false);
            }
        } else {
            let xa = matrix(x_view.clone(), x_off as i64, kx as i64, 1);
            let wt = matrix(self.view(w), w_off as i64, 1, ld as i64);
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
        let op = match &a.epilogue {
            Epilogue::None => EpilogueOp::None,
            Epilogue::Act(f) => EpilogueOp::Act(act_kind(*f)),
            Epilogue::ActGate(f) => EpilogueOp::Gate(act_kind(*f)),
            Epilogue::Mul => EpilogueOp::Mul,
            Epilogue::Rope(r) => rope_op(r),
        };
        if bias.is_some() || op != EpilogueOp::None {
            let mut views = vec![y];
            views.extend(bias.map(|b| self.view(b)));
            let ints = rope_ints(&op, rows);
            if let Epilogue::Mul = a.epilogue {
                views.extend(epilogue_operand.map(|m| self.view(m)));
            }
            views.push(self.view(out));
            let kind = KernelKind::Epilogue {
                n: nout,
                bias: bias.is_some(),
                op,
            };
            self.launch("epilogue", kind, rows, views, ints);
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
}

/// An epilogue's integer arguments: the call's position (RoPE angles start there: 0 for a
/// new prompt, further on for a continued prefill or a decode step), and the rows when the
/// RoPE's frequencies depend on the length the call reaches.
pub(super) fn rope_ints(op: &EpilogueOp, rows: Expr) -> Vec<Expr> {
    if op.rope_depends_on_length() {
        vec![Expr::POS, rows]
    } else {
        vec![Expr::POS]
    }
}

/// The kernel form of a RoPE: its frequencies' definition, scaling included.
pub(super) fn rope_op(r: &RopeAttrs) -> EpilogueOp {
    EpilogueOp::Rope {
        heads: r.heads,
        head_dim: r.head_dim,
        theta: r.theta,
        scaling: r.scaling.clone(),
    }
}
