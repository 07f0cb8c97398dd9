//! The body of a completion or chat request, as the server reads it: deserialized, every
//! field checked against the limits, the prompt and the messages taken apart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zambac_runtime::serve::api::{GenRequest, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<GenRequest>(data) else {
        return;
    };
    let limits = Limits {
        vocab: 256,
        context: 4096,
        max_tokens: 4095,
    };
    let _ = req.check(limits);
    let _ = req.prompt();
    let _ = req.messages();
});
