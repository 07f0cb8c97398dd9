//! The malformed-input corpus beyond model descriptions (those are `tests/malformed/`, run
//! by `cli_errors.rs`): damaged checkpoints (safetensors headers that lie, offsets outside
//! the file or overlapping, wrong types, index files and shards), config.json values no
//! model has, damaged engines, damaged snapshots, command-line values and sizes no machine
//! holds. Each case derives a broken input from a valid one, runs the binary a user would
//! run, and asserts exit code 2, no panic, and a message that names the culprit — the file,
//! the key or tensor — and what was wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixture, stderr, zambac, zambac_run};

/// A broken input: what to break, what to run on it, what the message must contain.
struct Case<'a> {
    name: &'a str,
    damage: Box<dyn Fn(&Path) + 'a>,
    needles: Vec<String>,
}

fn case<'a>(name: &'a str, damage: impl Fn(&Path) + 'a, needles: &[&str]) -> Case<'a> {
    Case {
        name,
        damage: Box::new(damage),
        needles: needles.iter().map(|s| s.to_string()).collect(),
    }
}

/// Exit code 2, no panic, every needle in the message.
fn assert_refused(name: &str, out: &Output, needles: &[String]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{name}: expected exit code 2, got {:?}: {err}",
        out.status.code()
    );
    assert!(!err.contains("panicked"), "{name}: {err}");
    for n in needles {
        assert!(
            err.contains(n.as_str()),
            "{name}: the message should name `{n}`: {err}"
        );
    }
    // `--nocapture` shows what a user reads.
    eprintln!("{name}: {}", err.lines().next().unwrap_or_default());
}

/// Copies the files of `src` into a fresh directory `dst`.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// Runs every case on its own copy of `valid`, each with `run(dir)`.
fn run_cases(valid: &Path, scratch: &Path, cases: &[Case<'_>], run: impl Fn(&Path) -> Output) {
    for (i, c) in cases.iter().enumerate() {
        let dir = scratch.join(format!("case{i}"));
        copy_dir(valid, &dir);
        (c.damage)(&dir);
        assert_refused(c.name, &run(&dir), &c.needles);
    }
    eprintln!("{} malformed inputs refused", cases.len());
}

// ---------------------------------------------------------------------------------------
// safetensors files

/// The header of a safetensors file, as JSON, and the data after it.
fn split(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from a header (padded to 8 bytes as the format asks) and data.
fn join(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_string(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

/// Rewrites the header of `dir/file` with `edit`.
fn edit_header(dir: &Path, file: &str, edit: impl Fn(&mut serde_json::Value)) {
    let path = dir.join(file);
    let (mut header, data) = split(&std::fs::read(&path).unwrap());
    edit(&mut header);
    std::fs::write(&path, join(&header, &data)).unwrap();
}

fn edit_bytes(path: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

fn edit_json(path: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Replaces `from` by `to` in a text file (exactly once).
fn replace_text(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` in {}",
        path.display()
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Appends an f32 tensor of zeros named `name` to the safetensors file at `path`.
fn add_tensor(path: &Path, name: &str, shape: &[usize]) {
    let (mut header, mut data) = split(&std::fs::read(path).unwrap());
    let start = data.len();
    data.resize(start + shape.iter().product::<usize>() * 4, 0);
    header[name] =
        serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]});
    std::fs::write(path, join(&header, &data)).unwrap();
}

const MODEL: &str = "model.safetensors";
const NORM: &str = "model.final_layernorm.weight";
const EMBED: &str = "model.embed_tokens.weight";

/// Splits the checkpoint in `dir` into two shards with an index, the first tensor in the
/// second shard.
fn shard(dir: &Path) {
    let (header, data) = split(&std::fs::read(dir.join(MODEL)).unwrap());
    let obj = header.as_object().unwrap();
    let (mut one, mut two) = (serde_json::Map::new(), serde_json::Map::new());
    let (mut data_one, mut data_two) = (Vec::new(), Vec::new());
    let mut map = serde_json::Map::new();
    for (i, (name, info)) in obj.iter().filter(|(n, _)| *n != "__metadata__").enumerate() {
        let [a, b] = [0, 1].map(|k| info["data_offsets"][k].as_u64().unwrap() as usize);
        let (target, buf, file) = if i == 0 {
            (&mut two, &mut data_two, "model-00002-of-00002.safetensors")
        } else {
            (&mut one, &mut data_one, "model-00001-of-00002.safetensors")
        };
        let start = buf.len();
        buf.extend_from_slice(&data[a..b]);
        let mut info = info.clone();
        info["data_offsets"] = serde_json::json!([start, buf.len()]);
        target.insert(name.clone(), info);
        map.insert(name.clone(), file.into());
    }
    std::fs::remove_file(dir.join(MODEL)).unwrap();
    let one = join(&serde_json::Value::Object(one), &data_one);
    let two = join(&serde_json::Value::Object(two), &data_two);
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), one).unwrap();
    std::fs::write(dir.join("model-00002-of-00002.safetensors"), two).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// The name of the tensor that [`shard`] puts alone into the second shard.
fn first_tensor() -> String {
    let (header, _) = split(&std::fs::read(fixture("zamba2-tiny").join(MODEL)).unwrap());
    header
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "__metadata__")
        .unwrap()
        .clone()
}

/// Runs a checkpoint directory through the reference interpreter (which reads every
/// tensor, as a build does, without compiling anything).
fn run_checkpoint(dir: &Path) -> Output {
    zambac(&[
        "run",
        dir.to_str().unwrap(),
        "--backend",
        "reference",
        "--tokens",
        "5,6,7",
        "--max-new-tokens",
        "1",
    ])
}

#[test]
fn damaged_checkpoints_are_refused_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = tmp.path().join("valid");
    copy_dir(&fixture("zamba2-tiny"), &valid);
    // The valid checkpoint runs, so each case fails for its damage alone.
    let ok = run_checkpoint(&valid);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let sharded = tmp.path().join("sharded");
    copy_dir(&valid, &sharded);
    shard(&sharded);
    let ok = run_checkpoint(&sharded);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let first = first_tensor();
    let model = |dir: &Path| dir.join(MODEL);
    let cases = vec![
        case(
            "empty file",
            |d| std::fs::write(model(d), b"").unwrap(),
            &[MODEL],
        ),
        case(
            "shorter than its length field",
            |d| std::fs::write(model(d), b"\x10\0\0").unwrap(),
            &[MODEL],
        ),
        case(
            "header length past the end of the file",
            |d| {
                edit_bytes(&model(d), |b| {
                    let past = (b.len() as u64 * 4).to_le_bytes();
                    b[..8].copy_from_slice(&past)
                })
            },
            &[MODEL, "header"],
        ),
        case(
            "absurd header length",
            |d| {
                edit_bytes(&model(d), |b| {
                    b[..8].copy_from_slice(&u64::MAX.to_le_bytes())
                })
            },
            &[MODEL, "header"],
        ),
        case(
            "header is JSON but not an object",
            |d| std::fs::write(model(d), join(&serde_json::json!([1, 2, 3]), &[])).unwrap(),
            &[MODEL, "header"],
        ),
        case(
            "truncated data",
            |d| edit_bytes(&model(d), |b| b.truncate(b.len() - 1000)),
            &[MODEL],
        ),
        case(
            "offsets outside the file",
            |d| {
                edit_header(d, MODEL, |h| {
                    h[NORM]["data_offsets"] = serde_json::json!([10_000_000, 10_000_192])
                })
            },
            &[MODEL],
        ),
        case(
            "overlapping offsets",
            |d| {
                edit_header(d, MODEL, |h| {
                    let e = h[EMBED]["data_offsets"].clone();
                    h[NORM]["data_offsets"] =
                        serde_json::json!([e[0], e[0].as_u64().unwrap() + 192]);
                })
            },
            &[MODEL],
        ),
        case(
            "offsets that end before they start",
            |d| {
                edit_header(d, MODEL, |h| {
                    let e = h[NORM]["data_offsets"].clone();
                    h[NORM]["data_offsets"] = serde_json::json!([e[1], e[0]]);
                })
            },
            &[MODEL],
        ),
        case(
            "a shape whose bytes differ from its offsets",
            |d| edit_header(d, MODEL, |h| h[NORM]["shape"] = serde_json::json!([49])),
            &[MODEL],
        ),
        case(
            "an absurd shape",
            |d| {
                edit_header(d, MODEL, |h| {
                    h[NORM]["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40, 1u64 << 40])
                })
            },
            &[MODEL],
        ),
        case(
            "an unknown dtype",
            |d| edit_header(d, MODEL, |h| h[NORM]["dtype"] = "F9".into()),
            &[MODEL],
        ),
        case(
            "a dtype of the wrong kind",
            |d| edit_header(d, MODEL, |h| h[NORM]["dtype"] = "I32".into()),
            &[MODEL, NORM],
        ),
        case(
            "a shape of the wrong type",
            |d| edit_header(d, MODEL, |h| h[NORM]["shape"] = "48".into()),
            &[MODEL],
        ),
        case(
            "metadata of the wrong type",
            |d| edit_header(d, MODEL, |h| h["__metadata__"] = serde_json::json!(5)),
            &[MODEL],
        ),
        case(
            "the tensor under another name",
            |d| {
                edit_header(d, MODEL, |h| {
                    let v = h.as_object_mut().unwrap().remove(NORM).unwrap();
                    h["model.final_layernorm.weights"] = v;
                })
            },
            &[NORM, "missing"],
        ),
        case(
            "no weights at all",
            |d| std::fs::remove_file(model(d)).unwrap(),
            &["safetensors"],
        ),
    ];
    run_cases(&valid, &tmp.path().join("single"), &cases, run_checkpoint);

    let one = "model-00001-of-00002.safetensors";
    let two = "model-00002-of-00002.safetensors";
    let index = "model.safetensors.index.json";
    let sharded_cases = vec![
        case(
            "a missing shard",
            |d| std::fs::remove_file(d.join(two)).unwrap(),
            &[two, &first],
        ),
        case(
            "a tensor in two shards",
            |d| {
                // Shard one also holds the tensor the index puts in shard two.
                add_tensor(&d.join(one), &first, &[256, 48]);
            },
            &[&first],
        ),
        case(
            "an index naming a shard without the tensor",
            |d| edit_json(&d.join(index), |v| v["weight_map"][NORM] = two.into()),
            &[two, NORM],
        ),
        case(
            "an index naming a file that is not there",
            |d| {
                edit_json(&d.join(index), |v| {
                    v["weight_map"][NORM] = "model-00003-of-00002.safetensors".into()
                })
            },
            &["model-00003-of-00002.safetensors"],
        ),
        case(
            "an index naming a path outside the checkpoint",
            |d| {
                edit_json(&d.join(index), |v| {
                    v["weight_map"][NORM] = "../model.safetensors".into()
                })
            },
            &[index, "../model.safetensors"],
        ),
        case(
            "an index without a weight map",
            |d| {
                edit_json(&d.join(index), |v| {
                    v.as_object_mut().unwrap().retain(|k, _| k != "weight_map")
                })
            },
            &[index, "weight_map"],
        ),
        case(
            "an index whose weight map is not an object",
            |d| edit_json(&d.join(index), |v| v["weight_map"] = serde_json::json!([1])),
            &[index, "weight_map"],
        ),
        case(
            "an index that is not JSON",
            |d| std::fs::write(d.join(index), b"{\"weight_map\": {").unwrap(),
            &[index],
        ),
        case(
            "a shard holding a tensor the index does not map",
            |d| add_tensor(&d.join(one), "model.layers.0.mamba.E", &[48]),
            &[one, "model.layers.0.mamba.E"],
        ),
    ];
    run_cases(
        &sharded,
        &tmp.path().join("sharded-cases"),
        &sharded_cases,
        run_checkpoint,
    );
}

#[test]
fn config_values_no_model_has_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = tmp.path().join("valid");
    copy_dir(&fixture("zamba2-tiny"), &valid);
    let config = |d: &Path| d.join("config.json");
    let text = std::fs::read_to_string(fixture("zamba2-tiny").join("config.json")).unwrap();
    let eps_line = text
        .lines()
        .find(|l| l.contains("\"rms_norm_eps\""))
        .unwrap()
        .trim()
        .trim_end_matches(',')
        .to_string();
    let eps = |v: &'static str| {
        let from = eps_line.clone();
        move |d: &Path| replace_text(&config(d), &from, &format!("\"rms_norm_eps\": {v}"))
    };
    let cases = vec![
        case(
            "NaN (as Python writes it)",
            eps("NaN"),
            &["config.json", "rms_norm_eps"],
        ),
        case(
            "Infinity",
            eps("Infinity"),
            &["config.json", "rms_norm_eps"],
        ),
        case(
            "a float that overflows to inf",
            eps("1e999"),
            &["config.json", "rms_norm_eps"],
        ),
        case(
            "a negative epsilon",
            eps("-1e-5"),
            &["config.json", "rms_norm_eps"],
        ),
        case(
            "a negative rope_theta",
            |d| {
                edit_json(&config(d), |v| {
                    v["rope_theta"] = serde_json::json!(-10000.0)
                })
            },
            &["config.json", "rope_theta"],
        ),
        case(
            "a rope_scaling of the wrong type",
            |d| {
                edit_json(&config(d), |v| {
                    v["rope_scaling"] = serde_json::json!("yarn")
                })
            },
            &["config.json", "rope_scaling"],
        ),
        case(
            "a yarn factor that is not a number",
            |d| {
                edit_json(&config(d), |v| {
                    v["rope_parameters"] = serde_json::json!({
                        "rope_type": "yarn",
                        "rope_theta": 10000.0,
                        "factor": "four",
                        "original_max_position_embeddings": 16,
                    })
                })
            },
            &["config.json", "rope_parameters.factor"],
        ),
        case(
            "a rope type transformers does not define",
            |d| {
                edit_json(&config(d), |v| {
                    v["rope_parameters"]["rope_type"] = "ntk-by-parts".into()
                })
            },
            &["config.json", "rope_type", "ntk-by-parts"],
        ),
        case(
            "an absurd vocabulary",
            |d| {
                edit_json(&config(d), |v| {
                    v["vocab_size"] = serde_json::json!(1u64 << 62)
                })
            },
            &["config.json", "vocab_size"],
        ),
        case(
            "a fractional layer count",
            |d| {
                edit_json(&config(d), |v| {
                    v["num_hidden_layers"] = serde_json::json!(6.5)
                })
            },
            &["config.json", "num_hidden_layers"],
        ),
        case(
            "a layer list shorter than the layer count",
            |d| {
                edit_json(&config(d), |v| {
                    v["layers_block_type"].as_array_mut().unwrap().pop();
                })
            },
            &["config.json", "layers_block_type"],
        ),
    ];
    run_cases(&valid, &tmp.path().join("cases"), &cases, run_checkpoint);
}

// ---------------------------------------------------------------------------------------
// engines and snapshots

/// Builds the zamba2-tiny fixture into `dir`.
fn build_engine(dir: &Path) {
    build_fixture("zamba2-tiny", dir);
}

fn build_fixture(name: &str, dir: &Path) {
    let out = zambac(&[
        "build",
        fixture(name).to_str().unwrap(),
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn run_engine(dir: &Path) -> Output {
    zambac_run(&[
        "run",
        dir.to_str().unwrap(),
        "--tokens",
        "5,6,7",
        "--max-new-tokens",
        "2",
    ])
}

fn flip_byte(path: &Path, at: impl Fn(usize) -> usize) {
    edit_bytes(path, |b| {
        let i = at(b.len());
        b[i] ^= 0x5a;
    });
}

/// Rewrites `manifest.json` with `edit`.
fn edit_manifest(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    edit_json(&dir.join("manifest.json"), edit);
}

#[test]
fn damaged_engines_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = tmp.path().join("valid.engine");
    build_engine(&valid);
    let ok = run_engine(&valid);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let cases = vec![
        case(
            "a flipped byte in host.so",
            |d| flip_byte(&d.join("host.so"), |n| n / 2),
            &["host.so", "checksum"],
        ),
        case(
            "an empty host.so",
            |d| std::fs::write(d.join("host.so"), b"").unwrap(),
            &["host.so"],
        ),
        case(
            "a flipped byte in the weights",
            |d| flip_byte(&d.join("weights.bin"), |n| n - 5),
            &["weights.bin", "checksum"],
        ),
        case(
            "truncated weights",
            |d| edit_bytes(&d.join("weights.bin"), |b| b.truncate(b.len() - 64)),
            &["weights.bin", "truncated"],
        ),
        case(
            "weights with bytes appended",
            |d| edit_bytes(&d.join("weights.bin"), |b| b.extend([0; 64])),
            &["weights.bin"],
        ),
        case(
            "an empty manifest",
            |d| std::fs::write(d.join("manifest.json"), b"").unwrap(),
            &["manifest.json"],
        ),
        case(
            "a manifest that is a list",
            |d| std::fs::write(d.join("manifest.json"), b"[]").unwrap(),
            &["manifest.json"],
        ),
        case(
            "a format version that is a string",
            |d| edit_manifest(d, |m| m["format_version"] = "5".into()),
            &["manifest.json", "format_version"],
        ),
        case(
            "a weight offset that overlaps the previous weight",
            |d| {
                edit_manifest(d, |m| {
                    m["weights"][1]["offset"] = m["weights"][0]["offset"].clone()
                })
            },
            &["manifest.json"],
        ),
        case(
            "a weight shape that disagrees with its bytes",
            |d| edit_manifest(d, |m| m["weights"][0]["shape"] = serde_json::json!([3, 5])),
            &["manifest.json"],
        ),
        case(
            "a weight of absurd size",
            |d| {
                edit_manifest(d, |m| {
                    m["weights"][0]["bytes"] = serde_json::json!(u64::MAX - 7)
                })
            },
            &["manifest.json"],
        ),
        case(
            "a host library outside the engine",
            |d| edit_manifest(d, |m| m["host"]["file"] = "../host.so".into()),
            &["manifest.json", "../host.so"],
        ),
        case(
            "a state of absurd size",
            |d| {
                edit_manifest(d, |m| {
                    m["model"]["state"][0]["shape"][0] = serde_json::json!({"k": 1u64 << 40})
                })
            },
            &["manifest.json"],
        ),
        case(
            "a negative vocabulary",
            |d| edit_manifest(d, |m| m["model"]["vocab_size"] = serde_json::json!(-4)),
            &["manifest.json", "vocab_size"],
        ),
    ];
    run_cases(&valid, &tmp.path().join("cases"), &cases, run_engine);
    // Not an engine at all: a file, a directory of something else.
    let file = tmp.path().join("file.engine");
    std::fs::write(&file, b"hello").unwrap();
    assert_refused("a file", &run_engine(&file), &[file.display().to_string()]);
    let empty = tmp.path().join("empty.engine");
    std::fs::create_dir(&empty).unwrap();
    assert_refused(
        "an empty directory",
        &run_engine(&empty),
        &["manifest.json".into()],
    );
}

#[test]
fn damaged_snapshots_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("e.engine");
    build_engine(&engine);
    let snap = tmp.path().join("s.state");
    let saved = zambac_run(&[
        "run",
        engine.to_str().unwrap(),
        "--tokens",
        "5,6,7,8",
        "--max-new-tokens",
        "0",
        "--save-state",
        snap.to_str().unwrap(),
    ]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let load = |dir: &Path| {
        zambac_run(&[
            "run",
            engine.to_str().unwrap(),
            "--tokens",
            "9",
            "--max-new-tokens",
            "1",
            "--load-state",
            dir.join("s.state").to_str().unwrap(),
        ])
    };
    let valid = tmp.path().join("valid");
    std::fs::create_dir(&valid).unwrap();
    std::fs::copy(&snap, valid.join("s.state")).unwrap();
    let ok = load(&valid);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let state = |d: &Path| d.join("s.state");
    let meta = |key: &'static str, value: &'static str| {
        move |d: &Path| edit_header(d, "s.state", |h| h["__metadata__"][key] = value.into())
    };
    let cases = vec![
        case(
            "an empty snapshot",
            |d| std::fs::write(state(d), b"").unwrap(),
            &["s.state"],
        ),
        case(
            "a truncated snapshot",
            |d| edit_bytes(&state(d), |b| b.truncate(b.len() - 10)),
            &["s.state"],
        ),
        case(
            "a flipped byte in a state",
            |d| flip_byte(&state(d), |n| n - 2),
            &["s.state", "checksum"],
        ),
        case(
            "another format",
            meta("format", "pickle"),
            &["s.state", "not a zambac state snapshot"],
        ),
        case(
            "another version",
            meta("version", "99"),
            &["s.state", "version 99"],
        ),
        case(
            "another engine",
            meta("engine", "0123456789abcdef"),
            &["s.state", "another engine"],
        ),
        case(
            "a position that is not a number",
            meta("position", "four"),
            &["s.state", "position"],
        ),
        case(
            "a position the caches do not hold",
            meta("position", "3"),
            &["s.state", "position 3"],
        ),
        case(
            "an absurd position",
            meta("position", "1000000000000000"),
            &["s.state", "position"],
        ),
        case(
            "a missing state tensor",
            |d| {
                edit_header(d, "s.state", |h| {
                    let obj = h.as_object_mut().unwrap();
                    let name = obj.keys().find(|k| k.starts_with("conv")).unwrap().clone();
                    obj.remove(&name);
                })
            },
            &["s.state"],
        ),
    ];
    run_cases(&valid, &tmp.path().join("cases"), &cases, load);
}

// ---------------------------------------------------------------------------------------
// command-line values and sizes

#[test]
fn command_line_values_and_absurd_sizes_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("e.engine");
    build_engine(&engine);
    let e = engine.to_str().unwrap();
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "a token that is not a number",
            vec!["run", e, "--tokens", "5,x"],
            vec!["--tokens", "`x`"],
        ),
        (
            "an empty token item",
            vec!["run", e, "--tokens", "5,,6"],
            vec!["--tokens", "item 2"],
        ),
        (
            "a token outside the vocabulary",
            vec!["run", e, "--tokens", "5,99999"],
            vec!["99999", "vocabulary"],
        ),
        (
            "a negative token",
            vec!["run", e, "--tokens=-3"],
            vec!["-3", "vocabulary"],
        ),
        (
            "a NaN temperature",
            vec!["run", e, "--tokens", "5", "--temperature", "NaN"],
            vec!["--temperature"],
        ),
        (
            "a top-p above one",
            vec!["run", e, "--tokens", "5", "--top-p", "1.5"],
            vec!["--top-p"],
        ),
        (
            "absurd threads",
            vec!["run", e, "--tokens", "5", "--threads", "100000"],
            vec!["--threads"],
        ),
        (
            "new tokens past any context",
            vec![
                "run",
                e,
                "--tokens",
                "5",
                "--max-new-tokens",
                "18446744073709551615",
            ],
            vec!["context"],
        ),
        (
            "new tokens past memory",
            vec![
                "run",
                e,
                "--tokens",
                "5",
                "--max-new-tokens",
                "1000000000000",
            ],
            vec!["needs", "bytes", "KV caches", "available"],
        ),
        (
            "a prompt past memory",
            vec!["bench", e, "--prompt-len", "4000000000000"],
            vec!["needs", "bytes", "workspace", "available"],
        ),
        (
            "a batch past memory",
            vec!["bench", e, "--prompt-len", "512", "--batch", "100000000"],
            vec!["--batch", "fit"],
        ),
        (
            "a zero prefill chunk",
            vec!["run", e, "--tokens", "5", "--prefill-chunk", "0"],
            vec!["--prefill-chunk"],
        ),
        (
            "a missing snapshot",
            vec![
                "run",
                e,
                "--tokens",
                "5",
                "--load-state",
                "/nonexistent/s.state",
            ],
            vec!["/nonexistent/s.state"],
        ),
        (
            "a snapshot into a missing directory",
            vec![
                "run",
                e,
                "--tokens",
                "5",
                "--save-state",
                "/nonexistent/dir/s.state",
            ],
            vec!["/nonexistent/dir/s.state"],
        ),
    ];
    for (name, args, needles) in &cases {
        let needles: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
        assert_refused(name, &zambac_run(args), &needles);
    }
    eprintln!("{} malformed command lines refused", cases.len());
    // The compiler: a model whose weights no disk or memory here holds is refused before
    // anything is generated or written, and no engine directory appears.
    let huge = tmp.path().join("huge.toml");
    std::fs::write(
        &huge,
        std::fs::read_to_string(common::root().join("examples/zamba2-100m.toml"))
            .unwrap()
            .replace("vocab_size = 32000", "vocab_size = 16000000")
            .replace("hidden_size = 768", "hidden_size = 32768")
            .replace("heads = 24 ", "heads = 1024 ")
            .replace("heads = 12 ", "heads = 512 "),
    )
    .unwrap();
    let out_dir = tmp.path().join("huge.engine");
    let build = zambac(&[
        "build",
        huge.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_refused(
        "an engine too large to write",
        &build,
        &["needs".into(), "bytes".into()],
    );
    assert!(!out_dir.exists());
    // Explore answers for it, up to the longest context it costs (2^32 tokens), and
    // refuses longer ones instead of overflowing.
    let explore = zambac(&[
        "explore",
        huge.to_str().unwrap(),
        "--context",
        "4096,4194304k",
    ]);
    assert!(
        explore.status.success(),
        "explore answers for any size: {}",
        stderr(&explore)
    );
    assert!(common::stdout(&explore).contains("4,294,967,296"));
    let too_long = zambac(&[
        "explore",
        huge.to_str().unwrap(),
        "--context",
        "99999999999999999",
    ]);
    assert_refused(
        "a context past 2^32",
        &too_long,
        &["--context".into(), "99999999999999999".into()],
    );
    let reference = zambac(&[
        "run",
        huge.to_str().unwrap(),
        "--backend",
        "reference",
        "--tokens",
        "1",
    ]);
    assert_refused(
        "a model too large to interpret",
        &reference,
        &["needs".into(), "parameters as f32".into()],
    );
}

/// The paths the tests above read exist (a moved fixture fails here, not as a vacuous pass).
#[test]
fn the_inputs_the_corpus_derives_from_exist() {
    for p in [
        fixture("zamba2-tiny").join(MODEL),
        common::root().join("examples/zamba2-100m.toml"),
    ] {
        assert!(PathBuf::from(&p).is_file(), "{}", p.display());
    }
}

/// `--fast-load` skips hashing the weights, and only that: a flipped weight byte then runs,
/// while a damaged `host.so` or a truncated `weights.bin` is still refused.
#[test]
fn fast_load_skips_only_the_weight_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = tmp.path().join("valid.engine");
    build_engine(&valid);
    let run = |dir: &Path, fast: bool| {
        let mut args = vec![
            "run",
            dir.to_str().unwrap(),
            "--tokens",
            "5,6,7",
            "--max-new-tokens",
            "2",
        ];
        if fast {
            args.push("--fast-load");
        }
        zambac_run(&args)
    };
    let weights = tmp.path().join("weights");
    copy_dir(&valid, &weights);
    flip_byte(&weights.join("weights.bin"), |n| n - 5);
    assert_refused(
        "flipped weight, full check",
        &run(&weights, false),
        &["checksum".into()],
    );
    let fast = run(&weights, true);
    assert!(fast.status.success(), "{}", stderr(&fast));
    let host = tmp.path().join("host");
    copy_dir(&valid, &host);
    flip_byte(&host.join("host.so"), |n| n / 2);
    assert_refused(
        "flipped host.so, fast load",
        &run(&host, true),
        &["host.so".into(), "checksum".into()],
    );
    let short = tmp.path().join("short");
    copy_dir(&valid, &short);
    edit_bytes(&short.join("weights.bin"), |b| b.truncate(b.len() - 64));
    assert_refused(
        "truncated weights, fast load",
        &run(&short, true),
        &["weights.bin".into(), "truncated".into()],
    );
}

/// `host.so` replaced after the engine was opened (and checked) but before its code is
/// loaded: the runtime loads the bytes it verified, so the swap is refused, not run.
#[test]
fn a_host_library_swapped_after_opening_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mine = tmp.path().join("mine.engine");
    build_engine(&mine);
    let other = tmp.path().join("other.engine");
    build_fixture("zamba2-tiny-norope-1block", &other);
    let engine = zambac_engine::Engine::open(&mine).unwrap();
    std::fs::copy(other.join("host.so"), mine.join("host.so")).unwrap();
    let err = match zambac_runtime::cpu::CpuBackend::new(engine, 1) {
        Ok(_) => panic!("a swapped host.so was loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("host.so") && err.contains("checksum"), "{err}");
}
