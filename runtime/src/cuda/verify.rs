//! `--cuda-verify`: every step of a GPU program checked against the engine's host code run
//! on the same inputs.
//!
//! Before a step, every buffer the call binds (but the weights) is copied to the host; the
//! step's host kernel (or, for a product, a plain triple loop with the GPU's bf16 rounding)
//! runs on those copies; the GPU runs the step; its buffers are copied back and compared
//! with the host's. Each step starts from the GPU's own values, so a report names the first
//! kernel whose GPU code computes something else than its host code, not a drift that
//! accumulated. Slow (everything crosses the bus twice per step): for finding a faulty GPU
//! kernel on small engines.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaStream, result};
use zambac_engine::{Elem, Engine, MANIFEST_FILE};

use super::{Bound, DRegion};
use crate::cpu::Dims;
use crate::cpu::library::HostLibrary;
use crate::cpu::plan::{Buf, PMatrix, PStep, PView};
use crate::error::RuntimeError;

/// A step's output is wrong when it differs from the host's by more than this, plus
/// [`RTOL`] of the host's magnitude: the two use different `exp`, `log` and summation
/// orders, which one step amplifies to ~1e-6 relative, far below what a wrong index gives.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-3;

/// The host code and what the checks found.
pub(super) struct Verifier {
    lib: HostLibrary,
    /// Steps checked, and a line per step whose output disagreed.
    pub checked: usize,
    pub failures: Vec<String>,
    /// The largest disagreement seen in any step, relative to `ATOL + RTOL·|host|`.
    pub worst: f64,
}

/// Every buffer of a call but the weights: its label and region.
fn regions(call: &Bound<'_>) -> Vec<(Buf, DRegion)> {
    let mut all = vec![(Buf::Tokens, call.tokens), (Buf::Pos, call.pos)];
    for (i, r) in call.outputs.iter().enumerate() {
        all.push((Buf::Output(i), *r));
    }
    for i in 0..call.slots.len() {
        if let Ok(r) = call.region(Buf::Slot(i)) {
            all.push((Buf::Slot(i), r));
        }
    }
    for i in 0..call.scratch.len() {
        if let Ok(r) = call.region(Buf::Scratch(i)) {
            all.push((Buf::Scratch(i), r));
        }
    }
    all
}

/// Host copies of every buffer of `call`, after the stream's work so far.
pub(super) fn capture(call: &Bound<'_>, stream: &Arc<CudaStream>) -> Result<Vec<Vec<u8>>, String> {
    stream
        .synchronize()
        .map_err(|e| format!("the GPU failed before the step: {e}"))?;
    regions(call)
        .into_iter()
        .map(|(_, r)| {
            let mut bytes = vec![0u8; r.len * r.elem.size()];
            // SAFETY: `r` is a live device buffer of at least that many bytes; the stream
            // is idle, so the synchronous copy sees its finished contents.
            unsafe { result::memcpy_dtoh_sync(&mut bytes, r.addr) }
                .map_err(|e| format!("cannot copy a buffer from the GPU: {e}"))?;
            Ok(bytes)
        })
        .collect()
}

fn value(bytes: &[u8], elem: Elem, i: usize) -> f64 {
    fn at<const N: usize>(bytes: &[u8], i: usize) -> Option<[u8; N]> {
        bytes.get(i * N..(i + 1) * N)?.try_into().ok()
    }
    let v = match elem {
        Elem::F32 => at::<4>(bytes, i).map(|b| f64::from(f32::from_le_bytes(b))),
        Elem::Bf16 => at::<2>(bytes, i)
            .map(|b| f64::from(f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16))),
        Elem::F16 => {
            at::<2>(bytes, i).map(|b| half::f16::from_bits(u16::from_le_bytes(b)).to_f64())
        }
        Elem::I64 => at::<8>(bytes, i).map(|b| i64::from_le_bytes(b) as f64),
    };
    v.unwrap_or(f64::NAN)
}

fn round_bf16(x: f64) -> f64 {
    f32::from_bits(u32::from(zambac_engine::bf16_bits(x as f32)) << 16) as f64
}

impl Verifier {
    pub fn new(engine: &Engine) -> Result<Verifier, RuntimeError> {
        let manifest = engine.dir().join(MANIFEST_FILE).display().to_string();
        crate::cpu::check_host_target(engine.manifest().host_target.as_ref(), &manifest)?;
        Ok(Verifier {
            lib: HostLibrary::open(engine)?,
            checked: 0,
            failures: Vec::new(),
            worst: 0.0,
        })
    }

    /// Runs step `i` on the host copies `host` (taken before the GPU ran it) and compares
    /// the result with `gpu` (taken after).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        i: usize,
        step: &PStep,
        name: &str,
        mut host: Vec<Vec<u8>>,
        gpu: &[Vec<u8>],
        call: &Bound<'_>,
        d: Dims,
        engine: &Engine,
    ) -> Result<(), String> {
        let regions = regions(call);
        let locate = |v: &PView| -> Result<(Option<usize>, usize), String> {
            let off = d.size(&v.offset)?;
            match v.buf {
                Buf::Weight(_) => Ok((None, off)),
                b => regions
                    .iter()
                    .position(|(r, _)| *r == b)
                    .map(|k| (Some(k), off))
                    .ok_or_else(|| format!("{b:?} is not bound")),
            }
        };
        let weight = |v: &PView| -> Result<(&[u8], Elem), String> {
            let Buf::Weight(w) = v.buf else {
                return Err("not a weight".into());
            };
            let w = engine.weight(w).ok_or("no such weight")?;
            Ok((w.bytes, w.entry.elem))
        };
        match step {
            PStep::Launch {
                kernel,
                grid,
                views,
                ints,
            } => {
                let f = *self.lib.fns.get(*kernel).ok_or("no host kernel")?;
                let mut ptrs: Vec<*mut c_void> = Vec::with_capacity(views.len());
                for v in views {
                    let (k, off) = locate(v)?;
                    let ptr = match k {
                        Some(k) => {
                            let elem = regions.get(k).ok_or("region vanished")?.1.elem;
                            let buf = host.get_mut(k).ok_or("copy vanished")?;
                            if off * elem.size() > buf.len() {
                                return Err(format!("view {v:?} is past its buffer"));
                            }
                            // SAFETY: in bounds (checked above).
                            unsafe { buf.as_mut_ptr().add(off * elem.size()) }.cast()
                        }
                        None => {
                            let (bytes, elem) = weight(v)?;
                            if off * elem.size() > bytes.len() {
                                return Err(format!("view {v:?} is past its weight"));
                            }
                            bytes
                                .as_ptr()
                                .wrapping_add(off * elem.size())
                                .cast_mut()
                                .cast()
                        }
                    };
                    ptrs.push(ptr);
                }
                let ints: Vec<i64> = ints.iter().map(|e| d.eval(e)).collect::<Result<_, _>>()?;
                let grid = i64::try_from(d.size(grid)?).map_err(|_| "grid too large")?;
                // SAFETY: the same bindings the cpu backend makes, onto host copies of the
                // GPU's buffers; the kernel touches what its views and grid describe.
                unsafe { f(ptrs.as_ptr().cast(), ints.as_ptr(), 0, grid) };
            }
            PStep::Gemm(g) => {
                let (m, n, k) = (d.size(&g.m)?, d.size(&g.n)?, d.size(&g.k)?);
                let read = |mx: &PMatrix, rows: usize, cols: usize, host: &[Vec<u8>]| {
                    let (at, off) = locate(&mx.view)?;
                    let (rs, cs) = (d.size(&mx.row_stride)?, d.size(&mx.col_stride)?);
                    let (bytes, elem): (&[u8], Elem) = match at {
                        Some(k) => (
                            host.get(k).ok_or("copy vanished")?,
                            regions.get(k).ok_or("region vanished")?.1.elem,
                        ),
                        None => weight(&mx.view)?,
                    };
                    let mut out = Vec::with_capacity(rows * cols);
                    for r in 0..rows {
                        for c in 0..cols {
                            out.push(value(bytes, elem, off + r * rs + c * cs));
                        }
                    }
                    Ok::<_, String>(out)
                };
                let elem_of = |mx: &PMatrix| -> Result<Elem, String> {
                    Ok(match locate(&mx.view)?.0 {
                        Some(k) => regions.get(k).ok_or("region vanished")?.1.elem,
                        None => weight(&mx.view)?.1,
                    })
                };
                let bf16 = elem_of(&g.a)? == Elem::Bf16 || elem_of(&g.b)? == Elem::Bf16;
                let mut a = read(&g.a, m, k, &host)?;
                let mut b = read(&g.b, k, n, &host)?;
                if bf16 {
                    a.iter_mut().for_each(|x| *x = round_bf16(*x));
                    b.iter_mut().for_each(|x| *x = round_bf16(*x));
                }
                let (ck, coff) = locate(&g.c.view)?;
                let ck = ck.ok_or("a product writes a weight")?;
                let (rs, cs) = (d.size(&g.c.row_stride)?, d.size(&g.c.col_stride)?);
                let c = host.get_mut(ck).ok_or("copy vanished")?;
                for r in 0..m {
                    for col in 0..n {
                        let row = a.get(r * k..(r + 1) * k).unwrap_or_default();
                        let sum: f64 = row
                            .iter()
                            .zip(b.iter().skip(col).step_by(n.max(1)))
                            .map(|(x, y)| x * y)
                            .sum();
                        let at = (coff + r * rs + col * cs) * 4;
                        let old = value(c, Elem::F32, coff + r * rs + col * cs);
                        let v = if g.accumulate { old + sum } else { sum } as f32;
                        if let Some(slot) = c.get_mut(at..at + 4) {
                            slot.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                }
            }
        }
        self.checked += 1;
        for ((buf, r), (h, g)) in regions.iter().zip(host.iter().zip(gpu)) {
            let mut worst = (0.0f64, 0usize, 0.0f64, 0.0f64);
            for e in 0..r.len {
                let (hv, gv) = (value(h, r.elem, e), value(g, r.elem, e));
                let excess = (hv - gv).abs() / (ATOL + RTOL * hv.abs());
                let excess = if excess.is_nan() && !(hv.is_nan() && gv.is_nan()) {
                    f64::INFINITY
                } else if excess.is_nan() {
                    0.0
                } else {
                    excess
                };
                if excess > worst.0 {
                    worst = (excess, e, gv, hv);
                }
            }
            self.worst = self.worst.max(worst.0);
            if worst.0 > 1.0 && self.failures.len() < 40 {
                self.failures.push(format!(
                    "step {i} ({name}): {buf:?} element {} is {} on the GPU, {} in the host code",
                    worst.1, worst.2, worst.3
                ));
            }
        }
        Ok(())
    }
}
