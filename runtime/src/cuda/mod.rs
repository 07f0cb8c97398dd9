//! The `cuda` backend: runs an engine's programs on an NVIDIA GPU — the engine's PTX
//! kernels launched through the CUDA driver API, its matrix products through cuBLAS.
//!
//! Everything is loaded at run time (cudarc's `dynamic-loading`): a machine without the
//! CUDA driver builds and runs every other backend, and `--backend cuda` there is an error
//! that says so (exit 2) — the driver library is probed before cudarc touches it, since
//! cudarc panics when a symbol's library is missing.
//!
//! Weights are uploaded once. Activation slots and workspaces are device buffers sized by
//! the programs' expressions and reused across calls (grown, never shrunk). A sequence's
//! recurrent states and KV caches stay in device memory between calls ([`DeviceTensors`],
//! held by the [`State`]); only the logits come back. All work goes to one stream, in
//! program order; the copy of the logits to the host is the call's one synchronisation.

mod batch;
mod blas;
mod driver;
mod graph;
mod state;
mod verify;

use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use cudarc::driver::{CudaEvent, DriverError, PushKernelArg};
use zambac_engine::{
    Elem, Engine, Expr, GpuEntry, GpuParam, MANIFEST_FILE, PTX_FILE, ProgramName, StateSpec,
    gpu::{barriers_reach_whole_blocks, batched_entry, ptx_entry_params, ptx_entry_text},
};

use crate::cpu::plan::{Buf, Output, PStep, PView, Plan};
use crate::cpu::{Dims, GemvShape, ProfileRow};
use crate::error::RuntimeError;
use crate::session::{
    Backend, DeviceState, State, check_batch, check_room, check_room_for, check_tokens, decode_each,
};
use crate::tensor::Tensor;
use blas::Blas;
pub use driver::probe;
use graph::{DecodeGraph, GraphKey, LaunchId};
use state::DeviceTensors;
use verify::Verifier;

/// A device buffer as a launch sees it: its address, length in elements and element type.
#[derive(Clone, Copy, Debug)]
struct DRegion {
    addr: u64,
    len: usize,
    elem: Elem,
}

/// One loaded kernel entry and how to launch it.
struct Entry {
    func: CudaFunction,
    params: Vec<GpuParam>,
    lanes: u32,
    block: u32,
    /// A Gemv's batched form: its function and parameters (same lanes and block).
    batched: Option<(CudaFunction, Vec<GpuParam>)>,
}

/// Device buffers that grow to the largest size a call has needed.
#[derive(Default)]
struct Pool {
    bufs: Vec<Option<CudaSlice<u8>>>,
    /// How many buffers were (re)allocated: a captured graph's addresses are stale once
    /// this moves.
    allocations: u64,
}

impl Pool {
    /// Buffers of at least `bytes[i]` bytes each; returns their addresses.
    fn prepare(&mut self, stream: &Arc<CudaStream>, bytes: &[usize]) -> Result<Vec<u64>, String> {
        if self.bufs.len() < bytes.len() {
            self.bufs.resize_with(bytes.len(), || None);
        }
        let mut addrs = Vec::with_capacity(bytes.len());
        for (slot, &n) in self.bufs.iter_mut().zip(bytes) {
            let big_enough = slot.as_ref().is_some_and(|b| b.len() >= n);
            if !big_enough {
                self.allocations += 1;
                *slot = None;
                *slot = Some(
                    stream
                        .alloc_zeros::<u8>(n.max(1))
                        .map_err(|e| format!("cannot allocate {n} bytes on the GPU: {e}"))?,
                );
            }
            let buf = slot.as_ref().ok_or("a pool buffer vanished")?;
            addrs.push(addr(buf, stream));
        }
        Ok(addrs)
    }
}

/// The device address of a buffer. Event tracking is off in this backend's context (one
/// stream, program order), so the guard cudarc returns has nothing to do.
fn addr(buf: &CudaSlice<u8>, stream: &Arc<CudaStream>) -> u64 {
    buf.device_ptr(stream).0
}

/// Executes an engine on an NVIDIA GPU.
pub struct CudaBackend {
    // Field order is drop order: everything on the device before the context's last Arc.
    verify: Option<Verifier>,
    /// Per kernel (and, last, the products): calls, GPU seconds, flops; when profiling.
    profile: Option<Vec<(u64, f64, f64)>>,
    /// Whether decode runs as a CUDA graph, and the graph captured last.
    graphs: bool,
    graph: Option<DecodeGraph>,
    /// The batched decode step captured last (`batch.rs`).
    batch_graph: Option<DecodeGraph>,
    blas: Blas,
    entries: Vec<Entry>,
    /// Owns the device memory `weight_regions` point into.
    _weights: Vec<CudaSlice<u8>>,
    weight_regions: Vec<DRegion>,
    slots: Pool,
    scratch: Pool,
    io: Pool,
    /// Buffers of batched decode steps.
    batch: batch::BatchPools,
    /// The shape of each kernel that is a Gemv (indexed like the kernel table): batched
    /// decode runs those as one product for all the sequences.
    gemv: Vec<Option<GemvShape>>,
    prefill: Plan,
    prefill_last: Option<Plan>,
    decode: Plan,
    vocab: usize,
    layout: Vec<StateSpec>,
    device_name: String,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    engine: Engine,
}

impl CudaBackend {
    /// Opens GPU `ordinal`, loads the engine's PTX and uploads its weights.
    pub fn new(engine: Engine, ordinal: usize) -> Result<CudaBackend, RuntimeError> {
        let manifest_path = engine.dir().join(MANIFEST_FILE).display().to_string();
        let m = engine.manifest();
        let gpu = m.gpu.as_ref().ok_or_else(|| {
            RuntimeError::load(
                &manifest_path,
                None,
                "the engine has no GPU code; rebuild it with `zambac build --target sm_90` \
                 (or `--target all`)",
            )
        })?;
        let device = driver::open(ordinal, &gpu.chip)?;
        let ptx_path = engine.dir().join(PTX_FILE);
        let ptx = std::fs::read_to_string(&ptx_path)
            .map_err(|e| RuntimeError::load(ptx_path.display().to_string(), None, e.to_string()))?;
        check_entries(&ptx, &gpu.kernels)
            .map_err(|e| RuntimeError::load(ptx_path.display().to_string(), None, e))?;
        let (ctx, stream) = (device.ctx, device.stream);
        let module = driver::load_module(&ctx, &ptx)
            .map_err(|e| RuntimeError::load(ptx_path.display().to_string(), None, e))?;
        let function = |name: &str| {
            module.load_function(name).map_err(|err| {
                RuntimeError::load(
                    ptx_path.display().to_string(),
                    None,
                    format!("entry `{name}`: {err}"),
                )
            })
        };
        let entries = gpu
            .kernels
            .iter()
            .map(|e| {
                let batched = match &e.batched {
                    Some(b) => Some((function(&batched_entry(&e.symbol))?, b.params.clone())),
                    None => None,
                };
                Ok(Entry {
                    func: function(&e.entry())?,
                    params: e.params.clone(),
                    lanes: e.lanes,
                    block: e.block_size,
                    batched,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let (prefill, prefill_last, decode) = crate::cpu::plan::programs(m, &manifest_path)?;
        let mut weights = Vec::with_capacity(m.weights.len());
        let mut weight_regions = Vec::with_capacity(m.weights.len());
        for i in 0..m.weights.len() {
            let w = engine
                .weight(i)
                .ok_or_else(|| RuntimeError::Internal(format!("weight #{i} is not mapped")))?;
            let buf = stream.clone_htod(w.bytes).map_err(|e| {
                RuntimeError::Input(format!(
                    "cannot upload weight `{}` ({} bytes) to the GPU: {e}",
                    w.entry.name,
                    w.bytes.len()
                ))
            })?;
            weight_regions.push(DRegion {
                addr: addr(&buf, &stream),
                len: w.bytes.len() / w.entry.elem.size(),
                elem: w.entry.elem,
            });
            weights.push(buf);
        }
        let blas = Blas::new(&ctx, &stream)?;
        Ok(CudaBackend {
            verify: None,
            profile: None,
            graphs: true,
            graph: None,
            batch_graph: None,
            blas,
            entries,
            _weights: weights,
            weight_regions,
            slots: Pool::default(),
            scratch: Pool::default(),
            io: Pool::default(),
            batch: batch::BatchPools::default(),
            gemv: m.kernels.iter().map(|k| GemvShape::of(&k.kind)).collect(),
            prefill,
            prefill_last,
            decode,
            vocab: m.model.vocab_size,
            layout: m.model.state.clone(),
            device_name: device.name,
            stream,
            ctx,
            engine,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The GPU, as the driver names it, with its compute capability.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Checks every step of every call against the engine's host code on the same inputs
    /// (see [`verify`]); needs host code this CPU runs.
    pub fn set_verify(&mut self, on: bool) -> Result<(), RuntimeError> {
        self.verify = if on {
            Some(Verifier::new(&self.engine)?)
        } else {
            None
        };
        Ok(())
    }

    /// What the step checks found: steps checked, the disagreements (a line each), and the
    /// worst disagreement relative to the tolerance (≤ 1 passes).
    pub fn verify_report(&self) -> Option<(usize, &[String], f64)> {
        self.verify
            .as_ref()
            .map(|v| (v.checked, v.failures.as_slice(), v.worst))
    }

    /// Whether decode steps run as a captured CUDA graph (the default) or launch by launch.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs = on;
        self.graph = None;
        self.batch_graph = None;
    }

    /// Starts or stops timing every step with CUDA events; starting clears the counters.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![(0, 0.0, 0.0); self.entries.len() + 1]);
    }

    /// GPU time per kernel since profiling started (or since the last take), longest
    /// first; empty when profiling is off.
    pub fn take_profile(&mut self) -> Vec<ProfileRow> {
        let Some(times) = self.profile.as_mut() else {
            return Vec::new();
        };
        let kernels = &self.engine.manifest().kernels;
        let mut rows: Vec<ProfileRow> = times
            .iter()
            .enumerate()
            .filter(|(_, (calls, _, _))| *calls > 0)
            .map(|(i, &(calls, seconds, flops))| match kernels.get(i) {
                Some(k) => ProfileRow {
                    name: k.symbol.clone(),
                    kind: k.kind.name().to_string(),
                    calls,
                    seconds,
                    gflop_per_s: None,
                },
                None => ProfileRow {
                    name: "gemm".into(),
                    kind: "cuBLAS".into(),
                    calls,
                    seconds,
                    gflop_per_s: (seconds > 0.0).then(|| flops / seconds / 1e9),
                },
            })
            .collect();
        for t in times.iter_mut() {
            *t = (0, 0.0, 0.0);
        }
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }

    fn manifest_error(&self, msg: String) -> RuntimeError {
        let file = self.engine.dir().join(MANIFEST_FILE).display().to_string();
        RuntimeError::load(file, None, msg)
    }

    /// The state's tensors on this GPU, uploading them when the host holds them and
    /// duplicating a device copy that a clone of the state shares (the call must not
    /// change what the clone sees).
    fn device_state(&self, state: &mut State) -> Result<Arc<dyn DeviceState>, RuntimeError> {
        if let Some(d) = state.device()
            && let Some(mine) = d.as_any().downcast_ref::<DeviceTensors>()
            && mine.is_on(&self.ctx)
        {
            if Arc::strong_count(d) == 1 {
                return Ok(d.clone());
            }
            let fresh: Arc<dyn DeviceState> = Arc::new(mine.duplicate()?);
            state.set_device(fresh.clone());
            return Ok(fresh);
        }
        state.to_host()?;
        let uploaded: Arc<dyn DeviceState> =
            Arc::new(DeviceTensors::upload(&self.stream, state, &self.layout)?);
        state.set_device(uploaded.clone());
        Ok(uploaded)
    }

    fn run_extend(
        &mut self,
        which: ProgramName,
        tokens: &[i64],
        state: &mut State,
    ) -> Result<Tensor, RuntimeError> {
        check_tokens(tokens, self.vocab)?;
        check_room_for(state, tokens.len())?;
        let logits = self.run(which, tokens, state)?;
        state.advance(tokens.len());
        Ok(logits)
    }

    /// Runs a program on `tokens` at the state's position, the state's tensors updated in
    /// device memory; returns the logits.
    fn run(
        &mut self,
        which: ProgramName,
        tokens: &[i64],
        state: &mut State,
    ) -> Result<Tensor, RuntimeError> {
        let d = Dims {
            t: tokens.len(),
            c: state.capacity(),
            pos: state.position(),
        };
        let held = self.device_state(state)?;
        let tensors = held
            .as_any()
            .downcast_ref::<DeviceTensors>()
            .ok_or_else(|| {
                RuntimeError::Internal("the device state is not this backend's".into())
            })?;
        let plan = match which {
            ProgramName::Prefill => &self.prefill,
            ProgramName::PrefillLast => self
                .prefill_last
                .as_ref()
                .ok_or_else(|| self.manifest_error("has no `prefill_last` program".into()))?,
            ProgramName::Decode => &self.decode,
        };
        let name = plan.name;
        let in_program = |e: String| format!("program `{name}`, {e}");
        // The logits' shape, and every state output checked against the device copy.
        let (outputs, logits_shape) = program_outputs(plan, d, tensors, |e| {
            self.manifest_error(in_program(format!("output: {e}")))
        })?;
        let logits_shape =
            logits_shape.ok_or_else(|| self.manifest_error(in_program("no logits".into())))?;
        let logits_len: usize = logits_shape.iter().product();
        let pos = i64::try_from(d.pos)
            .map_err(|_| RuntimeError::Input(format!("position {} is too large", d.pos)))?;
        let stream = self.stream.clone();
        let sizes = buffer_bytes(plan, d).map_err(|e| self.manifest_error(in_program(e)))?;
        let internal = |e: String| RuntimeError::Internal(in_program(e));
        let slots = self.slots.prepare(&stream, &sizes.0).map_err(internal)?;
        let scratch = self.scratch.prepare(&stream, &sizes.1).map_err(internal)?;
        // Tokens, the position and the logits.
        let io = self
            .io
            .prepare(&stream, &[tokens.len() * 8, 8, logits_len.max(1) * 4])
            .map_err(internal)?;
        let &[tokens_at, pos_at, logits_at] = io.as_slice() else {
            return Err(internal("the input buffers vanished".into()));
        };
        upload_inputs(&mut self.io, &stream, tokens, &[pos])
            .map_err(|e| internal(e.to_string()))?;
        let call = Bound {
            weights: &self.weight_regions,
            tokens: DRegion {
                addr: tokens_at,
                len: tokens.len(),
                elem: Elem::I64,
            },
            pos: DRegion {
                addr: pos_at,
                len: 1,
                elem: Elem::I64,
            },
            outputs: outputs
                .iter()
                .map(|o| {
                    o.unwrap_or(DRegion {
                        addr: logits_at,
                        len: logits_len,
                        elem: Elem::F32,
                    })
                })
                .collect(),
            slots: &slots,
            slot_bytes: &sizes.0,
            scratch: &scratch,
            scratch_bytes: &sizes.1,
        };
        let mut marks: Vec<Mark> = Vec::new();
        let event = || {
            stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| internal(format!("cannot record a CUDA event: {e}")))
        };
        let graphable = name == ProgramName::Decode
            && self.graphs
            && self.verify.is_none()
            && self.profile.is_none()
            && plan.steps.iter().all(|s| matches!(s, PStep::Launch { .. }));
        let steps: &[PStep] = if graphable { &[] } else { &plan.steps };
        if graphable {
            let key = GraphKey {
                states: vec![tensors.id],
                capacities: vec![d.c],
                buffers: self.slots.allocations + self.scratch.allocations + self.io.allocations,
            };
            let (entries, gemv, calls) = (&self.entries, &self.gemv, std::slice::from_ref(&call));
            let launches_of = |i| batch::step_launches(entries, gemv, plan, i, calls, &[d]);
            run_graph(&mut self.graph, &stream, key, plan, &launches_of)
                .map_err(|e| internal(format!("decode graph: {e}")))?;
        }
        for (i, step) in steps.iter().enumerate() {
            let start = match self.profile {
                Some(_) => Some(event()?),
                None => None,
            };
            let at = |e: String| self.manifest_error(in_program(format!("step {i}: {e}")));
            let before = match &self.verify {
                Some(_) => Some(verify::capture(&call, &stream).map_err(internal)?),
                None => None,
            };
            match step {
                PStep::Launch {
                    kernel,
                    grid,
                    views,
                    ints,
                } => {
                    let entry = entry(&self.entries, *kernel).map_err(at)?;
                    let Some((values, cfg)) =
                        launch_params(entry, grid, views, ints, &call, d).map_err(at)?
                    else {
                        continue;
                    };
                    launch(&stream, entry, &values, cfg)
                        .map_err(|e| internal(format!("step {i}: launch failed: {e}")))?;
                }
                PStep::Gemm(g) => {
                    let product = blas::bind(g, &call, d).map_err(at)?;
                    self.blas
                        .run(&product)
                        .map_err(|e| internal(format!("step {i}: {e}")))?;
                }
            }
            if let Some(start) = start {
                let (slot, flops) = match step {
                    PStep::Launch { kernel, .. } => (*kernel, 0.0),
                    PStep::Gemm(g) => (
                        self.entries.len(),
                        2.0 * [&g.m, &g.n, &g.k]
                            .iter()
                            .map(|e| d.size(e).map_or(0.0, |x| x as f64))
                            .product::<f64>(),
                    ),
                };
                marks.push((slot, flops, start, event()?));
            }
            if let (Some(v), Some(before)) = (self.verify.as_mut(), before) {
                let after = verify::capture(&call, &stream).map_err(internal)?;
                let what = match step {
                    PStep::Launch { kernel, .. } => self
                        .engine
                        .manifest()
                        .kernels
                        .get(*kernel)
                        .map_or("?".to_string(), |k| {
                            format!("{}, {}", k.symbol, k.kind.name())
                        }),
                    PStep::Gemm(_) => "product".to_string(),
                };
                v.check(
                    i,
                    step,
                    &format!("{name} {what}"),
                    before,
                    &after,
                    &call,
                    d,
                    &self.engine,
                )
                .map_err(|e| internal(format!("step {i}: checking: {e}")))?;
            }
        }
        let data = download_logits(&self.io, &stream, logits_len, name)?;
        add_times(&mut self.profile, marks)?;
        Ok(Tensor::new(logits_shape, data))
    }
}

/// A program's state output regions (`None` for the logits) and its logits' shape.
type ProgramOutputs = (Vec<Option<DRegion>>, Option<Vec<usize>>);

/// The regions of `plan`'s state outputs at `d` in `tensors` (`None` for the logits, each
/// checked against the shape the program gives it) and the logits' shape; `bad` reports an
/// output shape the program cannot evaluate.
fn program_outputs(
    plan: &Plan,
    d: Dims,
    tensors: &DeviceTensors,
    bad: impl Fn(String) -> RuntimeError,
) -> Result<ProgramOutputs, RuntimeError> {
    let mut logits_shape = None;
    let mut outputs = Vec::with_capacity(plan.outputs.len());
    for (what, dims) in &plan.outputs {
        let shape = dims
            .iter()
            .map(|e| d.size(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(&bad)?;
        match what {
            Output::Logits => {
                logits_shape = Some(shape);
                outputs.push(None);
            }
            Output::State(role) => outputs.push(Some(tensors.region(*role, &shape)?)),
        }
    }
    Ok((outputs, logits_shape))
}

/// A step's GPU time between two events: `(slot, flops, start, end)`, the slot a kernel's
/// index (the products: one past the last).
type Mark = (usize, f64, CudaEvent, CudaEvent);

/// Adds each mark's time (and flops) to its slot of the profile, when profiling.
fn add_times(
    profile: &mut Option<Vec<(u64, f64, f64)>>,
    marks: Vec<Mark>,
) -> Result<(), RuntimeError> {
    let Some(times) = profile.as_mut() else {
        return Ok(());
    };
    for (slot, flops, start, end) in marks {
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| RuntimeError::Internal(format!("cannot read a CUDA event: {e}")))?;
        if let Some(t) = times.get_mut(slot) {
            *t = (t.0 + 1, t.1 + f64::from(ms) / 1e3, t.2 + flops);
        }
    }
    Ok(())
}

/// The first `len` f32 logits of `io`'s third buffer, copied to the host: the call's one
/// synchronisation, where a kernel that faulted is reported.
fn download_logits(
    io: &Pool,
    stream: &Arc<CudaStream>,
    len: usize,
    program: ProgramName,
) -> Result<Vec<f32>, RuntimeError> {
    let logits = io
        .bufs
        .get(2)
        .and_then(Option::as_ref)
        .ok_or_else(|| RuntimeError::Internal("the logits buffer vanished".into()))?;
    let mut bytes = vec![0u8; len * 4];
    stream
        .memcpy_dtoh(&logits.slice(..len * 4), &mut bytes)
        .map_err(|e| device_failure(program, e))?;
    Ok(le_f32s(&bytes).collect())
}

/// The parameter values and launch shape of a launch of `entry` at `d`, or `None` when its
/// grid is empty.
fn launch_params(
    entry: &Entry,
    grid: &Expr,
    views: &[PView],
    ints: &[Expr],
    call: &Bound<'_>,
    d: Dims,
) -> Result<Option<(Vec<u64>, LaunchConfig)>, String> {
    launch_params_of(entry, &entry.params, None, (grid, views, ints), call, d)
}

/// A batched Gemv's batch: sequences, and the distances between consecutive sequences'
/// inputs and outputs in f32 elements.
#[derive(Clone, Copy, Debug)]
struct BatchArgs {
    sequences: u64,
    x_stride: u64,
    y_stride: u64,
}

/// [`launch_params`] for the entry whose parameters are `params` (`entry`'s own or its
/// batched form's, which takes `batch`).
fn launch_params_of(
    entry: &Entry,
    params: &[GpuParam],
    batch: Option<BatchArgs>,
    (grid, views, ints): (&Expr, &[PView], &[Expr]),
    call: &Bound<'_>,
    d: Dims,
) -> Result<Option<(Vec<u64>, LaunchConfig)>, String> {
    let grid = d.size(grid)?;
    if grid == 0 {
        return Ok(None);
    }
    let threads = grid
        .checked_mul(entry.lanes as usize)
        .ok_or_else(|| format!("a grid of {grid} overflows"))?;
    let batch = || batch.ok_or("a launch without a batch passes a batch parameter");
    let mut values = Vec::with_capacity(params.len());
    for p in params {
        values.push(match *p {
            GpuParam::View(j) => {
                let v = views
                    .get(j)
                    .ok_or_else(|| format!("the launch has no view {j}"))?;
                call.view(v, d)?
            }
            GpuParam::Int(j) => {
                let e = ints
                    .get(j)
                    .ok_or_else(|| format!("the launch has no integer {j}"))?;
                d.eval(e)? as u64
            }
            GpuParam::Begin => 0,
            // The entry's range counts threads: grid indices × lanes.
            GpuParam::End => threads as u64,
            GpuParam::Sequences => batch()?.sequences,
            GpuParam::InputStride => batch()?.x_stride,
            GpuParam::OutputStride => batch()?.y_stride,
        });
    }
    let blocks = u32::try_from(threads.div_ceil(entry.block as usize))
        .ok()
        .filter(|&b| b < i32::MAX as u32)
        .ok_or_else(|| format!("a grid of {grid} needs too many blocks"))?;
    Ok(Some((
        values,
        LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (entry.block, 1, 1),
            shared_mem_bytes: 0,
        },
    )))
}

/// The loaded entry of kernel `kernel`.
fn entry(entries: &[Entry], kernel: usize) -> Result<&Entry, String> {
    entries
        .get(kernel)
        .ok_or_else(|| format!("kernel #{kernel} is not loaded"))
}

/// Queues one launch of `entry` on `stream`.
fn launch(
    stream: &Arc<CudaStream>,
    entry: &Entry,
    values: &[u64],
    cfg: LaunchConfig,
) -> Result<(), DriverError> {
    launch_function(stream, &entry.func, values, cfg)
}

/// Queues one launch of `func` (an entry, or its batched form) on `stream`.
fn launch_function(
    stream: &Arc<CudaStream>,
    func: &CudaFunction,
    values: &[u64],
    cfg: LaunchConfig,
) -> Result<(), DriverError> {
    let mut builder = stream.launch_builder(func);
    for v in values {
        builder.arg(v);
    }
    // SAFETY: the parameter list is the entry's own (checked against the PTX at load), every
    // address lies in a live buffer of this call with the view's offset checked against its
    // length, and the kernel's contract is to touch only what its views and grid describe.
    unsafe { builder.launch(cfg) }.map(|_| ())
}

/// One launch of a decode step, ready to queue.
struct Queued<'a> {
    id: LaunchId,
    func: &'a CudaFunction,
    values: Vec<u64>,
    cfg: LaunchConfig,
}

/// Runs a decode step through its captured graph: replays it (the launches whose program
/// step depends on a position given fresh parameters) when `key` says its addresses still
/// hold, else captures the step's launches — `launches_of(i)` for each program step `i` —
/// into a new graph and launches that.
fn run_graph<'a>(
    slot: &mut Option<DecodeGraph>,
    stream: &Arc<CudaStream>,
    key: GraphKey,
    plan: &Plan,
    launches_of: &dyn Fn(usize) -> Result<Vec<Queued<'a>>, String>,
) -> Result<(), String> {
    if let Some(g) = slot.as_ref().filter(|g| g.key == key) {
        for &(id, node) in &g.dynamic {
            let q = launches_of(id.0)?
                .into_iter()
                .find(|q| q.id == id)
                .ok_or_else(|| format!("step {} has no launch {id:?} any more", id.0))?;
            g.set_params(node, &q.values, &q.cfg)?;
        }
        return g.graph.launch().map_err(|e| format!("replay: {e}"));
    }
    *slot = None;
    let mut launches = Vec::new();
    for i in 0..plan.steps.len() {
        launches.extend(launches_of(i)?);
    }
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| format!("cannot start a capture: {e}"))?;
    let captured = launches.iter().try_for_each(|q| {
        launch_function(stream, q.func, &q.values, q.cfg)
            .map_err(|e| format!("step {}: {e}", q.id.0))
    });
    // The capture ends whatever happened, or the stream stays unusable.
    let graph = stream.end_capture(CUgraphInstantiate_flags(0));
    captured?;
    let graph = graph
        .map_err(|e| format!("cannot instantiate the captured graph: {e}"))?
        .ok_or("the capture recorded nothing")?;
    let chain = graph::kernel_chain(graph.cu_graph())?;
    if chain.len() != launches.len() {
        return Err(format!(
            "{} launches captured as {} nodes",
            launches.len(),
            chain.len()
        ));
    }
    let dynamic = launches
        .iter()
        .zip(&chain)
        .filter(|(q, _)| {
            plan.steps
                .get(q.id.0)
                .is_some_and(graph::depends_on_position)
        })
        .map(|(q, node)| (q.id, *node))
        .collect();
    graph.launch().map_err(|e| format!("launch: {e}"))?;
    *slot = Some(DecodeGraph {
        key,
        graph,
        dynamic,
    });
    Ok(())
}

/// Copies the call's tokens and positions (one per sequence) into the first two buffers of
/// `io`.
fn upload_inputs(
    io: &mut Pool,
    stream: &Arc<CudaStream>,
    tokens: &[i64],
    positions: &[i64],
) -> Result<(), DriverError> {
    for (i, values) in [tokens, positions].into_iter().enumerate() {
        let bytes: Vec<u8> = values.iter().flat_map(|t| t.to_le_bytes()).collect();
        if let Some(Some(buf)) = io.bufs.get_mut(i) {
            let mut view = buf.slice_mut(..bytes.len());
            stream.memcpy_htod(&bytes, &mut view)?;
        }
    }
    Ok(())
}

/// Little-endian f32 values of `bytes` (a trailing partial value is dropped).
pub(crate) fn le_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|b| {
        let mut word = [0u8; 4];
        word.copy_from_slice(b);
        f32::from_le_bytes(word)
    })
}

/// A failure reported by the GPU when the call's work completed: a kernel that faulted,
/// or the device lost.
fn device_failure(program: ProgramName, e: DriverError) -> RuntimeError {
    RuntimeError::Internal(format!(
        "program `{program}`: the GPU reported an error while running it: {e}"
    ))
}

/// Every entry of the launch table exists in the PTX with one `.u64` parameter per listed
/// parameter: what the launcher passes is what the kernel reads; an entry that synchronises
/// its block is launched with whole blocks per grid index, so every thread reaches its
/// barriers.
fn check_entries(ptx: &str, entries: &[GpuEntry]) -> Result<(), String> {
    if ptx.contains('\0') {
        return Err("the PTX text contains a NUL byte".into());
    }
    for e in entries {
        check_entry(ptx, &e.entry(), &e.params, e)?;
        if let Some(b) = &e.batched {
            check_entry(ptx, &batched_entry(&e.symbol), &b.params, e)?;
        }
    }
    Ok(())
}

/// The `.entry name` of `ptx` takes one `.u64` per parameter of `params`, and reaches its
/// barriers with whole blocks when launched as `e` says.
fn check_entry(ptx: &str, name: &str, params: &[GpuParam], e: &GpuEntry) -> Result<(), String> {
    let found = ptx_entry_params(ptx, name)
        .ok_or_else(|| format!("has no entry `{name}`, which the manifest lists"))?;
    if found.len() != params.len() || found.iter().any(|t| t != "u64") {
        return Err(format!(
            "entry `{name}` takes ({}), but the manifest launches it with {} 8-byte \
             parameters",
            found.join(", "),
            params.len()
        ));
    }
    let text = ptx_entry_text(ptx, name).unwrap_or_default();
    if !barriers_reach_whole_blocks(e, text) {
        return Err(format!(
            "entry `{name}` synchronises its block, but the manifest launches it with {} \
             threads per grid index in blocks of {}: some threads would skip its barriers",
            e.lanes, e.block_size
        ));
    }
    Ok(())
}

/// The bytes of each slot (the largest value it holds) and workspace of `plan` at `d`:
/// the cpu executor's element counts, of f32 activations.
fn buffer_bytes(plan: &Plan, d: Dims) -> Result<(Vec<usize>, Vec<usize>), String> {
    let (slots, scratch) = crate::cpu::exec_buffer_sizes(plan, d)?;
    let bytes = |n: Vec<usize>| {
        n.into_iter()
            .map(|n| {
                n.checked_mul(4)
                    .ok_or_else(|| format!("{n} elements overflow"))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok((bytes(slots)?, bytes(scratch)?))
}

/// Every buffer of one call, on the device.
struct Bound<'a> {
    weights: &'a [DRegion],
    tokens: DRegion,
    pos: DRegion,
    /// Indexed like the plan's outputs.
    outputs: Vec<DRegion>,
    slots: &'a [u64],
    slot_bytes: &'a [usize],
    scratch: &'a [u64],
    scratch_bytes: &'a [usize],
}

impl Bound<'_> {
    fn region(&self, buf: Buf) -> Result<DRegion, String> {
        let missing = || format!("{buf:?} is not bound");
        let f32s = |addrs: &[u64], bytes: &[usize], i: usize| -> Option<DRegion> {
            Some(DRegion {
                addr: *addrs.get(i)?,
                len: *bytes.get(i)? / 4,
                elem: Elem::F32,
            })
        };
        Ok(match buf {
            Buf::Weight(i) => *self.weights.get(i).ok_or_else(missing)?,
            Buf::Tokens => self.tokens,
            Buf::Pos => self.pos,
            Buf::Output(i) => *self.outputs.get(i).ok_or_else(missing)?,
            Buf::Slot(i) => f32s(self.slots, self.slot_bytes, i).ok_or_else(missing)?,
            Buf::Scratch(i) => f32s(self.scratch, self.scratch_bytes, i).ok_or_else(missing)?,
        })
    }

    /// The region a view points into and its element offset, checked to lie within it.
    fn region_at(&self, v: &PView, d: Dims) -> Result<(DRegion, usize), String> {
        let region = self.region(v.buf)?;
        let off = crate::cpu::plan::checked_offset(v, region.len, d)?;
        Ok((region, off))
    }

    /// The device address a view points at.
    fn view(&self, v: &PView, d: Dims) -> Result<u64, String> {
        let (region, off) = self.region_at(v, d)?;
        Ok(region.addr + (off * region.elem.size()) as u64)
    }
}

impl Backend for CudaBackend {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![
            ("gpu", self.device_name.clone()),
            (
                "cuda backend",
                format!(
                    "the engine's PTX kernels ({} entries) on one stream; matrix products by \
                     cuBLAS ({})",
                    self.entries.len(),
                    self.blas.describe()
                ),
            ),
        ]
    }

    fn new_state(&self, capacity: usize) -> Result<State, RuntimeError> {
        State::zeros(&self.layout, capacity)
    }

    /// The host copy a state starts as (device memory is the driver's to refuse).
    fn state_bytes(&self, capacity: usize) -> u64 {
        crate::session::layout_bytes(&self.layout, capacity)
    }

    fn save_state(&self, path: &std::path::Path, state: &State) -> Result<(), RuntimeError> {
        crate::snapshot::save(path, state, self.engine.identity())
    }

    fn load_state(&self, path: &std::path::Path, capacity: usize) -> Result<State, RuntimeError> {
        crate::snapshot::load(path, &self.layout, self.engine.identity(), capacity)
    }

    fn extend(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        self.run_extend(ProgramName::Prefill, tokens, state)
    }

    fn extend_last(&mut self, tokens: &[i64], state: &mut State) -> Result<Tensor, RuntimeError> {
        self.run_extend(ProgramName::PrefillLast, tokens, state)
    }

    fn decode(&mut self, token: i64, state: &mut State) -> Result<Tensor, RuntimeError> {
        check_tokens(&[token], self.vocab)?;
        check_room(state)?;
        let logits = self.run(ProgramName::Decode, &[token], state)?;
        state.advance(1);
        Ok(logits)
    }

    /// Several sequences as one batched step ([`batch`]); one sequence, or any number while
    /// steps are being verified, as single decodes.
    fn decode_batch(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        check_batch(tokens, states.len())?;
        if states.len() < 2 || self.verify.is_some() {
            return decode_each(self, tokens, states);
        }
        check_tokens(tokens, self.vocab)?;
        for s in states.iter() {
            check_room(s)?;
        }
        let logits = self.run_batch(tokens, states)?;
        for s in states.iter_mut() {
            s.advance(1);
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(symbol: &str, lanes: u32, block_size: u32) -> GpuEntry {
        GpuEntry {
            symbol: symbol.into(),
            params: vec![GpuParam::Begin, GpuParam::End],
            lanes,
            block_size,
            registers: None,
            shared_bytes: None,
            batched: None,
        }
    }

    const PTX: &str = "\
.visible .entry zk_norm(\n\t.param .u64 p0,\n\t.param .u64 p1\n)\n{ bar.sync 0; ret; }\n\
.visible .entry zk_add(\n\t.param .u64 p0,\n\t.param .u64 p1\n)\n{ ret; }\n";

    #[test]
    fn the_loader_checks_parameters_and_whole_blocks_for_barriers() {
        check_entries(PTX, &[entry("norm", 256, 256), entry("add", 32, 256)]).expect("agrees");
        let error = check_entries(PTX, &[entry("norm", 32, 256)]).unwrap_err();
        assert!(
            error.contains("`zk_norm` synchronises its block"),
            "{error}"
        );
        let mut three = entry("add", 32, 256);
        three.params.push(GpuParam::Int(0));
        let error = check_entries(PTX, &[three]).unwrap_err();
        assert!(error.contains("3 8-byte"), "{error}");
        let error = check_entries(PTX, &[entry("gone", 1, 256)]).unwrap_err();
        assert!(error.contains("has no entry `zk_gone`"), "{error}");
        // A batched form is checked as its own entry.
        let mut batched = entry("add", 32, 256);
        batched.batched = Some(zambac_engine::GpuBatchedEntry {
            params: vec![GpuParam::Begin, GpuParam::End, GpuParam::Sequences],
            registers: None,
            shared_bytes: None,
        });
        let error = check_entries(PTX, &[batched]).unwrap_err();
        assert!(error.contains("no entry `zk_add_batched`"), "{error}");
    }
}
