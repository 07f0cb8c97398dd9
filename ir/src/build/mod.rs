//! `ModelSpec` → [`Module`]: the unoptimised `prefill` and `decode` graphs.
//!
//! The builder writes the model exactly as spec §2 states it, one primitive op per step
//! (projections, splits, conv, softplus, scan, gating, norms, attention), so the graph is
//! easy to check against the spec and every fusion is a visible pass. States are explicit:
//! `prefill` produces every layer's conv and SSM state and every hybrid layer's K/V cache;
//! `decode` consumes and produces them.

mod mamba;
pub mod names;
mod shared;

use std::collections::HashMap;

use zambac_engine::StateRole;
use zambac_frontend::{LayerKind, ModelSpec};

use crate::graph::{Graph, Loc, Module, NodeId, Param, ParamId, ValueRef};
use crate::op::{LinearAttrs, OpKind};
use crate::signature::TypeError;
use crate::types::{Elem, T, TensorType};

/// The builder produced an ill-typed op, or was given a spec that breaks what the
/// frontend validates: a compiler bug, reported with its location.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error building {graph} at {loc}: {err}")]
pub struct BuildError {
    pub graph: String,
    pub loc: Loc,
    pub err: BuildFault,
}

/// What went wrong in a [`BuildError`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildFault {
    /// An op the builder wrote does not type-check.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// The spec is inconsistent in a way the frontend rules out (say, a hybrid layer
    /// without a shared block assigned).
    #[error("{0}")]
    Spec(String),
}

/// Which entry graph is being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Prefill,
    Decode,
}

/// Options of the builder.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Also output the residual stream after every layer of `prefill` as `hidden.{l}`
    /// (for comparing against a reference layer by layer).
    pub hidden_states: bool,
}

/// Builds the module (parameters, `prefill`, `decode`) of a model.
pub fn build(spec: &ModelSpec) -> Result<Module, BuildError> {
    build_with(spec, BuildOptions::default())
}

/// [`build`] with options.
pub fn build_with(spec: &ModelSpec, opts: BuildOptions) -> Result<Module, BuildError> {
    let mut module = Module {
        name: spec.name.clone(),
        ..Module::default()
    };
    let mut params = ParamTable::default();
    for mode in [Mode::Prefill, Mode::Decode] {
        let mut b = GraphBuilder::new(spec, &mut module, &mut params, mode);
        b.hidden_states = opts.hidden_states && mode == Mode::Prefill;
        let g = b.build()?;
        module.graphs.push(g);
    }
    Ok(module)
}

/// Parameters by name, so both graphs refer to the same ids.
#[derive(Default)]
struct ParamTable {
    by_name: HashMap<String, ParamId>,
}

struct GraphBuilder<'a> {
    spec: &'a ModelSpec,
    module: &'a mut Module,
    params: &'a mut ParamTable,
    g: Graph,
    mode: Mode,
    /// This graph's node for each parameter it uses.
    nodes: HashMap<ParamId, ValueRef>,
    loc: Loc,
    /// Decode: the position of the token (tokens seen so far).
    pos: Option<ValueRef>,
    /// Decode: incoming state by name.
    state_in: HashMap<StateRole, ValueRef>,
    /// Outgoing state, in the order the layers produce it.
    state_out: Vec<(StateRole, ValueRef)>,
    /// Whether to output the residual stream after each layer.
    hidden_states: bool,
    hidden: Vec<(String, ValueRef)>,
}

impl<'a> GraphBuilder<'a> {
    fn new(
        spec: &'a ModelSpec,
        module: &'a mut Module,
        params: &'a mut ParamTable,
        mode: Mode,
    ) -> Self {
        let name = match mode {
            Mode::Prefill => "prefill",
            Mode::Decode => "decode",
        };
        GraphBuilder {
            spec,
            module,
            params,
            g: Graph::new(name),
            mode,
            nodes: HashMap::new(),
            loc: Loc::Embed,
            pos: None,
            state_in: HashMap::new(),
            state_out: Vec::new(),
            hidden_states: false,
            hidden: Vec::new(),
        }
    }

    fn build(mut self) -> Result<Graph, BuildError> {
        let spec = self.spec;
        let tokens = match self.mode {
            Mode::Prefill => self.g.add_input("tokens", TensorType::new(Elem::I64, [T])),
            Mode::Decode => {
                let t = self
                    .g
                    .add_input("token", TensorType::new(Elem::I64, [1.into()]));
                self.pos = Some(self.g.add_input("pos", TensorType::new(Elem::I64, [])));
                self.declare_state_inputs();
                t
            }
        };
        let embed = self.weight(names::EMBED, &[spec.vocab_size, spec.hidden_size], None);
        let emb = self.op(OpKind::Embedding, &[tokens, embed])?;
        let mut h = emb;
        // The ordinal of the next hybrid layer's invocation of its shared block.
        let mut invocation = 0;
        for (l, kind) in spec.layers.iter().enumerate() {
            self.loc = Loc::Layer(l as u32);
            h = match kind {
                LayerKind::Mamba => {
                    let p = names::mamba_layer_prefix(l, false);
                    let n = self.norm(h, &format!("{p}input_layernorm.weight"))?;
                    let y = self.mixer(l, &p, n)?;
                    self.op(OpKind::Add, &[h, y])?
                }
                LayerKind::Hybrid => {
                    let i = invocation;
                    invocation += 1;
                    let t = self.shared_block(l, i, h, emb)?;
                    let lin = self.weight(
                        &names::hybrid_linear(l),
                        &[spec.hidden_size, spec.hidden_size],
                        None,
                    );
                    let t = self.linear(t, lin)?;
                    let hin = self.op(OpKind::Add, &[h, t])?;
                    let p = names::mamba_layer_prefix(l, true);
                    let n = self.norm(hin, &format!("{p}input_layernorm.weight"))?;
                    let y = self.mixer(l, &p, n)?;
                    self.op(OpKind::Add, &[h, y])?
                }
            };
            if self.hidden_states {
                self.hidden.push((format!("hidden.{l}"), h));
            }
        }
        self.loc = Loc::Head;
        let hn = self.norm(h, names::FINAL_NORM)?;
        let head = if spec.tie_embeddings {
            embed
        } else {
            self.weight(names::LM_HEAD, &[spec.vocab_size, spec.hidden_size], None)
        };
        let logits = self.linear(hn, head)?;
        self.g.outputs.push(("logits".into(), logits));
        // Outputs follow `state_types` order, whatever order the layers produced them in.
        let mut states = HashMap::new();
        for (role, v) in std::mem::take(&mut self.state_out) {
            if states.insert(role, v).is_some() {
                return Err(self.fault(format!("state `{}` is produced twice", role.name())));
            }
        }
        for (role, _) in state_types(spec) {
            if let Some(v) = states.remove(&role) {
                self.g.outputs.push((role.name(), v));
            }
        }
        if let Some(role) = states.keys().min() {
            return Err(self.fault(format!(
                "state `{}` is not one of the model's states",
                role.name()
            )));
        }
        let hidden = std::mem::take(&mut self.hidden);
        self.g.outputs.extend(hidden);
        Ok(self.g)
    }

    /// Decode inputs: every state, in the order the outputs list them.
    fn declare_state_inputs(&mut self) {
        for (role, ty) in state_types(self.spec) {
            let v = self.g.add_input(role.name(), ty);
            self.state_in.insert(role, v);
        }
    }

    /// The incoming value of state `role` (decode only).
    fn state(&self, role: StateRole) -> Result<ValueRef, BuildError> {
        match self.state_in.get(&role) {
            Some(&v) => Ok(v),
            None => Err(self.fault(format!("no incoming state `{}`", role.name()))),
        }
    }

    fn emit_state(&mut self, role: StateRole, v: ValueRef) {
        self.state_out.push((role, v));
    }

    /// A [`BuildFault::Spec`] at the current location.
    fn fault(&self, msg: impl Into<String>) -> BuildError {
        BuildError {
            graph: self.g.name.clone(),
            loc: self.loc,
            err: BuildFault::Spec(msg.into()),
        }
    }

    /// The graph node of parameter `name`, declaring the parameter on first use.
    fn weight(&mut self, name: &str, shape: &[usize], tie: Option<String>) -> ValueRef {
        let declared = self.params.by_name.get(name).copied();
        if let Some(&v) = declared.and_then(|id| self.nodes.get(&id)) {
            return v;
        }
        let table = &self.module.params;
        let (id, v) = match declared.and_then(|id| Some((id, table.get(id.index())?))) {
            // Declared while building an earlier graph.
            Some((id, p)) => (id, self.g.add_param(id, p)),
            None => {
                let p = Param {
                    name: name.to_string(),
                    elem: crate::types::elem_of(self.spec.dtype),
                    shape: shape.to_vec(),
                    tie,
                    hash: None,
                };
                let v = self.g.add_param(ParamId(table.len() as u32), &p);
                let id = self.module.add_param(p);
                self.params.by_name.insert(name.to_string(), id);
                (id, v)
            }
        };
        self.nodes.insert(id, v);
        v
    }

    fn op_node(&mut self, kind: OpKind, operands: &[ValueRef]) -> Result<NodeId, BuildError> {
        self.g
            .add_op(kind, operands, self.loc)
            .map_err(|err| BuildError {
                graph: self.g.name.clone(),
                loc: self.loc,
                err: err.into(),
            })
    }

    fn op(&mut self, kind: OpKind, operands: &[ValueRef]) -> Result<ValueRef, BuildError> {
        Ok(self.op_node(kind, operands)?.out())
    }

    fn linear(&mut self, x: ValueRef, w: ValueRef) -> Result<ValueRef, BuildError> {
        self.op(OpKind::Linear(LinearAttrs::PLAIN), &[x, w])
    }

    fn linear_bias(
        &mut self,
        x: ValueRef,
        w: ValueRef,
        b: Option<ValueRef>,
    ) -> Result<ValueRef, BuildError> {
        match b {
            None => self.linear(x, w),
            Some(b) => self.op(
                OpKind::Linear(LinearAttrs {
                    bias: true,
                    ..LinearAttrs::PLAIN
                }),
                &[x, w, b],
            ),
        }
    }

    /// `RMSNorm(x; name)` with the model's ε.
    fn norm(&mut self, x: ValueRef, name: &str) -> Result<ValueRef, BuildError> {
        let width = self.g.ty(x).last().and_then(|d| d.as_const()).unwrap_or(0);
        let w = self.weight(name, &[width], None);
        self.op(
            OpKind::RmsNorm {
                eps: self.spec.norm_eps,
            },
            &[x, w],
        )
    }

    fn slice(&mut self, x: ValueRef, start: usize, end: usize) -> Result<ValueRef, BuildError> {
        let axis = self.g.ty(x).rank() - 1;
        self.op(
            OpKind::Slice {
                axis,
                start,
                end,
                stride: 1,
            },
            &[x],
        )
    }
}

/// Every recurrent state and KV cache of a model, in signature order, with its type:
/// per layer `conv.{l}` and `ssm.{l}`, and for hybrid layers `k.{l}` and `v.{l}`.
pub fn state_types(spec: &ModelSpec) -> Vec<(StateRole, TensorType)> {
    let m = &spec.mamba;
    // Mamba2: [heads, P, N]; Mamba1: [heads, channels per head, N]. Same formula.
    let ssm = crate::dims![m.n_heads, m.head_dim, m.d_state];
    let kv = [
        spec.shared.num_kv_heads.into(),
        crate::types::C,
        spec.shared.head_dim.into(),
    ];
    let mut out = Vec::new();
    for (l, kind) in spec.layers.iter().enumerate() {
        out.push((
            StateRole::Conv { layer: l },
            TensorType::f32(crate::dims![m.conv_dim(), m.d_conv - 1]),
        ));
        out.push((StateRole::Ssm { layer: l }, TensorType::f32(ssm.clone())));
        if *kind == LayerKind::Hybrid {
            out.push((StateRole::Key { layer: l }, TensorType::f32(kv)));
            out.push((StateRole::Value { layer: l }, TensorType::f32(kv)));
        }
    }
    out
}
