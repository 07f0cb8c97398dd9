//! Shape inference: the one place that knows what each op accepts and produces.
//!
//! The graph builder, the parser and the verifier all call [`infer`], so an op's typing
//! rule is written once. Activations are always f32; weights may be any float type.

use crate::op::{Epilogue, LinearAttrs, OpKind};
use crate::types::{C, Dim, Elem, TensorType};

/// An op applied to operands it does not accept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{op}`: {msg}")]
pub struct TypeError {
    pub op: &'static str,
    pub msg: String,
}

type R = Result<Vec<TensorType>, TypeError>;

/// Result types of `kind` applied to operands of types `ops`.
pub fn infer(kind: &OpKind, ops: &[&TensorType]) -> R {
    let cx = Cx {
        op: kind.name(),
        ops,
    };
    match kind {
        OpKind::Input { .. } | OpKind::Param(_) => cx.fail("leaves have declared types"),
        OpKind::Embedding => {
            cx.arity(2, 2)?;
            let (tok, [t]) = cx.shape(0)?;
            if tok.elem != Elem::I64 {
                return cx.fail("token ids must be i64");
            }
            let (_, [_, h]) = cx.weight_shape(1)?;
            Ok(vec![TensorType::f32([t, h])])
        }
        OpKind::Linear(a) => linear(&cx, a),
        OpKind::HeadLinear { heads } => {
            cx.arity(2, 2)?;
            let (x, [t, xh, k]) = cx.shape(0)?;
            let (w, [_, n, wk]) = cx.weight_shape(1)?;
            cx.dim_is(x, 1, *heads)?;
            cx.dim_is(w, 0, *heads)?;
            cx.same_dim(k, wk, "input width")?;
            Ok(vec![TensorType::f32([t, xh, n])])
        }
        OpKind::Add | OpKind::Mul => {
            let [a, b] = cx.exactly()?;
            if !a.dims.ends_with(&b.dims) {
                return cx.fail(format!(
                    "second operand {b} must match the trailing dimensions of {a}"
                ));
            }
            Ok(vec![TensorType::f32(a.dims.clone())])
        }
        OpKind::Act(_) | OpKind::ClampMin { .. } => {
            cx.arity(1, 1)?;
            Ok(vec![TensorType::f32(cx.float(0)?.dims.clone())])
        }
        OpKind::RmsNorm { .. } => {
            cx.arity(2, 2)?;
            let x = cx.float(0)?;
            let (_, [wd]) = cx.weight_shape(1)?;
            cx.same_dim(cx.last(x)?, wd, "norm width")?;
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::GroupRmsNorm { groups, .. } => {
            cx.arity(2, 2)?;
            let x = cx.float(0)?;
            let (_, [wd]) = cx.weight_shape(1)?;
            let d = cx.const_last(x)?;
            cx.same_dim(d.into(), wd, "norm width")?;
            if *groups == 0 || d % groups != 0 {
                return cx.fail(format!("{groups} groups do not divide width {d}"));
            }
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::ConcatRmsNorm { .. } => {
            cx.arity(3, 3)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            let (_, [wd]) = cx.weight_shape(2)?;
            let ((rows, da), (b_rows, db)) = (cx.split_const_last(a)?, cx.split_const_last(b)?);
            if rows != b_rows {
                return cx.fail(format!("cannot concatenate {a} and {b}"));
            }
            cx.same_dim((da + db).into(), wd, "norm width")?;
            Ok(vec![TensorType::f32(with_last(rows, da + db))])
        }
        OpKind::ConcatRmsScale { .. } => {
            cx.arity(2, 2)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            let ((rows, _), (b_rows, _)) = (cx.split_const_last(a)?, cx.split_const_last(b)?);
            if rows != b_rows {
                return cx.fail(format!("cannot concatenate {a} and {b}"));
            }
            Ok(vec![TensorType::f32(rows.to_vec())])
        }
        OpKind::AddRmsNorm { .. } => {
            cx.arity(3, 3)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            if a.dims != b.dims {
                return cx.fail(format!("cannot add {a} and {b}"));
            }
            let (_, [wd]) = cx.weight_shape(2)?;
            cx.same_dim(cx.last(a)?, wd, "norm width")?;
            let t = TensorType::f32(a.dims.clone());
            Ok(vec![t.clone(), t])
        }
        OpKind::Concat { axis } => {
            let [a, b] = cx.exactly()?;
            if a.rank() != b.rank() || *axis >= a.rank() || a.elem != b.elem {
                return cx.fail(format!("cannot concatenate {a} and {b} on axis {axis}"));
            }
            let mut dims = Vec::with_capacity(a.rank());
            for (i, (&x, &y)) in a.dims.iter().zip(&b.dims).enumerate() {
                if i == *axis {
                    match (x.as_const(), y.as_const()) {
                        (Some(p), Some(q)) => dims.push((p + q).into()),
                        _ => return cx.fail("the concatenated axis must be static"),
                    }
                } else if x != y {
                    return cx.fail(format!("cannot concatenate {a} and {b} on axis {axis}"));
                } else {
                    dims.push(x);
                }
            }
            Ok(vec![TensorType::new(a.elem, dims)])
        }
        OpKind::Slice {
            axis,
            start,
            end,
            stride,
        } => {
            let [x] = cx.exactly()?;
            let Some(n) = x.dims.get(*axis).and_then(|d| d.as_const()) else {
                return cx.fail(format!("axis {axis} of {x} is not a static dimension"));
            };
            if *stride == 0 || start >= end || *end > n {
                return cx.fail(format!("[{start}:{end}:{stride}] is out of range for {n}"));
            }
            let len = Dim::from((end - start).div_ceil(*stride));
            let dims = x.dims.iter().enumerate();
            let dims = dims.map(|(i, &d)| if i == *axis { len } else { d });
            Ok(vec![TensorType::new(x.elem, dims)])
        }
        OpKind::Reshape { dims } => {
            let [x] = cx.exactly()?;
            let syms = |d: &[Dim]| {
                let mut s: Vec<Dim> = d
                    .iter()
                    .filter(|d| d.as_const().is_none())
                    .copied()
                    .collect();
                s.sort();
                s
            };
            let to = TensorType::new(x.elem, dims.clone());
            if syms(&x.dims) != syms(dims) || x.const_numel() != to.const_numel() {
                return cx.fail(format!("cannot reshape {x} to {to}"));
            }
            Ok(vec![to])
        }
        OpKind::CausalConv1d { kernel, bias } => {
            cx.arity(if *bias { 3 } else { 2 }, if *bias { 3 } else { 2 })?;
            let x = cx.rank(0, 2)?;
            let ch = cx.const_last(x)?;
            cx.conv_weights(1, ch, *kernel, *bias)?;
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::ConvState { kernel } => {
            cx.arity(1, 1)?;
            let x = cx.rank(0, 2)?;
            let ch = cx.const_last(x)?;
            let Some(history) = kernel.checked_sub(1) else {
                return cx.fail("conv kernel must be at least 1");
            };
            Ok(vec![TensorType::f32([ch.into(), history.into()])])
        }
        OpKind::ConvStep { kernel, bias } => {
            let n = if *bias { 4 } else { 3 };
            cx.arity(n, n)?;
            let x = cx.rank(0, 2)?;
            cx.dim_is(x, 0, 1)?;
            let ch = cx.const_last(x)?;
            let st = cx.rank(1, 2)?;
            let Some(history) = kernel.checked_sub(1) else {
                return cx.fail("conv kernel must be at least 2");
            };
            cx.shape_is(st, &[ch.into(), history.into()], "conv state")?;
            cx.conv_weights(2, ch, *kernel, *bias)?;
            Ok(vec![TensorType::f32(x.dims.clone()), st.clone()])
        }
        OpKind::ScaleHeads { heads } => {
            cx.arity(2, 2)?;
            let x = cx.float(0)?;
            let d = cx.weight(1, 1)?;
            let w = cx.const_last(x)?;
            cx.dim_is(d, 0, *heads)?;
            if *heads == 0 || w % heads != 0 {
                return cx.fail(format!("{heads} heads do not divide width {w}"));
            }
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::SsdScan(s) | OpKind::SsdStep(s) => {
            let step = matches!(kind, OpKind::SsdStep(_));
            cx.arity(5 + step as usize, 5 + step as usize)?;
            if s.groups == 0 || s.heads % s.groups != 0 {
                return cx.fail("groups must divide heads");
            }
            let (x, [t, _]) = cx.shape(0)?;
            if step {
                cx.dim_is(x, 0, 1)?;
            }
            let gn = s.groups * s.state;
            cx.shape_is(x, &[t, (s.heads * s.head_dim).into()], "x")?;
            cx.shape_is(cx.rank(1, 2)?, &[t, s.heads.into()], "dt")?;
            cx.shape_is(cx.weight(2, 1)?, &[s.heads.into()], "A_log")?;
            cx.shape_is(cx.rank(3, 2)?, &[t, gn.into()], "B")?;
            cx.shape_is(cx.rank(4, 2)?, &[t, gn.into()], "C")?;
            let state = TensorType::f32(crate::dims![s.heads, s.head_dim, s.state]);
            if step {
                cx.shape_is(cx.op(5)?, &state.dims, "ssm state")?;
            }
            Ok(vec![TensorType::f32(x.dims.clone()), state])
        }
        OpKind::SelectiveScan(s) | OpKind::SelectiveStep(s) => {
            let step = matches!(kind, OpKind::SelectiveStep(_));
            cx.arity(5 + step as usize, 5 + step as usize)?;
            let (x, [t, _, _]) = cx.shape(0)?;
            if step {
                cx.dim_is(x, 0, 1)?;
            }
            let (h, p, n) = (s.heads.into(), s.head_dim.into(), s.state.into());
            cx.shape_is(x, &[t, h, p], "x")?;
            cx.shape_is(cx.rank(1, 3)?, &[t, h, p], "dt")?;
            cx.shape_is(cx.weight(2, 3)?, &[h, p, n], "A_log")?;
            cx.shape_is(cx.rank(3, 3)?, &[t, h, n], "B")?;
            cx.shape_is(cx.rank(4, 3)?, &[t, h, n], "C")?;
            let state = TensorType::f32([h, p, n]);
            if step {
                cx.shape_is(cx.op(5)?, &state.dims, "ssm state")?;
            }
            Ok(vec![TensorType::f32(x.dims.clone()), state])
        }
        OpKind::Rope(r) => {
            cx.arity(1, 2)?;
            let x = cx.rank(0, 2)?;
            cx.rope(x, r.heads, r.head_dim, 1)?;
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::KvStore { heads, head_dim } => {
            cx.arity(1, 1)?;
            let k = cx.rank(0, 2)?;
            cx.dim_is(k, 1, heads * head_dim)?;
            Ok(vec![TensorType::f32([
                (*heads).into(),
                C,
                (*head_dim).into(),
            ])])
        }
        OpKind::KvAppend { heads, head_dim } => {
            cx.arity(3, 3)?;
            let cache = TensorType::f32([(*heads).into(), C, (*head_dim).into()]);
            cx.shape_is(cx.op(0)?, &cache.dims, "cache")?;
            let k = cx.rank(1, 2)?;
            cx.dim_is(k, 0, 1)?;
            cx.dim_is(k, 1, heads * head_dim)?;
            cx.pos(2)?;
            Ok(vec![cache])
        }
        OpKind::Attention(a) => {
            cx.arity(3, 4)?;
            if a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
                return cx.fail("kv_heads must divide heads");
            }
            let q = cx.rank(0, 2)?;
            cx.dim_is(q, 1, a.heads * a.head_dim)?;
            let cache = [a.kv_heads.into(), C, a.head_dim.into()];
            cx.shape_is(cx.op(1)?, &cache, "key cache")?;
            cx.shape_is(cx.op(2)?, &cache, "value cache")?;
            if ops.len() == 4 {
                cx.pos(3)?;
            }
            Ok(vec![TensorType::f32(q.dims.clone())])
        }
        OpKind::Mamba2Mix(m) | OpKind::Mamba2Step(m) => {
            let step = matches!(kind, OpKind::Mamba2Step(_));
            let n = if step { 9 } else { 7 };
            cx.arity(n, n)?;
            let s = &m.ssd;
            if s.groups == 0 || s.heads % s.groups != 0 {
                return cx.fail("groups must divide heads");
            }
            let d_inner = s.heads * s.head_dim;
            let conv_dim = d_inner + 2 * s.groups * s.state;
            let rows = d_inner + conv_dim + s.heads;
            let (zx, [t, _]) = cx.shape(0)?;
            if step {
                cx.dim_is(zx, 0, 1)?;
            }
            cx.dim_is(zx, 1, rows)?;
            cx.conv_weights(1, conv_dim, m.conv, true)?;
            for (i, what) in [(3, "dt_bias"), (4, "A_log"), (5, "D")] {
                cx.shape_is(cx.weight(i, 1)?, &[s.heads.into()], what)?;
            }
            cx.shape_is(cx.weight(6, 1)?, &[d_inner.into()], "norm weight")?;
            let conv_state = TensorType::f32(crate::dims![conv_dim, m.conv - 1]);
            let ssm_state = TensorType::f32(crate::dims![s.heads, s.head_dim, s.state]);
            if step {
                cx.shape_is(cx.op(7)?, &conv_state.dims, "conv state")?;
                cx.shape_is(cx.op(8)?, &ssm_state.dims, "ssm state")?;
            }
            Ok(vec![
                TensorType::f32([t, d_inner.into()]),
                conv_state,
                ssm_state,
            ])
        }
        OpKind::Mamba1Mix(m) | OpKind::Mamba1Step(m) => {
            let step = matches!(kind, OpKind::Mamba1Step(_));
            let slot = m.operands(step);
            cx.arity(slot.arity, slot.arity)?;
            let s = &m.scan;
            let d_inner = s.heads * s.head_dim;
            let (xz, [t, _]) = cx.shape(slot.xz)?;
            if step {
                cx.dim_is(xz, 0, 1)?;
            }
            cx.dim_is(xz, 1, 2 * d_inner)?;
            cx.conv_weights(slot.conv_weight, d_inner, m.conv, m.conv_bias)?;
            let (h, p, st, r) = (s.heads.into(), s.head_dim.into(), s.state.into(), m.dt_rank);
            cx.shape_is(
                cx.weight(slot.x_proj, 3)?,
                &[h, (r + 2 * s.state).into(), p],
                "x_proj",
            )?;
            let dt_w = cx.weight(slot.dt_proj_weight, 3)?;
            cx.shape_is(dt_w, &[h, p, r.into()], "dt_proj weight")?;
            let dt_b = cx.weight(slot.dt_proj_bias, 2)?;
            cx.shape_is(dt_b, &[h, p], "dt_proj bias")?;
            cx.shape_is(cx.weight(slot.a_log, 3)?, &[h, p, st], "A_log")?;
            cx.shape_is(cx.weight(slot.d, 2)?, &[h, p], "D")?;
            let conv_state = TensorType::f32(crate::dims![d_inner, m.conv - 1]);
            let ssm_state = TensorType::f32([h, p, st]);
            if let Some((conv_in, ssm_in)) = slot.states {
                cx.shape_is(cx.op(conv_in)?, &conv_state.dims, "conv state")?;
                cx.shape_is(cx.op(ssm_in)?, &ssm_state.dims, "ssm state")?;
            }
            Ok(vec![
                TensorType::f32([t, d_inner.into()]),
                conv_state,
                ssm_state,
            ])
        }
    }
}

fn linear(cx: &Cx, a: &LinearAttrs) -> R {
    let slot = a.operands();
    cx.arity(slot.arity.0, slot.arity.1)?;
    let x = cx.float(slot.x)?;
    let (rows, k) = cx.split_const_last(x)?;
    let (_, [wn, wk]) = cx.weight_shape(slot.w)?;
    let kw = wk.as_const().unwrap_or(0);
    match a.window {
        None => cx.same_dim(wk, k.into(), "input width")?,
        Some(win) => {
            if win.len == 0 || win.start + win.len > kw {
                return cx.fail(format!(
                    "columns {}..{} are not a window of a weight {kw} wide",
                    win.start,
                    win.start + win.len
                ));
            }
            if k != win.len && k != kw {
                return cx.fail(format!(
                    "input width {k} is neither the window's {} nor the weight's {kw}",
                    win.len
                ));
            }
        }
    }
    let n = wn.as_const().unwrap_or(0);
    if let Some(b) = slot.bias {
        cx.shape_is(cx.weight(b, 1)?, &[n.into()], "bias")?;
    }
    if let Some((down, up)) = slot.lora {
        let (_, [rank, down_k]) = cx.weight_shape(down)?;
        let up = cx.weight(up, 2)?;
        cx.same_dim(down_k, k.into(), "adapter input width")?;
        cx.shape_is(up, &[n.into(), rank], "adapter up-projection")?;
    }
    let dims = with_last(rows, n);
    if let Some((y, r)) = slot.hoisted {
        cx.shape_is(cx.float(y)?, &dims, "hoisted term")?;
        cx.shape_is(cx.float(r)?, rows, "hoisted row scale")?;
    }
    let out = match (&a.epilogue, slot.epilogue) {
        (Epilogue::ActGate(_), _) => {
            if n % 2 != 0 {
                return cx.fail("a gated epilogue needs an even output width");
            }
            with_last(rows, n / 2)
        }
        (Epilogue::Mul, Some(m)) => {
            cx.shape_is(cx.op(m)?, &dims, "epilogue operand")?;
            dims
        }
        (Epilogue::Rope(r), Some(pos)) => {
            let out = TensorType::f32(dims);
            cx.rope(&out, r.heads, r.head_dim, pos)?;
            out.dims
        }
        _ => dims,
    };
    Ok(vec![TensorType::f32(out)])
}

/// `rows` with a last dimension of `n` appended.
fn with_last(rows: &[Dim], n: usize) -> Vec<Dim> {
    rows.iter().copied().chain([Dim::from(n)]).collect()
}

/// Checking helpers bound to one op application.
struct Cx<'a> {
    op: &'static str,
    ops: &'a [&'a TensorType],
}

impl<'a> Cx<'a> {
    fn error(&self, msg: impl Into<String>) -> TypeError {
        TypeError {
            op: self.op,
            msg: msg.into(),
        }
    }

    fn fail<T>(&self, msg: impl Into<String>) -> Result<T, TypeError> {
        Err(self.error(msg))
    }

    fn arity_error(&self, min: usize, max: usize) -> TypeError {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        self.error(format!("expects {want} operands, got {}", self.ops.len()))
    }

    fn arity(&self, min: usize, max: usize) -> Result<(), TypeError> {
        let n = self.ops.len();
        if n < min || n > max {
            return Err(self.arity_error(min, max));
        }
        Ok(())
    }

    /// All operands, for an op that takes exactly `N`.
    fn exactly<const N: usize>(&self) -> Result<[&'a TensorType; N], TypeError> {
        <[&TensorType; N]>::try_from(self.ops).map_err(|_| self.arity_error(N, N))
    }

    /// Operand `i`. Callers check the arity first; an operand past it is reported as
    /// too few operands, never indexed.
    fn op(&self, i: usize) -> Result<&'a TensorType, TypeError> {
        match self.ops.get(i) {
            Some(&t) => Ok(t),
            None => self.fail(format!(
                "expects at least {} operands, got {}",
                i + 1,
                self.ops.len()
            )),
        }
    }

    fn float(&self, i: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.op(i)?;
        if !t.elem.is_float() {
            return self.fail(format!("operand {i} must be floating point, is {t}"));
        }
        Ok(t)
    }

    fn rank_error(&self, i: usize, rank: usize, t: &TensorType) -> TypeError {
        self.error(format!("operand {i} must have rank {rank}, is {t}"))
    }

    fn rank(&self, i: usize, rank: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.op(i)?;
        if t.rank() != rank {
            return Err(self.rank_error(i, rank, t));
        }
        Ok(t)
    }

    /// [`Cx::rank`] with the rank `N` known here, and the operand's dimensions.
    fn shape<const N: usize>(&self, i: usize) -> Result<(&'a TensorType, [Dim; N]), TypeError> {
        let t = self.op(i)?;
        match <[Dim; N]>::try_from(t.dims.as_slice()) {
            Ok(dims) => Ok((t, dims)),
            Err(_) => Err(self.rank_error(i, N, t)),
        }
    }

    /// A static floating-point operand of the given rank (weights have static shapes).
    fn weight(&self, i: usize, rank: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.rank(i, rank)?;
        self.static_float(i, t)
    }

    /// [`Cx::weight`] with the rank `N` known here, and the operand's dimensions.
    fn weight_shape<const N: usize>(
        &self,
        i: usize,
    ) -> Result<(&'a TensorType, [Dim; N]), TypeError> {
        let (t, dims) = self.shape(i)?;
        Ok((self.static_float(i, t)?, dims))
    }

    fn static_float(&self, i: usize, t: &'a TensorType) -> Result<&'a TensorType, TypeError> {
        if !t.elem.is_float() || t.dims.iter().any(|d| d.as_const().is_none()) {
            return self.fail(format!("operand {i} must be a static float tensor, is {t}"));
        }
        Ok(t)
    }

    fn last(&self, t: &TensorType) -> Result<Dim, TypeError> {
        match t.last() {
            Some(d) => Ok(d),
            None => self.fail("scalar operand where a tensor is expected"),
        }
    }

    fn const_last(&self, t: &TensorType) -> Result<usize, TypeError> {
        Ok(self.split_const_last(t)?.1)
    }

    /// The leading dimensions of `t` and its static last one.
    fn split_const_last<'t>(&self, t: &'t TensorType) -> Result<(&'t [Dim], usize), TypeError> {
        let Some((last, rows)) = t.dims.split_last() else {
            return self.fail("scalar operand where a tensor is expected");
        };
        match last.as_const() {
            Some(n) => Ok((rows, n)),
            None => self.fail(format!("the last dimension of {t} must be static")),
        }
    }

    fn same_dim(&self, a: Dim, b: Dim, what: &str) -> Result<(), TypeError> {
        if a != b {
            return self.fail(format!("{what} mismatch: {a} vs {b}"));
        }
        Ok(())
    }

    fn dim_is(&self, t: &TensorType, axis: usize, n: usize) -> Result<(), TypeError> {
        if t.dims.get(axis) != Some(&Dim::Const(n)) {
            return self.fail(format!("dimension {axis} of {t} must be {n}"));
        }
        Ok(())
    }

    fn shape_is(&self, t: &TensorType, dims: &[Dim], what: &str) -> Result<(), TypeError> {
        if t.dims != dims {
            let want = TensorType::new(t.elem, dims.iter().copied());
            return self.fail(format!("{what} must be {want}, is {t}"));
        }
        Ok(())
    }

    fn pos(&self, i: usize) -> Result<(), TypeError> {
        let t = self.op(i)?;
        if t.elem != Elem::I64 || t.rank() != 0 {
            return self.fail(format!("operand {i} (position) must be i64[], is {t}"));
        }
        Ok(())
    }

    /// Checks a rope target `[T, heads·hd]` and an optional position operand at `pos`.
    fn rope(&self, x: &TensorType, heads: usize, hd: usize, pos: usize) -> Result<(), TypeError> {
        if !hd.is_multiple_of(2) {
            return self.fail(format!("rotary head dim {hd} must be even"));
        }
        self.dim_is(x, 1, heads * hd)?;
        if self.ops.len() > pos {
            self.pos(pos)?;
        }
        Ok(())
    }

    /// Checks depthwise conv weights `[ch,1,k]` (and bias `[ch]`) starting at operand `i`.
    fn conv_weights(&self, i: usize, ch: usize, k: usize, bias: bool) -> Result<(), TypeError> {
        if k < 2 {
            return self.fail("conv kernel must be at least 2");
        }
        self.shape_is(
            self.weight(i, 3)?,
            &[ch.into(), 1.into(), k.into()],
            "conv weight",
        )?;
        if bias {
            self.shape_is(self.weight(i + 1, 1)?, &[ch.into()], "conv bias")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::T;

    fn msg(kind: OpKind, ops: &[&TensorType]) -> String {
        match infer(&kind, ops) {
            Ok(r) => panic!("{} accepted, giving {r:?}", kind.name()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn zero_heads_are_rejected_not_divided_by() {
        let x = TensorType::f32(crate::dims![T, 8]);
        let d = TensorType::f32(crate::dims![0]);
        assert_eq!(
            msg(OpKind::ScaleHeads { heads: 0 }, &[&x, &d]),
            "`scale_heads`: 0 heads do not divide width 8"
        );
    }

    #[test]
    fn a_zero_conv_kernel_has_no_state_width() {
        let x = TensorType::f32(crate::dims![T, 8]);
        assert_eq!(
            msg(OpKind::ConvState { kernel: 0 }, &[&x]),
            "`conv_state`: conv kernel must be at least 1"
        );
        let x = TensorType::f32(crate::dims![1, 8]);
        let st = TensorType::f32(crate::dims![8, 3]);
        let w = TensorType::f32(crate::dims![8, 1, 4]);
        assert_eq!(
            msg(
                OpKind::ConvStep {
                    kernel: 0,
                    bias: false
                },
                &[&x, &st, &w]
            ),
            "`conv_step`: conv kernel must be at least 2"
        );
    }

    #[test]
    fn arity_is_checked_before_any_operand_is_read() {
        let x = TensorType::f32(crate::dims![T, 8]);
        assert_eq!(msg(OpKind::Add, &[&x]), "`add`: expects 2 operands, got 1");
        assert_eq!(
            msg(
                OpKind::Slice {
                    axis: 0,
                    start: 0,
                    end: 1,
                    stride: 1
                },
                &[]
            ),
            "`slice`: expects 1 operands, got 0"
        );
    }
}
