//! Element types of stored weights and the f32 ⇄ bf16 conversions, kept in one place so
//! the writer's rounding and the runtime's widening cannot drift apart.

use serde::{Deserialize, Serialize};

/// How a parameter is stored in `weights.bin` (little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// The bf16 bit pattern nearest to `x`, ties to even (NaN stays NaN), as every framework
/// rounds when it casts f32 weights to bf16.
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Appends the little-endian bytes of `data` stored as `dtype` to `out`.
pub(crate) fn encode(data: &[f32], dtype: Dtype, out: &mut Vec<u8>) {
    match dtype {
        Dtype::F32 => out.extend(data.iter().flat_map(|x| x.to_le_bytes())),
        Dtype::Bf16 => out.extend(data.iter().flat_map(|&x| bf16_bits(x).to_le_bytes())),
    }
}

/// Widens bf16 bit patterns to f32 (exact: bf16 is the top half of an f32).
pub fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s) << 16);
    }
}
