//! Linking host object files into the engine's `host.so` with the system C compiler driver.
//!
//! The engine must be byte-identical for identical inputs, so the link is made deterministic:
//! no build-id note (`--build-id=none`; its default hash would still be stable, but a
//! toolchain configured for `uuid` would not be), object files written under fixed names in a
//! fresh directory and passed in a fixed order, and the linker run in that directory with
//! relative paths so no temporary path reaches the output.

use crate::error::CodegenError;
use crate::toolchain::{find_on_path, run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the C compiler driver used to link; otherwise `cc` on `PATH`.
pub const CC_ENV: &str = "ZAMBAC_CC";

/// The flags given before `-o` and the inputs.
pub const LINK_FLAGS: &[&str] = &[
    "-shared",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
    "-Wl,--hash-style=gnu",
];

/// The libraries given after the inputs (so `--as-needed` toolchains keep them): glibc's
/// libmvec, recorded only when a kernel calls it ([`crate::kernels::VectorMath::Libmvec`]),
/// and libm, because LLVM lowers some math intrinsics (`llvm.exp.f32`, …) to libm calls
/// on x86-64.
pub const LINK_LIBRARIES: &[&str] = &["-Wl,--as-needed", "-lmvec", "-Wl,--no-as-needed", "-lm"];

/// Links `objects` (ELF relocatables, position-independent, e.g.
/// [`crate::llvm::HostObject::object`]) into the shared library `output`.
pub fn link_shared_library(objects: &[&[u8]], output: &Path) -> Result<(), CodegenError> {
    let cc = c_compiler()?;
    let directory =
        tempfile::tempdir().map_err(|error| CodegenError::io("temporary directory", error))?;
    let mut inputs = Vec::with_capacity(objects.len());
    for (index, object) in objects.iter().enumerate() {
        let name = format!("k{index}.o");
        let path = directory.path().join(&name);
        std::fs::write(&path, object).map_err(|error| CodegenError::io(&path, error))?;
        inputs.push(name);
    }
    let linked = "host.so";
    let mut command = Command::new(&cc);
    command
        .current_dir(directory.path())
        .args(LINK_FLAGS)
        .arg("-o")
        .arg(linked)
        .args(&inputs)
        .args(LINK_LIBRARIES);
    run(&mut command)?;
    let produced = directory.path().join(linked);
    std::fs::copy(&produced, output).map_err(|error| CodegenError::io(output, error))?;
    Ok(())
}

fn c_compiler() -> Result<PathBuf, CodegenError> {
    let not_found = CodegenError::ToolNotFound {
        tool: "cc",
        hint: "install a C toolchain (e.g. `apt-get install gcc`) or set ZAMBAC_CC",
    };
    match std::env::var_os(CC_ENV) {
        Some(path) => {
            let path = PathBuf::from(path);
            if path.is_file() {
                Ok(path)
            } else {
                find_on_path(&path.to_string_lossy()).ok_or(not_found)
            }
        }
        None => find_on_path("cc").ok_or(not_found),
    }
}
