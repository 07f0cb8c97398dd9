//! The values the interpreter passes between ops: f32 tensors, or i64 token ids and
//! positions.

use zambac_runtime::{RuntimeError, Tensor};

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
