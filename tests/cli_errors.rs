//! Bad input never panics: every malformed description exits with code 2 and a message
//! naming the file and the key; bad run options likewise.

mod common;

use common::*;

/// `tests/malformed/expected.txt`: `<file> <text the message must contain>` per line.
fn cases() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("tests/malformed/expected.txt")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (f, k) = l.split_once(char::is_whitespace).expect("`file key` lines");
            (f.to_string(), k.trim().to_string())
        })
        .collect()
}

#[test]
fn every_malformed_description_exits_2_naming_the_key() {
    let cases = cases();
    assert!(cases.len() >= 15, "only {} cases", cases.len());
    for (file, key) in cases {
        let path = root().join("tests/malformed").join(&file);
        for cmd in ["explore", "ir"] {
            let out = zambac(&[cmd, path.to_str().unwrap()]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {file}: {err}");
            assert!(!err.contains("panicked"), "{cmd} {file}: {err}");
            assert!(
                err.contains(&key),
                "{cmd} {file}: message should name `{key}`: {err}"
            );
            assert!(
                err.contains(&file),
                "{cmd} {file}: message should name the file: {err}"
            );
        }
    }
}

#[test]
fn missing_input_exits_2() {
    let out = zambac(&["explore", "no/such/model.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no/such/model.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_token_lists_exit_2() {
    let dir = fixture("zamba2-tiny");
    for tokens in ["", "1,,x", "-1", "256", "3.5"] {
        let out = zambac(&["run", dir.to_str().unwrap(), "--tokens", tokens]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--tokens {tokens:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
    }
}

/// `--attention-products bf16` multiplies bf16 caches on the CPU: without `--kv-dtype bf16`,
/// or with GPU code or the GPU's schedule, the build exits 2 naming what is missing, and
/// writes nothing.
#[test]
fn bf16_attention_products_without_what_they_need_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let input = fixture("zamba2-tiny");
    let out_dir = tmp.path().join("e.engine");
    for (extra, says) in [
        (&["--attention-products", "bf16"][..], "--kv-dtype bf16"),
        (
            &[
                "--attention-products",
                "bf16",
                "--kv-dtype",
                "bf16",
                "--target",
                "all",
            ],
            "--target cpu",
        ),
        (
            &[
                "--attention-products",
                "bf16",
                "--kv-dtype",
                "bf16",
                "--host-schedule",
                "gpu",
            ],
            "--host-schedule host",
        ),
        (
            &[
                "--attention-products",
                "bf16",
                "--kv-dtype",
                "bf16",
                "--cpu",
                "x86-64-v3",
            ],
            "AVX-512 BF16",
        ),
    ] {
        let mut args = vec![
            "build",
            input.to_str().unwrap(),
            "-o",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = zambac(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{extra:?}: {}", stderr(&out));
        assert!(!out_dir.exists(), "{extra:?}");
    }
}
