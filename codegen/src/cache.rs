//! The compile cache: host objects of kernels already compiled, on disk, so that a kernel
//! that does not change between builds — or between the variants of a sweep, which share
//! most of their kernels — is compiled once.
//!
//! An entry is keyed by everything its object depends on: the kernel's MLIR as built
//! (kernel symbols are named after what they compute, so the same kernel has the same
//! module in every model), the target CPU and features, the vector-math choice, and the
//! compiler — zambac's version, a digest of this crate's source (so any change to the
//! lowering pipelines or to code generation invalidates every entry, even without a version
//! bump) and the LLVM version. Entries are written to a temporary file in the cache
//! directory and renamed into place, so concurrent builds sharing the cache see either a
//! whole object or none.

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::error::CodegenError;
use crate::llvm::HostTarget;

/// The compiler an object came from: objects of another compiler are never reused.
pub fn compiler_id() -> String {
    let (major, minor, patch) = inkwell::support::get_llvm_version();
    format!(
        "zambac {} codegen {} llvm {major}.{minor}.{patch}",
        env!("CARGO_PKG_VERSION"),
        env!("ZAMBAC_CODEGEN_SOURCE_DIGEST")
    )
}

/// A directory of compiled kernel objects.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
    compiler: String,
}

impl KernelCache {
    /// The cache in `dir` (created when first written), for objects of `compiler`
    /// ([`compiler_id`] outside tests).
    pub fn new(dir: impl Into<PathBuf>, compiler: impl Into<String>) -> KernelCache {
        KernelCache {
            dir: dir.into(),
            compiler: compiler.into(),
        }
    }

    /// The user's cache: `$XDG_CACHE_HOME/zambac`, else `~/.cache/zambac`; `None` when
    /// neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
        let base = match xdg {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
        };
        Some(base.join("zambac"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the kernels' objects are kept.
    fn objects(&self) -> PathBuf {
        self.dir.join("kernels")
    }

    /// The key of a kernel's object.
    pub(crate) fn key(&self, mlir: &str, target: &HostTarget, vector_math: &str) -> String {
        let mut h = Xxh3::new();
        for part in [
            self.compiler.as_str(),
            target.cpu.as_str(),
            target.features.as_str(),
            vector_math,
            mlir,
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        format!("{:032x}", h.digest128())
    }

    /// The object stored under `key`, if any. A file that cannot be read is a miss.
    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.objects().join(format!("{key}.o")))
            .ok()
            .filter(|b| !b.is_empty())
    }

    /// Stores `object` under `key`, atomically.
    pub(crate) fn put(&self, key: &str, object: &[u8]) -> Result<(), CodegenError> {
        let dir = self.objects();
        std::fs::create_dir_all(&dir).map_err(|e| CodegenError::io(&dir, e))?;
        let mut tmp =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| CodegenError::io(&dir, e))?;
        std::io::Write::write_all(&mut tmp, object).map_err(|e| CodegenError::io(tmp.path(), e))?;
        let path = dir.join(format!("{key}.o"));
        tmp.persist(&path)
            .map_err(|e| CodegenError::io(&path, e.error))?;
        Ok(())
    }

    /// Removes every entry; returns how many bytes were freed.
    pub fn clear(&self) -> Result<u64, CodegenError> {
        let dir = self.objects();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut freed = 0;
        for e in entries.flatten() {
            let path = e.path();
            freed += e.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&path).map_err(|err| CodegenError::io(&path, err))?;
        }
        Ok(freed)
    }

    /// (entries, bytes) held.
    pub fn usage(&self) -> (u64, u64) {
        let Ok(entries) = std::fs::read_dir(self.objects()) else {
            return (0, 0);
        };
        entries.flatten().fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
    }
}
