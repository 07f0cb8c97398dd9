//! Binding a module's parameters to a checkpoint's tensors (spec §4.3).
//!
//! Plain parameters are looked up by name. A shared block may be stored under any hybrid
//! layer that uses it: for each block the first hybrid layer (in depth order) holding a
//! complete set is used, and every other copy present must be bit-identical (untied
//! transformers-5.23 checkpoints hold one per hybrid layer). Adapter slots the block does
//! not own are ignored with a warning; any other tensor the model does not use is an error.

use std::collections::{BTreeMap, BTreeSet};

use zambac_frontend::ModelSpec;
use zambac_ir::Module;
use zambac_ir::build::names;

use super::Checkpoint;
use zambac_runtime::RuntimeError;
use zambac_runtime::Tensor;

/// Parameters read from a checkpoint.
pub struct Bound {
    /// One f32 tensor per parameter, indexed by `ParamId`.
    pub tensors: Vec<Tensor>,
    /// Things ignored on the way (unowned adapter slots).
    pub warnings: Vec<String>,
}

/// Where each parameter of a module is stored in a checkpoint, checked but not yet read.
pub struct Resolved {
    /// The checkpoint tensor of each parameter, indexed by `ParamId`.
    pub sources: Vec<String>,
    /// Things ignored on the way (unowned adapter slots).
    pub warnings: Vec<String>,
}

/// Reads every parameter of `m` from `ck`, checking names, shapes and dtypes.
pub fn bind(m: &Module, spec: &ModelSpec, ck: &Checkpoint) -> Result<Bound, RuntimeError> {
    let r = resolve(m, spec, ck)?;
    let tensors = m
        .params
        .iter()
        .zip(&r.sources)
        .map(|(p, src)| Ok(Tensor::new(p.shape.clone(), ck.to_f32(src)?)))
        .collect::<Result<_, RuntimeError>>()?;
    Ok(Bound {
        tensors,
        warnings: r.warnings,
    })
}

/// Finds the checkpoint tensor of every parameter of `m` and checks the whole checkpoint
/// against the model (names, shapes, dtypes, shared-block copies, unexpected tensors),
/// reading only the bytes of duplicate block copies it must compare.
pub fn resolve(m: &Module, spec: &ModelSpec, ck: &Checkpoint) -> Result<Resolved, RuntimeError> {
    let homes = block_homes(m, spec, ck)?;
    let mut consumed: BTreeSet<String> = BTreeSet::new();
    let mut sources = Vec::with_capacity(m.params.len());
    for p in &m.params {
        let stored = match p.tie.as_deref().and_then(names::parse_tie_key) {
            Some((b, suffix)) => {
                // `block_homes` found a home for every block a tie key names, or failed.
                let Some(home) = homes.get(&b) else {
                    return Err(RuntimeError::Internal(format!(
                        "parameter `{}`: shared block {b} has no home layer",
                        p.name
                    )));
                };
                format!("{}{suffix}", names::block_prefix(spec.family, home.layer))
            }
            None => p.name.clone(),
        };
        let Some(entry) = ck.entry(&stored) else {
            return Err(RuntimeError::load(
                &ck.source,
                Some(&stored),
                format!("missing tensor (expected shape {:?})", p.shape),
            ));
        };
        if entry.shape != p.shape {
            return Err(RuntimeError::load(
                ck.file_of(&stored),
                Some(&stored),
                format!("expected shape {:?}, found {:?}", p.shape, entry.shape),
            ));
        }
        ck.check_float(&stored)?;
        consumed.insert(stored.clone());
        sources.push(stored);
    }
    check_copies(spec, ck, &homes, &mut consumed)?;
    if spec.tie_embeddings && ck.entry(names::LM_HEAD).is_some() {
        if ck.bytes(names::LM_HEAD) == ck.bytes(names::EMBED) {
            consumed.insert(names::LM_HEAD.to_string());
        } else {
            return Err(RuntimeError::load(
                ck.file_of(names::LM_HEAD),
                Some(names::LM_HEAD),
                "the config ties the head to the embedding, but this tensor differs from it",
            ));
        }
    }
    let mut warnings = Vec::new();
    let unowned: Vec<&str> = ck
        .names()
        .filter(|n| !consumed.contains(*n))
        .filter(|n| is_adapter_of_a_block(spec, n))
        .collect();
    if let Some(first) = unowned.first() {
        warnings.push(format!(
            "ignored {} adapter tensor(s) for slots their block does not use (e.g. `{first}`)",
            unowned.len(),
        ));
    }
    if let Some(extra) = ck
        .names()
        .find(|n| !consumed.contains(*n) && !is_adapter_of_a_block(spec, n))
    {
        return Err(RuntimeError::load(
            ck.file_of(extra),
            Some(extra),
            "unexpected tensor: the model described by config.json has no such parameter",
        ));
    }
    Ok(Resolved { sources, warnings })
}

/// Where a shared block's copy in use is stored.
struct Home {
    /// The hybrid layer that holds it.
    layer: usize,
    /// The block's tensor names after the block prefix (tie suffixes).
    suffixes: Vec<String>,
}

/// For each block, the hybrid layer whose copy is used: the first one (depth order) that
/// holds every tensor of the block.
fn block_homes(
    m: &Module,
    spec: &ModelSpec,
    ck: &Checkpoint,
) -> Result<BTreeMap<usize, Home>, RuntimeError> {
    let mut homes = BTreeMap::new();
    for (b, suffixes) in block_suffixes(m) {
        let layers = names::block_layers(spec, b);
        let complete = layers.iter().find(|&&l| {
            let prefix = names::block_prefix(spec.family, l);
            suffixes
                .iter()
                .all(|s| ck.entry(&format!("{prefix}{s}")).is_some())
        });
        if let Some(&layer) = complete {
            homes.insert(b, Home { layer, suffixes });
            continue;
        }
        // No layer holds the whole block: name the first tensor missing from any of them.
        let missing = layers
            .iter()
            .flat_map(|&l| {
                let prefix = names::block_prefix(spec.family, l);
                suffixes.iter().map(move |s| format!("{prefix}{s}"))
            })
            .find(|n| ck.entry(n).is_none());
        return Err(match missing {
            Some(missing) => RuntimeError::load(
                &ck.source,
                Some(&missing),
                format!(
                    "missing tensor: shared block {b} is not stored completely under any of its hybrid layers {layers:?}"
                ),
            ),
            // Only a module whose tie keys name a block no hybrid layer of `spec` invokes.
            None => RuntimeError::load(
                &ck.source,
                None,
                format!(
                    "the model has parameters of shared block {b}, but config.json assigns that block to no hybrid layer"
                ),
            ),
        });
    }
    Ok(homes)
}

/// Tie suffixes of each shared block.
fn block_suffixes(m: &Module) -> BTreeMap<usize, Vec<String>> {
    let mut out: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for p in &m.params {
        if let Some((b, s)) = p.tie.as_deref().and_then(names::parse_tie_key) {
            out.entry(b).or_default().push(s.to_string());
        }
    }
    out
}

/// Copies of a block under its other hybrid layers must equal the copy in use.
fn check_copies(
    spec: &ModelSpec,
    ck: &Checkpoint,
    homes: &BTreeMap<usize, Home>,
    consumed: &mut BTreeSet<String>,
) -> Result<(), RuntimeError> {
    for (&b, Home { layer, suffixes }) in homes {
        let home = names::block_prefix(spec.family, *layer);
        for l in names::block_layers(spec, b) {
            let prefix = names::block_prefix(spec.family, l);
            if prefix == home {
                continue;
            }
            for s in suffixes {
                let copy = format!("{prefix}{s}");
                if ck.entry(&copy).is_none() {
                    continue;
                }
                let used = format!("{home}{s}");
                if ck.to_f32(&copy)? != ck.to_f32(&used)? {
                    return Err(RuntimeError::load(
                        ck.file_of(&copy),
                        Some(&copy),
                        format!(
                            "this copy of shared block {b} differs from `{used}`; refusing to pick one"
                        ),
                    ));
                }
                consumed.insert(copy);
            }
        }
    }
    Ok(())
}

/// Whether `name` is an adapter slot stored under some hybrid layer's shared block.
fn is_adapter_of_a_block(spec: &ModelSpec, name: &str) -> bool {
    name.contains("adapter_list.")
        && spec
            .hybrid_layer_ids()
            .iter()
            .any(|&l| name.starts_with(&names::block_prefix(spec.family, l)))
}
