//! A Hugging Face `config.json`: imported and validated, then (when valid) built into the IR
//! and costed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((spec, _)) = zambac_frontend::parse_hf_config(text, "config.json") {
        if let Ok(m) = zambac_ir::build(&spec) {
            let _ = zambac_ir::cost::Report::new(&spec, &m, &[4096]);
        }
    }
});
