//! Text in and out through a Hugging Face `tokenizer.json` (the `tokenizers` crate).

use std::path::Path;

use crate::error::{CliError, CliResult};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// The `tokenizer.json` of a checkpoint directory (or of the directory holding a
    /// description file).
    pub fn beside(input: &Path) -> CliResult<Tokenizer> {
        let dir = if input.is_dir() {
            input.to_path_buf()
        } else {
            input.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(CliError::input(format!(
                "error: --prompt needs a tokenizer, but `{}` does not exist; pass token ids with --tokens instead",
                path.display()
            )));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            CliError::input(format!(
                "error: `{}`: not a usable tokenizer: {e}",
                path.display()
            ))
        })?;
        Ok(Tokenizer { inner })
    }

    pub fn encode(&self, text: &str) -> CliResult<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| CliError::input(format!("error: cannot tokenize the prompt: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> CliResult<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| CliError::Internal(anyhow::anyhow!("cannot decode tokens: {e}")))
    }
}
