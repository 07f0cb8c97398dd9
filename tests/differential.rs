//! Differential tests of the passes: the reference interpreter gives the same logits on the
//! optimised graph as on the unoptimised one — prefill and several decode steps — for every
//! example (released shapes shrunk to a small width with the same layer schedule, blocks,
//! adapters, groups and RoPE), every fixture with its real weights, and random models.
//!
//! "The same" is ≤ 1e-5, or, where the pipeline reassociates arithmetic
//! (`hoist-shared-input` sums the two halves of a dot product separately and scales after
//! the product), no more than rounding moves that model: the most the unoptimised logits
//! move when every weight moves by one ulp (two random draws).

mod common;

use common::random_model::random_model;
use common::*;
use proptest::prelude::*;
use zambac_frontend::ModelSpec;
use zambac_ir::{Bindings, Module};
use zambac_reference::ReferenceBackend;
use zambac_runtime::Tensor;

const TOL: f32 = 1e-5;

fn optimise(m: &Module) -> Module {
    let mut o = m.clone();
    let mut pm = zambac_passes::PassManager::new(Default::default()).unwrap();
    let mut cx = zambac_passes::PassCx::new(Bindings { t: 16, c: 16 });
    pm.run(&mut o, &mut cx, &mut std::io::sink()).unwrap();
    o
}

/// The weights of `to`'s parameters taken by name from `from`'s.
fn by_name(from: &Module, w: &[Tensor], to: &Module) -> Vec<Tensor> {
    to.params
        .iter()
        .map(|p| {
            w[from
                .params
                .iter()
                .position(|q| q.name == p.name)
                .expect("same names")]
            .clone()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn assert_same(spec: &ModelSpec, weights: Option<(&Module, Vec<Tensor>)>, what: &str) {
    let m = zambac_ir::build(spec).unwrap();
    let o = optimise(&m);
    let (w0, w1) = match weights {
        Some((src, w)) => (by_name(src, &w, &m), by_name(src, &w, &o)),
        None => (zambac_weights::random(&m, 3), zambac_weights::random(&o, 3)),
    };
    let vocab = spec.vocab_size as i64;
    let prompt: Vec<i64> = (0..9).map(|i| (i * 37 + 5) % vocab).collect();
    let a = trajectory(
        &mut ReferenceBackend::new(m.clone(), w0.clone()).unwrap(),
        &prompt,
        4,
    );
    let b = trajectory(&mut ReferenceBackend::new(o, w1).unwrap(), &prompt, 4);
    let d = max_diff(&a, &b);
    if d <= TOL {
        return;
    }
    // The nudged model is fed the unoptimised run's tokens, so a flipped argmax cannot
    // inflate the bound.
    let tokens: Vec<i64> = a[prompt.len() - 1..a.len() - 1]
        .iter()
        .map(|row| zambac_runtime::sampling::argmax(row) as i64)
        .collect();
    let rounding = (1..=2)
        .map(|seed| {
            let mut moved = w0.clone();
            move_last_bits(&mut moved, seed);
            let c = forced_trajectory(
                &mut ReferenceBackend::new(m.clone(), moved).unwrap(),
                &prompt,
                &tokens,
            );
            max_diff(&a, &c)
        })
        .fold(0.0, f32::max);
    assert!(
        d <= rounding,
        "{what}: optimised and unoptimised logits differ by {d:e}, more than the {rounding:e} \
         that moving every weight by one ulp moves them"
    );
}

/// A released shape at toy width, keeping layers, schedule, blocks and features.
fn shrink(spec: &ModelSpec) -> ModelSpec {
    let mut o: Vec<(String, String)> = vec![
        ("model.hidden_size".into(), "32".into()),
        ("model.vocab_size".into(), "97".into()),
        ("model.dtype".into(), "\"f32\"".into()),
        ("mamba.heads".into(), "4".into()),
        ("mamba.d_state".into(), "8".into()),
    ];
    if spec.layers.contains(&zambac_frontend::LayerKind::Hybrid) {
        o.push(("shared.heads".into(), "4".into()));
        let kv = if spec.shared.num_kv_heads < spec.shared.num_heads {
            2
        } else {
            4
        };
        o.push(("shared.kv_heads".into(), kv.to_string()));
        o.push(("shared.intermediate_size".into(), "48".into()));
        if spec.shared.attn_adapter_rank > 0 {
            o.push(("shared.attention_adapter_rank".into(), "4".into()));
        }
        if spec.shared.mlp_adapter_rank > 0 {
            o.push(("shared.mlp_adapter_rank".into(), "4".into()));
        }
    }
    if spec.mamba.version == 1 {
        o.push(("mamba.dt_rank".into(), "3".into()));
    }
    zambac_frontend::apply_overrides(spec, &o).unwrap_or_else(|e| panic!("{}", e.render()))
}

#[test]
fn every_example_is_unchanged_by_the_pipeline() {
    for e in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = e.unwrap().path();
        let spec = zambac_frontend::load(&path).unwrap().spec;
        let small = if spec.hidden_size > 64 {
            shrink(&spec)
        } else {
            spec
        };
        assert_same(&small, None, &path.display().to_string());
    }
}

#[test]
fn every_fixture_is_unchanged_by_the_pipeline() {
    for name in fixture_names() {
        let dir = fixture(&name);
        let spec = zambac_frontend::load(&dir).unwrap().spec;
        let m = zambac_ir::build(&spec).unwrap();
        let ck = zambac_weights::Checkpoint::open(&dir).unwrap();
        let w = zambac_weights::bind(&m, &spec, &ck).unwrap().tensors;
        assert_same(&spec, Some((&m, w)), &name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random spacing, blocks, adapter ranks, groups, heads, RoPE, tying, both families.
    #[test]
    fn random_models_are_unchanged_by_the_pipeline(model in random_model(&["hf5", "always", "none"])) {
        assert_same(&model.spec(), None, &model.toml());
    }
}
