//! zambac's graph IR.
//!
//! A [`Module`] holds the model's parameters and two entry graphs, `prefill` and `decode`,
//! whose recurrent states and KV caches are explicit inputs and outputs. Graphs are built
//! from a [`zambac_frontend::ModelSpec`] by [`build::build`], print to and parse from the
//! `.zir` text form ([`text`]), are checked by [`verify`], and are costed by [`cost`].

// `.zir` files reach this crate from users, and the verifier, shape inference and cost model
// run on what was parsed: no panicking shortcuts outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod build;
pub mod cost;
pub mod graph;
pub mod op;
pub mod operands;
pub mod plan;
pub mod signature;
pub mod text;
pub mod types;
pub mod verify;

pub use build::{BuildOptions, build, build_with};
pub use graph::{Graph, Loc, Module, Node, NodeId, Param, ParamId, Placement, ValueRef};
pub use op::OpKind;
pub use text::{parse_module, parse_module_unverified, print_module};
pub use types::{Bindings, Dim, Elem, Sym, TensorType};
pub use verify::verify_module;
