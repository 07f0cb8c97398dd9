//! Compiling kernels into a `host.so`, calling them through the uniform C ABI, and comparing
//! their outputs with the reference math.
//!
//! Every check runs a kernel twice on fresh copies of its inputs: once over the whole grid
//! in one call, and once split into two calls at an uneven point, which proves that a grid
//! index does not depend on which call computes its neighbours. Each check does so for the
//! host schedule and for the GPU's (one grid index per iteration), compiled for the host, so
//! the GPU kernels' arithmetic is tested on a machine without a GPU.

use libloading::Library;
use zambac_codegen::kernels::{Target, Variant, VectorMath, build_module_variant};
use zambac_codegen::{
    HostTarget, MlirContext, compile_host, compile_host_object, link_shared_library, lower_to_host,
};
use zambac_engine::{Kernel, KernelKind};

/// `void zk_<symbol>(void *const *bufs, const int64_t *ints, int64_t begin, int64_t end)`.
type Entry = unsafe extern "C" fn(*const *mut u8, *const i64, i64, i64);

/// One buffer view of a launch.
#[derive(Clone, Debug, PartialEq)]
pub enum Buf {
    F32(Vec<f32>),
    /// bf16 bit patterns.
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    I64(Vec<i64>),
}

impl Buf {
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Buf::F32(v) => v.as_mut_ptr().cast(),
            Buf::Bf16(v) | Buf::F16(v) => v.as_mut_ptr().cast(),
            Buf::I64(v) => v.as_mut_ptr().cast(),
        }
    }

    /// The f32 contents (panics on other types: a test bug).
    pub fn f32(&self) -> &[f32] {
        match self {
            Buf::F32(v) => v,
            other => panic!("expected an f32 buffer, found {other:?}"),
        }
    }

    /// The values of an f32 or bf16 buffer as f32 (panics on other types: a test bug).
    pub fn values(&self) -> Vec<f32> {
        match self {
            Buf::F32(v) => v.clone(),
            Buf::Bf16(v) => v
                .iter()
                .map(|&b| f32::from_bits(u32::from(b) << 16))
                .collect(),
            other => panic!("expected an f32 or bf16 buffer, found {other:?}"),
        }
    }
}

/// A loaded `host.so`.
pub struct Lib {
    library: Library,
    _directory: tempfile::TempDir,
}

impl Lib {
    /// Compiles `kernels` for this machine and loads the library.
    pub fn build(kernels: &[Kernel]) -> Lib {
        Lib::build_for(kernels, &HostTarget::native(), None)
    }

    /// Compiles `kernels` for `target` (dumps into `dumps`) and loads the library, which
    /// must run on this machine.
    pub fn build_for(
        kernels: &[Kernel],
        target: &HostTarget,
        dumps: Option<&std::path::Path>,
    ) -> Lib {
        let compiled = compile_host(kernels, target, dumps, None)
            .unwrap_or_else(|error| panic!("compile_host failed: {error}"));
        Lib::load(&compiled.bytes)
    }

    /// Compiles `kernels` for this machine with the GPU's schedule (one grid index per
    /// iteration), from the crate's public stages, and loads the library.
    pub fn build_gpu_schedule(kernels: &[Kernel]) -> Lib {
        Lib::build_gpu_schedule_variant(kernels, Variant::Single)
    }

    /// [`Lib::build_gpu_schedule`] of a form of the kernels (e.g. a Gemv's batched form).
    pub fn build_gpu_schedule_variant(kernels: &[Kernel], variant: Variant) -> Lib {
        let mlir = MlirContext::new();
        let objects: Vec<Vec<u8>> = kernels
            .iter()
            .map(|kernel| {
                let mut module = build_module_variant(
                    mlir.context(),
                    kernel,
                    Target::HostWithGpuSchedule,
                    VectorMath::Ops,
                    variant,
                )
                .unwrap_or_else(|error| panic!("{error}"));
                lower_to_host(&mlir, &mut module).unwrap_or_else(|error| panic!("{error}"));
                compile_host_object(&mlir, &module, &HostTarget::native())
                    .unwrap_or_else(|error| panic!("{error}"))
                    .object
            })
            .collect();
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("host.so");
        let inputs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
        link_shared_library(&inputs, &path).unwrap_or_else(|error| panic!("{error}"));
        Lib::load(&std::fs::read(&path).expect("read host.so"))
    }

    fn load(bytes: &[u8]) -> Lib {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("host.so");
        std::fs::write(&path, bytes).expect("write host.so");
        // SAFETY: the library was just generated; loading it runs no initialisers of ours.
        let library = unsafe { Library::new(&path) }.expect("dlopen host.so");
        Lib {
            library,
            _directory: directory,
        }
    }

    /// Calls `zk_<symbol>` over `[begin, end)`.
    pub fn call(&self, symbol: &str, bufs: &mut [Buf], ints: &[i64], begin: usize, end: usize) {
        let name = format!("zk_{symbol}");
        // SAFETY: every `zk_` symbol has the `Entry` signature; the buffers are sized by the
        // caller for the kernel's views, and outlive the call.
        unsafe {
            let entry = *self
                .library
                .get::<Entry>(name.as_bytes())
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            let pointers: Vec<*mut u8> = bufs.iter_mut().map(Buf::as_mut_ptr).collect();
            entry(pointers.as_ptr(), ints.as_ptr(), begin as i64, end as i64);
        }
    }

    /// Calls `zk_<symbol>` with views given as raw pointers (so that two views can alias).
    pub fn call_raw(
        &self,
        symbol: &str,
        views: &[*mut u8],
        ints: &[i64],
        begin: usize,
        end: usize,
    ) {
        let name = format!("zk_{symbol}");
        // SAFETY: as in `call`; the caller keeps the pointed-to buffers alive and sized.
        unsafe {
            let entry = *self
                .library
                .get::<Entry>(name.as_bytes())
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            entry(views.as_ptr(), ints.as_ptr(), begin as i64, end as i64);
        }
    }

    /// Runs the kernel on copies of `bufs` over `[0, grid)` whole and split in two, and
    /// returns both results.
    pub fn run_both(&self, symbol: &str, bufs: &[Buf], ints: &[i64], grid: usize) -> [Vec<Buf>; 2] {
        let mut whole = bufs.to_vec();
        self.call(symbol, &mut whole, ints, 0, grid);
        let mut split = bufs.to_vec();
        let cut = (grid * 2).div_ceil(3).min(grid);
        self.call(symbol, &mut split, ints, cut, grid);
        self.call(symbol, &mut split, ints, 0, cut);
        [whole, split]
    }
}

/// Compiles one kernel with the host schedule and with the GPU's, runs each whole and split,
/// and compares the views listed in `expected` (index, values) with `rtol`.
pub fn check(
    kind: KernelKind,
    bufs: &[Buf],
    ints: &[i64],
    grid: usize,
    expected: &[(usize, Vec<f32>)],
    rtol: f32,
) {
    check_with(kind, bufs, ints, grid, expected, |got, want, label| {
        assert_close(got, want, rtol, label)
    });
}

/// [`check`] with its own comparison of each expected view.
pub fn check_with(
    kind: KernelKind,
    bufs: &[Buf],
    ints: &[i64],
    grid: usize,
    expected: &[(usize, Vec<f32>)],
    compare: impl Fn(&[f32], &[f32], &str),
) {
    let kernel = Kernel {
        symbol: "k".into(),
        kind,
    };
    let kernels = std::slice::from_ref(&kernel);
    let schedules = [
        ("host", Lib::build(kernels)),
        ("GPU schedule", Lib::build_gpu_schedule(kernels)),
    ];
    for (schedule, lib) in &schedules {
        for (run, outputs) in lib.run_both("k", bufs, ints, grid).iter().enumerate() {
            for (view, want) in expected {
                let label = format!(
                    "{:?} view {view} ({schedule}, {})",
                    kernel.kind,
                    ["whole", "split"][run]
                );
                compare(&outputs[*view].values(), want, &label);
            }
        }
    }
}

/// `|got − want| ≤ atol · max|want|` elementwise: for outputs whose error is set by the
/// tensor's scale rather than each element's (weighted means that cancel).
pub fn assert_within_scale(got: &[f32], want: &[f32], atol: f32, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol * scale,
            "{label}: element {i}: got {g}, want {w} (|Δ| {} > {atol} · {scale})",
            (g - w).abs()
        );
    }
}

/// `|got − want| ≤ rtol · max(|want|, floor)` elementwise, with `floor` a thousandth of the
/// largest expected magnitude (so entries that cancel to ~0 are judged on the tensor's scale).
pub fn assert_close(got: &[f32], want: &[f32], rtol: f32, label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    let floor = (scale * 1e-3).max(f32::MIN_POSITIVE);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = rtol * w.abs().max(floor);
        assert!(
            (g - w).abs() <= bound || (g.is_nan() && w.is_nan()),
            "{label}: element {i}: got {g}, want {w} (|Δ| {} > {bound})",
            (g - w).abs()
        );
    }
}

/// Deterministic values in `[lo, hi)`.
pub fn random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// The f32 value of normal f16 bits.
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1F) - 15;
    let mantissa = f32::from(bits & 0x3FF) / 1024.0;
    sign * (1.0 + mantissa) * 2f32.powi(exponent)
}

/// bf16 bits of `x` (round to nearest even) and the f32 they stand for.
pub fn to_bf16(x: &[f32]) -> (Vec<u16>, Vec<f32>) {
    x.iter()
        .map(|v| {
            let bits = v.to_bits();
            let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16;
            (rounded as u16, f32::from_bits(rounded << 16))
        })
        .unzip()
}
