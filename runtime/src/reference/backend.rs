//! The reference interpreter as a generation [`Backend`].

use std::collections::HashMap;

use zambac_ir::Module;

use super::execute;
use crate::error::RuntimeError;
use crate::session::{Backend, State};
use crate::tensor::{Tensor, Value};

/// Interprets a module's `prefill` and `decode` graphs with f32 weights.
pub struct ReferenceBackend {
    module: Module,
    weights: Vec<Tensor>,
    vocab: usize,
}

impl ReferenceBackend {
    pub fn new(module: Module, weights: Vec<Tensor>) -> Result<ReferenceBackend, RuntimeError> {
        let logits = module
            .graph("prefill")
            .and_then(|g| {
                g.outputs
                    .iter()
                    .find(|(n, _)| n == "logits")
                    .map(|(_, v)| g.ty(*v).clone())
            })
            .ok_or_else(|| RuntimeError::Internal("module has no prefill logits".into()))?;
        let vocab = logits.dims[1].as_const().unwrap_or(0);
        Ok(ReferenceBackend {
            module,
            weights,
            vocab,
        })
    }

    fn run(
        &self,
        graph: &str,
        inputs: &HashMap<String, Value>,
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let g = self
            .module
            .graph(graph)
            .ok_or_else(|| RuntimeError::Internal(format!("module has no `{graph}` graph")))?;
        let mut out = execute(g, &self.weights, inputs, capacity)?;
        let logits = out
            .remove("logits")
            .ok_or_else(|| RuntimeError::Internal("no logits output".into()))?
            .into_f32()?;
        Ok((logits, out))
    }
}

impl Backend for ReferenceBackend {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn prefill(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        let inputs = HashMap::from([("tokens".to_string(), Value::tokens(tokens))]);
        self.run("prefill", &inputs, capacity)
    }

    fn decode(
        &mut self,
        token: i64,
        pos: usize,
        mut state: State,
    ) -> Result<(Tensor, State), RuntimeError> {
        // Models without attention have no KV cache; the capacity is then irrelevant.
        let capacity = kv_capacity(&state).unwrap_or(pos + 1);
        state.insert("token".into(), Value::tokens(&[token]));
        state.insert("pos".into(), Value::scalar_i64(pos as i64));
        self.run("decode", &state, capacity)
    }
}

/// The capacity of the KV caches in a state (their middle dimension).
fn kv_capacity(state: &State) -> Option<usize> {
    state
        .iter()
        .find(|(n, _)| n.starts_with("k."))
        .map(|(_, v)| v.shape()[1])
}
