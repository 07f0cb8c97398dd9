//! A model description in TOML: parsed and validated, then (when valid) built into the IR,
//! verified and costed at a long context — for any size, without panicking or overflowing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = zambac_frontend::parse_toml(text, "fuzz.toml") {
        if let Ok(m) = zambac_ir::build(&spec) {
            let _ = zambac_ir::verify_module(&m);
            let _ = zambac_ir::cost::Report::new(&spec, &m, &[4096, 1 << 20]);
        }
    }
});
