//! The reference interpreter as a generation [`Backend`].

use std::collections::HashMap;

use zambac_engine::StateRole;
use zambac_ir::Module;
use zambac_runtime::session::{Backend, State, check_room};
use zambac_runtime::{RuntimeError, Tensor};

use crate::execute;
use crate::value::Value;

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

    /// Runs `graph`; returns the logits and the state outputs in the graph's output order
    /// (the other outputs, per-layer hidden states, are dropped).
    fn run(
        &self,
        graph: &str,
        inputs: &HashMap<String, Value>,
        capacity: usize,
    ) -> Result<(Tensor, Vec<(StateRole, Tensor)>), RuntimeError> {
        let g = self
            .module
            .graph(graph)
            .ok_or_else(|| RuntimeError::Internal(format!("module has no `{graph}` graph")))?;
        let mut out = execute(g, &self.weights, inputs, capacity)?;
        let logits = out
            .remove("logits")
            .ok_or_else(|| RuntimeError::Internal("no logits output".into()))?
            .into_f32()?;
        let mut states = Vec::new();
        for (name, _) in &g.outputs {
            let Ok(role) = name.parse::<StateRole>() else {
                continue;
            };
            let t = out
                .remove(name)
                .ok_or_else(|| RuntimeError::Internal(format!("no `{name}` output")))?;
            states.push((role, t.into_f32()?));
        }
        Ok((logits, states))
    }
}

impl Backend for ReferenceBackend {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![(
            "backend",
            "the reference interpreter of the IR (f32, single pass per op)".into(),
        )]
    }

    fn new_state(&self, capacity: usize) -> Result<State, RuntimeError> {
        Ok(State::new(Vec::new(), capacity, 0))
    }

    /// The IR's prefill graph starts from the empty state: a prompt, not a continuation.
    fn extend(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        if state.position() != 0 {
            return Err(RuntimeError::Input(
                "the reference interpreter prefills from position 0 only; continue a \
                 sequence on the cpu backend"
                    .into(),
            ));
        }
        let inputs = HashMap::from([("tokens".to_string(), Value::tokens(tokens))]);
        let (logits, states) = self.run("prefill", &inputs, state.capacity())?;
        *state = State::new(states, state.capacity(), tokens.len());
        Ok(logits)
    }

    fn decode(&mut self, token: i64, state: &mut State) -> Result<Tensor, RuntimeError> {
        check_room(state)?;
        let pos = state.position();
        let mut inputs: HashMap<String, Value> = state
            .take_tensors()
            .into_iter()
            .map(|(role, t)| (role.name(), Value::F32(t)))
            .collect();
        inputs.insert("token".into(), Value::tokens(&[token]));
        let pos = i64::try_from(pos)
            .map_err(|_| RuntimeError::Input(format!("position {pos} is too large")))?;
        inputs.insert("pos".into(), Value::scalar_i64(pos));
        let (logits, states) = self.run("decode", &inputs, state.capacity())?;
        state.restore(states);
        state.advance(1);
        Ok(logits)
    }
}
