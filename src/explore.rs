//! `zambac explore`: the cost model of a model and of its variants, as a table, JSON,
//! CSV and an SVG plot of KV-cache memory against context length.

use std::io::Write;
use std::path::PathBuf;

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use zambac_frontend::ModelSpec;
use zambac_ir::cost::Report;

use crate::error::{CliError, CliResult};
use crate::fmt::{bytes, count, si};

/// Options of `zambac explore`.
#[derive(clap::Args, Debug)]
pub struct ExploreArgs {
    /// A model description (.toml), a Hugging Face config.json, or a checkpoint directory.
    pub input: PathBuf,
    /// Context lengths to cost, comma-separated (`4096,16384`; `16k` = 16384).
    #[arg(long, default_value = "4096")]
    pub context: String,
    /// Vary one description key: `--sweep shared.every=3,6,9`. Repeat for a grid.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write the variant table as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also plot KV-cache memory against context length for each variant (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// One costed model: the base or a sweep variant.
struct Variant {
    label: String,
    overrides: Vec<(String, String)>,
    report: Report,
}

pub fn run(args: &ExploreArgs) -> CliResult<()> {
    let loaded = zambac_frontend::load(&args.input)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let contexts = parse_contexts(&args.context)?;
    let grid = parse_sweeps(&args.sweep)?;
    let mut variants = vec![cost(&loaded.spec, "(base)".into(), vec![], &contexts)?];
    for overrides in grid {
        let spec = zambac_frontend::apply_overrides(&loaded.spec, &overrides)?;
        let label = overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        variants.push(cost(&spec, label, overrides, &contexts)?);
    }
    if args.json {
        println!("{}", json(&variants)?);
    } else {
        print_tables(&variants, &contexts);
    }
    if let Some(path) = &args.csv {
        write_csv(path, &variants)
            .map_err(|e| CliError::input(format!("cannot write CSV `{}`: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        crate::plot::kv_vs_context(path, &variants_kv(&variants, &contexts))?;
    }
    Ok(())
}

fn cost(
    spec: &ModelSpec,
    label: String,
    overrides: Vec<(String, String)>,
    contexts: &[usize],
) -> CliResult<Variant> {
    let module = zambac_ir::build(spec)?;
    Ok(Variant {
        label,
        overrides,
        report: Report::new(spec, &module, contexts),
    })
}

/// Parses `4096,16k`.
pub fn parse_contexts(s: &str) -> CliResult<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (num, mult) = match part.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1024),
            None => (part, 1),
        };
        match num.parse::<usize>() {
            Ok(n) if n > 0 => out.push(n * mult),
            _ => {
                return Err(CliError::input(format!(
                    "error: --context: expected positive token counts like `4096,16k`, found `{part}`"
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

fn json(variants: &[Variant]) -> CliResult<String> {
    let base = &variants[0];
    let mut obj = serde_json::to_value(&base.report).map_err(anyhow::Error::from)?;
    if variants.len() > 1 {
        let sweep: Vec<serde_json::Value> = variants[1..]
            .iter()
            .map(|v| {
                let mut o = serde_json::to_value(&v.report).unwrap_or_default();
                let ov: serde_json::Map<String, serde_json::Value> = v
                    .overrides
                    .iter()
                    .map(|(k, val)| (k.clone(), serde_json::Value::String(val.clone())))
                    .collect();
                o["overrides"] = serde_json::Value::Object(ov);
                o
            })
            .collect();
        obj["sweep"] = serde_json::Value::Array(sweep);
    }
    Ok(serde_json::to_string_pretty(&obj).map_err(anyhow::Error::from)?)
}

fn print_tables(variants: &[Variant], contexts: &[usize]) {
    let r = &variants[0].report;
    let mut out = std::io::stdout().lock();
    let hybrids = r
        .hybrid_layers
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let _ = writeln!(
        out,
        "{} — {}, {} layers, {} hybrid ({}), {} shared block(s)\n",
        r.name,
        r.family,
        r.layers,
        r.hybrid_layers.len(),
        if hybrids.is_empty() { "none" } else { &hybrids },
        r.shared_blocks
    );
    let b = &r.param_breakdown;
    let t = &r.transformer;
    let kv_ratio = t.kv_cache_elems_per_token as f64 / r.kv_cache_elems_per_token.max(1) as f64;
    let rows: Vec<(&str, String)> = vec![
        ("parameters", count(r.params)),
        ("  embedding", count(b.embedding)),
        ("  lm_head (untied)", count(b.lm_head)),
        ("  mamba layers + final norm", count(b.mamba)),
        ("  shared blocks (each once)", count(b.shared_blocks)),
        ("  LoRA adapters (per invocation)", count(b.adapters)),
        ("  hybrid linears (per invocation)", count(b.hybrid_linears)),
        (
            "weights",
            format!(
                "{} f32 · {} bf16",
                bytes(r.weight_bytes["f32"]),
                bytes(r.weight_bytes["bf16"])
            ),
        ),
        (
            "KV cache per token",
            format!(
                "{} elems · {} f32 · {} bf16",
                count(r.kv_cache_elems_per_token),
                bytes(r.kv_cache_bytes_per_token_f32),
                bytes(r.kv_cache_bytes_per_token_bf16)
            ),
        ),
        (
            "  transformer, same width/depth",
            format!(
                "{} elems ({:.1}× the KV cache; {} params)",
                count(t.kv_cache_elems_per_token),
                kv_ratio,
                count(t.params)
            ),
        ),
        (
            "recurrent state per sequence",
            format!(
                "conv {} + ssm {} elems · {} f32",
                count(r.conv_state_elems),
                count(r.ssm_state_elems),
                bytes(r.recurrent_state_bytes)
            ),
        ),
    ];
    for (k, v) in rows {
        if k.contains("untied") && b.lm_head == 0 {
            continue;
        }
        let _ = writeln!(out, "{k:<34} {v}");
    }
    let _ = writeln!(out);
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "context",
        "KV cache (f32)",
        "transformer KV",
        "prefill FLOP/tok",
        "decode FLOP/tok",
        "H100 decode/tok",
        "H100 prefill",
    ]);
    for c in &r.contexts {
        table.add_row(right(vec![
            count(c.context as u64),
            bytes(c.kv_cache_bytes),
            bytes(c.transformer_kv_cache_bytes),
            si(c.prefill_flops_per_token),
            si(c.decode_flops_per_token),
            format!("{:.3} ms", c.h100_decode_s * 1e3),
            format!("{:.2} ms", c.h100_prefill_s * 1e3),
        ]));
    }
    let _ = writeln!(out, "{table}");
    if variants.len() > 1 {
        let _ = writeln!(out, "\nsweep (costs at context {}):", contexts[0]);
        let _ = writeln!(out, "{}", variant_table(variants));
    }
}

fn variant_table(variants: &[Variant]) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "variant",
        "params",
        "weights bf16",
        "hybrid layers",
        "KV elems/tok",
        "KV cache (f32)",
        "state (f32)",
        "H100 decode/tok",
        "H100 prefill",
    ]);
    for v in variants {
        let r = &v.report;
        let c = &r.contexts[0];
        let mut cells = vec![Cell::new(&v.label)];
        cells.extend(right(vec![
            count(r.params),
            bytes(r.weight_bytes["bf16"]),
            r.hybrid_layers.len().to_string(),
            count(r.kv_cache_elems_per_token),
            bytes(c.kv_cache_bytes),
            bytes(r.recurrent_state_bytes),
            format!("{:.3} ms", c.h100_decode_s * 1e3),
            format!("{:.2} ms", c.h100_prefill_s * 1e3),
        ]));
        table.add_row(cells);
    }
    table
}

fn right(cells: Vec<String>) -> Vec<Cell> {
    cells
        .into_iter()
        .map(|c| Cell::new(c).set_alignment(CellAlignment::Right))
        .collect()
}

fn write_csv(
    path: &std::path::Path,
    variants: &[Variant],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "variant",
        "context",
        "params",
        "weight_bytes_bf16",
        "weight_bytes_f32",
        "hybrid_layers",
        "kv_cache_elems_per_token",
        "kv_cache_bytes_f32",
        "recurrent_state_bytes_f32",
        "prefill_flops_per_token",
        "decode_flops_per_token",
        "h100_decode_s",
        "h100_prefill_s",
    ])?;
    for v in variants {
        let r = &v.report;
        for c in &r.contexts {
            w.write_record([
                v.label.clone(),
                c.context.to_string(),
                r.params.to_string(),
                r.weight_bytes["bf16"].to_string(),
                r.weight_bytes["f32"].to_string(),
                r.hybrid_layers.len().to_string(),
                r.kv_cache_elems_per_token.to_string(),
                c.kv_cache_bytes.to_string(),
                r.recurrent_state_bytes.to_string(),
                format!("{:.6e}", c.prefill_flops_per_token),
                format!("{:.6e}", c.decode_flops_per_token),
                format!("{:.6e}", c.h100_decode_s),
                format!("{:.6e}", c.h100_prefill_s),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}

/// (label, KV bytes per token, state bytes) of each variant, plus the transformer
/// baseline of the base model, for the plot.
fn variants_kv(variants: &[Variant], contexts: &[usize]) -> crate::plot::KvSeries {
    let mut series: Vec<(String, f64, f64)> = variants
        .iter()
        .map(|v| {
            (
                v.label.clone(),
                v.report.kv_cache_bytes_per_token_f32 as f64,
                v.report.recurrent_state_bytes as f64,
            )
        })
        .collect();
    let base = &variants[0].report;
    series.push((
        "transformer (same width/depth)".into(),
        4.0 * base.transformer.kv_cache_elems_per_token as f64,
        0.0,
    ));
    crate::plot::KvSeries {
        title: format!("{}: KV cache + recurrent state (f32) vs context", base.name),
        max_context: contexts.iter().copied().max().unwrap_or(4096).max(1024),
        series,
    }
}
