//! The row-wise epilogue of a linear layer: bias, then an activation, a gated activation, a
//! product with another tensor, or rotary position embedding.
//!
//! RoPE's inverse frequencies are computed here, at compile time, with exactly the f32
//! operations the reference uses (`1 / θ^(2m/hd)` in f32), and embedded as constants; only the
//! angle `pos · inv_freq` and its sine and cosine are computed at run time, also in f32.

use super::Frame;
use super::act::apply;
use super::emit::{Emitter, V, VW};
use super::rows::{for_chunks, load_f32};
use zambac_engine::Elem;
use zambac_engine::EpilogueOp;
use zambac_engine::Role;

/// [`zambac_engine::KernelKind::Epilogue`].
pub(crate) fn epilogue<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    n: usize,
    bias: bool,
    op: EpilogueOp,
) {
    let y = f.view(Role::Y);
    let out = f.view(Role::Out);
    let bias = bias.then(|| f.view(Role::Bias));
    let row = e.mul_k(f.item, n);
    // `y[row + j] (+ bias[j])` for the `width` columns at `column`.
    let input = |e: &Emitter<'c, '_>, column: V<'c>, width: usize| {
        let v = load_f32(e, y, e.addi(row, column), width, Elem::F32);
        match bias {
            Some(b) => e.addf(v, load_f32(e, b, column, width, Elem::F32)),
            None => v,
        }
    };
    match op {
        EpilogueOp::None | EpilogueOp::Act(_) | EpilogueOp::Mul => {
            let m = matches!(op, EpilogueOp::Mul).then(|| f.view(Role::M));
            for_chunks(e, n, 2, |e, column, width| {
                let v = input(e, column, width);
                let v = match (op, m) {
                    (EpilogueOp::Act(act), _) => apply(e, act, v),
                    (_, Some(m)) => {
                        e.mulf(v, load_f32(e, m, e.addi(row, column), width, Elem::F32))
                    }
                    _ => v,
                };
                e.vstore(v, out, e.addi(row, column));
            });
        }
        EpilogueOp::Gate(act) => {
            let half = n / 2;
            let orow = e.mul_k(f.item, half);
            for_chunks(e, half, 2, |e, column, width| {
                let gate = apply(e, act, input(e, column, width));
                let up = input(e, e.add_k(column, half), width);
                e.vstore(e.mulf(gate, up), out, e.addi(orow, column));
            });
        }
        EpilogueOp::Rope {
            heads,
            head_dim,
            theta,
        } => {
            let position = e.index_to_f32(e.addi(f.ints[0], f.item));
            let half = head_dim / 2;
            let inv_freq = inverse_frequencies(theta, head_dim);
            e.for_k(0, heads, 1, &[], |e, h, _| {
                let head = e.mul_k(h, head_dim);
                let rotate = |e: &Emitter<'c, '_>, start: V<'c>, width: usize, inv: V<'c>| {
                    let angle = e.mulf(e.splat(position, width), inv);
                    let (cos, sin) = (e.math("cos", angle), e.math("sin", angle));
                    let first = e.addi(head, start);
                    let second = e.add_k(first, half);
                    let a = input(e, first, width);
                    let b = input(e, second, width);
                    let rotated_a = e.subf(e.mulf(a, cos), e.mulf(b, sin));
                    let rotated_b = e.fma(a, sin, e.mulf(b, cos));
                    e.vstore(rotated_a, out, e.addi(row, first));
                    e.vstore(rotated_b, out, e.addi(row, second));
                };
                // A loop (not an unrolled sequence) over the vector chunks keeps one chunk's
                // sine and cosine live at a time, which the GPU needs to stay within its
                // registers; each iteration picks its frequencies from the constants.
                let chunks = half / VW;
                if chunks > 0 {
                    e.for_k(0, chunks, 1, &[], |e, c, _| {
                        let inv = e.switch(c, chunks, &[e.vf32(VW)], |e, case| {
                            let start = case.unwrap_or(0) * VW;
                            vec![e.f32_lanes(&inv_freq[start..start + VW])]
                        })[0];
                        rotate(e, e.mul_k(c, VW), VW, inv);
                        vec![]
                    });
                }
                let start = chunks * VW;
                if start < half {
                    let inv = e.f32_lanes(&inv_freq[start..half]);
                    rotate(e, e.index(start as i64), half - start, inv);
                }
                vec![]
            });
        }
    }
}

/// `inv_freq[m] = 1 / θ^(2m/hd)` for `m < hd/2`, in f32 as transformers computes it.
fn inverse_frequencies(theta: f64, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|m| 1.0 / (theta as f32).powf((2 * m) as f32 / head_dim as f32))
        .collect()
}
