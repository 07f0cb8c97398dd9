//! bf16 products — a bf16 engine's matrix products with the activations rounded to bf16,
//! run as AVX-512 BF16 dot products on CPUs that have them — measured on every fixture
//! against the f32 engine, beside the deviation the bf16 weights alone cause. Where the
//! CPU lacks AVX-512 BF16 the mode cannot be chosen.

mod common;

use common::*;
use zambac_engine::Engine;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::sampling::argmax;

fn engine(tmp: &std::path::Path, name: &str, dtype: &str) -> std::path::PathBuf {
    let dir = tmp.join(format!("{name}-{dtype}.engine"));
    let o = zambac(&[
        "build",
        fixture(name).to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

fn max_diff<'a>(a: impl Iterator<Item = (&'a Vec<f32>, &'a Vec<f32>)>) -> f32 {
    a.flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// How far a bf16 engine's logits move from the f32 engine's on a fixture's longest
/// prompt and 16 decode steps fed the f32 engine's greedy tokens: (prefill max |Δ|,
/// decode max |Δ|, greedy tokens that agree before the first difference).
fn deviation(b: &mut CpuBackend, base: &[Vec<f32>], prompt: &[i64]) -> (f32, f32, usize) {
    let tokens: Vec<i64> = base[prompt.len() - 1..base.len() - 1]
        .iter()
        .map(|r| argmax(r) as i64)
        .collect();
    let forced = forced_trajectory(b, prompt, &tokens);
    let free = trajectory(b, prompt, tokens.len());
    let n = prompt.len();
    let greedy = |r: &[Vec<f32>]| -> Vec<usize> { r[n - 1..].iter().map(|x| argmax(x)).collect() };
    let agree = greedy(base)
        .iter()
        .zip(&greedy(&free))
        .take_while(|(a, b)| a == b)
        .count();
    (
        max_diff(base.iter().zip(&forced).take(n)),
        max_diff(base.iter().zip(&forced).skip(n)),
        agree,
    )
}

/// On every fixture, rounding the activations of the matrix products to bf16 moves the
/// logits by at most twice what storing the weights in bf16 already moves them (measured on
/// a Zen 4: 1.1–1.6×; docs/performance.md has the numbers and the greedy agreement). A
/// product computed wrongly (a wrong stride, a lost accumulation) moves them by far more.
#[test]
fn bf16_products_move_the_logits_about_as_much_as_bf16_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        let prompt = prompts(&fixture(&name))
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap();
        let bf16 = engine(tmp.path(), &name, "bf16");
        let mut exact = CpuBackend::new(Engine::open(&bf16).unwrap(), 2).unwrap();
        exact.set_bf16_products(false).unwrap();
        let mut fast = CpuBackend::new(Engine::open(&bf16).unwrap(), 2).unwrap();
        if let Err(e) = fast.set_bf16_products(true) {
            eprintln!("{name}: {e}");
            assert!(
                !zambac_runtime::cpu::dnnl::bf16_cpu()
                    || zambac_runtime::cpu::dnnl::dnnl().is_err()
            );
            continue;
        }
        let f32e = engine(tmp.path(), &name, "f32");
        let mut f = CpuBackend::new(Engine::open(&f32e).unwrap(), 2).unwrap();
        let base = trajectory(&mut f, &prompt, 16);
        let weights = deviation(&mut exact, &base, &prompt);
        let products = deviation(&mut fast, &base, &prompt);
        eprintln!(
            "{name}: vs the f32 engine (prefill max |Δ|, decode max |Δ|, greedy agreement of 17): \
             bf16 weights {weights:.3?}, bf16 weights and products {products:.3?}"
        );
        assert!(
            products.0 <= 2.0 * weights.0 && products.1 <= 2.0 * weights.1,
            "{name}: bf16 products {products:?} against bf16 weights alone {weights:?}"
        );
    }
}

/// bf16 products need a bf16 engine, and a CPU with AVX-512 BF16 (and oneDNN): asking for
/// them otherwise is refused with exit code 2; `auto` picks them only where they run.
#[test]
fn bf16_products_are_refused_where_they_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let f32e = engine(tmp.path(), "zamba2-tiny", "f32");
    let out = zambac_run(&[
        "run",
        f32e.to_str().unwrap(),
        "--tokens",
        "1,2",
        "--bf16-products",
        "on",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bf16 engine"), "{}", stderr(&out));
    let bf16 = engine(tmp.path(), "zamba2-tiny", "bf16");
    let available = zambac_runtime::cpu::dnnl::dnnl().is_ok();
    let out = zambac_run(&[
        "run",
        bf16.to_str().unwrap(),
        "--tokens",
        "1,2",
        "--bf16-products",
        "on",
    ]);
    assert_eq!(out.status.success(), available, "{}", stderr(&out));
    if !available {
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("not available"), "{}", stderr(&out));
    }
}
