//! A Hugging Face checkpoint on disk: `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; headers are validated by the
//! safetensors crate (offsets inside the file, no truncation) before any tensor is read.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use zambac_runtime::RuntimeError;

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    /// Index into the checkpoint's files.
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file (header included in the offset).
    pub start: usize,
    pub end: usize,
}

/// An opened checkpoint: every tensor of every shard, by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    /// What to name in messages about the checkpoint as a whole: the single file or the
    /// shard index.
    pub source: String,
    files: Vec<(String, Mmap)>,
    tensors: BTreeMap<String, TensorEntry>,
}

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

impl Checkpoint {
    /// Opens `dir/model.safetensors` or the shards of `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint, RuntimeError> {
        let index = dir.join(INDEX);
        let shard_files: Vec<String> = if index.exists() {
            shards_of(&index)?
        } else if dir.join(SINGLE).exists() {
            vec![SINGLE.to_string()]
        } else {
            return Err(RuntimeError::load(
                dir.display().to_string(),
                None,
                format!("no `{SINGLE}` or `{INDEX}` in this directory"),
            ));
        };
        let source = if index.exists() {
            &index
        } else {
            &dir.join(SINGLE)
        };
        let mut ck = Checkpoint {
            dir: dir.to_path_buf(),
            source: source.display().to_string(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for name in shard_files {
            ck.add_file(&name)?;
        }
        if index.exists() {
            ck.check_index(&index)?;
        }
        Ok(ck)
    }

    /// Opens one safetensors file on its own (used for oracle files and engine weights).
    pub fn open_file(path: &Path) -> Result<Checkpoint, RuntimeError> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let mut ck = Checkpoint {
            dir,
            source: path.display().to_string(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        ck.add_file(&name)?;
        Ok(ck)
    }

    fn add_file(&mut self, name: &str) -> Result<(), RuntimeError> {
        let path = self.dir.join(name);
        let shown = path.display().to_string();
        let file = File::open(&path)
            .map_err(|e| RuntimeError::load(&shown, None, format!("cannot open shard: {e}")))?;
        // SAFETY: the map is read-only and the files are not modified while zambac runs.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| RuntimeError::load(&shown, None, format!("cannot map: {e}")))?;
        let (header, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            RuntimeError::load(&shown, None, format!("not a valid safetensors file: {e}"))
        })?;
        let idx = self.files.len();
        for (tname, info) in meta.tensors() {
            let base = 8 + header;
            let entry = TensorEntry {
                file: idx,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: base + info.data_offsets.0,
                end: base + info.data_offsets.1,
            };
            if let Some(prev) = self.tensors.insert(tname.clone(), entry) {
                // Only the file being added is not in `files` yet.
                let other = self.shard_name(prev.file).unwrap_or(name);
                return Err(RuntimeError::load(
                    &shown,
                    Some(&tname),
                    format!("also stored in {other}"),
                ));
            }
        }
        self.files.push((name.to_string(), map));
        Ok(())
    }

    /// Every tensor the index names must be in the shard it names.
    fn check_index(&self, index: &Path) -> Result<(), RuntimeError> {
        let map = read_weight_map(index)?;
        for (tensor, file) in &map {
            match self.tensors.get(tensor).map(|e| self.shard_name(e.file)) {
                Some(Some(stored)) if stored == file => {}
                Some(stored) => {
                    return Err(RuntimeError::load(
                        index.display().to_string(),
                        Some(tensor),
                        format!(
                            "listed in `{file}` but stored in `{}`",
                            stored.unwrap_or("another file")
                        ),
                    ));
                }
                None => {
                    return Err(RuntimeError::load(
                        self.dir.join(file).display().to_string(),
                        Some(tensor),
                        "listed in the index but missing from the shard",
                    ));
                }
            }
        }
        Ok(())
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The name of file `file` of the checkpoint.
    fn shard_name(&self, file: usize) -> Option<&str> {
        self.files.get(file).map(|(name, _)| name.as_str())
    }

    /// The file (path) a tensor is stored in, for messages.
    pub fn file_of(&self, name: &str) -> String {
        match self.tensors.get(name).and_then(|e| self.shard_name(e.file)) {
            Some(file) => self.dir.join(file).display().to_string(),
            None => self.source.clone(),
        }
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let e = self.tensors.get(name)?;
        self.files.get(e.file)?.1.get(e.start..e.end)
    }

    /// Checks that a tensor has a floating-point type zambac reads (F32, BF16, F16).
    pub fn check_float(&self, name: &str) -> Result<(), RuntimeError> {
        match self.tensors.get(name).map(|e| e.dtype) {
            Some(Dtype::F32 | Dtype::BF16 | Dtype::F16) => Ok(()),
            Some(other) => Err(RuntimeError::load(
                self.file_of(name),
                Some(name),
                format!("dtype {other:?} is not supported (expected F32, BF16 or F16)"),
            )),
            None => Err(RuntimeError::load(
                &self.source,
                Some(name),
                "missing tensor",
            )),
        }
    }

    /// A content hash of a tensor's stored bytes, dtype and shape.
    pub fn content_hash(&self, name: &str) -> Option<u64> {
        let e = self.tensors.get(name)?;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(format!("{:?}{:?}", e.dtype, e.shape).as_bytes());
        h.update(self.bytes(name)?);
        Some(h.digest())
    }

    /// A tensor converted to f32 (exactly: bf16 and f16 widen without rounding).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>, RuntimeError> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| RuntimeError::load(&self.source, Some(name), "missing tensor"))?;
        let Some(raw) = self.bytes(name) else {
            return Err(RuntimeError::load(
                self.file_of(name),
                Some(name),
                format!("data offsets {}..{} lie outside the file", e.start, e.end),
            ));
        };
        let out = match e.dtype {
            Dtype::F32 => widen(raw, f32::from_le_bytes),
            Dtype::BF16 => widen(raw, |b| half::bf16::from_le_bytes(b).to_f32()),
            Dtype::F16 => widen(raw, |b| half::f16::from_le_bytes(b).to_f32()),
            other => {
                return Err(RuntimeError::load(
                    self.file_of(name),
                    Some(name),
                    format!("dtype {other:?} is not supported (expected F32, BF16 or F16)"),
                ));
            }
        };
        out.ok_or_else(|| {
            RuntimeError::load(
                self.file_of(name),
                Some(name),
                format!(
                    "{} bytes of data are not a whole number of {:?} elements",
                    raw.len(),
                    e.dtype
                ),
            )
        })
    }
}

/// `raw` read as little-endian elements of `N` bytes, each converted by `f`; `None` if
/// `raw` does not hold a whole number of them.
fn widen<const N: usize>(raw: &[u8], f: impl Fn([u8; N]) -> f32) -> Option<Vec<f32>> {
    let (elems, []) = raw.as_chunks::<N>() else {
        return None;
    };
    Some(elems.iter().map(|&b| f(b)).collect())
}

fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>, RuntimeError> {
    let shown = index.display().to_string();
    let text = std::fs::read_to_string(index)
        .map_err(|e| RuntimeError::load(&shown, None, format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::load(&shown, None, format!("invalid JSON: {e}")))?;
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Err(RuntimeError::load(
            &shown,
            None,
            "expected an object `weight_map`",
        ));
    };
    let mut out = BTreeMap::new();
    for (k, f) in map {
        let Some(f) = f.as_str() else {
            return Err(RuntimeError::load(
                &shown,
                Some(k),
                "expected a shard file name",
            ));
        };
        if f.contains('/') || f.contains("..") {
            return Err(RuntimeError::load(
                &shown,
                Some(k),
                format!("shard `{f}` is not a file name in this directory"),
            ));
        }
        out.insert(k.clone(), f.to_string());
    }
    Ok(out)
}

/// The distinct shard files named by an index, in first-seen order of the sorted map.
fn shards_of(index: &Path) -> Result<Vec<String>, RuntimeError> {
    let map = read_weight_map(index)?;
    let mut files: Vec<String> = map.values().cloned().collect();
    files.sort();
    files.dedup();
    for f in &files {
        let path = index.with_file_name(f);
        if !path.exists() {
            let example = map.iter().find(|(_, v)| *v == f).map(|(k, _)| k.as_str());
            return Err(RuntimeError::load(
                path.display().to_string(),
                example,
                "shard listed in the index is missing",
            ));
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_reads_whole_elements_only() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(widen(&bytes, f32::from_le_bytes), Some(vec![1.5, -2.0]));
        assert_eq!(widen(&bytes[..7], f32::from_le_bytes), None);
        let one = half::bf16::from_f32(1.0).to_le_bytes();
        assert_eq!(
            widen(&one, |b| half::bf16::from_le_bytes(b).to_f32()),
            Some(vec![1.0])
        );
    }
}
