//! The one validator of the contract. [`manifest`] checks a manifest on its own — the
//! weight table's layout, companion file names, every kernel's sizes, the model's state
//! layout against every program's outputs, and every step of every program against the
//! signature of what it calls (see [`steps`]). The writer runs it so it never commits an
//! engine a loader would refuse; the loader runs it so no backend executes a launch that
//! could read or write outside its buffers.

mod steps;

use std::collections::{BTreeMap, BTreeSet};

use crate::elem::Elem;
use crate::expr::Expr;
use crate::gpu::{GpuCode, GpuParam, MAX_BLOCK_SIZE};
use crate::kernel::KernelKind;
use crate::manifest::{FileRef, Manifest, WeightEntry};
use crate::model::{ModelInfo, StateRole};
use crate::program::{Program, ProgramName};
use crate::signature::Signature;
use crate::sizes::check_symbol;
use crate::{TOKENIZER_FILE, WEIGHT_ALIGN};

/// The graph inputs a program may read: token ids (`tokens` in prefill, `token` in
/// decode) and the position of the first token, all i64.
pub const INPUTS: [&str; 3] = ["tokens", "token", "pos"];

/// Checks `m`; the error says what is wrong and where (the caller names the file).
pub fn manifest(m: &Manifest) -> Result<(), String> {
    weight_table(&m.weights)?;
    file_name(&m.host)?;
    for f in [m.gpu.as_ref().map(|g| &g.ptx), m.model.tokenizer.as_ref()]
        .into_iter()
        .flatten()
    {
        file_name(f)?;
    }
    if m.model
        .tokenizer
        .as_ref()
        .is_some_and(|t| t.file != TOKENIZER_FILE)
    {
        return Err(format!("the tokenizer must be `{TOKENIZER_FILE}`"));
    }
    let kernels = kernel_table(m)?;
    if let Some(gpu) = &m.gpu {
        gpu_table(gpu, m).map_err(|e| format!("gpu: {e}"))?;
    }
    let states = state_layout(&m.model)?;
    let mut seen = BTreeSet::new();
    for p in &m.programs {
        if !seen.insert(p.name) {
            return Err(format!("program `{}` is listed twice", p.name));
        }
        outputs(p, &m.model, &states).map_err(|e| format!("program `{}`: {e}", p.name))?;
        steps::check(
            p,
            &steps::Tables {
                kernels: &kernels,
                weights: &m.weights,
                vocab: m.model.vocab_size,
                states: &m.model.state,
            },
        )?;
    }
    for required in [ProgramName::Prefill, ProgramName::Decode] {
        if !seen.contains(&required) {
            return Err(format!("there is no `{required}` program"));
        }
    }
    Ok(())
}

/// One launch entry per kernel, in the kernels' order; every parameter names a view or
/// integer argument the kernel has, none twice, with both ends of the grid range; block
/// sizes a GPU can run.
fn gpu_table(gpu: &GpuCode, m: &Manifest) -> Result<(), String> {
    if gpu.kernels.len() != m.kernels.len() {
        return Err(format!(
            "{} launch entries for {} kernels",
            gpu.kernels.len(),
            m.kernels.len()
        ));
    }
    for (e, k) in gpu.kernels.iter().zip(&m.kernels) {
        if e.symbol != k.symbol {
            return Err(format!(
                "the launch entry `{}` stands where kernel `{}` is listed",
                e.symbol, k.symbol
            ));
        }
        let sig = k
            .kind
            .signature()
            .map_err(|e| format!("kernel `{}`: {e}", k.symbol))?;
        if e.lanes == 0 || e.lanes > MAX_BLOCK_SIZE * 64 {
            return Err(format!(
                "kernel `{}`: {} threads per grid index",
                k.symbol, e.lanes
            ));
        }
        if e.block_size == 0 || e.block_size > MAX_BLOCK_SIZE {
            return Err(format!(
                "kernel `{}`: block size {} is not in 1..={MAX_BLOCK_SIZE}",
                k.symbol, e.block_size
            ));
        }
        check_params(&k.symbol, &e.params, &sig, false)?;
        if let Some(b) = &e.batched {
            if !matches!(k.kind, KernelKind::Gemv { .. }) {
                return Err(format!(
                    "kernel `{}` ({}) has a batched entry, which only a Gemv has",
                    k.symbol,
                    k.kind.name()
                ));
            }
            check_params(&k.symbol, &b.params, &sig, true)?;
        }
    }
    Ok(())
}

/// Each parameter of an entry one of the kernel's arguments (a batched entry's also its
/// batch), none twice, the grid range and (batched) the batch's three all there.
fn check_params(
    symbol: &str,
    params: &[GpuParam],
    sig: &Signature,
    batched: bool,
) -> Result<(), String> {
    let what = if batched { "batched entry" } else { "entry" };
    let mut seen = BTreeSet::new();
    for p in params {
        let ok = match *p {
            GpuParam::View(j) => j < sig.views.len(),
            GpuParam::Int(i) => i < sig.ints.len(),
            GpuParam::Begin | GpuParam::End => true,
            GpuParam::Sequences | GpuParam::InputStride | GpuParam::OutputStride => batched,
        };
        if !ok || !seen.insert(*p) {
            return Err(format!(
                "kernel `{symbol}`: {what} parameter {p:?} is {} (it has {} views and {} integers)",
                if ok {
                    "listed twice"
                } else {
                    "not one of its arguments"
                },
                sig.views.len(),
                sig.ints.len()
            ));
        }
    }
    if !(seen.contains(&GpuParam::Begin) && seen.contains(&GpuParam::End)) {
        return Err(format!(
            "kernel `{symbol}`: the {what}'s parameters lack the grid range (begin and end)"
        ));
    }
    let batch = [
        GpuParam::Sequences,
        GpuParam::InputStride,
        GpuParam::OutputStride,
    ];
    if batched && !batch.iter().all(|p| seen.contains(p)) {
        return Err(format!(
            "kernel `{symbol}`: the {what}'s parameters lack the batch (sequences, input and \
             output strides)"
        ));
    }
    Ok(())
}

/// Symbols unique and exportable, each kind's sizes sound; returns symbol → (kind,
/// signature).
fn kernel_table(m: &Manifest) -> Result<BTreeMap<&str, (&KernelKind, Signature)>, String> {
    let mut table = BTreeMap::new();
    for k in &m.kernels {
        check_symbol(&k.symbol)?;
        let sig = k
            .kind
            .signature()
            .map_err(|e| format!("kernel `{}` ({}): {e}", k.symbol, k.kind.name()))?;
        if table.insert(k.symbol.as_str(), (&k.kind, sig)).is_some() {
            return Err(format!("kernel `{}` is listed twice", k.symbol));
        }
    }
    Ok(table)
}

/// State names unique; KV caches `[heads, C, head_dim]` with `C` nowhere else; recurrent
/// states of constant shape. Returns name → shape.
fn state_layout(model: &ModelInfo) -> Result<BTreeMap<String, &[Expr]>, String> {
    if model.vocab_size == 0 {
        return Err("the model's vocabulary is empty".into());
    }
    let vocab = model.vocab_size;
    if let Some(bad) = (model.generation.eos_token_ids.iter())
        .find(|&&t| usize::try_from(t).map_or(true, |t| t >= vocab))
    {
        return Err(format!(
            "end-of-sequence token {bad} is outside the vocabulary (0..{vocab})"
        ));
    }
    let mut states = BTreeMap::new();
    for s in &model.state {
        let name = s.role.name();
        let cache_dims = s.role.is_cache().then_some(1);
        for (i, d) in s.shape.iter().enumerate() {
            let ok = if Some(i) == cache_dims {
                *d == Expr::C
            } else {
                d.as_const().is_some_and(|n| n > 0)
            };
            if !ok {
                let want = if Some(i) == cache_dims {
                    "the capacity C"
                } else {
                    "a positive constant"
                };
                return Err(format!("state `{name}`: dimension {i} is {d}, not {want}"));
            }
        }
        if cache_dims.is_some() && s.shape.len() != 3 {
            return Err(format!(
                "state `{name}`: a KV cache is [kv_heads, C, head_dim], not {} dimensions",
                s.shape.len()
            ));
        }
        if states.insert(name.clone(), s.shape.as_slice()).is_some() {
            return Err(format!("state `{name}` is listed twice"));
        }
    }
    Ok(states)
}

/// A program's outputs are the logits `[rows, vocab]` and exactly the model's states, with
/// the layout's shapes.
fn outputs(
    p: &Program,
    model: &ModelInfo,
    states: &BTreeMap<String, &[Expr]>,
) -> Result<(), String> {
    let mut listed = BTreeSet::new();
    for (name, shape) in &p.outputs {
        if !listed.insert(name.as_str()) {
            return Err(format!("output `{name}` is listed twice"));
        }
        if name == "logits" {
            let rows = match p.name {
                ProgramName::Prefill => Expr::T,
                ProgramName::PrefillLast | ProgramName::Decode => Expr::k(1),
            };
            let vocab = i64::try_from(model.vocab_size).unwrap_or(i64::MAX);
            if shape.as_slice() != [rows, Expr::k(vocab)] {
                return Err(format!(
                    "logits have shape [{}], not [{rows}, {vocab}]",
                    join(shape)
                ));
            }
            continue;
        }
        let role: StateRole = name
            .parse()
            .map_err(|e| format!("output `{name}` is neither the logits nor a state: {e}"))?;
        match states.get(&role.name()) {
            Some(want) if *want == shape.as_slice() => {}
            Some(want) => {
                return Err(format!(
                    "state `{name}` has shape [{}], but the model's state layout says [{}]",
                    join(shape),
                    join(want)
                ));
            }
            None => {
                return Err(format!(
                    "output `{name}` is not in the model's state layout"
                ));
            }
        }
    }
    if !listed.contains("logits") {
        return Err("it has no `logits` output".into());
    }
    if let Some(missing) = states.keys().find(|s| !listed.contains(s.as_str())) {
        return Err(format!("it does not output state `{missing}`"));
    }
    Ok(())
}

fn join(shape: &[Expr]) -> String {
    shape
        .iter()
        .map(Expr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Offsets aligned, lengths matching shapes, tensors in order and not overlapping, every
/// tensor in a type `weights.bin` holds.
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
        if !w.elem.is_storable() {
            return Err(format!(
                "tensor `{tensor}`: weights are stored as f32 or bf16, not {}",
                w.elem
            ));
        }
        let bytes = w
            .numel()
            .and_then(|n| n.checked_mul(w.elem.size()))
            .ok_or_else(|| format!("tensor `{tensor}`: shape {:?} is too large", w.shape))?;
        if bytes as u64 != w.bytes {
            return Err(format!(
                "tensor `{tensor}`: {} bytes listed, but shape {:?} of {} needs {bytes}",
                w.bytes, w.shape, w.elem
            ));
        }
        if let Some(blocks) = &w.column_blocks {
            crate::layout::check(&w.shape, blocks)
                .map_err(|e| format!("tensor `{tensor}`: {e}"))?;
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

/// Size `weights.bin` must have: the end of the last tensor (the table was validated, so
/// this does not overflow).
pub fn weights_len(ws: &[WeightEntry]) -> u64 {
    ws.last().map_or(0, |w| w.offset.saturating_add(w.bytes))
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

/// The element type of a program buffer: weights as stored, inputs i64, the rest f32.
fn weight_elem(ws: &[WeightEntry], i: u32) -> Option<Elem> {
    ws.get(i as usize).map(|w| w.elem)
}
