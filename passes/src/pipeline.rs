//! The default pipeline, as data. The order lives here and only here.

use crate::manager::Pass;
use crate::{
    Canonicalize, Dce, DedupWeights, FuseAdapters, FuseEpilogues, FuseMamba, HoistSharedInput,
    PlanMemory,
};

/// One entry of a pipeline.
#[derive(Clone, Copy)]
pub enum Step {
    Pass(&'static dyn Pass),
    /// Re-run until no pass reports a change, at most `max_iters` rounds.
    Fixpoint {
        passes: &'static [&'static dyn Pass],
        max_iters: u32,
    },
}

/// The optimisation pipeline `zambac build` runs.
pub fn default_pipeline() -> Vec<Step> {
    vec![
        // Fold identity and nested views and merge duplicates, so the fusion patterns
        // below see one canonical form.
        Step::Pass(&Canonicalize),
        // Before any fusion: fused ops name weights by parameter id, so every shared or
        // identical tensor must already be a single parameter.
        Step::Pass(&DedupWeights),
        // The mixer chains first, so their internal adds, muls and norms are not taken
        // by the generic epilogue patterns.
        Step::Pass(&FuseMamba),
        // Adapters join their shared projection before epilogues attach to it.
        Step::Pass(&FuseAdapters),
        // RoPE, MLP gates, residual add + norm and the embedding concat.
        Step::Pass(&FuseEpilogues),
        // On the fused form: the shared block's normalised concatenation is one op, so
        // every invocation's products over the embedding half are easy to find.
        Step::Pass(&HoistSharedInput),
        // Fusions erase what they replace; this removes anything else left unread and
        // drops parameters no graph reads.
        Step::Pass(&Dce),
        // Last: buffers are planned on the final op list.
        Step::Pass(&PlanMemory),
    ]
}
