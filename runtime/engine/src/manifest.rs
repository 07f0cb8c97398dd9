//! `manifest.json`: the engine's table of contents, and its (de)serialisation.
//!
//! Field order is declaration order and nothing in it is a hash map or a timestamp, so the
//! same build writes the same bytes. Checksums are hex strings rather than JSON numbers so
//! readers without 64-bit integers (jq, JavaScript) see them intact.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::elem::Elem;
use crate::gpu::GpuCode;
use crate::kernel::Kernel;
use crate::model::ModelInfo;
use crate::program::{Program, ProgramName, Step};

/// Everything an engine says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version of this file and of `weights.bin`; see [`crate::FORMAT_VERSION`].
    pub format_version: u32,
    /// The zambac that built the engine (informational: the format version decides).
    pub zambac_version: String,
    /// Dimensions, state layout and tokenizer: what a backend needs besides the programs.
    pub model: ModelInfo,
    /// The model description the engine was compiled from, as the compiler records it, for
    /// tools that rebuild the model's graphs (the compiler's reference interpreter). No
    /// backend reads it.
    #[serde(default)]
    pub source: serde_json::Value,
    /// One entry per parameter, indexed by `Buffer::Weight(i)` of the programs.
    pub weights: Vec<WeightEntry>,
    /// The generated kernels; `host` exports `zk_<symbol>` for each.
    #[serde(default)]
    pub kernels: Vec<Kernel>,
    /// `prefill`, `prefill_last` and `decode`.
    pub programs: Vec<Program>,
    /// The shared library with the CPU kernels.
    pub host: FileRef,
    /// The CPU `host` was generated for; a runtime refuses to run it on a CPU that lacks an
    /// extension it enables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_target: Option<TargetCpu>,
    /// The PTX module with the GPU kernels and how to launch them, when built for a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuCode>,
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
    pub elem: Elem,
    pub shape: Vec<usize>,
    /// Byte offset, a multiple of [`crate::WEIGHT_ALIGN`].
    pub offset: u64,
    /// Byte length: elements × element size.
    pub bytes: u64,
    pub xxh3: Checksum,
    /// When set, a matrix `[rows, Σ widths]` stored as consecutive column blocks of these
    /// widths, each row-major `[rows, width]`: products that read only a block of columns
    /// then stream whole contiguous rows (see [`crate::layout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_blocks: Option<Vec<usize>>,
}

impl WeightEntry {
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// A CPU that host code is generated for, in LLVM's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetCpu {
    /// The CPU name, e.g. `znver4`, `x86-64-v3`.
    pub cpu: String,
    /// Every extension the code may use, as `+name` entries (`-name` ones say what it
    /// must not use), e.g. `+avx2,+fma,-avx512f`.
    pub features: String,
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

/// The parts of a manifest that the builder decides; the writer adds the weight table, the
/// companion files and their checksums.
#[derive(Clone, Debug)]
pub struct ManifestParts {
    pub zambac_version: String,
    /// The model; its `tokenizer` is filled in by the writer.
    pub model: ModelInfo,
    pub source: serde_json::Value,
    pub kernels: Vec<Kernel>,
    pub programs: Vec<Program>,
    /// The CPU the host code was generated for (none for a GPU-only engine).
    pub host_target: Option<TargetCpu>,
    pub build: serde_json::Value,
}

/// Just the version field, read before anything else so a manifest of another format
/// version is reported as such rather than as a confusing missing or unknown field.
#[derive(Deserialize)]
struct VersionProbe {
    format_version: u32,
}

impl Manifest {
    /// The manifest as written to disk: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses `manifest.json`: the format version first, then the whole file. A kernel
    /// of a kind this build does not know is reported with the first launch that uses it.
    /// Nothing is validated here; see [`crate::validate`].
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let probe: VersionProbe = from_slice(bytes)?;
        if probe.format_version != crate::FORMAT_VERSION {
            return Err(format!(
                "engine format version {} is not supported (this zambac reads version {}); \
                 rebuild the engine with this zambac",
                probe.format_version,
                crate::FORMAT_VERSION
            ));
        }
        from_slice(bytes).map_err(|e| unknown_kernel_kind(bytes).unwrap_or(e))
    }

    pub fn program(&self, name: ProgramName) -> Option<&Program> {
        self.programs.iter().find(|p| p.name == name)
    }
}

/// Deserializes JSON, naming the path of the value that does not fit (`weights[3].shape:
/// invalid type: …`).
fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("not a valid engine manifest: {inner}")
        } else {
            format!("not a valid engine manifest: `{path}`: {inner}")
        }
    })?;
    de.end()
        .map_err(|e| format!("not a valid engine manifest: {e}"))?;
    Ok(value)
}

/// When the only thing wrong with a manifest is a kernel whose kind does not parse (a kind
/// from another build, or edited), says so and names the first step that launches it.
fn unknown_kernel_kind(bytes: &[u8]) -> Option<String> {
    let mut raw: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let kernels = raw.as_object_mut()?.remove("kernels")?;
    let rest: Manifest = serde_json::from_value(raw).ok()?;
    for k in kernels.as_array()? {
        let symbol = k.get("symbol").and_then(|s| s.as_str()).unwrap_or("?");
        let Err(e) = serde_json::from_value::<Kernel>(k.clone()) else {
            continue;
        };
        let kind = k
            .get("kind")
            .and_then(|kind| match kind {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.keys().next().cloned(),
                _ => None,
            })
            .unwrap_or_else(|| "?".into());
        let what =
            format!("kernel `{symbol}`, whose kind `{kind}` this runtime does not know ({e})");
        let launch = rest.programs.iter().find_map(|p| {
            p.steps.iter().enumerate().find_map(|(i, s)| match s {
                Step::Launch { kernel, .. } if kernel == symbol => Some((p.name, i)),
                _ => None,
            })
        });
        return Some(match launch {
            Some((program, step)) => format!("program `{program}`, step {step}: launches {what}"),
            None => what,
        });
    }
    None
}
