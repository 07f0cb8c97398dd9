//! Kernelize: an optimised, memory-planned module → execution [`Program`]s and the
//! [`Kernel`]s they launch.
//!
//! Each op becomes launches of generated kernels and, for matrix products with more than
//! one row, calls of the tuned GEMM library (`Step::Gemm`): linears with several rows,
//! Mamba1's per-head projections and the two products of prefill attention. One-row
//! products (decode, the last-row head) use the generated `Gemv` kernel, which streams the
//! weights once — an adapter's down-projection in the same pass as its shared projection.
//! Kernels are specialised to the model's constant sizes and deduplicated, so every
//! Mamba layer of a model shares one set of mixer kernels.
//!
//! Values live where the memory plan put them; intermediate results of a fused op (the
//! conv output, the scan output, adapter down-projections, attention scores) live in
//! per-program scratch buffers. Precondition: the module went through the default
//! pipeline (fused Mamba mixers, a memory plan); anything else is a clear error.

mod lower;

use std::collections::BTreeMap;

use zambac_engine::{
    ActKind, Expr, Kernel, KernelKind, Matrix, Program, ProgramName, StateRole, StateSpec, View,
};
use zambac_ir::op::Act;
use zambac_ir::{Dim, Elem, Graph, Module, OpKind, Sym, ValueRef};

use lower::GraphLowering;

/// Why a module cannot be kernelized.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot generate code for graph @{graph}: {msg}")]
pub struct KernelizeError {
    pub graph: String,
    pub msg: String,
}

/// The lowered form of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    pub kernels: Vec<Kernel>,
    /// `prefill`, `prefill_last`, `decode`.
    pub programs: Vec<Program>,
    /// Storage type of each parameter: `dtype` for matrix weights, f32 for the rest.
    pub weight_elems: Vec<Elem>,
    /// Parameters to store as consecutive column blocks of these widths (see
    /// [`zambac_engine::layout`]): matrices that every product reads one block of columns
    /// of, so each product streams contiguous rows.
    pub weight_blocks: Vec<Option<Vec<usize>>>,
    /// The sequence state the programs read and write, in the decode graph's order.
    pub state: Vec<StateSpec>,
}

/// How a sequence's state is stored: each of its KV caches as `kv`, each SSM state as `ssm`
/// (f32, or bf16: half the memory and the bytes a step reads and writes, each value rounded
/// to nearest even when a kernel stores it). Conv states are always f32. And what prompt
/// attention multiplies over bf16 caches: f32, or bf16 pairs
/// (`zambac_engine::KernelKind::AttentionPrefill`'s `products`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateElems {
    pub kv: Elem,
    pub ssm: Elem,
    pub attention_products: Elem,
}

impl Default for StateElems {
    fn default() -> StateElems {
        StateElems {
            kv: Elem::F32,
            ssm: Elem::F32,
            attention_products: Elem::F32,
        }
    }
}

/// How the Mamba2 mixers are lowered: the forms the host runs best, or those a GPU needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mamba2Lowering {
    /// How a prefill's scans are lowered.
    pub prefill: Mamba2Prefill,
    /// Whether a decode step's conv and scan are one kernel
    /// ([`zambac_engine::KernelKind::Mamba2ConvScan`], the gate norm shifting the conv
    /// state) rather than a conv, then a scan: one launch fewer per layer and step, which
    /// is what a GPU pays most for at decode; on the host each head computes the conv
    /// channels it reads, B and C again for every head of a group, which costs more than
    /// the launch it saves.
    pub fused_step: bool,
}

impl Mamba2Lowering {
    /// The forms a GPU needs: chunked prefill scans of at most [`GPU_PREFILL_CHUNKS`]
    /// chunks, fused decode steps.
    pub fn gpu() -> Mamba2Lowering {
        Mamba2Lowering {
            prefill: Mamba2Prefill::Chunked {
                chunks: GPU_PREFILL_CHUNKS,
            },
            fused_step: true,
        }
    }
}

/// How a prefill's Mamba2 scans are lowered (decode steps take one token: one scan).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mamba2Prefill {
    /// One kernel whose heads (state rows on the GPU) each walk every token of the call:
    /// the least work, and the host's choice — two cores have parallelism enough in the
    /// heads.
    #[default]
    Sequential,
    /// Three kernels over a call cut into `chunks` chunks: each chunk's scan from a zero
    /// state, the state passed along the chunks, each chunk's scan again from the state
    /// entering it, writing the outputs ([`zambac_engine::KernelKind::Mamba2ChunkScan`]).
    /// Twice the recurrence's work, but the longest chain of dependent steps is
    /// `2·⌈T/chunks⌉ + chunks` tokens instead of `T`, with `chunks` times the parallelism:
    /// for a GPU that the sequential form's warps (heads × head dim) leave partly idle.
    Chunked { chunks: usize },
}

/// The fewest tokens a chunk of a chunked prefill scan takes ([`Mamba2Prefill::Chunked`]):
/// a call shorter than `chunks` of them uses fewer chunks, so a short prompt reads and
/// writes the workspace of a few states per head rather than of all.
pub const CHUNK_MIN_TOKENS: usize = 32;

/// The chunks a GPU engine's prefill cuts its Mamba2 scans into (at most): a 4,096-token
/// call's longest chain of steps falls from 4,096 tokens to 288 (chunks of 128, then 32
/// passes), for a workspace of 32 states per head (64 MiB for the Zamba2-1.2B's 64 × 64 ×
/// 128 f32 per layer, reused by every layer).
pub const GPU_PREFILL_CHUNKS: usize = 32;

/// Lowers `m` for an engine whose matrix weights are stored as `dtype` (f32 or bf16), with
/// an f32 state and the host's Mamba2 forms.
pub fn kernelize(m: &Module, dtype: Elem) -> Result<Lowered, KernelizeError> {
    kernelize_with(m, dtype, StateElems::default(), Mamba2Lowering::default())
}

/// [`kernelize`] with the state stored as `state` says (KV caches and SSM states in f32,
/// or bf16: half the memory and the bytes decode reads, each value rounded to bf16 when
/// written) and the Mamba2 mixers lowered as `mamba2` says.
pub fn kernelize_with(
    m: &Module,
    dtype: Elem,
    state: StateElems,
    mamba2: Mamba2Lowering,
) -> Result<Lowered, KernelizeError> {
    if let Mamba2Prefill::Chunked { chunks } = mamba2.prefill
        && !(1..=zambac_engine::MAX_SCAN_CHUNKS).contains(&chunks)
    {
        return Err(KernelizeError {
            graph: "prefill".into(),
            msg: format!(
                "a chunked Mamba2 prefill scan takes 1 to {} chunks, not {chunks}",
                zambac_engine::MAX_SCAN_CHUNKS
            ),
        });
    }
    for (what, elem) in [("KV caches", state.kv), ("SSM states", state.ssm)] {
        if !matches!(elem, Elem::F32 | Elem::Bf16) {
            return Err(KernelizeError {
                graph: "decode".into(),
                msg: format!("{what} are stored as f32 or bf16, not {elem:?}"),
            });
        }
    }
    let weight_elems = weight_elems(m, dtype)?;
    let weight_blocks = column_blocks(m);
    let mut kernels = KernelTable::default();
    let mut programs = Vec::new();
    for (graph, name, last_only) in [
        ("prefill", ProgramName::Prefill, false),
        ("prefill", ProgramName::PrefillLast, true),
        ("decode", ProgramName::Decode, false),
    ] {
        let g = m.graph(graph).ok_or_else(|| KernelizeError {
            graph: graph.into(),
            msg: "the module has no such graph".into(),
        })?;
        let storage = lower::Storage {
            elems: &weight_elems,
            blocks: &weight_blocks,
            kv: state.kv,
            ssm: state.ssm,
            attention_products: state.attention_products,
            mamba2,
        };
        let mut lw = GraphLowering::new(g, storage, &mut kernels, last_only)?;
        lw.lower_all()?;
        programs.push(lw.finish(name));
    }
    Ok(Lowered {
        kernels: kernels.kernels,
        programs,
        weight_elems,
        weight_blocks,
        state: state_layout(m, state)?,
    })
}

/// The decode graph's state outputs (every recurrent state and KV cache) as the contract's
/// typed layout.
fn state_layout(m: &Module, elems: StateElems) -> Result<Vec<StateSpec>, KernelizeError> {
    let err = |msg: String| KernelizeError {
        graph: "decode".into(),
        msg,
    };
    let g = m
        .graph("decode")
        .ok_or_else(|| err("the module has no such graph".into()))?;
    let mut layout = Vec::new();
    for (name, v) in &g.outputs {
        let Ok(role) = name.parse::<StateRole>() else {
            continue;
        };
        let shape: Vec<Expr> = g.ty(*v).dims.iter().map(|&d| dim_expr(d)).collect();
        let elem = match role {
            _ if role.is_cache() => elems.kv,
            StateRole::Ssm { .. } => elems.ssm,
            _ => Elem::F32,
        };
        let spec = StateSpec { role, shape, elem };
        if spec.dims(1).is_none() {
            return Err(err(format!(
                "state `{role}` cannot be stored as {elem:?}: bf16 packs two values per word, \
                 so its last dimension (a cache's head dim, an SSM state's size) must be even"
            )));
        }
        layout.push(spec);
    }
    Ok(layout)
}

/// The column blocks of each parameter that only windowed linears read, through windows
/// that tile its columns (after `hoist-shared-input`, a shared block's q/k/v weights: the
/// hidden-state half and the embedding half); `None` for every other parameter.
fn column_blocks(m: &Module) -> Vec<Option<Vec<usize>>> {
    // Per parameter: the windows read so far, or `None` once some use needs whole rows.
    let mut windows: Vec<Option<Vec<(usize, usize)>>> = vec![Some(Vec::new()); m.params.len()];
    for g in &m.graphs {
        for n in g.nodes() {
            let ops = g.operands(n);
            let window_of = |v: ValueRef| match g.kind(n) {
                OpKind::Linear(a) => a
                    .operands()
                    .pick(&ops)
                    .filter(|args| *args.w == v)
                    .and(a.window),
                _ => None,
            };
            for v in &ops {
                let OpKind::Param(p) = g.kind(v.node) else {
                    continue;
                };
                let slot = &mut windows[p.index()];
                match (window_of(*v), slot.as_mut()) {
                    (Some(w), Some(list)) => {
                        if !list.contains(&(w.start, w.len)) {
                            list.push((w.start, w.len));
                        }
                    }
                    _ => *slot = None,
                }
            }
        }
    }
    windows
        .into_iter()
        .zip(&m.params)
        .map(|(w, p)| {
            let mut w = w.filter(|w| w.len() > 1)?;
            w.sort_unstable();
            let tiles = w.windows(2).all(|pair| pair[0].0 + pair[0].1 == pair[1].0);
            let cols = p.shape.get(1).copied();
            let end = w.last().map(|(s, l)| s + l);
            (p.shape.len() == 2 && w[0].0 == 0 && tiles && end == cols)
                .then(|| w.into_iter().map(|(_, len)| len).collect())
        })
        .collect()
}

/// Parameters read as matrices (linear weights, per-head projections, the embedding)
/// take the engine dtype; all others stay f32.
fn weight_elems(m: &Module, dtype: Elem) -> Result<Vec<Elem>, KernelizeError> {
    let mut elems = vec![Elem::F32; m.params.len()];
    for g in &m.graphs {
        for n in g.nodes() {
            let ops = g.operands(n);
            let kind = g.kind(n);
            let mismatch = || KernelizeError {
                graph: g.name.clone(),
                msg: format!(
                    "`{}` has {} operands, which its attributes do not allow",
                    kind.name(),
                    ops.len()
                ),
            };
            let matrix_operands: Vec<ValueRef> = match kind {
                OpKind::Embedding | OpKind::HeadLinear { .. } => vec![ops[1]],
                OpKind::Linear(a) => {
                    let args = a.operands().pick(&ops).ok_or_else(mismatch)?;
                    let mut v = vec![*args.w];
                    v.extend(args.lora.into_iter().flat_map(|(down, up)| [*down, *up]));
                    v
                }
                OpKind::Mamba1Mix(a) | OpKind::Mamba1Step(a) => {
                    let step = matches!(kind, OpKind::Mamba1Step(_));
                    let args = a.operands(step).pick(&ops).ok_or_else(mismatch)?;
                    vec![*args.x_proj, *args.dt_proj_weight]
                }
                _ => vec![],
            };
            for v in matrix_operands {
                if let OpKind::Param(p) = g.kind(v.node) {
                    elems[p.index()] = dtype;
                }
            }
        }
    }
    Ok(elems)
}

/// Kernels by kind, each generated once.
#[derive(Default)]
pub(crate) struct KernelTable {
    kernels: Vec<Kernel>,
    by_kind: BTreeMap<String, String>,
}

impl KernelTable {
    /// The symbol of `kind`, adding it on first use. Symbols are named after what the
    /// kernel computes (`gemv_<fingerprint>`), not after the order kernels were met in, so
    /// the same kernel has the same name — and the same code, which the compile cache can
    /// reuse — in every model that needs it.
    pub(crate) fn symbol(&mut self, family: &str, kind: KernelKind) -> String {
        let key = format!("{kind:?}");
        if let Some(s) = self.by_kind.get(&key) {
            return s.clone();
        }
        let symbol = format!("{family}_{:016x}", kind.fingerprint());
        self.by_kind.insert(key, symbol.clone());
        self.kernels.push(Kernel {
            symbol: symbol.clone(),
            kind,
        });
        symbol
    }
}

/// A strided matrix at `view + offset`.
pub(crate) fn matrix(view: View, offset: i64, row_stride: i64, col_stride: i64) -> Matrix {
    Matrix {
        view: view.shifted(Expr::k(offset)),
        row_stride: Expr::k(row_stride),
        col_stride: Expr::k(col_stride),
    }
}

/// Element count of a value as an expression.
pub(crate) fn numel(g: &Graph, v: ValueRef) -> Expr {
    let mut e = Expr::k(1);
    let mut syms = Vec::new();
    for d in &g.ty(v).dims {
        match d {
            Dim::Const(c) => e = e.times(*c as i64),
            Dim::Sym(s) => syms.push(*s),
        }
    }
    match syms.as_slice() {
        [] => e,
        [Sym::T] => Expr::T.times(e.k),
        [Sym::C] => Expr::C.times(e.k),
        [Sym::T, Sym::T] => Expr::T2.times(e.k),
        // The builder never makes a value mentioning both T and C, or C twice.
        other => {
            debug_assert!(false, "unexpected symbolic shape {other:?}");
            Expr::T.times(e.k)
        }
    }
}
/// The contract's name for an IR activation.
pub(crate) fn act_kind(a: Act) -> ActKind {
    match a {
        Act::Silu => ActKind::Silu,
        Act::Gelu => ActKind::Gelu,
        Act::GeluTanh => ActKind::GeluTanh,
        Act::Softplus => ActKind::Softplus,
    }
}

/// A dimension as a program size.
pub(crate) fn dim_expr(d: Dim) -> Expr {
    match d {
        Dim::Const(n) => Expr::k(n as i64),
        Dim::Sym(Sym::T) => Expr::T,
        Dim::Sym(Sym::C) => Expr::C,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use zambac_ir::Bindings;

    use super::*;

    fn optimised(path: &str) -> Module {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let spec = zambac_frontend::load(&root.join(path)).unwrap().spec;
        let mut m = zambac_ir::build(&spec).unwrap();
        let mut pm = zambac_passes::PassManager::new(Default::default()).unwrap();
        let mut cx = zambac_passes::PassCx::new(Bindings { t: 16, c: 16 });
        pm.run(&mut m, &mut cx, &mut std::io::sink()).unwrap();
        m
    }

    /// Flips one attribute of the first op `flip` accepts in the decode graph, so its
    /// operand list no longer matches its attributes.
    fn corrupt(m: &mut Module, flip: impl Fn(&mut OpKind) -> bool) {
        let g = m.graph_mut("decode").unwrap();
        let nodes: Vec<_> = g.nodes().collect();
        let hit = nodes.into_iter().any(|n| flip(&mut g.node_mut(n).kind));
        assert!(hit, "no op to corrupt");
    }

    #[test]
    fn a_linear_whose_operands_do_not_match_its_attributes_is_an_error() {
        let mut m = optimised("examples/tiny.toml");
        corrupt(&mut m, |k| match k {
            OpKind::Linear(a) => {
                a.lora = !a.lora;
                true
            }
            _ => false,
        });
        let e = kernelize(&m, Elem::F32).unwrap_err();
        assert!(e.msg.contains("`linear`"), "{e}");
    }

    #[test]
    fn a_mamba1_mixer_whose_operands_do_not_match_its_attributes_is_an_error() {
        let mut m = optimised("../shared/fixtures/zamba1-tiny");
        corrupt(&mut m, |k| match k {
            OpKind::Mamba1Step(a) => {
                a.conv_bias = !a.conv_bias;
                true
            }
            _ => false,
        });
        let e = kernelize(&m, Elem::F32).unwrap_err();
        assert!(e.msg.contains("`mamba1_step`"), "{e}");
    }
}
