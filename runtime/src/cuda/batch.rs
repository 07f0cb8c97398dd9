//! Batched decode on the GPU: one step of the decode program for B sequences, each with its
//! own token, position, KV capacity and state, as the cpu backend batches them
//! (`cpu::exec::batch`).
//!
//! Every slot and workspace of the program is allocated once for the whole batch, each
//! sequence's copy at one fixed stride from the one before (the same for every buffer). A
//! Gemv's input and output copies are then evenly spaced rows, and the Gemv runs as one
//! launch of its batched form (`zk_<symbol>_batched`, [`zambac_engine::GpuBatchedEntry`]):
//! a warp per weight row reads the row once for every sequence, and each sequence's sum is
//! formed in the order the single Gemv forms it — so a sequence decoded in a batch gets bit
//! for bit the logits it gets alone, as on the cpu backend (before, the batch ran as a cuBLAS
//! product, whose order of additions differs). Every other kernel — norms, epilogues, the
//! Mamba conv and scan steps, attention over each sequence's own cache — is launched once
//! per sequence on that sequence's buffers, the same kernels as alone. The logits of all
//! sequences come back in one copy. A batched step runs as a CUDA graph too (`graph.rs`),
//! kept for as long as the batch holds the same sequences in the same order and its buffers
//! stay where they are — a server's batch changes when a request joins or leaves, and each
//! change captures the step again.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::driver::sys::CUevent_flags;
use zambac_engine::{Elem, MANIFEST_FILE};

use super::blas;
use super::graph::GraphKey;
use super::state::DeviceTensors;
use super::{
    BatchArgs, Bound, CudaBackend, DRegion, Entry, Pool, Queued, buffer_bytes, launch_function,
    launch_params, launch_params_of, run_graph,
};
use crate::cpu::plan::{PStep, PView, Plan};
use crate::cpu::{Dims, GemvShape};
use crate::error::RuntimeError;
use crate::session::{DeviceState, State};
use crate::tensor::Tensor;

/// Bytes a sequence's copy of a buffer is aligned to within a batch's allocation.
const ROW_ALIGN: usize = 256;

/// The device buffers of batched steps (kept apart from the single-sequence ones, whose
/// addresses a captured decode graph holds).
#[derive(Default)]
pub(super) struct BatchPools {
    slots: Pool,
    scratch: Pool,
    io: Pool,
}

/// For each buffer, the bytes between consecutive sequences' copies: the largest size any
/// sequence needs (`per_seq[b][i]` bytes of buffer `i` for sequence `b`), rounded up to
/// [`ROW_ALIGN`].
pub(super) fn strides<'a>(per_seq: impl Iterator<Item = &'a [usize]>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for sizes in per_seq {
        if out.len() < sizes.len() {
            out.resize(sizes.len(), 0);
        }
        for (o, &s) in out.iter_mut().zip(sizes) {
            *o = (*o).max(s);
        }
    }
    out.iter()
        .map(|&s| s.max(1).div_ceil(ROW_ALIGN) * ROW_ALIGN)
        .collect()
}

/// One stride for every slot and every workspace — the largest of `slots` and `scratch` —
/// so that a Gemv's input and outputs, wherever they live, are rows at the same distance.
fn uniform(slots: Vec<usize>, scratch: Vec<usize>) -> (Vec<usize>, Vec<usize>) {
    let largest = slots
        .iter()
        .chain(&scratch)
        .copied()
        .max()
        .unwrap_or(ROW_ALIGN);
    (vec![largest; slots.len()], vec![largest; scratch.len()])
}

/// The distance between consecutive addresses when they are evenly spaced, a whole number
/// of f32s apart and at least `row_bytes` apart (rows of a matrix that do not overlap);
/// `None` otherwise. Fewer than two addresses have no stride.
pub(super) fn even_stride(addrs: &[u64], row_bytes: u64) -> Option<u64> {
    let (&first, &second) = (addrs.first()?, addrs.get(1)?);
    let stride = second.checked_sub(first)?;
    let even = addrs
        .iter()
        .zip(addrs.iter().skip(1))
        .all(|(a, b)| b.checked_sub(*a) == Some(stride));
    (even && stride % 4 == 0 && stride >= row_bytes.max(1)).then_some(stride)
}

/// The batch of a batched Gemv launch over every sequence, when each sequence's input and
/// outputs are evenly spaced rows, every output part at the same stride (they are, in the
/// batch's layout, unless a view's offset depends on the sequence); `None` to launch the
/// single Gemv once per sequence instead (the same bits, the weights read once per sequence).
fn gemv_batch(
    shape: &GemvShape,
    views: &[PView],
    bounds: &[Bound<'_>],
    dims: &[Dims],
) -> Result<Option<BatchArgs>, String> {
    let parts = shape.rows.len();
    if views.len() != 1 + 2 * parts {
        return Err(format!("a Gemv of {parts} parts has {} views", views.len()));
    }
    let Some(x_view) = views.first() else {
        return Ok(None);
    };
    let addrs = |v: &PView| -> Result<Vec<u64>, String> {
        bounds
            .iter()
            .zip(dims)
            .map(|(b, d)| b.view(v, *d))
            .collect()
    };
    let Some(sx) = even_stride(&addrs(x_view)?, 4 * shape.k as u64) else {
        return Ok(None);
    };
    let mut sy = None;
    for (q, &rows) in shape.rows.iter().enumerate() {
        let y_view = views
            .get(1 + parts + q)
            .ok_or_else(|| format!("Gemv part {q} has no output view"))?;
        let stride = even_stride(&addrs(y_view)?, 4 * rows as u64);
        match (stride, sy) {
            (None, _) => return Ok(None),
            (Some(s), Some(t)) if s != t => return Ok(None),
            (Some(s), _) => sy = Some(s),
        }
    }
    let Some(sy) = sy else {
        return Ok(None);
    };
    Ok(Some(BatchArgs {
        sequences: bounds.len() as u64,
        x_stride: sx / 4,
        y_stride: sy / 4,
    }))
}

/// The launches of step `i` (a kernel launch) of a decode step over the sequences of
/// `bounds`: one launch of a Gemv's batched form for all of them when their buffers allow
/// it (`gemv_batch`; never for one sequence), else one launch per sequence on its own
/// buffers. A step that is not a launch has none.
pub(super) fn step_launches<'a>(
    entries: &'a [Entry],
    gemv: &[Option<GemvShape>],
    plan: &Plan,
    i: usize,
    bounds: &[Bound<'_>],
    dims: &[Dims],
) -> Result<Vec<Queued<'a>>, String> {
    let Some(PStep::Launch {
        kernel,
        grid,
        views,
        ints,
    }) = plan.steps.get(i)
    else {
        return Ok(Vec::new());
    };
    let entry = super::entry(entries, *kernel)?;
    let batched = match (gemv.get(*kernel), &entry.batched) {
        (Some(Some(shape)), Some(form)) => {
            gemv_batch(shape, views, bounds, dims)?.map(|args| (form, args))
        }
        _ => None,
    };
    if let (Some(((func, params), args)), Some(first), Some(d0)) =
        (batched, bounds.first(), dims.first())
    {
        let shape = (grid, views.as_slice(), ints.as_slice());
        let launch = launch_params_of(entry, params, Some(args), shape, first, *d0)?;
        return Ok(launch
            .map(|(values, cfg)| Queued {
                id: (i, None),
                func,
                values,
                cfg,
            })
            .into_iter()
            .collect());
    }
    let mut queued = Vec::with_capacity(bounds.len());
    for (b, (call, d)) in bounds.iter().zip(dims).enumerate() {
        if let Some((values, cfg)) = launch_params(entry, grid, views, ints, call, *d)? {
            queued.push(Queued {
                id: (i, Some(b)),
                func: &entry.func,
                values,
                cfg,
            });
        }
    }
    Ok(queued)
}

impl CudaBackend {
    /// One decode step for every sequence of `states` (at least two), `tokens[b]` to
    /// `states[b]`; returns the logits `[B, V]`. The states are not advanced here.
    pub(super) fn run_batch(
        &mut self,
        tokens: &[i64],
        states: &mut [&mut State],
    ) -> Result<Tensor, RuntimeError> {
        let n = tokens.len();
        let vocab = self.vocab;
        let held: Vec<Arc<dyn DeviceState>> = states
            .iter_mut()
            .map(|s| self.device_state(s))
            .collect::<Result<_, _>>()?;
        let dims: Vec<Dims> = states
            .iter()
            .map(|s| Dims {
                t: 1,
                c: s.capacity(),
                pos: s.position(),
            })
            .collect();
        let plan = &self.decode;
        let name = plan.name;
        let manifest_file = self.engine.dir().join(MANIFEST_FILE).display().to_string();
        let manifest = |e: String| {
            RuntimeError::load(
                manifest_file.clone(),
                None,
                format!("program `{name}` (a batch of {n}), {e}"),
            )
        };
        let internal =
            |e: String| RuntimeError::Internal(format!("program `{name}` (a batch of {n}), {e}"));
        // Each sequence's state outputs (its own device tensors) and logits row.
        let mut state_outputs = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        for (h, d) in held.iter().zip(&dims) {
            let tensors = h.as_any().downcast_ref::<DeviceTensors>().ok_or_else(|| {
                RuntimeError::Internal("the device state is not this backend's".into())
            })?;
            ids.push(tensors.id);
            let (outs, logits) =
                super::program_outputs(plan, *d, tensors, |e| manifest(format!("output: {e}")))?;
            let logits = logits.ok_or_else(|| manifest("no logits".into()))?;
            if logits.iter().product::<usize>() != vocab {
                return Err(manifest(format!(
                    "decode logits of shape {logits:?}, not one row of {vocab}"
                )));
            }
            state_outputs.push(outs);
        }
        let sizes = dims
            .iter()
            .map(|d| buffer_bytes(plan, *d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(manifest)?;
        let (slot_stride, scratch_stride) = uniform(
            strides(sizes.iter().map(|s| s.0.as_slice())),
            strides(sizes.iter().map(|s| s.1.as_slice())),
        );
        let whole = |strides: &[usize]| {
            strides
                .iter()
                .map(|s| {
                    s.checked_mul(n)
                        .ok_or_else(|| internal(format!("{s} bytes × {n}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let stream = self.stream.clone();
        let slots = self
            .batch
            .slots
            .prepare(&stream, &whole(&slot_stride)?)
            .map_err(internal)?;
        let scratch = self
            .batch
            .scratch
            .prepare(&stream, &whole(&scratch_stride)?)
            .map_err(internal)?;
        let io = self
            .batch
            .io
            .prepare(&stream, &[n * 8, n * 8, n * vocab * 4])
            .map_err(internal)?;
        let &[tokens_at, pos_at, logits_at] = io.as_slice() else {
            return Err(internal("the input buffers vanished".into()));
        };
        let positions = dims
            .iter()
            .map(|d| {
                i64::try_from(d.pos)
                    .map_err(|_| RuntimeError::Input(format!("position {} is too large", d.pos)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        super::upload_inputs(&mut self.batch.io, &stream, tokens, &positions)
            .map_err(|e| internal(e.to_string()))?;
        let at = |bases: &[u64], strides: &[usize], b: usize| -> Vec<u64> {
            bases
                .iter()
                .zip(strides)
                .map(|(base, s)| base + (b * s) as u64)
                .collect()
        };
        let seq_slots: Vec<Vec<u64>> = (0..n).map(|b| at(&slots, &slot_stride, b)).collect();
        let seq_scratch: Vec<Vec<u64>> = (0..n).map(|b| at(&scratch, &scratch_stride, b)).collect();
        let bounds: Vec<Bound<'_>> = (0..n)
            .zip(&state_outputs)
            .zip(seq_slots.iter().zip(&seq_scratch))
            .map(|((b, outs), (sl, sc))| Bound {
                weights: &self.weight_regions,
                tokens: DRegion {
                    addr: tokens_at + 8 * b as u64,
                    len: 1,
                    elem: Elem::I64,
                },
                pos: DRegion {
                    addr: pos_at + 8 * b as u64,
                    len: 1,
                    elem: Elem::I64,
                },
                outputs: outs
                    .iter()
                    .map(|o| {
                        o.unwrap_or(DRegion {
                            addr: logits_at + (4 * vocab * b) as u64,
                            len: vocab,
                            elem: Elem::F32,
                        })
                    })
                    .collect(),
                slots: sl,
                slot_bytes: &slot_stride,
                scratch: sc,
                scratch_bytes: &scratch_stride,
            })
            .collect();
        let mut marks: Vec<super::Mark> = Vec::new();
        let event = |stream: &Arc<CudaStream>| {
            stream
                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| internal(format!("cannot record a CUDA event: {e}")))
        };
        let graphable = self.graphs
            && self.verify.is_none()
            && self.profile.is_none()
            && plan.steps.iter().all(|s| matches!(s, PStep::Launch { .. }));
        let (entries, gemv) = (&self.entries, &self.gemv);
        let launches_of = |i: usize| step_launches(entries, gemv, plan, i, &bounds, &dims);
        if graphable {
            let key = GraphKey {
                states: ids,
                capacities: dims.iter().map(|d| d.c).collect(),
                buffers: self.batch.slots.allocations
                    + self.batch.scratch.allocations
                    + self.batch.io.allocations,
            };
            run_graph(&mut self.batch_graph, &stream, key, plan, &launches_of)
                .map_err(|e| internal(format!("decode graph: {e}")))?;
        } else {
            for (i, step) in plan.steps.iter().enumerate() {
                let start = match self.profile {
                    Some(_) => Some(event(&stream)?),
                    None => None,
                };
                let at = |e: String| manifest(format!("step {i}: {e}"));
                let failed = |e: String| internal(format!("step {i}: {e}"));
                let (slot, flops) = match step {
                    PStep::Launch { kernel, .. } => {
                        for q in launches_of(i).map_err(at)? {
                            launch_function(&stream, q.func, &q.values, q.cfg)
                                .map_err(|e| failed(format!("launch failed: {e}")))?;
                        }
                        let flops = match gemv.get(*kernel) {
                            Some(Some(shape)) => {
                                2.0 * (shape.k * shape.rows.iter().sum::<usize>() * n) as f64
                            }
                            _ => 0.0,
                        };
                        (*kernel, flops)
                    }
                    PStep::Gemm(g) => {
                        let mut flops = 0.0;
                        for (b, d) in bounds.iter().zip(&dims) {
                            let p = blas::bind(g, b, *d).map_err(at)?;
                            flops += p.flops();
                            self.blas.run(&p).map_err(failed)?;
                        }
                        (entries.len(), flops)
                    }
                };
                if let Some(start) = start {
                    marks.push((slot, flops, start, event(&stream)?));
                }
            }
        }
        let data = super::download_logits(&self.batch.io, &stream, n * vocab, name)?;
        super::add_times(&mut self.profile, marks)?;
        Ok(Tensor::new(vec![n, vocab], data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_hold_every_sequence_aligned() {
        let a = [10usize, 0, 512];
        let b = [300usize, 4];
        assert_eq!(
            strides([a.as_slice(), b.as_slice()].into_iter()),
            vec![512, 256, 512]
        );
        assert_eq!(strides(std::iter::empty()), Vec::<usize>::new());
    }

    /// Sequence `b`'s call: slot `i` at `base[i] + b·stride` (`stride` bytes each).
    fn call<'a>(addrs: &'a [u64], bytes: &'a [usize]) -> Bound<'a> {
        let none = DRegion {
            addr: 0,
            len: 0,
            elem: Elem::I64,
        };
        Bound {
            weights: &[],
            tokens: none,
            pos: none,
            outputs: Vec::new(),
            slots: addrs,
            slot_bytes: bytes,
            scratch: &[],
            scratch_bytes: &[],
        }
    }

    #[test]
    fn a_gemv_runs_batched_only_over_evenly_spaced_rows() {
        let view = |slot| PView {
            buf: crate::cpu::plan::Buf::Slot(slot),
            offset: zambac_engine::Expr::k(0),
        };
        let shape = |rows: Vec<usize>| GemvShape {
            k: 8,
            rows,
            elem: Elem::F32,
            accumulate: false,
            ld: 8,
        };
        let d = Dims { t: 1, c: 4, pos: 0 };
        let stride = 256usize;
        let bytes = [stride; 3];
        // Slots 0 (x), 1 and 2 (two outputs), each sequence's copy `stride` bytes on.
        let seqs: Vec<Vec<u64>> = (0..3u64)
            .map(|b| {
                (0..3u64)
                    .map(|i| 4096 * (i + 1) + b * stride as u64)
                    .collect()
            })
            .collect();
        let bounds: Vec<Bound<'_>> = seqs.iter().map(|a| call(a, &bytes)).collect();
        // Views: x, w0, w1 (weights are not looked at here), y0, y1.
        let views = [view(0), view(1), view(2), view(1), view(2)];
        let args = gemv_batch(&shape(vec![4, 2]), &views, &bounds, &[d; 3])
            .unwrap()
            .expect("evenly spaced");
        assert_eq!((args.sequences, args.x_stride, args.y_stride), (3, 64, 64));
        // An output whose copies are spaced differently from the other's: one launch per
        // sequence instead.
        let uneven: Vec<Vec<u64>> = (0..3u64)
            .map(|b| vec![4096 + b * 256, 8192 + b * 256, 12288 + b * 512])
            .collect();
        let bounds: Vec<Bound<'_>> = uneven.iter().map(|a| call(a, &bytes)).collect();
        assert!(
            gemv_batch(&shape(vec![4, 2]), &views, &bounds, &[d; 3])
                .unwrap()
                .is_none()
        );
        // A Gemv whose views do not match its parts is a manifest error.
        assert!(gemv_batch(&shape(vec![4]), &views, &bounds, &[d; 3]).is_err());
    }

    #[test]
    fn every_buffer_of_a_batch_gets_the_largest_stride() {
        assert_eq!(
            uniform(vec![512, 256], vec![1024]),
            (vec![1024, 1024], vec![1024])
        );
        assert_eq!(uniform(vec![256], vec![]), (vec![256], vec![]));
    }

    #[test]
    fn only_evenly_spaced_rows_that_do_not_overlap_have_a_stride() {
        assert_eq!(even_stride(&[1000, 1512, 2024], 400), Some(512));
        // Uneven, overlapping, not a whole number of f32s, or too few rows.
        assert_eq!(even_stride(&[1000, 1512, 2000], 400), None);
        assert_eq!(even_stride(&[1000, 1256, 1512], 400), None);
        assert_eq!(even_stride(&[1000, 1002, 1004], 2), None);
        assert_eq!(even_stride(&[1000], 4), None);
        // Decreasing addresses are not rows of a matrix with a positive stride.
        assert_eq!(even_stride(&[2000, 1000], 4), None);
    }
}
