//! Digests this crate's source for the compile cache (`src/cache.rs`): an object compiled
//! by other code-generation source is never reused, even when the version did not move.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn main() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    println!("cargo:rerun-if-changed={}", src.display());
    let mut all = Vec::new();
    files(&src, &mut all);
    all.sort();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update(&std::fs::read(f).unwrap_or_default());
    }
    println!(
        "cargo:rustc-env=ZAMBAC_CODEGEN_SOURCE_DIGEST={:016x}",
        h.digest()
    );
}
