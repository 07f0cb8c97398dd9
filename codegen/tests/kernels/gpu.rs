//! Every kernel kind lowered to one PTX module for sm_90 and assembled by `ptxas` without
//! spills (skipped with a message when `ptxas` or libdevice is absent).

use super::cases;
use std::time::Instant;
use zambac_codegen::kernels::GpuParam;
use zambac_codegen::toolchain;
use zambac_codegen::{GpuTarget, compile_gpu};
use zambac_engine::gpu::ptx_entry_text;

#[test]
fn every_kind_assembles_for_sm_90_without_spills() {
    let mut kernels = cases::all();
    kernels.extend(cases::released_sizes());
    let libdevice = toolchain::libdevice();
    if toolchain::ptxas().is_none() || libdevice.is_none() {
        eprintln!("skip: ptxas or libdevice.10.bc not found; GPU kernels not assembled");
        return;
    }
    let dumps = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let module = compile_gpu(&kernels, &GpuTarget::sm_90(libdevice), Some(dumps.path()))
        .unwrap_or_else(|error| panic!("{error}"));
    eprintln!(
        "compile_gpu: {} kernels in {:?}",
        kernels.len(),
        started.elapsed()
    );
    let report = module.ptxas.as_ref().expect("ptxas ran");
    assert_eq!(report.total_spill_bytes(), 0, "{}", report.log);
    for (kernel, entry) in kernels.iter().zip(&module.kernels) {
        assert_eq!(entry.entry, format!("zk_{}", kernel.symbol));
        assert!(module.ptx.contains(&format!(".entry {}(", entry.entry)));
        assert!(entry.params.contains(&GpuParam::Begin) && entry.params.contains(&GpuParam::End));
        let resources = report
            .kernels()
            .find(|f| f.name == entry.entry)
            .unwrap_or_else(|| panic!("ptxas did not report {}", entry.entry));
        eprintln!(
            "{:<20} {:>3} registers, {:>4} bytes stack, params {:?}",
            entry.entry, resources.registers, resources.stack_frame_bytes, entry.params
        );
    }
    // Row kernels over wide rows take a block per row and add its warps' sums through shared
    // memory between barriers; nothing else synchronises a block.
    let mut blocks = 0;
    for (kernel, entry) in kernels.iter().zip(&module.kernels) {
        let body = ptx_entry_text(&module.ptx, &entry.entry).expect("the entry exists");
        let name = kernel.kind.name();
        let block_sum = entry.lanes == 256 && (name.contains("Norm") || name.contains("RmsScale"));
        blocks += usize::from(block_sum);
        assert_eq!(
            body.contains("bar.sync"),
            block_sum,
            "{} ({name}, {} lanes): barriers",
            entry.entry,
            entry.lanes
        );
        assert_eq!(
            body.contains(".shared"),
            block_sum,
            "{} ({name}): shared memory",
            entry.entry
        );
    }
    assert!(blocks >= 5, "only {blocks} kernels sum across a block");
    // A Gemv with whole rounds of 256 elements reads rows that start at a 16-byte boundary
    // with 16-byte vector loads (`ld.global.v4`), its batched form too.
    let mut vector_gemvs = 0;
    for (kernel, entry) in kernels.iter().zip(&module.kernels) {
        if let zambac_engine::KernelKind::Gemv { k, .. } = kernel.kind
            && k >= 256
        {
            for name in [entry.entry.clone(), format!("{}_batched", entry.entry)] {
                let body = ptx_entry_text(&module.ptx, &name).expect("the entry exists");
                assert!(body.contains("ld.global.v4"), "{name}: no 16-byte loads");
            }
            vector_gemvs += 1;
        }
    }
    assert!(
        vector_gemvs >= 3,
        "only {vector_gemvs} Gemvs of whole rounds"
    );
    assert!(dumps.path().join("kernels.ptx").is_file());
    assert!(dumps.path().join("attention.gpu.mlir").is_file());
}
