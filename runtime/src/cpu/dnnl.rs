//! BF16 × BF16 → F32 matrix products through oneDNN, for bf16 engines on CPUs with AVX-512
//! BF16, whose `vdpbf16ps` computes bf16 dot products at twice the f32 rate.
//!
//! Measured on a 2-core Zen 4 (`/work/proto-dnnl`-style C benchmark, Zamba2-1.2B prefill
//! shapes, M = 512): oneDNN 2.6's `brg:avx512_core_bf16` kernels run at 436–452 GFLOP/s
//! against 190–198 for OpenBLAS `sgemm` on widened weights (2.2–2.4×). The activations are
//! rounded to bf16 (nearest even) for the product, which is what makes it fast and what
//! every framework's bf16 inference does; accumulation stays f32. `docs/performance.md`
//! has the measured effect on logits.
//!
//! oneDNN is loaded at run time (Debian's `libdnnl2`), only on CPUs with AVX-512 BF16. It
//! runs on OpenMP; the runtime sets each of its pool threads to one OpenMP thread, so every
//! call runs inline on the calling pool thread (the pool splits a product by rows, as for
//! OpenBLAS). Each thread keeps its own stream and primitives, created once per shape.
//! The C structures oneDNN fills in are opaque here: buffers at least as large as
//! `sizeof(dnnl_memory_desc_t)` (696 bytes in 2.6) and `sizeof(dnnl_matmul_desc_t)` (2800).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use super::machine::Machine;

type Status = c_int;
type Handle = *mut c_void;
const SUCCESS: Status = 0;
const CPU: c_int = 1;
const BF16: c_int = 2;
const F32: c_int = 3;
const IN_ORDER: u32 = 1;
const ARG_SRC: c_int = 1;
const ARG_DST: c_int = 17;
const ARG_WEIGHTS: c_int = 33;
const QUERY_IMPL_INFO_STR: c_int = 8;

/// Room for a `dnnl_memory_desc_t` (696 bytes in oneDNN 2.x).
#[repr(C, align(64))]
struct MemoryDesc([u8; 1024]);
/// Room for a `dnnl_matmul_desc_t` (2800 bytes in oneDNN 2.x).
#[repr(C, align(64))]
struct MatmulDesc([u8; 4096]);

#[repr(C)]
struct ExecArg {
    arg: c_int,
    memory: Handle,
}

/// The oneDNN functions the runtime calls.
struct Api {
    engine_create: unsafe extern "C" fn(*mut Handle, c_int, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    md_by_strides:
        unsafe extern "C" fn(*mut MemoryDesc, c_int, *const i64, c_int, *const i64) -> Status,
    matmul_desc_init: unsafe extern "C" fn(
        *mut MatmulDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
        *const MemoryDesc,
    ) -> Status,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    attr_set_post_ops: unsafe extern "C" fn(Handle, Handle) -> Status,
    post_ops_create: unsafe extern "C" fn(*mut Handle) -> Status,
    post_ops_destroy: unsafe extern "C" fn(Handle) -> Status,
    post_ops_append_sum: unsafe extern "C" fn(Handle, f32) -> Status,
    pd_create:
        unsafe extern "C" fn(*mut Handle, *const MatmulDesc, Handle, Handle, Handle) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_query: unsafe extern "C" fn(Handle, c_int, c_int, *mut c_void) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    memory_create:
        unsafe extern "C" fn(*mut Handle, *const MemoryDesc, Handle, *mut c_void) -> Status,
    memory_set_data_handle: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    execute: unsafe extern "C" fn(Handle, Handle, c_int, *const ExecArg) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    stream_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    omp_set_num_threads: unsafe extern "C" fn(c_int),
}

/// oneDNN as loaded for this process, with its CPU engine.
pub struct Dnnl {
    api: Api,
    engine: Handle,
    /// The library's description of the kernels it runs for a 512-row product, e.g.
    /// `brg:avx512_core_bf16`.
    pub implementation: String,
    _libs: (libloading::Library, libloading::Library),
}

// SAFETY: the engine handle is used read-only after creation (oneDNN's CPU engine may be
// shared by threads); streams and primitives are per thread.
unsafe impl Send for Dnnl {}
unsafe impl Sync for Dnnl {}

/// oneDNN, loaded on first use on a CPU with AVX-512 BF16; `Err` says why not.
pub fn dnnl() -> Result<&'static Dnnl, &'static str> {
    static LOADED: OnceLock<Result<Dnnl, String>> = OnceLock::new();
    LOADED.get_or_init(load).as_ref().map_err(String::as_str)
}

fn load() -> Result<Dnnl, String> {
    if !bf16_cpu() {
        return Err("the CPU has no AVX-512 BF16".into());
    }
    // SAFETY: loading oneDNN and its OpenMP runtime runs their constructors only.
    let lib = unsafe { libloading::Library::new("libdnnl.so.2") }
        .map_err(|e| format!("oneDNN is not installed (libdnnl.so.2: {e})"))?;
    // SAFETY: as above; oneDNN depends on it, so this finds the copy it uses.
    let omp = unsafe { libloading::Library::new("libgomp.so.1") }
        .map_err(|e| format!("oneDNN's OpenMP runtime is missing (libgomp.so.1: {e})"))?;
    let api = bind(&lib, &omp).map_err(|e| format!("oneDNN lacks a function: {e}"))?;
    let mut engine: Handle = std::ptr::null_mut();
    // SAFETY: creates the CPU engine into `engine`.
    check(
        unsafe { (api.engine_create)(&mut engine, CPU, 0) },
        "creating the CPU engine",
    )?;
    let mut d = Dnnl {
        api,
        engine,
        implementation: String::new(),
        _libs: (lib, omp),
    };
    d.implementation = d.implementation_for(512, 2048, 2048)?;
    Ok(d)
}

/// Whether this CPU runs the kernels this module calls (and the bf16 conversion below).
pub fn bf16_cpu() -> bool {
    let m = Machine::this();
    ["avx512f", "avx512bw", "avx512vl", "avx512bf16"]
        .iter()
        .all(|f| m.has(f))
}

fn bind(lib: &libloading::Library, omp: &libloading::Library) -> Result<Api, libloading::Error> {
    // SAFETY: each symbol is the oneDNN 2.x (or libgomp) C function of that name, whose C
    // signature the field's type spells out.
    unsafe {
        Ok(Api {
            engine_create: *lib.get(b"dnnl_engine_create\0")?,
            stream_create: *lib.get(b"dnnl_stream_create\0")?,
            md_by_strides: *lib.get(b"dnnl_memory_desc_init_by_strides\0")?,
            matmul_desc_init: *lib.get(b"dnnl_matmul_desc_init\0")?,
            attr_create: *lib.get(b"dnnl_primitive_attr_create\0")?,
            attr_destroy: *lib.get(b"dnnl_primitive_attr_destroy\0")?,
            attr_set_post_ops: *lib.get(b"dnnl_primitive_attr_set_post_ops\0")?,
            post_ops_create: *lib.get(b"dnnl_post_ops_create\0")?,
            post_ops_destroy: *lib.get(b"dnnl_post_ops_destroy\0")?,
            post_ops_append_sum: *lib.get(b"dnnl_post_ops_append_sum\0")?,
            pd_create: *lib.get(b"dnnl_primitive_desc_create\0")?,
            pd_destroy: *lib.get(b"dnnl_primitive_desc_destroy\0")?,
            pd_query: *lib.get(b"dnnl_primitive_desc_query\0")?,
            primitive_create: *lib.get(b"dnnl_primitive_create\0")?,
            memory_create: *lib.get(b"dnnl_memory_create\0")?,
            memory_set_data_handle: *lib.get(b"dnnl_memory_set_data_handle\0")?,
            execute: *lib.get(b"dnnl_primitive_execute\0")?,
            stream_wait: *lib.get(b"dnnl_stream_wait\0")?,
            stream_destroy: *lib.get(b"dnnl_stream_destroy\0")?,
            primitive_destroy: *lib.get(b"dnnl_primitive_destroy\0")?,
            memory_destroy: *lib.get(b"dnnl_memory_destroy\0")?,
            omp_set_num_threads: *omp.get(b"omp_set_num_threads\0")?,
        })
    }
}

fn check(status: Status, what: &str) -> Result<(), String> {
    if status == SUCCESS {
        Ok(())
    } else {
        Err(format!("oneDNN failed {what} (status {status})"))
    }
}

/// A product's shape and layout: `C [m,n] (+)= A [m,k] · B [k,n]`, A dense bf16, B bf16 with
/// strides `b_strides`, C f32 with row stride `ldc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub b_strides: (isize, isize),
    pub ldc: usize,
    pub accumulate: bool,
}

/// A primitive and the memory objects it is executed on, for one shape on one thread.
struct Prepared {
    primitive: Handle,
    src: Handle,
    weights: Handle,
    dst: Handle,
}

/// One thread's stream and primitives, released when the thread ends.
struct ThreadState {
    api: &'static Api,
    stream: Handle,
    prepared: HashMap<Shape, Prepared>,
}

/// Primitives kept per thread: a server sees many prompt lengths, and each is a shape.
const MAX_PREPARED: usize = 256;

impl ThreadState {
    fn release(&mut self) {
        let api = self.api;
        for (_, p) in self.prepared.drain() {
            // SAFETY: objects this thread created and no longer uses.
            unsafe {
                (api.primitive_destroy)(p.primitive);
                for m in [p.src, p.weights, p.dst] {
                    (api.memory_destroy)(m);
                }
            }
        }
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the stream is this thread's, idle once its last product returned.
        unsafe { (self.api.stream_destroy)(self.stream) };
    }
}

thread_local! {
    static STATE: RefCell<Option<ThreadState>> = const { RefCell::new(None) };
}

impl Dnnl {
    /// `C (+)= A·B` on this thread.
    ///
    /// # Safety
    /// `a` holds `m·k` bf16 values (row-major), `b` every element its strides address for
    /// `k × n`, `c` is writable for `m` rows of `ldc` with `n ≤ ldc`, and nothing else writes
    /// them during the call.
    pub unsafe fn gemm(
        &'static self,
        s: Shape,
        a: *const u16,
        b: *const u16,
        c: *mut f32,
    ) -> Result<(), String> {
        STATE.with(|cell| {
            let mut state = cell.borrow_mut();
            if state.is_none() {
                *state = Some(self.thread_state()?);
            }
            let Some(st) = state.as_mut() else {
                return Err("no oneDNN stream".to_string());
            };
            if !st.prepared.contains_key(&s) {
                if st.prepared.len() >= MAX_PREPARED {
                    st.release();
                }
                let p = self.prepare(s)?;
                st.prepared.insert(s, p);
            }
            let Some(p) = st.prepared.get(&s) else {
                return Err("no oneDNN primitive".to_string());
            };
            let api = &self.api;
            // SAFETY: the handles were created for this shape; the caller vouches for the
            // buffers, which oneDNN only reads (A, B) and writes (C) within the shape.
            unsafe {
                check(
                    (api.memory_set_data_handle)(p.src, a.cast_mut().cast()),
                    "binding A",
                )?;
                check(
                    (api.memory_set_data_handle)(p.weights, b.cast_mut().cast()),
                    "binding B",
                )?;
                check((api.memory_set_data_handle)(p.dst, c.cast()), "binding C")?;
                let args = [
                    ExecArg {
                        arg: ARG_SRC,
                        memory: p.src,
                    },
                    ExecArg {
                        arg: ARG_WEIGHTS,
                        memory: p.weights,
                    },
                    ExecArg {
                        arg: ARG_DST,
                        memory: p.dst,
                    },
                ];
                check(
                    (api.execute)(p.primitive, st.stream, 3, args.as_ptr()),
                    "in a product",
                )?;
                check((api.stream_wait)(st.stream), "waiting for a product")
            }
        })
    }

    /// This thread's stream; oneDNN on this thread runs single-threaded, inline.
    fn thread_state(&'static self) -> Result<ThreadState, String> {
        let mut stream: Handle = std::ptr::null_mut();
        // SAFETY: plain setters and constructors on this thread.
        unsafe {
            (self.api.omp_set_num_threads)(1);
            check(
                (self.api.stream_create)(&mut stream, self.engine, IN_ORDER),
                "creating a stream",
            )?;
        }
        Ok(ThreadState {
            api: &self.api,
            stream,
            prepared: HashMap::new(),
        })
    }

    fn desc(&self, dims: [i64; 2], elem: c_int, strides: [i64; 2]) -> Result<MemoryDesc, String> {
        let mut md = MemoryDesc([0; 1024]);
        // SAFETY: fills `md` for a 2-D tensor; the arrays hold 2 values each.
        check(
            unsafe { (self.api.md_by_strides)(&mut md, 2, dims.as_ptr(), elem, strides.as_ptr()) },
            "describing an operand",
        )?;
        Ok(md)
    }

    /// The primitive descriptor of a shape; the caller destroys it.
    fn primitive_desc(&self, s: Shape) -> Result<(Handle, [MemoryDesc; 3]), String> {
        let i = |x: usize| i64::try_from(x).map_err(|_| format!("{x} is too large for oneDNN"));
        let j = |x: isize| i64::try_from(x).map_err(|_| format!("{x} is too large for oneDNN"));
        let (m, n, k) = (i(s.m)?, i(s.n)?, i(s.k)?);
        let src = self.desc([m, k], BF16, [k, 1])?;
        let weights = self.desc([k, n], BF16, [j(s.b_strides.0)?, j(s.b_strides.1)?])?;
        let dst = self.desc([m, n], F32, [i(s.ldc)?, 1])?;
        let mut op = MatmulDesc([0; 4096]);
        let api = &self.api;
        let mut attr: Handle = std::ptr::null_mut();
        let mut pd: Handle = std::ptr::null_mut();
        // SAFETY: descriptors and attributes built and released here; oneDNN copies what it
        // keeps into the primitive descriptor.
        unsafe {
            check(
                (api.matmul_desc_init)(&mut op, &src, &weights, std::ptr::null(), &dst),
                "describing a product",
            )?;
            check((api.attr_create)(&mut attr), "creating attributes")?;
            let made = (|| {
                if s.accumulate {
                    let mut post: Handle = std::ptr::null_mut();
                    check((api.post_ops_create)(&mut post), "creating post-ops")?;
                    let set = check((api.post_ops_append_sum)(post, 1.0), "adding a sum").and_then(
                        |()| check((api.attr_set_post_ops)(attr, post), "setting post-ops"),
                    );
                    (api.post_ops_destroy)(post);
                    set?;
                }
                check(
                    (api.pd_create)(&mut pd, &op, attr, self.engine, std::ptr::null_mut()),
                    "planning a product",
                )
            })();
            (api.attr_destroy)(attr);
            made?;
        }
        Ok((pd, [src, weights, dst]))
    }

    fn prepare(&self, s: Shape) -> Result<Prepared, String> {
        let (pd, [src, weights, dst]) = self.primitive_desc(s)?;
        let api = &self.api;
        let mut p = Prepared {
            primitive: std::ptr::null_mut(),
            src: std::ptr::null_mut(),
            weights: std::ptr::null_mut(),
            dst: std::ptr::null_mut(),
        };
        let none: *mut c_void = std::ptr::null_mut();
        // SAFETY: the primitive is created from the descriptor, which is then released;
        // memory objects start without data (bound per call).
        unsafe {
            let made = check(
                (api.primitive_create)(&mut p.primitive, pd),
                "creating a product",
            );
            (api.pd_destroy)(pd);
            made?;
            check(
                (api.memory_create)(&mut p.src, &src, self.engine, none),
                "binding A",
            )?;
            check(
                (api.memory_create)(&mut p.weights, &weights, self.engine, none),
                "binding B",
            )?;
            check(
                (api.memory_create)(&mut p.dst, &dst, self.engine, none),
                "binding C",
            )?;
        }
        Ok(p)
    }

    /// What oneDNN runs for an `m × n × k` product with dense operands.
    fn implementation_for(&self, m: usize, n: usize, k: usize) -> Result<String, String> {
        let shape = Shape {
            m,
            n,
            k,
            b_strides: (1, k as isize),
            ldc: n,
            accumulate: false,
        };
        let (pd, _) = self.primitive_desc(shape)?;
        let mut info: *const c_char = std::ptr::null();
        // SAFETY: the query writes a pointer to a string owned by the descriptor, copied
        // before the descriptor is released.
        let text = unsafe {
            let ok = (self.api.pd_query)(pd, QUERY_IMPL_INFO_STR, 0, (&raw mut info).cast());
            let text = if ok == SUCCESS && !info.is_null() {
                CStr::from_ptr(info).to_string_lossy().into_owned()
            } else {
                String::from("?")
            };
            (self.api.pd_destroy)(pd);
            text
        };
        Ok(text)
    }
}

/// Rounds `src` to bf16 (nearest even) into `dst`, as `vcvtneps2bf16` does.
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let (src, dst) = (
        src.get(..n).unwrap_or_default(),
        dst.get_mut(..n).unwrap_or_default(),
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if bf16_cpu() {
        // SAFETY: the CPU has the extensions the function is compiled for.
        done = unsafe { to_bf16_avx512(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src).skip(done) {
        *d = zambac_engine::bf16_bits(s);
    }
}

/// The vector part of [`to_bf16`]: whole groups of 16; returns how many it converted.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) -> usize {
    use std::arch::x86_64::{
        __m256bh, __m256i, _mm256_storeu_si256, _mm512_cvtneps_pbh, _mm512_loadu_ps,
    };
    let groups = src.len() / 16;
    for g in 0..groups {
        // SAFETY: group `g` lies inside both slices; unaligned loads and stores.
        unsafe {
            let v = _mm512_loadu_ps(src.as_ptr().add(16 * g));
            let h = _mm512_cvtneps_pbh(v);
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(16 * g).cast::<__m256i>(),
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
    }
    groups * 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector conversion rounds exactly as the scalar one (nearest even), over values
    /// that exercise ties, carries into the exponent, infinities and NaN.
    #[test]
    fn vector_rounding_is_nearest_even() {
        let mut src: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(0x3f80_0000 + i * 0x8123))
            .collect();
        src.extend([
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x3fff_ffff),
            f32::INFINITY,
            -f32::INFINITY,
            -0.0,
            65504.0,
            -3.0e38,
        ]);
        let mut got = vec![0u16; src.len()];
        to_bf16(&src, &mut got);
        for (s, g) in src.iter().zip(&got) {
            assert_eq!(*g, zambac_engine::bf16_bits(*s), "{s:e}");
        }
        let mut nan = [0u16; 16];
        to_bf16(&[f32::NAN; 16], &mut nan);
        assert!(
            nan.iter()
                .all(|&b| f32::from_bits(u32::from(b) << 16).is_nan())
        );
    }
}
