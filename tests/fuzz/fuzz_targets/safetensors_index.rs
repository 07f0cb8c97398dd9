//! A sharded checkpoint's index (`model.safetensors.index.json`), opened beside two small
//! valid shards and every listed tensor read: a weight map of the wrong type, shard names
//! outside the directory, missing shards, tensors listed in the wrong shard or twice.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zambac_weights::Checkpoint;

/// A safetensors file of `(name, dtype, shape, bytes)` tensors.
fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string();
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

/// This process's checkpoint directory with its two shards.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("zambac-fuzz-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let one = safetensors(&[
            ("a", "F32", &[2], [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect()),
            ("b", "BF16", &[3], vec![0x80, 0x3f, 0, 0x40, 0x40, 0x40]),
        ]);
        let two = safetensors(&[("c", "F16", &[1], vec![0, 0x3c])]);
        std::fs::write(dir.join("model-00001-of-00002.safetensors"), one).expect("shard 1");
        std::fs::write(dir.join("model-00002-of-00002.safetensors"), two).expect("shard 2");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    if std::fs::write(dir.join("model.safetensors.index.json"), data).is_err() {
        return;
    }
    if let Ok(ck) = Checkpoint::open(dir) {
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        for n in &names {
            let _ = ck.to_f32(n);
            let _ = ck.content_hash(n);
        }
    }
});
