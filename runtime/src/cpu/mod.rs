//! The `cpu` backend: runs an engine's programs with its compiled host kernels (`host.so`)
//! and a tuned GEMM library, on a fixed number of threads.
//!
//! Weights are used in place from the engine's memory map; activation slots and
//! workspaces are 64-byte aligned buffers reused across calls; states and KV caches live
//! in the [`State`] map, which decode updates in place, so [`crate::session::generate`]
//! drives this backend exactly as it drives the reference interpreter.

mod arena;
mod blas;
mod exec;
mod gemm;
mod library;
mod plan;
mod pool;

use std::collections::HashMap;

use crate::engine::{Dtype, Engine, MANIFEST_FILE};
use crate::error::RuntimeError;
use crate::session::{Backend, State, check_tokens};
use crate::tensor::{Tensor, Value};
use exec::{CallBuffers, Dims, ElemKind, Executor, Region};
use library::HostLibrary;
use plan::Plan;

/// One line of a profile: a generated kernel, or the GEMM library, and the wall time its
/// steps took (every thread of a step together).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileRow {
    /// The kernel's symbol, or `gemm` for the library's matrix products.
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
    _lib: HostLibrary,
    engine: Engine,
}

// SAFETY: the raw pointers inside point only at memory the backend owns (the engine's map,
// its own buffers), and its worker threads are owned and joined on drop; nothing is tied
// to the thread that created it.
unsafe impl Send for CpuBackend {}

impl CpuBackend {
    /// Loads `host.so`, resolves every kernel and prepares the programs. `threads` = 0
    /// means one per available core.
    pub fn new(engine: Engine, threads: usize) -> Result<CpuBackend, RuntimeError> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let manifest_path = engine.dir().join(MANIFEST_FILE).display().to_string();
        let m = engine.manifest();
        let lib = HostLibrary::open(&engine.host_path(), &m.kernels)?;
        let kernels: HashMap<&str, usize> = m
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| (k.symbol.as_str(), i))
            .collect();
        let plan = |name: &str| -> Result<Option<Plan>, RuntimeError> {
            m.program(name)
                .map(|p| Plan::new(p, &kernels))
                .transpose()
                .map_err(|e| RuntimeError::load(&manifest_path, None, format!("`{name}`: {e}")))
        };
        let required = |name: &str| {
            plan(name)?.ok_or_else(|| {
                RuntimeError::load(&manifest_path, None, format!("has no `{name}` program"))
            })
        };
        let (prefill, decode, prefill_last) = (
            required("prefill")?,
            required("decode")?,
            plan("prefill_last")?,
        );
        let weights = (0..m.weights.len())
            .filter_map(|i| engine.weight(i))
            .map(|w| Region {
                ptr: w.bytes.as_ptr().cast_mut(),
                len: w.bytes.len() / w.entry.dtype.size(),
                kind: match w.entry.dtype {
                    Dtype::F32 => ElemKind::F32,
                    Dtype::Bf16 => ElemKind::Bf16,
                },
            })
            .collect();
        let exec =
            Executor::new(threads, lib.fns.clone(), weights).map_err(RuntimeError::Internal)?;
        Ok(CpuBackend {
            exec,
            prefill,
            prefill_last,
            decode,
            vocab: m.spec.vocab_size,
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

    /// The library behind the backend's matrix products, as it describes its build.
    pub fn gemm_library(&self) -> String {
        blas::config().trim().to_string()
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
                kind: kind_name(&k.kind),
                calls,
                seconds,
                gflop_per_s: None,
            })
            .collect();
        let (calls, seconds, flops) = times.gemm;
        if calls > 0 {
            rows.push(ProfileRow {
                name: "gemm".into(),
                kind: "library".into(),
                calls,
                seconds,
                gflop_per_s: (seconds > 0.0).then(|| flops / seconds / 1e9),
            });
        }
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    fn manifest_error(&self, msg: String) -> RuntimeError {
        let file = self.engine.dir().join(MANIFEST_FILE).display().to_string();
        RuntimeError::load(file, None, msg)
    }

    /// Runs `which` (a prefill program) on `tokens` from an empty state.
    fn run_prefill(
        &mut self,
        which: Which,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        check_tokens(tokens, self.vocab)?;
        if capacity < tokens.len() {
            return Err(RuntimeError::Input(format!(
                "the KV-cache capacity {capacity} is smaller than the prompt ({} tokens)",
                tokens.len()
            )));
        }
        let d = Dims {
            t: tokens.len(),
            c: capacity,
            pos: 0,
        };
        let mut state = State::new();
        self.run(which, d, tokens, &mut state)
    }

    /// Runs a program. Outputs present in `state` are bound in place (decode); the
    /// others are allocated zeroed and inserted (prefill). Returns the logits.
    fn run(
        &mut self,
        which: Which,
        d: Dims,
        tokens: &[i64],
        state: &mut State,
    ) -> Result<(Tensor, State), RuntimeError> {
        let plan = match which {
            Which::Prefill => &self.prefill,
            Which::PrefillLast => self
                .prefill_last
                .as_ref()
                .ok_or_else(|| self.manifest_error("has no `prefill_last` program".into()))?,
            Which::Decode => &self.decode,
        };
        let shapes = plan
            .outputs
            .iter()
            .map(|(n, dims)| {
                let shape = dims
                    .iter()
                    .map(|e| d.size(e))
                    .collect::<Result<Vec<_>, _>>();
                shape.map_err(|e| self.manifest_error(format!("`{}` output `{n}`: {e}", plan.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut logits = None;
        for ((name, _), shape) in plan.outputs.iter().zip(&shapes) {
            if name == "logits" {
                if shape.len() != 2 || shape[1] != self.vocab {
                    return Err(self.manifest_error(format!(
                        "`{}` logits have shape {shape:?}, not [rows, {}]",
                        plan.name, self.vocab
                    )));
                }
                logits = Some(zeros(shape).map_err(|e| self.manifest_error(e))?);
            } else if let Some(v) = state.get(name) {
                if v.shape() != shape.as_slice() || v.f32().is_err() {
                    return Err(RuntimeError::Input(format!(
                        "state `{name}` has shape {:?}, but this engine needs {shape:?}",
                        v.shape()
                    )));
                }
            } else if which == Which::Decode {
                return Err(RuntimeError::Input(format!(
                    "the state has no `{name}`: it does not come from this engine's prefill"
                )));
            } else {
                let t = zeros(shape).map_err(|e| self.manifest_error(e))?;
                state.insert(name.clone(), Value::F32(t));
            }
        }
        let mut logits = logits.ok_or_else(|| self.manifest_error("no logits".into()))?;
        let mut outputs = Vec::with_capacity(plan.outputs.len());
        for (name, _) in &plan.outputs {
            let data = if name == "logits" {
                &mut logits.data
            } else {
                match state.get_mut(name) {
                    Some(Value::F32(t)) => &mut t.data,
                    _ => return Err(RuntimeError::Internal(format!("state `{name}` vanished"))),
                }
            };
            outputs.push(Region::f32(data));
        }
        let mut token_buf = tokens.to_vec();
        let mut pos_buf = [d.pos as i64];
        let call = CallBuffers {
            tokens: Region {
                ptr: token_buf.as_mut_ptr().cast(),
                len: token_buf.len(),
                kind: ElemKind::I64,
            },
            pos: Region {
                ptr: pos_buf.as_mut_ptr().cast(),
                len: 1,
                kind: ElemKind::I64,
            },
            outputs: &outputs,
        };
        let name = plan.name.clone();
        self.exec
            .run(plan, d, &call)
            .map_err(|e| self.manifest_error(format!("program `{name}`, {e}")))?;
        Ok((logits, std::mem::take(state)))
    }
}

/// Which program to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Prefill,
    PrefillLast,
    Decode,
}

/// The variant name of a kernel kind, without its parameters.
fn kind_name(kind: &zambac_ir::program::KernelKind) -> String {
    let debug = format!("{kind:?}");
    let end = debug.find([' ', '{', '(']).unwrap_or(debug.len());
    debug[..end].to_string()
}

fn zeros(shape: &[usize]) -> Result<Tensor, String> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("output shape {shape:?} is too large"))?;
    Ok(Tensor::new(shape.to_vec(), vec![0.0; n]))
}

impl Backend for CpuBackend {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn prefill(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        self.run_prefill(Which::Prefill, tokens, capacity)
    }

    fn prefill_last(
        &mut self,
        tokens: &[i64],
        capacity: usize,
    ) -> Result<(Tensor, State), RuntimeError> {
        self.run_prefill(Which::PrefillLast, tokens, capacity)
    }

    fn decode(
        &mut self,
        token: i64,
        pos: usize,
        mut state: State,
    ) -> Result<(Tensor, State), RuntimeError> {
        check_tokens(&[token], self.vocab)?;
        let kv = state
            .iter()
            .find(|(n, _)| n.starts_with("k."))
            .and_then(|(_, v)| v.shape().get(1).copied());
        if let Some(c) = kv
            && pos >= c
        {
            return Err(RuntimeError::Input(format!(
                "position {pos} is past the KV-cache capacity {c}"
            )));
        }
        let d = Dims {
            t: 1,
            c: kv.unwrap_or(pos + 1),
            pos,
        };
        self.run(Which::Decode, d, &[token], &mut state)
    }
}
