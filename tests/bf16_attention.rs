//! Prompt attention with bf16 products (`zambac build --kv-dtype bf16 --attention-products
//! bf16`): q and the softmax weights rounded to bf16 and multiplied with the bf16 caches by
//! `vdpbf16ps`. On a CPU with AVX-512 BF16 the fixtures' logits move from those of the same
//! engine with f32 products by the rounding only; on one without, the build is refused.

mod common;

use common::*;
use zambac_engine::Engine;
use zambac_runtime::session::Backend;

/// How far bf16 products may move a fixture's prefill logits from f32 products over the
/// same bf16 caches (logits up to 9 in magnitude): rounding q and the weights is an error of
/// the size of rounding k and v, so the caches' bound (`tests/bf16_state.rs`). Measured: up
/// to 0.17, on the fixture whose greedy token is a near tie; 0 for one-token prompts (one
/// weight, 1 exactly).
const PRODUCTS: f32 = 0.25;

/// How far the fixtures' logits may be from HF's with bf16 caches and bf16 products: the
/// caches' bound plus [`PRODUCTS`]. Measured: up to 0.21.
const FROM_HF: f32 = 0.5;

fn build(
    tmp: &std::path::Path,
    name: &str,
    products: &str,
) -> (std::process::Output, std::path::PathBuf) {
    let dir = tmp.join(format!("{name}-{products}.engine"));
    let o = zambac(&[
        "build",
        fixture(name).to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
        "--kv-dtype",
        "bf16",
        "--attention-products",
        products,
    ]);
    (o, dir)
}

fn backend(dir: &std::path::Path) -> Box<dyn Backend> {
    zambac::engines::cpu_backend(Engine::open(dir).unwrap(), 2, "off").unwrap()
}

#[test]
fn bf16_attention_products_move_fixture_logits_by_their_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        let (o, dir) = build(tmp.path(), "zamba2-tiny", "bf16");
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("AVX-512 BF16"), "{}", stderr(&o));
        assert!(!dir.exists());
        return;
    }
    for name in fixture_names() {
        let (o, exact) = build(tmp.path(), &name, "f32");
        assert!(o.status.success(), "{}", stderr(&o));
        let (o, rounded) = build(tmp.path(), &name, "bf16");
        assert!(o.status.success(), "{}", stderr(&o));
        let expected =
            zambac_weights::Checkpoint::open_file(&fixture(&name).join("expected.safetensors"))
                .unwrap();
        let (mut exact, mut rounded) = (backend(&exact), backend(&rounded));
        for (i, prompt) in prompts(&fixture(&name)).iter().enumerate() {
            let (want, _) = exact.prefill(prompt, prompt.len() + 1).unwrap();
            let (got, _) = rounded.prefill(prompt, prompt.len() + 1).unwrap();
            let d = max_diff(&got.data, &want.data);
            let hf = max_diff(&got.data, &tensor(&expected, &format!("logits_{i}")).data);
            let last = |t: &zambac_runtime::Tensor| {
                zambac_runtime::sampling::argmax(t.row(prompt.len() - 1))
            };
            eprintln!(
                "{name} prompt {i}: bf16 products move prefill logits by {d:.3e} ({hf:.3e} from \
                 HF); next token {}",
                if last(&got) == last(&want) {
                    "agrees"
                } else {
                    "differs"
                }
            );
            assert!(d <= PRODUCTS, "{name} prompt {i}: {d}");
            assert!(hf <= FROM_HF, "{name} prompt {i}: {hf} from HF");
        }
    }
}
