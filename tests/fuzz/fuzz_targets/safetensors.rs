//! A safetensors file: opened as a checkpoint, every tensor's bytes read and converted to
//! f32 (a lying header, offsets outside the file, absurd shapes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zambac_weights::Checkpoint;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("zambac-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ck) = Checkpoint::open_file(&path) {
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        for n in &names {
            let _ = ck.bytes(n);
            let _ = ck.check_float(n);
            let _ = ck.to_f32(n);
            let _ = ck.content_hash(n);
        }
    }
});
