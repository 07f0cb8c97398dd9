//! Hand-built model specs for IR tests (independent of the frontend's parsers).

use zambac_frontend::*;

/// A tiny Zamba2 model shaped like the `zamba2-tiny` fixture: 7 layers, hybrids at
/// 1, 4, 6, two blocks, RoPE, attention and MLP adapters.
pub fn tiny_zamba2() -> ModelSpec {
    let layers = [0, 1, 0, 0, 1, 0, 1]
        .iter()
        .map(|&k| {
            if k == 1 {
                LayerKind::Hybrid
            } else {
                LayerKind::Mamba
            }
        })
        .collect();
    ModelSpec {
        name: "tiny2".into(),
        family: Family::Zamba2,
        vocab_size: 256,
        hidden_size: 48,
        layers,
        mamba: MambaSpec {
            version: 2,
            d_state: 16,
            d_conv: 4,
            expand: 2,
            d_inner: 96,
            n_heads: 3,
            head_dim: 32,
            n_groups: 1,
            chunk_size: 16,
            dt_rank: 0,
            conv_bias: true,
            proj_bias: false,
            time_step_min: 0.001,
            dt_clamp: DtClamp::Hf5,
        },
        shared: SharedSpec {
            num_blocks: 2,
            invocation_blocks: vec![0, 1, 0],
            concat_embeddings: true,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 24,
            rope_theta: Some(10000.0),
            rope_scaling: None,
            attention_scale: 1.0 / (12f64).sqrt(),
            attn_adapter_rank: 8,
            mlp_adapter_rank: 8,
            intermediate_size: 80,
            activation: Activation::Gelu,
        },
        norm_eps: 1e-5,
        tie_embeddings: true,
        dtype: DType::F32,
    }
}

/// A tiny Zamba v1 model shaped like the `zamba1-tiny` fixture.
pub fn tiny_zamba1() -> ModelSpec {
    let layers = [0, 0, 1, 0, 0, 1, 0]
        .iter()
        .map(|&k| {
            if k == 1 {
                LayerKind::Hybrid
            } else {
                LayerKind::Mamba
            }
        })
        .collect();
    ModelSpec {
        name: "tiny1".into(),
        family: Family::Zamba,
        vocab_size: 256,
        hidden_size: 48,
        layers,
        mamba: MambaSpec {
            version: 1,
            d_state: 8,
            d_conv: 4,
            expand: 2,
            d_inner: 96,
            n_heads: 2,
            head_dim: 48,
            n_groups: 1,
            chunk_size: 256,
            dt_rank: 3,
            conv_bias: true,
            proj_bias: false,
            time_step_min: 0.001,
            dt_clamp: DtClamp::None,
        },
        shared: SharedSpec {
            num_blocks: 1,
            invocation_blocks: vec![0, 0],
            concat_embeddings: true,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 24,
            rope_theta: None,
            rope_scaling: None,
            attention_scale: 1.0 / (12f64).sqrt(),
            attn_adapter_rank: 0,
            mlp_adapter_rank: 0,
            intermediate_size: 96,
            activation: Activation::Gelu,
        },
        norm_eps: 1e-5,
        tie_embeddings: true,
        dtype: DType::F32,
    }
}
