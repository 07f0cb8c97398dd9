//! Finding the GPU: the driver library probed before cudarc touches it, a context and one
//! stream on the chosen device, and the engine's PTX loaded as a module.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::error::RuntimeError;

/// A context and the stream all of a backend's work goes to.
pub(super) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// The GPU as the driver names it, with its compute capability and memory.
    pub name: String,
}

/// How many CUDA GPUs this machine has, or why none can be used: no driver library, or a
/// driver that finds no device. Loads nothing that could panic when the library is absent.
pub fn probe() -> Result<usize, String> {
    // SAFETY: only tries to `dlopen` the driver library under its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(
            "the CUDA driver library (libcuda.so) is not installed on this machine; \
                    the cuda backend needs an NVIDIA GPU and its driver (use --backend cpu)"
                .into(),
        );
    }
    let count = CudaContext::device_count()
        .map_err(|e| format!("the CUDA driver found no usable GPU: {e}"))?;
    match usize::try_from(count) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("the CUDA driver is installed but sees no GPU".into()),
    }
}

/// The SM number of a chip name: `sm_90` → 90.
fn sm_number(chip: &str) -> Option<u32> {
    chip.strip_prefix("sm_")?
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .ok()
}

/// Opens GPU `ordinal` for PTX built for `chip`: it must be at least that compute
/// capability (PTX JIT-compiles forward, never backward).
pub(super) fn open(ordinal: usize, chip: &str) -> Result<Device, RuntimeError> {
    let count = probe().map_err(|e| RuntimeError::Input(format!("--backend cuda: {e}")))?;
    if ordinal >= count {
        return Err(RuntimeError::Input(format!(
            "--backend cuda: GPU {ordinal} does not exist (this machine has {count})"
        )));
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        RuntimeError::Input(format!("--backend cuda: {what} GPU {ordinal}: {e}"))
    };
    let ctx = CudaContext::new(ordinal).map_err(|e| failed("cannot open", &e))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| failed("cannot query", &e))?;
    let have = (major.max(0) as u32) * 10 + minor.max(0) as u32;
    let need = sm_number(chip).ok_or_else(|| {
        RuntimeError::Input(format!(
            "the engine's GPU code is for `{chip}`, not an sm_NN chip"
        ))
    })?;
    let gpu_name = ctx.name().unwrap_or_else(|_| "an unnamed GPU".into());
    if have < need {
        return Err(RuntimeError::Input(format!(
            "--backend cuda: {gpu_name} has compute capability {major}.{minor}, but the engine's \
             PTX is for {chip}; rebuild the engine for this GPU"
        )));
    }
    // SAFETY: called before this backend allocates anything; all of its work is ordered on
    // one stream, so cudarc's per-buffer events would only add overhead.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx
        .new_stream()
        .map_err(|e| failed("cannot create a stream on", &e))?;
    let memory = ctx.total_mem().map_or(0, |b| b >> 30);
    Ok(Device {
        name: format!("{gpu_name} (compute capability {major}.{minor}, {memory} GiB)"),
        ctx,
        stream,
    })
}

/// Loads a PTX text (checked for NUL bytes by the caller) into the context.
pub(super) fn load_module(ctx: &Arc<CudaContext>, ptx: &str) -> Result<Arc<CudaModule>, String> {
    if ptx.contains('\0') {
        return Err("the PTX text contains a NUL byte".into());
    }
    if let Some((line, _)) = ptx.lines().enumerate().find(|(_, l)| !l.is_ascii()) {
        return Err(format!(
            "line {} of the PTX is not ASCII, which the driver's PTX compiler refuses",
            line + 1
        ));
    }
    ctx.load_module(Ptx::from_src(ptx))
        .map_err(|e| format!("the driver refused the PTX: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_own_ptx_is_ascii() {
        // The driver's JIT (and ptxas) reject any non-ASCII byte, even in a comment.
        assert!(super::super::blas::CAST_PTX.is_ascii());
    }

    #[test]
    fn chip_names_give_their_sm_number() {
        assert_eq!(sm_number("sm_90"), Some(90));
        assert_eq!(sm_number("sm_90a"), Some(90));
        assert_eq!(sm_number("sm_100"), Some(100));
        assert_eq!(sm_number("gfx90a"), None);
    }
}
