//! Named operand slots of the ops whose operand list depends on their attributes.
//!
//! A fused `linear` reads `x, W, [b], [A, B], [Y, r], [epilogue operand]`, a Mamba1
//! mixer `xz, conv_w, [conv_b], x_proj, dt_proj_w, dt_proj_b, A_log, D, [conv_state,
//! ssm_state]` and a depthwise conv `x, [state], w, [b]`, each optional group present by
//! an attribute (or by the op: only `conv_step` reads a state). Where each operand sits is
//! computed here once, so typing, costing, the passes and the lowerings ask for an
//! operand by name instead of repeating the position arithmetic (and cannot disagree on
//! it).

use crate::op::{Epilogue, LinearAttrs, Mamba1Attrs};

/// Where each operand of a `linear` with given attributes sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearOperands {
    pub x: usize,
    pub w: usize,
    pub bias: Option<usize>,
    /// The adapter's down- and up-projections `A`, `B`.
    pub lora: Option<(usize, usize)>,
    /// The hoisted term `Y` and its row scale `r`.
    pub hoisted: Option<(usize, usize)>,
    /// The epilogue's operand, for the epilogues that take one: `mul`'s factor (always
    /// present) and `rope`'s start position (present only when the op has `arity.1`
    /// operands).
    pub epilogue: Option<usize>,
    /// The fewest and the most operands the op takes.
    pub arity: (usize, usize),
}

/// The operands of one `linear`, by name (values, types, tensors: whatever `T` the
/// caller's operand list holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearArgs<T> {
    pub x: T,
    pub w: T,
    pub bias: Option<T>,
    /// `(A, B)`.
    pub lora: Option<(T, T)>,
    /// `(Y, r)`.
    pub hoisted: Option<(T, T)>,
    pub epilogue: Option<T>,
}

impl LinearAttrs {
    /// The operand layout these attributes give.
    pub fn operands(&self) -> LinearOperands {
        let mut next = 2;
        let mut group = |present: bool, len: usize| {
            let at = next;
            next += if present { len } else { 0 };
            present.then_some(at)
        };
        let bias = group(self.bias, 1);
        let lora = group(self.lora, 2).map(|i| (i, i + 1));
        let hoisted = group(self.hoisted, 2).map(|i| (i, i + 1));
        let (epilogue, arity) = match self.epilogue {
            Epilogue::Mul => (Some(next), (next + 1, next + 1)),
            Epilogue::Rope(_) => (Some(next), (next, next + 1)),
            Epilogue::None | Epilogue::Act(_) | Epilogue::ActGate(_) => (None, (next, next)),
        };
        LinearOperands {
            x: 0,
            w: 1,
            bias,
            lora,
            hoisted,
            epilogue,
            arity,
        }
    }
}

impl LinearOperands {
    /// Names the operands in `ops`, or `None` if `ops` has a length this layout does not
    /// allow.
    pub fn pick<'a, T>(&self, ops: &'a [T]) -> Option<LinearArgs<&'a T>> {
        if !arity_allows(self.arity, ops.len()) {
            return None;
        }
        Some(LinearArgs {
            x: ops.get(self.x)?,
            w: ops.get(self.w)?,
            bias: optional(ops, self.bias)?,
            lora: optional_pair(ops, self.lora)?,
            hoisted: optional_pair(ops, self.hoisted)?,
            epilogue: self.epilogue.and_then(|i| ops.get(i)),
        })
    }
}

impl<T> LinearArgs<T> {
    /// The operands in slot order: what `pick` names, put back in a list.
    pub fn into_vec(self) -> Vec<T> {
        let mut v = vec![self.x, self.w];
        v.extend(self.bias);
        v.extend(self.lora.into_iter().flat_map(|(a, b)| [a, b]));
        v.extend(self.hoisted.into_iter().flat_map(|(y, r)| [y, r]));
        v.extend(self.epilogue);
        v
    }
}

impl<T: Copy> LinearArgs<&T> {
    pub fn copied(self) -> LinearArgs<T> {
        LinearArgs {
            x: *self.x,
            w: *self.w,
            bias: self.bias.copied(),
            lora: self.lora.map(|(a, b)| (*a, *b)),
            hoisted: self.hoisted.map(|(y, r)| (*y, *r)),
            epilogue: self.epilogue.copied(),
        }
    }
}

/// Where each operand of a Mamba1 mixer (`mamba1_mix`, or `mamba1_step` with the states)
/// sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba1Operands {
    pub xz: usize,
    pub conv_weight: usize,
    pub conv_bias: Option<usize>,
    pub x_proj: usize,
    pub dt_proj_weight: usize,
    pub dt_proj_bias: usize,
    pub a_log: usize,
    pub d: usize,
    /// The incoming conv and SSM states (decode form only).
    pub states: Option<(usize, usize)>,
    pub arity: usize,
}

/// The operands of one Mamba1 mixer, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mamba1Args<T> {
    pub xz: T,
    pub conv_weight: T,
    pub conv_bias: Option<T>,
    pub x_proj: T,
    pub dt_proj_weight: T,
    pub dt_proj_bias: T,
    pub a_log: T,
    pub d: T,
    /// `(conv_state, ssm_state)`.
    pub states: Option<(T, T)>,
}

impl Mamba1Attrs {
    /// The operand layout of the prefill form (`step == false`) or the decode form.
    pub fn operands(&self, step: bool) -> Mamba1Operands {
        let k = 2 + usize::from(self.conv_bias);
        Mamba1Operands {
            xz: 0,
            conv_weight: 1,
            conv_bias: self.conv_bias.then_some(2),
            x_proj: k,
            dt_proj_weight: k + 1,
            dt_proj_bias: k + 2,
            a_log: k + 3,
            d: k + 4,
            states: step.then_some((k + 5, k + 6)),
            arity: k + 5 + if step { 2 } else { 0 },
        }
    }
}

impl Mamba1Operands {
    /// Names the operands in `ops`, or `None` if `ops` is not exactly `arity` long.
    pub fn pick<'a, T>(&self, ops: &'a [T]) -> Option<Mamba1Args<&'a T>> {
        if ops.len() != self.arity {
            return None;
        }
        Some(Mamba1Args {
            xz: ops.get(self.xz)?,
            conv_weight: ops.get(self.conv_weight)?,
            conv_bias: optional(ops, self.conv_bias)?,
            x_proj: ops.get(self.x_proj)?,
            dt_proj_weight: ops.get(self.dt_proj_weight)?,
            dt_proj_bias: ops.get(self.dt_proj_bias)?,
            a_log: ops.get(self.a_log)?,
            d: ops.get(self.d)?,
            states: optional_pair(ops, self.states)?,
        })
    }
}

impl<T: Copy> Mamba1Args<&T> {
    pub fn copied(self) -> Mamba1Args<T> {
        Mamba1Args {
            xz: *self.xz,
            conv_weight: *self.conv_weight,
            conv_bias: self.conv_bias.copied(),
            x_proj: *self.x_proj,
            dt_proj_weight: *self.dt_proj_weight,
            dt_proj_bias: *self.dt_proj_bias,
            a_log: *self.a_log,
            d: *self.d,
            states: self.states.map(|(c, s)| (*c, *s)),
        }
    }
}

impl<T> Mamba1Args<T> {
    /// The operands in slot order.
    pub fn into_vec(self) -> Vec<T> {
        let mut v = vec![self.xz, self.conv_weight];
        v.extend(self.conv_bias);
        v.extend([
            self.x_proj,
            self.dt_proj_weight,
            self.dt_proj_bias,
            self.a_log,
            self.d,
        ]);
        v.extend(self.states.into_iter().flat_map(|(c, s)| [c, s]));
        v
    }
}

/// Where each operand of a depthwise conv sits: `causal_conv1d(x, w, [b])` or
/// `conv_step(x, state, w, [b])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvOperands {
    pub x: usize,
    /// The incoming conv state (`conv_step` only).
    pub state: Option<usize>,
    pub weight: usize,
    pub bias: Option<usize>,
    pub arity: usize,
}

/// The operands of one depthwise conv, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvArgs<T> {
    pub x: T,
    pub state: Option<T>,
    pub weight: T,
    pub bias: Option<T>,
}

impl ConvOperands {
    /// The layout of `causal_conv1d` (`step == false`) or `conv_step`, with or without
    /// the bias.
    pub fn new(step: bool, bias: bool) -> ConvOperands {
        let weight = 1 + usize::from(step);
        ConvOperands {
            x: 0,
            state: step.then_some(1),
            weight,
            bias: bias.then_some(weight + 1),
            arity: weight + 1 + usize::from(bias),
        }
    }

    /// Names the operands in `ops`, or `None` if `ops` is not exactly `arity` long.
    pub fn pick<'a, T>(&self, ops: &'a [T]) -> Option<ConvArgs<&'a T>> {
        if ops.len() != self.arity {
            return None;
        }
        Some(ConvArgs {
            x: ops.get(self.x)?,
            state: optional(ops, self.state)?,
            weight: ops.get(self.weight)?,
            bias: optional(ops, self.bias)?,
        })
    }
}

impl<T: Copy> ConvArgs<&T> {
    pub fn copied(self) -> ConvArgs<T> {
        ConvArgs {
            x: *self.x,
            state: self.state.copied(),
            weight: *self.weight,
            bias: self.bias.copied(),
        }
    }
}

impl<T> ConvArgs<T> {
    /// The operands in slot order.
    pub fn into_vec(self) -> Vec<T> {
        let mut v = vec![self.x];
        v.extend(self.state);
        v.push(self.weight);
        v.extend(self.bias);
        v
    }
}

fn arity_allows((min, max): (usize, usize), n: usize) -> bool {
    (min..=max).contains(&n)
}

/// The operand at an optional slot: `Some(None)` when the layout has no such slot, `None`
/// when it has one that `ops` lacks (which the arity checks in `pick` rule out).
fn optional<T>(ops: &[T], slot: Option<usize>) -> Option<Option<&T>> {
    match slot {
        None => Some(None),
        Some(i) => ops.get(i).map(Some),
    }
}

/// [`optional`] for a slot pair.
fn optional_pair<T>(ops: &[T], slots: Option<(usize, usize)>) -> Option<Option<(&T, &T)>> {
    match slots {
        None => Some(None),
        Some((a, b)) => Some(Some((ops.get(a)?, ops.get(b)?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Act, RopeAttrs, ScanAttrs, Window};

    const ROPE: RopeAttrs = RopeAttrs {
        heads: 2,
        head_dim: 4,
        theta: 10000.0,
        scaling: None,
    };

    /// Every combination of the attributes that change the operand list.
    fn every_linear() -> Vec<LinearAttrs> {
        let epilogues = [
            Epilogue::None,
            Epilogue::Act(Act::Silu),
            Epilogue::ActGate(Act::Gelu),
            Epilogue::Mul,
            Epilogue::Rope(ROPE),
        ];
        let mut all = Vec::new();
        for bits in 0..8 {
            for epilogue in epilogues.iter().cloned() {
                all.push(LinearAttrs {
                    bias: bits & 1 != 0,
                    lora: bits & 2 != 0,
                    window: Some(Window { start: 0, len: 4 }),
                    hoisted: bits & 4 != 0,
                    epilogue,
                });
            }
        }
        all
    }

    #[test]
    fn a_fully_fused_linear_reads_its_operands_in_the_documented_order() {
        let a = LinearAttrs {
            bias: true,
            lora: true,
            window: None,
            hoisted: true,
            epilogue: Epilogue::Mul,
        };
        let want = LinearOperands {
            x: 0,
            w: 1,
            bias: Some(2),
            lora: Some((3, 4)),
            hoisted: Some((5, 6)),
            epilogue: Some(7),
            arity: (8, 8),
        };
        assert_eq!(a.operands(), want);
    }

    #[test]
    fn absent_groups_take_no_slot() {
        let a = LinearAttrs {
            hoisted: true,
            epilogue: Epilogue::Rope(ROPE),
            ..LinearAttrs::PLAIN
        };
        let o = a.operands();
        assert_eq!((o.bias, o.lora), (None, None));
        assert_eq!(o.hoisted, Some((2, 3)));
        assert_eq!((o.epilogue, o.arity), (Some(4), (4, 5)));
    }

    #[test]
    fn pick_and_into_vec_are_inverse_on_every_allowed_length() {
        for a in every_linear() {
            let o = a.operands();
            for n in o.arity.0..=o.arity.1 {
                let ops: Vec<usize> = (0..n).collect();
                let args = o.pick(&ops).unwrap_or_else(|| panic!("{a:?} takes {n}"));
                assert_eq!(args.copied().into_vec(), ops, "{a:?}");
            }
            assert!(o.pick(&vec![0; o.arity.1 + 1]).is_none(), "{a:?}");
            if o.arity.0 > 0 {
                assert!(o.pick(&vec![0; o.arity.0 - 1]).is_none(), "{a:?}");
            }
        }
    }

    fn mamba1(conv_bias: bool) -> Mamba1Attrs {
        Mamba1Attrs {
            scan: ScanAttrs {
                heads: 2,
                head_dim: 8,
                state: 4,
            },
            conv: 4,
            conv_bias,
            dt_rank: 2,
            dt_min: None,
        }
    }

    #[test]
    fn the_conv_bias_shifts_every_later_mamba1_operand() {
        let with = mamba1(true).operands(true);
        assert_eq!(with.conv_bias, Some(2));
        assert_eq!((with.x_proj, with.d, with.states), (3, 7, Some((8, 9))));
        assert_eq!(with.arity, 10);
        let without = mamba1(false).operands(false);
        assert_eq!(without.conv_bias, None);
        assert_eq!((without.x_proj, without.d, without.states), (2, 6, None));
        assert_eq!(without.arity, 7);
    }

    #[test]
    fn mamba1_pick_and_into_vec_are_inverse() {
        for (bias, step) in [(false, false), (false, true), (true, false), (true, true)] {
            let o = mamba1(bias).operands(step);
            let ops: Vec<usize> = (0..o.arity).collect();
            let args = o.pick(&ops).expect("exact arity");
            assert_eq!(args.copied().into_vec(), ops);
            assert!(o.pick(&ops[1..]).is_none());
        }
    }

    #[test]
    fn a_conv_step_reads_its_state_before_the_weights() {
        let prefill = ConvOperands::new(false, true);
        assert_eq!(
            (prefill.state, prefill.weight, prefill.bias),
            (None, 1, Some(2))
        );
        assert_eq!(prefill.arity, 3);
        let step = ConvOperands::new(true, false);
        assert_eq!((step.state, step.weight, step.bias), (Some(1), 2, None));
        assert_eq!(step.arity, 3);
        assert_eq!(ConvOperands::new(true, true).bias, Some(3));
    }

    #[test]
    fn conv_pick_and_into_vec_are_inverse() {
        for (step, bias) in [(false, false), (false, true), (true, false), (true, true)] {
            let o = ConvOperands::new(step, bias);
            let ops: Vec<usize> = (0..o.arity).collect();
            let args = o.pick(&ops).expect("exact arity");
            assert_eq!(args.copied().into_vec(), ops);
            assert!(o.pick(&ops[1..]).is_none());
            assert!(o.pick(&vec![0; o.arity + 1]).is_none());
        }
    }
}
