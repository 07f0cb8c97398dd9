//! An engine's `manifest.json`: parsed (format version first), then validated as the loader
//! validates it before anything runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zambac_engine::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let _ = zambac_engine::validate::manifest(&m);
    }
});
