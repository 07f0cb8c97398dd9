//! The one element type of zambac — IR values, kernel views, stored weights and the
//! runtime's buffers — and the f32 ⇄ bf16 conversions, kept in one place so the writer's
//! rounding and the runtime's widening cannot drift apart.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Element type of a value, a buffer or a stored weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    F32,
    Bf16,
    F16,
    I64,
}

impl Elem {
    /// f32: what a storage type defaults to in a manifest that does not name one.
    pub fn f32() -> Elem {
        Elem::F32
    }

    pub fn is_f32(&self) -> bool {
        *self == Elem::F32
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "f32",
            Elem::Bf16 => "bf16",
            Elem::F16 => "f16",
            Elem::I64 => "i64",
        }
    }

    pub fn parse(s: &str) -> Option<Elem> {
        match s {
            "f32" => Some(Elem::F32),
            "bf16" => Some(Elem::Bf16),
            "f16" => Some(Elem::F16),
            "i64" => Some(Elem::I64),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 | Elem::F16 => 2,
            Elem::I64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        !matches!(self, Elem::I64)
    }

    /// Whether an engine may store a weight in this type (`weights.bin` holds f32 and bf16).
    pub fn is_storable(self) -> bool {
        matches!(self, Elem::F32 | Elem::Bf16)
    }
}

impl fmt::Display for Elem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The bf16 bit pattern nearest to `x`, ties to even (NaN stays NaN), as every framework
/// rounds when it casts f32 weights to bf16.
pub fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Appends the little-endian bytes of `data` stored as `elem` (f32 or bf16) to `out`.
/// Returns false, appending nothing, for a type weights cannot be stored in.
pub(crate) fn encode(data: &[f32], elem: Elem, out: &mut Vec<u8>) -> bool {
    match elem {
        Elem::F32 => out.extend(data.iter().flat_map(|x| x.to_le_bytes())),
        Elem::Bf16 => out.extend(data.iter().flat_map(|&x| bf16_bits(x).to_le_bytes())),
        Elem::F16 | Elem::I64 => return false,
    }
    true
}

/// Widens bf16 bit patterns to f32 (exact: bf16 is the top half of an f32).
pub fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_is_exact_for_bf16_values() {
        let xs = [0.0f32, -1.5, 3.140625, f32::MIN_POSITIVE, 65280.0];
        let bits: Vec<u16> = xs.iter().map(|&x| bf16_bits(x)).collect();
        let mut back = vec![0.0; xs.len()];
        widen_bf16(&bits, &mut back);
        assert_eq!(back, xs);
    }

    #[test]
    fn names_parse_back() {
        for e in [Elem::F32, Elem::Bf16, Elem::F16, Elem::I64] {
            assert_eq!(Elem::parse(e.name()), Some(e));
        }
        assert_eq!(Elem::parse("f64"), None);
    }

    #[test]
    fn only_f32_and_bf16_are_stored() {
        let mut out = Vec::new();
        assert!(encode(&[1.0], Elem::Bf16, &mut out));
        assert_eq!(out, bf16_bits(1.0).to_le_bytes());
        assert!(!encode(&[1.0], Elem::I64, &mut out));
        assert_eq!(out.len(), 2);
    }
}
