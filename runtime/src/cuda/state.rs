//! A sequence's states and KV caches in device memory, between the calls that update them.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use zambac_engine::{Elem, StateRole, StateSpec};

use super::{DRegion, addr};
use crate::error::RuntimeError;
use crate::session::{DeviceState, State};
use crate::tensor::Tensor;

/// One state tensor on the device: the f32 words the host holds it in (a bf16 cache packs
/// two values per word), byte for byte.
struct Held {
    role: StateRole,
    /// The shape of the host's f32 words.
    shape: Vec<usize>,
    buf: CudaSlice<u8>,
    elem: Elem,
    per_word: usize,
}

/// Every state tensor of one sequence on one GPU, in the engine's layout order.
pub(crate) struct DeviceTensors {
    /// Unique for the process's lifetime (an address could be reused after a drop): what a
    /// captured decode graph, which has these buffers' addresses baked in, is keyed by.
    pub id: u64,
    stream: Arc<CudaStream>,
    held: Vec<Held>,
}

/// The next [`DeviceTensors::id`].
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl std::fmt::Debug for DeviceTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.held.iter().map(|h| (h.role, &h.shape, h.elem)))
            .finish()
    }
}

fn upload_error(role: StateRole, bytes: usize, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Input(format!(
        "cannot put state `{role}` ({bytes} bytes) on the GPU: {e}"
    ))
}

impl DeviceTensors {
    /// Copies the host tensors of `state` to the device.
    pub fn upload(
        stream: &Arc<CudaStream>,
        state: &State,
        layout: &[StateSpec],
    ) -> Result<DeviceTensors, RuntimeError> {
        let mut held = Vec::new();
        for (role, t) in state.iter() {
            let bytes: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            let buf = stream
                .clone_htod(&bytes)
                .map_err(|e| upload_error(role, bytes.len(), e))?;
            let (elem, per_word) = layout
                .iter()
                .find(|s| s.role == role)
                .map_or((Elem::F32, 1), |s| (s.elem, s.per_word()));
            held.push(Held {
                role,
                shape: t.shape.clone(),
                buf,
                elem,
                per_word,
            });
        }
        Ok(DeviceTensors {
            id: next_id(),
            stream: stream.clone(),
            held,
        })
    }

    /// Whether the tensors live in `ctx` (a state from another backend's GPU does not).
    pub fn is_on(&self, ctx: &Arc<CudaContext>) -> bool {
        Arc::ptr_eq(self.stream.context(), ctx)
    }

    /// A copy on the same device.
    pub fn duplicate(&self) -> Result<DeviceTensors, RuntimeError> {
        let held = self
            .held
            .iter()
            .map(|h| {
                Ok(Held {
                    role: h.role,
                    shape: h.shape.clone(),
                    buf: self
                        .stream
                        .clone_dtod(&h.buf)
                        .map_err(|e| upload_error(h.role, h.buf.len(), e))?,
                    elem: h.elem,
                    per_word: h.per_word,
                })
            })
            .collect::<Result<_, RuntimeError>>()?;
        Ok(DeviceTensors {
            id: next_id(),
            stream: self.stream.clone(),
            held,
        })
    }

    /// The buffer of `role` as a program sees it, after checking it has the logical
    /// `shape` the program's output says (a bf16 state's last dimension counts values,
    /// twice its words).
    pub fn region(&self, role: StateRole, shape: &[usize]) -> Result<DRegion, RuntimeError> {
        let h = self.held.iter().find(|h| h.role == role).ok_or_else(|| {
            RuntimeError::Input(format!(
                "the state has no `{role}`: it does not come from this engine"
            ))
        })?;
        let mut stored = shape.to_vec();
        if let Some(last) = stored.last_mut() {
            *last /= h.per_word;
        }
        if stored != h.shape {
            return Err(RuntimeError::Input(format!(
                "state `{role}` has shape {:?}, but this engine needs {shape:?}",
                h.shape
            )));
        }
        Ok(DRegion {
            addr: addr(&h.buf, &self.stream),
            len: h.buf.len() / 4 * h.per_word,
            elem: h.elem,
        })
    }
}

impl DeviceState for DeviceTensors {
    fn download(&self) -> Result<Vec<(StateRole, Tensor)>, RuntimeError> {
        self.held
            .iter()
            .map(|h| {
                let bytes = self.stream.clone_dtoh(&h.buf).map_err(|e| {
                    RuntimeError::Internal(format!(
                        "cannot copy state `{}` from the GPU: {e}",
                        h.role
                    ))
                })?;
                let data = super::le_f32s(&bytes).collect();
                Ok((h.role, Tensor::new(h.shape.clone(), data)))
            })
            .collect()
    }

    fn roles(&self) -> Vec<StateRole> {
        self.held.iter().map(|h| h.role).collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
