//! `zambac build --check`: for every released config the engine's weight bytes are the
//! unique parameter count times the dtype size (within 0.5%: only the small non-matrix
//! weights stay f32 in a bf16 engine) — no per-invocation copies of shared blocks.

mod common;

use common::*;

fn summary(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["build"];
    a.extend_from_slice(args);
    a.extend(["--check", "--json"]);
    let out = zambac(&a);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn weight_bytes_are_the_unique_parameters() {
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root().join("../shared/configs/expected.json")).unwrap(),
    )
    .unwrap();
    for (name, want) in expected {
        let params = want["params"].as_u64().unwrap();
        let cfg = root()
            .join("../shared/configs")
            .join(&name)
            .join("config.json");
        for (dtype, size) in [("f32", 4u64), ("bf16", 2)] {
            let s = summary(&[cfg.to_str().unwrap(), "--dtype", dtype]);
            assert_eq!(s["params"].as_u64().unwrap(), params, "{name}");
            let bytes = s["weight_bytes"].as_u64().unwrap() as f64;
            let ideal = (params * size) as f64;
            assert!(
                bytes >= ideal && bytes <= ideal * 1.005,
                "{name} {dtype}: {bytes} bytes for {params} params"
            );
        }
    }
}

/// Zamba2-1.2B's decode streams each weight once, the shared block's once per invocation
/// (6), except that `hoist-shared-input` reads the embedding half (2048 of 4096 columns) of
/// q, k and v once instead of 6 times, plus that half of the input norm's weight once.
#[test]
fn decode_reads_the_hoisted_embedding_half_of_the_shared_projections_once() {
    let cfg = root().join("../shared/configs/zamba2-1.2b/config.json");
    let s = summary(&[cfg.to_str().unwrap()]);
    let explore = zambac(&["explore", cfg.to_str().unwrap(), "--json"]);
    assert!(explore.status.success(), "{}", stderr(&explore));
    let e: serde_json::Value = serde_json::from_str(&stdout(&explore)).unwrap();
    let every_invocation = e["decode_weight_elems_read"].as_u64().unwrap();
    let saved = 5 * 3 * 4096 * 2048 - 2048;
    assert_eq!(
        s["decode_weight_elems_read"].as_u64().unwrap(),
        every_invocation - saved
    );
}

#[test]
fn every_pass_shows_in_the_build_output() {
    let out = zambac(&[
        "build",
        root().join("examples/tiny.toml").to_str().unwrap(),
        "--check",
        "--print-ir-after-all",
        "--time-passes",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for p in zambac_passes::REGISTRY {
        assert!(
            err.contains(&format!("; IR after {}", p.name())),
            "no IR after {}",
            p.name()
        );
        assert!(
            err.lines().any(|l| l.starts_with(p.name())),
            "no timing row for {}",
            p.name()
        );
    }
}

#[test]
fn unknown_pass_names_are_listed() {
    for flag in ["--disable-pass", "--passes", "--print-ir-after"] {
        let out = zambac(&[
            "build",
            root().join("examples/tiny.toml").to_str().unwrap(),
            "--check",
            flag,
            "fuse-everything",
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = stderr(&out);
        assert!(
            err.contains("fuse-everything")
                && err.contains("fuse-mamba")
                && err.contains("plan-memory"),
            "{err}"
        );
    }
}

#[test]
fn dump_dir_holds_the_ir_after_each_pass() {
    let dir = tempfile::tempdir().unwrap();
    let out = zambac(&[
        "build",
        root().join("examples/tiny.toml").to_str().unwrap(),
        "--check",
        "--dump-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".zir"))
        .collect();
    names.sort();
    assert_eq!(names[0], "000-input.zir");
    assert_eq!(names.last().unwrap(), "008-plan-memory.zir");
    for n in &names {
        let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
        zambac_ir::parse_module(&text).unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}

#[test]
fn a_disabled_fusion_is_reported_by_the_code_generator() {
    let out = zambac(&[
        "build",
        root().join("examples/tiny.toml").to_str().unwrap(),
        "--check",
        "--disable-pass",
        "fuse-mamba",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("fuse"), "{}", stderr(&out));
}
