//! Loading real checkpoint layouts: bf16 and f16 weights, sharded checkpoints, untied
//! checkpoints with per-layer block copies — and every kind of broken checkpoint failing
//! with exit code 2 and a message naming the file and the tensor.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use safetensors::tensor::{Dtype, TensorView};
use zambac_weights::Checkpoint;

/// A checkpoint being edited: tensor name → (dtype, shape, little-endian bytes).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn read_fixture(name: &str) -> Tensors {
    let ck = Checkpoint::open(&fixture(name)).unwrap();
    ck.names()
        .map(|n| {
            let e = ck.entry(n).unwrap();
            (
                n.to_string(),
                (e.dtype, e.shape.clone(), ck.bytes(n).unwrap().to_vec()),
            )
        })
        .collect()
}

fn write_file(path: &Path, t: &Tensors) {
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A new checkpoint directory with the fixture's config (optionally edited) and `t`.
fn write_checkpoint(
    fixture_name: &str,
    t: &Tensors,
    edit_config: impl Fn(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(fixture_name).join("config.json")).unwrap(),
    )
    .unwrap();
    edit_config(&mut cfg);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    write_file(&dir.path().join("model.safetensors"), t);
    dir
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn from_f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs prompt 2 of the fixture on `dir`, returning the dumped prefill logits.
fn logits(dir: &Path, fixture_name: &str) -> zambac_runtime::Tensor {
    let prompt = prompts(&fixture(fixture_name))[2].clone();
    let tokens = prompt
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let dump = dir.join("dump.safetensors");
    let out = zambac(&[
        "run",
        dir.to_str().unwrap(),
        "--tokens",
        &tokens,
        "--max-new-tokens",
        "0",
        "--dump-logits",
        dump.to_str().unwrap(),
        // Loading is what is tested: bf16 products would round the activations too.
        "--bf16-products",
        "off",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    tensor(&Checkpoint::open_file(&dump).unwrap(), "logits")
}

fn argmax(r: &[f32]) -> usize {
    zambac_runtime::sampling::argmax(r)
}

fn hf_logits(fixture_name: &str) -> zambac_runtime::Tensor {
    tensor(
        &Checkpoint::open_file(&fixture(fixture_name).join("expected.safetensors")).unwrap(),
        "logits_2",
    )
}

/// Converts every tensor to a 16-bit type.
fn to_half(t: &Tensors, dt: Dtype) -> Tensors {
    t.iter()
        .map(|(n, (_, s, b))| {
            let bytes = f32s(b)
                .into_iter()
                .flat_map(|x| match dt {
                    Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes(),
                    _ => half::f16::from_f32(x).to_le_bytes(),
                })
                .collect();
            (n.clone(), (dt, s.clone(), bytes))
        })
        .collect()
}

/// Rounds every tensor through a 16-bit type and back to f32.
fn rounded_f32(t: &Tensors, dt: Dtype) -> Tensors {
    t.iter()
        .map(|(n, (_, s, b))| {
            let v: Vec<f32> = f32s(b)
                .into_iter()
                .map(|x| match dt {
                    Dtype::BF16 => half::bf16::from_f32(x).to_f32(),
                    _ => half::f16::from_f32(x).to_f32(),
                })
                .collect();
            (n.clone(), (Dtype::F32, s.clone(), from_f32s(&v)))
        })
        .collect()
}

#[test]
fn bf16_and_f16_checkpoints_load_exactly_and_agree_at_half_precision() {
    // (dtype, max mean |Δlogit|, min argmax agreement): rounding every weight of this
    // small random model to bf16 moves logits by ~0.07 on average (measured), f16 by
    // about 1/8 of that.
    for (dt, tol, agreement) in [(Dtype::BF16, 0.1f32, 0.9), (Dtype::F16, 0.015, 0.97)] {
        let t = read_fixture("zamba2-tiny");
        let half_dir = write_checkpoint("zamba2-tiny", &to_half(&t, dt), |_| {});
        let exact_dir = write_checkpoint("zamba2-tiny", &rounded_f32(&t, dt), |_| {});
        let half = logits(half_dir.path(), "zamba2-tiny");
        // 16-bit weights are widened exactly: same logits as f32 weights holding the
        // same rounded values.
        assert_eq!(
            half,
            logits(exact_dir.path(), "zamba2-tiny"),
            "{dt:?} upcast is not exact"
        );
        let hf = hf_logits("zamba2-tiny");
        let d = half.max_abs_diff(&hf);
        let mean = half
            .data
            .iter()
            .zip(&hf.data)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / hf.data.len() as f32;
        let agree = (0..hf.rows())
            .filter(|&r| argmax(half.row(r)) == argmax(hf.row(r)))
            .count();
        eprintln!("{dt:?}: max {d} mean {mean} argmax {agree}/{}", hf.rows());
        assert!(mean < tol, "{dt:?}: mean |Δlogit| {mean} (max {d})");
        assert!(
            agree as f64 >= agreement * hf.rows() as f64,
            "{dt:?}: argmax agrees on {agree}/{}",
            hf.rows()
        );
    }
}

#[test]
fn sharded_checkpoint_gives_identical_logits() {
    let t = read_fixture("zamba2-tiny");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut shards: Vec<Tensors> = vec![BTreeMap::new(), BTreeMap::new(), BTreeMap::new()];
    let mut map = serde_json::Map::new();
    for (i, (n, v)) in t.iter().enumerate() {
        shards[i % 3].insert(n.clone(), v.clone());
        map.insert(
            n.clone(),
            format!("model-{:05}-of-00003.safetensors", i % 3 + 1).into(),
        );
    }
    for (i, s) in shards.iter().enumerate() {
        write_file(
            &dir.path()
                .join(format!("model-{:05}-of-00003.safetensors", i + 1)),
            s,
        );
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let single = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_eq!(
        logits(dir.path(), "zamba2-tiny"),
        logits(single.path(), "zamba2-tiny")
    );
}

/// transformers 5.23 writes untied models with a copy of the shared block under every
/// hybrid layer and a separate lm_head (spec §4.3 rule 6): the copies are one block.
#[test]
fn untied_checkpoint_with_block_copies_loads_as_one_block() {
    let mut t = read_fixture("zamba2-tiny");
    // Block 0 is stored under layer 1; layer 6 also invokes it.
    let copies: Vec<(String, _)> = t
        .iter()
        .filter(|(n, _)| n.starts_with("model.layers.1.shared_transformer."))
        .map(|(n, v)| (n.replace("layers.1.", "layers.6."), v.clone()))
        .collect();
    assert!(!copies.is_empty());
    t.extend(copies);
    let embed = t["model.embed_tokens.weight"].clone();
    t.insert("lm_head.weight".into(), embed);
    let dir = write_checkpoint("zamba2-tiny", &t, |c| {
        c["tie_word_embeddings"] = false.into()
    });
    let d = logits(dir.path(), "zamba2-tiny").max_abs_diff(&hf_logits("zamba2-tiny"));
    assert!(d <= 2e-4, "{d}");
    // The explorer counts the architecture: one block, plus the separate head.
    let out = zambac(&["explore", dir.path().to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let tied = zambac(&[
        "explore",
        fixture("zamba2-tiny").to_str().unwrap(),
        "--json",
    ]);
    let tied: serde_json::Value = serde_json::from_str(&stdout(&tied)).unwrap();
    assert_eq!(
        v["params"].as_u64().unwrap(),
        tied["params"].as_u64().unwrap() + 256 * 48
    );
}

#[test]
fn unowned_adapter_slots_are_ignored_with_a_warning() {
    let mut t = read_fixture("zamba2-tiny");
    // Block 0 (layer 1) owns slots 0 and 2; slot 1 belongs to block 1.
    let v =
        t["model.layers.4.shared_transformer.feed_forward.gate_up_proj_adapter_list.1.0.weight"]
            .clone();
    t.insert(
        "model.layers.1.shared_transformer.feed_forward.gate_up_proj_adapter_list.1.0.weight"
            .into(),
        v,
    );
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    let out = zambac(&[
        "run",
        dir.path().to_str().unwrap(),
        "--tokens",
        "5,6,7",
        "--max-new-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("adapter"), "{}", stderr(&out));
}

/// Runs a broken checkpoint and checks exit code 2 and that the message names `needles`.
fn assert_rejected(dir: &Path, needles: &[&str]) {
    let out = zambac(&["run", dir.to_str().unwrap(), "--tokens", "5,6,7"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit code 2, got {:?}: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "message should name `{n}`: {err}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let mut t = read_fixture("zamba2-tiny");
    t.remove("model.layers.2.mamba.D");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_rejected(dir.path(), &["model.layers.2.mamba.D", "missing"]);
}

#[test]
fn wrong_shape_is_named() {
    let mut t = read_fixture("zamba2-tiny");
    let e = t.get_mut("model.layers.0.mamba.out_proj.weight").unwrap();
    e.1 = vec![96, 48];
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_rejected(
        dir.path(),
        &[
            "model.safetensors",
            "model.layers.0.mamba.out_proj.weight",
            "[48, 96]",
            "[96, 48]",
        ],
    );
}

#[test]
fn wrong_dtype_is_named() {
    let mut t = read_fixture("zamba2-tiny");
    t.get_mut("model.final_layernorm.weight").unwrap().0 = Dtype::I32;
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_rejected(
        dir.path(),
        &["model.safetensors", "model.final_layernorm.weight", "dtype"],
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let mut t = read_fixture("zamba2-tiny");
    let v = t["model.layers.0.mamba.D"].clone();
    t.insert("model.layers.0.mamba.E".into(), v);
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_rejected(
        dir.path(),
        &["model.safetensors", "model.layers.0.mamba.E", "unexpected"],
    );
}

#[test]
fn differing_block_copies_are_refused() {
    let mut t = read_fixture("zamba2-tiny");
    let (d, s, b) = t["model.layers.1.shared_transformer.pre_ff_layernorm.weight"].clone();
    let mut v = f32s(&b);
    v[0] += 1.0;
    t.insert(
        "model.layers.6.shared_transformer.pre_ff_layernorm.weight".into(),
        (d, s, from_f32s(&v)),
    );
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    assert_rejected(
        dir.path(),
        &[
            "model.layers.6.shared_transformer.pre_ff_layernorm.weight",
            "differs",
        ],
    );
}

#[test]
fn truncated_file_is_rejected() {
    let t = read_fixture("zamba2-tiny");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    assert_rejected(dir.path(), &["model.safetensors"]);
}

#[test]
fn bad_header_is_rejected() {
    let t = read_fixture("zamba2-tiny");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    assert_rejected(dir.path(), &["model.safetensors", "header"]);
}

#[test]
fn offsets_outside_the_file_are_rejected() {
    let t = read_fixture("zamba2-tiny");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&header).unwrap();
    let e = &mut v["model.final_layernorm.weight"]["data_offsets"];
    let end = e[1].as_u64().unwrap();
    *e = serde_json::json!([end + 1_000_000, end + 1_000_192]);
    let mut h = serde_json::to_string(&v).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    assert_rejected(dir.path(), &["model.safetensors"]);
}

#[test]
fn missing_shard_is_named() {
    let t = read_fixture("zamba2-tiny");
    let dir = write_checkpoint("zamba2-tiny", &t, |_| {});
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (i, n) in t.keys().enumerate() {
        let f = if i == 0 {
            "model-00002-of-00002.safetensors"
        } else {
            "model-00001-of-00002.safetensors"
        };
        map.insert(n.clone(), f.into());
    }
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let first = t.keys().next().unwrap().clone();
    assert_rejected(
        dir.path(),
        &["model-00002-of-00002.safetensors", &first, "missing"],
    );
}
