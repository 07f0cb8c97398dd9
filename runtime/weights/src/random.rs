//! Seeded random weights for models described without a checkpoint.
//!
//! Each tensor draws from its own stream (seeded by the seed and the tensor's name), so
//! the values do not depend on build order. Scales follow the fixtures' recipe: every
//! layer moves the residual stream by about as much as the embedding, Δ stays in a useful
//! range, and the recurrence matters as much as the D skip — so random-weight engines
//! exercise the same numerics as trained ones.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use xxhash_rust::xxh3::xxh3_64;
use zambac_ir::Param;

use zambac_runtime::Tensor;

/// A tensor for `p` drawn with `seed`.
pub fn random_param(p: &Param, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ xxh3_64(p.name.as_bytes()));
    let n = p.numel();
    let name = p.name.as_str();
    let fan_in = if p.shape.len() >= 2 {
        *p.shape.last().unwrap()
    } else {
        1
    };
    let normal = |rng: &mut ChaCha8Rng, std: f64| -> Vec<f32> {
        let d = Normal::new(0.0, std).expect("finite std");
        (0..n).map(|_| d.sample(rng) as f32).collect()
    };
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| -> Vec<f64> {
        let d = Uniform::new(lo, hi).expect("lo < hi");
        (0..n).map(|_| d.sample(rng)).collect()
    };
    let data: Vec<f32> = if name.ends_with("layernorm.weight") || name.ends_with("norm.weight") {
        normal(&mut rng, 0.1).into_iter().map(|v| 1.0 + v).collect()
    } else if name.ends_with("A_log") {
        uniform(&mut rng, 0.5, 4.0)
            .into_iter()
            .map(|a| a.ln() as f32)
            .collect()
    } else if name.ends_with("dt_bias") || name.ends_with("dt_proj_bias") {
        // Inverse softplus of a log-uniform Δ in [0.05, 0.5].
        uniform(&mut rng, 0.05f64.ln(), 0.5f64.ln())
            .into_iter()
            .map(|l| {
                let dt = l.exp();
                (dt + (-(-dt).exp_m1()).ln()) as f32
            })
            .collect()
    } else if name.ends_with(".D") {
        uniform(&mut rng, 0.3, 1.0)
            .into_iter()
            .map(|d| d as f32)
            .collect()
    } else if name.ends_with("conv1d.weight") {
        normal(&mut rng, 0.3)
    } else if name.ends_with("conv1d.bias") {
        normal(&mut rng, 0.1)
    } else if name.ends_with(".bias") {
        normal(&mut rng, 0.05)
    } else if name.ends_with("embed_tokens.weight") || name.ends_with("lm_head.weight") {
        normal(&mut rng, 0.25)
    } else if (name.contains("adapter_list") && name.ends_with(".1.weight"))
        || name.ends_with("dt_proj_weight")
    {
        // Adapter up-projections and Δ projections at half gain.
        normal(&mut rng, 0.5 / (fan_in as f64).sqrt())
    } else {
        normal(&mut rng, 1.0 / (fan_in as f64).sqrt())
    };
    Tensor::new(p.shape.clone(), data)
}
