//! Paths shared by the frontend's integration tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root (`/work/main`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` next to the workspace: released configs and HF fixtures.
pub fn shared() -> PathBuf {
    root().join("../shared")
}

pub fn config_dir(name: &str) -> PathBuf {
    shared().join("configs").join(name)
}

pub fn fixture_dir(name: &str) -> PathBuf {
    shared().join("fixtures").join(name)
}

pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// Every `examples/*.toml`, sorted.
pub fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

pub const CONFIGS: [&str; 5] = [
    "zamba2-1.2b",
    "zamba2-2.7b",
    "zamba2-7b",
    "zamba-7b-v1",
    "zamba2-100m",
];
pub const FIXTURES: [&str; 3] = ["zamba2-tiny", "zamba2-tiny-norope-1block", "zamba1-tiny"];
