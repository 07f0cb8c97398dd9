//! `--sweep key=value` overrides: emit the spec's canonical TOML, edit the table, parse it
//! again — so an override is checked exactly like a hand-edited description.
//!
//! Editing rules (documented in `docs/model-description.md`):
//! * `shared.every`/`shared.offset` replace an explicit `layers` list; a missing `offset`
//!   becomes the first hybrid layer of the base model. `shared.layers` removes
//!   `every`/`offset`.
//! * Changing the schedule, `shared.blocks` or `model.num_layers` drops an explicit
//!   `assignment` (back to round-robin) unless `shared.assignment` is overridden too.
//! * `shared.rope = false` drops `rope_theta` and `rope_scaling`; `mamba.heads` drops `mamba.head_dim` and
//!   vice versa; a new `mamba.version` drops the version-specific mamba keys.
//! * `adapter_rank` sets `shared.mlp_adapter_rank`, and `shared.attention_adapter_rank`
//!   only where attention adapters already exist (rank > 0), as HF's single
//!   `adapter_rank` does.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use toml::de::DeValue;

use crate::emit::to_toml;
use crate::error::{Diagnostic, FrontendError};
use crate::reader::suggest;
use crate::spec::ModelSpec;
use crate::toml_desc::all_keys;

/// The convenience key that sets both adapter ranks.
const ADAPTER_RANK: &str = "adapter_rank";

/// One override as typed on the command line, with its label and text for diagnostics.
struct Override<'a> {
    key: &'a str,
    value: &'a str,
}

impl Override<'_> {
    fn text(&self) -> String {
        format!("{}={}", self.key, self.value)
    }

    fn label(&self) -> String {
        format!("--sweep {}", self.text())
    }

    /// Span of the value inside [`Override::text`].
    fn value_span(&self) -> Range<usize> {
        self.key.len() + 1..self.key.len() + 1 + self.value.len()
    }

    fn error(&self, span: Range<usize>, key: &str, expected: &str, found: &str) -> Diagnostic {
        Diagnostic::at(
            self.label(),
            &Arc::from(self.text()),
            span,
            key,
            expected,
            found,
        )
    }
}

/// `spec` with each `(dotted key, TOML value)` applied; the result is validated like any
/// description. Errors name the key and carry the label `--sweep key=value`.
pub fn apply_overrides(
    spec: &ModelSpec,
    overrides: &[(String, String)],
) -> Result<ModelSpec, FrontendError> {
    let ovs: Vec<Override<'_>> = overrides
        .iter()
        .map(|(k, v)| Override {
            key: k.trim(),
            value: v.trim(),
        })
        .collect();
    let base = to_toml(spec);
    let mut doc: toml::Table = base.parse().map_err(|e: toml::de::Error| {
        Diagnostic::new(
            "<canonical description>",
            "<internal>",
            "a canonical description that parses",
            e.to_string(),
        )
    })?;
    let mut errors = Vec::new();
    for ov in &ovs {
        if let Err(e) = set(&mut doc, ov) {
            errors.extend(e.into_diagnostics());
        }
    }
    if !errors.is_empty() {
        return Err(FrontendError::new(errors));
    }
    fix_up(&mut doc, &ovs, spec)?;
    let edited = doc.to_string();
    crate::parse_toml(&edited, &spec.name).map_err(|e| relabel(e, &ovs))
}

/// Parses the value and stores it under the key (or both adapter ranks).
fn set(doc: &mut toml::Table, ov: &Override<'_>) -> Result<(), FrontendError> {
    let keys = all_keys();
    let known = ov.key == ADAPTER_RANK || keys.iter().any(|k| k == ov.key);
    if !known {
        let mut names: Vec<&str> = keys.iter().map(String::as_str).collect();
        names.push(ADAPTER_RANK);
        let mut expected = "a key of the model description".to_string();
        if let Some(best) = suggest(ov.key, &names) {
            expected.push_str(&format!(" (did you mean `{best}`?)"));
        }
        return Err(ov
            .error(
                0..ov.key.len(),
                ov.key,
                &expected,
                &format!("unknown key `{}`", ov.key),
            )
            .with_note(format!("valid keys: {}", names.join(", ")))
            .into());
    }
    let value = parse_value(ov)?;
    if ov.key == ADAPTER_RANK {
        let Some(rank) = value.as_integer() else {
            return Err(ov
                .error(ov.value_span(), ov.key, "a non-negative integer", ov.value)
                .into());
        };
        let shared = table_mut(doc, "shared").ok_or_else(|| internal("shared"))?;
        let has_attn = shared
            .get("attention_adapter_rank")
            .and_then(toml::Value::as_integer)
            .unwrap_or(0)
            > 0;
        shared.insert("mlp_adapter_rank".into(), rank.into());
        if has_attn {
            shared.insert("attention_adapter_rank".into(), rank.into());
        }
        return Ok(());
    }
    let (table, key) = ov.key.split_once('.').unwrap_or(("", ov.key));
    table_mut(doc, table)
        .ok_or_else(|| internal(table))?
        .insert(key.to_string(), value);
    Ok(())
}

/// One of the description's tables; the canonical form always has all three.
fn table_mut<'d>(doc: &'d mut toml::Table, name: &str) -> Option<&'d mut toml::Table> {
    doc.get_mut(name)?.as_table_mut()
}

fn internal(what: &str) -> Diagnostic {
    Diagnostic::new(
        "<canonical description>",
        what,
        "a table in the canonical description",
        "none (a zambac bug)",
    )
}

/// A TOML value (`4`, `true`, `"silu"`, `[1, 2]`).
fn parse_value(ov: &Override<'_>) -> Result<toml::Value, FrontendError> {
    let start = ov.key.len() + 1;
    let parsed = DeValue::parse(ov.value).map_err(|e| {
        let span = e
            .span()
            .map_or(ov.value_span(), |s| start + s.start..start + s.end);
        let found = if ov.value.is_empty() {
            "nothing".to_string()
        } else {
            e.message().to_string()
        };
        ov.error(
            span,
            ov.key,
            "a TOML value such as 4, true, \"silu\" or [1, 2]",
            &found,
        )
    })?;
    convert(parsed.get_ref()).ok_or_else(|| {
        ov.error(
            ov.value_span(),
            ov.key,
            "a number, boolean, string or array",
            ov.value,
        )
        .into()
    })
}

fn convert(v: &DeValue<'_>) -> Option<toml::Value> {
    Some(match v {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(i) => {
            toml::Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).ok()?)
        }
        DeValue::Float(f) => toml::Value::Float(f.as_str().parse().ok()?),
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|i| convert(i.get_ref()))
                .collect::<Option<_>>()?,
        ),
        DeValue::Datetime(_) | DeValue::Table(_) => return None,
    })
}

/// Applies the editing rules of the module doc.
fn fix_up(
    doc: &mut toml::Table,
    ovs: &[Override<'_>],
    base: &ModelSpec,
) -> Result<(), FrontendError> {
    let touched: BTreeSet<&str> = ovs.iter().map(|o| o.key).collect();
    let t = |k: &str| touched.contains(k);
    let shared = table_mut(doc, "shared").ok_or_else(|| internal("shared"))?;
    if (t("shared.every") || t("shared.offset")) && !t("shared.layers") {
        shared.remove("layers");
        if !shared.contains_key("every") {
            let (expected, found) = (
                "an `every` to go with `offset`",
                "no `every`: the base model lists its hybrid layers",
            );
            return Err(match ovs.iter().find(|o| o.key == "shared.offset") {
                Some(o) => o.error(0..o.key.len(), "shared.every", expected, found),
                None => Diagnostic::new("--sweep shared.offset", "shared.every", expected, found),
            }
            .into());
        }
        if !shared.contains_key("offset") {
            let first = base.hybrid_layer_ids().first().copied().unwrap_or(0);
            shared.insert("offset".into(), toml::Value::Integer(first as i64));
        }
    }
    if t("shared.layers") && !t("shared.every") && !t("shared.offset") {
        shared.remove("every");
        shared.remove("offset");
    }
    // No shared block leaves nothing to schedule: the base model's schedule goes.
    if t("shared.blocks") && shared.get("blocks").and_then(toml::Value::as_integer) == Some(0) {
        for key in ["every", "offset", "layers", "assignment"] {
            if !t(&format!("shared.{key}")) {
                shared.remove(key);
            }
        }
    }
    let reschedules = [
        "shared.every",
        "shared.offset",
        "shared.layers",
        "shared.blocks",
        "model.num_layers",
    ];
    if reschedules.iter().any(|k| t(k)) && !t("shared.assignment") {
        shared.remove("assignment");
    }
    if t("shared.rope")
        && !t("shared.rope_theta")
        && shared.get("rope") == Some(&toml::Value::Boolean(false))
    {
        shared.remove("rope_theta");
        shared.remove("rope_scaling");
    }
    let mamba = table_mut(doc, "mamba").ok_or_else(|| internal("mamba"))?;
    if t("mamba.heads") && !t("mamba.head_dim") {
        mamba.remove("head_dim");
    }
    if t("mamba.head_dim") && !t("mamba.heads") {
        mamba.remove("heads");
    }
    let version_changed = mamba.get("version").and_then(toml::Value::as_integer)
        != Some(i64::from(base.mamba.version));
    if t("mamba.version") && version_changed {
        for key in ["groups", "chunk_size", "dt_rank", "dt_clamp"] {
            if !t(&format!("mamba.{key}")) {
                mamba.remove(key);
            }
        }
    }
    Ok(())
}

/// Diagnostics of the edited description point into text the user never saw: point them
/// at the override that set the key instead, or at all overrides when the error is a
/// consequence elsewhere (e.g. heads no longer dividing a swept hidden size).
fn relabel(err: FrontendError, ovs: &[Override<'_>]) -> FrontendError {
    let all = ovs.iter().map(Override::text).collect::<Vec<_>>().join(" ");
    let diagnostics = err
        .into_diagnostics()
        .into_iter()
        .map(|d| {
            let owner = ovs.iter().find(|o| {
                d.key == o.key
                    || d.key.starts_with(&format!("{}[", o.key))
                    || (o.key == ADAPTER_RANK && d.key.ends_with("_adapter_rank"))
            });
            let mut out = match owner {
                Some(o) => o.error(o.value_span(), &d.key, &d.expected, &d.found),
                None => Diagnostic::at(
                    format!("--sweep {all}"),
                    &Arc::from(all.as_str()),
                    0..all.len(),
                    &d.key,
                    &d.expected,
                    &d.found,
                ),
            };
            let context = "in the base model with the --sweep overrides applied";
            out.note = Some(match d.note {
                Some(n) => format!("{n} ({context})"),
                None => context.to_string(),
            });
            out
        })
        .collect();
    FrontendError::new(diagnostics)
}
