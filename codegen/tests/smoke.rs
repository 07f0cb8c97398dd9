//! Proves the whole toolchain on every run: melior-built kernels lower to a host shared
//! library that computes the right numbers, the same kernels lower to PTX that `ptxas`
//! accepts for sm_90 without spills, inkwell's NVPTX path works, and the output is
//! byte-for-byte reproducible.
//!
//! When `ptxas` (or libdevice) is not installed, the GPU tests say so on stderr and still
//! check the PTX text.

mod support;

use libloading::Library;
use std::path::Path;
use std::time::Instant;
use support::{MemRef1d, VECTOR_KERNEL, elementwise_module, sample};
use zambac_codegen::inkwell::AddressSpace;
use zambac_codegen::inkwell::context::Context;
use zambac_codegen::inkwell::module::Linkage;
use zambac_codegen::melior::ir::Module;
use zambac_codegen::toolchain::{self, PtxasReport};
use zambac_codegen::{
    GpuBinary, GpuTarget, HostTarget, MlirContext, compile_host_object, compile_ptx,
    link_shared_library, lower_to_host, lower_to_ptx,
};

type Saxpy = unsafe extern "C" fn(f32, *mut MemRef1d, *mut MemRef1d);
type Unary = unsafe extern "C" fn(*mut MemRef1d, *mut MemRef1d);

/// Lowers `module` (untouched) for the host, compiles it and links `host.so` in `directory`.
fn build_host_library(
    mlir: &MlirContext,
    module: &Module,
    directory: &Path,
) -> (Vec<u8>, std::path::PathBuf) {
    let mut host = mlir.clone_module(module);
    lower_to_host(mlir, &mut host).expect("host lowering");
    let object = compile_host_object(mlir, &host, &HostTarget::native()).expect("object");
    let library = directory.join("host.so");
    link_shared_library(&[&object.object], &library).expect("link host.so");
    (object.object, library)
}

fn lower_for_sm_90(mlir: &MlirContext, module: &Module) -> Vec<GpuBinary> {
    let mut device = mlir.clone_module(module);
    lower_to_ptx(mlir, &mut device, &GpuTarget::sm_90(toolchain::libdevice())).expect("PTX")
}

/// Runs ptxas when present and requires zero spills; otherwise explains the skip.
fn assemble_if_possible(name: &str, ptx: &str, needs_libdevice: bool) -> Option<PtxasReport> {
    if toolchain::ptxas().is_none() {
        eprintln!("skip: ptxas not found; {name} checked as PTX text only");
        return None;
    }
    if needs_libdevice && toolchain::libdevice().is_none() {
        eprintln!("skip: libdevice.10.bc not found; {name} calls __nv_* and cannot assemble");
        return None;
    }
    let report = toolchain::ptxas_check(ptx, "sm_90").expect("ptxas assembles the PTX");
    assert!(
        report.kernels().count() >= 1,
        "{name}: no kernel in\n{}",
        report.log
    );
    assert_eq!(
        report.total_spill_bytes(),
        0,
        "{name} spills:\n{}",
        report.log
    );
    for kernel in report.kernels() {
        assert!(
            kernel.registers > 0,
            "{name}: no register count in\n{}",
            report.log
        );
        eprintln!(
            "ptxas {name}: {} uses {} registers, {} bytes stack, 0 spills",
            kernel.name, kernel.registers, kernel.stack_frame_bytes
        );
    }
    Some(report)
}

fn assert_is_sm_90_ptx(binary: &GpuBinary) {
    assert!(binary.ptx.contains(".target sm_90"), "{}", binary.ptx);
    assert!(
        binary.ptx.contains(&format!(".entry {}(", binary.name)),
        "no .entry {} in\n{}",
        binary.name,
        binary.ptx
    );
}

#[test]
fn host_saxpy_and_silu_built_with_melior_compute_the_rust_reference_through_a_shared_library() {
    let started = Instant::now();
    let mlir = MlirContext::new();
    let module = elementwise_module(mlir.context());
    mlir.verify(&module, "as built")
        .expect("melior-built module verifies");
    let directory = tempfile::tempdir().expect("tempdir");
    let (_, library_path) = build_host_library(&mlir, &module, directory.path());
    let built = started.elapsed();

    // SAFETY: the library was just produced from the functions above; their C interfaces
    // take exactly these argument types, and every descriptor outlives its call.
    unsafe {
        let library = Library::new(&library_path).expect("dlopen host.so");
        let saxpy = *library
            .get::<Saxpy>(b"_mlir_ciface_saxpy")
            .expect("saxpy symbol");
        let silu = *library
            .get::<Unary>(b"_mlir_ciface_silu")
            .expect("silu symbol");

        let n = 1003;
        let a = 1.7f32;
        let mut x = sample(n, 1);
        let y0 = sample(n, 2);
        let mut y = y0.clone();
        saxpy(a, &mut MemRef1d::new(&mut x), &mut MemRef1d::new(&mut y));
        for i in 0..n {
            assert_eq!(y[i], a * x[i] + y0[i], "saxpy element {i}");
        }

        let mut out = vec![0.0f32; n];
        silu(&mut MemRef1d::new(&mut x), &mut MemRef1d::new(&mut out));
        for i in 0..n {
            let expected = x[i] / (1.0 + (-x[i]).exp());
            let relative = (out[i] - expected).abs() / expected.abs().max(f32::MIN_POSITIVE);
            assert!(
                relative <= 1e-6,
                "silu element {i}: {} vs {expected}",
                out[i]
            );
        }
    }
    eprintln!(
        "host saxpy+silu: lower+O3+object+link {built:?}, total with run {:?}",
        started.elapsed()
    );
}

#[test]
fn gpu_lowering_of_the_melior_kernels_gives_sm_90_ptx_that_ptxas_assembles_without_spills() {
    let started = Instant::now();
    let mlir = MlirContext::new();
    let module = elementwise_module(mlir.context());
    let binaries = lower_for_sm_90(&mlir, &module);
    let lowered = started.elapsed();
    let names: Vec<&str> = binaries.iter().map(|binary| binary.name.as_str()).collect();
    assert_eq!(names, ["saxpy_kernel", "silu_kernel"]);
    for binary in &binaries {
        assert_is_sm_90_ptx(binary);
        assemble_if_possible(&binary.name, &binary.ptx, binary.name == "silu_kernel");
    }
    eprintln!(
        "gpu saxpy+silu: lowering to PTX {lowered:?}, total with ptxas {:?}",
        started.elapsed()
    );
}

#[test]
fn vector_kernel_parsed_from_text_runs_on_the_host_and_assembles_for_sm_90() {
    let started = Instant::now();
    let mlir = MlirContext::new();
    let module = mlir
        .parse_module(VECTOR_KERNEL)
        .expect("vector kernel parses");
    let directory = tempfile::tempdir().expect("tempdir");
    let (_, library_path) = build_host_library(&mlir, &module, directory.path());

    // SAFETY: as in the host test; `vexp_add` takes two rank-1 f32 memrefs.
    unsafe {
        let library = Library::new(&library_path).expect("dlopen host.so");
        let vexp_add = *library
            .get::<Unary>(b"_mlir_ciface_vexp_add")
            .expect("symbol");
        let n = 8 * 125;
        let mut x = sample(n, 3);
        let y0 = sample(n, 4);
        let mut y = y0.clone();
        vexp_add(&mut MemRef1d::new(&mut x), &mut MemRef1d::new(&mut y));
        for i in 0..n {
            let expected = x[i].exp() + y0[i];
            let relative = (y[i] - expected).abs() / expected.abs().max(f32::MIN_POSITIVE);
            assert!(relative <= 1e-6, "element {i}: {} vs {expected}", y[i]);
        }
    }

    let binaries = lower_for_sm_90(&mlir, &module);
    assert_eq!(binaries.len(), 1);
    assert_is_sm_90_ptx(&binaries[0]);
    assemble_if_possible("vexp_add_kernel", &binaries[0].ptx, true);
    eprintln!("vector kernel: host run + PTX {:?}", started.elapsed());
}

#[test]
fn inkwell_builds_an_nvptx_kernel_that_ptxas_assembles() {
    let started = Instant::now();
    let llvm = Context::create();
    let module = llvm.create_module("scale");
    let f32 = llvm.f32_type();
    let i32 = llvm.i32_type();
    let global = llvm.ptr_type(AddressSpace::from(1u16));
    let special = |name: &str| module.add_function(name, i32.fn_type(&[], false), None);
    let tid = special("llvm.nvvm.read.ptx.sreg.tid.x");
    let ctaid = special("llvm.nvvm.read.ptx.sreg.ctaid.x");
    let ntid = special("llvm.nvvm.read.ptx.sreg.ntid.x");
    let exp2 = module.add_function("llvm.exp2.f32", f32.fn_type(&[f32.into()], false), None);

    let kernel_type = llvm
        .void_type()
        .fn_type(&[global.into(), f32.into()], false);
    let kernel = module.add_function("scale_exp2", kernel_type, Some(Linkage::External));
    kernel.set_call_conventions(71);
    let builder = llvm.create_builder();
    builder.position_at_end(llvm.append_basic_block(kernel, "entry"));
    let call = |function, name| {
        builder
            .build_call(function, &[], name)
            .expect("call")
            .try_as_basic_value()
            .basic()
            .expect("value")
            .into_int_value()
    };
    let (thread, block, width) = (call(tid, "tid"), call(ctaid, "ctaid"), call(ntid, "ntid"));
    let base = builder.build_int_mul(block, width, "base").expect("mul");
    let index = builder.build_int_add(base, thread, "i").expect("add");
    let wide = builder
        .build_int_z_extend(index, llvm.i64_type(), "i64")
        .expect("zext");
    let x = kernel.get_nth_param(0).expect("x").into_pointer_value();
    let a = kernel.get_nth_param(1).expect("a").into_float_value();
    // SAFETY (of the IR, not Rust): the launch covers exactly the buffer's elements.
    let element = unsafe { builder.build_gep(f32, x, &[wide], "element") }.expect("gep");
    let value = builder
        .build_load(f32, element, "x")
        .expect("load")
        .into_float_value();
    let powered = builder
        .build_call(exp2, &[value.into()], "exp2")
        .expect("exp2")
        .try_as_basic_value()
        .basic()
        .expect("value")
        .into_float_value();
    let scaled = builder.build_float_mul(powered, a, "scaled").expect("mul");
    builder.build_store(element, scaled).expect("store");
    builder.build_return(None).expect("return");

    let assembly = compile_ptx(&module, &GpuTarget::sm_90(None)).expect("inkwell PTX");
    let binary = GpuBinary {
        name: "scale_exp2".into(),
        ptx: assembly.ptx,
    };
    assert_is_sm_90_ptx(&binary);
    assert!(binary.ptx.contains("ex2.approx"), "{}", binary.ptx);
    assert!(
        assembly.llvm_ir.contains("ptx_kernel"),
        "{}",
        assembly.llvm_ir
    );
    assemble_if_possible("scale_exp2", &binary.ptx, false);
    eprintln!("inkwell NVPTX: {:?}", started.elapsed());
}

#[test]
fn lowering_the_same_module_twice_gives_byte_identical_objects_libraries_and_ptx() {
    let started = Instant::now();
    let build = || {
        let mlir = MlirContext::new();
        let module = elementwise_module(mlir.context());
        let directory = tempfile::tempdir().expect("tempdir");
        let (object, library_path) = build_host_library(&mlir, &module, directory.path());
        let library = std::fs::read(library_path).expect("read host.so");
        let ptx: Vec<String> = lower_for_sm_90(&mlir, &module)
            .into_iter()
            .map(|binary| binary.ptx)
            .collect();
        (object, library, ptx)
    };
    let (first_object, first_library, first_ptx) = build();
    let (second_object, second_library, second_ptx) = build();
    assert!(first_object == second_object, "object files differ");
    assert!(first_library == second_library, "host.so files differ");
    assert_eq!(first_ptx, second_ptx, "PTX differs");
    eprintln!("determinism (two full builds): {:?}", started.elapsed());
}
