//! Kernelize lowers every optimised example to programs over planned buffers, sharing
//! kernels between layers.

use std::path::Path;

use zambac_engine::{Buffer, Checksum, FileRef, Manifest, ModelInfo, Step, WeightEntry};
use zambac_ir::{Bindings, Elem, Module};
use zambac_kernelize::{Lowered, kernelize};

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
        .map(|(p, e)| {
            offset = offset.next_multiple_of(zambac_engine::WEIGHT_ALIGN);
            let bytes = (p.numel() * e.size()) as u64;
            let entry = WeightEntry {
                name: p.name.clone(),
                elem: *e,
                shape: p.shape.clone(),
                offset,
                bytes,
                xxh3: Checksum(0),
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
        },
        source: serde_json::Value::Null,
        weights,
        kernels: l.kernels.clone(),
        programs: l.programs.clone(),
        host: FileRef {
            file: "host.so".into(),
            xxh3: Checksum(0),
        },
        ptx: None,
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
            let l = kernelize(&m, dtype).unwrap();
            let manifest = manifest(&m, &l, spec.vocab_size);
            if let Err(e) = zambac_engine::validate::manifest(&manifest) {
                panic!("{} ({dtype}): {e}", p.display());
            }
        }
    }
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
        if p.name == zambac_engine::ProgramName::Decode {
            let windowed = launched
                .iter()
                .filter(|k| {
                    matches!(
                        k,
                        K::Gemv {
                            k: 2048,
                            row_stride: Some(4096),
                            ..
                        }
                    )
                })
                .count();
            // Each invocation's q, k, v over the hidden half, and the three hoisted
            // products over the embedding half.
            assert_eq!(windowed, 18 + 3, "{}", p.name);
        } else {
            let windowed = p
                .steps
                .iter()
                .filter(|s| {
                    matches!(s, Step::Gemm { k, b, .. }
                    if *k == zambac_engine::Expr::k(2048)
                        && b.col_stride == zambac_engine::Expr::k(4096))
                })
                .count();
            assert_eq!(windowed, 18 + 3, "{}", p.name);
        }
    }
}
