//! `hoist-shared-input`: compute the invariant half of a shared block's input products
//! once.
//!
//! Every invocation of a shared block normalises `concat(h_i, e)` — its own hidden state
//! and the *same* original embeddings `e` — with the same weight `w`, and multiplies the
//! result by the same projection `W`. RMSNorm only scales each row, so with
//! `r_i = 1/rms(concat(h_i, e))` and `W = [W_h | W_e]`:
//!
//! ```text
//! RMSNorm(concat(h_i, e); w)·Wᵀ = (r_i ⊙ h_i ⊙ w_h)·W_hᵀ + r_i ⊙ ((e ⊙ w_e)·W_eᵀ)
//! ```
//!
//! The second product, `Y = (e ⊙ w_e)·W_eᵀ`, does not depend on the invocation: it is
//! computed once per graph and each invocation adds `r_i ⊙ Y` to a product over the first
//! `|h|` columns only (`linear{cols_from=0, cols=|h|, hoisted}` with operands `Y` and
//! `r_i = concat_rms_scale(h_i, e)`). The invocation still reads its normalised input
//! whole for its own adapter. With `n` invocations this removes `n − 1` of the `n`
//! products over the embedding half — in prefill FLOPs and in the weight bytes every
//! decoded token streams. Results change only by rounding (the two halves of each dot
//! product are summed separately and the scale is applied after the product).
//!
//! Matches `linear(concat_rms_norm(h_i, e, w), W, …)` with a parameter `W`, no window and
//! no hoisted term, where at least two invocations share `e`, `w`, ε and `W`.

use std::collections::BTreeMap;

use zambac_ir::op::{LinearAttrs, Window};
use zambac_ir::{Graph, NodeId, OpKind, ValueRef};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::{find, rewire};

pub struct HoistSharedInput;

impl Pass for HoistSharedInput {
    fn name(&self) -> &'static str {
        "hoist-shared-input"
    }

    fn summary(&self) -> &'static str {
        "compute the shared embedding half of a shared block's input products once"
    }

    fn run(&self, m: &mut zambac_ir::Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let (mut products, mut rewritten) = (0, 0);
        for g in &mut m.graphs {
            let (p, r) = hoist(g).map_err(|msg| PassError {
                pass: "hoist-shared-input",
                msg,
            })?;
            products += p;
            rewritten += r;
        }
        if products > 0 {
            cx.stat(format!(
                "{products} embedding-half products hoisted, serving {rewritten} linears"
            ));
        }
        Ok(Changed::from(products > 0))
    }
}

/// The linears of one weight `W` that read normalised concatenations of one group.
struct Site {
    linear: NodeId,
    attrs: LinearAttrs,
    norm: NodeId,
}

/// Rewrites `g`; returns (hoisted products, rewritten linears).
fn hoist(g: &mut Graph) -> Result<(usize, usize), String> {
    // Normalised concatenations grouped by what every invocation shares: (e, w, ε).
    let mut groups: BTreeMap<(ValueRef, ValueRef, u64), Vec<NodeId>> = BTreeMap::new();
    for n in find(g, |k| matches!(k, OpKind::ConcatRmsNorm { .. })) {
        let OpKind::ConcatRmsNorm { eps } = *g.kind(n) else {
            unreachable!("found by kind")
        };
        let ops = g.operands(n);
        groups
            .entry((ops[1], ops[2], eps.to_bits()))
            .or_default()
            .push(n);
    }
    let (mut products, mut rewritten) = (0, 0);
    for ((e, w, eps), norms) in groups {
        if norms.len() < 2 {
            continue;
        }
        let eps = f64::from_bits(eps);
        let da = width(g, g.operands(norms[0])[0]);
        let db = width(g, e);
        if da == 0 || db == 0 {
            continue;
        }
        let mut by_weight: BTreeMap<ValueRef, Vec<Site>> = BTreeMap::new();
        for &norm in &norms {
            for (user, slot) in g.value_users(norm.out()) {
                let OpKind::Linear(attrs) = g.kind(user).clone() else {
                    continue;
                };
                let weight = g.operands(user)[1];
                if slot == 0
                    && attrs.window.is_none()
                    && !attrs.hoisted
                    && matches!(g.kind(weight.node), OpKind::Param(_))
                {
                    by_weight.entry(weight).or_default().push(Site {
                        linear: user,
                        attrs,
                        norm,
                    });
                }
            }
        }
        by_weight.retain(|_, sites| {
            let mut distinct: Vec<NodeId> = sites.iter().map(|s| s.norm).collect();
            distinct.sort();
            distinct.dedup();
            distinct.len() >= 2
        });
        if by_weight.is_empty() {
            continue;
        }
        let loc = g.node(norms[0]).loc;
        // `e ⊙ w_e`, shared by every hoisted product of the group.
        let w_e = g
            .add_op(
                OpKind::Slice {
                    axis: 0,
                    start: da,
                    end: da + db,
                    stride: 1,
                },
                &[w],
                loc,
            )
            .map_err(|err| err.to_string())?;
        let scaled = g
            .add_op(OpKind::Mul, &[e, w_e.out()], loc)
            .map_err(|err| err.to_string())?;
        let mut scales: BTreeMap<NodeId, ValueRef> = BTreeMap::new();
        for (weight, sites) in by_weight {
            let once = LinearAttrs {
                window: Some(Window { start: da, len: db }),
                ..LinearAttrs::PLAIN
            };
            let y = g
                .add_op(OpKind::Linear(once), &[scaled.out(), weight], loc)
                .map_err(|err| err.to_string())?
                .out();
            products += 1;
            for site in sites {
                let r = match scales.get(&site.norm) {
                    Some(&r) => r,
                    None => {
                        let h = g.operands(site.norm)[0];
                        let sloc = g.node(site.norm).loc;
                        let r = g
                            .add_op(OpKind::ConcatRmsScale { eps }, &[h, e], sloc)
                            .map_err(|err| err.to_string())?
                            .out();
                        scales.insert(site.norm, r);
                        r
                    }
                };
                let ops = g.operands(site.linear);
                let mut args = site
                    .attrs
                    .operands()
                    .pick(&ops)
                    .ok_or("a linear's operands do not match its attributes")?
                    .copied();
                args.hoisted = Some((y, r));
                let attrs = LinearAttrs {
                    window: Some(Window { start: 0, len: da }),
                    hoisted: true,
                    ..site.attrs
                };
                let lloc = g.node(site.linear).loc;
                let new = g
                    .add_op(OpKind::Linear(attrs), &args.into_vec(), lloc)
                    .map_err(|err| err.to_string())?;
                rewire(g, &[(site.linear.out(), new.out())]);
                rewritten += 1;
            }
        }
    }
    Ok((products, rewritten))
}

/// The constant last dimension of `v` (0 when symbolic).
fn width(g: &Graph, v: ValueRef) -> usize {
    g.ty(v).last().and_then(|d| d.as_const()).unwrap_or(0)
}
