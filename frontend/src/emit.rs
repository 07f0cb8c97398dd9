//! `ModelSpec` → the canonical TOML description.
//!
//! The output parses back to the same spec (`parse_toml(to_toml(s)) == s`, the name
//! aside when the caller overrides it). Values that follow from others by the format's
//! defaults (`kv_heads = heads`, `head_dim = width / heads`, `intermediate_size = 4·H`,
//! a round-robin `assignment`) are omitted, so that an override of one key (`--sweep
//! model.hidden_size=…`) lets the derived ones follow, as they would in a hand-written file.

use std::fmt::Write;

use crate::spec::*;

/// The canonical TOML description of `spec`.
pub fn to_toml(spec: &ModelSpec) -> String {
    let mut out =
        String::from("# zambac model description (canonical form; docs/model-description.md)\n");
    model(&mut out, spec);
    mamba(&mut out, spec);
    shared(&mut out, spec);
    out
}

fn string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Shortest round-tripping float text; always valid TOML for finite values.
fn float(x: f64) -> String {
    format!("{x:?}")
}

fn list(items: &[usize]) -> String {
    let parts: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn model(out: &mut String, s: &ModelSpec) {
    let _ = writeln!(out, "\n[model]");
    let _ = writeln!(out, "name = {}", string(&s.name));
    let _ = writeln!(out, "vocab_size = {}", s.vocab_size);
    let _ = writeln!(out, "hidden_size = {}", s.hidden_size);
    let _ = writeln!(out, "num_layers = {}", s.num_layers());
    let _ = writeln!(out, "norm_eps = {}", float(s.norm_eps));
    let _ = writeln!(out, "tie_embeddings = {}", s.tie_embeddings);
    let _ = writeln!(out, "dtype = {}", string(s.dtype.name()));
}

fn mamba(out: &mut String, s: &ModelSpec) {
    let m = &s.mamba;
    let _ = writeln!(out, "\n[mamba]");
    let _ = writeln!(out, "version = {}", m.version);
    let _ = writeln!(out, "d_state = {}", m.d_state);
    let _ = writeln!(out, "d_conv = {}", m.d_conv);
    let _ = writeln!(out, "expand = {}", m.expand);
    let _ = writeln!(
        out,
        "heads = {}  # head_dim = {}, d_inner = {}",
        m.n_heads, m.head_dim, m.d_inner
    );
    if m.version == 2 {
        let _ = writeln!(out, "groups = {}", m.n_groups);
        let _ = writeln!(out, "chunk_size = {}", m.chunk_size);
    } else {
        let _ = writeln!(out, "dt_rank = {}", m.dt_rank);
    }
    let _ = writeln!(out, "conv_bias = {}", m.conv_bias);
    let _ = writeln!(out, "proj_bias = {}", m.proj_bias);
    let _ = writeln!(out, "time_step_min = {}", float(m.time_step_min));
    let _ = writeln!(out, "dt_clamp = {}", string(m.dt_clamp.name()));
}

fn shared(out: &mut String, s: &ModelSpec) {
    let sh = &s.shared;
    let hybrids = s.hybrid_layer_ids();
    let _ = writeln!(out, "\n[shared]");
    let _ = writeln!(out, "blocks = {}", sh.num_blocks);
    match every_offset(&hybrids, s.num_layers()) {
        // No shared block: a pure Mamba stack, no schedule.
        _ if sh.num_blocks == 0 => {}
        Some((every, offset)) => {
            let _ = writeln!(out, "every = {every}");
            let _ = writeln!(out, "offset = {offset}  # hybrid layers {}", list(&hybrids));
        }
        None => {
            let _ = writeln!(out, "layers = {}", list(&hybrids));
        }
    }
    let round_robin = sh
        .invocation_blocks
        .iter()
        .enumerate()
        .all(|(i, b)| *b == i % sh.num_blocks.max(1));
    if !round_robin {
        let _ = writeln!(out, "assignment = {}", list(&sh.invocation_blocks));
    }
    let _ = writeln!(out, "concat_embeddings = {}", sh.concat_embeddings);
    if sh.num_heads > 0 {
        let _ = writeln!(out, "heads = {}", sh.num_heads);
        if sh.num_kv_heads != sh.num_heads {
            let _ = writeln!(out, "kv_heads = {}", sh.num_kv_heads);
        }
        let width = s.attn_input_width();
        if !width.is_multiple_of(sh.num_heads) || width / sh.num_heads != sh.head_dim {
            let _ = writeln!(out, "head_dim = {}", sh.head_dim);
        }
    }
    let _ = writeln!(out, "rope = {}", sh.rope_theta.is_some());
    if let Some(theta) = sh.rope_theta {
        let _ = writeln!(out, "rope_theta = {}", float(theta));
    }
    if let Some(scaling) = &sh.rope_scaling
        && let Ok(table) = toml::Value::try_from(scaling)
    {
        // An inline table with the keys `[shared.rope_scaling]` reads back.
        let _ = writeln!(out, "rope_scaling = {table}");
    }
    let _ = writeln!(out, "attention_adapter_rank = {}", sh.attn_adapter_rank);
    let _ = writeln!(out, "mlp_adapter_rank = {}", sh.mlp_adapter_rank);
    if sh.intermediate_size != 4 * s.hidden_size {
        let _ = writeln!(out, "intermediate_size = {}", sh.intermediate_size);
    }
    let _ = writeln!(out, "activation = {}", string(sh.activation.name()));
}

/// `(every, offset)` when the hybrid layers are exactly `{offset, offset+every, …} < L`
/// with at least two of them (a single layer reads better as a list).
pub(crate) fn every_offset(hybrids: &[usize], num_layers: usize) -> Option<(usize, usize)> {
    let (&first, &second, &last) = (hybrids.first()?, hybrids.get(1)?, hybrids.last()?);
    let every = second.checked_sub(first)?;
    let regular = hybrids
        .windows(2)
        .all(|w| matches!(w, [a, b] if b.checked_sub(*a) == Some(every)));
    (regular && last + every >= num_layers).then_some((every, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_detects_regular_schedules_only() {
        assert_eq!(every_offset(&[5, 11, 17, 23, 29, 35], 38), Some((6, 5)));
        // A further hybrid would fit at 41 < 44: not this pattern.
        assert_eq!(every_offset(&[5, 11, 17, 23, 29, 35], 44), None);
        assert_eq!(every_offset(&[6, 12, 18, 24, 30, 36, 42, 47, 51], 54), None);
        assert_eq!(every_offset(&[3], 8), None);
        assert_eq!(every_offset(&[], 8), None);
    }

    #[test]
    fn floats_are_valid_toml() {
        assert_eq!(float(1e-5), "1e-5");
        assert_eq!(float(10000.0), "10000.0");
        assert_eq!(float(0.001), "0.001");
    }
}
