//! Bad input never panics: every prefix of every example and config, and single-byte edits
//! of them, parse to a spec or to diagnostics with positions inside the text.

mod common;

use common::*;
use zambac_frontend::*;

/// Parses `text` as the given format and checks the error's spans if it fails.
fn check(text: &str, json: bool) {
    let result = if json {
        parse_hf_config(text, "m/config.json").map(|(s, _)| s)
    } else {
        parse_toml(text, "m.toml")
    };
    if let Err(e) = result {
        for d in e.diagnostics() {
            let span = d.span.clone().expect("text diagnostics have spans");
            assert!(span.end <= text.len(), "{d}");
            assert!(!d.render().is_empty());
        }
    }
}

fn inputs() -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = examples()
        .iter()
        .map(|p| (std::fs::read_to_string(p).unwrap(), false))
        .collect();
    for name in ["zamba2-1.2b", "zamba-7b-v1"] {
        v.push((
            std::fs::read_to_string(config_dir(name).join("config.json")).unwrap(),
            true,
        ));
    }
    v
}

#[test]
fn every_prefix() {
    for (text, json) in inputs() {
        for cut in (0..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .step_by(3)
        {
            check(&text[..cut], json);
        }
    }
}

#[test]
fn single_byte_edits() {
    let replacements = [
        "0",
        "-",
        "\"",
        "[",
        "]",
        "{",
        "}",
        ",",
        "=",
        ":",
        "x",
        "9999999999999999999999",
        " ",
        "\n",
    ];
    for (text, json) in inputs() {
        let positions: Vec<usize> = (0..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .step_by(7)
            .collect();
        for (n, &at) in positions.iter().enumerate() {
            let r = replacements[n % replacements.len()];
            let end = (at + 1..=text.len())
                .find(|&e| text.is_char_boundary(e))
                .unwrap_or(text.len());
            let edited = format!("{}{r}{}", &text[..at], &text[end..]);
            check(&edited, json);
        }
    }
}

#[test]
fn overrides_with_odd_values() {
    let spec = load(&example("tiny.toml")).unwrap().spec;
    let keys = override_keys();
    for key in &keys {
        for value in [
            "0",
            "-1",
            "1",
            "2",
            "true",
            "\"x\"",
            "[]",
            "[1, 2]",
            "1.5",
            "{",
            "",
            "99999999999999999999",
        ] {
            if let Err(e) = apply_overrides(&spec, &[(key.clone(), value.to_string())]) {
                for d in e.diagnostics() {
                    assert!(d.to_string().contains("--sweep"), "{d}");
                }
            }
        }
    }
}
