//! Pointwise activations on f32 scalars or vectors, as the reference defines them (spec §2):
//! SiLU, exact-erf GELU, tanh GELU and softplus with torch's threshold of 20.
//!
//! They are written with `math` ops so each backend picks its own implementation: LLVM
//! intrinsics or libm on the host (`erff`, `log1pf`), libdevice on the GPU.

use super::emit::{Emitter, V};
use melior::dialect::arith::CmpfPredicate;
use zambac_engine::ActKind;

/// `act(x)`.
pub(crate) fn apply<'c>(e: &Emitter<'c, '_>, act: ActKind, x: V<'c>) -> V<'c> {
    match act {
        ActKind::Silu => silu(e, x),
        ActKind::Gelu => gelu(e, x),
        ActKind::GeluTanh => gelu_tanh(e, x),
        ActKind::Softplus => softplus(e, x),
    }
}

/// `x / (1 + e^-x)`.
pub(crate) fn silu<'c>(e: &Emitter<'c, '_>, x: V<'c>) -> V<'c> {
    let exp = e.math("exp", e.negf(x));
    e.divf(x, e.addf(e.f32_like(1.0, x), exp))
}

/// `x/2 · (1 + erf(x/√2))`.
fn gelu<'c>(e: &Emitter<'c, '_>, x: V<'c>) -> V<'c> {
    let scaled = e.mulf(x, e.f32_like(std::f32::consts::FRAC_1_SQRT_2, x));
    let erf = e.math("erf", scaled);
    let half = e.mulf(x, e.f32_like(0.5, x));
    e.fma(half, erf, half)
}

/// `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu_tanh<'c>(e: &Emitter<'c, '_>, x: V<'c>) -> V<'c> {
    let c = (2.0 / std::f64::consts::PI).sqrt() as f32;
    let x3 = e.mulf(e.mulf(x, x), x);
    let inner = e.fma(x3, e.f32_like(0.044715, x), x);
    let tanh = e.math("tanh", e.mulf(inner, e.f32_like(c, x)));
    let half = e.mulf(x, e.f32_like(0.5, x));
    e.fma(half, tanh, half)
}

/// `log(1 + eˣ)`, or `x` above 20 (where the two agree in f32 and `eˣ` would lose `log1p`'s
/// precision).
pub(crate) fn softplus<'c>(e: &Emitter<'c, '_>, x: V<'c>) -> V<'c> {
    let soft = e.math("log1p", e.math("exp", x));
    let large = e.cmpf(CmpfPredicate::Ogt, x, e.f32_like(20.0, x));
    e.select(large, x, soft)
}
