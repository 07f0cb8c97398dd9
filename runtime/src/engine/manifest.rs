//! `manifest.json`: the engine's table of contents, and its (de)serialisation.
//!
//! Field order is declaration order and nothing in it is a hash map or a timestamp, so the
//! same build writes the same bytes. Checksums are hex strings rather than JSON numbers so
//! readers without 64-bit integers (jq, JavaScript) see them intact.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zambac_frontend::ModelSpec;
use zambac_ir::program::{Kernel, Program};

use super::dtype::Dtype;

/// Everything an engine says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version of this file and of `weights.bin`; see [`super::FORMAT_VERSION`].
    pub format_version: u32,
    /// The zambac that built the engine (informational: the format version decides).
    pub zambac_version: String,
    pub spec: ModelSpec,
    /// One entry per parameter, indexed by `Buffer::Weight(i)` of the programs.
    pub weights: Vec<WeightEntry>,
    /// The generated kernels; `host` exports `zk_<symbol>` for each.
    pub kernels: Vec<Kernel>,
    /// `prefill`, `prefill_last` and `decode`.
    pub programs: Vec<Program>,
    /// The shared library with the CPU kernels.
    pub host: FileRef,
    /// The PTX module with the GPU kernels, when built for a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptx: Option<FileRef>,
    /// Free-form notes from the build (target CPU, features, summary numbers) for people
    /// and reports; the runtime never reads it.
    #[serde(default)]
    pub build: serde_json::Value,
}

/// Where one parameter lives in `weights.bin`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte offset, a multiple of [`super::WEIGHT_ALIGN`].
    pub offset: u64,
    /// Byte length: elements × dtype size.
    pub bytes: u64,
    pub xxh3: Checksum,
}

impl WeightEntry {
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// A companion file of the engine and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// A plain file name inside the engine directory.
    pub file: String,
    pub xxh3: Checksum,
}

/// An xxh3-64 digest, written as 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Checksum(pub u64);

impl Checksum {
    pub fn of(bytes: &[u8]) -> Checksum {
        Checksum(xxhash_rust::xxh3::xxh3_64(bytes))
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checksum, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 16 {
            return Err(serde::de::Error::custom(format!(
                "checksum `{s}` is not 16 hex digits"
            )));
        }
        u64::from_str_radix(&s, 16)
            .map(Checksum)
            .map_err(|_| serde::de::Error::custom(format!("checksum `{s}` is not hexadecimal")))
    }
}

/// The parts of a manifest that the builder decides; the writer adds the weight table and
/// the file checksums.
#[derive(Clone, Debug)]
pub struct ManifestParts {
    pub zambac_version: String,
    pub spec: ModelSpec,
    pub kernels: Vec<Kernel>,
    pub programs: Vec<Program>,
    pub build: serde_json::Value,
}

/// Just the version field, read before anything else so a manifest of another format
/// version is reported as such rather than as a confusing missing or unknown field.
#[derive(Deserialize)]
pub(crate) struct VersionProbe {
    pub format_version: u32,
}

impl Manifest {
    /// The manifest as written to disk: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    pub fn program(&self, name: &str) -> Option<&Program> {
        self.programs.iter().find(|p| p.name == name)
    }
}
