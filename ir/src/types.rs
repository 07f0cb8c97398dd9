//! Value types of the IR: element types and shapes with symbolic dimensions.
//!
//! Two symbols cover every dynamic size in a Zamba graph: `T`, the tokens of the current
//! call (1 in decode), and `C`, the KV-cache capacity in tokens. Everything else is a
//! constant taken from the model description, so shapes stay exact and printable.

use std::fmt;

pub use zambac_frontend::DType;

/// Element type of a value: the contract's one element type, shared with kernels, stored
/// weights and the runtime's buffers.
pub use zambac_engine::Elem;

/// The element type of weights stored as `d`.
pub fn elem_of(d: DType) -> Elem {
    match d {
        DType::F32 => Elem::F32,
        DType::Bf16 => Elem::Bf16,
        DType::F16 => Elem::F16,
    }
}

/// A symbolic size, bound when a graph is executed or costed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sym {
    /// Tokens in the current call.
    T,
    /// KV-cache capacity (maximum context) in tokens.
    C,
}

impl Sym {
    pub fn name(self) -> &'static str {
        match self {
            Sym::T => "T",
            Sym::C => "C",
        }
    }
}

/// One dimension of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Const(usize),
    Sym(Sym),
}

impl Dim {
    /// The constant size, if the dimension is not symbolic.
    pub fn as_const(self) -> Option<usize> {
        match self {
            Dim::Const(n) => Some(n),
            Dim::Sym(_) => None,
        }
    }

    /// The concrete size under `bind`.
    pub fn eval(self, bind: &Bindings) -> usize {
        match self {
            Dim::Const(n) => n,
            Dim::Sym(Sym::T) => bind.t,
            Dim::Sym(Sym::C) => bind.c,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Const(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s.name()),
        }
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Const(n)
    }
}

/// Values of the symbolic sizes for one execution (or one cost estimate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bindings {
    /// Tokens in the call.
    pub t: usize,
    /// KV-cache capacity.
    pub c: usize,
}

/// The type of a value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub elem: Elem,
    pub dims: Vec<Dim>,
}

impl TensorType {
    pub fn new(elem: Elem, dims: impl IntoIterator<Item = Dim>) -> TensorType {
        TensorType {
            elem,
            dims: dims.into_iter().collect(),
        }
    }

    /// An f32 tensor with the given dimensions.
    pub fn f32(dims: impl IntoIterator<Item = Dim>) -> TensorType {
        TensorType::new(Elem::F32, dims)
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The last dimension (the "feature" axis of activations).
    pub fn last(&self) -> Option<Dim> {
        self.dims.last().copied()
    }

    /// Element count under `bind`.
    pub fn numel(&self, bind: &Bindings) -> usize {
        self.dims.iter().map(|d| d.eval(bind)).product()
    }

    /// Byte size under `bind`.
    pub fn bytes(&self, bind: &Bindings) -> usize {
        self.numel(bind) * self.elem.size()
    }

    /// Whether any dimension mentions `sym`.
    pub fn mentions(&self, sym: Sym) -> bool {
        self.dims.contains(&Dim::Sym(sym))
    }

    /// Product of the constant dimensions (all of them when the shape is static).
    pub fn const_numel(&self) -> usize {
        self.dims.iter().filter_map(|d| d.as_const()).product()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.elem)?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Shorthand for building dimension lists in the builder and in tests.
#[macro_export]
macro_rules! dims {
    ($($d:expr),* $(,)?) => { vec![$($crate::types::Dim::from($d)),*] };
}

/// The `T` dimension.
pub const T: Dim = Dim::Sym(Sym::T);
/// The `C` dimension.
pub const C: Dim = Dim::Sym(Sym::C);
