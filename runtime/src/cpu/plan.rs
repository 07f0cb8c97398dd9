//! Programs with their names resolved: kernels to indices into the loaded function table,
//! buffers to compact references, so executing a step does no string lookups.

use std::collections::HashMap;

use zambac_engine::{Buffer, Expr, Manifest, Matrix, Program, ProgramName, StateRole, Step, View};

use crate::error::RuntimeError;

/// The engine's programs resolved against its kernel table: `prefill`, `prefill_last`
/// (absent in engines that have none) and `decode`; a missing required program or an
/// unresolvable reference is a load error naming `manifest_path`.
pub fn programs(
    m: &Manifest,
    manifest_path: &str,
) -> Result<(Plan, Option<Plan>, Plan), RuntimeError> {
    let kernels: HashMap<&str, usize> = m
        .kernels
        .iter()
        .enumerate()
        .map(|(i, k)| (k.symbol.as_str(), i))
        .collect();
    let plan = |name: ProgramName| -> Result<Option<Plan>, RuntimeError> {
        m.program(name)
            .map(|p| Plan::new(p, &kernels))
            .transpose()
            .map_err(|e| RuntimeError::load(manifest_path, None, format!("`{name}`: {e}")))
    };
    let required = |name: ProgramName| {
        plan(name)?.ok_or_else(|| {
            RuntimeError::load(manifest_path, None, format!("has no `{name}` program"))
        })
    };
    Ok((
        required(ProgramName::Prefill)?,
        plan(ProgramName::PrefillLast)?,
        required(ProgramName::Decode)?,
    ))
}

/// The element offset of view `v` at `d`, checked to lie within a buffer of `len`
/// elements (an offset equal to `len` is the empty view at the end).
pub fn checked_offset(v: &PView, len: usize, d: crate::cpu::Dims) -> Result<usize, String> {
    let off = d.size(&v.offset)?;
    if off > len {
        return Err(format!(
            "offset {off} is past the end of {:?} ({len} elements)",
            v.buf
        ));
    }
    Ok(off)
}

/// Where a view points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    Weight(usize),
    /// `tokens` (prefill) or `token` (decode).
    Tokens,
    Pos,
    Output(usize),
    Slot(usize),
    Scratch(usize),
}

#[derive(Clone, Copy, Debug)]
pub struct PView {
    pub buf: Buf,
    pub offset: Expr,
}

#[derive(Clone, Copy, Debug)]
pub struct PMatrix {
    pub view: PView,
    pub row_stride: Expr,
    pub col_stride: Expr,
}

#[derive(Clone, Debug)]
pub enum PStep {
    Launch {
        kernel: usize,
        grid: Expr,
        views: Vec<PView>,
        ints: Vec<Expr>,
    },
    /// Boxed: a product's operands are several times larger than a launch.
    Gemm(Box<PGemm>),
}

#[derive(Clone, Debug)]
pub struct PGemm {
    pub m: Expr,
    pub n: Expr,
    pub k: Expr,
    pub a: PMatrix,
    pub b: PMatrix,
    pub c: PMatrix,
    pub accumulate: bool,
}

/// What an output of a program is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Logits,
    State(StateRole),
}

/// A program ready to execute.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: ProgramName,
    pub steps: Vec<PStep>,
    pub slots: Vec<Vec<Expr>>,
    pub scratch: Vec<Expr>,
    /// What each output is and its shape, indexed by `Buf::Output`.
    pub outputs: Vec<(Output, Vec<Expr>)>,
}

impl Plan {
    /// Resolves `p` against the kernel table (symbol → index). The engine loader has
    /// validated every reference; an unresolvable one is still reported, not assumed.
    pub fn new(p: &Program, kernels: &HashMap<&str, usize>) -> Result<Plan, String> {
        let outputs: HashMap<&str, usize> = p
            .outputs
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let view = |v: &View| -> Result<PView, String> {
            let buf = match &v.buf {
                Buffer::Weight(i) => Buf::Weight(*i as usize),
                Buffer::Input(n) if n == "tokens" || n == "token" => Buf::Tokens,
                Buffer::Input(n) if n == "pos" => Buf::Pos,
                Buffer::Output(n) => Buf::Output(
                    *outputs
                        .get(n.as_str())
                        .ok_or_else(|| format!("no output `{n}`"))?,
                ),
                Buffer::Slot(i) => Buf::Slot(*i as usize),
                Buffer::Scratch(i) => Buf::Scratch(*i as usize),
                other => return Err(format!("unknown buffer {other:?}")),
            };
            Ok(PView {
                buf,
                offset: v.offset,
            })
        };
        let matrix = |m: &Matrix| -> Result<PMatrix, String> {
            Ok(PMatrix {
                view: view(&m.view)?,
                row_stride: m.row_stride,
                col_stride: m.col_stride,
            })
        };
        let mut steps = Vec::with_capacity(p.steps.len());
        for (i, s) in p.steps.iter().enumerate() {
            let step = match s {
                Step::Launch {
                    kernel,
                    grid,
                    views,
                    ints,
                } => PStep::Launch {
                    kernel: *kernels
                        .get(kernel.as_str())
                        .ok_or_else(|| format!("step {i}: unknown kernel `{kernel}`"))?,
                    grid: *grid,
                    views: views
                        .iter()
                        .map(view)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("step {i}: {e}"))?,
                    ints: ints.clone(),
                },
                Step::Gemm {
                    m,
                    n,
                    k,
                    a,
                    b,
                    c,
                    accumulate,
                } => PStep::Gemm(Box::new(PGemm {
                    m: *m,
                    n: *n,
                    k: *k,
                    a: matrix(a).map_err(|e| format!("step {i}: {e}"))?,
                    b: matrix(b).map_err(|e| format!("step {i}: {e}"))?,
                    c: matrix(c).map_err(|e| format!("step {i}: {e}"))?,
                    accumulate: *accumulate,
                })),
            };
            steps.push(step);
        }
        let outputs = p
            .outputs
            .iter()
            .map(|(name, shape)| {
                let what = if name == "logits" {
                    Output::Logits
                } else {
                    Output::State(name.parse()?)
                };
                Ok((what, shape.clone()))
            })
            .collect::<Result<_, String>>()?;
        Ok(Plan {
            name: p.name,
            steps,
            slots: p.slots.clone(),
            scratch: p.scratch.clone(),
            outputs,
        })
    }
}
