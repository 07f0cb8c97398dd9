//! Text in and out through a Hugging Face `tokenizer.json` (the `tokenizers` crate): the
//! one an engine carries, or the one beside a checkpoint the compiler runs directly.

use std::path::{Path, PathBuf};

use crate::error::RuntimeError;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Reads `path`; `missing` says what to do when it does not exist.
    pub fn open(path: &Path, missing: &str) -> Result<Tokenizer, RuntimeError> {
        if !path.exists() {
            return Err(RuntimeError::Input(format!(
                "--prompt needs a tokenizer, but `{}` does not exist; {missing}",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            RuntimeError::load(
                path.display().to_string(),
                None,
                format!("not a usable tokenizer: {e}"),
            )
        })?;
        Ok(Tokenizer { inner })
    }

    /// The `tokenizer.json` of a checkpoint directory (or of the directory holding a
    /// description file).
    pub fn beside(input: &Path) -> Result<Tokenizer, RuntimeError> {
        let dir: PathBuf = if input.is_dir() {
            input.to_path_buf()
        } else {
            input.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        Tokenizer::open(
            &dir.join("tokenizer.json"),
            "pass token ids with --tokens instead",
        )
    }

    pub fn encode(&self, text: &str) -> Result<Vec<i64>, RuntimeError> {
        self.encode_with(text, true)
    }

    /// [`Tokenizer::encode`], adding the tokenizer's special tokens (a leading `<s>`) only
    /// when `special` — a rendered chat template already holds them.
    pub fn encode_with(&self, text: &str, special: bool) -> Result<Vec<i64>, RuntimeError> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| RuntimeError::Input(format!("cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String, RuntimeError> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| RuntimeError::Internal(format!("cannot decode tokens: {e}")))
    }
}
