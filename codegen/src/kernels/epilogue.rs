//! The row-wise epilogue of a linear layer: bias, then an activation, a gated activation, a
//! product with another tensor, or rotary position embedding.
//!
//! RoPE's inverse frequencies are computed here, at compile time, with exactly the f32
//! operations the reference uses (`1 / θ^(2m/hd)` in f32, scaled as `zambac_engine::rope`
//! says), and embedded as constants; the angle `pos · inv_freq` and its sine and cosine are
//! computed at run time, also in f32 — and for `dynamic` scaling past its threshold, the
//! grown θ's frequencies too.

use super::Frame;
use super::act::apply;
use super::emit::{Emitter, V, VW};
use super::rows::load_f32;
use super::warp::{split_chunks, split_range};
use melior::dialect::arith::CmpiPredicate;
use zambac_engine::Elem;
use zambac_engine::EpilogueOp;
use zambac_engine::Role;
use zambac_engine::rope::{Rope, RopeScaling, exponent};

/// [`zambac_engine::KernelKind::Epilogue`].
pub(crate) fn epilogue<'c>(
    e: &Emitter<'c, '_>,
    f: &Frame<'c, '_>,
    n: usize,
    bias: bool,
    op: &EpilogueOp,
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
            split_chunks(e, f, n, 2, |e, column, width| {
                let v = input(e, column, width);
                let v = match (op, m) {
                    (EpilogueOp::Act(act), _) => apply(e, *act, v),
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
            split_chunks(e, f, half, 2, |e, column, width| {
                let gate = apply(e, *act, input(e, column, width));
                let up = input(e, e.add_k(column, half), width);
                e.vstore(e.mulf(gate, up), out, e.addi(orow, column));
            });
        }
        EpilogueOp::Rope {
            heads,
            head_dim,
            theta,
            scaling,
        } => {
            let (theta, head_dim, heads) = (*theta, *head_dim, *heads);
            let rope = Rope {
                theta,
                head_dim,
                scaling: scaling.as_ref(),
            };
            let position = e.index_to_f32(e.addi(f.ints[0], f.item));
            let half = head_dim / 2;
            let freqs = Frequencies::new(e, f, &rope);
            let factor = rope.attention_factor();
            // Heads are independent (a rotation pairs elements of one head only): with
            // several lanes each takes every lanes-th head.
            split_range(e, f, heads, |e, h| {
                let head = e.mul_k(h, head_dim);
                let rotate = |e: &Emitter<'c, '_>, start: V<'c>, width: usize, inv: V<'c>| {
                    let angle = e.mulf(e.splat(position, width), inv);
                    let (mut cos, mut sin) = (e.math("cos", angle), e.math("sin", angle));
                    if factor != 1.0 {
                        cos = e.mulf(cos, e.f32_splat(factor, width));
                        sin = e.mulf(sin, e.f32_splat(factor, width));
                    }
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
                            vec![freqs.lanes(e, start..start + VW)]
                        })[0];
                        rotate(e, e.mul_k(c, VW), VW, inv);
                        vec![]
                    });
                }
                let start = chunks * VW;
                if start < half {
                    let inv = freqs.lanes(e, start..half);
                    rotate(e, e.index(start as i64), half - start, inv);
                }
            });
        }
    }
}

/// RoPE's inverse frequencies in a kernel: constants computed here, at compile time, with
/// exactly the f32 operations transformers uses ([`zambac_engine::rope`]); for a scaling
/// that depends on the length a call reaches (`pos0 + rows`), the frequencies below its
/// threshold and, past it, the long ones — constants for `longrope`, computed at run time
/// from the grown θ for `dynamic`.
struct Frequencies<'c> {
    /// Below the threshold (or always).
    short: Vec<f32>,
    long: Option<(V<'c>, Long<'c>)>,
    head_dim: usize,
}

/// Frequencies past a length-dependent scaling's threshold.
enum Long<'c> {
    Table(Vec<f32>),
    /// `1 / base^(2m/hd)` with the base grown for this call.
    Base(V<'c>),
}

impl<'c> Frequencies<'c> {
    fn new(e: &Emitter<'c, '_>, f: &Frame<'c, '_>, rope: &Rope<'_>) -> Frequencies<'c> {
        let (Some(threshold), [pos0, rows, ..]) = (rope.threshold(), &f.ints[..]) else {
            return Frequencies {
                short: rope.inv_freq(1),
                long: None,
                head_dim: rope.head_dim,
            };
        };
        let short = rope.inv_freq(threshold);
        let reach = e.addi(*pos0, *rows);
        let past = e.cmpi(
            CmpiPredicate::Sgt,
            reach,
            e.index(i64::try_from(threshold).unwrap_or(i64::MAX)),
        );
        let long = match rope.scaling {
            Some(RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            }) => {
                // dynamic_base in f32, with `reach` (past the threshold here) for the length.
                let dim = rope.head_dim as f64;
                let s = e.index_to_f32(reach);
                let ratio = e.subf(
                    e.divf(
                        e.mulf(e.f32(*factor as f32), s),
                        e.f32(*max_position_embeddings as f32),
                    ),
                    e.f32((factor - 1.0) as f32),
                );
                let grown = e.powf(ratio, e.f32((dim / (dim - 2.0)) as f32));
                Long::Base(e.mulf(e.f32(rope.theta as f32), grown))
            }
            _ => Long::Table(rope.inv_freq(threshold + 1)),
        };
        Frequencies {
            short,
            long: Some((past, long)),
            head_dim: rope.head_dim,
        }
    }

    /// The frequencies of pairs `range` as one vector.
    fn lanes(&self, e: &Emitter<'c, '_>, range: std::ops::Range<usize>) -> V<'c> {
        let short = e.f32_lanes(&self.short[range.clone()]);
        let Some((past, long)) = &self.long else {
            return short;
        };
        let long = match long {
            Long::Table(t) => e.f32_lanes(&t[range]),
            Long::Base(base) => {
                let width = range.len();
                let exponents: Vec<f32> = range.map(|m| exponent(m, self.head_dim)).collect();
                let power = e.powf(e.splat(*base, width), e.f32_lanes(&exponents));
                e.divf(e.f32_splat(1.0, width), power)
            }
        };
        e.select(*past, long, short)
    }
}
