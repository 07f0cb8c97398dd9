//! Executing a [`Plan`]: evaluate sizes for this call, size the slots and workspaces,
//! turn views into pointers (offsets checked against their buffers), and run each step —
//! launches on the [`Pool`], products through [`super::gemm`].

use std::ffi::c_void;
use std::time::Instant;

use zambac_engine::{Elem, Expr};

mod batch;

use super::plan::checked_offset;
pub use batch::{GemvShape, SeqCall};

use super::arena::{AlignedBuf, Arena};
use super::dnnl::Dnnl;
use super::gemm::{self, Gemm};
use super::library::KernelFn;
use super::plan::{Buf, Output, PGemm, PMatrix, PStep, PView, Plan};
use super::pool::Pool;

/// The run-time values of a call: tokens `T`, KV capacity `C`, first position `pos`.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub t: usize,
    pub c: usize,
    pub pos: usize,
}

impl Dims {
    /// Evaluates `e`, refusing overflow (expressions come from the engine file).
    pub fn eval(&self, e: &Expr) -> Result<i64, String> {
        e.eval(self.t, self.c, self.pos)
            .ok_or_else(|| format!("{e:?} overflows"))
    }

    /// Evaluates a size or index, which must not be negative.
    pub fn size(&self, e: &Expr) -> Result<usize, String> {
        let v = self.eval(e)?;
        usize::try_from(v).map_err(|_| format!("{e:?} is negative ({v})"))
    }
}

/// A bound buffer: base pointer and length in elements.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub ptr: *mut u8,
    pub len: usize,
    pub kind: Elem,
}

impl Region {
    pub fn f32(data: &mut [f32]) -> Region {
        Region {
            ptr: data.as_mut_ptr().cast(),
            len: data.len(),
            kind: Elem::F32,
        }
    }
}

/// What one call binds besides the weights.
pub struct CallBuffers<'a> {
    pub tokens: Region,
    pub pos: Region,
    /// Indexed like the plan's outputs.
    pub outputs: &'a [Region],
}

/// Runs plans; owns the thread pool and the reusable buffers.
pub struct Executor {
    launcher: Launcher,
    /// Parameter regions in the mapped `weights.bin`.
    weights: Vec<Region>,
    slots: Arena,
    scratch: Arena,
    /// Holds bf16 GEMM operands widened to f32.
    widen: AlignedBuf,
    /// oneDNN's bf16 products, when products with bf16 weights round activations to bf16.
    bf16: Option<&'static Dnnl>,
    /// Time spent per step kind, while profiling.
    profile: Option<StepTimes>,
    /// The shape of each kernel that is a Gemv (indexed like the kernel table): batched
    /// steps run those as one product over every sequence's row.
    gemv: Vec<Option<batch::GemvShape>>,
    /// Buffers of batched steps.
    batch: batch::BatchBuffers,
}

/// Wall time per kernel and in the GEMM library, summed over the steps run while profiling.
#[derive(Clone, Debug, Default)]
pub struct StepTimes {
    /// Indexed like the engine's kernel table: (launches, seconds).
    pub kernels: Vec<(u64, f64)>,
    /// Library matrix products by shape `(m, n, k)`: (calls, seconds).
    pub gemm: std::collections::BTreeMap<(usize, usize, usize), (u64, f64)>,
}

/// Kernel launches: the pool, the loaded kernels, and the argument arrays reused by every
/// launch.
struct Launcher {
    pool: Pool,
    fns: Vec<KernelFn>,
    ptrs: Vec<*mut c_void>,
    ints: Vec<i64>,
}

/// Raw pointers handed to kernels on other threads for the duration of one launch.
#[derive(Clone, Copy)]
struct Shared<T>(T);
// SAFETY: only pointers to buffers that outlive the launch (`Pool::run` joins) are wrapped.
unsafe impl<T> Sync for Shared<T> {}
unsafe impl<T> Send for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// Moves the whole wrapper into a closure (a field access would capture the field).
    fn get(self) -> T {
        self.0
    }
}

impl Executor {
    pub fn new(threads: usize, fns: Vec<KernelFn>, weights: Vec<Region>) -> Result<Self, String> {
        let threads = threads.max(1);
        let pool = Pool::new(threads).map_err(|e| format!("cannot start threads: {e}"))?;
        Ok(Executor {
            launcher: Launcher {
                pool,
                fns,
                ptrs: Vec::new(),
                ints: Vec::new(),
            },
            weights,
            slots: Arena::default(),
            scratch: Arena::default(),
            widen: AlignedBuf::default(),
            bf16: None,
            profile: None,
            gemv: Vec::new(),
            batch: batch::BatchBuffers::default(),
        })
    }

    /// Routes products with a bf16 weight through `dnnl` (activations rounded to bf16), or
    /// through f32 products on widened weights with `None`.
    pub fn set_bf16_products(&mut self, dnnl: Option<&'static Dnnl>) {
        self.bf16 = dnnl;
    }

    /// Starts (or stops) timing every step; starting clears what was collected.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| StepTimes {
            kernels: vec![(0, 0.0); self.launcher.fns.len()],
            gemm: Default::default(),
        });
    }

    /// What was timed since profiling started, leaving the counters at zero.
    pub fn take_profile(&mut self) -> Option<StepTimes> {
        let fresh = self.profile.as_ref().map(|p| StepTimes {
            kernels: vec![(0, 0.0); p.kernels.len()],
            gemm: Default::default(),
        });
        std::mem::replace(&mut self.profile, fresh)
    }

    pub fn threads(&self) -> usize {
        self.launcher.pool.threads()
    }

    /// Runs every step of `plan`. Output regions must stay valid and unaliased by Rust
    /// references for the duration of the call.
    pub fn run(&mut self, plan: &Plan, d: Dims, call: &CallBuffers<'_>) -> Result<(), String> {
        let (slot_sizes, scratch_sizes) = buffer_sizes(plan, d)?;
        self.slots.prepare(&slot_sizes)?;
        self.scratch.prepare(&scratch_sizes)?;
        let slots = regions(&mut self.slots, &slot_sizes);
        let scratch = regions(&mut self.scratch, &scratch_sizes);
        let bound = Bound {
            weights: &self.weights,
            call,
            slots: &slots,
            scratch: &scratch,
        };
        let profile = &mut self.profile;
        let mut exec = |step: &PStep| -> Result<(), String> {
            let t0 = profile.is_some().then(Instant::now);
            match step {
                PStep::Launch {
                    kernel,
                    grid,
                    views,
                    ints,
                } => {
                    self.launcher
                        .launch(*kernel, d.size(grid)?, views, ints, &bound, d)?;
                    if let (Some(p), Some(t0)) = (profile.as_mut(), t0)
                        && let Some(slot) = p.kernels.get_mut(*kernel)
                    {
                        slot.0 += 1;
                        slot.1 += t0.elapsed().as_secs_f64();
                    }
                    Ok(())
                }
                PStep::Gemm(pg) => {
                    let g = bind_gemm(pg, &bound, d)?;
                    gemm::run(&g, &self.launcher.pool, &mut self.widen, self.bf16)?;
                    if let (Some(p), Some(t0)) = (profile.as_mut(), t0) {
                        let shape = p.gemm.entry((g.m, g.n, g.k)).or_default();
                        shape.0 += 1;
                        shape.1 += t0.elapsed().as_secs_f64();
                    }
                    Ok(())
                }
            }
        };
        for (i, step) in plan.steps.iter().enumerate() {
            exec(step).map_err(|e| format!("step {i}: {e}"))?;
        }
        Ok(())
    }
}

impl Launcher {
    fn launch(
        &mut self,
        kernel: usize,
        grid: usize,
        views: &[PView],
        ints: &[Expr],
        bound: &Bound<'_>,
        d: Dims,
    ) -> Result<(), String> {
        self.ptrs.clear();
        for v in views {
            let (region, off) = bound.view(v, d)?;
            // SAFETY: `view` checked `off <= region.len`.
            self.ptrs
                .push(unsafe { region.ptr.add(off * region.kind.size()) }.cast());
        }
        self.ints.clear();
        for e in ints {
            self.ints.push(d.eval(e)?);
        }
        let f = *self
            .fns
            .get(kernel)
            .ok_or_else(|| format!("kernel #{kernel} is not loaded"))?;
        let grid = i64::try_from(grid).map_err(|_| "grid too large".to_string())?;
        if grid == 0 {
            return Ok(());
        }
        let chunks = (self.pool.threads() as i64).min(grid);
        let args = Shared((self.ptrs.as_ptr(), self.ints.as_ptr()));
        let body = move |i: usize| {
            let (begin, end) = split(grid, chunks, i as i64);
            let (bufs, ints) = args.get();
            // SAFETY: the pointers address bound buffers of this call; the kernel's
            // contract is to touch only what its views and grid range describe.
            unsafe { f(bufs, ints, begin, end) }
        };
        if self.pool.run(chunks as usize, &body) {
            Ok(())
        } else {
            Err("a kernel thread panicked".into())
        }
    }
}

/// The elements of each slot (the largest value it holds) and workspace of `plan` at `d`.
pub(crate) fn buffer_sizes(plan: &Plan, d: Dims) -> Result<(Vec<usize>, Vec<usize>), String> {
    let slots = plan
        .slots
        .iter()
        .map(|cands| {
            cands
                .iter()
                .try_fold(0usize, |m, e| Ok::<_, String>(m.max(d.size(e)?)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let scratch = plan
        .scratch
        .iter()
        .map(|e| d.size(e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((slots, scratch))
}

/// Bytes a call of `plan` at `d` allocates: its slots and workspaces (f32 words) and the
/// logits it returns; `u64::MAX` when a size overflows.
pub(crate) fn call_bytes(plan: &Plan, d: Dims) -> u64 {
    let Ok((slots, scratch)) = buffer_sizes(plan, d) else {
        return u64::MAX;
    };
    let logits = plan
        .outputs
        .iter()
        .filter(|(what, _)| matches!(what, Output::Logits))
        .map(|(_, dims)| {
            dims.iter()
                .try_fold(1u64, |n, e| n.checked_mul(d.size(e).ok()? as u64))
                .unwrap_or(u64::MAX)
        });
    slots
        .iter()
        .chain(&scratch)
        .map(|&n| n as u64)
        .chain(logits)
        .fold(0u64, u64::saturating_add)
        .saturating_mul(4)
}

/// A library product of a program bound to one call's buffers, every operand checked to lie
/// inside its buffer.
fn bind_gemm(pg: &PGemm, bound: &Bound<'_>, d: Dims) -> Result<Gemm, String> {
    let PGemm {
        m,
        n,
        k,
        a,
        b,
        c,
        accumulate,
    } = pg;
    let (m, n, k) = (d.size(m)?, d.size(n)?, d.size(k)?);
    let op = |mx: &PMatrix, rows, cols| gemm::operand(bound.view(&mx.view, d)?, mx, rows, cols, d);
    Ok(Gemm {
        m,
        n,
        k,
        a: op(a, m, k)?,
        b: op(b, k, n)?,
        c: op(c, m, n)?,
        accumulate: *accumulate,
    })
}

/// Bounds of chunk `i` of `[0, grid)` cut into `chunks` contiguous, near-equal ranges.
pub fn split(grid: i64, chunks: i64, i: i64) -> (i64, i64) {
    let at = |j: i64| (i128::from(grid) * i128::from(j) / i128::from(chunks)) as i64;
    (at(i), at(i + 1))
}

fn regions(arena: &mut Arena, sizes: &[usize]) -> Vec<Region> {
    arena
        .bufs
        .iter_mut()
        .zip(sizes)
        .map(|(b, &n)| Region::f32(b.as_mut_slice(n)))
        .collect()
}

/// Every buffer of one call.
struct Bound<'a> {
    weights: &'a [Region],
    call: &'a CallBuffers<'a>,
    slots: &'a [Region],
    scratch: &'a [Region],
}

impl Bound<'_> {
    /// The region a view points into and its element offset, checked to lie within it.
    fn view(&self, v: &PView, d: Dims) -> Result<(Region, usize), String> {
        let missing = || format!("{:?} is not bound", v.buf);
        let region = match v.buf {
            Buf::Weight(i) => *self.weights.get(i).ok_or_else(missing)?,
            Buf::Tokens => self.call.tokens,
            Buf::Pos => self.call.pos,
            Buf::Output(i) => *self.call.outputs.get(i).ok_or_else(missing)?,
            Buf::Slot(i) => *self.slots.get(i).ok_or_else(missing)?,
            Buf::Scratch(i) => *self.scratch.get(i).ok_or_else(missing)?,
        };
        let off = checked_offset(v, region.len, d)?;
        Ok((region, off))
    }
}
