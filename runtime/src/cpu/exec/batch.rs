//! Batched decode: one step of the decode program for B sequences at once, each with its
//! own token, position, KV capacity, state and activation buffers.
//!
//! The weights are read once per step for all of them: every Gemv of the program — the
//! products that stream the weights — runs as one matrix product over the B sequences' rows
//! (gathered into a `[B, k]` matrix, multiplied, scattered back), each row summed in the
//! order the Gemv sums it alone ([`gemv_rows`]), or with bf16 products by the `vdpbf16ps`
//! kernel a sequence decoding alone also runs (a batch of one): either way a sequence gets
//! the bits it gets alone, whatever else is in the batch. Every
//! other kernel (norms, epilogues, the Mamba conv and scan steps, attention over each
//! sequence's own cache) runs once per sequence on that sequence's buffers, the sequences
//! shared out among the pool's threads. The decode program itself is the one a single
//! sequence runs: no kernel is compiled twice.

use std::ffi::c_void;
use std::time::Instant;

use zambac_engine::{Elem, KernelKind};

use super::{Bound, CallBuffers, Dims, Executor, Shared, bind_gemm, buffer_sizes, regions, split};
use crate::cpu::arena::{AlignedBuf, Arena};
use crate::cpu::dnnl::Dnnl;
use crate::cpu::gemm::{self, Gemm, Operand};
use crate::cpu::gemv_rows;
use crate::cpu::plan::{PStep, PView, Plan};

/// A Gemv kernel's shape: `y_q (+)= x·W_qᵀ` for each part `q`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GemvShape {
    pub k: usize,
    pub rows: Vec<usize>,
    pub elem: Elem,
    pub accumulate: bool,
    /// Elements between consecutive weight rows.
    pub ld: usize,
}

impl GemvShape {
    /// The shape of `kind` when it is a Gemv.
    pub fn of(kind: &KernelKind) -> Option<GemvShape> {
        match kind {
            KernelKind::Gemv {
                k,
                rows,
                elem,
                accumulate,
                row_stride,
            } => Some(GemvShape {
                k: *k,
                rows: rows.clone(),
                elem: *elem,
                accumulate: *accumulate,
                ld: row_stride.unwrap_or(*k),
            }),
            _ => None,
        }
    }
}

/// One sequence of a batched step.
pub struct SeqCall<'a> {
    pub d: Dims,
    pub call: CallBuffers<'a>,
}

/// The buffers batched steps reuse: each sequence's activation slots and workspaces, and
/// the gathered rows of a batched product.
#[derive(Default)]
pub struct BatchBuffers {
    arenas: Vec<(Arena, Arena)>,
    x: AlignedBuf,
    y: AlignedBuf,
}

impl Executor {
    /// The kernel table's Gemv shapes (`None` for other kinds), for batched steps.
    pub fn set_kernel_kinds(&mut self, kinds: &[KernelKind]) {
        self.gemv = kinds.iter().map(GemvShape::of).collect();
    }

    /// Runs one step of `plan` (the decode program) for every sequence of `seqs`.
    pub fn run_batch(&mut self, plan: &Plan, seqs: &[SeqCall<'_>]) -> Result<(), String> {
        if self.batch.arenas.len() < seqs.len() {
            self.batch.arenas.resize_with(seqs.len(), Default::default);
        }
        let mut bound_slots = Vec::with_capacity(seqs.len());
        for (s, (slots, scratch)) in seqs.iter().zip(self.batch.arenas.iter_mut()) {
            let (slot_sizes, scratch_sizes) = buffer_sizes(plan, s.d)?;
            slots.prepare(&slot_sizes)?;
            scratch.prepare(&scratch_sizes)?;
            bound_slots.push((
                regions(slots, &slot_sizes),
                regions(scratch, &scratch_sizes),
            ));
        }
        // The regions are copies (pointers into the mapped weights), so the launches below
        // may borrow the executor mutably.
        let weights = self.weights.clone();
        let bounds: Vec<Bound<'_>> = seqs
            .iter()
            .zip(&bound_slots)
            .map(|(s, (slots, scratch))| Bound {
                weights: &weights,
                call: &s.call,
                slots,
                scratch,
            })
            .collect();
        for (i, step) in plan.steps.iter().enumerate() {
            let t0 = self.profile.is_some().then(Instant::now);
            let result = match step {
                PStep::Launch {
                    kernel,
                    grid,
                    views,
                    ints,
                } => match self.gemv.get(*kernel).cloned().flatten() {
                    Some(shape) => self.batched_gemv(&shape, views, &bounds, seqs),
                    None => self.launch_each(*kernel, grid, views, ints, &bounds, seqs),
                },
                // Products with several rows per sequence (Mamba1's per-head projections)
                // run once per sequence, as decoding it alone runs them.
                PStep::Gemm(pg) => bounds.iter().zip(seqs).try_for_each(|(b, s)| {
                    let g = bind_gemm(pg, b, s.d)?;
                    gemm::run(&g, &self.launcher.pool, &mut self.widen, self.bf16)
                }),
            };
            result.map_err(|e| format!("step {i}: {e}"))?;
            if let (Some(p), Some(t0), PStep::Launch { kernel, .. }) =
                (self.profile.as_mut(), t0, step)
                && let Some(slot) = p.kernels.get_mut(*kernel)
            {
                slot.0 += 1;
                slot.1 += t0.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// One launch per sequence, on its own buffers: the sequences shared out among the
    /// threads when there are at least as many as threads, else each launch's grid split as
    /// for a single sequence.
    fn launch_each(
        &mut self,
        kernel: usize,
        grid: &zambac_engine::Expr,
        views: &[PView],
        ints: &[zambac_engine::Expr],
        bounds: &[Bound<'_>],
        seqs: &[SeqCall<'_>],
    ) -> Result<(), String> {
        let threads = self.launcher.pool.threads();
        if seqs.len() < threads {
            for (b, s) in bounds.iter().zip(seqs) {
                self.launcher
                    .launch(kernel, s.d.size(grid)?, views, ints, b, s.d)?;
            }
            return Ok(());
        }
        let f = *self
            .launcher
            .fns
            .get(kernel)
            .ok_or_else(|| format!("kernel #{kernel} is not loaded"))?;
        let mut calls: Vec<(Vec<*mut c_void>, Vec<i64>, i64)> = Vec::with_capacity(seqs.len());
        for (b, s) in bounds.iter().zip(seqs) {
            let mut ptrs = Vec::with_capacity(views.len());
            for v in views {
                let (region, off) = b.view(v, s.d)?;
                // SAFETY: `view` checked `off <= region.len`.
                ptrs.push(unsafe { region.ptr.add(off * region.kind.size()) }.cast());
            }
            let ints = ints
                .iter()
                .map(|e| s.d.eval(e))
                .collect::<Result<Vec<_>, _>>()?;
            let grid = i64::try_from(s.d.size(grid)?).map_err(|_| "grid too large".to_string())?;
            calls.push((ptrs, ints, grid));
        }
        let shared = Shared(calls.as_ptr());
        let n = calls.len() as i64;
        let body = move |t: usize| {
            let (lo, hi) = split(n, threads as i64, t as i64);
            for b in lo..hi {
                // SAFETY: `b < calls.len()`; `calls` outlives the joined run.
                let (ptrs, ints, grid) = unsafe { &*shared.get().add(b as usize) };
                if *grid > 0 {
                    // SAFETY: the pointers address this sequence's bound buffers; the kernel
                    // touches only what its views and grid describe, and no two sequences
                    // share a written buffer.
                    unsafe { f(ptrs.as_ptr(), ints.as_ptr(), 0, *grid) }
                }
            }
        };
        if self.launcher.pool.run(threads, &body) {
            Ok(())
        } else {
            Err("a kernel thread panicked".into())
        }
    }

    /// A Gemv for every sequence as one product: `Y_q [B, rows_q] = X [B, k] · W_qᵀ`, the
    /// weights read once for all the sequences.
    fn batched_gemv(
        &mut self,
        shape: &GemvShape,
        views: &[PView],
        bounds: &[Bound<'_>],
        seqs: &[SeqCall<'_>],
    ) -> Result<(), String> {
        let (k, parts, b_count) = (shape.k, shape.rows.len(), seqs.len());
        if views.len() != 1 + 2 * parts {
            return Err(format!("a Gemv of {parts} parts has {} views", views.len()));
        }
        let checked = |b: &Bound<'_>, v: &PView, s: &SeqCall<'_>, len: usize| {
            let (region, off) = b.view(v, s.d)?;
            if off + len > region.len {
                return Err(format!("a Gemv view of {len} elements is past its buffer"));
            }
            // SAFETY: just checked to lie inside the region.
            Ok::<_, String>((
                unsafe { region.ptr.add(off * region.kind.size()) },
                region.kind,
            ))
        };
        self.batch.x.reserve(b_count * k)?;
        let x = self.batch.x.as_mut_ptr();
        let [x_view, rest @ ..] = views else {
            return Err("a Gemv launch without views".into());
        };
        let (Some(first_bounds), Some(first_seq)) = (bounds.first(), seqs.first()) else {
            return Err("a batch without sequences".into());
        };
        // With bf16 products (oneDNN's CPUs) the weights are bf16 and every product rounds
        // the activations to bf16, as a prefill's do; otherwise each sequence's product is
        // summed in the order of the Gemv that decodes it alone.
        let bf16_products = self.bf16.filter(|_| shape.elem == Elem::Bf16);
        for (row, (b, s)) in bounds.iter().zip(seqs).enumerate() {
            let (src, kind) = checked(b, x_view, s, k)?;
            if kind != Elem::F32 {
                return Err("a Gemv input is not f32".into());
            }
            // SAFETY: `src` holds k f32s (checked); row `row` of X holds k, and does not
            // overlap a sequence's buffers.
            let (src, dst) = unsafe {
                (
                    std::slice::from_raw_parts(src.cast::<f32>(), k),
                    std::slice::from_raw_parts_mut(x.add(row * k), k),
                )
            };
            if bf16_products.is_some() {
                dst.copy_from_slice(src);
            } else {
                gemv_rows::pack_row(src, shape.elem, dst);
            }
        }
        for q in 0..parts {
            let (Some(&rows), Some(w_view), Some(y_view)) =
                (shape.rows.get(q), rest.get(q), rest.get(parts + q))
            else {
                return Err(format!("Gemv part {q} has no weight or output view"));
            };
            let (w, w_kind) = checked(
                first_bounds,
                w_view,
                first_seq,
                (rows.max(1) - 1) * shape.ld + k,
            )?;
            self.batch.y.reserve(b_count * rows)?;
            let y = self.batch.y.as_mut_ptr();
            let w = gemv_rows::Weights {
                ptr: w.cast_const(),
                elem: w_kind,
                ld: shape.ld,
            };
            match bf16_products {
                Some(dnnl) => self.bf16_product((b_count, rows, k), x, w, y, dnnl)?,
                None => self.ordered_product((b_count, rows, k), x, w, y)?,
            }
            for (row, (b, s)) in bounds.iter().zip(seqs).enumerate() {
                let (dst, _) = checked(b, y_view, s, rows)?;
                let dst = dst.cast::<f32>();
                for r in 0..rows {
                    // SAFETY: `dst` holds `rows` f32s (checked); Y holds B × rows.
                    unsafe {
                        let v = *y.add(row * rows + r);
                        *dst.add(r) = if shape.accumulate { *dst.add(r) + v } else { v };
                    }
                }
            }
        }
        Ok(())
    }

    /// `Y = X · Wᵀ` for B sequences' packed inputs ([`gemv_rows::pack_row`]), each row of
    /// `Y` summed in the order of the Gemv: the pool's threads take contiguous blocks of
    /// the weight rows.
    fn ordered_product(
        &self,
        (m, n, k): (usize, usize, usize),
        x: *mut f32,
        w: gemv_rows::Weights,
        y: *mut f32,
    ) -> Result<(), String> {
        let pool = &self.launcher.pool;
        let chunks = pool.threads().min(n.div_ceil(gemv_rows::TILE_ROWS));
        let (xs, ys, ws) = (Shared(x), Shared(y), Shared(w));
        pool.try_run(chunks, "a batched Gemv thread panicked", &|t| {
            let (lo, hi) = split(n as i64, chunks as i64, t as i64);
            // SAFETY: X holds m packed rows of k; the weight view was checked to hold n rows
            // `ld` apart; Y holds m rows of n, of which each thread writes its own columns.
            unsafe {
                gemv_rows::product(
                    (m, k),
                    lo as usize..hi as usize,
                    xs.get(),
                    ws.get(),
                    ys.get(),
                    n,
                )
            }
        })
    }

    /// `Y = X · Wᵀ` for bf16 weights with bf16 products: the activations rounded to bf16 as
    /// a prefill's are.
    fn bf16_product(
        &self,
        (m, n, k): (usize, usize, usize),
        x: *mut f32,
        w: gemv_rows::Weights,
        y: *mut f32,
        dnnl: &'static Dnnl,
    ) -> Result<(), String> {
        let g = Gemm {
            m,
            n,
            k,
            a: Operand {
                ptr: x.cast(),
                kind: Elem::F32,
                rs: k as isize,
                cs: 1,
            },
            b: Operand {
                ptr: w.ptr.cast_mut(),
                kind: w.elem,
                rs: 1,
                cs: w.ld as isize,
            },
            c: Operand {
                ptr: y.cast(),
                kind: Elem::F32,
                rs: n as isize,
                cs: 1,
            },
            accumulate: false,
        };
        gemm::run_bf16_rows(&g, &self.launcher.pool, dnnl)
    }
}
