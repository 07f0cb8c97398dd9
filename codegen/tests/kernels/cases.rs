//! One kernel of every kind and variant, for the tests that treat kernels as a set (GPU
//! assembly, determinism, dumps, compile time).

use zambac_engine::Elem;
use zambac_engine::{ActKind, BinOp, EpilogueOp, Kernel, KernelKind as K};

/// Every `KernelKind` with its variants, at small but irregular sizes.
pub fn all() -> Vec<Kernel> {
    let kinds = vec![
        (
            "embedding_f32",
            K::Embedding {
                hidden: 37,
                elem: Elem::F32,
            },
        ),
        (
            "embedding_bf16",
            K::Embedding {
                hidden: 64,
                elem: Elem::Bf16,
            },
        ),
        (
            "rms_norm",
            K::RmsNorm {
                d: 96,
                groups: 1,
                eps: 1e-5,
            },
        ),
        (
            "rms_norm_groups",
            K::RmsNorm {
                d: 100,
                groups: 4,
                eps: 1e-6,
            },
        ),
        ("add_rms_norm", K::AddRmsNorm { d: 77, eps: 1e-5 }),
        (
            "concat_rms_norm",
            K::ConcatRmsNorm {
                da: 40,
                db: 29,
                eps: 1e-5,
            },
        ),
        (
            "concat_rms_scale",
            K::ConcatRmsScale {
                da: 40,
                db: 29,
                eps: 1e-5,
            },
        ),
        ("row_scale", K::RowScale { n: 45 }),
        (
            "add",
            K::Binary {
                op: BinOp::Add,
                n: 45,
                b_rows: true,
            },
        ),
        (
            "mul_bcast",
            K::Binary {
                op: BinOp::Mul,
                n: 45,
                b_rows: false,
            },
        ),
        (
            "gemv_f32",
            K::Gemv {
                k: 203,
                rows: vec![37],
                elem: Elem::F32,
                accumulate: false,
                row_stride: None,
            },
        ),
        (
            "gemv_bf16_parts",
            K::Gemv {
                k: 96,
                rows: vec![13, 6],
                elem: Elem::Bf16,
                accumulate: true,
                row_stride: None,
            },
        ),
        (
            "gemv_window",
            K::Gemv {
                k: 64,
                rows: vec![21],
                elem: Elem::Bf16,
                accumulate: true,
                row_stride: Some(160),
            },
        ),
        (
            "gemv_f16",
            K::Gemv {
                k: 40,
                rows: vec![9],
                elem: Elem::F16,
                accumulate: false,
                row_stride: None,
            },
        ),
        (
            "epi_none",
            K::Epilogue {
                n: 30,
                bias: true,
                op: EpilogueOp::None,
            },
        ),
        (
            "epi_silu",
            K::Epilogue {
                n: 30,
                bias: false,
                op: EpilogueOp::Act(ActKind::Silu),
            },
        ),
        (
            "epi_gelu",
            K::Epilogue {
                n: 30,
                bias: true,
                op: EpilogueOp::Act(ActKind::Gelu),
            },
        ),
        (
            "epi_gelu_tanh",
            K::Epilogue {
                n: 30,
                bias: false,
                op: EpilogueOp::Act(ActKind::GeluTanh),
            },
        ),
        (
            "epi_softplus",
            K::Epilogue {
                n: 30,
                bias: false,
                op: EpilogueOp::Act(ActKind::Softplus),
            },
        ),
        (
            "epi_gate",
            K::Epilogue {
                n: 42,
                bias: true,
                op: EpilogueOp::Gate(ActKind::Gelu),
            },
        ),
        (
            "epi_mul",
            K::Epilogue {
                n: 30,
                bias: true,
                op: EpilogueOp::Mul,
            },
        ),
        (
            "epi_rope",
            K::Epilogue {
                n: 48,
                bias: false,
                op: EpilogueOp::Rope {
                    heads: 2,
                    head_dim: 24,
                    theta: 10000.0,
                    scaling: None,
                },
            },
        ),
        (
            "kv_write",
            K::KvWrite {
                heads: 3,
                head_dim: 20,
                cache: Elem::F32,
            },
        ),
        (
            "attention_prefill",
            K::AttentionPrefill {
                heads: 4,
                kv_heads: 2,
                head_dim: 24,
                scale: 0.25,
                kv: Elem::F32,
                products: Elem::F32,
            },
        ),
        (
            "attention",
            K::AttentionDecode {
                heads: 4,
                kv_heads: 2,
                head_dim: 24,
                scale: 0.25,
                kv: Elem::F32,
                splits: 3,
            },
        ),
        (
            "attention_combine",
            K::AttentionCombine {
                heads: 4,
                head_dim: 24,
                splits: 3,
            },
        ),
        (
            "kv_write_bf16",
            K::KvWrite {
                heads: 3,
                head_dim: 20,
                cache: Elem::Bf16,
            },
        ),
        (
            "attention_prefill_bf16",
            K::AttentionPrefill {
                heads: 4,
                kv_heads: 2,
                head_dim: 24,
                scale: 0.25,
                kv: Elem::Bf16,
                products: Elem::F32,
            },
        ),
        (
            "attention_bf16",
            K::AttentionDecode {
                heads: 4,
                kv_heads: 2,
                head_dim: 24,
                scale: 0.25,
                kv: Elem::Bf16,
                splits: 3,
            },
        ),
        (
            "mamba2_conv",
            K::Mamba2Conv {
                width: 90,
                di: 16,
                cd: 33,
                k: 4,
                step: false,
            },
        ),
        (
            "mamba2_conv_step",
            K::Mamba2Conv {
                width: 90,
                di: 16,
                cd: 33,
                k: 4,
                step: true,
            },
        ),
        (
            "mamba2_scan",
            K::Mamba2Scan {
                width: 62,
                heads: 4,
                head_dim: 4,
                groups: 2,
                state: 5,
                dt_min: Some(0.01),
                step: false,
                ssm: Elem::F32,
            },
        ),
        (
            "mamba2_scan_step",
            K::Mamba2Scan {
                width: 62,
                heads: 4,
                head_dim: 4,
                groups: 2,
                state: 5,
                dt_min: None,
                step: true,
                ssm: Elem::F32,
            },
        ),
        (
            "mamba2_chunk_states",
            K::Mamba2ChunkScan {
                width: 62,
                heads: 4,
                head_dim: 4,
                groups: 2,
                state: 5,
                dt_min: Some(0.01),
                chunks: 3,
                min_len: 2,
                outputs: false,
            },
        ),
        (
            "mamba2_chunk_outputs",
            K::Mamba2ChunkScan {
                width: 62,
                heads: 4,
                head_dim: 4,
                groups: 2,
                state: 5,
                dt_min: None,
                chunks: 3,
                min_len: 2,
                outputs: true,
            },
        ),
        (
            "mamba2_chunk_pass",
            K::Mamba2ChunkPass {
                heads: 4,
                head_dim: 4,
                state: 5,
                chunks: 3,
                min_len: 2,
                ssm: Elem::Bf16,
            },
        ),
        (
            "gate_norm",
            K::Mamba2GateNorm {
                width: 70,
                di: 32,
                groups: 2,
                eps: 1e-5,
                conv_shift: None,
            },
        ),
        (
            "gate_norm_conv_shift",
            K::Mamba2GateNorm {
                width: 70,
                di: 32,
                groups: 2,
                eps: 1e-5,
                conv_shift: Some(zambac_engine::ConvShift { channels: 33, k: 4 }),
            },
        ),
        (
            "mamba2_conv_scan",
            K::Mamba2ConvScan {
                width: 62,
                heads: 4,
                head_dim: 4,
                groups: 2,
                state: 5,
                k: 4,
                dt_min: Some(0.01),
                ssm: Elem::F32,
            },
        ),
        (
            "mamba1_conv",
            K::Mamba1Conv {
                di: 19,
                k: 4,
                bias: true,
                step: false,
            },
        ),
        (
            "mamba1_conv_step",
            K::Mamba1Conv {
                di: 19,
                k: 3,
                bias: false,
                step: true,
            },
        ),
        (
            "mamba1_scan",
            K::Mamba1Scan {
                heads: 2,
                head_dim: 6,
                state: 16,
                dt_rank: 3,
                dt_min: None,
                step: false,
                ssm: Elem::F32,
            },
        ),
        (
            "mamba1_scan_step",
            K::Mamba1Scan {
                heads: 2,
                head_dim: 6,
                state: 11,
                dt_rank: 3,
                dt_min: Some(0.001),
                step: true,
                ssm: Elem::F32,
            },
        ),
    ];
    kinds
        .into_iter()
        .map(|(symbol, kind)| Kernel {
            symbol: symbol.to_string(),
            kind,
        })
        .collect()
}

/// The kernel kinds at the sizes of released models (Zamba2-1.2B and -7B, Zamba-7B-v1), where
/// register pressure on the GPU is highest.
pub fn released_sizes() -> Vec<Kernel> {
    let mut kinds = Vec::new();
    // (hidden, d_inner, mamba heads, state, attention heads, head_dim)
    for (h, di, heads, n, ah, hd) in [
        (2048, 4096, 64, 64, 32, 128),
        (3584, 7168, 112, 64, 32, 224),
    ] {
        let cd = di + 2 * 2 * n;
        let width = di + cd + heads;
        kinds.extend([
            K::Embedding {
                hidden: h,
                elem: Elem::Bf16,
            },
            K::ConcatRmsNorm {
                da: h,
                db: h,
                eps: 1e-5,
            },
            K::AddRmsNorm { d: h, eps: 1e-5 },
            K::Gemv {
                k: 2 * h,
                rows: vec![2 * h; 3],
                elem: Elem::Bf16,
                accumulate: false,
                row_stride: None,
            },
            K::Gemv {
                k: h,
                rows: vec![width],
                elem: Elem::F32,
                accumulate: true,
                row_stride: None,
            },
            K::Epilogue {
                n: ah * hd,
                bias: false,
                op: EpilogueOp::Rope {
                    heads: ah,
                    head_dim: hd,
                    theta: 10000.0,
                    scaling: None,
                },
            },
            K::Epilogue {
                n: 8 * h,
                bias: false,
                op: EpilogueOp::Gate(ActKind::Gelu),
            },
            K::KvWrite {
                heads: ah,
                head_dim: hd,
                cache: Elem::F32,
            },
            K::AttentionDecode {
                heads: ah,
                kv_heads: ah,
                head_dim: hd,
                scale: (hd as f64 / 2.0).powf(-0.5),
                kv: Elem::F32,
                splits: 8,
            },
            K::AttentionCombine {
                heads: ah,
                head_dim: hd,
                splits: 8,
            },
            K::AttentionPrefill {
                heads: ah,
                kv_heads: ah,
                head_dim: hd,
                scale: (hd as f64 / 2.0).powf(-0.5),
                kv: Elem::F32,
                products: Elem::F32,
            },
            K::Mamba2Conv {
                width,
                di,
                cd,
                k: 4,
                step: true,
            },
            K::Mamba2Scan {
                width,
                heads,
                head_dim: 64,
                groups: 2,
                state: n,
                dt_min: None,
                step: true,
                ssm: Elem::F32,
            },
            K::Mamba2Scan {
                width,
                heads,
                head_dim: 64,
                groups: 2,
                state: n,
                dt_min: Some(0.001),
                step: false,
                ssm: Elem::F32,
            },
            K::Mamba2ChunkScan {
                width,
                heads,
                head_dim: 64,
                groups: 2,
                state: n,
                dt_min: Some(0.001),
                chunks: 32,
                min_len: 32,
                outputs: false,
            },
            K::Mamba2ChunkScan {
                width,
                heads,
                head_dim: 64,
                groups: 2,
                state: n,
                dt_min: None,
                chunks: 32,
                min_len: 32,
                outputs: true,
            },
            K::Mamba2ChunkPass {
                heads,
                head_dim: 64,
                state: n,
                chunks: 32,
                min_len: 32,
                ssm: Elem::F32,
            },
            K::Mamba2GateNorm {
                width,
                di,
                groups: 2,
                eps: 1e-5,
                conv_shift: None,
            },
            K::Mamba2GateNorm {
                width,
                di,
                groups: 2,
                eps: 1e-5,
                conv_shift: Some(zambac_engine::ConvShift { channels: cd, k: 4 }),
            },
            K::Mamba2ConvScan {
                width,
                heads,
                head_dim: 64,
                groups: 2,
                state: n,
                k: 4,
                dt_min: None,
                ssm: Elem::F32,
            },
        ]);
    }
    kinds.extend([
        K::Mamba1Conv {
            di: 7424,
            k: 4,
            bias: true,
            step: false,
        },
        K::Mamba1Scan {
            heads: 2,
            head_dim: 3712,
            state: 16,
            dt_rank: 232,
            dt_min: None,
            step: false,
            ssm: Elem::F32,
        },
        K::Mamba1Scan {
            heads: 2,
            head_dim: 3712,
            state: 16,
            dt_rank: 232,
            dt_min: None,
            step: true,
            ssm: Elem::F32,
        },
    ]);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Kernel {
            symbol: format!("released_{i}"),
            kind,
        })
        .collect()
}
