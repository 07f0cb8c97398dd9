//! Decode as a CUDA graph: the step's hundreds of launches captured once and replayed, so
//! a token costs one graph launch instead of a driver call per kernel.
//!
//! A graph bakes in every launch's parameters. Those of a decode step change only with the
//! position (the KV write's slot, attention's length), so the graph is kept for as long as
//! its buffers stay where they are — the same sequence's device state, the same KV
//! capacity, no activation buffer reallocated — and before each replay the launches whose
//! parameters depend on the position get their new values
//! (`cuGraphExecKernelNodeSetParams`). The token and the position live in device buffers
//! the backend writes before the replay.

use std::ffi::c_void;
use std::ptr;

use cudarc::driver::sys::{self, CUgraphNode, CUgraphNodeType};
use cudarc::driver::{CudaGraph, LaunchConfig};
use zambac_engine::Expr;

use crate::cpu::plan::PStep;

/// What a captured graph's baked-in addresses are valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct GraphKey {
    /// The device state of each sequence, in order ([`super::DeviceTensors::id`]).
    pub states: Vec<u64>,
    /// Each sequence's KV capacity, which the kernels' parameters also contain.
    pub capacities: Vec<usize>,
    /// The backend's count of activation-buffer reallocations.
    pub buffers: u64,
}

/// Which launch of a decode step: its program step, and the sequence it runs for (`None`: a
/// Gemv's batched form, one launch for every sequence of a batch).
pub(super) type LaunchId = (usize, Option<usize>);

/// A captured decode step.
pub(super) struct DecodeGraph {
    pub key: GraphKey,
    pub graph: CudaGraph,
    /// The kernel node of every launch whose parameters depend on a position.
    pub dynamic: Vec<(LaunchId, CUgraphNode)>,
}

/// Whether a value of `e` changes with the position.
fn moves(e: &Expr) -> bool {
    e.p != 0 || e.tp != 0
}

/// Whether step `s`'s launch parameters change with the position.
pub(super) fn depends_on_position(s: &PStep) -> bool {
    match s {
        PStep::Launch {
            grid, views, ints, ..
        } => moves(grid) || ints.iter().any(moves) || views.iter().any(|v| moves(&v.offset)),
        PStep::Gemm(_) => true,
    }
}

fn check(r: sys::CUresult, what: &str) -> Result<(), String> {
    r.result().map_err(|e| format!("{what}: {e}"))
}

/// The nodes of a graph captured from one stream, in launch order (a chain), each checked
/// to be a kernel launch.
pub(super) fn kernel_chain(graph: sys::CUgraph) -> Result<Vec<CUgraphNode>, String> {
    let mut count = 0usize;
    // SAFETY: querying a live graph; a null array asks for the count only.
    unsafe {
        check(
            sys::cuGraphGetNodes(graph, ptr::null_mut(), &mut count),
            "cuGraphGetNodes",
        )?
    };
    let mut roots = 0usize;
    // SAFETY: as above.
    unsafe {
        check(
            sys::cuGraphGetRootNodes(graph, ptr::null_mut(), &mut roots),
            "cuGraphGetRootNodes",
        )?
    };
    if roots != 1 {
        return Err(format!(
            "the captured graph has {roots} roots, not one chain"
        ));
    }
    let mut node: CUgraphNode = ptr::null_mut();
    // SAFETY: room for exactly the one root.
    unsafe {
        check(
            sys::cuGraphGetRootNodes(graph, &mut node, &mut roots),
            "cuGraphGetRootNodes",
        )?
    };
    let mut chain = Vec::with_capacity(count);
    loop {
        let mut kind = CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
        // SAFETY: `node` is a node of the live graph.
        unsafe {
            check(
                sys::cuGraphNodeGetType(node, &mut kind),
                "cuGraphNodeGetType",
            )?
        };
        if kind != CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
            return Err(format!("the captured graph holds a {kind:?} node"));
        }
        chain.push(node);
        let mut next_count = 0usize;
        // SAFETY: as above; a null array asks for the count only.
        unsafe {
            check(
                sys::cuGraphNodeGetDependentNodes_v2(
                    node,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    &mut next_count,
                ),
                "cuGraphNodeGetDependentNodes",
            )?
        };
        match next_count {
            0 => break,
            1 => {
                let mut next: CUgraphNode = ptr::null_mut();
                // SAFETY: room for exactly the one dependent.
                unsafe {
                    check(
                        sys::cuGraphNodeGetDependentNodes_v2(
                            node,
                            &mut next,
                            ptr::null_mut(),
                            &mut next_count,
                        ),
                        "cuGraphNodeGetDependentNodes",
                    )?
                };
                node = next;
            }
            n => return Err(format!("a captured node has {n} successors, not one chain")),
        }
    }
    if chain.len() != count {
        return Err(format!(
            "the chain from the root holds {} of the graph's {count} nodes",
            chain.len()
        ));
    }
    Ok(chain)
}

impl DecodeGraph {
    /// Gives kernel node `node` new parameter values and launch shape.
    pub fn set_params(
        &self,
        node: CUgraphNode,
        values: &[u64],
        cfg: &LaunchConfig,
    ) -> Result<(), String> {
        // SAFETY: a plain C struct of pointers and integers, for which all zeros is valid;
        // the driver fills it next.
        let mut params: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
        // SAFETY: `node` is a kernel node of this graph (checked when captured); the driver
        // fills the struct.
        unsafe {
            check(
                sys::cuGraphKernelNodeGetParams_v2(node, &mut params),
                "cuGraphKernelNodeGetParams",
            )?
        };
        let mut pointers: Vec<*mut c_void> = values
            .iter()
            .map(|v| (v as *const u64).cast_mut().cast::<c_void>())
            .collect();
        params.kernelParams = pointers.as_mut_ptr();
        params.extra = ptr::null_mut();
        (params.gridDimX, params.gridDimY, params.gridDimZ) = cfg.grid_dim;
        (params.blockDimX, params.blockDimY, params.blockDimZ) = cfg.block_dim;
        params.sharedMemBytes = cfg.shared_mem_bytes;
        // SAFETY: the driver copies the parameter values before returning; `pointers` and
        // `values` outlive the call.
        unsafe {
            check(
                sys::cuGraphExecKernelNodeSetParams_v2(self.graph.cu_graph_exec(), node, &params),
                "cuGraphExecKernelNodeSetParams",
            )
        }
    }
}
