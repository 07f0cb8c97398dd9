//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling
//! with a seeded generator (the same seed gives the same text).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    /// Refuses settings no distribution has: a temperature that is negative or not a
    /// number, a `top_p` outside (0, 1]. Messages name the command-line flag.
    pub fn check(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "--temperature {}: expected a finite number ≥ 0 (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "--top-p {}: expected a number in (0, 1]",
                self.top_p
            ));
        }
        Ok(())
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A sampler holding its random stream.
pub struct Sampler {
    cfg: Sampling,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(cfg: Sampling) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        Sampler { cfg, rng }
    }

    /// The next token given one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> i64 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits) as i64;
        }
        let mut cands: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        // Stable sort: ties keep token order, so results are reproducible.
        cands.sort_by(|a, b| b.1.total_cmp(&a.1));
        if self.cfg.top_k > 0 {
            cands.truncate(self.cfg.top_k);
        }
        let t = self.cfg.temperature as f64;
        let Some(&(_, max)) = cands.first() else {
            return 0;
        };
        let mut probs: Vec<f64> = cands
            .iter()
            .map(|&(_, l)| ((l as f64 - max as f64) / t).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    acc += p;
                    acc >= self.cfg.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            cands.truncate(keep);
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for (p, &(i, _)) in probs.iter().zip(&cands) {
            acc += p;
            if u < acc {
                return i as i64;
            }
        }
        cands.last().map_or(0, |&(i, _)| i as i64)
    }
}

/// Index of the largest logit (the first one on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if i == 0 || v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn sampling_is_reproducible_and_respects_top_k() {
        let logits = [0.0, 3.0, 2.9, -1.0, 2.8];
        let cfg = Sampling {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 7,
        };
        let a: Vec<i64> = {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.pick(&logits)).collect()
        };
        let b: Vec<i64> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.pick(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t == 1 || t == 2), "{a:?}");
        assert!(a.contains(&1) && a.contains(&2));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let logits = [10.0, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        });
        assert!((0..20).all(|_| s.pick(&logits) == 0));
    }
}
