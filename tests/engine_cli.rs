//! Engines through the CLI: reproducible builds, atomic replacement, and validation of
//! broken engines with exit code 2 before anything runs.

mod common;

use std::path::Path;

use common::*;

fn build(input: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut a = vec![
        "build",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    zambac(&a)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn same_inputs_give_a_byte_identical_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.engine"), tmp.path().join("b.engine"));
    for out in [&a, &b] {
        let o = build(&fixture("zamba2-tiny"), out, &["--target", "all"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (fa, fb) = (files(&a), files(&b));
    let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"kernels.ptx") && names.contains(&"host.so"),
        "{names:?}"
    );
    assert_eq!(fa, fb);
}

#[test]
fn a_failed_build_leaves_the_existing_engine_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.engine");
    let o = build(&root().join("examples/tiny.toml"), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = files(&out);
    // A malformed description and a checkpoint that does not fit both fail.
    let bad = root().join("tests/malformed/typo-key.toml");
    let o = build(&bad, &out, &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = build(
        &root().join("examples/tiny.toml"),
        &out,
        &["--weights", fixture("zamba2-tiny").to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(files(&out), before);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "temporary files left behind: {leftovers:?}"
    );
}

/// Builds a tiny engine, breaks it with `damage`, and checks `run` refuses it with exit
/// code 2 and a message naming `needle`.
fn assert_broken_engine_rejected(damage: impl Fn(&Path), needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.engine");
    assert!(
        build(&root().join("examples/tiny.toml"), &out, &[])
            .status
            .success()
    );
    damage(&out);
    let o = zambac(&["run", out.to_str().unwrap(), "--tokens", "1,2"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "should name `{needle}`: {err}");
}

#[test]
fn a_corrupt_weight_is_named() {
    assert_broken_engine_rejected(
        |d| {
            let p = d.join("weights.bin");
            let mut b = std::fs::read(&p).unwrap();
            b[100] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        },
        "model.embed_tokens.weight",
    );
}

#[test]
fn missing_files_are_named() {
    for f in ["host.so", "weights.bin", "manifest.json"] {
        assert_broken_engine_rejected(|d| std::fs::remove_file(d.join(f)).unwrap(), f);
    }
}

#[test]
fn a_truncated_manifest_is_rejected() {
    assert_broken_engine_rejected(
        |d| {
            let p = d.join("manifest.json");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        },
        "manifest.json",
    );
}

/// Sets the manifest's `format_version` to `v`.
fn set_format_version(dir: &Path, v: u32) {
    let p = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    m["format_version"] = v.into();
    std::fs::write(&p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn an_unknown_format_version_is_rejected() {
    assert_broken_engine_rejected(|d| set_format_version(d, 99), "format version 99");
}

/// Engines of the format before the engine contract (version 1, which embedded the
/// compiler's model description) are refused with a request to rebuild.
#[test]
fn an_engine_of_the_previous_format_is_refused_with_a_clear_message() {
    assert_broken_engine_rejected(|d| set_format_version(d, 1), "rebuild the engine");
}

#[test]
fn a_replaced_host_library_is_rejected() {
    assert_broken_engine_rejected(
        |d| {
            let p = d.join("host.so");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 10] ^= 1;
            std::fs::write(&p, b).unwrap();
        },
        "host.so",
    );
}

#[test]
fn bench_reports_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.engine");
    assert!(
        build(
            &root().join("examples/tiny.toml"),
            &out,
            &["--dtype", "bf16"]
        )
        .status
        .success()
    );
    let o = zambac(&[
        "bench",
        out.to_str().unwrap(),
        "--prompt-len",
        "16",
        "--new-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for k in ["prefill_s", "decode_tok_per_s", "peak_rss_bytes"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    // The reported prefill is the median of the runs listed beside it.
    let mut runs: Vec<f64> = v["prefill_runs_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_f64().unwrap())
        .collect();
    runs.sort_by(f64::total_cmp);
    assert_eq!(runs.len(), 3, "{v}");
    assert_eq!(v["prefill_s"].as_f64(), Some(runs[1]), "{v}");
    assert!(v["threads"].as_u64().is_some_and(|t| t >= 1), "{v}");
    let library = v["gemm_library"].as_str().unwrap_or_default();
    assert!(
        library.starts_with("OpenBLAS 0."),
        "gemm_library: {library}"
    );
    let o = zambac(&["bench", root().join("examples/tiny.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_profile_accounts_for_every_kernel_of_a_step() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.engine");
    assert!(
        build(&root().join("examples/tiny.toml"), &out, &[])
            .status
            .success()
    );
    let new_tokens = 5u64;
    let o = zambac(&[
        "bench",
        out.to_str().unwrap(),
        "--prompt-len",
        "12",
        "--new-tokens",
        &new_tokens.to_string(),
        "--profile",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let symbols: Vec<&str> = manifest["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["symbol"].as_str().unwrap())
        .collect();
    for phase in ["prefill", "decode"] {
        let rows = v["profile"][phase].as_array().unwrap();
        assert!(!rows.is_empty(), "{phase}: {v}");
        for r in rows {
            let name = r["name"].as_str().unwrap();
            let product = name.strip_prefix("gemm ").is_some_and(|shape| {
                let dims: Vec<&str> = shape.split('x').collect();
                dims.len() == 3 && dims.iter().all(|d| d.parse::<usize>().is_ok())
            });
            assert!(product || symbols.contains(&name), "{name}");
            assert!(r["seconds"].as_f64().unwrap() >= 0.0);
        }
        // Longest first.
        let secs: Vec<f64> = rows
            .iter()
            .map(|r| r["seconds"].as_f64().unwrap())
            .collect();
        assert!(secs.windows(2).all(|w| w[0] >= w[1]), "{secs:?}");
        // One embedding lookup per call: one prefill, then one per decoded token.
        let embedding = rows.iter().find(|r| r["kind"] == "Embedding").unwrap();
        let calls = if phase == "prefill" { 1 } else { new_tokens };
        assert_eq!(embedding["calls"].as_u64().unwrap(), calls, "{phase}");
        // The timed steps happen inside the phase's wall time.
        let wall = v["profile"][format!("{phase}_wall_s")].as_f64().unwrap();
        assert!(
            secs.iter().sum::<f64>() <= wall,
            "{phase}: {secs:?} in {wall} s"
        );
    }
    // Without --profile the object has no profile.
    let o = zambac(&[
        "bench",
        out.to_str().unwrap(),
        "--prompt-len",
        "4",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.get("profile").is_none());
}

/// `--cpu x86-64-v3` builds portable AVX2 host code: the engine records exactly the
/// extensions the level implies, runs here, and the runtime names what of this CPU the
/// code leaves unused. A CPU name whose extensions zambac cannot spell out needs
/// `--cpu-features`.
#[test]
fn portable_host_code_records_its_extensions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v3.engine");
    let o = build(
        &root().join("examples/tiny.toml"),
        &out,
        &["--cpu", "x86-64-v3"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["host_target"]["cpu"], "x86-64-v3");
    let features = m["host_target"]["features"].as_str().unwrap();
    assert!(
        features.contains("+avx2") && features.contains("+fma"),
        "{features}"
    );
    assert!(!features.contains("avx512"), "{features}");
    let b = zambac_run(&[
        "bench",
        out.to_str().unwrap(),
        "--prompt-len",
        "4",
        "--new-tokens",
        "2",
        "--json",
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    let r: serde_json::Value = serde_json::from_str(&stdout(&b)).unwrap();
    let host = r["host_code"].as_str().unwrap();
    assert!(host.contains("x86-64-v3"), "{host}");
    let has_avx512 = r["cpu"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "avx512f");
    assert_eq!(host.contains("avx512f"), has_avx512, "{host}");

    let named = build(
        &root().join("examples/tiny.toml"),
        &tmp.path().join("named.engine"),
        &["--cpu", "some-future-cpu"],
    );
    assert_eq!(named.status.code(), Some(2), "{}", stderr(&named));
    assert!(
        stderr(&named).contains("--cpu-features"),
        "{}",
        stderr(&named)
    );
}

/// The second build of an unchanged model takes every kernel from the compile cache and
/// writes a byte-identical engine; `--no-cache` compiles everything; `zambac cache clear`
/// empties the cache.
#[test]
fn a_rebuild_takes_every_kernel_from_the_compile_cache() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zambac"))
            .args(args)
            .env("XDG_CACHE_HOME", home.path())
            .output()
            .unwrap()
    };
    let summary = |out: &std::process::Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", stderr(out));
        serde_json::from_str(&stdout(out)).unwrap()
    };
    let tiny = root().join("examples/tiny.toml");
    let (a, b) = (tmp.path().join("a.engine"), tmp.path().join("b.engine"));
    let build = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "build",
            tiny.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        summary(&run(&args))
    };
    let cold = build(&a, &[]);
    assert_eq!(cold["kernels_cached"], 0);
    let warm = build(&b, &[]);
    assert_eq!(warm["kernels_cached"], warm["kernels"]);
    assert!(
        files(&a) == files(&b),
        "the cached build wrote another engine"
    );
    let uncached = build(&tmp.path().join("c.engine"), &["--no-cache"]);
    assert_eq!(uncached["kernels_cached"], 0);
    assert!(
        home.path()
            .join("zambac/kernels")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );
    let cleared = run(&["cache", "clear"]);
    assert!(cleared.status.success(), "{}", stderr(&cleared));
    assert!(
        home.path()
            .join("zambac/kernels")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
    let again = build(&tmp.path().join("d.engine"), &[]);
    assert_eq!(again["kernels_cached"], 0);
}

/// Builds running at the same time share the compile cache: both write whole objects
/// (temporary file, then rename), both engines come out identical, and a later build takes
/// every kernel from what they left.
#[test]
fn concurrent_builds_share_the_compile_cache() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = root().join("examples/tiny.toml");
    let spawn = |out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zambac"))
            .args([
                "build",
                tiny.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "--json",
            ])
            .env("XDG_CACHE_HOME", home.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let outs: Vec<_> = (0..3)
        .map(|i| tmp.path().join(format!("e{i}.engine")))
        .collect();
    let children: Vec<_> = outs.iter().map(|o| spawn(o)).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(files(&outs[0]) == files(&outs[1]) && files(&outs[1]) == files(&outs[2]));
    let after = spawn(&tmp.path().join("later.engine"))
        .wait_with_output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(s["kernels_cached"], s["kernels"]);
    let leftovers: Vec<_> = std::fs::read_dir(home.path().join("zambac/kernels"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".o"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The RoPE θ every kernel of an engine's manifest uses.
fn rope_thetas(dir: &Path) -> Vec<f64> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut thetas: Vec<f64> = m["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kind"]["Epilogue"]["op"]["Rope"]["theta"].as_f64())
        .collect();
    thetas.dedup();
    thetas
}

/// `--hf4-long-context` builds with transformers 4.x's rescaled θ, 10000 · 8^(24/22) for the
/// tiny fixture's head dim of 24.
#[test]
fn hf4_long_context_rescales_rope_theta() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, long) = (tmp.path().join("plain"), tmp.path().join("long"));
    let input = fixture("zamba2-tiny");
    assert!(build(&input, &plain, &[]).status.success());
    let out = build(&input, &long, &["--hf4-long-context"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rope_thetas(&plain), [10000.0]);
    assert_eq!(rope_thetas(&long), [10000.0 * 8f64.powf(24.0 / 22.0)]);
    let norope = fixture("zamba2-tiny-norope-1block");
    let out = build(&norope, &tmp.path().join("x"), &["--hf4-long-context"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs RoPE"), "{}", stderr(&out));
}

/// Running an engine never writes into it: after `run` (with a snapshot saved elsewhere),
/// `bench` and the reference interpreter on it, every file has its bytes and its
/// modification time, and no file was added.
#[test]
fn running_an_engine_never_writes_into_it() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = tmp.path().join("e.engine");
    let o = build(&fixture("zamba2-tiny"), &engine, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stamp = |dir: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let modified = e.metadata().unwrap().modified().unwrap();
                (e.file_name(), modified)
            })
            .collect();
        v.sort();
        v
    };
    let (bytes, times) = (files(&engine), stamp(&engine));
    let e = engine.to_str().unwrap();
    let snap = tmp.path().join("s.state");
    let runs: [Vec<&str>; 4] = [
        vec![
            "run",
            e,
            "--tokens",
            "1,2,3",
            "--save-state",
            snap.to_str().unwrap(),
        ],
        vec![
            "run",
            e,
            "--tokens",
            "4",
            "--load-state",
            snap.to_str().unwrap(),
        ],
        vec![
            "bench",
            e,
            "--prompt-len",
            "8",
            "--new-tokens",
            "2",
            "--prefill-runs",
            "1",
        ],
        vec!["run", e, "--backend", "reference", "--tokens", "1,2"],
    ];
    for args in &runs {
        let o = zambac(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(files(&engine), bytes);
    assert_eq!(stamp(&engine), times);
}
