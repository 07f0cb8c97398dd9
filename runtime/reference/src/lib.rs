//! The reference backend: a plain interpreter of the IR in f32, the oracle every pass and
//! every compiled backend is tested against. It is a backend of the compiler only: it
//! needs the IR, which the small runtime never links.
//!
//! It walks a graph in its canonical order, evaluates each op with the functions of
//! [`kernels`] and frees a value after its last use. Fused ops are evaluated as the
//! composition of the primitives they replace, so "fused == unfused" is a statement about
//! the passes, not about two implementations of the math.

mod backend;
pub mod kernels;
mod value;

pub use backend::ReferenceBackend;
pub use value::Value;

use std::collections::HashMap;

use zambac_ir::op::{Act, Epilogue, LinearAttrs, Mamba1Attrs, Mamba2Attrs, OpKind};
use zambac_ir::operands::{ConvArgs, ConvOperands};
use zambac_ir::{Graph, NodeId, ValueRef};

use kernels as k;
use zambac_runtime::RuntimeError;
use zambac_runtime::Tensor;

/// Runs `g` on named inputs with the given weights (indexed by `ParamId`) and KV-cache
/// capacity; returns the named outputs.
pub fn execute(
    g: &Graph,
    weights: &[Tensor],
    inputs: &HashMap<String, Value>,
    capacity: usize,
) -> Result<HashMap<String, Value>, RuntimeError> {
    let order = g.order();
    // Remaining uses of every value, so intermediate tensors are dropped early.
    let mut uses: HashMap<ValueRef, usize> = HashMap::new();
    for &n in &order {
        for v in g.operands(n) {
            *uses.entry(v).or_default() += 1;
        }
    }
    for (_, v) in &g.outputs {
        *uses.entry(*v).or_default() += 1;
    }
    let mut env: HashMap<ValueRef, Value> = HashMap::new();
    for &n in &order {
        let results = match g.kind(n) {
            OpKind::Input { name } => {
                let v = inputs.get(name).ok_or_else(|| {
                    RuntimeError::Internal(format!("graph input `{name}` was not provided"))
                })?;
                vec![v.clone()]
            }
            OpKind::Param(_) => continue,
            kind => {
                let operands = g.operands(n);
                let args: Vec<Arg> = operands
                    .iter()
                    .map(|v| match g.kind(v.node) {
                        OpKind::Param(p) => Ok(Arg::Weight(&weights[p.index()])),
                        _ => env
                            .get(v)
                            .map(Arg::Value)
                            .ok_or_else(|| RuntimeError::Internal(format!("{v:?} not computed"))),
                    })
                    .collect::<Result<_, _>>()?;
                let out = eval(kind, &args, capacity)
                    .map_err(|e| RuntimeError::Internal(format!("`{}`: {e}", kind.name())))?;
                for v in operands {
                    release(&mut env, &mut uses, v);
                }
                out
            }
        };
        for (i, v) in results.into_iter().enumerate() {
            env.insert(n.res(i as u16), v);
        }
        drop_unused(g, n, &mut env, &uses);
    }
    let mut out = HashMap::new();
    for (name, v) in &g.outputs {
        let val = match g.kind(v.node) {
            OpKind::Param(p) => Value::F32(weights[p.index()].clone()),
            _ => env
                .get(v)
                .cloned()
                .ok_or_else(|| RuntimeError::Internal(format!("output `{name}` not computed")))?,
        };
        out.insert(name.clone(), val);
    }
    Ok(out)
}

fn release(env: &mut HashMap<ValueRef, Value>, uses: &mut HashMap<ValueRef, usize>, v: ValueRef) {
    if let Some(u) = uses.get_mut(&v) {
        *u -= 1;
        if *u == 0 {
            env.remove(&v);
        }
    }
}

/// Results nobody reads (e.g. a state output of a dead op) are dropped at once.
fn drop_unused(
    g: &Graph,
    n: NodeId,
    env: &mut HashMap<ValueRef, Value>,
    uses: &HashMap<ValueRef, usize>,
) {
    for r in 0..g.node(n).results.len() {
        let v = n.res(r as u16);
        if !uses.contains_key(&v) {
            env.remove(&v);
        }
    }
}

/// An evaluated operand.
enum Arg<'a> {
    Weight(&'a Tensor),
    Value(&'a Value),
}

impl<'a> Arg<'a> {
    fn t(&self) -> Result<&'a Tensor, String> {
        match self {
            Arg::Weight(t) => Ok(t),
            Arg::Value(Value::F32(t)) => Ok(t),
            Arg::Value(_) => Err("expected an f32 operand".into()),
        }
    }

    fn i64(&self) -> Result<&'a [i64], String> {
        match self {
            Arg::Value(Value::I64 { data, .. }) => Ok(data),
            _ => Err("expected an i64 operand".into()),
        }
    }

    /// A position operand as a non-negative index.
    fn pos(&self) -> Result<usize, String> {
        let p = self.i64()?[0];
        usize::try_from(p).map_err(|_| format!("negative position {p}"))
    }
}

fn act(a: Act) -> fn(f32) -> f32 {
    match a {
        Act::Silu => k::silu,
        Act::Gelu => k::gelu,
        Act::GeluTanh => k::gelu_tanh,
        Act::Softplus => k::softplus,
    }
}

fn f(t: Tensor) -> Vec<Value> {
    vec![Value::F32(t)]
}

fn eval(kind: &OpKind, a: &[Arg], capacity: usize) -> Result<Vec<Value>, String> {
    Ok(match kind {
        OpKind::Input { .. } | OpKind::Param(_) => unreachable!("leaves are not evaluated"),
        OpKind::Embedding => {
            let ids = a[0].i64()?;
            let table = a[1].t()?;
            let (v, h) = (table.shape[0], table.shape[1]);
            let mut data = Vec::with_capacity(ids.len() * h);
            for &id in ids {
                let i = usize::try_from(id)
                    .ok()
                    .filter(|&i| i < v)
                    .ok_or_else(|| format!("token id {id} is outside the vocabulary 0..{v}"))?;
                data.extend_from_slice(&table.data[i * h..(i + 1) * h]);
            }
            f(Tensor::new(vec![ids.len(), h], data))
        }
        OpKind::Linear(attrs) => f(linear(attrs, a)?),
        OpKind::HeadLinear { .. } => f(k::head_linear(a[0].t()?, a[1].t()?)),
        OpKind::Add => f(k::broadcast(a[0].t()?, a[1].t()?, |x, y| x + y)),
        OpKind::Mul => f(k::broadcast(a[0].t()?, a[1].t()?, |x, y| x * y)),
        OpKind::Act(x) => f(k::map(a[0].t()?, act(*x))),
        OpKind::ClampMin { min } => {
            let m = *min as f32;
            f(k::map(a[0].t()?, move |x| x.max(m)))
        }
        OpKind::RmsNorm { eps } => f(k::group_rms_norm(a[0].t()?, a[1].t()?, 1, *eps)),
        OpKind::GroupRmsNorm { groups, eps } => {
            f(k::group_rms_norm(a[0].t()?, a[1].t()?, *groups, *eps))
        }
        OpKind::ConcatRmsNorm { eps } => {
            let (x, y) = (a[0].t()?, a[1].t()?);
            let cat = k::concat(x, y, x.shape.len() - 1);
            f(k::group_rms_norm(&cat, a[2].t()?, 1, *eps))
        }
        OpKind::ConcatRmsScale { eps } => {
            let (x, y) = (a[0].t()?, a[1].t()?);
            f(k::concat_rms_scale(x, y, *eps))
        }
        OpKind::AddRmsNorm { eps } => {
            let sum = k::broadcast(a[0].t()?, a[1].t()?, |x, y| x + y);
            let normed = k::group_rms_norm(&sum, a[2].t()?, 1, *eps);
            vec![Value::F32(sum), Value::F32(normed)]
        }
        OpKind::Concat { axis } => f(k::concat(a[0].t()?, a[1].t()?, *axis)),
        OpKind::Slice {
            axis,
            start,
            end,
            stride,
        } => f(k::slice(a[0].t()?, *axis, *start, *end, *stride)),
        OpKind::Reshape { dims } => {
            let x = a[0].t()?;
            let t_dim = x.shape.first().copied().unwrap_or(1);
            let shape = concrete(dims, t_dim, capacity);
            f(Tensor::new(shape, x.data.clone()))
        }
        OpKind::CausalConv1d { bias, .. } => {
            let c = conv_args(a, false, *bias)?;
            f(k::causal_conv1d(c.x, c.weight, c.bias))
        }
        OpKind::ConvState { kernel } => f(k::conv_state(a[0].t()?, *kernel)),
        OpKind::ConvStep { bias, .. } => {
            let c = conv_args(a, true, *bias)?;
            let state = c.state.ok_or("a conv step without its state")?;
            let (y, s) = k::conv_step(c.x, state, c.weight, c.bias);
            vec![Value::F32(y), Value::F32(s)]
        }
        OpKind::ScaleHeads { heads } => f(k::scale_heads(a[0].t()?, a[1].t()?, *heads)),
        OpKind::SsdScan(s) | OpKind::SsdStep(s) => {
            let s0 = if a.len() == 6 { Some(a[5].t()?) } else { None };
            let dims = (s.heads, s.head_dim, s.groups, s.state);
            let (y, st) = k::ssd(
                a[0].t()?,
                a[1].t()?,
                a[2].t()?,
                a[3].t()?,
                a[4].t()?,
                s0,
                dims,
            );
            vec![Value::F32(y), Value::F32(st)]
        }
        OpKind::SelectiveScan(_) | OpKind::SelectiveStep(_) => {
            let s0 = if a.len() == 6 { Some(a[5].t()?) } else { None };
            let (y, st) =
                k::selective_scan(a[0].t()?, a[1].t()?, a[2].t()?, a[3].t()?, a[4].t()?, s0);
            vec![Value::F32(y), Value::F32(st)]
        }
        OpKind::Rope(r) => {
            let pos0 = if a.len() == 2 { a[1].pos()? } else { 0 };
            f(k::rope(a[0].t()?, r.heads, &r.rope(), pos0))
        }
        OpKind::KvStore { heads, head_dim } => {
            let x = a[0].t()?;
            if x.shape[0] > capacity {
                return Err(format!(
                    "{} tokens exceed the KV capacity {capacity}",
                    x.shape[0]
                ));
            }
            let mut cache = Tensor::zeros(vec![*heads, capacity, *head_dim]);
            k::kv_write(&mut cache, x, 0);
            f(cache)
        }
        OpKind::KvAppend { .. } => {
            let mut cache = a[0].t()?.clone();
            let pos = a[2].pos()?;
            if pos >= cache.shape[1] {
                return Err(format!(
                    "position {pos} exceeds the KV capacity {}",
                    cache.shape[1]
                ));
            }
            k::kv_write(&mut cache, a[1].t()?, pos);
            f(cache)
        }
        OpKind::Attention(at) => {
            let pos0 = if a.len() == 4 { a[3].pos()? } else { 0 };
            f(k::attention(
                a[0].t()?,
                a[1].t()?,
                a[2].t()?,
                at.heads,
                at.scale,
                pos0,
            ))
        }
        OpKind::Mamba2Mix(m) => mamba2(m, a, false)?,
        OpKind::Mamba2Step(m) => mamba2(m, a, true)?,
        OpKind::Mamba1Mix(m) => mamba1(m, a, false)?,
        OpKind::Mamba1Step(m) => mamba1(m, a, true)?,
    })
}

/// The f32 tensors of a depthwise conv's operands, by name.
fn conv_args<'a>(a: &[Arg<'a>], step: bool, bias: bool) -> Result<ConvArgs<&'a Tensor>, String> {
    let args = ConvOperands::new(step, bias)
        .pick(a)
        .ok_or_else(|| arity_error(a.len()))?;
    Ok(ConvArgs {
        x: args.x.t()?,
        state: args.state.map(Arg::t).transpose()?,
        weight: args.weight.t()?,
        bias: args.bias.map(Arg::t).transpose()?,
    })
}

fn arity_error(n: usize) -> String {
    format!("{n} operands do not match the op's attributes")
}

/// A fused linear: product, bias, adapter, hoisted term, epilogue — in that order.
fn linear(attrs: &LinearAttrs, a: &[Arg]) -> Result<Tensor, String> {
    let args = attrs
        .operands()
        .pick(a)
        .ok_or_else(|| arity_error(a.len()))?;
    let x = args.x.t()?;
    let bias = args.bias.map(Arg::t).transpose()?;
    let w = args.w.t()?;
    let mut y = match attrs.window {
        None => k::linear(x, w, bias),
        Some(win) => {
            let cols =
                |t: &Tensor| k::slice(t, t.shape.len() - 1, win.start, win.start + win.len, 1);
            let xw = if x.last() == win.len {
                x.clone()
            } else {
                cols(x)
            };
            k::linear(&xw, &cols(w), bias)
        }
    };
    if let Some((down_w, up_w)) = args.lora {
        let down = k::linear(x, down_w.t()?, None);
        let up = k::linear(&down, up_w.t()?, None);
        y = k::broadcast(&y, &up, |p, q| p + q);
    }
    if let Some((term, r)) = args.hoisted {
        let (term, r) = (term.t()?, r.t()?);
        let n = y.last();
        for (j, v) in y.data.iter_mut().enumerate() {
            *v += r.data[j / n] * term.data[j];
        }
    }
    Ok(match &attrs.epilogue {
        Epilogue::None => y,
        Epilogue::Act(f) => k::map(&y, act(*f)),
        Epilogue::ActGate(f) => {
            let half = y.last() / 2;
            let last = y.shape.len() - 1;
            let gate = k::map(&k::slice(&y, last, 0, half, 1), act(*f));
            let up = k::slice(&y, last, half, 2 * half, 1);
            k::broadcast(&gate, &up, |g, u| g * u)
        }
        Epilogue::Mul => {
            let factor = args.epilogue.ok_or("a `mul` epilogue without its factor")?;
            k::broadcast(&y, factor.t()?, |p, q| p * q)
        }
        Epilogue::Rope(r) => {
            let pos0 = args.epilogue.map(Arg::pos).transpose()?.unwrap_or(0);
            k::rope(&y, r.heads, &r.rope(), pos0)
        }
    })
}

/// The fused Mamba2 mixer, as the composition of the primitive steps (spec §2.3 2–8).
fn mamba2(m: &Mamba2Attrs, a: &[Arg], step: bool) -> Result<Vec<Value>, String> {
    let s = &m.ssd;
    let (di, gn) = (s.heads * s.head_dim, s.groups * s.state);
    let cd = di + 2 * gn;
    let zx = a[0].t()?;
    let (conv_w, conv_b) = (a[1].t()?, a[2].t()?);
    let (dt_bias, a_log, d, norm_w) = (a[3].t()?, a[4].t()?, a[5].t()?, a[6].t()?);
    let z = k::slice(zx, 1, 0, di, 1);
    let xbc = k::slice(zx, 1, di, di + cd, 1);
    let dt = k::slice(zx, 1, di + cd, di + cd + s.heads, 1);
    let (conv, conv_state) = if step {
        k::conv_step(&xbc, a[7].t()?, conv_w, Some(conv_b))
    } else {
        (
            k::causal_conv1d(&xbc, conv_w, Some(conv_b)),
            k::conv_state(&xbc, m.conv),
        )
    };
    let xbc = k::map(&conv, k::silu);
    let x = k::slice(&xbc, 1, 0, di, 1);
    let bm = k::slice(&xbc, 1, di, di + gn, 1);
    let cm = k::slice(&xbc, 1, di + gn, cd, 1);
    let mut dt = k::map(&k::broadcast(&dt, dt_bias, |p, q| p + q), k::softplus);
    if let Some(min) = m.dt_min {
        let min = min as f32;
        dt = k::map(&dt, move |v| v.max(min));
    }
    let s0 = if step { Some(a[8].t()?) } else { None };
    let dims = (s.heads, s.head_dim, s.groups, s.state);
    let (y, ssm_state) = k::ssd(&x, &dt, a_log, &bm, &cm, s0, dims);
    let y = k::broadcast(&y, &k::scale_heads(&x, d, s.heads), |p, q| p + q);
    let y = k::broadcast(&y, &k::map(&z, k::silu), |p, q| p * q);
    let y = k::group_rms_norm(&y, norm_w, s.groups, m.norm_eps);
    Ok(vec![
        Value::F32(y),
        Value::F32(conv_state),
        Value::F32(ssm_state),
    ])
}

/// The fused Mamba1 mixer, as the composition of the primitive steps (spec §2.4).
fn mamba1(m: &Mamba1Attrs, a: &[Arg], step: bool) -> Result<Vec<Value>, String> {
    let s = &m.scan;
    let (nh, p, n, r) = (s.heads, s.head_dim, s.state, m.dt_rank);
    let di = nh * p;
    let args = m
        .operands(step)
        .pick(a)
        .ok_or_else(|| arity_error(a.len()))?;
    let xz = args.xz.t()?;
    let conv_w = args.conv_weight.t()?;
    let conv_b = args.conv_bias.map(Arg::t).transpose()?;
    let (x_proj, dt_w, dt_b, a_log, d) = (
        args.x_proj.t()?,
        args.dt_proj_weight.t()?,
        args.dt_proj_bias.t()?,
        args.a_log.t()?,
        args.d.t()?,
    );
    let (conv_s0, ssm_s0) = match args.states {
        Some((conv, ssm)) => (Some(conv.t()?), Some(ssm.t()?)),
        None => (None, None),
    };
    let x = k::slice(xz, 1, 0, 2 * di, 2);
    let z = k::slice(xz, 1, 1, 2 * di, 2);
    let (conv, conv_state) = if let Some(s0) = conv_s0 {
        k::conv_step(&x, s0, conv_w, conv_b)
    } else {
        (
            k::causal_conv1d(&x, conv_w, conv_b),
            k::conv_state(&x, m.conv),
        )
    };
    let t = x.shape[0];
    let x = k::map(&conv, k::silu);
    let x3 = Tensor::new(vec![t, nh, p], x.data);
    let proj = k::head_linear(&x3, x_proj);
    let dr = k::slice(&proj, 2, 0, r, 1);
    let bm = k::slice(&proj, 2, r, r + n, 1);
    let cm = k::slice(&proj, 2, r + n, r + 2 * n, 1);
    let dt = k::broadcast(&k::head_linear(&dr, dt_w), dt_b, |p, q| p + q);
    let mut dt = k::map(&dt, k::softplus);
    if let Some(min) = m.dt_min {
        let min = min as f32;
        dt = k::map(&dt, move |v| v.max(min));
    }
    let (y, ssm_state) = k::selective_scan(&x3, &dt, a_log, &bm, &cm, ssm_s0);
    let y = k::broadcast(&y, &k::broadcast(&x3, d, |p, q| p * q), |p, q| p + q);
    let y = Tensor::new(vec![t, di], y.data);
    let y = k::broadcast(&y, &k::map(&z, k::silu), |p, q| p * q);
    Ok(vec![
        Value::F32(y),
        Value::F32(conv_state),
        Value::F32(ssm_state),
    ])
}

/// Concrete dims of a reshape target (`T` from the operand, `C` the capacity).
fn concrete(dims: &[zambac_ir::Dim], t: usize, capacity: usize) -> Vec<usize> {
    dims.iter()
        .map(|d| d.eval(&zambac_ir::Bindings { t, c: capacity }))
        .collect()
}

#[cfg(test)]
mod tests {
    use zambac_ir::op::ScanAttrs;

    use super::*;

    fn t(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), (0..n).map(|i| i as f32 * 0.25).collect())
    }

    #[test]
    fn operands_that_do_not_match_the_attributes_are_an_error() {
        let (x, w, b) = (t(&[1, 4]), t(&[3, 4]), t(&[3]));
        let args = [Arg::Weight(&x), Arg::Weight(&w)];
        let with_bias = OpKind::Linear(LinearAttrs {
            bias: true,
            ..LinearAttrs::PLAIN
        });
        assert!(eval(&with_bias, &args, 0).is_err());
        let conv_with_bias = OpKind::CausalConv1d {
            kernel: 2,
            bias: true,
        };
        assert!(eval(&conv_with_bias, &args, 0).is_err());
        let step = OpKind::ConvStep {
            kernel: 2,
            bias: false,
        };
        assert!(
            eval(
                &step,
                &[
                    Arg::Weight(&x),
                    Arg::Weight(&w),
                    Arg::Weight(&b),
                    Arg::Weight(&b)
                ],
                0
            )
            .is_err()
        );
        let m = Mamba1Attrs {
            scan: ScanAttrs {
                heads: 1,
                head_dim: 2,
                state: 2,
            },
            conv: 2,
            conv_bias: false,
            dt_rank: 1,
            dt_min: None,
        };
        let seven: Vec<Arg> = (0..7).map(|_| Arg::Weight(&x)).collect();
        assert!(eval(&OpKind::Mamba1Step(m), &seven, 0).is_err());
    }

    #[test]
    fn a_linear_reads_bias_adapter_and_hoisted_term_by_name() {
        let (x, w, bias) = (t(&[2, 4]), t(&[3, 4]), t(&[3]));
        let (down, up) = (t(&[2, 4]), t(&[3, 2]));
        let (term, r) = (t(&[2, 3]), t(&[2]));
        let attrs = LinearAttrs {
            bias: true,
            lora: true,
            window: None,
            hoisted: true,
            epilogue: Epilogue::Mul,
        };
        let ops = [&x, &w, &bias, &down, &up, &term, &r, &term];
        let args: Vec<Arg> = ops.iter().map(|&t| Arg::Weight(t)).collect();
        let y = linear(&attrs, &args).unwrap();
        let mut want = k::linear(&x, &w, Some(&bias));
        let adapter = k::linear(&k::linear(&x, &down, None), &up, None);
        want = k::broadcast(&want, &adapter, |p, q| p + q);
        for (j, v) in want.data.iter_mut().enumerate() {
            *v += r.data[j / 3] * term.data[j];
        }
        let want = k::broadcast(&want, &term, |p, q| p * q);
        assert_eq!(y, want);
    }
}
