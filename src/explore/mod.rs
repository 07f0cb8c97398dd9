//! `zambac explore`: the cost model of a model and of its variants — as a table, JSON, CSV
//! and SVG plots — and, with `--measure`, every variant built into a CPU engine and
//! measured beside its estimates.

mod measure;
mod render;

use std::path::PathBuf;

use zambac_frontend::ModelSpec;
use zambac_ir::cost::Report;

use crate::error::{CliError, CliResult};
pub use measure::Measured;

/// Options of `zambac explore`.
#[derive(clap::Args, Debug)]
pub struct ExploreArgs {
    /// A model description (.toml), a Hugging Face config.json, or a checkpoint directory.
    pub input: PathBuf,
    /// Context lengths to cost, comma-separated (`4096,16384`; `16k` = 16384). With
    /// `--measure`, the first is the context the engines' memory is measured at.
    #[arg(long, default_value = "4096")]
    pub context: String,
    /// Vary one description key: `--sweep shared.every=3,6,9`. Repeat for a grid.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Also build every variant into a CPU engine (random weights, seed 0) and measure
    /// prefill time, decode tokens/s, peak memory and the KV cache + state it allocates.
    #[arg(long)]
    pub measure: bool,
    /// Prompt length of the measured prefill.
    #[arg(long, default_value_t = 128, requires = "measure")]
    pub prompt_len: usize,
    /// Tokens decoded in the measurement.
    #[arg(long, default_value_t = 32, requires = "measure")]
    pub new_tokens: usize,
    /// Sequences decoded at once: the estimates scale the KV cache and state by it, and
    /// `--measure` decodes that many sequences together (decode tok/s counts them all).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Compile every variant's kernels without the compile cache.
    #[arg(long, requires = "measure")]
    pub no_cache: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the variant table as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also plot (SVG): KV-cache memory against context length for each variant; with
    /// `--measure`, measured decode tokens/s and memory against the swept key, beside the
    /// estimates.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// One explored model: the base or a sweep variant.
pub struct Variant {
    pub label: String,
    pub overrides: Vec<(String, String)>,
    pub outcome: Outcome,
}

/// What exploring a variant gave.
pub enum Outcome {
    /// The overrides do not describe a model: why.
    Invalid(String),
    Costed {
        report: Box<Report>,
        /// With `--measure`: the measurement, or why the variant could not be measured.
        measured: Option<Result<Measured, String>>,
    },
}

impl Variant {
    pub fn report(&self) -> Option<&Report> {
        match &self.outcome {
            Outcome::Costed { report, .. } => Some(report),
            Outcome::Invalid(_) => None,
        }
    }

    pub fn measured(&self) -> Option<&Result<Measured, String>> {
        match &self.outcome {
            Outcome::Costed { measured, .. } => measured.as_ref(),
            Outcome::Invalid(_) => None,
        }
    }
}

pub fn run(args: &ExploreArgs) -> CliResult<()> {
    let loaded = zambac_frontend::load(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let contexts = parse_contexts(&args.context)?;
    let first_context = *contexts
        .first()
        .ok_or_else(|| CliError::input("error: --context: give at least one token count"))?;
    if args.batch == 0 {
        return Err(CliError::input("error: --batch must be at least 1"));
    }
    if args.measure && args.prompt_len == 0 {
        return Err(CliError::input("error: --prompt-len must be at least 1"));
    }
    let grid = parse_sweeps(&args.sweep)?;
    let base = cost(&loaded.spec, &contexts, args.batch)?;
    let mut specs = vec![("(base)".to_string(), vec![], Ok(loaded.spec.clone()))];
    for overrides in grid {
        let label = overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let spec =
            zambac_frontend::apply_overrides(&loaded.spec, &overrides).map_err(|e| reason(&e));
        specs.push((label, overrides, spec));
    }
    let mut variants = Vec::with_capacity(specs.len());
    for (i, (label, overrides, spec)) in specs.iter().enumerate() {
        let outcome = match spec {
            Err(reason) => Outcome::Invalid(reason.clone()),
            Ok(_) if i == 0 => Outcome::Costed {
                report: Box::new(base.clone()),
                measured: None,
            },
            Ok(spec) => match cost(spec, &contexts, args.batch) {
                Ok(report) => Outcome::Costed {
                    report: Box::new(report),
                    measured: None,
                },
                Err(e) => Outcome::Invalid(e.to_string()),
            },
        };
        variants.push(Variant {
            label: label.clone(),
            overrides: overrides.clone(),
            outcome,
        });
    }
    // A sweep of which no variant is a model is a mistake in the command (a misspelt key, a
    // value no model takes), not a sweep with some invalid corners.
    let invalid = |v: &Variant| matches!(v.outcome, Outcome::Invalid(_));
    let sweep = variants.get(1..).unwrap_or_default();
    if !sweep.is_empty() && sweep.iter().all(invalid) {
        let reasons: Vec<String> = sweep
            .iter()
            .filter_map(|v| match &v.outcome {
                Outcome::Invalid(r) => Some(format!("  {}: {r}", v.label)),
                Outcome::Costed { .. } => None,
            })
            .collect();
        return Err(CliError::input(format!(
            "error: --sweep: no variant describes a model:\n{}",
            reasons.join("\n")
        )));
    }
    if args.measure {
        let opts = measure::Options {
            input: args.input.clone(),
            prompt_len: args.prompt_len,
            new_tokens: args.new_tokens,
            context: first_context,
            batch: args.batch,
            seed: crate::model::DEFAULT_SEED,
            no_cache: args.no_cache,
        };
        let specs: Vec<Option<&ModelSpec>> =
            specs.iter().map(|(_, _, s)| s.as_ref().ok()).collect();
        measure::all(&mut variants, &specs, &opts)?;
    }
    if args.json {
        println!("{}", render::json(&variants)?);
    } else {
        render::print_tables(&variants, &contexts, args);
    }
    if let Some(path) = &args.csv {
        render::write_csv(path, &variants)
            .map_err(|e| CliError::input(format!("cannot write CSV `{}`: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        if args.measure {
            crate::plot::measured_vs_variant(path, &render::measured_series(&variants, args))?;
        } else {
            crate::plot::kv_vs_context(path, &render::variants_kv(&variants, &contexts))?;
        }
    }
    Ok(())
}

/// Why a variant is invalid, on one line: the first line of the frontend's message (the
/// rest is a source excerpt of the override).
fn reason(e: &zambac_frontend::FrontendError) -> String {
    let text = e.render();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_string()
}

/// The cost report of `spec`, with the KV cache and state of `batch` sequences.
fn cost(spec: &ModelSpec, contexts: &[usize], batch: usize) -> CliResult<Report> {
    let module = zambac_ir::build(spec)?;
    let mut r = Report::new(spec, &module, contexts);
    r.scale_sequences(batch);
    Ok(r)
}

/// The longest context explore costs: 2^32 tokens (with every size of a description at
/// most 2^24, the cost model's element counts stay far inside 64 bits).
pub const MAX_CONTEXT: usize = 1 << 32;

/// Parses `4096,16k`.
pub fn parse_contexts(s: &str) -> CliResult<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (num, mult) = match part.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1024),
            None => (part, 1),
        };
        match num.parse::<usize>().ok().and_then(|n| n.checked_mul(mult)) {
            Some(n) if n > 0 && n <= MAX_CONTEXT => out.push(n),
            _ => {
                return Err(CliError::input(format!(
                    "error: --context: expected positive token counts up to {MAX_CONTEXT} \
                     like `4096,16k`, found `{part}`"
                )));
            }
        }
    }
    Ok(out)
}

/// Parses repeated `--sweep key=v1,v2` into the grid of override lists (cartesian product).
fn parse_sweeps(sweeps: &[String]) -> CliResult<Vec<Vec<(String, String)>>> {
    let mut grid: Vec<Vec<(String, String)>> = vec![vec![]];
    for s in sweeps {
        let Some((key, values)) = s.split_once('=') else {
            return Err(CliError::input(format!(
                "error: --sweep `{s}`: expected KEY=V1,V2,... (for example shared.every=3,6)"
            )));
        };
        let values = split_top_level(values);
        if key.trim().is_empty() || values.iter().any(|v| v.is_empty()) {
            return Err(CliError::input(format!(
                "error: --sweep `{s}`: expected KEY=V1,V2,... with non-empty values"
            )));
        }
        grid = grid
            .into_iter()
            .flat_map(|row| {
                values.iter().map(move |v| {
                    let mut r = row.clone();
                    r.push((key.trim().to_string(), v.clone()));
                    r
                })
            })
            .collect();
    }
    Ok(if sweeps.is_empty() { vec![] } else { grid })
}

/// Splits on commas outside brackets, so list values like `[1,5]` stay whole.
fn split_top_level(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}
