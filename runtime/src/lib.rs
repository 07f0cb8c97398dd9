//! zambac's runtime: weights (Hugging Face safetensors, sharded or not; random), the
//! reference interpreter, generation with recurrent state and KV caches, sampling.

pub mod error;
pub mod reference;
pub mod sampling;
pub mod session;
pub mod tensor;
pub mod weights;

pub use error::RuntimeError;
pub use tensor::{Tensor, Value};
