//! zambac's frontend: model descriptions in, a validated [`ModelSpec`] out.
//!
//! Inputs are a zambac TOML description (`docs/model-description.md`), a Hugging Face
//! `config.json` (`model_type` `zamba2` or `zamba`, legacy and transformers-5 forms), or a
//! checkpoint directory holding one. Every error names the file, the line:column, the key,
//! what was expected and what was found.
//!
//! Stages: text → spanned value tree ([`syntax`](crate::syntax), shared by both formats) →
//! a draft per format (`toml_desc`, `hf`) → cross-checks common to every Zamba model
//! (`resolve`) → [`ModelSpec`]. [`to_toml`] goes back to text; [`apply_overrides`] edits a
//! spec through that text, for `zambac explore --sweep`.

// Input reaches this crate from files: no panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod emit;
mod error;
mod hf;
mod load;
mod node;
mod overrides;
mod reader;
mod resolve;
mod rope;
pub mod spec;
mod syntax;
mod toml_desc;

pub use emit::to_toml;
pub use error::{Diagnostic, FrontendError};
pub use load::{InputKind, Loaded, load, parse_hf_config, parse_toml};
pub use overrides::apply_overrides;
pub use spec::*;

/// Every key of the TOML description, dotted (`mamba.d_state`), plus the `adapter_rank`
/// alias: the keys [`apply_overrides`] accepts.
pub fn override_keys() -> Vec<String> {
    let mut keys = toml_desc::all_keys();
    keys.push("adapter_rank".into());
    keys
}
