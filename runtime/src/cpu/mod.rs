//! The `cpu` backend: runs an engine's programs with its compiled host kernels (`host.so`)
//! and a tuned GEMM library, on a fixed number of threads.
//!
//! Weights are used in place from the engine's memory map; activation slots and
//! workspaces are 64-byte aligned buffers reused across calls; states and KV caches live
//! in the sequence's typed [`State`], laid out as the engine's manifest says, which decode
//! updates in place, so [`crate::session::generate`] drives this backend exactly as it
//! drives the compiler's reference interpreter.

mod arena;
pub mod batch;
mod bf16_rows;
pub mod blas;
pub mod dnnl;
mod exec;
mod gemm;
mod gemv_rows;
pub(crate) mod library;
pub mod machine;
pub(crate) mod plan;
mod pool;

use zambac_engine::{Elem, Engine, MANIFEST_FILE, StateRole, StateSpec, TargetCpu};

use crate::error::RuntimeError;
use crate::session::{Backend, State, check_room, check_room_for, check_tokens};
use crate::tensor::Tensor;
pub(crate) use exec::Dims;
pub(crate) use exec::GemvShape;
pub(crate) use exec::buffer_sizes as exec_buffer_sizes;
use exec::{CallBuffers, Executor, Region};
use library::HostLibrary;
use plan::{Output, Plan};

/// One line of a profile: a generated kernel, or the GEMM library, and the wall time its
/// steps took (every thread of a step together).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileRow {
    /// The kernel's symbol, or for the matrix products: `gemm MxNxK`, the cpu backend's
    /// library products of one shape (`C [M, N] = A [M, K] · B [K, N]`), or `gemm`, all of
    /// the cuda backend's cuBLAS calls.
    pub name: String,
    /// The kernel kind (`Gemv`, `Mamba2Scan`, ...), or `library`.
    pub kind: String,
    pub calls: u64,
    pub seconds: f64,
    /// Achieved GFLOP/s, for the matrix products.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflop_per_s: Option<f64>,
}

/// Executes an engine on the CPU.
pub struct CpuBackend {
    // Field order is drop order: the executor (threads, pointers into the map and the
    // library's code) goes first, the library and the mapped engine last.
    exec: Executor,
    prefill: Plan,
    prefill_last: Option<Plan>,
    decode: Plan,
    vocab: usize,
    /// The engine's state layout, in the order a [`State`] of this engine holds it.
    layout: Vec<StateSpec>,
    /// Whether products with bf16 weights round activations to bf16 (oneDNN).
    bf16: bool,
    _lib: HostLibrary,
    engine: Engine,
}

// SAFETY: the raw pointers inside point only at memory the backend owns (the engine's map,
// its own buffers), and its worker threads are owned and joined on drop; nothing is tied
// to the thread that created it.
unsafe impl Send for CpuBackend {}

/// The most threads a cpu backend starts.
pub const MAX_THREADS: usize = 1024;

impl CpuBackend {
    /// Loads `host.so`, resolves every kernel and prepares the programs. `threads` = 0
    /// means one per available core.
    pub fn new(engine: Engine, threads: usize) -> Result<CpuBackend, RuntimeError> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n > MAX_THREADS => {
                return Err(RuntimeError::Input(format!(
                    "--threads {n}: at most {MAX_THREADS} (0 is one per core)"
                )));
            }
            n => n,
        };
        let manifest_path = engine.dir().join(MANIFEST_FILE).display().to_string();
        let m = engine.manifest();
        check_host_target(m.host_target.as_ref(), &manifest_path)?;
        let lib = HostLibrary::open(&engine)?;
        let (prefill, prefill_last, decode) = plan::programs(m, &manifest_path)?;
        let weights = (0..m.weights.len())
            .filter_map(|i| engine.weight(i))
            .map(|w| Region {
                ptr: w.bytes.as_ptr().cast_mut(),
                len: w.bytes.len() / w.entry.elem.size(),
                kind: w.entry.elem,
            })
            .collect();
        let mut exec =
            Executor::new(threads, lib.fns.clone(), weights).map_err(RuntimeError::Internal)?;
        let kinds: Vec<_> = m.kernels.iter().map(|k| k.kind.clone()).collect();
        exec.set_kernel_kinds(&kinds);
        let bf16 = (m.model.weight_elem == Elem::Bf16)
            .then(dnnl::dnnl)
            .and_then(Result::ok);
        exec.set_bf16_products(bf16);
        Ok(CpuBackend {
            exec,
            prefill,
            prefill_last,
            decode,
            vocab: m.model.vocab_size,
            layout: m.model.state.clone(),
            bf16: bf16.is_some(),
            _lib: lib,
            engine,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn threads(&self) -> usize {
        self.exec.threads()
    }

    /// The library behind the backend's matrix products, as it describes its build and
    /// the kernels it runs.
    pub fn gemm_library(&self) -> String {
        let f32 = blas::describe();
        match dnnl::dnnl() {
            Ok(d) if self.bf16 => format!(
                "{f32}; bf16 weights: oneDNN {} for 64 rows or more, zambac's vdpbf16ps \
                 rows for fewer and for decode (activations rounded to bf16)",
                d.implementation
            ),
            _ => f32,
        }
    }

    /// The CPU the engine's host code was generated for, and what of this CPU it leaves
    /// unused.
    pub fn host_code(&self) -> String {
        match &self.engine.manifest().host_target {
            None => "none (a GPU-only engine)".into(),
            Some(t) => {
                let unused = machine::Machine::this().unused(&t.features);
                if unused.is_empty() {
                    format!(
                        "generated for `{}`, using every extension of this CPU",
                        t.cpu
                    )
                } else {
                    format!(
                        "generated for `{}`, leaving {} of this CPU unused (rebuild the \
                         engine here for them)",
                        t.cpu,
                        unused.join(" ")
                    )
                }
            }
        }
    }

    /// Chooses how products with a bf16 weight run: `true` through AVX-512 BF16 dot products
    /// with the activations rounded to bf16 (the default for bf16 engines where the CPU
    /// and oneDNN allow it), `false` through f32 products on widened weights, exact in the
    /// activations and the same on every CPU.
    pub fn set_bf16_products(&mut self, on: bool) -> Result<(), RuntimeError> {
        let dnnl = if on {
            if self.engine.manifest().model.weight_elem != Elem::Bf16 {
                return Err(RuntimeError::Input(
                    "bf16 products need a bf16 engine (`zambac build --dtype bf16`)".into(),
                ));
            }
            Some(dnnl::dnnl().map_err(|e| {
                RuntimeError::Input(format!("bf16 products are not available here: {e}"))
            })?)
        } else {
            None
        };
        self.bf16 = dnnl.is_some();
        self.exec.set_bf16_products(dnnl);
        Ok(())
    }

    /// Whether products with bf16 weights run as bf16 × bf16 products.
    pub fn bf16_products(&self) -> bool {
        self.bf16
    }

    /// Starts or stops timing every step of every call; starting clears the counters.
    pub fn set_profiling(&mut self, on: bool) {
        self.exec.set_profiling(on);
    }

    /// Per-kernel time since profiling started (or since the last take), longest first;
    /// empty when profiling is off.
    pub fn take_profile(&mut self) -> Vec<ProfileRow> {
        let Some(times) = self.exec.take_profile() else {
            return Vec::new();
        };
        let kernels = &self.engine.manifest().kernels;
        let mut rows: Vec<ProfileRow> = times
            .kernels
            .iter()
            .zip(kernels)
            .filter(|((calls, _), _)| *calls > 0)
            .map(|(&(calls, seconds), k)| ProfileRow {
                name: k.symbol.clone(),
                kind: k.kind.name().to_string(),
                calls,
                seconds,
                gflop_per_s: None,
            })
            .collect();
        for (&(m, n, k), &(calls, seconds)) in &times.gemm {
            let flops = 2.0 * (m as f64) * (n as f64) * (k as f64) * calls as f64;
            rows.push(ProfileRow {
                name: format!("gemm {m}x{n}x{k}"),
                kind: "library".into(),
                calls,
                seconds,
                gflop_per_s: (seconds > 0.0).then(|| flops / seconds / 1e9),
            });
        }
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    /// How the state `role` is stored: its element type and values per f32 word (f32 and
    /// 1 unless the engine keeps its KV caches in bf16).
    fn storage(&self, role: StateRole) -> (Elem, usize) {
        self.layout
            .iter()
            .find(|s| s.role == role)
            .map_or((Elem::F32, 1), |s| (s.elem, s.per_word()))
    }

    /// The shape of the f32 words that hold a state of logical shape `shape`: a bf16 state
    /// packs two values into each word of its last dimension (`StateSpec::dims`).
    fn stored_shape(&self, role: StateRole, mut shape: Vec<usize>) -> Vec<usize> {
        if let Some(last) = shape.last_mut() {
            *last /= self.storage(role).1;
        }
        shape
    }

    /// A state tensor as the buffer its programs see: its f32 words, or for a bf16 state the
    /// twice as many bf16 values they hold.
    fn state_region(&self, role: StateRole, t: &mut Tensor) -> Region {
        let (kind, per_word) = self.storage(role);
        Region {
            ptr: t.data.as_mut_ptr().cast(),
            len: t.data.len() * per_word,
            kind,
        }
    }

    fn manifest_error(&self, msg: String) -> RuntimeError {
        let file = self.engine.dir().join(MANIFEST_FILE).display().to_string();
        RuntimeError::load(file, None, msg)
    }

    /// The logits of a call of `plan` at `d` on `state`, and the regions of every output (the
    /// logits' and the state's tensors, bound in place), after checking the state's shapes.
    /// The regions point into the returned tensor's and the state's heap data.
    fn outputs(
        &self,
        plan: &Plan,
        d: Dims,
        state: &mut State,
    ) -> Result<(Tensor, Vec<Region>), RuntimeError> {
        let shape = self.logits_shape(plan, d)?;
        let mut logits = Tensor::try_zeros(shape)?;
        let outputs = self.outputs_into(plan, d, state, Region::f32(&mut logits.data))?;
        Ok((logits, outputs))
    }

    /// The shape of `plan`'s logits for `d`.
    fn logits_shape(&self, plan: &Plan, d: Dims) -> Result<Vec<usize>, RuntimeError> {
        let dims = plan
            .outputs
            .iter()
            .find_map(|(what, dims)| matches!(what, Output::Logits).then_some(dims))
            .ok_or_else(|| self.manifest_error("no logits".into()))?;
        dims.iter()
            .map(|e| d.size(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.manifest_error(format!("`{}` output: {e}", plan.name)))
    }

    /// The output regions of `plan` for `d`: `logits` (which must hold the logits' shape)
    /// and `state`'s tensors, checked against the shapes the plan gives them.
    fn outputs_into(
        &self,
        plan: &Plan,
        d: Dims,
        state: &mut State,
        logits: Region,
    ) -> Result<Vec<Region>, RuntimeError> {
        for (what, dims) in &plan.outputs {
            let shape = dims
                .iter()
                .map(|e| d.size(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.manifest_error(format!("`{}` output: {e}", plan.name)))?;
            match what {
                Output::Logits => {
                    if shape.iter().product::<usize>() != logits.len {
                        return Err(RuntimeError::Internal(format!(
                            "logits of shape {shape:?} given {} values",
                            logits.len
                        )));
                    }
                }
                Output::State(role) => match state.get(*role) {
                    Some(t) if t.shape == self.stored_shape(*role, shape.clone()) => {}
                    Some(t) => {
                        return Err(RuntimeError::Input(format!(
                            "state `{role}` has shape {:?}, but this engine needs {shape:?}",
                            t.shape
                        )));
                    }
                    None => {
                        return Err(RuntimeError::Input(format!(
                            "the state has no `{role}`: it does not come from this engine"
                        )));
                    }
                },
            }
        }
        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for (what, _) in &plan.outputs {
            let region = match what {
                Output::Logits => logits,
                Output::State(role) => match state.get_mut(*role) {
                    Some(t) => self.state_region(*role, t),
                    None => return Err(RuntimeError::Internal(format!("state `{role}` vanished"))),
                },
            };
            outputs.push(region);
        }
        Ok(outputs)
    }

    /// Runs `which` (a prefill program) on `tokens` from the state's position.
    fn run_extend(
        &mut self,
        which: Which,
        tokens: &[i64],
        state: &mut State,
    ) -> Result<Tensor, RuntimeError> {
        check_tokens(tokens, self.vocab)?;
        check_room_for(state, tokens.len())?;
        let logits = self.run(which, tokens, state)?;
        state.advance(tokens.len());
        Ok(logits)
    }

    /// Runs a program on `tokens` at the state's position; the state's tensors are bound
    /// in place. Returns the logits.
    fn run(
        &mut self,
        which: Which,
        tokens: &[i64],
        state: &mut State,
    ) -> Result<Tensor, RuntimeError> {
        state.to_host()?;
        let d = Dims {
            t: tokens.len(),
            c: state.capacity(),
            pos: state.position(),
        };
        let plan = match which {
            Which::Prefill => &self.prefill,
            Which::PrefillLast => self
                .prefill_last
                .as_ref()
                .ok_or_else(|| self.manifest_error("has no `prefill_last` program".into()))?,
            Which::Decode => &self.decode,
        };
        let (logits, outputs) = self.outputs(plan, d, state)?;
        let mut token_buf = tokens.to_vec();
        let mut pos_buf = [i64::try_from(d.pos)
            .map_err(|_| RuntimeError::Input(format!("position {} is too large", d.pos)))?];
        let call = CallBuffers {
            tokens: Region {
                ptr: token_buf.as_mut_ptr().cast(),
                len: token_buf.len(),
                kind: Elem::I64,
            },
            pos: Region {
                ptr: pos_buf.as_mut_ptr().cast(),
                len: 1,
                kind: Elem::I64,
            },
            outputs: &outputs,
        };
        let name = plan.name;
        self.exec
            .run(plan, d, &call)
            .map_err(|e| self.manifest_error(format!("program `{name}`, {e}")))?;
        Ok(logits)
    }
}

/// Refuses host code generated for extensions this CPU lacks: it would stop on the first
/// instruction the CPU does not have. (An engine built without a recorded target predates
/// the check and is refused by its format version.)
pub(crate) fn check_host_target(
    target: Option<&TargetCpu>,
    manifest: &str,
) -> Result<(), RuntimeError> {
    let Some(t) = target else {
        return Err(RuntimeError::load(
            manifest,
            None,
            "the engine has no host code for this CPU (it was built for a GPU only); \
             rebuild it with `zambac build --target cpu` or `--target all`",
        ));
    };
    let this = machine::Machine::this();
    let missing = this.missing(&t.features);
    if missing.is_empty() {
        return Ok(());
    }
    Err(RuntimeError::load(
        manifest,
        None,
        format!(
            "host.so was generated for `{}` and uses {}, which this CPU ({}) lacks; rebuild \
             the engine on this machine, or for a portable level (`zambac build --cpu \
             x86-64-v3`)",
            t.cpu,
            missing.join(", "),
            this.model
        ),
    ))
}

/// Which program to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Prefill,
    PrefillLast,
    Decode,
}

impl Backend for CpuBackend {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cpu", machine::Machine::this().to_string()),
            ("host code", self.host_code()),
            (
                "cpu backend",
                format!(
                    "{} threads; matrix products by {}",
                    self.threads(),
                    self.gemm_library()
                ),
            ),
        ]
    }

    fn new_state(&self, capacity: usize) -> Result<State, RuntimeError> {
        State::zeros(&self.layout, capacity)
    }

    fn state_bytes(&self, capacity: usize) -> u64 {
        crate::session::layout_bytes(&self.layout, capacity)
    }

    /// The prefill program's slots, workspaces and logits, with the call's tokens at the
    /// end of the caches (where attention reads the most).
    fn call_bytes(&self, rows: usize, capacity: usize) -> u64 {
        let d = Dims {
            t: rows,
            c: capacity,
            pos: capacity.saturating_sub(rows),
        };
        exec::call_bytes(&self.prefill, d)
    }

    fn save_state(&self, path: &std::path::Path, state: &State) -> Result<(), RuntimeError> {
        crate::snapshot::save(path, state, self.engine.identity())
    }

    fn load_state(&self, path: &std::path::Path, capacity: usize) -> Result<State, RuntimeError> {
        crate::snapshot::load(path, &self.layout, self.engine.identity(), capacity)
    }

    fn extend(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        self.run_extend(Which::Prefill, tokens, state)
    }

    fn extend_last(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        self.run_extend(Which::PrefillLast, tokens, state)
    }

    fn decode_batch(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        self.step_batch(tokens, states)
    }

    fn decode(&mut self, token: i64, state: &mut State) -> Result<Tensor, RuntimeError> {
        check_tokens(&[token], self.vocab)?;
        check_room(state)?;
        if self.bf16 {
            // bf16 products round the activations to bf16: a batch of one, so that a
            // sequence gets the same logits whether it decodes alone or in a batch.
            state.to_host()?;
            return self.step_together(&[token], &mut [state]);
        }
        let logits = self.run(Which::Decode, &[token], state)?;
        state.advance(1);
        Ok(logits)
    }
}
