//! Attention over prompts of thousands of tokens: a compiled engine against the reference
//! interpreter on a random model with grouped-query heads and RoPE, over a 3203-token
//! prompt (more than fifty 60-key tiles and 64-query grid indices, the last of each partial)
//! — in one prefill, continued in chunks that end inside tiles, and decoding on from it; and
//! with bf16 attention products against f32 ones over the same bf16 caches.

mod common;

use common::*;

const TOL: f32 = 2e-4;
const PROMPT: usize = 3203;

const MODEL: &str = r#"
[model]
name = "long"
vocab_size = 61
hidden_size = 16
num_layers = 3
dtype = "f32"

[mamba]
version = 2
d_state = 8
heads = 2
chunk_size = 16

[shared]
layers = [1, 2]
heads = 2
kv_heads = 1
rope = true
rope_theta = 500.0
"#;

/// The model's engine, built in `tmp` with `flags`.
fn build(tmp: &std::path::Path, name: &str, flags: &[&str]) -> std::path::PathBuf {
    let toml = tmp.join("long.toml");
    std::fs::write(&toml, MODEL).unwrap();
    let args = [&["--weights", "random:11"][..], flags].concat();
    build_engine(&toml, &tmp.join(format!("{name}.engine")), &args)
}

/// Logits of `prompt` prefilled in chunks of 1000, 999 and the rest: each continues at a
/// position inside a tile and a query block. Returns them and the state they leave.
fn in_chunks(
    be: &mut dyn zambac_runtime::session::Backend,
    prompt: &[i64],
    capacity: usize,
) -> (Vec<f32>, zambac_runtime::session::State) {
    let mut state = be.new_state(capacity).unwrap();
    let mut rows = Vec::new();
    for part in [&prompt[..1000], &prompt[1000..1999], &prompt[1999..]] {
        rows.extend_from_slice(&be.extend(part, &mut state).unwrap().data);
    }
    (rows, state)
}

fn long_prompt() -> Vec<i64> {
    (0..PROMPT as i64).map(|i| (i * 37 + i / 7) % 61).collect()
}

#[test]
fn long_prompts_match_the_reference_in_prefill_continuation_and_decode() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = build(tmp.path(), "long", &[]);
    let open = || zambac_engine::Engine::open(&engine).unwrap();
    let mut reference = zambac::engines::reference_backend(&open()).unwrap();
    let mut cpu = zambac::engines::cpu_backend(open(), 2, "off").unwrap();
    let prompt = long_prompt();
    let capacity = PROMPT + 8;

    let (want, mut want_state) = reference.prefill(&prompt, capacity).unwrap();
    let (got, mut got_state) = cpu.prefill(&prompt, capacity).unwrap();
    let d = max_diff(&got.data, &want.data);
    eprintln!("prefill of {PROMPT}: max |Δ| {d:.2e}");
    assert!(d <= TOL, "prefill logits differ by {d:e}");

    let (rows, mut state) = in_chunks(cpu.as_mut(), &prompt, capacity);
    let d = max_diff(&rows, &got.data);
    eprintln!("chunked prefill against one prefill: max |Δ| {d:.2e}");
    assert!(d <= TOL, "chunked prefill differs by {d:e}");

    for (step, token) in [3i64, 59, 17, 0, 42].into_iter().enumerate() {
        let want = reference.decode(token, &mut want_state).unwrap();
        let got = cpu.decode(token, &mut got_state).unwrap();
        let chunked = cpu.decode(token, &mut state).unwrap();
        let d = max_diff(&got.data, &want.data);
        eprintln!("decode step {step} at {}: max |Δ| {d:.2e}", PROMPT + step);
        assert!(d <= TOL, "decode step {step} differs by {d:e}");
        assert!(max_diff(&chunked.data, &got.data) <= TOL);
    }
}

/// How far bf16 attention products may move this model's logits (up to 3.9) from f32
/// products over the same bf16 caches, over the whole long prompt. Measured: 0.064 in one
/// prefill, and 0.011 between that prefill and the same prompt in three chunks.
const PRODUCTS: f32 = 0.1;

/// bf16 attention products (`--attention-products bf16`, on a CPU with AVX-512 BF16; the
/// refusal elsewhere is `tests/bf16_attention.rs`'s) over the same prompt: every position's
/// logits within [`PRODUCTS`] of f32 products over the same bf16 caches, in one prefill and
/// continued in chunks that end inside tiles.
#[test]
fn bf16_attention_products_over_a_long_prompt() {
    if !std::arch::is_x86_feature_detected!("avx512bf16") {
        eprintln!("this CPU has no AVX-512 BF16: no engine with bf16 attention products runs here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kv = ["--kv-dtype", "bf16"];
    let exact = build(tmp.path(), "exact", &kv);
    let rounded = build(
        tmp.path(),
        "rounded",
        &[&kv[..], &["--attention-products", "bf16"]].concat(),
    );
    let open = |dir: &std::path::Path| {
        zambac::engines::cpu_backend(zambac_engine::Engine::open(dir).unwrap(), 2, "off").unwrap()
    };
    let (mut exact, mut rounded) = (open(&exact), open(&rounded));
    let prompt = long_prompt();
    let capacity = PROMPT + 8;
    let (want, _) = exact.prefill(&prompt, capacity).unwrap();
    let (got, _) = rounded.prefill(&prompt, capacity).unwrap();
    let scale = want.data.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let d = max_diff(&got.data, &want.data);
    eprintln!("bf16 products over {PROMPT} tokens: max |Δ| {d:.2e} (logits up to {scale:.2})");
    assert!(d <= PRODUCTS, "bf16 products move logits by {d:e}");
    let (rows, _) = in_chunks(rounded.as_mut(), &prompt, capacity);
    let d = max_diff(&rows, &got.data);
    eprintln!("chunked against one prefill, bf16 products: max |Δ| {d:.2e}");
    assert!(d <= PRODUCTS, "chunked prefill differs by {d:e}");
}
