//! The runtime links no compiler: neither its dependency graph nor the `zambac-run` binary
//! contains MLIR, LLVM, the frontend or the IR. Each check has a positive control, so a
//! check that could not see a compiler cannot pass by accident.

use std::path::Path;
use std::process::Command;

/// Packages that would mean the runtime pulls in the compiler.
const COMPILER_PACKAGES: [&str; 8] = [
    "mlir-sys",
    "llvm-sys",
    "melior",
    "inkwell",
    "zambac-codegen",
    "zambac-frontend",
    "zambac-ir",
    "zambac-passes",
];

/// Symbol-name fragments that only MLIR or LLVM code carries: C API entry points and the
/// Itanium-mangled `llvm::` / `mlir::` namespaces.
const COMPILER_SYMBOLS: [&[u8]; 4] = [
    b"mlirContextCreate",
    b"LLVMContextCreate",
    b"_ZN4llvm",
    b"_ZN4mlir",
];

/// The packages `package` depends on in normal (non-dev, non-build) builds.
fn normal_dependencies(package: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(root)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

fn names(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn the_runtime_depends_on_no_compiler_crate() {
    let runtime = normal_dependencies("zambac-runtime");
    let found: Vec<&str> = names(&runtime)
        .into_iter()
        .filter(|n| COMPILER_PACKAGES.contains(n))
        .collect();
    assert!(found.is_empty(), "zambac-runtime depends on {found:?}");
    assert!(names(&runtime).contains(&"zambac-engine"));
    // Control: the same query sees the compiler where it is.
    let codegen = normal_dependencies("zambac-codegen");
    for p in ["melior", "inkwell", "mlir-sys", "llvm-sys"] {
        assert!(
            names(&codegen).contains(&p),
            "cargo tree misses {p} in codegen"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_zambac_run_binary_has_no_mlir_or_llvm_symbols() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_zambac-run")).expect("reading zambac-run");
    for s in COMPILER_SYMBOLS {
        assert!(
            !contains(&bin, s),
            "zambac-run contains `{}`",
            String::from_utf8_lossy(s)
        );
    }
    // Control: the same scan finds LLVM in LLVM's own library, where the setup script
    // installed it.
    let llvm = Path::new("/usr/lib/llvm-22/lib/libLLVMCore.a");
    if let Ok(bytes) = std::fs::read(llvm) {
        assert!(
            contains(&bytes, b"_ZN4llvm"),
            "the scan misses LLVM symbols"
        );
        assert!(contains(&bytes, b"LLVMContextCreate"));
    }
}
