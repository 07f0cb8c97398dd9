//! Seeded random weights for models described without a checkpoint.
//!
//! Each tensor draws from its own stream (seeded by the seed and the tensor's name), so
//! the values do not depend on build order. Scales follow the fixtures' recipe: every
//! layer moves the residual stream by about as much as the embedding, Δ stays in a useful
//! range, and the recurrence matters as much as the D skip — so random-weight engines
//! exercise the same numerics as trained ones.
//!
//! The generator lives in the engine contract so that a runtime can rebuild the weights of
//! an engine built with random weights from its seed (`zambac-run materialize`): a
//! benchmark engine of billions of parameters then travels as its manifest and code alone.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use xxhash_rust::xxh3::xxh3_64;

/// The values of the parameter `name` of `shape`, drawn with `seed` (row-major, f32).
pub fn values(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ xxh3_64(name.as_bytes()));
    let n: usize = shape.iter().product();
    let fan_in = match shape {
        [_, .., last] => *last,
        _ => 1,
    };
    let normal = |rng: &mut ChaCha8Rng, std: f64| -> Vec<f32> {
        // A non-finite scale (an absurd fan-in) draws zeros rather than failing.
        let Ok(d) = Normal::new(0.0, std) else {
            return vec![0.0; n];
        };
        (0..n).map(|_| d.sample(rng) as f32).collect()
    };
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, hi: f64| -> Vec<f64> {
        let Ok(d) = Uniform::new(lo, hi) else {
            return vec![lo; n];
        };
        (0..n).map(|_| d.sample(rng)).collect()
    };
    if name.ends_with("layernorm.weight") || name.ends_with("norm.weight") {
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
    }
}
