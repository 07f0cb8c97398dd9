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
            let tok = cx.rank(0, 1)?;
            if tok.elem != Elem::I64 {
                return cx.fail("token ids must be i64");
            }
            let table = cx.weight(1, 2)?;
            Ok(vec![TensorType::f32([tok.dims[0], table.dims[1]])])
        }
        OpKind::Linear(a) => linear(&cx, a),
        OpKind::HeadLinear { heads } => {
            cx.arity(2, 2)?;
            let x = cx.rank(0, 3)?;
            let w = cx.weight(1, 3)?;
            cx.dim_is(x, 1, *heads)?;
            cx.dim_is(w, 0, *heads)?;
            cx.same_dim(x.dims[2], w.dims[2], "input width")?;
            Ok(vec![TensorType::f32([x.dims[0], x.dims[1], w.dims[1]])])
        }
        OpKind::Add | OpKind::Mul => {
            cx.arity(2, 2)?;
            let (a, b) = (ops[0], ops[1]);
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
            let w = cx.weight(1, 1)?;
            cx.same_dim(cx.last(x)?, w.dims[0], "norm width")?;
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::GroupRmsNorm { groups, .. } => {
            cx.arity(2, 2)?;
            let x = cx.float(0)?;
            let w = cx.weight(1, 1)?;
            let d = cx.const_last(x)?;
            cx.same_dim(d.into(), w.dims[0], "norm width")?;
            if *groups == 0 || d % groups != 0 {
                return cx.fail(format!("{groups} groups do not divide width {d}"));
            }
            Ok(vec![TensorType::f32(x.dims.clone())])
        }
        OpKind::ConcatRmsNorm { .. } => {
            cx.arity(3, 3)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            let w = cx.weight(2, 1)?;
            let (da, db) = (cx.const_last(a)?, cx.const_last(b)?);
            if a.dims[..a.rank() - 1] != b.dims[..b.rank() - 1] {
                return cx.fail(format!("cannot concatenate {a} and {b}"));
            }
            cx.same_dim((da + db).into(), w.dims[0], "norm width")?;
            let mut dims = a.dims.clone();
            *dims.last_mut().expect("rank checked") = (da + db).into();
            Ok(vec![TensorType::f32(dims)])
        }
        OpKind::ConcatRmsScale { .. } => {
            cx.arity(2, 2)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            cx.const_last(a)?;
            cx.const_last(b)?;
            if a.dims[..a.rank() - 1] != b.dims[..b.rank() - 1] {
                return cx.fail(format!("cannot concatenate {a} and {b}"));
            }
            Ok(vec![TensorType::f32(a.dims[..a.rank() - 1].to_vec())])
        }
        OpKind::AddRmsNorm { .. } => {
            cx.arity(3, 3)?;
            let (a, b) = (cx.float(0)?, cx.float(1)?);
            if a.dims != b.dims {
                return cx.fail(format!("cannot add {a} and {b}"));
            }
            let w = cx.weight(2, 1)?;
            cx.same_dim(cx.last(a)?, w.dims[0], "norm width")?;
            let t = TensorType::f32(a.dims.clone());
            Ok(vec![t.clone(), t])
        }
        OpKind::Concat { axis } => {
            cx.arity(2, 2)?;
            let (a, b) = (ops[0], ops[1]);
            if a.rank() != b.rank() || *axis >= a.rank() || a.elem != b.elem {
                return cx.fail(format!("cannot concatenate {a} and {b} on axis {axis}"));
            }
            let mut dims = a.dims.clone();
            for (i, (x, y)) in a.dims.iter().zip(&b.dims).enumerate() {
                if i == *axis {
                    match (x.as_const(), y.as_const()) {
                        (Some(p), Some(q)) => dims[i] = (p + q).into(),
                        _ => return cx.fail("the concatenated axis must be static"),
                    }
                } else if x != y {
                    return cx.fail(format!("cannot concatenate {a} and {b} on axis {axis}"));
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
            cx.arity(1, 1)?;
            let x = ops[0];
            let Some(n) = x.dims.get(*axis).and_then(|d| d.as_const()) else {
                return cx.fail(format!("axis {axis} of {x} is not a static dimension"));
            };
            if *stride == 0 || start >= end || *end > n {
                return cx.fail(format!("[{start}:{end}:{stride}] is out of range for {n}"));
            }
            let mut dims = x.dims.clone();
            dims[*axis] = (end - start).div_ceil(*stride).into();
            Ok(vec![TensorType::new(x.elem, dims)])
        }
        OpKind::Reshape { dims } => {
            cx.arity(1, 1)?;
            let x = ops[0];
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
            Ok(vec![TensorType::f32([ch.into(), (kernel - 1).into()])])
        }
        OpKind::ConvStep { kernel, bias } => {
            let n = if *bias { 4 } else { 3 };
            cx.arity(n, n)?;
            let x = cx.rank(0, 2)?;
            cx.dim_is(x, 0, 1)?;
            let ch = cx.const_last(x)?;
            let st = cx.rank(1, 2)?;
            cx.shape_is(st, &[ch.into(), (kernel - 1).into()], "conv state")?;
            cx.conv_weights(2, ch, *kernel, *bias)?;
            Ok(vec![TensorType::f32(x.dims.clone()), st.clone()])
        }
        OpKind::ScaleHeads { heads } => {
            cx.arity(2, 2)?;
            let x = cx.float(0)?;
            let d = cx.weight(1, 1)?;
            let w = cx.const_last(x)?;
            cx.dim_is(d, 0, *heads)?;
            if w % heads != 0 {
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
            let x = cx.rank(0, 2)?;
            let t = x.dims[0];
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
                cx.shape_is(ops[5], &state.dims, "ssm state")?;
            }
            Ok(vec![TensorType::f32(x.dims.clone()), state])
        }
        OpKind::SelectiveScan(s) | OpKind::SelectiveStep(s) => {
            let step = matches!(kind, OpKind::SelectiveStep(_));
            cx.arity(5 + step as usize, 5 + step as usize)?;
            let x = cx.rank(0, 3)?;
            let t = x.dims[0];
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
                cx.shape_is(ops[5], &state.dims, "ssm state")?;
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
            cx.shape_is(ops[0], &cache.dims, "cache")?;
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
            cx.shape_is(ops[1], &cache, "key cache")?;
            cx.shape_is(ops[2], &cache, "value cache")?;
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
            let zx = cx.rank(0, 2)?;
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
                cx.shape_is(ops[7], &conv_state.dims, "conv state")?;
                cx.shape_is(ops[8], &ssm_state.dims, "ssm state")?;
            }
            Ok(vec![
                TensorType::f32([zx.dims[0], d_inner.into()]),
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
            let xz = cx.rank(slot.xz, 2)?;
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
                cx.shape_is(ops[conv_in], &conv_state.dims, "conv state")?;
                cx.shape_is(ops[ssm_in], &ssm_state.dims, "ssm state")?;
            }
            Ok(vec![
                TensorType::f32([xz.dims[0], d_inner.into()]),
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
    let k = cx.const_last(x)?;
    let w = cx.weight(slot.w, 2)?;
    let kw = w.dims[1].as_const().unwrap_or(0);
    match a.window {
        None => cx.same_dim(w.dims[1], k.into(), "input width")?,
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
    let n = w.dims[0].as_const().unwrap_or(0);
    if let Some(b) = slot.bias {
        cx.shape_is(cx.weight(b, 1)?, &[n.into()], "bias")?;
    }
    if let Some((down, up)) = slot.lora {
        let down = cx.weight(down, 2)?;
        let up = cx.weight(up, 2)?;
        cx.same_dim(down.dims[1], k.into(), "adapter input width")?;
        cx.shape_is(up, &[n.into(), down.dims[0]], "adapter up-projection")?;
    }
    let mut dims = x.dims.clone();
    *dims.last_mut().expect("rank checked") = n.into();
    if let Some((y, r)) = slot.hoisted {
        cx.shape_is(cx.float(y)?, &dims, "hoisted term")?;
        cx.shape_is(cx.float(r)?, &dims[..dims.len() - 1], "hoisted row scale")?;
    }
    match (&a.epilogue, slot.epilogue) {
        (Epilogue::ActGate(_), _) => {
            if n % 2 != 0 {
                return cx.fail("a gated epilogue needs an even output width");
            }
            *dims.last_mut().expect("rank checked") = (n / 2).into();
        }
        (Epilogue::Mul, Some(m)) => {
            cx.shape_is(cx.ops[m], &dims, "epilogue operand")?;
        }
        (Epilogue::Rope(r), Some(pos)) => {
            let out = TensorType::f32(dims.clone());
            cx.rope(&out, r.heads, r.head_dim, pos)?;
        }
        _ => {}
    }
    Ok(vec![TensorType::f32(dims)])
}

/// Checking helpers bound to one op application.
struct Cx<'a> {
    op: &'static str,
    ops: &'a [&'a TensorType],
}

impl<'a> Cx<'a> {
    fn fail<T>(&self, msg: impl Into<String>) -> Result<T, TypeError> {
        Err(TypeError {
            op: self.op,
            msg: msg.into(),
        })
    }

    fn arity(&self, min: usize, max: usize) -> Result<(), TypeError> {
        let n = self.ops.len();
        if n < min || n > max {
            let want = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return self.fail(format!("expects {want} operands, got {n}"));
        }
        Ok(())
    }

    fn float(&self, i: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.ops[i];
        if !t.elem.is_float() {
            return self.fail(format!("operand {i} must be floating point, is {t}"));
        }
        Ok(t)
    }

    fn rank(&self, i: usize, rank: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.ops[i];
        if t.rank() != rank {
            return self.fail(format!("operand {i} must have rank {rank}, is {t}"));
        }
        Ok(t)
    }

    /// A static floating-point operand of the given rank (weights have static shapes).
    fn weight(&self, i: usize, rank: usize) -> Result<&'a TensorType, TypeError> {
        let t = self.rank(i, rank)?;
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
        match self.last(t)?.as_const() {
            Some(n) => Ok(n),
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
        let t = self.ops[i];
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
