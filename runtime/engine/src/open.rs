//! Opening an engine: every file is checked (presence, manifest syntax and version,
//! weight table against `weights.bin`, every checksum) before a backend may run it, and
//! the weights are memory-mapped and used in place.

use std::fs;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::elem::Elem;
use crate::error::EngineError;
use crate::manifest::{Checksum, FileRef, Manifest, WeightEntry};
use crate::program::{Program, ProgramName};
use crate::{MANIFEST_FILE, WEIGHTS_FILE, validate};

/// A validated engine with its weights mapped.
pub struct Engine {
    dir: PathBuf,
    manifest: Manifest,
    /// The digest of `manifest.json`, which names everything the engine computes with.
    identity: Checksum,
    /// `None` when `weights.bin` is empty (a zero-length file cannot be mapped).
    weights: Option<Mmap>,
}

/// One stored parameter, borrowed from the map.
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub entry: &'a WeightEntry,
    pub bytes: &'a [u8],
}

/// What [`Engine::open_with`] checks besides the manifest, the sizes and the other files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verify {
    /// Every checksum, the weights' included (reads all of `weights.bin` once).
    #[default]
    Full,
    /// Every check but hashing the weights: `weights.bin` must still have the size the
    /// weight table needs, and `manifest.json` and `host.so` are still hashed. For large
    /// engines on trusted storage, where hashing reads every byte before the first token.
    SkipWeightHashes,
}

impl Engine {
    /// Opens and validates the engine in `dir`, every checksum included.
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine, EngineError> {
        Engine::open_with(dir, Verify::Full)
    }

    /// Opens and validates the engine in `dir`, checking what `verify` says.
    pub fn open_with(dir: impl AsRef<Path>, verify: Verify) -> Result<Engine, EngineError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(load(&dir, None, "no such engine directory"));
        }
        let (manifest, identity) = read_manifest(&dir.join(MANIFEST_FILE))?;
        let weights = map_weights(&dir.join(WEIGHTS_FILE), &manifest.weights, verify)?;
        check_file(&dir, &manifest.host)?;
        for f in [
            manifest.gpu.as_ref().map(|g| &g.ptx),
            manifest.model.tokenizer.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            check_file(&dir, f)?;
        }
        Ok(Engine {
            dir,
            manifest,
            identity,
            weights,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A digest of the engine's manifest (which holds the checksum of every weight and
    /// file): what a state snapshot records to be refused on any other engine.
    pub fn identity(&self) -> Checksum {
        self.identity
    }

    pub fn program(&self, name: ProgramName) -> Option<&Program> {
        self.manifest.program(name)
    }

    /// The bytes of the host kernel library, read now and checked against the manifest's
    /// checksum: what a backend loads must be what was verified, even if the file changed
    /// since the engine was opened.
    pub fn host_bytes(&self) -> Result<Vec<u8>, EngineError> {
        read_checked(&self.dir, &self.manifest.host)
    }

    /// Path of the host kernel library.
    pub fn host_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.host.file)
    }

    /// Path of the engine's `tokenizer.json`, when it has one.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        let t = self.manifest.model.tokenizer.as_ref()?;
        Some(self.dir.join(&t.file))
    }

    /// Parameter `i`, as stored.
    pub fn weight(&self, i: usize) -> Option<WeightView<'_>> {
        let entry = self.manifest.weights.get(i)?;
        Some(WeightView {
            entry,
            bytes: slice(self.weights.as_deref(), entry),
        })
    }
}

impl<'a> WeightView<'a> {
    /// The values in place, when stored as f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        (self.entry.elem == Elem::F32).then(|| cast(self.bytes))
    }

    /// The bf16 bit patterns in place, when stored as bf16.
    pub fn as_bf16_bits(&self) -> Option<&'a [u16]> {
        (self.entry.elem == Elem::Bf16).then(|| cast(self.bytes))
    }

    /// The values widened to f32 (a copy), in the logical row-major order of the shape
    /// whatever the storage layout.
    pub fn to_f32(&self) -> Vec<f32> {
        let stored = match (self.as_f32(), self.as_bf16_bits()) {
            (Some(v), _) => v.to_vec(),
            (_, Some(b)) => {
                let mut out = vec![0.0; b.len()];
                crate::elem::widen_bf16(b, &mut out);
                out
            }
            _ => Vec::new(),
        };
        match (&self.entry.column_blocks, self.entry.shape.first()) {
            // The loader checked that the blocks tile the shape.
            (Some(blocks), Some(&rows)) => {
                crate::layout::from_blocks(&stored, rows, blocks).unwrap_or(stored)
            }
            _ => stored,
        }
    }
}

/// Reinterprets mapped bytes as `T` values. The loader checked that every tensor lies in
/// the file at a 64-byte aligned offset of a page-aligned map, with a length that is a
/// whole number of elements; the target is little-endian x86-64 / aarch64.
fn cast<T: Copy>(bytes: &[u8]) -> &[T] {
    let n = bytes.len() / size_of::<T>();
    if n == 0 {
        return &[];
    }
    debug_assert_eq!(bytes.as_ptr().align_offset(align_of::<T>()), 0);
    // SAFETY: aligned and in bounds as argued above; f32 and u16 accept every bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), n) }
}

/// The bytes of `e` in the map; the loader checked that the table fits the file, so the
/// empty fallback is never taken for an opened engine.
fn slice<'a>(map: Option<&'a [u8]>, e: &WeightEntry) -> &'a [u8] {
    let range = usize::try_from(e.offset)
        .ok()
        .zip(usize::try_from(e.offset.saturating_add(e.bytes)).ok());
    match (map, range) {
        (Some(m), Some((start, end))) => m.get(start..end).unwrap_or(&[]),
        _ => &[],
    }
}

fn load(path: &Path, tensor: Option<&str>, msg: impl Into<String>) -> EngineError {
    EngineError::load(path.display().to_string(), tensor, msg)
}

fn read_manifest(path: &Path) -> Result<(Manifest, Checksum), EngineError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => load(path, None, "missing: this is not a zambac engine"),
        _ => load(path, None, format!("cannot read: {e}")),
    })?;
    let manifest = Manifest::parse(&bytes).map_err(|e| load(path, None, e))?;
    validate::manifest(&manifest).map_err(|e| load(path, None, e))?;
    Ok((manifest, Checksum::of(&bytes)))
}

/// Maps `weights.bin` after checking its size against the table and, unless told to skip
/// them, every tensor's checksum (in parallel: this reads the whole file once).
fn map_weights(
    path: &Path,
    table: &[WeightEntry],
    verify: Verify,
) -> Result<Option<Mmap>, EngineError> {
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => load(path, None, "missing"),
        _ => load(path, None, format!("cannot open: {e}")),
    })?;
    let len = file
        .metadata()
        .map_err(|e| load(path, None, format!("cannot read: {e}")))?
        .len();
    let want = validate::weights_len(table);
    if len != want {
        return Err(load(
            path,
            None,
            format!(
                "is {len} bytes, but the weight table of manifest.json needs {want}: \
                 the file is truncated or belongs to another engine"
            ),
        ));
    }
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the engine is opened read-only; modifying it while it runs is outside the
    // contract (as for any memory-mapped model file).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| load(path, None, format!("{e}")))?;
    if verify == Verify::SkipWeightHashes {
        return Ok(Some(map));
    }
    let bad = table
        .par_iter()
        .find_first(|e| Checksum::of(slice(Some(&map), e)) != e.xxh3);
    if let Some(e) = bad {
        return Err(load(
            path,
            Some(&e.name),
            format!(
                "checksum mismatch (the file is corrupt or was modified), expected {}",
                e.xxh3
            ),
        ));
    }
    Ok(Some(map))
}

/// Checks a companion file against its checksum in the manifest.
fn check_file(dir: &Path, f: &FileRef) -> Result<(), EngineError> {
    read_checked(dir, f).map(drop)
}

/// The bytes of a companion file, read once and checked against its checksum.
fn read_checked(dir: &Path, f: &FileRef) -> Result<Vec<u8>, EngineError> {
    let path = dir.join(&f.file);
    let bytes = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => load(&path, None, "missing"),
        _ => load(&path, None, format!("cannot read: {e}")),
    })?;
    let found = Checksum::of(&bytes);
    if found != f.xxh3 {
        return Err(load(
            &path,
            None,
            format!(
                "checksum {found} differs from {} recorded in manifest.json: the file is \
                 corrupt or was replaced",
                f.xxh3
            ),
        ));
    }
    Ok(bytes)
}
