//! Loading `host.so` and resolving every kernel of the kernel table up front, so a missing
//! or misnamed symbol is a load error rather than a failure half-way through a program.
//!
//! The library is read once, its bytes checked against the manifest's checksum, and those
//! very bytes loaded from an anonymous in-memory file (`memfd_create`), so the code that
//! runs is the code that was verified — replacing `host.so` between the check and the
//! load changes nothing.

use std::ffi::c_void;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};

use libloading::Library;
use zambac_engine::Engine;

use crate::error::RuntimeError;

/// The C ABI of every generated kernel (see `zambac_engine::program`):
/// `void zk_<symbol>(void *const *bufs, const int64_t *ints, int64_t begin, int64_t end)`.
pub type KernelFn = unsafe extern "C" fn(*const *mut c_void, *const i64, i64, i64);

/// The loaded library and one function pointer per kernel, in kernel-table order.
pub struct HostLibrary {
    pub fns: Vec<KernelFn>,
    /// Keeps the code behind `fns` mapped; must outlive every call through them.
    _lib: Library,
    /// The in-memory file the library was loaded from.
    _image: File,
}

impl HostLibrary {
    /// Loads the engine's `host.so` from the bytes [`Engine::host_bytes`] read and
    /// verified, and resolves every kernel of its kernel table.
    pub fn open(engine: &Engine) -> Result<HostLibrary, RuntimeError> {
        let file = engine.host_path().display().to_string();
        let kernels = &engine.manifest().kernels;
        let bytes = engine.host_bytes()?;
        let image = in_memory(&bytes)
            .map_err(|e| RuntimeError::Internal(format!("cannot stage {file} in memory: {e}")))?;
        let staged = format!("/proc/self/fd/{}", image.as_raw_fd());
        // SAFETY: loading runs the library's initialisers. These are the bytes of zambac's
        // generated code that were just checked against the manifest's checksum.
        let lib = unsafe { Library::new(&staged) }
            .map_err(|e| RuntimeError::load(&file, None, format!("cannot load: {e}")))?;
        let mut fns = Vec::with_capacity(kernels.len());
        for k in kernels {
            let name = format!("zk_{}\0", k.symbol);
            // SAFETY: the symbol is declared with the ABI above by the code generator; the
            // function pointer is only used while `lib` is alive (both live in `self`).
            let f = unsafe { lib.get::<KernelFn>(name.as_bytes()) }.map_err(|_| {
                RuntimeError::load(
                    &file,
                    None,
                    format!(
                        "does not export `zk_{}`, which the kernel table lists: the library \
                         and manifest.json come from different builds",
                        k.symbol
                    ),
                )
            })?;
            fns.push(*f);
        }
        Ok(HostLibrary {
            fns,
            _lib: lib,
            _image: image,
        })
    }
}

/// An anonymous in-memory file holding `bytes` (closed on exec).
fn in_memory(bytes: &[u8]) -> std::io::Result<File> {
    // SAFETY: a NUL-terminated name and valid flags; the call returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"zambac-host.so".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok(file)
}
