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
    /// A batched Gemv's ([`GpuEntry::batched`]) number of sequences.
    Sequences,
    /// A batched Gemv's distance between consecutive sequences' inputs, in f32 elements.
    InputStride,
    /// A batched Gemv's distance between consecutive sequences' outputs, in f32 elements.
    OutputStride,
}

/// The batched form of a Gemv's entry: one launch computes the product for every sequence
/// of a decode batch, each weight row read once for all of them, and each sequence's
/// output bit for bit the single entry's for that sequence alone. Its views are the
/// Gemv's, bound to the first sequence's buffers; the other sequences' inputs and outputs
/// follow at [`GpuParam::InputStride`] and [`GpuParam::OutputStride`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuBatchedEntry {
    /// The entry's parameters, in order.
    pub params: Vec<GpuParam>,
    /// Registers per thread, as `ptxas` reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registers: Option<u32>,
    /// Static shared memory per block in bytes, as `ptxas` reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

/// The PTX entry of the batched form of kernel `symbol`.
pub fn batched_entry(symbol: &str) -> String {
    format!("zk_{symbol}_batched")
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
    /// threads (a warp per row for a warp-reducing kernel, a block for a row kernel over a
    /// wide row, a warp per state row for the Mamba2 scan).
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
    /// For a Gemv: the entry that computes it for a batch of sequences at once (same lanes
    /// and block size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batched: Option<GpuBatchedEntry>,
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

/// The text of the `.entry name` of a PTX text, from its `.entry` to the next entry (or the
/// end), or `None` when the text has no such entry.
pub fn ptx_entry_text<'a>(ptx: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    loop {
        let at = from + ptx[from..].find(".entry")?;
        let after = &ptx[at + ".entry".len()..];
        let head = after.trim_start();
        let named = head
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('('));
        if named {
            let rest = &ptx[at..];
            let end = rest[1..].find(".entry").map_or(rest.len(), |i| i + 1);
            return Some(&rest[..end]);
        }
        from = at + ".entry".len();
    }
}

/// Whether a launch of `entry` reaches every barrier of its PTX text with every thread of
/// every block: a kernel that synchronises a block (`bar.sync`) must give each grid index
/// whole blocks (its lanes a multiple of the block size), since the threads past the end of
/// a launch's range skip the kernel's body and its barriers.
pub fn barriers_reach_whole_blocks(entry: &GpuEntry, text: &str) -> bool {
    !text.contains("bar.sync")
        || (entry.block_size > 0 && entry.lanes.is_multiple_of(entry.block_size))
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
    fn an_entrys_text_runs_to_the_next_entry() {
        let a = ptx_entry_text(PTX, "zk_a").expect("zk_a");
        assert!(a.starts_with(".entry zk_a(") && a.contains(".maxntid 256"));
        assert!(!a.contains("zk_ab"));
        let ab = ptx_entry_text(PTX, "zk_ab").expect("zk_ab");
        assert!(ab.starts_with(".entry zk_ab(") && ab.ends_with("{ ret; }\n"));
        assert_eq!(ptx_entry_text(PTX, "zk_b"), None);
    }

    #[test]
    fn a_kernel_with_barriers_needs_whole_blocks_per_grid_index() {
        let entry = |lanes, block_size| GpuEntry {
            symbol: "a".into(),
            params: vec![],
            lanes,
            block_size,
            registers: None,
            shared_bytes: None,
            batched: None,
        };
        let synced = "{ bar.sync 0; ret; }";
        assert!(barriers_reach_whole_blocks(&entry(256, 256), synced));
        assert!(barriers_reach_whole_blocks(&entry(512, 256), synced));
        assert!(!barriers_reach_whole_blocks(&entry(32, 256), synced));
        assert!(!barriers_reach_whole_blocks(&entry(1, 256), synced));
        assert!(barriers_reach_whole_blocks(&entry(32, 256), "{ ret; }"));
    }

    #[test]
    fn params_serialise_as_tagged_names() {
        let params = vec![GpuParam::Begin, GpuParam::View(2), GpuParam::Int(0)];
        let json = serde_json::to_string(&params).expect("serialise");
        assert_eq!(json, r#"["begin",{"view":2},{"int":0}]"#);
    }
}
