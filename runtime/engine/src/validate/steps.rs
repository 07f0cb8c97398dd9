//! Every step of a program against what it calls: a launch against its kernel's
//! [`Signature`] (view count, element types, access, grid, integer arguments), a GEMM
//! against the library's operand rules, and every view of either against its buffer —
//! the elements the callee may touch from the view's offset must lie inside the buffer
//! for every call the program serves, which [`Expr::counterexample`] decides exactly.

use std::collections::BTreeMap;

use super::{INPUTS, weight_elem};
use crate::elem::Elem;
use crate::expr::{Domain, Expr};
use crate::kernel::KernelKind;
use crate::manifest::WeightEntry;
use crate::program::{Buffer, Matrix, Program, Step, View};
use crate::signature::{Extent, Factor, GridRule, Signature};

/// The manifest-wide tables a step refers to.
pub(super) struct Tables<'a> {
    pub kernels: &'a BTreeMap<&'a str, (&'a KernelKind, Signature)>,
    pub weights: &'a [WeightEntry],
    pub vocab: usize,
    /// The model's state layout: how each state output is stored.
    pub states: &'a [crate::model::StateSpec],
}

/// Checks every step of `p`; the error names the program, the step and what it calls.
pub(super) fn check(p: &Program, t: &Tables<'_>) -> Result<(), String> {
    let cx = Cx {
        p,
        t,
        domain: p.name.domain(),
    };
    cx.sizes()
        .map_err(|e| format!("program `{}`: {e}", p.name))?;
    for (i, step) in p.steps.iter().enumerate() {
        let callee = match step {
            Step::Launch { kernel, .. } => match t.kernels.get(kernel.as_str()) {
                Some((kind, _)) => format!(" (kernel `{kernel}`, {})", kind.name()),
                None => format!(" (kernel `{kernel}`)"),
            },
            Step::Gemm { .. } => " (GEMM)".into(),
        };
        cx.step(step)
            .map_err(|e| format!("program `{}`, step {i}{callee}: {e}", p.name))?;
    }
    Ok(())
}

struct Cx<'a> {
    p: &'a Program,
    t: &'a Tables<'a>,
    domain: Domain,
}

impl Cx<'_> {
    /// Slots, workspaces and grids are sizes: never negative for any call.
    fn sizes(&self) -> Result<(), String> {
        for (i, cands) in self.p.slots.iter().enumerate() {
            for c in cands {
                self.non_negative(c, &format!("the size of slot {i}"))?;
            }
        }
        for (i, s) in self.p.scratch.iter().enumerate() {
            self.non_negative(s, &format!("the size of workspace {i}"))?;
        }
        for (name, shape) in &self.p.outputs {
            for d in shape {
                self.non_negative(d, &format!("a dimension of output `{name}`"))?;
            }
        }
        Ok(())
    }

    fn non_negative(&self, e: &Expr, what: &str) -> Result<(), String> {
        match e.counterexample(self.domain) {
            None => Ok(()),
            Some(at) => Err(format!("{what}, {e}, is negative at {at}")),
        }
    }

    fn step(&self, step: &Step) -> Result<(), String> {
        match step {
            Step::Launch {
                kernel,
                grid,
                views,
                ints,
            } => {
                let (_, sig) = self.t.kernels.get(kernel.as_str()).ok_or_else(|| {
                    format!("launches `{kernel}`, which is not in the kernel table")
                })?;
                self.launch(sig, grid, views, ints)
            }
            Step::Gemm {
                m, n, k, a, b, c, ..
            } => self.gemm([m, n, k], [a, b, c]),
        }
    }

    fn launch(
        &self,
        sig: &Signature,
        grid: &Expr,
        views: &[View],
        ints: &[Expr],
    ) -> Result<(), String> {
        if views.len() != sig.views.len() {
            let roles: Vec<String> = sig.views.iter().map(|v| v.role.to_string()).collect();
            return Err(format!(
                "the kernel takes {} views ({}), the launch passes {}",
                sig.views.len(),
                roles.join(", "),
                views.len()
            ));
        }
        if ints.len() != sig.ints.len() {
            let names: Vec<String> = sig.ints.iter().map(ToString::to_string).collect();
            return Err(format!(
                "the kernel takes {} integer arguments ({}), the launch passes {}",
                sig.ints.len(),
                names.join(", "),
                ints.len()
            ));
        }
        self.non_negative(grid, "the grid")?;
        // Every integer argument is a position, a capacity, a row width or a row count: a
        // negative one would send the kernel before its buffer, which no extent can see.
        for (j, (int, what)) in ints.iter().zip(&sig.ints).enumerate() {
            self.non_negative(int, &format!("integer argument {j} ({what})"))?;
        }
        if let GridRule::Exactly(n) = sig.grid
            && grid.as_const() != i64::try_from(n).ok()
        {
            return Err(format!(
                "the grid is {grid}, but the kernel covers exactly {n}"
            ));
        }
        let eval = |e: &Extent| self.extent(e, grid, ints);
        for (j, (v, want)) in views.iter().zip(&sig.views).enumerate() {
            let what = format!("view {j} ({})", want.role);
            let found = self
                .elem(&v.buf)
                .ok_or_else(|| self.missing(&what, &v.buf))?;
            if found != want.elem {
                return Err(format!(
                    "{what} must be {}, but {} holds {found}",
                    want.elem,
                    self.describe(&v.buf)
                ));
            }
            if want.access.writes() && matches!(v.buf, Buffer::Weight(_) | Buffer::Input(_)) {
                return Err(format!(
                    "{what} is written by the kernel, but {} is read-only",
                    self.describe(&v.buf)
                ));
            }
            let extent = eval(&want.extent).map_err(|e| format!("{what}: {e}"))?;
            self.fits(&what, v, extent)?;
        }
        for (lhs, rhs) in &sig.requires {
            let (l, r) = (eval(lhs)?, eval(rhs)?);
            let ok = r.checked_minus(l).map(|d| d.counterexample(self.domain));
            match ok {
                Some(None) => {}
                Some(Some(at)) => {
                    return Err(format!(
                        "the kernel needs {l} ≤ {r}, which fails at {at} (integer arguments \
                         [{}])",
                        ints.iter()
                            .map(Expr::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                None => return Err(format!("the kernel needs {l} ≤ {r}, which overflows")),
            }
        }
        Ok(())
    }

    /// `C (+)= A·B`: A `[m, k]` and C `[m, n]` f32, B `[k, n]` f32 or a bf16 weight; C is
    /// an activation; every operand inside its buffer.
    fn gemm(&self, [m, n, k]: [&Expr; 3], [a, b, c]: [&Matrix; 3]) -> Result<(), String> {
        for (what, e) in [("m", m), ("n", n), ("k", k)] {
            let less = e.checked_minus(Expr::k(1)).unwrap_or(Expr::k(-1));
            self.non_negative(&less, &format!("{what} - 1"))?;
        }
        for (what, mx, rows, cols) in [("A", a, m, k), ("B", b, k, n), ("C", c, m, n)] {
            let buf = &mx.view.buf;
            let elem = self.elem(buf).ok_or_else(|| self.missing(what, buf))?;
            let allowed = match (what, buf) {
                (_, Buffer::Input(_)) => false,
                ("C", Buffer::Weight(_)) => false,
                ("B", Buffer::Weight(_)) => elem.is_storable(),
                _ => elem == Elem::F32,
            };
            if !allowed {
                return Err(format!(
                    "operand {what} cannot be {} ({elem}): A is f32, B f32 or a stored \
                     weight, C an f32 activation",
                    self.describe(buf)
                ));
            }
            for (s, stride) in [("row", &mx.row_stride), ("column", &mx.col_stride)] {
                self.non_negative(stride, &format!("operand {what}'s {s} stride"))?;
            }
            let extent = matrix_extent(mx, rows, cols)
                .ok_or_else(|| format!("operand {what}: its extent cannot be bounded"))?;
            self.fits(&format!("operand {what}"), &mx.view, extent)?;
        }
        Ok(())
    }

    /// The extent for this launch, or why it cannot be bounded.
    fn extent(&self, e: &Extent, grid: &Expr, ints: &[Expr]) -> Result<Expr, String> {
        let vocab = Expr::k(i64::try_from(self.t.vocab).unwrap_or(i64::MAX));
        let factor = |f: &Factor| match f {
            Factor::Grid => Some(*grid),
            Factor::Int(j) => ints.get(*j).copied(),
            Factor::Vocab => Some(vocab),
        };
        let mut total = Expr::k(e.konst);
        for (coef, factors) in &e.terms {
            let term = factors
                .iter()
                .try_fold(Expr::k(*coef), |acc, f| acc.checked_mul(factor(f)?));
            total = term
                .and_then(|t| total.checked_plus(t))
                .ok_or("its extent is not a polynomial the validator can bound (or overflows)")?;
        }
        Ok(total)
    }

    /// Whether `extent` elements from the view's offset lie inside its buffer for every
    /// call.
    fn fits(&self, what: &str, v: &View, extent: Expr) -> Result<(), String> {
        self.non_negative(&v.offset, &format!("{what}'s offset"))?;
        let need = v
            .offset
            .checked_plus(extent)
            .ok_or_else(|| format!("{what}: offset + extent overflows"))?;
        let sizes = self.size(&v.buf)?;
        let mut witness = None;
        for size in &sizes {
            match size
                .checked_minus(need)
                .map(|d| d.counterexample(self.domain))
            {
                Some(None) => return Ok(()),
                Some(Some(at)) => witness = witness.or(Some((size, at))),
                None => {}
            }
        }
        let (size, at) = match witness {
            Some((s, at)) => (s.to_string(), format!(" (at {at})")),
            None => (String::from("an overflowing size"), String::new()),
        };
        Err(format!(
            "{what} reaches {need} elements into {}, which holds {size}: outside its \
             buffer{at}",
            self.describe(&v.buf)
        ))
    }

    /// Candidate sizes of a buffer in elements (a slot is as large as its largest value).
    fn size(&self, buf: &Buffer) -> Result<Vec<Expr>, String> {
        let missing = || self.missing("a view", buf);
        Ok(match buf {
            Buffer::Weight(i) => {
                let w = self.t.weights.get(*i as usize).ok_or_else(missing)?;
                let n = w.numel().and_then(|n| i64::try_from(n).ok());
                vec![Expr::k(
                    n.ok_or_else(|| format!("`{}` is too large", w.name))?,
                )]
            }
            Buffer::Input(name) if name == "pos" => vec![Expr::k(1)],
            Buffer::Input(_) => vec![Expr::T],
            Buffer::Output(name) => {
                let (_, shape) = self
                    .p
                    .outputs
                    .iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(missing)?;
                let numel = shape
                    .iter()
                    .try_fold(Expr::k(1), |acc, d| acc.checked_mul(*d))
                    .ok_or_else(|| {
                        format!("output `{name}` has a size the validator cannot bound")
                    })?;
                vec![numel]
            }
            Buffer::Slot(i) => self.p.slots.get(*i as usize).ok_or_else(missing)?.clone(),
            Buffer::Scratch(i) => vec![*self.p.scratch.get(*i as usize).ok_or_else(missing)?],
        })
    }

    fn elem(&self, buf: &Buffer) -> Option<Elem> {
        match buf {
            Buffer::Weight(i) => weight_elem(self.t.weights, *i),
            Buffer::Input(name) => INPUTS.contains(&name.as_str()).then_some(Elem::I64),
            Buffer::Output(name) => {
                let stored = self
                    .t
                    .states
                    .iter()
                    .find(|s| s.role.name() == *name)
                    .map_or(Elem::F32, |s| s.elem);
                self.p
                    .outputs
                    .iter()
                    .any(|(n, _)| n == name)
                    .then_some(stored)
            }
            Buffer::Slot(i) => ((*i as usize) < self.p.slots.len()).then_some(Elem::F32),
            Buffer::Scratch(i) => ((*i as usize) < self.p.scratch.len()).then_some(Elem::F32),
        }
    }

    fn missing(&self, what: &str, buf: &Buffer) -> String {
        format!(
            "{what} refers to {}, which does not exist",
            self.describe(buf)
        )
    }

    fn describe(&self, buf: &Buffer) -> String {
        match buf {
            Buffer::Weight(i) => match self.t.weights.get(*i as usize) {
                Some(w) => format!("weight {i} `{}`", w.name),
                None => format!("weight {i}"),
            },
            Buffer::Input(name) => format!("input `{name}`"),
            Buffer::Output(name) => format!("output `{name}`"),
            Buffer::Slot(i) => format!("slot {i}"),
            Buffer::Scratch(i) => format!("workspace {i}"),
        }
    }
}

/// Elements from a strided matrix's first element to its last: `(rows - 1)·row_stride +
/// (cols - 1)·col_stride + 1`.
fn matrix_extent(mx: &Matrix, rows: &Expr, cols: &Expr) -> Option<Expr> {
    let last = |n: &Expr, stride: &Expr| n.checked_minus(Expr::k(1))?.checked_mul(*stride);
    last(rows, &mx.row_stride)?
        .checked_plus(last(cols, &mx.col_stride)?)?
        .checked_plus(Expr::k(1))
}
