//! Every case of `tests/malformed/` fails to load with an error whose one-line form names
//! the file, a line:col and the expected key (`tests/malformed/expected.txt`).

mod common;

use std::collections::BTreeSet;

use common::root;

/// `(file name, expected key)` per case, comments and blank lines skipped.
fn cases() -> Vec<(String, String)> {
    let list =
        std::fs::read_to_string(root().join("tests/malformed/expected.txt")).expect("expected.txt");
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, key) = l.split_once(' ').unwrap_or_else(|| panic!("bad line: {l}"));
            (file.to_string(), key.trim().to_string())
        })
        .collect()
}

fn has_line_col(line: &str, file: &str) -> bool {
    let Some(rest) = line.split(file).nth(1).and_then(|r| r.strip_prefix(':')) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let (l, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    !l.is_empty()
        && !c.is_empty()
        && l.chars().all(|ch| ch.is_ascii_digit())
        && c.chars().all(|ch| ch.is_ascii_digit())
}

#[test]
fn every_malformed_case_fails_with_file_position_and_key() {
    let cases = cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    let dir = root().join("tests/malformed");
    for (file, key) in &cases {
        let err = match zambac_frontend::load(&dir.join(file)) {
            Ok(l) => panic!("{file}: loaded without error: {:?}", l.spec.name),
            Err(e) => e,
        };
        let first = err.diagnostics()[0].to_string();
        assert!(first.contains(file.as_str()), "{file}: {first}");
        assert!(has_line_col(&first, file), "{file}: no line:col in {first}");
        assert!(
            first.contains(key.as_str()),
            "{file}: `{key}` not in {first}"
        );
        assert!(!first.contains('\n'), "{file}: {first}");
        let rendered = err.render();
        assert!(rendered.contains(key.as_str()), "{file}: {rendered}");
    }
}

#[test]
fn every_file_in_the_directory_has_a_case() {
    let listed: BTreeSet<String> = cases().into_iter().map(|(f, _)| f).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(root().join("tests/malformed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "expected.txt")
        .collect();
    assert_eq!(listed, on_disk);
}
