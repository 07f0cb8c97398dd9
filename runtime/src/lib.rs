//! zambac's runtime: weights (Hugging Face safetensors, sharded or not; random), the
//! engine format, the reference interpreter and the compiled `cpu` backend, generation
//! with recurrent state and KV caches, sampling, benchmarking.

pub mod bench;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod reference;
pub mod sampling;
pub mod session;
pub mod tensor;
pub mod weights;

pub use error::RuntimeError;
pub use tensor::{Tensor, Value};
