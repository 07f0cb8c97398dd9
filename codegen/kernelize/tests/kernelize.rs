//! Kernelize lowers every optimised example to programs over planned buffers, sharing
//! kernels between layers.

use std::path::Path;

use zambac_engine::{Buffer, Checksum, FileRef, Manifest, ModelInfo, Step, WeightEntry};
use zambac_ir::{Bindings, Elem, Module};
use zambac_kernelize::{Lowered, Mamba2Lowering, StateElems, kernelize, kernelize_with};

fn optimised(path: &Path) -> Module {
    let spec = zambac_frontend::load(path).unwrap().spec;
    let mut m = zambac_ir::build(&spec).unwrap();
    let mut pm = zambac_passes::PassManager::new(Default::default()).unwrap();
    let mut cx = zambac_passes::PassCx::new(Bindings { t: 512, c: 4096 });
    pm.run(&mut m, &mut cx, &mut std::io::sink()).unwrap();
    m
}

fn examples() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut v: Vec<_> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for f in std::fs::read_dir(root.join("../shared/fixtures")).unwrap() {
        v.push(f.unwrap().path());
    }
    v.sort();
    v
}

#[test]
fn every_example_kernelizes() {
    for p in examples() {
        let m = optimised(&p);
        for dtype in [Elem::F32, Elem::Bf16] {
            let l = kernelize(&m, dtype).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(l.programs.len(), 3);
            // Kernels are shared: far fewer kernels than launches.
            let launches: usize = l.programs.iter().map(|p| p.steps.len()).sum();
            assert!(
                l.kernels.len() * 3 < launches,
                "{}: {} kernels for {launches} steps",
                p.display(),
                l.kernels.len()
            );
        }
    }
}

/// The manifest an engine of `m` lowered as `l` would carry, with a weight table laid out
/// as the writer lays it out (checksums are not the validator's business).
fn manifest(m: &Module, l: &Lowered, vocab: usize) -> Manifest {
    let mut offset = 0u64;
    let weights = m
        .params
        .iter()
        .zip(&l.weight_elems)
        .zip(&l.weight_blocks)
        .map(|((p, e), blocks)| {
            offset = offset.next_multiple_of(zambac_engine::WEIGHT_ALIGN);
            let bytes = (p.numel() * e.size()) as u64;
            let entry = WeightEntry {
                name: p.name.clone(),
                elem: *e,
                shape: p.shape.clone(),
                offset,
                bytes,
                xxh3: Checksum(0),
                column_blocks: blocks.clone(),
            };
            offset += bytes;
            entry
        })
        .collect();
    Manifest {
        format_version: zambac_engine::FORMAT_VERSION,
        zambac_version: "test".into(),
        model: ModelInfo {
            name: "test".into(),
            family: "test".into(),
            vocab_size: vocab,
            hidden_size: 1,
            layers: 1,
            weight_elem: Elem::F32,
            state: l.state.clone(),
            tokenizer: None,
            generation: Default::default(),
        },
        source: serde_json::Value::Null,
        weights,
        kernels: l.kernels.clone(),
        programs: l.programs.clone(),
        host: FileRef {
            file: "host.so".into(),
            xxh3: Checksum(0),
        },
        host_target: None,
        gpu: None,
        build: serde_json::Value::Null,
    }
}

/// What kernelize emits for every example and fixture — both families, one and two
/// shared blocks, grouped-query attention, no concatenation — passes the contract's
/// validator: every launch matches its kernel's signature and stays inside its buffers
/// for every call. (The writer runs the same check; this one needs no LLVM.)
#[test]
fn every_lowering_passes_the_engine_validator() {
    for p in examples() {
        let spec = zambac_frontend::load(&p).unwrap().spec;
        let m = optimised(&p);
        for dtype in [Elem::F32, Elem::Bf16] {
            for (forms, mamba2) in [
                ("host", Mamba2Lowering::default()),
                ("GPU", Mamba2Lowering::gpu()),
            ] {
                let l = kernelize_with(&m, dtype, StateElems::default(), mamba2).unwrap();
                let manifest = manifest(&m, &l, spec.vocab_size);
                if let Err(e) = zambac_engine::validate::manifest(&manifest) {
                    panic!("{} ({dtype}, {forms} forms): {e}", p.display());
                }
            }
        }
    }
}

/// The GPU's Mamba2 forms are what they say: a prefill scans in chunks (states, pass,
/// outputs) and a decode step has no conv kernel of its own — the scan computes it and the
/// gate norm shifts its state; the host's forms have neither.
#[test]
fn the_gpu_forms_chunk_the_prefill_scan_and_fuse_the_decode_conv() {
    use zambac_engine::{KernelKind as K, ProgramName};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = optimised(&root.join("examples/tiny.toml"));
    let kinds = |mamba2: Mamba2Lowering, program: ProgramName| -> Vec<String> {
        let l = kernelize_with(&m, Elem::F32, StateElems::default(), mamba2).unwrap();
        let p = l.programs.iter().find(|p| p.name == program).unwrap();
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Launch { kernel, .. } => l.kernels.iter().find(|k| &k.symbol == kernel),
                _ => None,
            })
            .map(|k| match &k.kind {
                K::Mamba2GateNorm {
                    conv_shift: Some(_),
                    ..
                } => "Mamba2GateNorm+shift".to_string(),
                kind => kind.name().to_string(),
            })
            .collect()
    };
    let count = |v: &[String], name: &str| v.iter().filter(|k| *k == name).count();
    let layers = m
        .graph("decode")
        .map(|g| {
            g.order()
                .into_iter()
                .filter(|n| matches!(g.kind(*n), zambac_ir::OpKind::Mamba2Step(_)))
                .count()
        })
        .unwrap();
    assert!(layers > 0);
    let gpu_prefill = kinds(Mamba2Lowering::gpu(), ProgramName::Prefill);
    assert_eq!(count(&gpu_prefill, "Mamba2ChunkScan"), 2 * layers);
    assert_eq!(count(&gpu_prefill, "Mamba2ChunkPass"), layers);
    assert_eq!(count(&gpu_prefill, "Mamba2Scan"), 0);
    let gpu_decode = kinds(Mamba2Lowering::gpu(), ProgramName::Decode);
    assert_eq!(count(&gpu_decode, "Mamba2ConvScan"), layers);
    assert_eq!(count(&gpu_decode, "Mamba2GateNorm+shift"), layers);
    assert_eq!(
        count(&gpu_decode, "Mamba2Conv") + count(&gpu_decode, "Mamba2Scan"),
        0
    );
    let host_prefill = kinds(Mamba2Lowering::default(), ProgramName::Prefill);
    assert_eq!(count(&host_prefill, "Mamba2Scan"), layers);
    assert_eq!(count(&host_prefill, "Mamba2ChunkScan"), 0);
    let host_decode = kinds(Mamba2Lowering::default(), ProgramName::Decode);
    assert_eq!(count(&host_decode, "Mamba2Conv"), layers);
    assert_eq!(count(&host_decode, "Mamba2ConvScan"), 0);
    assert_eq!(
        gpu_decode.len() + layers,
        host_decode.len(),
        "one launch fewer per layer"
    );
}

/// The validator is not vacuous on real programs: shrinking one slot of the decode
/// program by one element is caught, naming the program and a step.
#[test]
fn the_validator_catches_a_slot_one_element_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("examples/tiny.toml");
    let spec = zambac_frontend::load(&p).unwrap().spec;
    let m = optimised(&p);
    let l = kernelize(&m, Elem::F32).unwrap();
    let mut manifest = manifest(&m, &l, spec.vocab_size);
    let decode = manifest
        .programs
        .iter_mut()
        .find(|p| p.name == zambac_engine::ProgramName::Decode)
        .unwrap();
    for cands in &mut decode.slots {
        for c in cands.iter_mut() {
            *c = c.plus(zambac_engine::Expr::k(-1));
        }
    }
    let e = zambac_engine::validate::manifest(&manifest).unwrap_err();
    assert!(e.contains("program `decode`, step"), "{e}");
    assert!(e.contains("outside its buffer"), "{e}");
}

#[test]
fn bf16_engines_store_only_matrices_in_bf16() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = optimised(&root.join("examples/tiny.toml"));
    let l = kernelize(&m, Elem::Bf16).unwrap();
    for (p, e) in m.params.iter().zip(&l.weight_elems) {
        let matrix = p.shape.len() == 2 && !p.name.contains("conv1d");
        assert_eq!(*e == Elem::Bf16, matrix, "{}", p.name);
    }
}

#[test]
fn decode_updates_states_in_place_and_uses_gemv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = optimised(&root.join("examples/tiny.toml"));
    let l = kernelize(&m, Elem::F32).unwrap();
    let decode = l
        .programs
        .iter()
        .find(|p| p.name == zambac_engine::ProgramName::Decode)
        .unwrap();
    assert!(
        decode
            .steps
            .iter()
            .all(|s| matches!(s, Step::Launch { .. })),
        "decode needs no GEMM library call"
    );
    assert!(decode.steps.iter().any(|s| {
        match s {
            Step::Launch { views, .. } => views
                .iter()
                .any(|v| v.buf == Buffer::Output("ssm.0".into())),
            _ => false,
        }
    }));
}

/// With `hoist-shared-input`, each invocation's q/k/v product reads only the hidden half of
/// the shared weight (a window: row stride of the full width, decode Gemv with a row
/// stride) after `r ⊙ Y` is written, and the embedding half is multiplied once per program.
#[test]
fn hoisted_products_read_a_window_of_the_shared_weight() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let m = optimised(&root.join("examples/zamba2-1.2b.toml"));
    let l = kernelize(&m, Elem::Bf16).unwrap();
    let kind = |symbol: &str| {
        &l.kernels
            .iter()
            .find(|k| k.symbol == symbol)
            .expect("launched kernels exist")
            .kind
    };
    use zambac_engine::KernelKind as K;
    for p in &l.programs {
        let launched: Vec<&K> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Launch { kernel, .. } => Some(kind(kernel)),
                _ => None,
            })
            .collect();
        let row_scales = launched
            .iter()
            .filter(|k| matches!(k, K::RowScale { .. }))
            .count();
        // 6 invocations × q, k, v.
        assert_eq!(row_scales, 18, "{}", p.name);
        let scales = launched
            .iter()
            .filter(|k| matches!(k, K::ConcatRmsScale { .. }))
            .count();
        assert_eq!(scales, 6, "{}", p.name);
        // Each invocation's q, k, v over the hidden half, and the three hoisted products
        // over the embedding half: every one a product over 2048 columns of a weight
        // stored in two 2048-column blocks.
        let blocked = |buf: &Buffer| matches!(buf, Buffer::Weight(i) if l.weight_blocks[*i as usize] == Some(vec![2048, 2048]));
        let windowed = p
            .steps
            .iter()
            .filter(|s| match s {
                Step::Launch { kernel, views, .. } => {
                    matches!(
                        kind(kernel),
                        K::Gemv {
                            k: 2048,
                            row_stride: None,
                            ..
                        }
                    ) && views.iter().any(|v| blocked(&v.buf))
                }
                Step::Gemm { k, b, .. } => {
                    *k == zambac_engine::Expr::k(2048)
                        && b.col_stride == zambac_engine::Expr::k(2048)
                        && blocked(&b.view.buf)
                }
            })
            .count();
        assert_eq!(windowed, 18 + 3, "{}", p.name);
    }
}

/// After `hoist-shared-input`, a shared block's q/k/v weights are read only through their
/// hidden-half and embedding-half windows: they are stored in those two column blocks, and
/// every product over them reads a contiguous block (no row stride), in decode's Gemvs and
/// prefill's GEMMs alike. Without the pass nothing is blocked.
#[test]
fn hoisted_windows_read_contiguous_column_blocks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("examples/zamba2-100m.toml");
    let spec = zambac_frontend::load(&p).unwrap().spec;
    let m = optimised(&p);
    let l = kernelize(&m, Elem::Bf16).unwrap();
    let h = spec.hidden_size;
    let blocked: Vec<&str> = m
        .params
        .iter()
        .zip(&l.weight_blocks)
        .filter_map(|(p, b)| {
            b.as_ref().map(|b| {
                assert_eq!(b, &vec![h, h], "{}", p.name);
                p.name.as_str()
            })
        })
        .collect();
    assert_eq!(blocked.len(), 3 * spec.shared.num_blocks, "{blocked:?}");
    assert!(
        blocked
            .iter()
            .all(|n| n.contains("q_proj") || n.contains("k_proj") || n.contains("v_proj")),
        "{blocked:?}"
    );
    let blocked_ids: Vec<u32> = m
        .params
        .iter()
        .enumerate()
        .filter(|(i, _)| l.weight_blocks[*i].is_some())
        .map(|(i, _)| i as u32)
        .collect();
    let kinds: std::collections::BTreeMap<&str, &zambac_engine::KernelKind> = l
        .kernels
        .iter()
        .map(|k| (k.symbol.as_str(), &k.kind))
        .collect();
    let mut reads = 0;
    for prog in &l.programs {
        for s in &prog.steps {
            match s {
                Step::Launch { kernel, views, .. } => {
                    let on_blocked = views
                        .iter()
                        .any(|v| matches!(v.buf, Buffer::Weight(i) if blocked_ids.contains(&i)));
                    if on_blocked {
                        reads += 1;
                        let zambac_engine::KernelKind::Gemv { row_stride, .. } =
                            kinds[kernel.as_str()]
                        else {
                            panic!("{kernel} reads a blocked weight");
                        };
                        assert_eq!(*row_stride, None, "{kernel} reads a strided window");
                    }
                }
                Step::Gemm { b, .. } => {
                    if matches!(b.view.buf, Buffer::Weight(i) if blocked_ids.contains(&i)) {
                        reads += 1;
                        assert_eq!(b.col_stride, zambac_engine::Expr::k(h as i64));
                    }
                }
            }
        }
    }
    assert!(reads > 0);
    let mut plain = zambac_ir::build(&spec).unwrap();
    let opts = zambac_passes::Options {
        disabled: vec!["hoist-shared-input".into()],
        ..Default::default()
    };
    let mut pm = zambac_passes::PassManager::new(opts).unwrap();
    let mut cx = zambac_passes::PassCx::new(Bindings { t: 512, c: 4096 });
    pm.run(&mut plain, &mut cx, &mut std::io::sink()).unwrap();
    let l = kernelize(&plain, Elem::Bf16).unwrap();
    assert!(l.weight_blocks.iter().all(Option::is_none));
}
