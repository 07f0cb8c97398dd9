//! The generation settings an engine carries for a server (`ModelInfo::generation`): the
//! end-of-sequence tokens and trained context from the checkpoint's `config.json` and
//! `generation_config.json`, the chat template and its special tokens from
//! `tokenizer_config.json`. Missing files or keys leave the setting out; a key of the wrong
//! type is an input error naming the file and the key.

use std::path::Path;

use serde_json::Value;
use zambac_engine::GenerationInfo;

use crate::error::{CliError, CliResult};

/// Reads what `config_dir` (the checkpoint's directory, if any) and `tokenizer_dir` (where
/// the engine's `tokenizer.json` came from, if anywhere) say.
pub fn read(config_dir: Option<&Path>, tokenizer_dir: Option<&Path>) -> CliResult<GenerationInfo> {
    let mut g = GenerationInfo::default();
    if let Some(dir) = config_dir {
        for name in ["config.json", "generation_config.json"] {
            let Some((path, v)) = json(&dir.join(name))? else {
                continue;
            };
            if let Some(ids) = eos_ids(&path, v.get("eos_token_id"))? {
                g.eos_token_ids = ids;
            }
            if name == "config.json"
                && let Some(n) = v.get("max_position_embeddings").filter(|n| !n.is_null())
            {
                g.max_position_embeddings = Some(
                    n.as_u64()
                        .filter(|&n| n > 0)
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            wrong(&path, "max_position_embeddings", "a positive integer", n)
                        })?,
                );
            }
        }
    }
    if let Some(dir) = tokenizer_dir
        && let Some((path, v)) = json(&dir.join("tokenizer_config.json"))?
    {
        g.chat_template = chat_template(&path, v.get("chat_template"))?;
        g.bos_token = token_text(&path, "bos_token", v.get("bos_token"))?;
        g.eos_token = token_text(&path, "eos_token", v.get("eos_token"))?;
    }
    Ok(g)
}

/// A JSON object from `path`, `None` when there is no such file.
fn json(path: &Path) -> CliResult<Option<(String, Value)>> {
    if !path.is_file() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::input(format!("error: {shown}: cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::input(format!("error: {shown}: not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::input(format!(
            "error: {shown}: expected a JSON object, found {}",
            kind(&v)
        )));
    }
    Ok(Some((shown, v)))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(path: &str, key: &str, want: &str, found: &Value) -> CliError {
    CliError::input(format!(
        "error: {path}: `{key}` must be {want}, found {}",
        kind(found)
    ))
}

/// `eos_token_id`: an id or a list of ids (`null` or absent: none given).
fn eos_ids(path: &str, v: Option<&Value>) -> CliResult<Option<Vec<i64>>> {
    let want = "a non-negative token id or a list of them";
    let id = |x: &Value| {
        x.as_i64()
            .filter(|&i| i >= 0)
            .ok_or_else(|| wrong(path, "eos_token_id", want, x))
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(xs)) => xs.iter().map(id).collect::<CliResult<Vec<_>>>().map(Some),
        Some(x) => Ok(Some(vec![id(x)?])),
    }
}

/// `chat_template`: a template, or a list of named ones (the one named `default`).
fn chat_template(path: &str, v: Option<&Value>) -> CliResult<Option<String>> {
    let want = "a template or a list of {name, template}";
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(xs)) => {
            for x in xs {
                let (Some(name), Some(t)) = (
                    x.get("name").and_then(Value::as_str),
                    x.get("template").and_then(Value::as_str),
                ) else {
                    return Err(wrong(path, "chat_template", want, x));
                };
                if name == "default" {
                    return Ok(Some(t.to_string()));
                }
            }
            Ok(None)
        }
        Some(x) => Err(wrong(path, "chat_template", want, x)),
    }
}

/// A special token's text: a string, or an object with its `content`.
fn token_text(path: &str, key: &str, v: Option<&Value>) -> CliResult<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(x) => match x.get("content").and_then(Value::as_str) {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(wrong(path, key, "a string or {\"content\": string}", x)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_every_setting_and_prefers_generation_config() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            "config.json",
            r#"{"eos_token_id": 2, "max_position_embeddings": 4096}"#,
        );
        write(
            t.path(),
            "generation_config.json",
            r#"{"eos_token_id": [2, 7]}"#,
        );
        write(
            t.path(),
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "tool", "template": "x"}, {"name": "default", "template": "{{ messages }}"}],
                "bos_token": {"content": "<s>"}, "eos_token": "</s>"}"#,
        );
        let g = read(Some(t.path()), Some(t.path())).unwrap();
        assert_eq!(g.eos_token_ids, vec![2, 7]);
        assert_eq!(g.max_position_embeddings, Some(4096));
        assert_eq!(g.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(g.bos_token.as_deref(), Some("<s>"));
        assert_eq!(g.eos_token.as_deref(), Some("</s>"));
        assert!(read(None, None).unwrap().is_empty());
    }

    #[test]
    fn wrong_types_name_the_file_and_key() {
        for (file, text, key) in [
            ("config.json", r#"{"eos_token_id": "2"}"#, "eos_token_id"),
            ("config.json", r#"{"eos_token_id": [-1]}"#, "eos_token_id"),
            (
                "config.json",
                r#"{"max_position_embeddings": -5}"#,
                "max_position_embeddings",
            ),
            (
                "tokenizer_config.json",
                r#"{"chat_template": 3}"#,
                "chat_template",
            ),
            ("tokenizer_config.json", r#"{"bos_token": 1}"#, "bos_token"),
            ("config.json", "[1]", "expected a JSON object"),
            ("config.json", "{", "not valid JSON"),
        ] {
            let t = tempfile::tempdir().unwrap();
            write(t.path(), file, text);
            let e = read(Some(t.path()), Some(t.path()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(file) && e.contains(key), "{text}: {e}");
        }
    }
}
