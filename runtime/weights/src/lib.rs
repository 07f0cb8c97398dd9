//! Model weights: read from Hugging Face checkpoints or drawn at random, held as f32
//! tensors indexed by `ParamId`.

// Safetensors checkpoints and sharded index files reach this crate from outside: no
// panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod bind;
mod checkpoint;
mod random;

pub use bind::{Bound, Resolved, bind, resolve};
pub use checkpoint::{Checkpoint, TensorEntry};
pub use random::random_param;

use xxhash_rust::xxh3::xxh3_64;
use zambac_ir::Module;

use zambac_runtime::Tensor;

/// Random weights for every parameter of `m`.
pub fn random(m: &Module, seed: u64) -> Vec<Tensor> {
    use rayon::prelude::*;
    m.params.par_iter().map(|p| random_param(p, seed)).collect()
}

/// Content hash of a tensor's values (shape included), for `dedup-weights`.
pub fn content_hash(t: &Tensor) -> u64 {
    let mut bytes = Vec::with_capacity(t.data.len() * 4 + t.shape.len() * 8);
    for d in &t.shape {
        bytes.extend_from_slice(&(*d as u64).to_le_bytes());
    }
    for v in &t.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    xxh3_64(&bytes)
}

/// Records each parameter's content hash in the module.
pub fn annotate_hashes(m: &mut Module, tensors: &[Tensor]) {
    for (p, t) in m.params.iter_mut().zip(tensors) {
        p.hash = Some(content_hash(t));
    }
}
