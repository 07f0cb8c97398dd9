//! `dce`: removes ops whose results nothing reads (not an output, no users), and then
//! parameters no graph reads, renumbering the parameter table.
//!
//! Graph inputs are part of the signature and always stay.

use zambac_ir::{Module, OpKind};

use crate::manager::{Changed, Pass, PassCx, PassError};
use crate::pattern::erase_dead;

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn summary(&self) -> &'static str {
        "remove ops and parameters nothing reads"
    }

    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError> {
        let mut ops = 0;
        for g in &mut m.graphs {
            let all: Vec<_> = g
                .nodes()
                .filter(|&n| !matches!(g.kind(n), OpKind::Input { .. }))
                .collect();
            let before = g.op_count();
            erase_dead(g, all);
            ops += before - g.op_count();
        }
        let params = m.compact_params();
        if ops + params > 0 {
            cx.stat(format!("{ops} ops, {params} parameters removed"));
        }
        Ok(Changed::from(ops + params > 0))
    }
}
