//! Batched decode: one step advances B sequences of different lengths (each at its own
//! position, with its own state and KV capacity), and every sequence gets bit for bit the
//! logits and greedy tokens of decoding it alone — on every fixture and on random models of
//! both families, f32 and bf16 engines, with exact products (each sequence's product summed
//! in the order of the Gemv that decodes it alone) and with bf16 products where the CPU has
//! them (a sequence decoded alone then runs as a batch of one).

mod common;

use common::random_model::random_model;
use common::*;
use proptest::prelude::*;
use zambac_engine::Engine;
use zambac_runtime::cpu::CpuBackend;
use zambac_runtime::sampling::argmax;
use zambac_runtime::session::{Backend, State};

/// Decode steps after each prompt.
const STEPS: usize = 6;

fn build(source: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    let o = zambac(&[
        "build",
        source.to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    if o.status.success() {
        Ok(())
    } else {
        Err(stderr(&o))
    }
}

/// B prompts of different lengths cut from `pool` (B may exceed the pool: later prompts are
/// shorter cuts of the same ones).
fn batch_prompts(pool: &[Vec<i64>], b: usize) -> Vec<Vec<i64>> {
    (0..b)
        .map(|i| {
            let p = &pool[i % pool.len()];
            let cut = p.len().saturating_sub(i / pool.len() * 3).max(1);
            p[..cut].to_vec()
        })
        .collect()
}

/// Greedy decoding of each prompt alone: the logits of every step, and the tokens.
fn alone(b: &mut CpuBackend, prompt: &[i64], capacity: usize) -> (Vec<Vec<f32>>, Vec<i64>) {
    let (logits, mut state) = b.prefill_last(prompt, capacity).unwrap();
    let mut token = argmax(logits.row(0)) as i64;
    let (mut rows, mut tokens) = (Vec::new(), vec![token]);
    for _ in 0..STEPS {
        let l = b.decode(token, &mut state).unwrap();
        rows.push(l.data.clone());
        token = argmax(l.row(0)) as i64;
        tokens.push(token);
    }
    (rows, tokens)
}

/// Checks that B sequences decoded together get what each gets alone, bit for bit.
fn batched_equals_alone(b: &mut CpuBackend, pool: &[Vec<i64>], batch: usize) -> Result<(), String> {
    let prompts = batch_prompts(pool, batch);
    // Different KV capacities as well as lengths: each sequence binds its own.
    let capacity = |i: usize, p: &[i64]| p.len() + STEPS + 1 + i % 3;
    let expected: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| alone(b, p, capacity(i, p)))
        .collect();
    let mut states: Vec<State> = Vec::new();
    let mut tokens = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (logits, state) = b.prefill_last(p, capacity(i, p)).unwrap();
        tokens.push(argmax(logits.row(0)) as i64);
        states.push(state);
    }
    for step in 0..STEPS {
        let mut refs: Vec<&mut State> = states.iter_mut().collect();
        let logits = b
            .decode_batch(&tokens, &mut refs)
            .map_err(|e| e.to_string())?;
        if logits.shape != [batch, b.vocab_size()] {
            return Err(format!("batched logits of shape {:?}", logits.shape));
        }
        for (i, (rows, greedy)) in expected.iter().enumerate() {
            if tokens[i] != greedy[step] {
                return Err(format!(
                    "B = {batch}, sequence {i} (prompt of {}), step {step}: token {} alone, {} batched",
                    prompts[i].len(),
                    greedy[step],
                    tokens[i]
                ));
            }
            let differing = rows[step]
                .iter()
                .zip(logits.row(i))
                .filter(|(x, y)| x.to_bits() != y.to_bits())
                .count();
            if differing > 0 {
                let d = rows[step]
                    .iter()
                    .zip(logits.row(i))
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                return Err(format!(
                    "B = {batch}, sequence {i} (prompt of {}), step {step}: {differing} logits \
                     differ from decoding alone, by up to {d:e}",
                    prompts[i].len()
                ));
            }
            tokens[i] = argmax(logits.row(i)) as i64;
        }
    }
    for (i, s) in states.iter().enumerate() {
        let want = prompts[i].len() + STEPS;
        if s.position() != want {
            return Err(format!(
                "sequence {i} at position {} after the steps, not {want}",
                s.position()
            ));
        }
    }
    Ok(())
}

#[test]
fn batched_decode_equals_decoding_alone_on_every_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        let dir = tmp.path().join(format!("{name}.engine"));
        build(&fixture(&name), &dir).unwrap();
        let pool = prompts(&fixture(&name));
        // With 4 threads a batch of 3 splits each launch across the threads; with 2, the
        // sequences are shared out among them (so every launch of a sequence runs whole on
        // one thread, where decoding alone splits it).
        for threads in [2, 4] {
            let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), threads).unwrap();
            for batch in [1, 3, 8] {
                batched_equals_alone(&mut b, &pool, batch)
                    .unwrap_or_else(|e| panic!("{name}, {threads} threads: {e}"));
            }
        }
    }
}

/// The same for engines with the GPU's Mamba2 forms (chunked prefill scans, a decode step's
/// conv and scan in one kernel whose conv state the gate norm shifts), on the Zamba2
/// fixtures.
#[test]
fn gpu_mamba2_forms_decode_the_same_in_a_batch_and_alone() {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names()
        .into_iter()
        .filter(|n| n.starts_with("zamba2"))
    {
        let dir = tmp.path().join(format!("{name}.engine"));
        let o = zambac(&[
            "build",
            fixture(&name).to_str().unwrap(),
            "--mamba2-prefill",
            "chunked",
            "--mamba2-decode",
            "fused",
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let pool = prompts(&fixture(&name));
        let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
        for batch in [1, 3, 8] {
            batched_equals_alone(&mut b, &pool, batch).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

/// The same with bf16 weights: exact products, and bf16 products where the CPU has them
/// (the default there), which round every sequence's activations to bf16 whether it decodes
/// alone or in a batch.
#[test]
fn bf16_engines_decode_the_same_in_a_batch_and_alone() {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        let dir = tmp.path().join(format!("{name}.engine"));
        let o = zambac(&[
            "build",
            fixture(&name).to_str().unwrap(),
            "--dtype",
            "bf16",
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let pool = prompts(&fixture(&name));
        let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
        let default = b.bf16_products();
        for products in [false, true] {
            if let Err(e) = b.set_bf16_products(products) {
                eprintln!("{name}: no bf16 products here ({e})");
                assert!(!default, "bf16 products on by default but refused: {e}");
                continue;
            }
            for batch in [1, 3, 8] {
                batched_equals_alone(&mut b, &pool, batch)
                    .unwrap_or_else(|e| panic!("{name}, bf16 products {products}: {e}"));
            }
        }
    }
}

/// A step that cannot run for one sequence (no room left in its KV capacity, or a state of
/// another shape) is refused before any sequence moves.
#[test]
fn a_batch_with_a_full_sequence_is_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny.engine");
    build(&fixture("zamba2-tiny"), &dir).unwrap();
    let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
    let (_, roomy) = b.prefill_last(&[3, 4, 5], 8).unwrap();
    let (_, full) = b.prefill_last(&[3, 4, 5], 3).unwrap();
    let (mut roomy, mut full) = (roomy, full);
    let before = roomy.clone();
    let err = b
        .decode_batch(&[1, 2], &mut [&mut roomy, &mut full])
        .unwrap_err();
    assert!(err.to_string().contains("capacity"), "{err}");
    assert_eq!(roomy.position(), before.position());
    for (role, t) in roomy.iter() {
        assert_eq!(t.data, before.get(role).unwrap().data, "{role:?} moved");
    }
    let err = b
        .decode_batch(&[1], &mut [&mut roomy, &mut full])
        .unwrap_err();
    assert!(
        err.to_string().contains("1 tokens for 2 sequences"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Random models of both families, f32 and bf16 weights, B ∈ {1, 3, 8}.
    #[test]
    fn batched_decode_equals_decoding_alone_on_random_models(
        model in random_model(&["hf5", "always", "none"]),
        bf16 in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let toml = tmp.path().join("model.toml");
        let mut text = model.toml();
        if bf16 {
            text = text.replace("dtype = \"f32\"", "dtype = \"bf16\"");
        }
        std::fs::write(&toml, &text).unwrap();
        let dir = tmp.path().join("model.engine");
        let built = build(&toml, &dir);
        prop_assert!(built.is_ok(), "{}\n{text}", built.unwrap_err());
        let mut b = CpuBackend::new(Engine::open(&dir).unwrap(), 2).unwrap();
        let pool: Vec<Vec<i64>> = [11usize, 4, 9, 1]
            .iter()
            .enumerate()
            .map(|(j, &n)| (0..n).map(|i| ((i * 7 + j * 13 + 3) % 61) as i64).collect())
            .collect();
        // Exact products (bf16 weights widened), then, for bf16 weights on a CPU with
        // AVX-512 BF16, bf16 products.
        for products in [false, true] {
            if b.set_bf16_products(products).is_err() {
                continue;
            }
            for batch in [1, 3, 8] {
                let r = batched_equals_alone(&mut b, &pool, batch);
                prop_assert!(r.is_ok(), "bf16 products {products}: {}\n{text}", r.unwrap_err());
            }
        }
    }
}

/// `zambac-run bench --batch B` decodes B sequences together and counts all their tokens;
/// a batch of none, or one that cannot fit in memory, is refused with exit code 2.
#[test]
fn bench_batch_reports_the_tokens_of_every_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny.engine");
    build(&fixture("zamba2-tiny"), &dir).unwrap();
    let e = dir.to_str().unwrap();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            e,
            "--prompt-len",
            "9",
            "--new-tokens",
            "5",
            "--batch",
            "3",
        ];
        args.extend_from_slice(extra);
        zambac_run(&args)
    };
    let o = bench(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["batch"], 3, "{v}");
    assert!(
        v["decode_tok_per_s"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    // Each sequence's greedy tokens (the first and one per step) are those its prompt
    // (seed 0, 1, 2) gives decoded alone.
    let tokens = |v: &serde_json::Value| -> Vec<Vec<i64>> {
        serde_json::from_value(v["tokens"].clone()).unwrap()
    };
    let batched = tokens(&v);
    assert_eq!(batched.len(), 3, "{v}");
    for (seed, seq) in batched.iter().enumerate() {
        assert_eq!(seq.len(), 6, "{v}");
        let seed = seed.to_string();
        let o = zambac_run(&[
            "bench",
            e,
            "--prompt-len",
            "9",
            "--new-tokens",
            "5",
            "--seed",
            &seed,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let alone: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(tokens(&alone), vec![seq.clone()], "seed {seed}");
    }
    let text = bench(&[]);
    assert!(
        stdout(&text).contains("for 3 sequences"),
        "{}",
        stdout(&text)
    );
    for (batch, says) in [("0", "at least 1"), ("100000", "at most")] {
        let o = zambac_run(&["bench", e, "--prompt-len", "9", "--batch", batch]);
        assert_eq!(o.status.code(), Some(2), "--batch {batch}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "--batch {batch}: {}", stderr(&o));
    }
}
