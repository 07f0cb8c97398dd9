//! Rotary position embedding's frequencies, scaled for long contexts the way transformers
//! 5.23 computes them (`modeling_rope_utils.py`: `rope_type` `default`, `linear`,
//! `dynamic`, `yarn`, `longrope`, `llama3`).
//!
//! Every value is formed with the f32 operations torch performs (a Python float meeting an
//! f32 tensor is rounded to f32 first), so that a compiled engine, the reference
//! interpreter and Hugging Face agree to the last bit or two. Two kinds depend on the call:
//! `dynamic` rescales θ from the sequence length a forward pass reaches (`max position + 1`),
//! and `longrope` switches from its short to its long factors once that length passes the
//! original context. transformers keeps that state in the module between calls; for one
//! sequence that only grows (every prefill, continuation and decode step of a generation)
//! its frequencies are exactly [`Rope::inv_freq`] of the length the call reaches.

use serde::{Deserialize, Serialize};

/// How a checkpoint scales RoPE (transformers' `rope_parameters`), every parameter resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// NTK-aware: θ grows with the length a call reaches past `max_position_embeddings`.
    Dynamic {
        factor: f64,
        max_position_embeddings: u64,
    },
    /// YaRN: interpolation for the low frequencies, extrapolation for the high ones, a linear
    /// ramp between, and cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: u64,
        attention_factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
    },
    /// Per-frequency factors, short below the original context and long past it, and cos/sin
    /// scaled by `attention_factor`.
    Longrope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: u64,
        attention_factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: u64,
    },
}

impl RopeScaling {
    /// transformers' `rope_type` of this scaling.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Longrope { .. } => "longrope",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }

    /// Why this scaling cannot rotate heads of `head_dim`, if it cannot.
    pub fn check(&self, head_dim: usize) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, found {v}"))
            }
        };
        let context = |name: &str, v: u64| {
            if v > 0 {
                Ok(())
            } else {
                Err(format!("{name} must be at least 1"))
            }
        };
        match self {
            RopeScaling::Linear { factor } => positive("factor", *factor),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                context("max_position_embeddings", *max_position_embeddings)?;
                if head_dim <= 2 {
                    return Err(format!(
                        "dynamic scaling raises θ to dim/(dim-2), which needs a head dim above 2, found {head_dim}"
                    ));
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                ..
            } => {
                positive("factor", *factor)?;
                positive("attention_factor", *attention_factor)?;
                positive("beta_fast", *beta_fast)?;
                positive("beta_slow", *beta_slow)?;
                context(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            } => {
                positive("attention_factor", *attention_factor)?;
                context(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                for (name, list) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if list.len() != head_dim / 2 {
                        return Err(format!(
                            "{name} needs one factor per rotated pair, {} for head dim {head_dim}, found {}",
                            head_dim / 2,
                            list.len()
                        ));
                    }
                    for v in list {
                        positive(name, *v)?;
                    }
                }
                Ok(())
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                context(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// RoPE over whole heads (NeoX rotate-half): base θ, head dim, and its scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope<'a> {
    pub theta: f64,
    pub head_dim: usize,
    pub scaling: Option<&'a RopeScaling>,
}

/// `2m / dim` as `torch.arange(0, dim, 2).float() / dim`: pair `m`'s frequency is
/// `1 / base^exponent`.
pub fn exponent(m: usize, dim: usize) -> f32 {
    (2 * m) as f32 / dim as f32
}

/// `1 / base^(2m/dim)` for every pair, in f32.
fn default_inv_freq(base: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|m| 1.0 / base.powf(exponent(m, dim)))
        .collect()
}

impl Rope<'_> {
    /// Whether the frequencies depend on the length a call reaches.
    pub fn depends_on_length(&self) -> bool {
        matches!(
            self.scaling,
            Some(RopeScaling::Dynamic { .. } | RopeScaling::Longrope { .. })
        )
    }

    /// The factor transformers multiplies cos and sin by (`attention_scaling`).
    pub fn attention_factor(&self) -> f32 {
        match self.scaling {
            Some(
                RopeScaling::Yarn {
                    attention_factor, ..
                }
                | RopeScaling::Longrope {
                    attention_factor, ..
                },
            ) => *attention_factor as f32,
            _ => 1.0,
        }
    }

    /// The length past which a length-dependent scaling changes its frequencies, and the
    /// frequencies below it (those of [`Rope::inv_freq`] at that length).
    pub fn threshold(&self) -> Option<u64> {
        match self.scaling {
            Some(RopeScaling::Dynamic {
                max_position_embeddings,
                ..
            }) => Some(*max_position_embeddings),
            Some(RopeScaling::Longrope {
                original_max_position_embeddings,
                ..
            }) => Some(*original_max_position_embeddings),
            _ => None,
        }
    }

    /// Dynamic scaling's θ for a call reaching `seq_len` positions past
    /// `max_position_embeddings` (f32, as transformers grows it at run time).
    pub fn dynamic_base(
        theta: f64,
        factor: f64,
        max_positions: u64,
        dim: usize,
        seq_len: u64,
    ) -> f32 {
        let s = seq_len.max(max_positions) as f32;
        let ratio = (factor as f32 * s) / max_positions as f32 - (factor - 1.0) as f32;
        theta as f32 * ratio.powf((dim as f64 / (dim as f64 - 2.0)) as f32)
    }

    /// The inverse frequency of every rotated pair for a call whose last position is
    /// `seq_len - 1`.
    pub fn inv_freq(&self, seq_len: u64) -> Vec<f32> {
        let dim = self.head_dim;
        let theta = self.theta as f32;
        let Some(scaling) = self.scaling else {
            return default_inv_freq(theta, dim);
        };
        match scaling {
            RopeScaling::Linear { factor } => default_inv_freq(theta, dim)
                .into_iter()
                .map(|f| f / *factor as f32)
                .collect(),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => {
                if seq_len <= *max_position_embeddings {
                    // The frequencies transformers computed at load time (in f64, where the
                    // ratio is exactly 1): the plain ones.
                    return default_inv_freq(theta, dim);
                }
                let base =
                    Self::dynamic_base(self.theta, *factor, *max_position_embeddings, dim, seq_len);
                default_inv_freq(base, dim)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let correction_dim = |rotations: f64| {
                    (dim as f64
                        * (*original_max_position_embeddings as f64
                            / (rotations * 2.0 * std::f64::consts::PI))
                            .ln())
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
                if low == high {
                    high += 0.001;
                }
                (0..dim / 2)
                    .map(|m| {
                        let pos_freq = theta.powf(exponent(m, dim));
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (*factor as f32 * pos_freq);
                        let ramp = ((m as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let keep = 1.0 - ramp;
                        interpolation * (1.0 - keep) + extrapolation * keep
                    })
                    .collect()
            }
            RopeScaling::Longrope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                ..
            } => {
                let factors = if seq_len > *original_max_position_embeddings {
                    long_factor
                } else {
                    short_factor
                };
                (0..dim / 2)
                    .map(|m| {
                        let ext = factors.get(m).copied().unwrap_or(1.0) as f32;
                        1.0 / (ext * theta.powf(exponent(m, dim)))
                    })
                    .collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (
                    (old / low_freq_factor) as f32,
                    (old / high_freq_factor) as f32,
                );
                let factor = *factor as f32;
                default_inv_freq(theta, dim)
                    .into_iter()
                    .map(|f| {
                        let wavelen = (2.0 * std::f64::consts::PI) as f32 / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled;
                        }
                        let smooth = (old as f32 / wavelen - *low_freq_factor as f32)
                            / (*high_freq_factor - *low_freq_factor) as f32;
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: &RopeScaling) -> Rope<'_> {
        Rope {
            theta: 10000.0,
            head_dim: 8,
            scaling: Some(scaling),
        }
    }

    #[test]
    fn unscaled_frequencies_are_the_plain_ones() {
        let plain = Rope {
            theta: 10000.0,
            head_dim: 8,
            scaling: None,
        };
        assert_eq!(plain.inv_freq(1), vec![1.0, 0.1, 0.01, 0.001]);
        assert_eq!(plain.attention_factor(), 1.0);
        assert!(!plain.depends_on_length());
    }

    #[test]
    fn linear_divides_and_llama3_keeps_high_frequencies() {
        let linear = RopeScaling::Linear { factor: 4.0 };
        assert_eq!(
            rope(&linear).inv_freq(1),
            vec![0.25, 0.025, 0.0025, 0.00025]
        );
        let llama3 = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let f = rope(&llama3).inv_freq(1);
        // Wavelengths 6.3 and 63: the first is kept (below 64/4), the second blended; 628
        // and 6283 are past 64 and divided by 8.
        assert_eq!(f[0], 1.0);
        assert!(f[1] < 0.1 && f[1] > 0.1 / 8.0, "{f:?}");
        assert_eq!(f[2], 0.01 / 8.0);
        assert_eq!(f[3], 0.001 / 8.0);
    }

    #[test]
    fn dynamic_and_longrope_change_past_their_threshold_only() {
        let dynamic = RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 16,
        };
        let r = rope(&dynamic);
        assert!(r.depends_on_length());
        assert_eq!(r.threshold(), Some(16));
        assert_eq!(r.inv_freq(16), vec![1.0, 0.1, 0.01, 0.001]);
        let long = r.inv_freq(40);
        assert_eq!(long[0], 1.0);
        assert!(long[3] < 0.001, "{long:?}");
        let longrope = RopeScaling::Longrope {
            short_factor: vec![1.0, 1.0, 2.0, 2.0],
            long_factor: vec![1.0, 4.0, 4.0, 8.0],
            original_max_position_embeddings: 16,
            attention_factor: 1.2,
        };
        let r = rope(&longrope);
        assert_eq!(r.inv_freq(16), vec![1.0, 0.1, 0.005, 0.0005]);
        assert_eq!(r.inv_freq(17), vec![1.0, 0.025, 0.0025, 0.000125]);
        assert_eq!(r.attention_factor(), 1.2);
    }

    #[test]
    fn yarn_interpolates_low_frequencies_and_keeps_high_ones() {
        let yarn = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 64,
            attention_factor: 1.1386,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        };
        let f = rope(&yarn).inv_freq(1);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[3], 0.001 / 4.0);
    }

    #[test]
    fn sizes_are_checked() {
        let longrope = RopeScaling::Longrope {
            short_factor: vec![1.0; 3],
            long_factor: vec![1.0; 4],
            original_max_position_embeddings: 16,
            attention_factor: 1.0,
        };
        assert!(longrope.check(8).unwrap_err().contains("short_factor"));
        let linear = RopeScaling::Linear { factor: f64::NAN };
        assert!(linear.check(8).is_err());
        let dynamic = RopeScaling::Dynamic {
            factor: 2.0,
            max_position_embeddings: 4,
        };
        assert!(dynamic.check(2).is_err());
        assert!(dynamic.check(8).is_ok());
    }
}
