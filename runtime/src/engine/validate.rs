//! Consistency checks of a manifest on its own: the weight table's layout, companion file
//! names, and every reference a program makes (kernels, weights, slots, workspaces,
//! inputs, outputs). The writer runs them so it never produces an engine the loader would
//! reject; the loader runs them so a backend can index without re-checking.

use std::collections::BTreeSet;

use zambac_ir::program::{Buffer, Matrix, Program, Step, View};

use super::manifest::{FileRef, Manifest, WeightEntry};
use super::{Dtype, WEIGHT_ALIGN};

/// The graph inputs a program may read.
pub const INPUTS: [&str; 3] = ["tokens", "token", "pos"];

/// Checks `m`; the error says what is wrong (the caller names the file).
pub fn manifest(m: &Manifest) -> Result<(), String> {
    weight_table(&m.weights)?;
    file_name(&m.host)?;
    if let Some(p) = &m.ptx {
        file_name(p)?;
    }
    let mut symbols = BTreeSet::new();
    for k in &m.kernels {
        if k.symbol.is_empty()
            || !k
                .symbol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "kernel symbol `{}` is not a C identifier",
                k.symbol
            ));
        }
        if !symbols.insert(k.symbol.as_str()) {
            return Err(format!("kernel `{}` is listed twice", k.symbol));
        }
    }
    let mut names = BTreeSet::new();
    for p in &m.programs {
        if !names.insert(p.name.as_str()) {
            return Err(format!("program `{}` is listed twice", p.name));
        }
        program(p, &symbols, &m.weights).map_err(|e| format!("program `{}`: {e}", p.name))?;
    }
    Ok(())
}

/// Offsets aligned, lengths matching shapes, tensors in order and not overlapping.
fn weight_table(ws: &[WeightEntry]) -> Result<(), String> {
    let mut end = 0u64;
    let mut names = BTreeSet::new();
    for w in ws {
        let tensor = &w.name;
        if !names.insert(tensor.as_str()) {
            return Err(format!(
                "tensor `{tensor}` is listed twice in the weight table"
            ));
        }
        let bytes = w
            .numel()
            .and_then(|n| n.checked_mul(w.dtype.size()))
            .ok_or_else(|| format!("tensor `{tensor}`: shape {:?} is too large", w.shape))?;
        if bytes as u64 != w.bytes {
            return Err(format!(
                "tensor `{tensor}`: {} bytes listed, but shape {:?} of {} needs {bytes}",
                w.bytes,
                w.shape,
                w.dtype.name()
            ));
        }
        if w.offset % WEIGHT_ALIGN != 0 {
            return Err(format!(
                "tensor `{tensor}`: offset {} is not a multiple of {WEIGHT_ALIGN}",
                w.offset
            ));
        }
        if w.offset < end {
            return Err(format!(
                "tensor `{tensor}`: offset {} overlaps the previous tensor (which ends at {end})",
                w.offset
            ));
        }
        end = w
            .offset
            .checked_add(w.bytes)
            .ok_or_else(|| format!("tensor `{tensor}`: offset + length overflows"))?;
    }
    Ok(())
}

/// Size `weights.bin` must have: the end of the last tensor.
pub fn weights_len(ws: &[WeightEntry]) -> u64 {
    ws.last().map_or(0, |w| w.offset + w.bytes)
}

/// Companion files must stay inside the engine directory.
fn file_name(f: &FileRef) -> Result<(), String> {
    let ok = !f.file.is_empty()
        && f.file != "."
        && f.file != ".."
        && !f.file.contains(['/', '\\', '\0']);
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is not a plain file name", f.file))
    }
}

fn program(p: &Program, kernels: &BTreeSet<&str>, ws: &[WeightEntry]) -> Result<(), String> {
    let mut outputs = BTreeSet::new();
    for (name, _) in &p.outputs {
        if !outputs.insert(name.as_str()) {
            return Err(format!("output `{name}` is listed twice"));
        }
    }
    if !outputs.contains("logits") {
        return Err("it has no `logits` output".into());
    }
    let cx = Refs { p, outputs, ws };
    for (i, step) in p.steps.iter().enumerate() {
        cx.step(step, kernels)
            .map_err(|e| format!("step {i}: {e}"))?;
    }
    Ok(())
}

struct Refs<'a> {
    p: &'a Program,
    outputs: BTreeSet<&'a str>,
    ws: &'a [WeightEntry],
}

impl Refs<'_> {
    fn step(&self, step: &Step, kernels: &BTreeSet<&str>) -> Result<(), String> {
        match step {
            Step::Launch { kernel, views, .. } => {
                if !kernels.contains(kernel.as_str()) {
                    return Err(format!(
                        "launches `{kernel}`, which is not in the kernel table"
                    ));
                }
                views.iter().try_for_each(|v| self.view(v))
            }
            Step::Gemm { a, b, c, .. } => {
                for (what, mx) in [("A", a), ("B", b), ("C", c)] {
                    self.view(&mx.view)?;
                    self.gemm_operand(what, mx)?;
                }
                Ok(())
            }
        }
    }

    fn view(&self, v: &View) -> Result<(), String> {
        let ok = match &v.buf {
            Buffer::Weight(i) => (*i as usize) < self.ws.len(),
            Buffer::Input(name) => INPUTS.contains(&name.as_str()),
            Buffer::Output(name) => self.outputs.contains(name.as_str()),
            Buffer::Slot(i) => (*i as usize) < self.p.slots.len(),
            Buffer::Scratch(i) => (*i as usize) < self.p.scratch.len(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("refers to {:?}, which does not exist", v.buf))
        }
    }

    /// The GEMM reads f32 activations and f32 or bf16 weights and writes f32 activations.
    fn gemm_operand(&self, what: &str, mx: &Matrix) -> Result<(), String> {
        match &mx.view.buf {
            Buffer::Input(name) => Err(format!("GEMM operand {what} is the i64 input `{name}`")),
            Buffer::Weight(_) if what == "C" => Err("GEMM writes to a weight".into()),
            Buffer::Weight(i) if what == "A" && self.ws[*i as usize].dtype == Dtype::Bf16 => {
                Err("GEMM operand A is a bf16 weight (only B may be)".into())
            }
            _ => Ok(()),
        }
    }
}
