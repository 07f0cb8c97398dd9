//! Sizes known when a program runs: [`Expr`], an integer polynomial in the tokens of the
//! call `T`, the KV-cache capacity `C` and the first position `pos`, and the decision of
//! whether one such size is never smaller than another (what the validator uses to prove
//! that every view of every launch lies inside its buffer for every call).

use serde::{Deserialize, Serialize};

/// An integer known when a program runs: `t2·T² + tp·T·pos + t·T + c·C + p·pos + k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Expr {
    /// Coefficient of `T²` (attention-score workspaces).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub t2: i64,
    /// Coefficient of `T·pos` (the scores of a prefill that continues from `pos`: `T` rows
    /// of `pos + T` keys).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tp: i64,
    /// Coefficient of `T` (tokens in the call).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub t: i64,
    /// Coefficient of `C` (KV-cache capacity).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub c: i64,
    /// Coefficient of `pos` (position of the first token of the call).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub p: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub k: i64,
}

fn is_zero(x: &i64) -> bool {
    *x == 0
}

impl Expr {
    const ZERO: Expr = Expr {
        t2: 0,
        tp: 0,
        t: 0,
        c: 0,
        p: 0,
        k: 0,
    };
    pub const T: Expr = Expr { t: 1, ..Expr::ZERO };
    pub const T2: Expr = Expr {
        t2: 1,
        ..Expr::ZERO
    };
    pub const C: Expr = Expr { c: 1, ..Expr::ZERO };
    pub const POS: Expr = Expr { p: 1, ..Expr::ZERO };

    pub const fn k(k: i64) -> Expr {
        Expr { k, ..Expr::ZERO }
    }

    /// `self · m`.
    pub fn times(self, m: i64) -> Expr {
        Expr {
            t2: self.t2 * m,
            tp: self.tp * m,
            t: self.t * m,
            c: self.c * m,
            p: self.p * m,
            k: self.k * m,
        }
    }

    /// `self + o`.
    pub fn plus(self, o: Expr) -> Expr {
        Expr {
            t2: self.t2 + o.t2,
            tp: self.tp + o.tp,
            t: self.t + o.t,
            c: self.c + o.c,
            p: self.p + o.p,
            k: self.k + o.k,
        }
    }

    /// The constant, when the expression depends on nothing.
    pub fn as_const(&self) -> Option<i64> {
        (Expr { k: 0, ..*self } == Expr::ZERO).then_some(self.k)
    }

    /// The value for a call with `t` tokens at position `pos` and capacity `c`, or None
    /// on overflow (expressions come from engine files, which are user input).
    pub fn eval(&self, t: usize, c: usize, pos: usize) -> Option<i64> {
        let v = |x: usize| i64::try_from(x).ok();
        let (t, c, pos) = (v(t)?, v(c)?, v(pos)?);
        let terms = [
            self.t2.checked_mul(t.checked_mul(t)?)?,
            self.tp.checked_mul(t.checked_mul(pos)?)?,
            self.t.checked_mul(t)?,
            self.c.checked_mul(c)?,
            self.p.checked_mul(pos)?,
            self.k,
        ];
        terms.iter().try_fold(0i64, |acc, x| acc.checked_add(*x))
    }

    /// `self + o` without overflow, for expressions read from files.
    pub fn checked_plus(self, o: Expr) -> Option<Expr> {
        Some(Expr {
            t2: self.t2.checked_add(o.t2)?,
            tp: self.tp.checked_add(o.tp)?,
            t: self.t.checked_add(o.t)?,
            c: self.c.checked_add(o.c)?,
            p: self.p.checked_add(o.p)?,
            k: self.k.checked_add(o.k)?,
        })
    }

    /// `self · m` without overflow.
    pub fn checked_times(self, m: i64) -> Option<Expr> {
        Some(Expr {
            t2: self.t2.checked_mul(m)?,
            tp: self.tp.checked_mul(m)?,
            t: self.t.checked_mul(m)?,
            c: self.c.checked_mul(m)?,
            p: self.p.checked_mul(m)?,
            k: self.k.checked_mul(m)?,
        })
    }

    /// `self · o` when the product is again an [`Expr`]: one factor constant, or both
    /// affine in `T` and `pos` with no `pos²` (`T·T = T²`, `T·pos`). None otherwise or on
    /// overflow.
    pub fn checked_mul(self, o: Expr) -> Option<Expr> {
        if let Some(k) = o.as_const() {
            return self.checked_times(k);
        }
        if let Some(k) = self.as_const() {
            return o.checked_times(k);
        }
        let affine = |e: &Expr| e.t2 == 0 && e.tp == 0 && e.c == 0;
        if !(affine(&self) && affine(&o)) || (self.p != 0 && o.p != 0) {
            return None;
        }
        // (a·T + b·pos + k)(a'·T + b'·pos + k'), with b·b' = 0.
        let m = |x: i64, y: i64| x.checked_mul(y);
        Some(Expr {
            t2: m(self.t, o.t)?,
            tp: m(self.t, o.p)?.checked_add(m(self.p, o.t)?)?,
            t: m(self.t, o.k)?.checked_add(m(self.k, o.t)?)?,
            p: m(self.p, o.k)?.checked_add(m(self.k, o.p)?)?,
            k: m(self.k, o.k)?,
            ..Expr::ZERO
        })
    }

    /// Whether the value is ≥ 0 for every call of `domain`.
    pub fn never_negative(&self, domain: Domain) -> bool {
        self.counterexample(domain).is_none()
    }

    /// A call of `domain` at which the value is negative, if there is one.
    ///
    /// Exact for this class of polynomials: with `C = pos + T + s`, `s ≥ 0`, the value is
    /// `A(T) + pos·B(T) + s·c` with `A(T) = t2·T² + (t + c)·T + k` and
    /// `B(T) = tp·T + c + p`. It is ≥ 0 on the whole domain iff `c ≥ 0` (`s` is unbounded),
    /// `B(T) ≥ 0` for every allowed `T` unless the domain fixes `pos = 0` (it is affine: at
    /// `T = 1` and its slope), and the quadratic `A` is ≥ 0 for every allowed `T`; each way
    /// of failing has a witness built from the coefficients.
    pub fn counterexample(&self, domain: Domain) -> Option<Point> {
        let w = |x: i64| i128::from(x);
        let (mut a, mut b, mut k) = (w(self.t2), w(self.t) + w(self.c), w(self.k));
        if domain.one_token {
            (a, b, k) = (0, 0, a + b + k);
        }
        let c = w(self.c);
        let (tp, cp) = (w(self.tp), w(self.c) + w(self.p));
        let at = |t: i128| a * t * t + b * t + k;
        let point = |t: i128, pos: i128, slack: i128| Point {
            t,
            pos,
            c: t + pos + slack,
        };
        if c < 0 {
            return Some(point(1, 0, at(1).abs() + 1));
        }
        if !domain.from_start {
            let b_at = |t: i128| tp * t + cp;
            if b_at(1) < 0 {
                return Some(point(1, at(1).abs() + 1, 0));
            }
            if tp < 0 && !domain.one_token {
                // B falls below zero past T = cp/|tp|; a long position then wins.
                let t = cp / -tp + 2;
                return Some(point(t, at(t).abs() + 1, 0));
            }
        }
        if a < 0 {
            return Some(point(b.abs() + k.abs() + 1, 0, 0));
        }
        if a == 0 && b < 0 {
            return Some(point(k.abs() + 2, 0, 0));
        }
        // Convex (or affine and non-decreasing): the minimum over integers T ≥ 1 is at 1
        // or at an integer next to the vertex.
        let vertex = if a > 0 { -b / (2 * a) } else { 1 };
        [1, vertex, vertex + 1]
            .into_iter()
            .filter(|&t| t >= 1)
            .find(|&t| at(t) < 0)
            .map(|t| point(t, 0, 0))
    }

    /// The exact value at `x` (no overflow for points with coordinates below 2^40).
    pub fn value_at(&self, x: Point) -> i128 {
        i128::from(self.t2) * x.t * x.t
            + i128::from(self.tp) * x.t * x.pos
            + i128::from(self.t) * x.t
            + i128::from(self.c) * x.c
            + i128::from(self.p) * x.pos
            + i128::from(self.k)
    }

    /// `self - o`, or None on overflow.
    pub fn checked_minus(self, o: Expr) -> Option<Expr> {
        self.checked_plus(o.checked_times(-1)?)
    }
}

/// The calls a program serves: every call has `T ≥ 1` tokens, a position `pos ≥ 0` and
/// a capacity `C ≥ pos + T` (every token of the call fits the KV cache); a program may
/// further fix `T = 1` (decode) or `pos = 0` (a prefill from the empty state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Domain {
    /// `T = 1`.
    pub one_token: bool,
    /// `pos = 0`.
    pub from_start: bool,
}

/// One call's sizes: tokens `t`, capacity `c`, first position `pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub t: i128,
    pub c: i128,
    pub pos: i128,
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "T = {}, C = {}, pos = {}", self.t, self.c, self.pos)
    }
}

impl std::fmt::Display for Expr {
    /// `3·T² + 2·T + C + 5`-style, terms with zero coefficients left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms = [
            (self.t2, "T²"),
            (self.tp, "T·pos"),
            (self.t, "T"),
            (self.c, "C"),
            (self.p, "pos"),
            (self.k, ""),
        ];
        let mut first = true;
        for (coef, sym) in terms {
            if coef == 0 {
                continue;
            }
            let sign = match (first, coef < 0) {
                (true, true) => "-",
                (true, false) => "",
                (false, true) => " - ",
                (false, false) => " + ",
            };
            let mag = coef.unsigned_abs();
            match (sym, mag) {
                ("", _) => write!(f, "{sign}{mag}")?,
                (_, 1) => write!(f, "{sign}{sym}")?,
                _ => write!(f, "{sign}{mag}·{sym}")?,
            }
            first = false;
        }
        if first {
            f.write_str("0")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(t2: i64, t: i64, c: i64, p: i64, k: i64) -> Expr {
        Expr {
            t2,
            tp: 0,
            t,
            c,
            p,
            k,
        }
    }

    #[test]
    fn products_that_stay_polynomials() {
        assert_eq!(Expr::T.checked_mul(Expr::T), Some(Expr::T2));
        assert_eq!(
            Expr::T.plus(Expr::k(-1)).checked_mul(Expr::k(4)),
            Some(e(0, 4, 0, 0, -4))
        );
        assert_eq!(
            Expr::T.plus(Expr::k(2)).checked_mul(Expr::T.times(3)),
            Some(e(3, 6, 0, 0, 0))
        );
        assert_eq!(Expr::T.checked_mul(Expr::C), None);
        assert_eq!(Expr::POS.checked_mul(Expr::POS), None);
        assert_eq!(Expr::k(i64::MAX).checked_mul(Expr::k(2)), None);
    }

    const ANY: Domain = Domain {
        one_token: false,
        from_start: false,
    };

    #[test]
    fn domain_decisions() {
        assert!(Expr::T.plus(Expr::k(-1)).never_negative(ANY));
        assert!(!Expr::T.plus(Expr::k(-2)).never_negative(ANY));
        // C ≥ pos + T
        let room = Expr::C.plus(Expr::POS.times(-1)).plus(Expr::T.times(-1));
        assert!(room.never_negative(ANY));
        assert!(!room.plus(Expr::T.times(-1)).never_negative(ANY));
        let past = Expr::POS.times(-1).plus(Expr::k(1));
        assert!(!past.never_negative(ANY));
        let prefill = Domain {
            from_start: true,
            ..ANY
        };
        assert!(past.never_negative(prefill));
        // T² - 5T + 6 = (T-2)(T-3) ≥ 0 on integers.
        assert!(e(1, -5, 0, 0, 6).never_negative(ANY));
        assert!(!e(1, -5, 0, 0, 5).never_negative(ANY));
        assert!(!e(-1, 100, 0, 0, 0).never_negative(ANY));
        let decode = Domain {
            one_token: true,
            ..ANY
        };
        assert!(e(-1, 100, 0, 0, 0).never_negative(decode));
        assert!(!Expr::T.checked_minus(Expr::T2).unwrap().never_negative(ANY));
    }

    #[test]
    fn display() {
        assert_eq!(e(0, 0, 0, 0, 0).to_string(), "0");
        assert_eq!(e(1, -2, 1, 0, -5).to_string(), "T² - 2·T + C - 5");
        assert_eq!(e(0, 0, 0, -1, 3).to_string(), "-pos + 3");
    }

    proptest! {
        /// A counterexample is a call of the domain at which the value is negative, and
        /// where there is none the value is ≥ 0 everywhere sampled.
        #[test]
        fn counterexamples_are_exact(
            t2 in -2i64..3, tp in -2i64..3, t in -20i64..20, c in -3i64..4, p in -3i64..4,
            k in -40i64..40, one_token: bool, from_start: bool,
        ) {
            let x = Expr { tp, ..e(t2, t, c, p, k) };
            let d = Domain { one_token, from_start };
            let ts = if one_token { 1..2i128 } else { 1..60 };
            let ps = if from_start { 0..1i128 } else { 0..8 };
            match x.counterexample(d) {
                Some(w) => {
                    prop_assert!(w.t >= 1 && w.pos >= 0 && w.c >= w.t + w.pos, "{w}");
                    prop_assert!(ts.contains(&w.t) || !one_token, "{w}");
                    prop_assert!(w.pos == 0 || !from_start, "{w}");
                    prop_assert!(x.value_at(w) < 0, "{x} at {w}");
                }
                None => {
                    for tt in ts {
                        for pos in ps.clone() {
                            for slack in 0..8i128 {
                                let w = Point { t: tt, c: tt + pos + slack, pos };
                                prop_assert!(x.value_at(w) >= 0, "{x} at {w}");
                            }
                        }
                    }
                }
            }
        }
    }
}
