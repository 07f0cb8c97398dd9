//! The epilogue of a linear: bias, each activation, gating, products and RoPE, out of place
//! and in place.

use super::harness::{Buf, Lib, assert_close, check, random};
use zambac_engine::{ActKind, EpilogueOp, Kernel, KernelKind, Rope, RopeScaling};
use zambac_reference::kernels as k;
use zambac_runtime::Tensor;

const ACTS: [ActKind; 4] = [
    ActKind::Silu,
    ActKind::Gelu,
    ActKind::GeluTanh,
    ActKind::Softplus,
];

fn act(a: ActKind) -> fn(f32) -> f32 {
    match a {
        ActKind::Silu => k::silu,
        ActKind::Gelu => k::gelu,
        ActKind::GeluTanh => k::gelu_tanh,
        ActKind::Softplus => k::softplus,
    }
}

/// `y + bias` (the bias broadcast over rows).
fn biased(y: &[f32], bias: Option<&[f32]>, n: usize) -> Vec<f32> {
    y.iter()
        .enumerate()
        .map(|(i, v)| v + bias.map_or(0.0, |b| b[i % n]))
        .collect()
}

fn epilogue(n: usize, with_bias: bool, op: EpilogueOp, rows: usize) {
    epilogue_at(n, with_bias, op, rows, 1000);
}

fn epilogue_at(n: usize, with_bias: bool, op: EpilogueOp, rows: usize, pos0: usize) {
    let y = random(rows * n, 40, -25.0, 25.0);
    let bias = random(n, 41, -1.0, 1.0);
    let m = random(rows * n, 42, -2.0, 2.0);
    let v = biased(&y, with_bias.then_some(&bias[..]), n);
    let want = match &op {
        EpilogueOp::None => v,
        EpilogueOp::Act(a) => v.iter().map(|&x| act(*a)(x)).collect(),
        EpilogueOp::Gate(a) => (0..rows * n / 2)
            .map(|i| {
                let (r, j) = (i / (n / 2), i % (n / 2));
                act(*a)(v[r * n + j]) * v[r * n + n / 2 + j]
            })
            .collect(),
        EpilogueOp::Mul => v.iter().zip(&m).map(|(a, b)| a * b).collect(),
        EpilogueOp::Rope {
            heads,
            head_dim,
            theta,
            scaling,
        } => {
            let rope = Rope {
                theta: *theta,
                head_dim: *head_dim,
                scaling: scaling.as_ref(),
            };
            k::rope(&Tensor::new(vec![rows, n], v), *heads, &rope, pos0).data
        }
    };
    let ints = if op.rope_depends_on_length() {
        vec![pos0 as i64, rows as i64]
    } else {
        vec![pos0 as i64]
    };
    let mut bufs = vec![Buf::F32(y)];
    if with_bias {
        bufs.push(Buf::F32(bias));
    }
    if op == EpilogueOp::Mul {
        bufs.push(Buf::F32(m));
    }
    bufs.push(Buf::F32(vec![0.0; want.len()]));
    let out = bufs.len() - 1;
    let kind = KernelKind::Epilogue {
        n,
        bias: with_bias,
        op,
    };
    check(kind, &bufs, &ints, rows, &[(out, want)], 2e-5);
}

#[test]
fn bias_alone_and_each_activation_match_the_reference() {
    epilogue(30, true, EpilogueOp::None, 3);
    for a in ACTS {
        epilogue(30, false, EpilogueOp::Act(a), 3);
        epilogue(19, true, EpilogueOp::Act(a), 2);
    }
    // Rows wide enough for a block per row in the GPU schedule.
    epilogue(530, true, EpilogueOp::None, 2);
    epilogue(1030, false, EpilogueOp::Act(ActKind::Silu), 2);
}

#[test]
fn gated_activation_multiplies_the_second_half() {
    for a in ACTS {
        epilogue(42, true, EpilogueOp::Gate(a), 3);
    }
    epilogue(40, false, EpilogueOp::Gate(ActKind::Gelu), 1);
    epilogue(2 * 600, true, EpilogueOp::Gate(ActKind::Silu), 2);
}

#[test]
fn product_with_another_tensor() {
    epilogue(30, true, EpilogueOp::Mul, 4);
    epilogue(17, false, EpilogueOp::Mul, 2);
    epilogue(700, true, EpilogueOp::Mul, 2);
}

#[test]
fn rope_rotates_each_head_at_its_position() {
    let rope = |heads, head_dim| EpilogueOp::Rope {
        heads,
        head_dim,
        theta: 10000.0,
        scaling: None,
    };
    epilogue(48, false, rope(2, 24), 3);
    epilogue(256, true, rope(2, 128), 2);
    epilogue(20, false, rope(1, 20), 4);
}

/// Every scaling, at positions on both sides of the length-dependent ones' threshold (30):
/// a call reaching 30 positions keeps the short frequencies, one reaching 31 the long.
#[test]
fn scaled_rope_matches_the_reference_on_both_sides_of_its_threshold() {
    let hd = 24;
    let scalings = [
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::Dynamic {
            factor: 3.0,
            max_position_embeddings: 30,
        },
        RopeScaling::Yarn {
            factor: 8.0,
            original_max_position_embeddings: 30,
            attention_factor: 1.2,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        },
        RopeScaling::Longrope {
            short_factor: (0..hd / 2).map(|i| 1.0 + i as f64 * 0.1).collect(),
            long_factor: (0..hd / 2).map(|i| 2.0 + i as f64 * 0.5).collect(),
            original_max_position_embeddings: 30,
            attention_factor: 1.1,
        },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 30,
        },
    ];
    for scaling in scalings {
        let op = EpilogueOp::Rope {
            heads: 2,
            head_dim: hd,
            theta: 500.0,
            scaling: Some(scaling),
        };
        for (rows, pos0) in [(3, 27), (3, 28), (1, 29), (1, 30), (5, 900)] {
            epilogue_at(2 * hd, false, op.clone(), rows, pos0);
        }
    }
}

#[test]
fn an_activation_may_run_in_place() {
    let (n, rows) = (33, 3);
    let kernel = Kernel {
        symbol: "inplace".into(),
        kind: KernelKind::Epilogue {
            n,
            bias: false,
            op: EpilogueOp::Act(ActKind::Silu),
        },
    };
    let lib = Lib::build(&[kernel]);
    let mut y = random(rows * n, 43, -5.0, 5.0);
    let want: Vec<f32> = y.iter().map(|&x| k::silu(x)).collect();
    let view = y.as_mut_ptr().cast::<u8>();
    lib.call_raw("inplace", &[view, view], &[0], 0, rows);
    assert_close(&y, &want, 1e-5, "in-place SiLU");
}
