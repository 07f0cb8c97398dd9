//! Rendering explored variants: the terminal tables, JSON, CSV, and the series the plots
//! draw. Measured values go into their own columns and fields, so formats stay comparable
//! across runs with the measurements masked (the snapshot tests do).

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};

use super::{ExploreArgs, Measured, Variant};
use crate::error::CliResult;
use crate::fmt::{bytes, count, duration, si};

use std::io::Write;

/// Sets `key` of a JSON object (a report serializes to one).
fn set(o: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if let Some(fields) = o.as_object_mut() {
        fields.insert(key.to_string(), value);
    }
}

/// The report's weight bytes in `dtype` (`f32` or `bf16`; the report holds both).
fn weight_bytes(r: &zambac_ir::cost::Report, dtype: &str) -> u64 {
    r.weight_bytes.get(dtype).copied().unwrap_or_default()
}

/// The base model's report, with `sweep`: each variant's report and `overrides`, an
/// `error` for an invalid one, and `measured` (or `measure_error`) when measured.
pub fn json(variants: &[Variant]) -> CliResult<String> {
    let Some((base, sweep)) = variants.split_first() else {
        return Ok("{}".into());
    };
    let mut obj = variant_json(base)?;
    if !sweep.is_empty() {
        let sweep = sweep
            .iter()
            .map(variant_json)
            .collect::<CliResult<Vec<_>>>()?;
        set(&mut obj, "sweep", serde_json::Value::Array(sweep));
    }
    Ok(serde_json::to_string_pretty(&obj).map_err(anyhow::Error::from)?)
}

fn variant_json(v: &Variant) -> CliResult<serde_json::Value> {
    let mut o = match v.report() {
        Some(r) => serde_json::to_value(r).map_err(anyhow::Error::from)?,
        None => serde_json::json!({}),
    };
    if !v.overrides.is_empty() {
        let ov: serde_json::Map<String, serde_json::Value> = v
            .overrides
            .iter()
            .map(|(k, val)| (k.clone(), serde_json::Value::String(val.clone())))
            .collect();
        set(&mut o, "overrides", serde_json::Value::Object(ov));
    }
    if let super::Outcome::Invalid(reason) = &v.outcome {
        set(&mut o, "error", reason.clone().into());
    }
    match v.measured() {
        Some(Ok(m)) => set(
            &mut o,
            "measured",
            serde_json::to_value(m).map_err(anyhow::Error::from)?,
        ),
        Some(Err(e)) => set(&mut o, "measure_error", e.clone().into()),
        None => {}
    }
    Ok(o)
}

/// The base model's details and costs per context, the sweep's variants, and with
/// `--measure` the measured table.
pub fn print_tables(variants: &[Variant], contexts: &[usize], args: &ExploreArgs) {
    let Some(r) = variants.first().and_then(Variant::report) else {
        return;
    };
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
                bytes(weight_bytes(r, "f32")),
                bytes(weight_bytes(r, "bf16"))
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
        let first = contexts.first().copied().unwrap_or_default();
        let _ = writeln!(out, "\nsweep (costs at context {first}):");
        let _ = writeln!(out, "{}", variant_table(variants));
    }
    if args.measure {
        let _ = writeln!(
            out,
            "\nmeasured on this CPU (prefill of {} tokens, {} decoded by {} sequence(s) at once; \
             memory at context {}), beside H100 roofline estimates from the same compiled graphs:",
            args.prompt_len,
            args.new_tokens,
            args.batch,
            contexts.first().copied().unwrap_or_default()
        );
        let _ = writeln!(out, "{}", measured_table(variants, false));
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
        let mut cells = vec![Cell::new(&v.label)];
        match (&v.outcome, v.report()) {
            (_, Some(r)) => {
                let Some(c) = r.contexts.first() else {
                    continue;
                };
                cells.extend(right(vec![
                    count(r.params),
                    bytes(weight_bytes(r, "bf16")),
                    r.hybrid_layers.len().to_string(),
                    count(r.kv_cache_elems_per_token),
                    bytes(c.kv_cache_bytes),
                    bytes(r.recurrent_state_bytes),
                    format!("{:.3} ms", c.h100_decode_s * 1e3),
                    format!("{:.2} ms", c.h100_prefill_s * 1e3),
                ]));
            }
            (super::Outcome::Invalid(reason), None) => {
                cells.push(Cell::new(format!("invalid: {}", one_line(reason))));
            }
            _ => {}
        }
        table.add_row(cells);
    }
    table
}

/// A reason on one line, for a table cell.
fn one_line(reason: &str) -> String {
    reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The measured table. With `mask`, measured cells read `<measured>` (for snapshots: the
/// layout and the estimates are deterministic, the measurements are not).
pub fn measured_table(variants: &[Variant], mask: bool) -> Table {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "variant",
        "KV + state est.",
        "KV + state engine",
        "decode bytes/tok",
        "decode tok/s H100 est.",
        "decode tok/s measured",
        "prefill H100 est.",
        "prefill measured",
        "peak RSS",
        "kernels cached",
    ]);
    let shown = |s: String| if mask { "<measured>".to_string() } else { s };
    for v in variants {
        let mut cells = vec![Cell::new(&v.label)];
        match v.measured() {
            Some(Ok(m)) => cells.extend(right(measured_cells(m, shown))),
            Some(Err(e)) => cells.push(Cell::new(format!("not measured: {}", one_line(e)))),
            None => cells.push(Cell::new("invalid variant")),
        }
        table.add_row(cells);
    }
    table
}

fn measured_cells(m: &Measured, shown: impl Fn(String) -> String) -> Vec<String> {
    let e = &m.estimate;
    vec![
        bytes(e.kv_and_state_bytes),
        shown(bytes(m.kv_and_state_bytes)),
        bytes(e.decode_bytes_per_token as u64),
        si(e.h100_decode_tok_per_s),
        shown(format!("{:.1}", m.decode_tok_per_s)),
        duration(e.h100_prefill_s),
        shown(duration(m.prefill_s)),
        shown(bytes(m.peak_rss_bytes)),
        shown(format!("{}/{}", m.kernels_from_cache, m.kernels)),
    ]
}

fn right(cells: Vec<String>) -> Vec<Cell> {
    cells
        .into_iter()
        .map(|c| Cell::new(c).set_alignment(CellAlignment::Right))
        .collect()
}

/// One row per variant and context: the costs, then the measurements (empty when not
/// measured) and the reason a variant is invalid or could not be measured.
pub fn write_csv(
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
        "measured_prefill_s",
        "measured_decode_tok_per_s",
        "measured_peak_rss_bytes",
        "measured_kv_and_state_bytes",
        "error",
    ])?;
    for v in variants {
        let (measured, measure_error) = match v.measured() {
            Some(Ok(m)) => (
                vec![
                    m.prefill_s.to_string(),
                    m.decode_tok_per_s.to_string(),
                    m.peak_rss_bytes.to_string(),
                    m.kv_and_state_bytes.to_string(),
                ],
                String::new(),
            ),
            Some(Err(e)) => (vec![String::new(); 4], one_line(e)),
            None => (vec![String::new(); 4], String::new()),
        };
        let Some(r) = v.report() else {
            let reason = match &v.outcome {
                super::Outcome::Invalid(reason) => one_line(reason),
                super::Outcome::Costed { .. } => String::new(),
            };
            let mut row = vec![v.label.clone()];
            row.extend(std::iter::repeat_n(String::new(), 16));
            row.push(reason);
            w.write_record(row)?;
            continue;
        };
        for c in &r.contexts {
            let mut row = vec![
                v.label.clone(),
                c.context.to_string(),
                r.params.to_string(),
                weight_bytes(r, "bf16").to_string(),
                weight_bytes(r, "f32").to_string(),
                r.hybrid_layers.len().to_string(),
                r.kv_cache_elems_per_token.to_string(),
                c.kv_cache_bytes.to_string(),
                r.recurrent_state_bytes.to_string(),
                format!("{:.6e}", c.prefill_flops_per_token),
                format!("{:.6e}", c.decode_flops_per_token),
                format!("{:.6e}", c.h100_decode_s),
                format!("{:.6e}", c.h100_prefill_s),
            ];
            row.extend(measured.iter().cloned());
            row.push(measure_error.clone());
            w.write_record(row)?;
        }
    }
    w.flush()?;
    Ok(())
}

/// (label, KV bytes per token, state bytes) of each variant, plus the transformer
/// baseline of the base model, for the plot.
pub fn variants_kv(variants: &[Variant], contexts: &[usize]) -> crate::plot::KvSeries {
    let mut series: Vec<(String, f64, f64)> = variants
        .iter()
        .filter_map(|v| {
            let r = v.report()?;
            Some((
                v.label.clone(),
                r.kv_cache_bytes_per_token_f32 as f64,
                r.recurrent_state_bytes as f64,
            ))
        })
        .collect();
    let Some(base) = variants.first().and_then(Variant::report) else {
        return crate::plot::KvSeries {
            title: String::new(),
            max_context: 1024,
            series,
        };
    };
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

/// The measured variants for the plot: label, measured decode tokens/s and its H100
/// estimate, the KV cache + state the engine allocates and its estimate.
pub fn measured_series(variants: &[Variant], args: &ExploreArgs) -> crate::plot::MeasuredSeries {
    let rows = variants
        .iter()
        .filter_map(|v| {
            let m = v.measured()?.as_ref().ok()?;
            Some(crate::plot::MeasuredPoint {
                label: v.label.clone(),
                decode_measured: m.decode_tok_per_s,
                decode_estimate: m.estimate.h100_decode_tok_per_s,
                memory_measured: m.kv_and_state_bytes as f64,
                memory_estimate: m.estimate.kv_and_state_bytes as f64,
            })
        })
        .collect();
    let name = variants
        .first()
        .and_then(Variant::report)
        .map_or("model", |r| r.name.as_str());
    crate::plot::MeasuredSeries {
        title: format!(
            "{name}: measured (this CPU) and estimated (H100 roofline), prompt {} tokens",
            args.prompt_len
        ),
        points: rows,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Outcome, Variant, cost};
    use super::*;
    use crate::explore::measure::Estimate;

    /// The base tiny model, a valid and an invalid variant, with one synthetic
    /// measurement: what the formats look like, the measurements masked.
    fn variants() -> Vec<Variant> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny.toml");
        let spec = zambac_frontend::load(&path).unwrap().spec;
        let measured = |kv: u64| Measured {
            build_s: 1.5,
            kernels: 30,
            kernels_from_cache: 29,
            prefill_s: 0.25,
            decode_tok_per_s: 123.4,
            peak_rss_bytes: 5 << 20,
            kv_and_state_bytes: kv,
            estimate: Estimate {
                kv_and_state_bytes: kv,
                decode_bytes_per_token: 3.5e6,
                prefill_flops: 2.0e7,
                h100_decode_tok_per_s: 9.5e5,
                h100_prefill_s: 2.0e-8,
            },
        };
        let every2 = vec![("shared.every".to_string(), "2".to_string())];
        let spec2 = zambac_frontend::apply_overrides(&spec, &every2).unwrap();
        vec![
            Variant {
                label: "(base)".into(),
                overrides: vec![],
                outcome: Outcome::Costed {
                    report: Box::new(cost(&spec, &[256], 1).unwrap()),
                    measured: Some(Ok(measured(870_400))),
                },
            },
            Variant {
                label: "shared.every=2".into(),
                overrides: every2,
                outcome: Outcome::Costed {
                    report: Box::new(cost(&spec2, &[256], 1).unwrap()),
                    measured: Some(Err("the benchmark failed: out of memory".into())),
                },
            },
            Variant {
                label: "shared.every=0".into(),
                overrides: vec![("shared.every".into(), "0".into())],
                outcome: Outcome::Invalid(
                    "`shared.every`: expected a positive integer, found 0".into(),
                ),
            },
        ]
    }

    #[test]
    fn measured_table_format() {
        insta::assert_snapshot!(measured_table(&variants(), true).to_string());
    }

    #[test]
    fn variant_table_format() {
        insta::assert_snapshot!(variant_table(&variants()).to_string());
    }

    /// The JSON with every measured number replaced by a mark (the estimates stay).
    #[test]
    fn json_format() {
        let mut v: serde_json::Value = serde_json::from_str(&json(&variants()).unwrap()).unwrap();
        let mask = |m: &mut serde_json::Value| {
            for k in [
                "build_s",
                "prefill_s",
                "decode_tok_per_s",
                "peak_rss_bytes",
                "kv_and_state_bytes",
                "kernels_from_cache",
            ] {
                if m.get(k).is_some() {
                    m[k] = "<measured>".into();
                }
            }
        };
        mask(&mut v["measured"]);
        for s in v["sweep"].as_array_mut().unwrap() {
            if s.get("measured").is_some() {
                mask(&mut s["measured"]);
            }
        }
        insta::assert_snapshot!(serde_json::to_string_pretty(&v).unwrap());
    }
}
