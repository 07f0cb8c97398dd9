//! The runtime binary runs what the compiler builds: on every fixture engine (f32 and bf16),
//! `zambac-run run` prints the same tokens and dumps the same logits, bit for bit, as
//! `zambac run`, and refuses what `zambac run` refuses with the same exit code.

mod common;

use common::*;

/// Builds `fixture` into an engine stored as `dtype`.
fn engine(tmp: &std::path::Path, fixture_name: &str, dtype: &str) -> std::path::PathBuf {
    let out = tmp.join(format!("{fixture_name}-{dtype}.engine"));
    let o = zambac(&[
        "build",
        fixture(fixture_name).to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn zambac_run_matches_zambac_run_on_every_fixture_engine() {
    let tmp = tempfile::tempdir().unwrap();
    for name in fixture_names() {
        for dtype in ["f32", "bf16"] {
            let e = engine(tmp.path(), &name, dtype);
            let prompt = prompts(&fixture(&name))
                .into_iter()
                .max_by_key(Vec::len)
                .unwrap();
            let tokens = prompt
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let dump = |who: &str| tmp.path().join(format!("{name}-{dtype}-{who}.safetensors"));
            let args = |file: &std::path::Path| {
                vec![
                    "run".to_string(),
                    e.to_str().unwrap().to_string(),
                    "--tokens".into(),
                    tokens.clone(),
                    "--max-new-tokens".into(),
                    "8".into(),
                    "--threads".into(),
                    "2".into(),
                    "--dump-logits".into(),
                    file.to_str().unwrap().to_string(),
                ]
            };
            let (a, b) = (dump("zambac"), dump("zambac-run"));
            let args_a = args(&a);
            let args_b = args(&b);
            let ca = zambac(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
            let cb = zambac_run(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(ca.status.success(), "{}", stderr(&ca));
            assert!(cb.status.success(), "{}", stderr(&cb));
            assert_eq!(stdout(&ca), stdout(&cb), "{name} {dtype}: tokens differ");
            let (la, lb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert!(!la.is_empty());
            assert!(la == lb, "{name} {dtype}: the dumped logits differ");
        }
    }
}

/// One way to damage the first launch of `decode` (step `step`, launching `kernel`).
type Damage = fn(&mut serde_json::Value, &mut serde_json::Value, &str);

/// Engines whose manifest breaks a launch's contract are refused before anything runs, by
/// both binaries and by `bench`, with exit code 2 and a message naming the program, the
/// step and what is wrong.
#[test]
fn both_binaries_refuse_a_damaged_engine_alike() {
    let damages: [(&str, Damage, &str); 7] = [
        (
            "a missing view",
            |launch, _, _| {
                launch["views"].as_array_mut().unwrap().pop();
            },
            "views",
        ),
        (
            "a view of the wrong element type",
            |launch, _, _| {
                let views = launch["views"].as_array_mut().unwrap();
                let last = views.len() - 1;
                views[last] = serde_json::json!({ "buf": { "Input": "token" } });
            },
            "holds i64",
        ),
        (
            "an unknown kernel kind",
            |_, kernels, symbol| {
                let k = kernels
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|k| k["symbol"] == symbol)
                    .unwrap();
                let kind = k["kind"].as_object().unwrap().clone();
                let (name, fields) = kind.into_iter().next().unwrap();
                k["kind"] = serde_json::json!({ format!("{name}V9"): fields });
            },
            "this runtime does not know",
        ),
        (
            "a view outside its buffer",
            |launch, _, _| {
                let views = launch["views"].as_array_mut().unwrap();
                let last = views.len() - 1;
                views[last]["offset"] = serde_json::json!({ "k": 1_000_000_000 });
            },
            "outside its buffer",
        ),
        (
            "an extra integer argument",
            |launch, _, _| {
                launch["ints"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({ "k": 0 }));
            },
            "integer arguments",
        ),
        (
            "a grid far larger than the rows",
            |launch, _, _| launch["grid"] = serde_json::json!({ "k": 1_000_000 }),
            // Named as a grid the kind does not have, or as views reaching that far.
            "1000000",
        ),
        (
            "a launch of a kernel not in the table",
            |launch, _, _| launch["kernel"] = serde_json::json!("no_such_kernel"),
            "not in the kernel table",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let pristine = engine(tmp.path(), "zamba2-tiny", "f32");
    for (what, damage, needle) in damages {
        let e = tmp.path().join("damaged.engine");
        let _ = std::fs::remove_dir_all(&e);
        std::fs::create_dir(&e).unwrap();
        for f in std::fs::read_dir(&pristine).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, e.join(f.file_name().unwrap())).unwrap();
        }
        let manifest = e.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let mut kernels = m["kernels"].take();
        let decode = m["programs"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|p| p["name"] == "decode")
            .unwrap();
        let (step, launch) = decode["steps"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.get("Launch").is_some())
            .unwrap();
        let launch = &mut launch["Launch"];
        let symbol = launch["kernel"].as_str().unwrap().to_string();
        damage(launch, &mut kernels, &symbol);
        m["kernels"] = kernels;
        std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        // A kind the runtime does not know is reported at the first launch of the kernel
        // in the file (the same kernel may serve prefill too); the rest at the damaged step.
        let want = if what == "an unknown kernel kind" {
            format!("launches kernel `{symbol}`")
        } else {
            format!("program `decode`, step {step}")
        };
        for out in [
            zambac(&["run", e.to_str().unwrap(), "--tokens", "1,2"]),
            zambac_run(&["run", e.to_str().unwrap(), "--tokens", "1,2"]),
            zambac_run(&["bench", e.to_str().unwrap(), "--prompt-len", "4"]),
        ] {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{what}: {err}");
            assert!(err.contains("manifest.json"), "{what}: {err}");
            assert!(err.contains(&want), "{what}: should name `{want}`: {err}");
            assert!(
                err.contains("program `") && err.contains(", step "),
                "{what}: {err}"
            );
            assert!(err.contains(needle), "{what}: should say `{needle}`: {err}");
            assert!(!err.contains("panicked"), "{what}: {err}");
        }
    }
}
