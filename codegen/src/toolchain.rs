//! Finding NVIDIA's `ptxas` and `libdevice.10.bc`, and checking PTX with `ptxas`.
//!
//! Neither ships with LLVM/MLIR: they come from the PyPI wheels `nvidia-cuda-nvcc` (CUDA 13,
//! `nvidia/cu13/...`) or `nvidia-cuda-nvcc-cu12` (`nvidia/cuda_nvcc/...`), or from a CUDA
//! toolkit. libdevice is needed whenever a kernel uses `math.exp` & co., which NVVM lowers to
//! `__nv_*` calls; `ptxas` is the authority on whether generated PTX assembles, and how many
//! registers and spills each kernel costs. Lookups return `Option` because a machine without
//! either is normal (the GPU path is then skipped or unchecked), never an error.

use crate::error::CodegenError;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Environment variable that names the `ptxas` to use, overriding every other lookup.
pub const PTXAS_ENV: &str = "ZAMBAC_PTXAS";
/// Environment variable that names the `libdevice.10.bc` to use, overriding every other lookup.
pub const LIBDEVICE_ENV: &str = "ZAMBAC_LIBDEVICE";

const LIBDEVICE_IN_CUDA_ROOT: &str = "nvvm/libdevice/libdevice.10.bc";

/// Locates `ptxas`: `$ZAMBAC_PTXAS`, then `PATH`, then the `nvidia` Python package.
pub fn ptxas() -> Option<PathBuf> {
    from_env(PTXAS_ENV)
        .or_else(|| find_on_path("ptxas"))
        .or_else(|| nvidia_package_file("bin/ptxas"))
}

/// Locates `libdevice.10.bc`: `$ZAMBAC_LIBDEVICE`, then next to a `ptxas` found by [`ptxas`]
/// (a CUDA root holds both `bin/ptxas` and `nvvm/libdevice/`), then the `nvidia` Python package.
pub fn libdevice() -> Option<PathBuf> {
    from_env(LIBDEVICE_ENV)
        .or_else(|| {
            let cuda_root = ptxas()?
                .canonicalize()
                .ok()?
                .parent()?
                .parent()?
                .to_path_buf();
            existing_file(cuda_root.join(LIBDEVICE_IN_CUDA_ROOT))
        })
        .or_else(|| nvidia_package_file(LIBDEVICE_IN_CUDA_ROOT))
}

fn from_env(variable: &str) -> Option<PathBuf> {
    existing_file(PathBuf::from(std::env::var_os(variable)?))
}

fn existing_file(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

/// Searches `PATH` like a shell would, without spawning anything.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
}

/// Looks for `<dir>/<relative>` in every `<dir>` directly under the `nvidia` Python package,
/// which covers both the CUDA 13 (`cu13/`) and the CUDA 12 (`cuda_nvcc/`) wheel layouts.
/// Directories are visited in sorted order so the answer does not depend on `readdir`.
fn nvidia_package_file(relative: &str) -> Option<PathBuf> {
    nvidia_package_roots().iter().find_map(|root| {
        let mut children: Vec<PathBuf> = std::fs::read_dir(root)
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .collect();
        children.sort();
        children
            .into_iter()
            .find_map(|child| existing_file(child.join(relative)))
    })
}

/// The directories of the `nvidia` namespace package, asked of `python3` once per process
/// (starting Python costs ~0.2 s; the answer does not change during a compilation).
fn nvidia_package_roots() -> &'static [PathBuf] {
    static ROOTS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import nvidia\nfor p in nvidia.__path__: print(p)"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|roots| roots.lines().map(PathBuf::from).collect())
            .unwrap_or_default()
    })
}

/// What `ptxas -v` reported for one PTX module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// The `-arch` the PTX was assembled for.
    pub arch: String,
    /// One entry per function `ptxas` described, in its order.
    pub functions: Vec<FunctionResources>,
    /// The full `ptxas` output, for build reports.
    pub log: String,
}

/// Resource usage of one function, as `ptxas -v` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionResources {
    /// The PTX symbol name.
    pub name: String,
    /// Whether it is a kernel (`.entry`) rather than a device function.
    pub is_entry: bool,
    /// Registers per thread.
    pub registers: u32,
    /// Bytes of per-thread stack.
    pub stack_frame_bytes: u64,
    /// Bytes stored to local memory because registers ran out.
    pub spill_store_bytes: u64,
    /// Bytes loaded back from those spills.
    pub spill_load_bytes: u64,
    /// Bytes of static shared memory per block.
    pub shared_bytes: u64,
}

impl PtxasReport {
    /// Spill traffic summed over all functions; zambac requires this to be zero.
    pub fn total_spill_bytes(&self) -> u64 {
        self.functions
            .iter()
            .map(|function| function.spill_store_bytes + function.spill_load_bytes)
            .sum()
    }

    /// The kernels (`.entry` functions) only.
    pub fn kernels(&self) -> impl Iterator<Item = &FunctionResources> {
        self.functions.iter().filter(|function| function.is_entry)
    }
}

/// Assembles `ptx` with `ptxas -arch=<arch> -v` (found by [`ptxas`]) and returns the
/// per-function resources it reports. The cubin is written to a temporary directory and
/// discarded: this is a check, the engine ships PTX.
pub fn ptxas_check(ptx: &str, arch: &str) -> Result<PtxasReport, CodegenError> {
    let ptxas = ptxas().ok_or(CodegenError::ToolNotFound {
        tool: "ptxas",
        hint: "set ZAMBAC_PTXAS, put ptxas on PATH, or `pip install nvidia-cuda-nvcc`",
    })?;
    let directory =
        tempfile::tempdir().map_err(|error| CodegenError::io("temporary directory", error))?;
    let input = directory.path().join("kernels.ptx");
    let output = directory.path().join("kernels.cubin");
    std::fs::write(&input, ptx).map_err(|error| CodegenError::io(&input, error))?;
    let mut command = Command::new(&ptxas);
    command
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg("-o")
        .arg(&output)
        .arg(&input);
    let finished = run(&mut command)?;
    Ok(PtxasReport {
        arch: arch.to_string(),
        functions: parse_ptxas_log(&finished),
        log: finished,
    })
}

/// Runs a command to completion; a non-zero exit becomes [`CodegenError::ToolFailed`] with
/// everything the tool printed. Returns stderr followed by stdout.
pub(crate) fn run(command: &mut Command) -> Result<String, CodegenError> {
    let printed = command_line(command);
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().map_err(|source| CodegenError::Spawn {
        command: printed.clone(),
        source,
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stderr),
        String::from_utf8_lossy(&stdout)
    );
    if status.success() {
        Ok(text)
    } else {
        Err(CodegenError::ToolFailed {
            command: printed,
            status: status.to_string(),
            output: text,
        })
    }
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses the `ptxas -v` lines:
///
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 8 registers, used 0 barriers
/// ```
fn parse_ptxas_log(log: &str) -> Vec<FunctionResources> {
    let mut functions: Vec<FunctionResources> = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    for line in log.lines() {
        let line = line.trim();
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            entries.extend(rest.split('\'').next().map(str::to_string));
        } else if let Some(name) = line.split("Function properties for ").nth(1) {
            let name = name.trim().to_string();
            functions.push(FunctionResources {
                is_entry: entries.contains(&name),
                name,
                ..FunctionResources::default()
            });
        } else if let Some(current) = functions.last_mut() {
            if line.contains("bytes stack frame") {
                current.stack_frame_bytes = number_before(line, "bytes stack frame");
                current.spill_store_bytes = number_before(line, "bytes spill stores");
                current.spill_load_bytes = number_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains(" registers") {
                current.registers =
                    u32::try_from(number_before(line, "registers")).unwrap_or(u32::MAX);
                current.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    functions
}

/// The integer written just before `label` in `line` (`"... 12 bytes spill stores"`), or 0.
fn number_before(line: &str, label: &str) -> u64 {
    line.split(label)
        .next()
        .filter(|head| head.len() < line.len())
        .and_then(|head| head.split_whitespace().last())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registers_spills_and_stack_per_function() {
        let log = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'saxpy_kernel' for 'sm_90'\n\
            ptxas info    : Function properties for saxpy_kernel\n\
            \x20   16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
            ptxas info    : Used 18 registers, used 1 barriers, 128 bytes smem, 368 bytes cmem[0]\n\
            ptxas info    : Function properties for __nv_expf\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n";
        let functions = parse_ptxas_log(log);
        assert_eq!(
            functions,
            vec![
                FunctionResources {
                    name: "saxpy_kernel".into(),
                    is_entry: true,
                    registers: 18,
                    stack_frame_bytes: 16,
                    spill_store_bytes: 8,
                    spill_load_bytes: 4,
                    shared_bytes: 128,
                },
                FunctionResources {
                    name: "__nv_expf".into(),
                    ..FunctionResources::default()
                },
            ]
        );
    }

    #[test]
    fn a_line_without_the_label_reads_as_zero() {
        assert_eq!(number_before("Used 8 registers", "bytes spill loads"), 0);
        assert_eq!(number_before("Used 8 registers", "registers"), 8);
    }
}
