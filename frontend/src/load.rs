//! Entry points: a path (TOML description, `config.json`, or checkpoint directory) or a
//! text to a validated [`ModelSpec`].

use std::path::{Path, PathBuf};

use crate::error::{Diagnostic, FrontendError};
use crate::reader::Cx;
use crate::spec::ModelSpec;
use crate::{hf, resolve, syntax, toml_desc};

/// What kind of input a spec came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A zambac TOML description.
    Toml,
    /// A Hugging Face `config.json` given as a file.
    HfConfig,
    /// A checkpoint directory (its `config.json` was read; weights live next to it).
    CheckpointDir(PathBuf),
}

/// A loaded model description.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub spec: ModelSpec,
    /// Things worth saying that do not stop the load (ignored HF keys, disagreeing derived
    /// keys, Zyphra-style layer names), each prefixed with `file:line:col`.
    pub warnings: Vec<String>,
    pub kind: InputKind,
}

/// Loads a `.toml` description, a `.json` HF config, or a directory holding `config.json`.
pub fn load(path: &Path) -> Result<Loaded, FrontendError> {
    let label = path.display().to_string();
    if path.is_dir() {
        let config = path.join("config.json");
        if !config.is_file() {
            return Err(Diagnostic::new(
                &label,
                "config.json",
                "a checkpoint directory containing config.json",
                "a directory without config.json",
            )
            .into());
        }
        let src = read(&config)?;
        let (spec, warnings) = parse_hf_config(&src, &config.display().to_string())?;
        return Ok(Loaded {
            spec,
            warnings,
            kind: InputKind::CheckpointDir(path.to_path_buf()),
        });
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let src = read(path)?;
            let spec = parse_toml(&src, &label)?;
            Ok(Loaded {
                spec,
                warnings: Vec::new(),
                kind: InputKind::Toml,
            })
        }
        Some("json") => {
            let src = read(path)?;
            let (spec, warnings) = parse_hf_config(&src, &label)?;
            Ok(Loaded {
                spec,
                warnings,
                kind: InputKind::HfConfig,
            })
        }
        other => Err(Diagnostic::new(
            &label,
            &label,
            "a .toml description, a .json Hugging Face config, or a checkpoint directory",
            match other {
                Some(ext) => format!("a `.{ext}` file"),
                None if path.exists() => "a file without extension".into(),
                None => "nothing (no such file or directory)".into(),
            },
        )
        .into()),
    }
}

fn read(path: &Path) -> Result<String, FrontendError> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let found = match e.kind() {
            std::io::ErrorKind::NotFound => "nothing (no such file)".to_string(),
            _ => format!("an unreadable file ({e})"),
        };
        Diagnostic::new(&label, &label, "a readable file", found)
    })?;
    String::from_utf8(bytes).map_err(|e| {
        Diagnostic::new(
            &label,
            &label,
            "UTF-8 text",
            format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
        .into()
    })
}

/// Parses a zambac TOML description. `file` labels diagnostics; its stem names the
/// model when `model.name` is absent.
pub fn parse_toml(src: &str, file: &str) -> Result<ModelSpec, FrontendError> {
    let mut cx = Cx::new(file, src);
    let spec = syntax::parse_toml(&mut cx)
        .and_then(|root| toml_desc::read(&mut cx, &root, &stem_name(file)))
        .and_then(|draft| resolve::resolve(&mut cx, draft));
    cx.finish(spec).map(|(spec, _)| spec)
}

/// Parses a Hugging Face `config.json` (`model_type` `zamba2` or `zamba`); returns the
/// spec and the warnings. The model is named after the directory holding `config.json`.
pub fn parse_hf_config(src: &str, file: &str) -> Result<(ModelSpec, Vec<String>), FrontendError> {
    let mut cx = Cx::new(file, src);
    let spec = syntax::parse_json(&mut cx)
        .and_then(|root| hf::read(&mut cx, &root, &hf_name(file)))
        .and_then(|draft| resolve::resolve(&mut cx, draft));
    cx.finish(spec)
}

fn stem_name(file: &str) -> String {
    Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

/// `…/zamba2-1.2b/config.json` → `zamba2-1.2b`; `my-model.json` → `my-model`.
fn hf_name(file: &str) -> String {
    let stem = stem_name(file);
    if stem != "config" {
        return stem;
    }
    Path::new(file)
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_paths() {
        assert_eq!(stem_name("examples/tiny.toml"), "tiny");
        assert_eq!(stem_name(""), "model");
        assert_eq!(hf_name("configs/zamba2-1.2b/config.json"), "zamba2-1.2b");
        assert_eq!(hf_name("config.json"), "model");
        assert_eq!(hf_name("x/my-model.json"), "my-model");
    }

    #[test]
    fn missing_paths_are_diagnosed() {
        let e = load(Path::new("/nonexistent/model.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/model.toml"), "{e}");
        let e = load(Path::new("/nonexistent/dir")).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let dir = std::env::temp_dir();
        let e = load(&dir).unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }
}
