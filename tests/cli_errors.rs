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
