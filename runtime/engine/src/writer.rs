//! Writing an engine: weights streamed one parameter at a time (a 7B model never has to be
//! in memory at once), everything built in a temporary sibling directory and renamed into
//! place only when complete, so a failed or interrupted build never leaves a half-written
//! engine and never damages the engine it would have replaced.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::elem::{Elem, encode};
use crate::error::EngineError;
use crate::gpu::{GpuCode, GpuEntry};
use crate::manifest::{Checksum, FileRef, Manifest, ManifestParts, WeightEntry};
use crate::{
    FORMAT_VERSION, HOST_FILE, MANIFEST_FILE, PTX_FILE, TOKENIZER_FILE, WEIGHT_ALIGN, WEIGHTS_FILE,
    validate,
};

/// Elements converted and written per chunk: bounds the staging buffer and sets how often
/// progress is reported.
const CHUNK: usize = 1 << 20;

/// Where a build stands, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct WriteProgress<'a> {
    /// The parameter being written.
    pub tensor: &'a str,
    /// Bytes of `weights.bin` written so far, padding included.
    pub bytes_written: u64,
}

type ProgressFn = Box<dyn FnMut(WriteProgress<'_>)>;

/// The files an engine carries besides its weights and manifest.
#[derive(Clone, Copy, Debug)]
pub struct Companions<'a> {
    /// `host.so`, the CPU kernels (empty when built for a GPU only).
    pub host: &'a [u8],
    /// `kernels.ptx` and its launch table, when built for a GPU.
    pub gpu: Option<GpuFiles<'a>>,
    /// The model's `tokenizer.json`, when it has one.
    pub tokenizer: Option<&'a [u8]>,
}

/// The GPU code of an engine being written: the PTX text, the chip it targets and one
/// launch entry per kernel, in the manifest's kernel order.
#[derive(Clone, Copy, Debug)]
pub struct GpuFiles<'a> {
    pub ptx: &'a [u8],
    pub chip: &'a str,
    pub kernels: &'a [GpuEntry],
}

/// An engine under construction. Dropping it without [`EngineWriter::finish`] removes the
/// temporary directory and leaves `out_dir` as it was.
pub struct EngineWriter {
    out: PathBuf,
    tmp: PathBuf,
    weights: BufWriter<File>,
    table: Vec<WeightEntry>,
    offset: u64,
    staging: Vec<u8>,
    progress: Option<ProgressFn>,
}

impl EngineWriter {
    /// Starts an engine that will become `out_dir`. An existing `out_dir` must be an engine
    /// or empty: it is replaced only by `finish`, never touched before.
    pub fn create(out_dir: impl AsRef<Path>) -> Result<EngineWriter, EngineError> {
        let out = out_dir.as_ref().to_path_buf();
        check_replaceable(&out)?;
        let tmp = sibling(&out, "tmp")?;
        if let Some(parent) = tmp.parent() {
            fs::create_dir_all(parent).map_err(|e| EngineError::write(show(parent), e))?;
        }
        remove_stale_siblings(&out);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| EngineError::write(show(&tmp), e))?;
        }
        fs::create_dir(&tmp).map_err(|e| EngineError::write(show(&tmp), e))?;
        let path = tmp.join(WEIGHTS_FILE);
        let file = File::create(&path).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            EngineError::write(show(&path), e)
        })?;
        Ok(EngineWriter {
            out,
            tmp,
            weights: BufWriter::with_capacity(1 << 22, file),
            table: Vec::new(),
            offset: 0,
            staging: Vec::new(),
            progress: None,
        })
    }

    /// Calls `f` as weight bytes are written (after each chunk of about 4 MB of input).
    pub fn on_progress(&mut self, f: impl FnMut(WriteProgress<'_>) + 'static) {
        self.progress = Some(Box::new(f));
    }

    /// Bytes `weights.bin` will have after the parameters added so far.
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// Appends a parameter, stored as `elem` (f32, or bf16 rounded to nearest, ties to
    /// even); returns its index, the `i` of `Buffer::Weight(i)`.
    pub fn add_weight(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        elem: Elem,
    ) -> Result<u32, EngineError> {
        self.add(name, shape, data, elem, None)
    }

    /// As [`EngineWriter::add_weight`], for a matrix `data [rows, cols]` (row-major) stored
    /// as consecutive column blocks of widths `blocks` ([`crate::layout`]).
    pub fn add_blocked_weight(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        elem: Elem,
        blocks: &[usize],
    ) -> Result<u32, EngineError> {
        crate::layout::check(shape, blocks)
            .map_err(|e| EngineError::Internal(format!("weight `{name}`: {e}")))?;
        if shape.iter().product::<usize>() != data.len() {
            return Err(EngineError::Internal(format!(
                "weight `{name}`: shape {shape:?} does not hold the {} values given",
                data.len()
            )));
        }
        let rows = shape.first().copied().unwrap_or(0);
        let blocked = crate::layout::to_blocks(data, rows, blocks).ok_or_else(|| {
            EngineError::Internal(format!(
                "weight `{name}`: {blocks:?} do not tile shape {shape:?}"
            ))
        })?;
        self.add(name, shape, &blocked, elem, Some(blocks.to_vec()))
    }

    fn add(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        elem: Elem,
        column_blocks: Option<Vec<usize>>,
    ) -> Result<u32, EngineError> {
        if !elem.is_storable() {
            return Err(EngineError::Internal(format!(
                "weight `{name}`: an engine stores f32 or bf16, not {elem}"
            )));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if numel != Some(data.len()) {
            return Err(EngineError::Internal(format!(
                "weight `{name}`: shape {shape:?} does not hold the {} values given",
                data.len()
            )));
        }
        let index = u32::try_from(self.table.len())
            .map_err(|_| EngineError::Internal("more than 2^32 weights".into()))?;
        let pad = self.offset.next_multiple_of(WEIGHT_ALIGN) - self.offset;
        self.put(&vec![0u8; pad as usize])?;
        let offset = self.offset;
        let mut hasher = Xxh3::new();
        for chunk in data.chunks(CHUNK) {
            let mut staging = std::mem::take(&mut self.staging);
            staging.clear();
            encode(chunk, elem, &mut staging);
            hasher.update(&staging);
            let written = self.put(&staging);
            self.staging = staging;
            written?;
            self.report(name);
        }
        if data.is_empty() {
            self.report(name);
        }
        self.table.push(WeightEntry {
            name: name.to_string(),
            elem,
            shape: shape.to_vec(),
            offset,
            bytes: self.offset - offset,
            xxh3: Checksum(hasher.digest()),
            column_blocks,
        });
        Ok(index)
    }

    /// Writes the companion files and the manifest, then moves the engine into place
    /// (replacing an existing one). Returns the manifest written. The manifest is
    /// validated exactly as a loader validates it, so no build writes an engine that a
    /// runtime would refuse.
    pub fn finish(
        mut self,
        parts: ManifestParts,
        files: Companions<'_>,
    ) -> Result<Manifest, EngineError> {
        let file_ref = |file: &str, bytes: &[u8]| FileRef {
            file: file.into(),
            xxh3: Checksum::of(bytes),
        };
        let mut model = parts.model;
        model.tokenizer = files.tokenizer.map(|t| file_ref(TOKENIZER_FILE, t));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            zambac_version: parts.zambac_version,
            model,
            source: parts.source,
            weights: std::mem::take(&mut self.table),
            kernels: parts.kernels,
            programs: parts.programs,
            host: file_ref(HOST_FILE, files.host),
            host_target: parts.host_target,
            gpu: files.gpu.map(|g| GpuCode {
                chip: g.chip.to_string(),
                ptx: file_ref(PTX_FILE, g.ptx),
                kernels: g.kernels.to_vec(),
            }),
            build: parts.build,
        };
        validate::manifest(&manifest).map_err(|e| {
            EngineError::Internal(format!("the engine being built is inconsistent: {e}"))
        })?;
        let weights_path = self.tmp.join(WEIGHTS_FILE);
        self.weights
            .flush()
            .and_then(|()| self.weights.get_ref().sync_all())
            .map_err(|e| EngineError::write(show(&weights_path), e))?;
        self.file(HOST_FILE, files.host)?;
        if let Some(g) = files.gpu {
            self.file(PTX_FILE, g.ptx)?;
        }
        if let Some(t) = files.tokenizer {
            self.file(TOKENIZER_FILE, t)?;
        }
        let json = manifest
            .to_bytes()
            .map_err(|e| EngineError::Internal(format!("cannot serialise the manifest: {e}")))?;
        self.file(MANIFEST_FILE, &json)?;
        self.commit()?;
        Ok(manifest)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), EngineError> {
        self.weights
            .write_all(bytes)
            .map_err(|e| EngineError::write(show(&self.tmp.join(WEIGHTS_FILE)), e))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn report(&mut self, tensor: &str) {
        let bytes_written = self.offset;
        if let Some(f) = self.progress.as_mut() {
            f(WriteProgress {
                tensor,
                bytes_written,
            });
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> Result<(), EngineError> {
        let path = self.tmp.join(name);
        File::create(&path)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .map_err(|e| EngineError::write(show(&path), e))
    }

    /// Renames the finished directory into place; an old engine is moved aside first and
    /// restored if the swap fails.
    fn commit(&self) -> Result<(), EngineError> {
        check_replaceable(&self.out)?;
        let err = |e: std::io::Error| EngineError::write(show(&self.out), e);
        if !self.out.exists() {
            return fs::rename(&self.tmp, &self.out).map_err(err);
        }
        // One atomic step where the system has it: the new engine and the old swap places,
        // so at every instant `out` is one whole engine or the other, whenever the process
        // is killed; the old one then sits in `tmp` and is removed.
        if exchange(&self.tmp, &self.out).is_ok() {
            let _ = fs::remove_dir_all(&self.tmp);
            return Ok(());
        }
        let old = sibling(&self.out, "old")?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(|e| EngineError::write(show(&old), e))?;
        }
        fs::rename(&self.out, &old).map_err(err)?;
        if let Err(e) = fs::rename(&self.tmp, &self.out) {
            let _ = fs::rename(&old, &self.out);
            return Err(err(e));
        }
        // The new engine is in place; a leftover old copy is only wasted space.
        let _ = fs::remove_dir_all(&old);
        Ok(())
    }
}

/// Swaps two directories atomically (`renameat2` with `RENAME_EXCHANGE`, Linux ≥ 3.15 on
/// file systems that support it).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, resolved against the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Removes what builds of `out` that were killed left beside it: `.<name>.zambac-tmp-<pid>`
/// and `-old-` directories of processes that no longer run (on Linux, where `/proc` says
/// which run). With the atomic exchange an `old` directory only ever holds a replaced
/// engine. Best effort: anything it cannot read or remove stays.
fn remove_stale_siblings(out: &Path) {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{}.zambac-", name.to_string_lossy());
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = ["tmp-", "old-"]
            .iter()
            .find_map(|kind| rest.strip_prefix(kind))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_runs(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` exists (on systems without `/proc`, assumed so: nothing is removed).
fn process_runs(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

impl Drop for EngineWriter {
    fn drop(&mut self) {
        // After a successful commit `tmp` no longer exists; otherwise it is debris.
        if self.tmp.exists() {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A hidden sibling of `out`, private to this process: `.<name>.zambac-<what>-<pid>`.
fn sibling(out: &Path, what: &str) -> Result<PathBuf, EngineError> {
    let name = out
        .file_name()
        .ok_or_else(|| EngineError::write(show(out), "not a directory name"))?;
    let hidden = format!(
        ".{}.zambac-{what}-{}",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(out.with_file_name(hidden))
}

/// Refuses to replace anything that is not an engine (or empty): a mistyped `--out`
/// pointing at a home directory must not be deleted.
fn check_replaceable(out: &Path) -> Result<(), EngineError> {
    let Ok(meta) = fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(EngineError::write(
            show(out),
            "it exists and is not a directory",
        ));
    }
    let mut entries = fs::read_dir(out).map_err(|e| EngineError::write(show(out), e))?;
    if entries.next().is_none() || out.join(MANIFEST_FILE).is_file() {
        Ok(())
    } else {
        Err(EngineError::write(
            show(out),
            "it exists and is not an engine (no manifest.json); refusing to replace it",
        ))
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
