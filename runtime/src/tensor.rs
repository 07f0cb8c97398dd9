//! A plain row-major f32 tensor and the values the interpreter passes between ops.

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

    /// Row `i` of the `[rows, last]` view.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.last();
        &self.data[i * w..(i + 1) * w]
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

/// A runtime value: an f32 tensor or i64 data (tokens, positions).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(Tensor),
    I64 { shape: Vec<usize>, data: Vec<i64> },
}

impl Value {
    pub fn scalar_i64(x: i64) -> Value {
        Value::I64 {
            shape: vec![],
            data: vec![x],
        }
    }

    pub fn tokens(ids: &[i64]) -> Value {
        Value::I64 {
            shape: vec![ids.len()],
            data: ids.to_vec(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Value::F32(t) => &t.shape,
            Value::I64 { shape, .. } => shape,
        }
    }

    pub fn f32(&self) -> Result<&Tensor, RuntimeError> {
        match self {
            Value::F32(t) => Ok(t),
            Value::I64 { .. } => Err(RuntimeError::Internal("expected an f32 value".into())),
        }
    }

    pub fn into_f32(self) -> Result<Tensor, RuntimeError> {
        match self {
            Value::F32(t) => Ok(t),
            Value::I64 { .. } => Err(RuntimeError::Internal("expected an f32 value".into())),
        }
    }

    pub fn i64(&self) -> Result<&[i64], RuntimeError> {
        match self {
            Value::I64 { data, .. } => Ok(data),
            Value::F32(_) => Err(RuntimeError::Internal("expected an i64 value".into())),
        }
    }
}
