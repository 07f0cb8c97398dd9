//! A plain row-major f32 tensor: logits, state tensors, reference weights.

use crate::error::RuntimeError;

/// Row-major f32 data with a shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }

    /// A zero tensor, or an error naming the bytes a shape too large for memory would
    /// need (shapes of states come from engine files and user options).
    pub fn try_zeros(shape: Vec<usize>) -> Result<Tensor, RuntimeError> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| n.checked_mul(4).is_some())
            .ok_or_else(|| {
                RuntimeError::Input(format!("a tensor of shape {shape:?} is too large"))
            })?;
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|_| {
            RuntimeError::Input(format!(
                "a tensor of shape {shape:?} needs {} bytes, more than can be allocated",
                n.saturating_mul(4)
            ))
        })?;
        data.resize(n, 0.0);
        Ok(Tensor { shape, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Size of the last axis.
    pub fn last(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows when viewed as `[rows, last]`.
    pub fn rows(&self) -> usize {
        self.numel() / self.last().max(1)
    }

    /// Row `i` of the `[rows, last]` view (empty past the last row).
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.last();
        self.data.get(i * w..(i + 1) * w).unwrap_or_default()
    }

    /// Largest absolute elementwise difference to `other` (shapes must agree).
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape, "compared tensors differ in shape");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}
