//! Random small Zamba-family models for property tests, written as TOML descriptions so
//! the frontend validates them like any user input.

use proptest::prelude::*;

/// The knobs a property test varies.
#[derive(Clone, Debug)]
pub struct RandomModel {
    pub version: u32,
    pub hidden: usize,
    pub layers: usize,
    /// Hybrid layer mask.
    pub hybrid: Vec<bool>,
    pub blocks: usize,
    pub mamba_heads: usize,
    pub groups: usize,
    pub d_state: usize,
    pub d_conv: usize,
    pub dt_rank: usize,
    pub attn_heads: usize,
    pub kv_heads: usize,
    pub rope: bool,
    pub concat: bool,
    pub attn_rank: usize,
    pub mlp_rank: usize,
    pub intermediate: usize,
    pub activation: &'static str,
    pub tie: bool,
    pub proj_bias: bool,
    pub conv_bias: bool,
    pub dt_clamp: &'static str,
}

impl RandomModel {
    /// The description as TOML.
    pub fn toml(&self) -> String {
        let hybrid: Vec<String> = (0..self.layers)
            .filter(|&l| self.hybrid[l])
            .map(|l| l.to_string())
            .collect();
        let mut s = format!(
            "[model]\nname = \"random\"\nvocab_size = 61\nhidden_size = {}\nnum_layers = {}\ntie_embeddings = {}\ndtype = \"f32\"\n\n",
            self.hidden, self.layers, self.tie
        );
        s += &format!(
            "[mamba]\nversion = {}\nd_state = {}\nd_conv = {}\nheads = {}\nproj_bias = {}\ndt_clamp = \"{}\"\n",
            self.version,
            self.d_state,
            self.d_conv,
            self.mamba_heads,
            self.proj_bias,
            self.dt_clamp
        );
        if self.version == 2 {
            s += &format!("groups = {}\nchunk_size = 4\n", self.groups);
        } else {
            s += &format!(
                "dt_rank = {}\nconv_bias = {}\n",
                self.dt_rank, self.conv_bias
            );
        }
        s += &format!(
            "\n[shared]\nblocks = {}\nlayers = [{}]\nconcat_embeddings = {}\nheads = {}\nkv_heads = {}\nrope = {}\nintermediate_size = {}\nactivation = \"{}\"\n",
            self.blocks,
            hybrid.join(", "),
            self.concat,
            self.attn_heads,
            self.kv_heads,
            self.rope,
            self.intermediate,
            self.activation
        );
        if self.version == 2 {
            s += &format!(
                "attention_adapter_rank = {}\nmlp_adapter_rank = {}\n",
                self.attn_rank, self.mlp_rank
            );
        }
        s
    }

    /// The validated spec.
    pub fn spec(&self) -> zambac_frontend::ModelSpec {
        zambac_frontend::parse_toml(&self.toml(), "random.toml")
            .unwrap_or_else(|e| panic!("{}\n{}", e.render(), self.toml()))
    }
}

/// Small random models; `clamps` lists the allowed `dt_clamp` values.
pub fn random_model(clamps: &'static [&'static str]) -> impl Strategy<Value = RandomModel> {
    (
        (
            1u32..=2,
            prop::sample::select(vec![16usize, 24, 32]),
            1usize..=6,
        ),
        prop::collection::vec(any::<bool>(), 6),
        (
            1usize..=3,
            prop::sample::select(vec![1usize, 2, 4]),
            0usize..3,
        ),
        (
            prop::sample::select(vec![4usize, 8]),
            2usize..=4,
            1usize..=3,
        ),
        (
            prop::sample::select(vec![1usize, 2, 4]),
            0usize..3,
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::sample::select(vec![0usize, 2, 4]),
            prop::sample::select(vec![0usize, 4]),
        ),
        (
            prop::sample::select(vec![16usize, 40]),
            prop::sample::select(vec!["gelu", "gelu-tanh", "silu"]),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(clamps.to_vec()),
        ),
    )
        .prop_map(
            |(
                (version, hidden, layers),
                mask,
                (blocks, mh, g),
                (d_state, d_conv, dt_rank),
                (ah, kvsel, rope, concat),
                (ar, mr),
                (inter, act),
                (tie, pb, cb, clamp),
            )| {
                let hybrid: Vec<bool> = mask[..layers].to_vec();
                let n_hybrid = hybrid.iter().filter(|&&h| h).count();
                let groups = if version == 2 {
                    [1, 2, 4][g].min(mh)
                } else {
                    1
                };
                let groups = if mh % groups == 0 { groups } else { 1 };
                // kv heads: all, half, or one (GQA / MQA).
                let kv = match kvsel {
                    0 => ah,
                    1 => (ah / 2).max(1),
                    _ => 1,
                };
                RandomModel {
                    version,
                    hidden,
                    layers,
                    hybrid,
                    blocks: blocks.min(n_hybrid.max(1)),
                    mamba_heads: mh,
                    groups,
                    d_state,
                    d_conv,
                    dt_rank,
                    attn_heads: ah,
                    kv_heads: kv,
                    rope,
                    concat,
                    // Attention adapters are only defined without GQA (spec §6.4).
                    attn_rank: if version == 2 && kv == ah { ar } else { 0 },
                    mlp_rank: if version == 2 { mr } else { 0 },
                    intermediate: inter,
                    activation: act,
                    tie,
                    proj_bias: pb,
                    conv_bias: cb,
                    dt_clamp: clamp,
                }
            },
        )
}
