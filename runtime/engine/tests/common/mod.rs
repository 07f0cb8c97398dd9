//! Shared fixtures of the contract's tests: the toy engine (see [`toy`]) written with
//! stand-in companion files, since the format only checksums them.

#![allow(dead_code)]

mod toy;

use std::path::Path;

pub use toy::*;
use zambac_engine::{Companions, EngineError, EngineWriter, Manifest, ManifestParts};

/// A stand-in for `host.so`.
pub const HOST: &[u8] = b"\x7fELF not really a library";
pub const PTX: &[u8] = b"// ptx";
pub const TOKENIZER: &[u8] = b"{\"model\": {}}";

pub fn companions() -> Companions<'static> {
    Companions {
        host: HOST,
        ptx: Some(PTX),
        tokenizer: Some(TOKENIZER),
    }
}

/// Writes the toy's weights and then `parts` to `out`.
pub fn write_parts(out: &Path, parts: ManifestParts) -> Result<Manifest, EngineError> {
    let mut w = EngineWriter::create(out)?;
    for (name, shape, data, elem) in weights() {
        w.add_weight(name, &shape, &data, elem)?;
    }
    w.finish(parts, companions())
}

/// Writes the toy engine to `out`.
pub fn write(out: &Path) {
    write_parts(out, parts(kernels())).unwrap();
}
