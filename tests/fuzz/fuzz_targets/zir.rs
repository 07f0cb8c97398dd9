//! The IR's text form (`.zir`): parsed, verified, printed and parsed again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = zambac_ir::parse_module_unverified(text);
    if let Ok(m) = zambac_ir::parse_module(text) {
        let printed = zambac_ir::print_module(&m);
        assert!(
            zambac_ir::parse_module(&printed).is_ok(),
            "a printed module does not parse:\n{printed}"
        );
    }
});
