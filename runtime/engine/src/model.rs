//! What a backend needs to know about the model an engine runs, in the contract's own
//! types: its dimensions, the layout of a sequence's state (conv and SSM states of every
//! Mamba layer, K/V caches of every attention invocation) and where its tokenizer is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::elem::Elem;
use crate::expr::Expr;
use crate::manifest::FileRef;

/// The model of an engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    /// `zamba2` or `zamba` (informational: the programs say what is computed).
    pub family: String,
    /// Columns of the logits; token ids must be below it.
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Layers of the backbone (each with its Mamba mixer).
    pub layers: usize,
    /// Storage type of the matrix weights (the others are f32).
    pub weight_elem: Elem,
    /// Every tensor of a sequence's state, in the order the programs list them.
    pub state: Vec<StateSpec>,
    /// The `tokenizer.json` copied into the engine, when the model came with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileRef>,
    /// What a server needs to generate the way the checkpoint expects: the tokens that end
    /// a generation, the trained context, the chat template.
    #[serde(default, skip_serializing_if = "GenerationInfo::is_empty")]
    pub generation: GenerationInfo,
}

/// The checkpoint's generation settings (`config.json`, `generation_config.json`,
/// `tokenizer_config.json`), where it has them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationInfo {
    /// Token ids that end a generation (`eos_token_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eos_token_ids: Vec<i64>,
    /// The context the model was trained for (`max_position_embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// The chat template (a Jinja template over `messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// The special tokens' text, as the chat template sees them (`bos_token`, `eos_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
}

impl GenerationInfo {
    pub fn is_empty(&self) -> bool {
        *self == GenerationInfo::default()
    }
}

/// One tensor of a sequence's state: what it is and its shape, in which the KV caches'
/// capacity appears as `C`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    pub role: StateRole,
    pub shape: Vec<Expr>,
    /// How its values are stored: f32, or bf16 (a KV cache built with `--kv-dtype bf16`, an
    /// SSM state built with `--state-dtype bf16`).
    #[serde(default = "Elem::f32", skip_serializing_if = "Elem::is_f32")]
    pub elem: Elem,
}

impl StateSpec {
    /// The shape of the f32 array that holds the state for a KV-cache capacity of
    /// `capacity` tokens: its own shape, except that a bf16 state packs two values into
    /// each f32 word along its last dimension (which must be even).
    pub fn dims(&self, capacity: usize) -> Option<Vec<usize>> {
        let mut dims: Vec<usize> = self
            .shape
            .iter()
            .map(|e| usize::try_from(e.eval(1, capacity, 0)?).ok())
            .collect::<Option<_>>()?;
        if self.elem == Elem::Bf16 {
            let last = dims.last_mut()?;
            if *last % 2 != 0 {
                return None;
            }
            *last /= 2;
        }
        Some(dims)
    }

    /// Bytes of that array (f32 words), saturating.
    pub fn bytes(&self, capacity: usize) -> Option<u64> {
        let dims = self.dims(capacity)?;
        Some(dims.iter().fold(4u64, |n, &x| n.saturating_mul(x as u64)))
    }

    /// Values per f32 word of the array [`StateSpec::dims`] describes.
    pub fn per_word(&self) -> usize {
        if self.elem == Elem::Bf16 { 2 } else { 1 }
    }
}

/// What a state tensor holds. Programs name it by [`StateRole::name`] (`conv.3`, `k.5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateRole {
    /// The causal conv's last inputs of Mamba layer `layer`.
    Conv { layer: usize },
    /// The SSM state of Mamba layer `layer`.
    Ssm { layer: usize },
    /// The key cache of the attention invocation at layer `layer`: `[kv_heads, C, head_dim]`.
    Key { layer: usize },
    /// The value cache beside [`StateRole::Key`].
    Value { layer: usize },
}

impl StateRole {
    /// The name programs use for this tensor.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// Whether the tensor grows with the context (a KV cache).
    pub fn is_cache(&self) -> bool {
        matches!(self, StateRole::Key { .. } | StateRole::Value { .. })
    }

    pub fn layer(&self) -> usize {
        match *self {
            StateRole::Conv { layer }
            | StateRole::Ssm { layer }
            | StateRole::Key { layer }
            | StateRole::Value { layer } => layer,
        }
    }
}

impl fmt::Display for StateRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self {
            StateRole::Conv { .. } => "conv",
            StateRole::Ssm { .. } => "ssm",
            StateRole::Key { .. } => "k",
            StateRole::Value { .. } => "v",
        };
        write!(f, "{prefix}.{}", self.layer())
    }
}

impl FromStr for StateRole {
    type Err = String;

    fn from_str(s: &str) -> Result<StateRole, String> {
        let bad = || format!("`{s}` is not a state name (conv.L, ssm.L, k.L or v.L)");
        let (prefix, layer) = s.split_once('.').ok_or_else(bad)?;
        let digits = !layer.is_empty() && layer.bytes().all(|b| b.is_ascii_digit());
        let layer: usize = layer.parse().ok().filter(|_| digits).ok_or_else(bad)?;
        match prefix {
            "conv" => Ok(StateRole::Conv { layer }),
            "ssm" => Ok(StateRole::Ssm { layer }),
            "k" => Ok(StateRole::Key { layer }),
            "v" => Ok(StateRole::Value { layer }),
            _ => Err(bad()),
        }
    }
}

impl Serialize for StateRole {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StateRole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StateRole, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in [
            StateRole::Conv { layer: 0 },
            StateRole::Ssm { layer: 12 },
            StateRole::Key { layer: 5 },
            StateRole::Value { layer: 53 },
        ] {
            assert_eq!(r.name().parse::<StateRole>(), Ok(r));
        }
        for bad in ["conv", "k.", "q.1", "ssm.+1", "v.1.2", "conv.-1"] {
            assert!(bad.parse::<StateRole>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cache_dims_follow_the_capacity() {
        let mut k = StateSpec {
            role: StateRole::Key { layer: 2 },
            shape: vec![Expr::k(2), Expr::C, Expr::k(8)],
            elem: Elem::F32,
        };
        assert_eq!(k.dims(100), Some(vec![2, 100, 8]));
        assert!(k.role.is_cache());
        // bf16: two values per f32 word of the last dimension, which must be even.
        k.elem = Elem::Bf16;
        assert_eq!((k.dims(100), k.per_word()), (Some(vec![2, 100, 4]), 2));
        k.shape[2] = Expr::k(7);
        assert_eq!(k.dims(100), None);
    }
}
