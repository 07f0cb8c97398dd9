//! Every pass, registered once, by name.

use crate::manager::{Pass, PipelineError};
use crate::{
    Canonicalize, Dce, DedupWeights, FuseAdapters, FuseEpilogues, FuseMamba, HoistSharedInput,
    PlanMemory,
};

/// All passes, in default pipeline order.
pub static REGISTRY: &[&dyn Pass] = &[
    &Canonicalize,
    &DedupWeights,
    &FuseMamba,
    &FuseAdapters,
    &FuseEpilogues,
    &HoistSharedInput,
    &Dce,
    &PlanMemory,
];

/// The pass called `name`; an error lists the valid names.
pub fn lookup(name: &str) -> Result<&'static dyn Pass, PipelineError> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.name() == name)
        .ok_or_else(|| PipelineError::UnknownPass {
            name: name.to_string(),
            valid: REGISTRY
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}
