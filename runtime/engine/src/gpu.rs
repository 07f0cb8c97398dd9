//! The GPU half of an engine: `kernels.ptx` and how to launch each of its entries.
//!
//! The compiler lowers every kernel a second way, for the GPU, into one PTX module with an
//! `.entry zk_<symbol>` per kernel. MLIR's outliner passes only the values a kernel body
//! uses, in an order of its choosing, so each entry's parameter list is recorded here
//! rather than assumed: a launcher passes exactly [`GpuEntry::params`], each 8 bytes.
//! [`ptx_entry_params`] reads the parameter list back out of the PTX text, so a loader can
//! check the two agree before anything is launched.

use serde::{Deserialize, Serialize};

use crate::manifest::FileRef;

/// One parameter of a PTX entry, in `.param` order; each is a `.u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuParam {
    /// The device address of the launch's view `j`.
    View(usize),
    /// The launch's integer argument `i`.
    Int(usize),
    /// The first thread of the launch: its first grid index × [`GpuEntry::lanes`].
    Begin,
    /// The end of the launch's range of threads: the end of its grid range × lanes.
    End,
}

/// How to launch one kernel's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEntry {
    /// The kernel's symbol; the PTX entry is `zk_<symbol>`.
    pub symbol: String,
    /// The entry's parameters, in order.
    pub params: Vec<GpuParam>,
    /// Threads per grid index: a launch over `[begin, end)` runs `(end − begin) · lanes`
    /// threads (a warp per row for a warp-reducing kernel, a thread per state row for the
    /// Mamba2 scan).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub lanes: u32,
    /// Threads per block: a launch runs `⌈threads / block_size⌉` blocks. The PTX says
    /// `.maxntid` of the same.
    pub block_size: u32,
    /// Registers per thread, as `ptxas` reported them (absent when the build had no ptxas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registers: Option<u32>,
    /// Static shared memory per block in bytes, as `ptxas` reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

fn is_one(x: &u32) -> bool {
    *x == 1
}

impl GpuEntry {
    /// The PTX entry's name.
    pub fn entry(&self) -> String {
        format!("zk_{}", self.symbol)
    }
}

/// The GPU code of an engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuCode {
    /// The SM architecture the PTX targets, e.g. `sm_90`.
    pub chip: String,
    /// `kernels.ptx`.
    pub ptx: FileRef,
    /// One entry per kernel of the manifest, in the same order.
    pub kernels: Vec<GpuEntry>,
}

/// The most threads a block may have on every GPU zambac targets.
pub const MAX_BLOCK_SIZE: u32 = 1024;

/// The parameter types of the `.entry name` of a PTX text, in order (e.g. `["u64", "u64"]`),
/// or `None` when the text has no such entry.
pub fn ptx_entry_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let mut rest = ptx;
    loop {
        let at = rest.find(".entry")?;
        rest = &rest[at + ".entry".len()..];
        let head = rest.trim_start();
        let Some(after) = head.strip_prefix(name) else {
            continue;
        };
        let after = after.trim_start();
        let Some(list) = after.strip_prefix('(') else {
            continue;
        };
        let end = list.find(')')?;
        return Some(
            list[..end]
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| {
                    p.split_whitespace()
                        .find_map(|w| w.strip_prefix('.').filter(|t| *t != "param"))
                        .unwrap_or("?")
                        .to_string()
                })
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "\
.version 8.0
.target sm_90
.visible .entry zk_a(
\t.param .u64 zk_a_param_0,
\t.param .u64 zk_a_param_1
)
.maxntid 256, 1, 1
{ ret; }
.visible .entry zk_ab(.param .u32 x)
{ ret; }
";

    #[test]
    fn entry_parameters_are_read_back_by_exact_name() {
        assert_eq!(
            ptx_entry_params(PTX, "zk_a"),
            Some(vec!["u64".into(), "u64".into()])
        );
        assert_eq!(ptx_entry_params(PTX, "zk_ab"), Some(vec!["u32".into()]));
        assert_eq!(ptx_entry_params(PTX, "zk_b"), None);
    }

    #[test]
    fn params_serialise_as_tagged_names() {
        let params = vec![GpuParam::Begin, GpuParam::View(2), GpuParam::Int(0)];
        let json = serde_json::to_string(&params).expect("serialise");
        assert_eq!(json, r#"["begin",{"view":2},{"int":0}]"#);
    }
}
