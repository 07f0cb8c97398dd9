//! The sizes a kernel kind may have: positive where a size is counted, dividing where the
//! kind splits one size by another, wide enough where it reads columns of a row. Codegen
//! builds no kernel, and the validator accepts no engine, whose kinds fail these checks.

use crate::elem::Elem;
use crate::kernel::{EpilogueOp, KernelKind, MAX_DECODE_SPLITS, MAX_SCAN_CHUNKS};

/// Whether `symbol` can be exported as `zk_<symbol>`: a C identifier.
pub fn check_symbol(symbol: &str) -> Result<(), String> {
    let identifier = !symbol.is_empty()
        && !symbol.starts_with(|c: char| c.is_ascii_digit())
        && symbol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if identifier {
        Ok(())
    } else {
        Err(format!(
            "kernel symbol `{symbol}` is not a C identifier ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

/// Rejects sizes that no program can mean (zero sizes, groups that do not divide, a
/// grouped-query ratio that is not whole, …).
pub(crate) fn check(kind: &KernelKind) -> Result<(), String> {
    use KernelKind as K;
    let positive = |what: &str, n: usize| {
        if n == 0 {
            Err(format!("{what} must be positive"))
        } else {
            Ok(())
        }
    };
    let divides = |what: &str, part: usize, whole: usize| {
        if part == 0 || !whole.is_multiple_of(part) {
            Err(format!("{what} ({part}) must divide {whole}"))
        } else {
            Ok(())
        }
    };
    let weight = |elem: Elem| {
        if elem == Elem::I64 {
            Err("weights must be f32, bf16 or f16, not i64".to_string())
        } else {
            Ok(())
        }
    };
    match kind {
        K::Embedding { hidden, elem } => positive("hidden", *hidden).and(weight(*elem)),
        K::RmsNorm { d, groups, .. } => positive("d", *d).and(divides("groups", *groups, *d)),
        K::AddRmsNorm { d, .. } => positive("d", *d),
        K::ConcatRmsNorm { da, db, .. } | K::ConcatRmsScale { da, db, .. } => {
            positive("da + db", da.saturating_add(*db))
        }
        K::RowScale { n } => positive("n", *n),
        K::Binary { n, .. } => positive("n", *n),
        K::Gemv {
            k,
            rows,
            elem,
            row_stride,
            ..
        } => {
            positive("k", *k)?;
            if row_stride.is_some_and(|ld| ld < *k) {
                return Err(format!("row stride {row_stride:?} is shorter than k = {k}"));
            }
            positive("the number of parts", rows.len())?;
            weight(*elem)
        }
        K::Epilogue { n, op, .. } => {
            positive("n", *n)?;
            match op {
                EpilogueOp::Gate(_) => divides("2", 2, *n),
                EpilogueOp::Rope {
                    heads,
                    head_dim,
                    scaling,
                    ..
                } => {
                    divides("2", 2, *head_dim)?;
                    if let Some(s) = scaling {
                        s.check(*head_dim)
                            .map_err(|e| format!("RoPE scaling `{}`: {e}", s.name()))?;
                    }
                    let width = heads.saturating_mul(*head_dim);
                    if width != *n {
                        return Err(format!("RoPE heads·head_dim = {width} ≠ n = {n}"));
                    }
                    positive("head_dim", *head_dim)
                }
                _ => Ok(()),
            }
        }
        K::KvWrite {
            heads,
            head_dim,
            cache,
        } => {
            positive("heads", *heads)?;
            positive("hd", *head_dim)?;
            kv_cache(*cache)
        }
        K::AttentionDecode {
            heads,
            kv_heads,
            head_dim,
            kv,
            ..
        }
        | K::AttentionPrefill {
            heads,
            kv_heads,
            head_dim,
            kv,
            ..
        } => {
            positive("head_dim", *head_dim)?;
            positive("heads", *heads)?;
            divides("kv_heads", *kv_heads, *heads)?;
            if let K::AttentionDecode { splits, .. } = kind {
                split_count(*splits)?;
            }
            if let K::AttentionPrefill { products, .. } = kind {
                attention_products(*products, *kv, *head_dim)?;
            }
            kv_cache(*kv)
        }
        K::AttentionCombine {
            heads,
            head_dim,
            splits,
        } => {
            positive("head_dim", *head_dim)?;
            positive("heads", *heads)?;
            split_count(*splits)
        }
        K::Mamba2Conv {
            width, di, cd, k, ..
        } => {
            positive("cd", *cd)?;
            positive("k", *k)?;
            wide_enough(*width, di.saturating_add(*cd))
        }
        K::Mamba2Scan {
            width,
            heads,
            head_dim,
            groups,
            state,
            ..
        }
        | K::Mamba2ChunkScan {
            width,
            heads,
            head_dim,
            groups,
            state,
            ..
        }
        | K::Mamba2ConvScan {
            width,
            heads,
            head_dim,
            groups,
            state,
            ..
        } => {
            match kind {
                K::Mamba2Scan { ssm, .. } => ssm_state(*ssm)?,
                K::Mamba2ConvScan { ssm, k, .. } => {
                    ssm_state(*ssm)?;
                    positive("k", *k)?;
                }
                K::Mamba2ChunkScan {
                    chunks, min_len, ..
                } => {
                    scan_chunks(*chunks)?;
                    positive("min_len", *min_len)?;
                }
                _ => {}
            }
            positive("head_dim", *head_dim)?;
            positive("state", *state)?;
            positive("heads", *heads)?;
            divides("groups", *groups, *heads)?;
            let di = heads.saturating_mul(*head_dim);
            let bc = groups.saturating_mul(*state).saturating_mul(2);
            wide_enough(
                *width,
                di.saturating_mul(2)
                    .saturating_add(bc)
                    .saturating_add(*heads),
            )
        }
        K::Mamba2ChunkPass {
            heads,
            head_dim,
            state,
            chunks,
            min_len,
            ssm,
        } => {
            ssm_state(*ssm)?;
            scan_chunks(*chunks)?;
            positive("min_len", *min_len)?;
            positive("head_dim", *head_dim)?;
            positive("state", *state)?;
            positive("heads", *heads)
        }
        K::Mamba2GateNorm {
            width,
            di,
            groups,
            conv_shift,
            ..
        } => {
            positive("di", *di)?;
            divides("groups", *groups, *di)?;
            match conv_shift {
                Some(shift) => {
                    positive("conv_shift.channels", shift.channels)?;
                    positive("conv_shift.k", shift.k)?;
                    wide_enough(*width, di.saturating_add(shift.channels))
                }
                None => wide_enough(*width, *di),
            }
        }
        K::Mamba1Conv { di, k, .. } => positive("di", *di).and(positive("k", *k)),
        K::Mamba1Scan {
            heads,
            head_dim,
            state,
            ssm,
            ..
        } => ssm_state(*ssm)
            .and(positive("heads", *heads))
            .and(positive("head_dim", *head_dim))
            .and(positive("state", *state)),
    }
}

fn wide_enough(width: usize, needed: usize) -> Result<(), String> {
    if width < needed {
        Err(format!(
            "width {width} is smaller than the {needed} columns the kernel reads"
        ))
    } else {
        Ok(())
    }
}

/// KV caches are stored f32 or bf16.
fn kv_cache(e: Elem) -> Result<(), String> {
    match e {
        Elem::F32 | Elem::Bf16 => Ok(()),
        other => Err(format!(
            "a KV cache is stored as f32 or bf16, not {other:?}"
        )),
    }
}

/// Prompt attention multiplies f32, or bf16 pairs read straight from bf16 caches.
fn attention_products(products: Elem, kv: Elem, head_dim: usize) -> Result<(), String> {
    match products {
        Elem::F32 => Ok(()),
        Elem::Bf16 if kv != Elem::Bf16 => Err(format!(
            "bf16 attention products need bf16 KV caches, not {kv:?}"
        )),
        Elem::Bf16 if !head_dim.is_multiple_of(2) => Err(format!(
            "bf16 attention products multiply pairs of elements: the head dim must be even, not {head_dim}"
        )),
        Elem::Bf16 => Ok(()),
        other => Err(format!(
            "attention multiplies f32 or bf16 operands, not {other:?}"
        )),
    }
}

/// SSM states are stored f32 or bf16.
fn ssm_state(e: Elem) -> Result<(), String> {
    match e {
        Elem::F32 | Elem::Bf16 => Ok(()),
        other => Err(format!(
            "an SSM state is stored as f32 or bf16, not {other:?}"
        )),
    }
}

/// Decode attention splits each head's keys into 1 ..= [`MAX_DECODE_SPLITS`] parts.
fn scan_chunks(chunks: usize) -> Result<(), String> {
    if (1..=MAX_SCAN_CHUNKS).contains(&chunks) {
        Ok(())
    } else {
        Err(format!(
            "chunks ({chunks}) must be between 1 and {MAX_SCAN_CHUNKS}"
        ))
    }
}

fn split_count(splits: usize) -> Result<(), String> {
    if (1..=MAX_DECODE_SPLITS).contains(&splits) {
        Ok(())
    } else {
        Err(format!(
            "splits ({splits}) must be between 1 and {MAX_DECODE_SPLITS}"
        ))
    }
}
