//! `zambac explore`: the parameter and KV-cache counts of the released models (HF's own
//! numbers), of their TOML versions, and of variants counted by hand from spec §7.

mod common;

use common::*;
use serde_json::Value;

fn explore_json(args: &[&str]) -> Value {
    let mut a = vec!["explore"];
    a.extend_from_slice(args);
    a.push("--json");
    let out = zambac(&a);
    assert!(out.status.success(), "{:?}: {}", args, stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(root().join("../shared/configs/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn released_configs_match_hf_counts() {
    for (name, want) in expected() {
        let cfg = root()
            .join("../shared/configs")
            .join(&name)
            .join("config.json");
        let got = explore_json(&[cfg.to_str().unwrap()]);
        assert_eq!(got["params"], want["params"], "{name} params");
        assert_eq!(
            got["kv_cache_elems_per_token"], want["kv_cache_elems_per_token"],
            "{name} KV"
        );
    }
}

#[test]
fn toml_versions_give_the_same_counts() {
    for (name, want) in expected() {
        let toml = root().join("examples").join(format!("{name}.toml"));
        let got = explore_json(&[toml.to_str().unwrap()]);
        assert_eq!(got["params"], want["params"], "{name}.toml params");
        assert_eq!(
            got["kv_cache_elems_per_token"], want["kv_cache_elems_per_token"],
            "{name}.toml KV"
        );
    }
}

/// A Zamba2 shape, counted with the formulas of spec §7.1 and §7.2.
struct Shape {
    v: u64,
    h: u64,
    layers: u64,
    hybrids: u64,
    blocks: u64,
    d_state: u64,
    heads: u64,
    groups: u64,
    attn_heads: u64,
    kv_heads: u64,
    attn_rank: u64,
    mlp_rank: u64,
    concat: bool,
}

impl Shape {
    fn params(&self) -> u64 {
        let (h, di) = (self.h, 2 * self.h);
        let conv = di + 2 * self.groups * self.d_state;
        let mamba =
            (di + conv + self.heads) * h + conv * 4 + conv + 3 * self.heads + di + h * di + h;
        let a = if self.concat { 2 * h } else { h };
        let hd = a / self.attn_heads;
        let (q, kv) = (self.attn_heads * hd, self.kv_heads * hd);
        let f = 4 * h;
        let block = a + q * a + 2 * kv * a + h * q + h + 2 * f * h + h * f;
        let attn_adapters = self.attn_rank * (a * 3 + q + 2 * kv);
        let mlp_adapters = self.mlp_rank * (h + 2 * f);
        self.layers * mamba
            + self.hybrids * (h * h + attn_adapters + mlp_adapters)
            + self.blocks * block
            + self.v * h
            + h
    }

    fn kv_per_token(&self) -> u64 {
        let a = if self.concat { 2 * self.h } else { self.h };
        self.hybrids * 2 * self.kv_heads * (a / self.attn_heads)
    }
}

/// Zamba2-1.2B's shape (spec §7.1), the base of the variants.
fn base_1_2b() -> Shape {
    Shape {
        v: 32000,
        h: 2048,
        layers: 38,
        hybrids: 6,
        blocks: 1,
        d_state: 128,
        heads: 64,
        groups: 1,
        attn_heads: 32,
        kv_heads: 32,
        attn_rank: 128,
        mlp_rank: 128,
        concat: true,
    }
}

#[test]
fn hand_formula_reproduces_the_spec_count() {
    assert_eq!(base_1_2b().params(), 1_215_064_704);
    assert_eq!(base_1_2b().kv_per_token(), 49_152);
}

/// Sweeps over the 1.2B config, each checked against the formula.
#[test]
fn sweep_variants_match_hand_counts() {
    let cfg = root().join("examples/zamba2-1.2b.toml");
    let cases: Vec<(&str, Shape)> = vec![
        // Every 4 layers from layer 5: 5, 9, …, 37 → 9 hybrid layers.
        (
            "shared.every=4",
            Shape {
                hybrids: 9,
                ..base_1_2b()
            },
        ),
        (
            "shared.blocks=2",
            Shape {
                blocks: 2,
                ..base_1_2b()
            },
        ),
        (
            "mamba.d_state=64",
            Shape {
                d_state: 64,
                ..base_1_2b()
            },
        ),
        (
            "adapter_rank=32",
            Shape {
                attn_rank: 32,
                mlp_rank: 32,
                ..base_1_2b()
            },
        ),
        (
            "shared.concat_embeddings=false",
            Shape {
                concat: false,
                ..base_1_2b()
            },
        ),
    ];
    for (sweep, shape) in cases {
        let got = explore_json(&[cfg.to_str().unwrap(), "--sweep", sweep]);
        let v = &got["sweep"][0];
        assert_eq!(v["params"].as_u64().unwrap(), shape.params(), "{sweep}");
        assert_eq!(
            v["kv_cache_elems_per_token"].as_u64().unwrap(),
            shape.kv_per_token(),
            "{sweep}"
        );
    }
}

#[test]
fn gqa_variant_example_matches_hand_count() {
    // variant-2.7b-gqa8: the 2.7B shape with 8 KV heads (and hence no attention adapters).
    let got = explore_json(&[root()
        .join("examples/variant-2.7b-gqa8.toml")
        .to_str()
        .unwrap()]);
    let shape = Shape {
        v: 32000,
        h: 2560,
        layers: 54,
        hybrids: 9,
        blocks: 2,
        d_state: 64,
        heads: 80,
        groups: 1,
        attn_heads: 32,
        kv_heads: 8,
        attn_rank: 0,
        mlp_rank: 128,
        concat: true,
    };
    assert_eq!(got["params"].as_u64().unwrap(), shape.params());
    assert_eq!(
        got["kv_cache_elems_per_token"].as_u64().unwrap(),
        shape.kv_per_token()
    );
}

#[test]
fn sweep_grid_csv_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("sweep.csv");
    let svg = tmp.path().join("kv.svg");
    let cfg = root().join("examples/zamba2-1.2b.toml");
    let out = zambac(&[
        "explore",
        cfg.to_str().unwrap(),
        "--context",
        "4096,16k",
        "--sweep",
        "shared.every=3,6",
        "--sweep",
        "shared.blocks=1,2",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("shared.every=3 shared.blocks=2"), "{table}");
    // Base + 4 variants, 2 contexts each, plus the header.
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), 1 + 5 * 2, "{rows}");
    assert!(rows.lines().any(|l| l.contains("16384")));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("<svg") && plot.contains("transformer"));
}

#[test]
fn explore_reports_kv_reduction_against_a_transformer() {
    let got = explore_json(&[
        root().join("examples/zamba2-1.2b.toml").to_str().unwrap(),
        "--context",
        "4096",
    ]);
    // 38 attention layers × 2 × 32 heads × 64 dims for the same width and depth.
    assert_eq!(
        got["transformer"]["kv_cache_elems_per_token"]
            .as_u64()
            .unwrap(),
        38 * 2 * 32 * 64
    );
    let c = &got["contexts"][0];
    assert_eq!(c["kv_cache_bytes"].as_u64().unwrap(), 4 * 49_152 * 4096);
    // Decode reads every weight once, except that the shared block (109,058,048 params)
    // streams again at each of its 5 further invocations and the tied embedding is read
    // in full by the head plus one row (2048) by the lookup.
    let read = 1_215_064_704u64 + 5 * 109_058_048 + 2048;
    assert_eq!(got["decode_weight_elems_read"].as_u64().unwrap(), read);
    // H100 roofline: decode moves those bf16 weights, the state twice and the KV cache.
    let bytes = 2.0 * read as f64
        + 2.0 * got["recurrent_state_bytes"].as_f64().unwrap()
        + c["kv_cache_bytes"].as_f64().unwrap();
    let want = bytes / 3.35e12;
    assert!((c["h100_decode_s"].as_f64().unwrap() - want).abs() < 1e-9);
}

#[test]
fn bad_explore_options_exit_2() {
    let cfg = root().join("examples/tiny.toml");
    for args in [
        vec!["--context", "lots"],
        vec!["--sweep", "shared.evry=3"],
        vec!["--sweep", "shared.every"],
        vec!["--sweep", "shared.every=0"],
    ] {
        let mut a = vec!["explore", cfg.to_str().unwrap()];
        a.extend(args.iter());
        let out = zambac(&a);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
}

/// `--measure` builds and runs every variant of a spacing sweep that spans attention in
/// every layer to every sixth, then the pure Mamba end (`shared.blocks=0`): each variant is
/// measured; the KV cache + state the engine allocates is what the estimate says; sparser
/// attention needs less of it; later variants take their kernels from the compile cache;
/// an invalid corner of the grid is a row with its reason; CSV and the plot carry the
/// measurements.
#[test]
fn measured_sweep_from_every_layer_to_no_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let (csv, svg) = (tmp.path().join("m.csv"), tmp.path().join("m.svg"));
    let tiny = root().join("examples/tiny.toml");
    let out = zambac(&[
        "explore",
        tiny.to_str().unwrap(),
        "--sweep",
        "shared.every=1,3,6,0",
        "--measure",
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
        "--context",
        "512",
        "--json",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let sweep = v["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 4);
    assert!(
        sweep[3]["error"].as_str().unwrap().contains("shared.every"),
        "{}",
        sweep[3]
    );
    let mut kv = Vec::new();
    for (i, s) in sweep[..3].iter().enumerate() {
        let m = &s["measured"];
        assert!(m["decode_tok_per_s"].as_f64().unwrap() > 0.0, "{s}");
        assert!(m["prefill_s"].as_f64().unwrap() > 0.0);
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(
            m["kv_and_state_bytes"], m["estimate"]["kv_and_state_bytes"],
            "{s}"
        );
        // Variants after the first share its kernels (the first may find a cold cache).
        if i > 0 {
            assert!(m["kernels_from_cache"].as_u64().unwrap() > 0, "{s}");
        }
        kv.push(m["kv_and_state_bytes"].as_u64().unwrap());
    }
    assert!(
        kv[0] > kv[1] && kv[1] > kv[2],
        "KV + state falls with sparser attention: {kv:?}"
    );
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert!(
        rows.lines()
            .next()
            .unwrap()
            .contains("measured_decode_tok_per_s")
    );
    assert_eq!(rows.lines().count(), 1 + 5, "{rows}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.contains("measured") && plot.contains("estimate"),
        "{plot}"
    );

    let ssm = zambac(&[
        "explore",
        tiny.to_str().unwrap(),
        "--sweep",
        "shared.blocks=0",
        "--measure",
        "--prompt-len",
        "8",
        "--new-tokens",
        "4",
        "--context",
        "512",
        "--json",
    ]);
    assert!(ssm.status.success(), "{}", stderr(&ssm));
    let v: Value = serde_json::from_str(&stdout(&ssm)).unwrap();
    let pure = &v["sweep"][0];
    assert_eq!(pure["kv_cache_elems_per_token"], 0, "{pure}");
    assert_eq!(pure["hybrid_layers"], serde_json::json!([]));
    let m = &pure["measured"];
    assert_eq!(
        m["kv_and_state_bytes"].as_u64().unwrap(),
        pure["recurrent_state_bytes"].as_u64().unwrap()
    );
    assert!(m["decode_tok_per_s"].as_f64().unwrap() > 0.0);
}

/// `--batch` scales the estimated cache and state, not the weights; measured, the batch's
/// sequences decode together.
#[test]
fn batched_estimates_scale_the_cache_but_not_the_weights() {
    let tiny = root().join("examples/tiny.toml");
    let one = explore_json(&[tiny.to_str().unwrap(), "--context", "1024"]);
    let four = explore_json(&[tiny.to_str().unwrap(), "--context", "1024", "--batch", "4"]);
    let (c1, c4) = (&one["contexts"][0], &four["contexts"][0]);
    assert_eq!(four["sequences"], 4);
    assert_eq!(
        c4["kv_cache_bytes"].as_u64().unwrap(),
        4 * c1["kv_cache_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        four["recurrent_state_bytes"].as_u64().unwrap(),
        4 * one["recurrent_state_bytes"].as_u64().unwrap()
    );
    let per_seq = c1["kv_cache_bytes"].as_f64().unwrap()
        + 2.0 * one["recurrent_state_bytes"].as_f64().unwrap();
    let weights = c1["decode_bytes_per_token"].as_f64().unwrap() - per_seq;
    let want = weights + 4.0 * per_seq;
    assert!((c4["decode_bytes_per_token"].as_f64().unwrap() - want).abs() < 1.0);
    // Measured with two sequences decoded together: their memory is twice one's.
    let measured = |batch: &str| {
        let v = explore_json(&[
            tiny.to_str().unwrap(),
            "--context",
            "1024",
            "--measure",
            "--prompt-len",
            "8",
            "--new-tokens",
            "4",
            "--batch",
            batch,
        ]);
        v["measured"].clone()
    };
    let (m1, m2) = (measured("1"), measured("2"));
    let bytes = |m: &Value| m["kv_and_state_bytes"].as_u64().unwrap();
    assert_eq!(bytes(&m2), 2 * bytes(&m1));
    assert_eq!(bytes(&m2["estimate"]), 2 * bytes(&m1["estimate"]));
    assert_eq!(
        m2["kv_and_state_bytes"],
        m2["estimate"]["kv_and_state_bytes"]
    );
    assert!(m2["decode_tok_per_s"].as_f64().unwrap() > 0.0);
}
