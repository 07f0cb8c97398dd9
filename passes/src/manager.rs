//! The `Pass` trait and the pass manager, which owns everything passes share: the verifier
//! after every pass (a failure names the pass), IR printing before/after passes, dumps to
//! a directory, timing with op counts, disabling passes and custom pipelines.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use zambac_ir::{Bindings, Module, print_module, verify_module};

use crate::pipeline::{Step, default_pipeline};
use crate::registry::lookup;

/// Whether a pass changed the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

impl Changed {
    pub fn from(b: bool) -> Changed {
        if b { Changed::Yes } else { Changed::No }
    }
}

/// A pass met a module it cannot handle.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pass `{pass}`: {msg}")]
pub struct PassError {
    pub pass: &'static str,
    pub msg: String,
}

/// A transformation of a whole module (both entry graphs and the parameter table).
pub trait Pass: Sync {
    /// Kebab-case name: the file name, the CLI name, the dump name.
    fn name(&self) -> &'static str;
    /// One line for `--help` style listings.
    fn summary(&self) -> &'static str;
    fn run(&self, m: &mut Module, cx: &mut PassCx) -> Result<Changed, PassError>;
}

/// What passes may read and record.
pub struct PassCx {
    /// Sizes the memory planner ranks buffers at (and reports peaks for).
    pub plan_bindings: Bindings,
    /// Counters per pass, printed with `--time-passes` (e.g. "mamba mixers fused: 6").
    pub stats: Vec<(&'static str, String)>,
    current: &'static str,
}

impl PassCx {
    pub fn new(plan_bindings: Bindings) -> PassCx {
        PassCx {
            plan_bindings,
            stats: Vec::new(),
            current: "",
        }
    }

    /// Records a statistic for the running pass.
    pub fn stat(&mut self, msg: impl Into<String>) {
        self.stats.push((self.current, msg.into()));
    }
}

/// Observability and control options (the `--print-ir-*`, `--dump-dir`, `--time-passes`,
/// `--disable-pass`, `--passes` flags).
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub print_before: Vec<String>,
    pub print_after: Vec<String>,
    pub print_after_all: bool,
    pub dump_dir: Option<PathBuf>,
    pub time_passes: bool,
    pub disabled: Vec<String>,
    /// Run exactly these passes, in this order, instead of the default pipeline.
    pub passes: Option<Vec<String>>,
}

/// One row of the `--time-passes` table.
#[derive(Clone, Debug)]
pub struct Timing {
    pub pass: &'static str,
    pub time: Duration,
    pub ops_before: usize,
    pub ops_after: usize,
    pub changed: bool,
}

/// Errors of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A pass name the user gave does not exist.
    #[error("unknown pass `{name}`; valid passes are: {valid}")]
    UnknownPass { name: String, valid: String },
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The verifier rejected the module a pass produced: a compiler bug.
    #[error("internal error: the IR is invalid after pass `{pass}`:\n{errors}")]
    Verify { pass: String, errors: String },
    #[error("cannot write IR dump `{path}`: {err}")]
    Dump { path: String, err: String },
}

impl PipelineError {
    /// Whether the user caused it (exit code 2) rather than the compiler (exit code 1).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            PipelineError::UnknownPass { .. } | PipelineError::Dump { .. }
        )
    }
}

/// Runs pipelines with the options' observability.
pub struct PassManager {
    opts: Options,
    steps: Vec<Step>,
    pub timings: Vec<Timing>,
    pub stats: Vec<(&'static str, String)>,
    dump_counter: usize,
}

impl PassManager {
    /// Resolves the pipeline (default or `--passes`) and checks every named pass exists.
    pub fn new(opts: Options) -> Result<PassManager, PipelineError> {
        for n in opts
            .print_before
            .iter()
            .chain(&opts.print_after)
            .chain(&opts.disabled)
            .chain(opts.passes.iter().flatten())
        {
            lookup(n)?;
        }
        let steps = match &opts.passes {
            Some(names) => names
                .iter()
                .map(|n| lookup(n).map(Step::Pass))
                .collect::<Result<_, _>>()?,
            None => default_pipeline(),
        };
        Ok(PassManager {
            opts,
            steps,
            timings: Vec::new(),
            stats: Vec::new(),
            dump_counter: 0,
        })
    }

    /// Runs the pipeline on `m`, writing IR prints to `out`.
    pub fn run(
        &mut self,
        m: &mut Module,
        cx: &mut PassCx,
        out: &mut dyn Write,
    ) -> Result<(), PipelineError> {
        verify(m, "(input)")?;
        self.dump(m, "input")?;
        let steps = self.steps.clone();
        for step in steps {
            match step {
                Step::Pass(p) => {
                    self.run_one(p, m, cx, out)?;
                }
                Step::Fixpoint { passes, max_iters } => {
                    for _ in 0..max_iters {
                        let mut any = false;
                        for p in passes {
                            any |= self.run_one(*p, m, cx, out)?;
                        }
                        if !any {
                            break;
                        }
                    }
                }
            }
        }
        self.stats.append(&mut cx.stats);
        Ok(())
    }

    fn run_one(
        &mut self,
        p: &'static dyn Pass,
        m: &mut Module,
        cx: &mut PassCx,
        out: &mut dyn Write,
    ) -> Result<bool, PipelineError> {
        let name = p.name();
        if self.opts.disabled.iter().any(|d| d == name) {
            return Ok(false);
        }
        if self.opts.print_before.iter().any(|n| n == name) {
            let _ = write!(out, "; IR before {name}\n{}\n", print_module(m));
        }
        let ops_before = op_count(m);
        cx.current = name;
        let start = Instant::now();
        let changed = p.run(m, cx)? == Changed::Yes;
        let time = start.elapsed();
        if changed && name != "plan-memory" {
            // A changed graph invalidates any earlier memory plan.
            for g in &mut m.graphs {
                g.plan = None;
            }
        }
        verify(m, name)?;
        self.timings.push(Timing {
            pass: name,
            time,
            ops_before,
            ops_after: op_count(m),
            changed,
        });
        if self.opts.print_after_all || self.opts.print_after.iter().any(|n| n == name) {
            let _ = write!(out, "; IR after {name}\n{}\n", print_module(m));
        }
        self.dump(m, name)?;
        Ok(changed)
    }

    fn dump(&mut self, m: &Module, name: &str) -> Result<(), PipelineError> {
        let Some(dir) = &self.opts.dump_dir else {
            return Ok(());
        };
        let path = dir.join(format!("{:03}-{name}.zir", self.dump_counter));
        self.dump_counter += 1;
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&path, print_module(m)))
            .map_err(|e| PipelineError::Dump {
                path: path.display().to_string(),
                err: e.to_string(),
            })
    }

    /// The `--time-passes` table.
    pub fn timing_table(&self) -> String {
        let mut s = String::from("pass               time      ops before → after\n");
        let mut total = Duration::ZERO;
        for t in &self.timings {
            total += t.time;
            s.push_str(&format!(
                "{:<18} {:>8.3} ms {:>6} → {:<6}{}\n",
                t.pass,
                t.time.as_secs_f64() * 1e3,
                t.ops_before,
                t.ops_after,
                if t.changed { "" } else { " (no change)" }
            ));
        }
        s.push_str(&format!(
            "{:<18} {:>8.3} ms\n",
            "total",
            total.as_secs_f64() * 1e3
        ));
        s
    }
}

fn op_count(m: &Module) -> usize {
    m.graphs.iter().map(|g| g.op_count()).sum()
}

fn verify(m: &Module, pass: &str) -> Result<(), PipelineError> {
    verify_module(m).map_err(|errs| PipelineError::Verify {
        pass: pass.to_string(),
        errors: errs
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}
