//! Checkpoint tensor names (spec §4): the stable names of the IR's parameters.
//!
//! Names follow the Hugging Face checkpoints, so a loader binds weights by name. A shared
//! block's tensors are named under the first hybrid layer that uses the block (where
//! transformers 5 stores them) and carry a tie key `shared{b}/<suffix>` that says which
//! block they belong to wherever a checkpoint happens to store it (spec §4.3 rule 1).

use zambac_frontend::{Family, ModelSpec};

/// Name of the token embedding table.
pub const EMBED: &str = "model.embed_tokens.weight";
/// Name of the final RMSNorm weight.
pub const FINAL_NORM: &str = "model.final_layernorm.weight";
/// Name of an untied output projection.
pub const LM_HEAD: &str = "lm_head.weight";

/// Prefix of layer `l`'s Mamba sub-layer (its input norm and mixer live under it).
pub fn mamba_layer_prefix(l: usize, hybrid: bool) -> String {
    if hybrid {
        format!("model.layers.{l}.mamba_decoder.")
    } else {
        format!("model.layers.{l}.")
    }
}

/// Name of hybrid layer `l`'s per-invocation linear.
pub fn hybrid_linear(l: usize) -> String {
    format!("model.layers.{l}.linear.weight")
}

/// The attribute under which a hybrid layer holds its shared block.
pub fn block_attr(family: Family) -> &'static str {
    match family {
        Family::Zamba2 => "shared_transformer",
        Family::Zamba => "shared_transf",
    }
}

/// Prefix of a shared block's tensors as stored under hybrid layer `l`.
pub fn block_prefix(family: Family, l: usize) -> String {
    format!("model.layers.{l}.{}.", block_attr(family))
}

/// Tie key of a shared-block tensor: block index and the name suffix after the prefix.
pub fn tie_key(block: usize, suffix: &str) -> String {
    format!("shared{block}/{suffix}")
}

/// Splits a tie key into block index and suffix.
pub fn parse_tie_key(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("shared")?;
    let (b, suffix) = rest.split_once('/')?;
    Some((b.parse().ok()?, suffix))
}

/// The hybrid layers that invoke `block`, in depth order.
pub fn block_layers(spec: &ModelSpec, block: usize) -> Vec<usize> {
    spec.hybrid_layer_ids()
        .into_iter()
        .zip(&spec.shared.invocation_blocks)
        .filter(|(_, b)| **b == block)
        .map(|(l, _)| l)
        .collect()
}

/// Suffix of adapter tensor `which` (`0` = down, `1` = up) of projection `proj` for slot `i`.
pub fn attn_adapter_suffix(proj: char, i: usize, which: usize) -> String {
    format!("self_attn.linear_{proj}_adapter_list.{i}.{which}.weight")
}

/// Suffix of the MLP adapter tensor `which` for slot `i`.
pub fn mlp_adapter_suffix(i: usize, which: usize) -> String {
    format!("feed_forward.gate_up_proj_adapter_list.{i}.{which}.weight")
}
