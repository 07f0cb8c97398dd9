//! Shared fixtures for the engine and cpu-backend tests (and the cpu benchmark): a tiny
//! kernel library compiled from C at test time with the `zk_` ABI, a toy model that
//! mixes launches and GEMMs over every buffer kind, and the same model in plain Rust.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use zambac_frontend::ModelSpec;
use zambac_ir::program::{
    BinOp, Buffer, EpilogueOp, Expr, Kernel, KernelKind, Matrix, Program, Step, View,
};
use zambac_ir::types::Elem;
use zambac_runtime::engine::{Dtype, EngineWriter, ManifestParts, bf16_bits};

/// Kernels with the generated-code ABI. Each touches only its grid range.
pub const KERNELS_C: &str = r#"
#include <stdint.h>
typedef void *const *bufs_t;

/* views [tokens i64, table [V,n], out [rows,n]]; ints [n] */
void zk_embed(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const int64_t *tok = b[0]; const float *table = b[1]; float *out = b[2];
    int64_t n = ints[0];
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < n; j++) out[r * n + j] = table[tok[r] * n + j];
}

/* views [a [rows,n], b [rows|1, n], out]; ints [n, b_row_stride] */
void zk_add(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *x = b[0], *y = b[1]; float *out = b[2];
    int64_t n = ints[0], ys = ints[1];
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < n; j++) out[r * n + j] = x[r * n + j] + y[r * ys + j];
}

/* views [x [rows,n], out]; ints [n, pos0]: out[r] = x[r] * (1 + (pos0 + r) / 2) */
void zk_row_scale(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *x = b[0]; float *out = b[1];
    int64_t n = ints[0], pos0 = ints[1];
    for (int64_t r = begin; r < end; r++) {
        float s = 1.0f + 0.5f * (float)(pos0 + r);
        for (int64_t j = 0; j < n; j++) out[r * n + j] = x[r * n + j] * s;
    }
}

/* views [out [grid, 2]]: out[i] = (i * 3 + 1, begin of the chunk that ran i) */
void zk_mark(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    float *out = b[0];
    (void)ints;
    for (int64_t i = begin; i < end; i++) {
        out[2 * i] = (float)(i * 3 + 1);
        out[2 * i + 1] = (float)begin;
    }
}

/* views []; ints []: nothing, to time a launch */
void zk_empty(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    (void)b; (void)ints; (void)begin; (void)end;
}
"#;

/// Compiles [`KERNELS_C`] (plus `extra`) into a shared library; returns its bytes.
pub fn build_host_so(dir: &Path, extra: &str) -> Vec<u8> {
    let src = dir.join("kernels.c");
    let out = dir.join("kernels.so");
    std::fs::write(&src, format!("{KERNELS_C}\n{extra}")).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed");
    std::fs::read(out).unwrap()
}

pub const V: usize = 8;
pub const H: usize = 4;

pub fn spec() -> ModelSpec {
    let src = include_str!("../../../examples/tiny.toml");
    let mut s = zambac_frontend::parse_toml(src, "tiny.toml").expect("tiny.toml parses");
    s.vocab_size = V;
    s
}

fn kernel(symbol: &str) -> Kernel {
    let kind = match symbol {
        "embed" => KernelKind::Embedding {
            hidden: H,
            elem: Elem::F32,
        },
        "add" => KernelKind::Binary {
            op: BinOp::Add,
            n: H,
            b_rows: true,
        },
        _ => KernelKind::Epilogue {
            n: H,
            bias: false,
            op: EpilogueOp::None,
        },
    };
    Kernel {
        symbol: symbol.into(),
        kind,
    }
}

pub fn kernels() -> Vec<Kernel> {
    ["embed", "add", "row_scale", "mark"]
        .into_iter()
        .map(kernel)
        .collect()
}

/// The toy model's weights: `embed [V,H]`, `w1 [H,H]` (a linear, `y = x·w1ᵀ`), `w2 [H,H]`
/// (used as `x·w2`), `head [V,H]` stored bf16.
pub fn weights() -> Vec<(&'static str, Vec<usize>, Vec<f32>, Dtype)> {
    let f = |n: usize, seed: f32| -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + seed).sin() * 0.8) + 0.001 * i as f32)
            .collect()
    };
    vec![
        ("embed", vec![V, H], f(V * H, 0.1), Dtype::F32),
        ("w1", vec![H, H], f(H * H, 1.3), Dtype::F32),
        ("w2", vec![H, H], f(H * H, 2.9), Dtype::F32),
        ("head", vec![V, H], f(V * H, 4.2), Dtype::Bf16),
    ]
}

fn v(buf: Buffer) -> View {
    View::of(buf)
}

fn launch(kernel: &str, grid: Expr, views: Vec<View>, ints: Vec<Expr>) -> Step {
    Step::Launch {
        kernel: kernel.into(),
        grid,
        views,
        ints,
    }
}

fn mat(view: View, rs: Expr, cs: Expr) -> Matrix {
    Matrix {
        view,
        row_stride: rs,
        col_stride: cs,
    }
}

/// The toy model as a program, `rows` = T (prefill) or 1 (decode):
///
/// ```text
/// x = embed[tokens]                       (launch)
/// y = x · w1ᵀ ; y += x · w2               (GEMM, GEMM accumulate, strided B)
/// h = (y + x) * (1 + (pos + r)/2)         (launches; ints use pos)
/// conv.0 += h[rows-1]                     (a state updated in place)
/// k.0[0, pos + r, :] = h[r]               (a cache of capacity C)
/// logits = h · headᵀ                      (GEMM with a bf16 B); prefill_last: last row
/// ```
pub fn program(name: &str) -> Program {
    let (rows, tokens) = match name {
        "decode" => (Expr::k(1), "token"),
        _ => (Expr::T, "tokens"),
    };
    let h = Expr::k(H as i64);
    let last = rows.plus(Expr::k(-1)).times(H as i64);
    let head_rows = if name == "prefill_last" {
        Expr::k(1)
    } else {
        rows
    };
    let head_a = if name == "prefill_last" {
        View::at(Buffer::Slot(2), last)
    } else {
        v(Buffer::Slot(2))
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
            vec![h],
        ),
        Step::Gemm {
            m: rows,
            n: h,
            k: h,
            a: mat(v(Buffer::Slot(0)), h, Expr::k(1)),
            b: mat(v(Buffer::Weight(1)), Expr::k(1), h),
            c: mat(v(Buffer::Slot(1)), h, Expr::k(1)),
            accumulate: false,
        },
        Step::Gemm {
            m: rows,
            n: h,
            k: h,
            a: mat(v(Buffer::Slot(0)), h, Expr::k(1)),
            b: mat(v(Buffer::Weight(2)), h, Expr::k(1)),
            c: mat(v(Buffer::Slot(1)), h, Expr::k(1)),
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
            vec![h, h],
        ),
        launch(
            "row_scale",
            rows,
            vec![v(Buffer::Scratch(0)), v(Buffer::Slot(2))],
            vec![h, Expr::POS],
        ),
        launch(
            "add",
            Expr::k(1),
            vec![
                v(Buffer::Output("conv.0".into())),
                View::at(Buffer::Slot(2), last),
                v(Buffer::Output("conv.0".into())),
            ],
            vec![h, Expr::k(0)],
        ),
        launch(
            "row_scale",
            rows,
            vec![
                v(Buffer::Slot(2)),
                View::at(Buffer::Output("k.0".into()), Expr::POS.times(H as i64)),
            ],
            vec![h, Expr::k(1)],
        ),
        Step::Gemm {
            m: head_rows,
            n: Expr::k(V as i64),
            k: h,
            a: mat(head_a, h, Expr::k(1)),
            b: mat(v(Buffer::Weight(3)), Expr::k(1), h),
            c: mat(
                v(Buffer::Output("logits".into())),
                Expr::k(V as i64),
                Expr::k(1),
            ),
            accumulate: false,
        },
    ];
    Program {
        name: name.into(),
        steps,
        slots: vec![
            vec![rows.times(H as i64)],
            vec![rows.times(H as i64), Expr::k(1)],
            vec![rows.times(H as i64)],
        ],
        scratch: vec![rows.times(H as i64)],
        outputs: vec![
            ("logits".into(), vec![head_rows, Expr::k(V as i64)]),
            ("conv.0".into(), vec![Expr::k(1), h]),
            ("k.0".into(), vec![Expr::k(1), Expr::C, h]),
        ],
    }
}

pub fn parts(kernels: Vec<Kernel>) -> ManifestParts {
    ManifestParts {
        zambac_version: "0.1.0-test".into(),
        spec: spec(),
        kernels,
        programs: ["prefill", "prefill_last", "decode"]
            .into_iter()
            .map(program)
            .collect(),
        build: serde_json::json!({ "target_cpu": "test", "features": "" }),
    }
}

/// Writes the toy engine (weights, the compiled kernels) to `out`.
pub fn write_engine(out: &Path, host_so: &[u8]) {
    let mut w = EngineWriter::create(out).unwrap();
    for (name, shape, data, dtype) in weights() {
        w.add_weight(name, &shape, &data, dtype).unwrap();
    }
    w.finish(parts(kernels()), host_so, None).unwrap();
}

/// The toy model in plain Rust: logits `[T, V]` of every position, then the states.
pub struct Reference {
    pub conv: Vec<f32>,
    /// `[C, H]`.
    pub k: Vec<f32>,
}

impl Reference {
    pub fn new(capacity: usize) -> Reference {
        Reference {
            conv: vec![0.0; H],
            k: vec![0.0; capacity * H],
        }
    }

    /// Runs `tokens` starting at `pos`; returns logits rows.
    pub fn run(&mut self, tokens: &[i64], pos: usize) -> Vec<Vec<f32>> {
        let ws = weights();
        let (embed, w1, w2) = (&ws[0].2, &ws[1].2, &ws[2].2);
        let head: Vec<f32> = ws[3]
            .2
            .iter()
            .map(|&x| f32::from_bits(u32::from(bf16_bits(x)) << 16))
            .collect();
        let mut out = Vec::new();
        let mut h_last = vec![0.0; H];
        for (r, &t) in tokens.iter().enumerate() {
            let x = &embed[t as usize * H..][..H];
            let scale = 1.0 + 0.5 * (pos + r) as f32;
            let h: Vec<f32> = (0..H)
                .map(|j| {
                    let y1: f32 = (0..H).map(|i| x[i] * w1[j * H + i]).sum();
                    let y2: f32 = (0..H).map(|i| x[i] * w2[i * H + j]).sum();
                    (y1 + y2 + x[j]) * scale
                })
                .collect();
            let k_scale = 1.0 + 0.5 * (1.0 + r as f32);
            let row = &mut self.k[(pos + r) * H..][..H];
            for (k, hj) in row.iter_mut().zip(&h) {
                *k = hj * k_scale;
            }
            out.push(
                (0..V)
                    .map(|o| (0..H).map(|i| h[i] * head[o * H + i]).sum())
                    .collect(),
            );
            h_last = h;
        }
        for (c, hj) in self.conv.iter_mut().zip(&h_last) {
            *c += hj;
        }
        out
    }
}

pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}
