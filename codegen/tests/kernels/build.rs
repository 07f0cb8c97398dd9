//! The compile entry points as a whole: every kind builds for host and GPU, output is
//! deterministic, dumps are written, bad kernels are typed errors.

use super::cases;
use std::time::Instant;
use zambac_codegen::toolchain;
use zambac_codegen::{CodegenError, GpuTarget, HostTarget, compile_gpu, compile_host};
use zambac_engine::Elem;
use zambac_engine::{BinOp, Kernel, KernelKind};

#[test]
fn every_kind_compiles_into_one_host_library_exporting_its_symbols() {
    let kernels = cases::all();
    let dumps = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let library = compile_host(&kernels, &HostTarget::native(), Some(dumps.path()), None)
        .unwrap_or_else(|error| panic!("{error}"));
    eprintln!(
        "compile_host: {} kernels in {:?}",
        kernels.len(),
        started.elapsed()
    );
    assert_eq!(&library.bytes[..4], b"\x7fELF");
    for kernel in &kernels {
        for suffix in ["mlir", "lowered.mlir", "ll"] {
            let path = dumps.path().join(format!("{}.{suffix}", kernel.symbol));
            assert!(path.is_file(), "missing dump {}", path.display());
        }
    }
}

/// The compile cache: a second compile of the same kernels takes every object from it and
/// links the same library; objects of another compiler, or of another target, are not
/// reused; clearing empties it.
#[test]
fn the_compile_cache_serves_unchanged_kernels_and_nothing_else() {
    use zambac_codegen::KernelCache;
    let kernels: Vec<Kernel> = cases::all().into_iter().take(6).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let native = HostTarget::native();
    let cache = KernelCache::new(dir.path(), "compiler A");
    let cold = compile_host(&kernels, &native, None, Some(&cache)).expect("cold");
    assert_eq!(cold.cached, 0);
    let warm = compile_host(&kernels, &native, None, Some(&cache)).expect("warm");
    assert_eq!(warm.cached, kernels.len());
    assert!(
        warm.bytes == cold.bytes,
        "a cached build links another library"
    );
    let uncached = compile_host(&kernels, &native, None, None).expect("uncached");
    assert!(uncached.bytes == cold.bytes);
    let other_compiler = KernelCache::new(dir.path(), "compiler B");
    let b = compile_host(&kernels, &native, None, Some(&other_compiler)).expect("B");
    assert_eq!(b.cached, 0, "another compiler's objects were reused");
    let baseline = HostTarget {
        cpu: "x86-64".into(),
        features: "+sse2".into(),
    };
    let t = compile_host(&kernels, &baseline, None, Some(&cache)).expect("other target");
    assert_eq!(t.cached, 0, "another target's objects were reused");
    assert!(cache.usage().0 >= 3 * kernels.len() as u64);
    assert!(cache.clear().expect("clear") > 0);
    assert_eq!(cache.usage().0, 0);
    // Dumps need every intermediate form: the cache is bypassed.
    let dumps = tempfile::tempdir().expect("tempdir");
    let dumped = compile_host(&kernels, &native, Some(dumps.path()), Some(&cache)).expect("dump");
    assert_eq!(dumped.cached, 0);
}

#[test]
fn the_same_kernels_give_byte_identical_libraries_and_ptx() {
    let kernels = cases::all();
    let host = || compile_host(&kernels, &HostTarget::native(), None, None).expect("host");
    assert!(
        host().bytes == host().bytes,
        "host.so differs between two builds"
    );
    let target = GpuTarget::sm_90(toolchain::libdevice());
    let gpu = || compile_gpu(&kernels[..6], &target, None).expect("gpu").ptx;
    assert_eq!(gpu(), gpu(), "PTX differs between two builds");
}

fn kernel(symbol: &str, kind: KernelKind) -> Kernel {
    Kernel {
        symbol: symbol.into(),
        kind,
    }
}

#[test]
fn invalid_kernels_are_typed_errors_naming_the_kernel() {
    let target = HostTarget::native();
    let bad_groups = kernel(
        "norm",
        KernelKind::RmsNorm {
            d: 10,
            groups: 3,
            eps: 1e-5,
        },
    );
    let error = compile_host(&[bad_groups], &target, None, None).expect_err("3 does not divide 10");
    assert!(
        matches!(&error, CodegenError::InvalidKernel { symbol, reason } if symbol == "norm" && reason.contains("divide")),
        "{error}"
    );
    let gqa = KernelKind::AttentionDecode {
        heads: 6,
        kv_heads: 4,
        head_dim: 8,
        scale: 1.0,
        kv: Elem::F32,
        splits: 2,
    };
    let error =
        compile_host(&[kernel("attn", gqa)], &target, None, None).expect_err("6 heads, 4 kv");
    assert!(
        matches!(error, CodegenError::InvalidKernel { .. }),
        "{error}"
    );
    let add = KernelKind::Binary {
        op: BinOp::Add,
        n: 4,
        b_rows: true,
    };
    let error =
        compile_host(&[kernel("1st", add.clone())], &target, None, None).expect_err("symbol");
    assert!(
        matches!(error, CodegenError::InvalidKernel { .. }),
        "{error}"
    );
    let twice = [kernel("add", add.clone()), kernel("add", add)];
    let error = compile_host(&twice, &target, None, None).expect_err("duplicate");
    assert!(
        matches!(error, CodegenError::DuplicateSymbol(ref s) if s == "add"),
        "{error}"
    );
    let i64_weights = KernelKind::Gemv {
        k: 4,
        rows: vec![2],
        elem: Elem::I64,
        accumulate: false,
        row_stride: None,
    };
    let error = compile_gpu(&[kernel("g", i64_weights)], &GpuTarget::sm_90(None), None)
        .expect_err("i64 weights");
    assert!(
        matches!(error, CodegenError::InvalidKernel { .. }),
        "{error}"
    );
}

#[test]
fn an_empty_kernel_list_gives_an_empty_library_and_module() {
    let library = compile_host(&[], &HostTarget::native(), None, None).expect("empty host.so");
    assert_eq!(&library.bytes[..4], b"\x7fELF");
    let module = compile_gpu(&[], &GpuTarget::sm_90(None), None).expect("empty module");
    assert!(module.kernels.is_empty() && module.ptx.is_empty());
}
