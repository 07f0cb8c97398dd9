//! Kernelize lowers every optimised example to programs over planned buffers, sharing
//! kernels between layers.

use std::path::Path;

use zambac_codegen::kernelize::kernelize;
use zambac_ir::program::{Buffer, Step};
use zambac_ir::{Bindings, Elem, Module};

fn optimised(path: &Path) -> Module {
    let spec = zambac_frontend::load(path).unwrap().spec;
    let mut m = zambac_ir::build(&spec).unwrap();
    let mut pm = zambac_passes::PassManager::new(Default::default()).unwrap();
    let mut cx = zambac_passes::PassCx::new(Bindings { t: 512, c: 4096 });
    pm.run(&mut m, &mut cx, &mut std::io::sink()).unwrap();
    m
}

fn examples() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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

#[test]
fn bf16_engines_store_only_matrices_in_bf16() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = optimised(&root.join("examples/tiny.toml"));
    let l = kernelize(&m, Elem::Bf16).unwrap();
    for (p, e) in m.params.iter().zip(&l.weight_elems) {
        let matrix = p.shape.len() == 2 && !p.name.contains("conv1d");
        assert_eq!(*e == Elem::Bf16, matrix, "{}", p.name);
    }
}

#[test]
fn decode_updates_states_in_place_and_uses_gemv() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = optimised(&root.join("examples/tiny.toml"));
    let l = kernelize(&m, Elem::F32).unwrap();
    let decode = l.programs.iter().find(|p| p.name == "decode").unwrap();
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = optimised(&root.join("examples/zamba2-1.2b.toml"));
    let l = kernelize(&m, Elem::Bf16).unwrap();
    let kind = |symbol: &str| {
        &l.kernels
            .iter()
            .find(|k| k.symbol == symbol)
            .expect("launched kernels exist")
            .kind
    };
    use zambac_ir::program::KernelKind as K;
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
        if p.name == "decode" {
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
                    if *k == zambac_ir::program::Expr::k(2048)
                        && b.col_stride == zambac_ir::program::Expr::k(4096))
                })
                .count();
            assert_eq!(windowed, 18 + 3, "{}", p.name);
        }
    }
}
