//! Shared fixtures for the cpu-backend and `zambac-run` tests (and the cpu benchmark): the
//! contract's toy engine (one definition, in `runtime/engine/tests/common/toy.rs`), a
//! kernel library for it compiled from C at test time with the `zk_` ABI, and the same
//! model in plain Rust.

#![allow(dead_code)]

#[path = "../../engine/tests/common/toy.rs"]
mod toy;

use std::path::Path;
use std::process::Command;

pub use toy::*;
use zambac_engine::{Companions, EngineWriter, Kernel, ManifestParts, StateRole, bf16_bits};

/// Kernels for the toy's kernel table, each following the calling convention of the kind it
/// is declared as (`zambac_engine::signature`): the same views in the same order and
/// element types, the same integer arguments, constant sizes compiled in (`H`). Each
/// touches only its grid range `[begin, end)`.
pub const KERNELS_C: &str = r#"
#include <stdint.h>
#include <string.h>
typedef void *const *bufs_t;

/* Embedding { hidden: H, elem: f32 }: views [tokens i64 [rows], table [V,H], out [rows,H]];
   grid rows */
void zk_embed(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const int64_t *tok = b[0]; const float *table = b[1]; float *out = b[2];
    (void)ints;
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < H; j++) out[r * H + j] = table[tok[r] * H + j];
}

/* Binary { Add, n: H, b_rows: true }: views [a [rows,H], b [rows,H], out [rows,H]] */
void zk_add(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *x = b[0], *y = b[1]; float *out = b[2];
    (void)ints;
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < H; j++) out[r * H + j] = x[r * H + j] + y[r * H + j];
}

/* Binary { Add, n: H, b_rows: false }: views [a [rows,H], b [H], out [rows,H]] */
void zk_add_row(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *x = b[0], *y = b[1]; float *out = b[2];
    (void)ints;
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < H; j++) out[r * H + j] = x[r * H + j] + y[j];
}

/* Epilogue { n: H, bias: false, op: None }: views [y [rows,H], out [rows,H]]; ints [pos0].
   The toy's own arithmetic: out[r] = y[r] * (1 + (pos0 + r) / 2). */
void zk_row_scale(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *y = b[0]; float *out = b[1];
    int64_t pos0 = ints[0];
    for (int64_t r = begin; r < end; r++) {
        float s = 1.0f + 0.5f * (float)(pos0 + r);
        for (int64_t j = 0; j < H; j++) out[r * H + j] = y[r * H + j] * s;
    }
}

/* KvWrite { heads: 1, head_dim: H }: views [k [rows,H], cache [1,C,H]]; ints [pos0, C]:
   cache[0, pos0 + r, :] = k[r] */
void zk_kv_write(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *k = b[0]; float *cache = b[1];
    int64_t pos0 = ints[0];
    for (int64_t r = begin; r < end; r++)
        for (int64_t j = 0; j < H; j++) cache[(pos0 + r) * H + j] = k[r * H + j];
}

/* Gemv { k: H, rows: [V], elem: bf16 }: views [x [H], W [V,H] bf16, y [V]]; grid V:
   y[i] = sum_k x[k] W[i,k] */
void zk_head(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    const float *x = b[0]; const uint16_t *w = b[1]; float *y = b[2];
    (void)ints;
    for (int64_t i = begin; i < end; i++) {
        float acc = 0.0f;
        for (int64_t k = 0; k < H; k++) {
            uint32_t bits = (uint32_t)w[i * H + k] << 16;
            float wk;
            memcpy(&wk, &bits, sizeof wk);
            acc += x[k] * wk;
        }
        y[i] = acc;
    }
}

/* Epilogue { n: 2, bias: false, op: None }: views [y [grid,2], out [grid,2]]; ints [pos0].
   Reads nothing: out[i] = (i * 3 + 1, begin of the chunk that ran i), so the runtime's
   splitting of the grid is visible. */
void zk_mark(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    float *out = b[1];
    (void)ints;
    for (int64_t i = begin; i < end; i++) {
        out[2 * i] = (float)(i * 3 + 1);
        out[2 * i + 1] = (float)begin;
    }
}

/* Epilogue { n: 1, bias: false, op: None }: views [y, out]; ints [pos0]. Nothing, to time
   a launch. */
void zk_empty(bufs_t b, const int64_t *ints, int64_t begin, int64_t end) {
    (void)b; (void)ints; (void)begin; (void)end;
}
"#;

/// Compiles [`KERNELS_C`] (plus `extra`) into a shared library; returns its bytes.
pub fn build_host_so(dir: &Path, extra: &str) -> Vec<u8> {
    let src = dir.join("kernels.c");
    let out = dir.join("kernels.so");
    std::fs::write(&src, format!("#define H {H}\n{KERNELS_C}\n{extra}")).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(status.success(), "cc failed");
    std::fs::read(out).unwrap()
}

/// Writes the toy's weights and `parts` to `out`, with `host_so` as the kernel library.
pub fn write_parts(out: &Path, host_so: &[u8], parts: ManifestParts) {
    let mut w = EngineWriter::create(out).unwrap();
    for (name, shape, data, elem) in weights() {
        w.add_weight(name, &shape, &data, elem).unwrap();
    }
    let files = Companions {
        host: host_so,
        gpu: None,
        tokenizer: None,
    };
    w.finish(parts, files).unwrap();
}

/// Writes the toy engine (weights, the compiled kernels) to `out`.
pub fn write_engine(out: &Path, host_so: &[u8]) {
    write_parts(out, host_so, parts(kernels()));
}

/// The toy's kernel table with `symbol` renamed to `to`, and its launches with it.
pub fn renamed(symbol: &str, to: &str) -> ManifestParts {
    let rename = |s: &mut String| {
        if s == symbol {
            *s = to.to_string();
        }
    };
    let mut kernels: Vec<Kernel> = kernels();
    kernels.iter_mut().for_each(|k| rename(&mut k.symbol));
    let mut p = parts(kernels);
    for prog in &mut p.programs {
        for step in &mut prog.steps {
            if let zambac_engine::Step::Launch { kernel, .. } = step {
                rename(kernel);
            }
        }
    }
    p
}

pub fn conv0() -> StateRole {
    StateRole::Conv { layer: 0 }
}

pub fn k0() -> StateRole {
    StateRole::Key { layer: 0 }
}

pub fn v0() -> StateRole {
    StateRole::Value { layer: 0 }
}

/// The toy model in plain Rust: logits of every position, and the states.
pub struct Reference {
    pub conv: Vec<f32>,
    /// `[C, H]`.
    pub k: Vec<f32>,
    /// `[C, H]`.
    pub v: Vec<f32>,
}

impl Reference {
    pub fn new(capacity: usize) -> Reference {
        Reference {
            conv: vec![0.0; H],
            k: vec![0.0; capacity * H],
            v: vec![0.0; capacity * H],
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
            self.k[(pos + r) * H..][..H].copy_from_slice(&h);
            let v_scale = 1.0 + 0.5 * (1.0 + r as f32);
            for (v, hj) in self.v[(pos + r) * H..][..H].iter_mut().zip(&h) {
                *v = hj * v_scale;
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

/// The toy engine, built with the C kernels, in a temporary directory that lives as long
/// as the fixture.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
}

pub fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let host = build_host_so(tmp.path(), "");
    let dir = tmp.path().join("toy.engine");
    write_engine(&dir, &host);
    Fixture { tmp, dir }
}
