//! Shared fixtures of the contract's tests: the toy engine (see [`toy`]) written with
//! stand-in companion files, since the format only checksums them.

#![allow(dead_code)]

mod toy;

use std::path::Path;

pub use toy::*;
use zambac_engine::{
    Companions, EngineError, EngineWriter, GpuEntry, GpuFiles, GpuParam, Kernel, Manifest,
    ManifestParts,
};

/// A stand-in for `host.so`.
pub const HOST: &[u8] = b"\x7fELF not really a library";
pub const PTX: &[u8] = b"// ptx";
pub const TOKENIZER: &[u8] = b"{\"model\": {}}";

/// The stand-in companions of an engine with `kernels`, with a GPU launch table that
/// passes every view of each kernel after the grid range.
pub fn companions(kernels: &[Kernel]) -> Companions<'static> {
    let entries: Vec<GpuEntry> = kernels
        .iter()
        .map(|k| {
            let views = k.kind.signature().map_or(0, |s| s.views.len());
            GpuEntry {
                symbol: k.symbol.clone(),
                params: [GpuParam::Begin, GpuParam::End]
                    .into_iter()
                    .chain((0..views).map(GpuParam::View))
                    .collect(),
                lanes: 1,
                block_size: 256,
                registers: Some(32),
                shared_bytes: Some(0),
                batched: None,
            }
        })
        .collect();
    Companions {
        host: HOST,
        gpu: Some(GpuFiles {
            ptx: PTX,
            chip: "sm_90",
            kernels: Box::leak(entries.into_boxed_slice()),
        }),
        tokenizer: Some(TOKENIZER),
    }
}

/// Writes the toy's weights and then `parts` to `out`.
pub fn write_parts(out: &Path, parts: ManifestParts) -> Result<Manifest, EngineError> {
    let mut w = EngineWriter::create(out)?;
    for (name, shape, data, elem) in weights() {
        w.add_weight(name, &shape, &data, elem)?;
    }
    let files = companions(&parts.kernels);
    w.finish(parts, files)
}

/// Writes the toy engine to `out`.
pub fn write(out: &Path) {
    write_parts(out, parts(kernels())).unwrap();
}
