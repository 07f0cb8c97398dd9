//! Seeded random weights for models described without a checkpoint: the engine
//! contract's generator ([`zambac_engine::random`]) applied to IR parameters.

use zambac_ir::Param;
use zambac_runtime::Tensor;

/// A tensor for `p` drawn with `seed`.
pub fn random_param(p: &Param, seed: u64) -> Tensor {
    Tensor::new(
        p.shape.clone(),
        zambac_engine::random::values(&p.name, &p.shape, seed),
    )
}
