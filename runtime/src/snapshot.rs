//! State snapshots: the complete state of a sequence — the conv and SSM states of every
//! Mamba layer, the K/V rows of every attention invocation up to the sequence's length, its
//! position — saved to a file and restored, to continue a conversation or reuse a prefix.
//!
//! A snapshot is a safetensors file (one tensor per state tensor, named as the programs
//! name them: `conv.3`, `k.5`; KV caches cut to the rows in use) whose metadata says what it
//! is: `format` (`zambac-state`), `version`, the `engine` it belongs to (a digest of the
//! engine's manifest: another engine's snapshot is refused), the `position`, and an xxh3
//! `checksum` of every tensor's bytes. It is written to a temporary file and renamed, so a
//! failed save never leaves half a snapshot behind.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use zambac_engine::{Checksum, StateRole, StateSpec};

use crate::error::RuntimeError;
use crate::session::State;
use crate::tensor::Tensor;

/// The snapshot layout this runtime reads and writes.
pub const VERSION: u32 = 1;
const FORMAT: &str = "zambac-state";

/// Writes `state` (of the engine whose identity is `engine`) to `path`, atomically.
pub fn save(path: &Path, state: &State, engine: Checksum) -> Result<(), RuntimeError> {
    if state.device().is_some() {
        let mut host = state.clone();
        host.to_host()?;
        return save(path, &host, engine);
    }
    let position = state.position();
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (role, t) in state.iter() {
        let (shape, data) = in_use(role, t, position)?;
        named.push((role.name(), shape, data));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let checksum = digest(
        named
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
    );
    let views = named
        .iter()
        .map(|(n, s, d)| {
            TensorView::new(Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| RuntimeError::Internal(format!("snapshot tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
        ("engine".to_string(), engine.to_string()),
        ("position".to_string(), position.to_string()),
        ("checksum".to_string(), checksum.to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| RuntimeError::Internal(format!("cannot serialise the snapshot: {e}")))?;
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| RuntimeError::write(&shown, e))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| RuntimeError::write(&shown, e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| RuntimeError::write(&shown, e))?;
    tmp.persist(path)
        .map_err(|e| RuntimeError::write(&shown, e.error))?;
    Ok(())
}

/// Reads a snapshot of the engine `engine` with state layout `layout` into a state whose
/// KV caches hold `capacity` positions (at least the snapshot's position).
pub fn load(
    path: &Path,
    layout: &[StateSpec],
    engine: Checksum,
    capacity: usize,
) -> Result<State, RuntimeError> {
    let shown = path.display().to_string();
    let bad = |tensor: Option<&str>, msg: String| RuntimeError::load(&shown, tensor, msg);
    let bytes = std::fs::read(path).map_err(|e| bad(None, format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(None, format!("not a state snapshot: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| {
            bad(
                None,
                format!("not a zambac state snapshot (no `{k}` in its metadata)"),
            )
        })
    };
    if field("format")? != FORMAT {
        return Err(bad(None, "not a zambac state snapshot".into()));
    }
    let version = field("version")?;
    if version != VERSION.to_string() {
        return Err(bad(
            None,
            format!("snapshot version {version} is not supported (this runtime reads {VERSION})"),
        ));
    }
    let owner = field("engine")?;
    if owner != engine.to_string() {
        return Err(bad(
            None,
            format!(
                "the snapshot belongs to another engine ({owner}; this engine is {engine}): a \
                 state only continues on the engine that produced it"
            ),
        ));
    }
    let position: usize = field("position")?
        .parse()
        .map_err(|_| bad(None, "the snapshot's position is not a number".into()))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(None, format!("damaged snapshot: {e}")))?;
    let mut found: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(bad(Some(&name), format!("is {:?}, not f32", view.dtype())));
        }
        found.push((name, view.shape().to_vec(), view.data().to_vec()));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let checksum = digest(
        found
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())),
    );
    if checksum.to_string() != field("checksum")? {
        return Err(bad(
            None,
            "checksum mismatch: the snapshot is corrupt or was modified".into(),
        ));
    }
    // The position is metadata, which the checksum does not cover: it must agree with the
    // rows the KV caches hold before it sizes any allocation.
    if let Some((name, shape, _)) = found.iter().find(|(n, _, _)| {
        layout
            .iter()
            .any(|spec| spec.role.is_cache() && spec.role.name() == *n)
    }) && shape.get(1) != Some(&position)
    {
        return Err(bad(
            Some(name),
            format!("holds a cache of shape {shape:?}, but the snapshot says position {position}"),
        ));
    }
    let capacity = capacity.max(position);
    let mut need = zambac_engine::resources::Budget::new();
    need.add(
        format!("a state with caches of {capacity} positions"),
        crate::session::layout_bytes(layout, capacity),
    );
    need.check_memory("restoring it")
        .map_err(|e| bad(None, e))?;
    let mut state = State::zeros(layout, capacity)?;
    if state.has_caches() && position > capacity {
        return Err(bad(
            None,
            format!("position {position} is past the capacity {capacity}"),
        ));
    }
    for spec in layout {
        let name = spec.role.name();
        let (_, shape, data) = found.iter().find(|(n, _, _)| *n == name).ok_or_else(|| {
            bad(
                Some(&name),
                "missing: the snapshot is of another model".into(),
            )
        })?;
        let Some(target) = state.get_mut(spec.role) else {
            return Err(RuntimeError::Internal(format!("state `{name}` vanished")));
        };
        restore(spec.role, target, shape, data, position).map_err(|msg| bad(Some(&name), msg))?;
    }
    if found.len() != layout.len() {
        return Err(bad(
            None,
            format!(
                "holds {} tensors, but this engine's state has {}",
                found.len(),
                layout.len()
            ),
        ));
    }
    state.advance(position);
    Ok(state)
}

/// A state tensor as saved: whole, or a KV cache `[heads, C, hd]` cut to `[heads, pos, hd]`.
fn in_use(
    role: StateRole,
    t: &Tensor,
    position: usize,
) -> Result<(Vec<usize>, Vec<u8>), RuntimeError> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    if !role.is_cache() {
        return Ok((t.shape.clone(), bytes(&t.data)));
    }
    let [heads, capacity, hd] = t.shape[..] else {
        return Err(RuntimeError::Internal(format!(
            "cache `{role}` has shape {:?}",
            t.shape
        )));
    };
    let rows = position.min(capacity);
    let mut out = Vec::with_capacity(heads * rows * hd);
    for head in t.data.chunks_exact((capacity * hd).max(1)).take(heads) {
        out.extend_from_slice(head.get(..rows * hd).unwrap_or_default());
    }
    Ok((vec![heads, rows, hd], bytes(&out)))
}

/// Copies a saved tensor into the state's, checking its shape.
fn restore(
    role: StateRole,
    target: &mut Tensor,
    shape: &[usize],
    data: &[u8],
    position: usize,
) -> Result<(), String> {
    let values: Vec<f32> = data
        .chunks_exact(4)
        .filter_map(|b| b.try_into().ok().map(f32::from_le_bytes))
        .collect();
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if numel != Some(values.len()) {
        return Err(format!("has shape {shape:?} but {} values", values.len()));
    }
    if !role.is_cache() {
        if shape != target.shape.as_slice() {
            return Err(format!(
                "has shape {shape:?}, but this engine's is {:?}",
                target.shape
            ));
        }
        target.data.copy_from_slice(&values);
        return Ok(());
    }
    let &[heads, capacity, hd] = target.shape.as_slice() else {
        return Err(format!("the engine's cache has shape {:?}", target.shape));
    };
    if shape != [heads, position, hd] {
        return Err(format!(
            "has shape {shape:?}, but a cache of this engine at position {position} is [{heads}, {position}, {hd}]"
        ));
    }
    let cells = heads.checked_mul(capacity).and_then(|n| n.checked_mul(hd));
    if position > capacity || cells != Some(target.data.len()) {
        return Err(format!(
            "holds {position} positions, more than the {capacity} this cache has room for"
        ));
    }
    // Each head's first `position` rows of the cache, from the saved `[heads, position, hd]`.
    let saved = values.chunks_exact((position * hd).max(1));
    for (dst, src) in target
        .data
        .chunks_exact_mut((capacity * hd).max(1))
        .zip(saved)
    {
        if let Some(rows) = dst.get_mut(..src.len()) {
            rows.copy_from_slice(src);
        }
    }
    Ok(())
}

/// xxh3 over every tensor's name, shape and bytes, in name order.
fn digest<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> Checksum {
    let mut all = Vec::new();
    for (name, shape, data) in tensors {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        for d in shape {
            all.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        all.extend_from_slice(data);
    }
    Checksum::of(&all)
}
