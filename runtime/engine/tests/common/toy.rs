//! The toy engine as the contract sees it: four parameters, six kernels each declared as a
//! real kind and launched exactly as that kind's signature says, and three programs that
//! mix launches and GEMMs over every kind of buffer. The engine-format and validator tests
//! write it with a stand-in `host.so`; the runtime's tests compile real kernels for it
//! (`runtime/tests/common`) and check it against the same model in plain Rust.
//!
//! The model, rows = T (prefill) or 1 (decode), steps numbered as in every program:
//!
//! ```text
//! 0  x = embed[tokens]                          Embedding
//! 1  y = x · w1ᵀ                                GEMM (column-major view of w1)
//! 2  y += x · w2                                GEMM, accumulate
//! 3  s = y + x                                  Binary, b over rows
//! 4  h = s · (1 + (pos + r)/2)                  Epilogue `row_scale`, int pos0 = pos
//! 5  conv.0 += h[rows-1]                        Binary, b broadcast: a state in place
//! 6  k.0[0, pos + r, :] = h[r]                  KvWrite into a cache of capacity C
//! 7  v.0[0, pos + r, :] = h[r] · (1 + (1+r)/2)  Epilogue at an offset of pos·H
//! 8  logits = h · headᵀ (head stored bf16)      GEMM; prefill_last: the last row only;
//!                                               decode: a Gemv over the 8 vocabulary rows
//! ```
//!
//! (The arithmetic of `row_scale` is the toy's own, not a real epilogue's: the contract
//! checks each launch's calling convention, not what the kernel computes.)

#![allow(dead_code)]

use zambac_engine::{
    BinOp, Buffer, Elem, EpilogueOp, Expr, Kernel, KernelKind, ManifestParts, Matrix, ModelInfo,
    Program, ProgramName, StateRole, StateSpec, Step, TargetCpu, View,
};

/// Vocabulary size.
pub const V: usize = 8;
/// Hidden size.
pub const H: usize = 4;

/// Step indices, the same in every program.
pub const STEP_EMBED: usize = 0;
pub const STEP_GEMM_W1: usize = 1;
pub const STEP_ADD: usize = 3;
pub const STEP_ROW_SCALE: usize = 4;
pub const STEP_CONV: usize = 5;
pub const STEP_KV_WRITE: usize = 6;
pub const STEP_V_WRITE: usize = 7;
pub const STEP_HEAD: usize = 8;

fn e(n: usize) -> Expr {
    Expr::k(n as i64)
}

/// The toy's state: a recurrent state and two caches, as the programs output them.
pub fn state_layout() -> Vec<StateSpec> {
    let spec = |role: &str, shape: Vec<Expr>| StateSpec {
        role: role.parse::<StateRole>().unwrap(),
        shape,
        elem: Elem::F32,
    };
    vec![
        spec("conv.0", vec![e(1), e(H)]),
        spec("k.0", vec![e(1), Expr::C, e(H)]),
        spec("v.0", vec![e(1), Expr::C, e(H)]),
    ]
}

pub fn model() -> ModelInfo {
    ModelInfo {
        name: "toy".into(),
        family: "zamba2".into(),
        vocab_size: V,
        hidden_size: H,
        layers: 1,
        weight_elem: Elem::F32,
        state: state_layout(),
        tokenizer: None,
        generation: Default::default(),
    }
}

/// The kernels every program launches, by symbol.
pub fn kernels() -> Vec<Kernel> {
    let k = |symbol: &str, kind| Kernel {
        symbol: symbol.into(),
        kind,
    };
    let add = |b_rows| KernelKind::Binary {
        op: BinOp::Add,
        n: H,
        b_rows,
    };
    vec![
        k(
            "embed",
            KernelKind::Embedding {
                hidden: H,
                elem: Elem::F32,
            },
        ),
        k("add", add(true)),
        k("add_row", add(false)),
        k(
            "row_scale",
            KernelKind::Epilogue {
                n: H,
                bias: false,
                op: EpilogueOp::None,
            },
        ),
        k(
            "kv_write",
            KernelKind::KvWrite {
                heads: 1,
                head_dim: H,
                cache: Elem::F32,
            },
        ),
        k(
            "head",
            KernelKind::Gemv {
                k: H,
                rows: vec![V],
                elem: Elem::Bf16,
                accumulate: false,
                row_stride: None,
            },
        ),
    ]
}

/// `mark`, launched only by the thread-splitting test: an epilogue over rows of 2.
pub fn mark_kernel() -> Kernel {
    Kernel {
        symbol: "mark".into(),
        kind: KernelKind::Epilogue {
            n: 2,
            bias: false,
            op: EpilogueOp::None,
        },
    }
}

/// The toy model's weights: `embed [V,H]`, `w1 [H,H]` (a linear, `y = x·w1ᵀ`), `w2 [H,H]`
/// (used as `x·w2`), `head [V,H]` stored bf16.
pub fn weights() -> Vec<(&'static str, Vec<usize>, Vec<f32>, Elem)> {
    let f = |n: usize, seed: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 0.8) + 0.001 * i as f32)
            .collect()
    };
    vec![
        ("embed", vec![V, H], f(V * H, 0.1), Elem::F32),
        ("w1", vec![H, H], f(H * H, 1.3), Elem::F32),
        ("w2", vec![H, H], f(H * H, 2.9), Elem::F32),
        ("head", vec![V, H], f(V * H, 4.2), Elem::Bf16),
    ]
}

fn v(buf: Buffer) -> View {
    View::of(buf)
}

fn out(name: &str) -> Buffer {
    Buffer::Output(name.into())
}

pub fn launch(kernel: &str, grid: Expr, views: Vec<View>, ints: Vec<Expr>) -> Step {
    Step::Launch {
        kernel: kernel.into(),
        grid,
        views,
        ints,
    }
}

pub fn mat(view: View, rs: Expr, cs: Expr) -> Matrix {
    Matrix {
        view,
        row_stride: rs,
        col_stride: cs,
    }
}

/// The toy model as program `name` (see the module comment).
pub fn program(name: ProgramName) -> Program {
    let (rows, tokens) = match name {
        ProgramName::Decode => (e(1), "token"),
        _ => (Expr::T, "tokens"),
    };
    let h = e(H);
    let last_row = rows.plus(Expr::k(-1)).times(H as i64);
    let logit_rows = match name {
        ProgramName::Prefill => rows,
        _ => e(1),
    };
    let head = match name {
        ProgramName::Decode => launch(
            "head",
            e(V),
            vec![v(Buffer::Slot(2)), v(Buffer::Weight(3)), v(out("logits"))],
            vec![],
        ),
        _ => {
            let a = match name {
                ProgramName::PrefillLast => View::at(Buffer::Slot(2), last_row),
                _ => v(Buffer::Slot(2)),
            };
            Step::Gemm {
                m: logit_rows,
                n: e(V),
                k: h,
                a: mat(a, h, e(1)),
                b: mat(v(Buffer::Weight(3)), e(1), h),
                c: mat(v(out("logits")), e(V), e(1)),
                accumulate: false,
            }
        }
    };
    let steps = vec![
        launch(
            "embed",
            rows,
            vec![
                v(Buffer::Input(tokens.into())),
                v(Buffer::Weight(0)),
                v(Buffer::Slot(0)),
            ],
            vec![],
        ),
        Step::Gemm {
            m: rows,
            n: h,
            k: h,
            a: mat(v(Buffer::Slot(0)), h, e(1)),
            b: mat(v(Buffer::Weight(1)), e(1), h),
            c: mat(v(Buffer::Slot(1)), h, e(1)),
            accumulate: false,
        },
        Step::Gemm {
            m: rows,
            n: h,
            k: h,
            a: mat(v(Buffer::Slot(0)), h, e(1)),
            b: mat(v(Buffer::Weight(2)), h, e(1)),
            c: mat(v(Buffer::Slot(1)), h, e(1)),
            accumulate: true,
        },
        launch(
            "add",
            rows,
            vec![
                v(Buffer::Slot(1)),
                v(Buffer::Slot(0)),
                v(Buffer::Scratch(0)),
            ],
            vec![],
        ),
        launch(
            "row_scale",
            rows,
            vec![v(Buffer::Scratch(0)), v(Buffer::Slot(2))],
            vec![Expr::POS],
        ),
        launch(
            "add_row",
            e(1),
            vec![
                v(out("conv.0")),
                View::at(Buffer::Slot(2), last_row),
                v(out("conv.0")),
            ],
            vec![],
        ),
        launch(
            "kv_write",
            rows,
            vec![v(Buffer::Slot(2)), v(out("k.0"))],
            vec![Expr::POS, Expr::C],
        ),
        launch(
            "row_scale",
            rows,
            vec![
                v(Buffer::Slot(2)),
                View::at(out("v.0"), Expr::POS.times(H as i64)),
            ],
            vec![e(1)],
        ),
        head,
    ];
    Program {
        name,
        steps,
        slots: vec![
            vec![rows.times(H as i64)],
            // Two candidates: the runtime sizes a slot by the largest.
            vec![rows.times(H as i64), e(1)],
            vec![rows.times(H as i64)],
        ],
        scratch: vec![rows.times(H as i64)],
        outputs: vec![
            ("logits".into(), vec![logit_rows, e(V)]),
            ("conv.0".into(), vec![e(1), h]),
            ("k.0".into(), vec![e(1), Expr::C, h]),
            ("v.0".into(), vec![e(1), Expr::C, h]),
        ],
    }
}

pub fn programs() -> Vec<Program> {
    ProgramName::ALL.into_iter().map(program).collect()
}

pub fn parts(kernels: Vec<Kernel>) -> ManifestParts {
    ManifestParts {
        zambac_version: "0.1.0-test".into(),
        model: model(),
        source: serde_json::json!({ "toy": { "vocab": V, "hidden": H } }),
        kernels,
        programs: programs(),
        // The toy's C kernels are compiled for the baseline every x86-64 CPU runs.
        host_target: Some(TargetCpu {
            cpu: "x86-64".into(),
            features: "+sse,+sse2".into(),
        }),
        build: serde_json::json!({}),
    }
}
