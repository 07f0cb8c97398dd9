//! A state snapshot: loaded against the state layout and identity of the engine whose
//! manifest is in the manifest target's corpus (a lying position, shapes, checksums,
//! metadata). The seed is a real snapshot of that engine:
//! `zambac build ../shared/fixtures/zamba2-tiny-norope-1block -o E && zambac-run run E
//! --tokens 1,2,3,4,5 --max-new-tokens 2 --save-state tests/fuzz/corpus/snapshot/seed.state`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zambac_engine::{Checksum, Manifest, StateSpec};

fn engine() -> &'static (Vec<StateSpec>, Checksum) {
    static ENGINE: OnceLock<(Vec<StateSpec>, Checksum)> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/corpus/manifest/zamba2-norope-1block.json"
        );
        let bytes = std::fs::read(path).expect("the manifest seed");
        let m = Manifest::parse(&bytes).expect("the manifest seed parses");
        (m.model.state, Checksum::of(&bytes))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("zambac-fuzz-{}.state", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let (layout, identity) = engine();
    let _ = zambac_runtime::snapshot::load(&path, layout, *identity, 16);
});
