//! 64-byte aligned f32 buffers for activation slots and workspaces, kept across calls and
//! grown only when a call needs more, so steady-state decode allocates nothing.

/// One cache line of f32s; a `Vec` of these is 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable, 64-byte aligned f32 buffer.
#[derive(Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    /// Makes room for at least `len` elements; contents are unspecified afterwards. An
    /// allocation the system refuses is an error naming its bytes, not an abort.
    pub fn reserve(&mut self, len: usize) -> Result<(), String> {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines = Vec::new();
            self.lines.try_reserve_exact(lines).map_err(|_| {
                format!(
                    "a workspace of {} cannot be allocated",
                    zambac_engine::resources::human_bytes((lines as u64).saturating_mul(64))
                )
            })?;
            self.lines.resize(lines, Line([0.0; 16]));
        }
        Ok(())
    }

    /// Capacity in elements.
    pub fn len(&self) -> usize {
        self.lines.len() * 16
    }

    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.lines.as_mut_ptr().cast()
    }

    /// The first `len` elements (at most [`AlignedBuf::len`]).
    pub fn as_mut_slice(&mut self, len: usize) -> &mut [f32] {
        let len = len.min(self.len());
        // SAFETY: `Line` is 16 contiguous f32s with no padding, so the buffer holds
        // `self.len()` initialised f32s.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), len) }
    }
}

/// Buffers indexed by slot or workspace number.
#[derive(Default)]
pub struct Arena {
    pub bufs: Vec<AlignedBuf>,
}

impl Arena {
    /// Ensures buffer `i` holds at least `sizes[i]` elements.
    pub fn prepare(&mut self, sizes: &[usize]) -> Result<(), String> {
        if self.bufs.len() < sizes.len() {
            self.bufs.resize_with(sizes.len(), AlignedBuf::default);
        }
        for (b, &n) in self.bufs.iter_mut().zip(sizes) {
            b.reserve(n)?;
        }
        Ok(())
    }
}
