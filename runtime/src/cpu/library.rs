//! Loading `host.so` and resolving every kernel of the kernel table up front, so a missing
//! or misnamed symbol is a load error rather than a failure half-way through a program.

use std::ffi::c_void;
use std::path::Path;

use libloading::Library;
use zambac_engine::Kernel;

use crate::error::RuntimeError;

/// The C ABI of every generated kernel (see `zambac_engine::program`):
/// `void zk_<symbol>(void *const *bufs, const int64_t *ints, int64_t begin, int64_t end)`.
pub type KernelFn = unsafe extern "C" fn(*const *mut c_void, *const i64, i64, i64);

/// The loaded library and one function pointer per kernel, in kernel-table order.
pub struct HostLibrary {
    pub fns: Vec<KernelFn>,
    /// Keeps the code behind `fns` mapped; must outlive every call through them.
    _lib: Library,
}

impl HostLibrary {
    pub fn open(path: &Path, kernels: &[Kernel]) -> Result<HostLibrary, RuntimeError> {
        let file = path.display().to_string();
        // SAFETY: loading runs the library's initialisers. `host.so` is zambac's generated
        // code, whose checksum the engine loader has just verified against the manifest.
        let lib = unsafe { Library::new(path) }
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
        Ok(HostLibrary { fns, _lib: lib })
    }
}
