//! Runtime errors. `Input` and `Load` are the user's to fix (the CLI exits with 2);
//! `Internal` is a bug or an environment failure (exit 1).

/// What went wrong while loading or running a model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// A checkpoint or engine file is missing, malformed or does not match the model.
    #[error("{file}: {}{msg}", tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Load {
        file: String,
        tensor: Option<String>,
        msg: String,
    },
    /// An output file or directory could not be written (disk full, permissions): the
    /// user's to fix, like `Load`.
    #[error("{file}: cannot write: {msg}")]
    Write { file: String, msg: String },
    /// Bad run input: token ids, options.
    #[error("{0}")]
    Input(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    pub fn load(file: impl Into<String>, tensor: Option<&str>, msg: impl Into<String>) -> Self {
        RuntimeError::Load {
            file: file.into(),
            tensor: tensor.map(str::to_string),
            msg: msg.into(),
        }
    }

    pub fn write(file: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        RuntimeError::Write {
            file: file.into(),
            msg: msg.to_string(),
        }
    }

    /// Whether the user can fix this (exit code 2) rather than it being a bug (exit 1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, RuntimeError::Internal(_))
    }
}

impl From<zambac_engine::EngineError> for RuntimeError {
    fn from(e: zambac_engine::EngineError) -> RuntimeError {
        use zambac_engine::EngineError as E;
        match e {
            E::Load { file, tensor, msg } => RuntimeError::Load { file, tensor, msg },
            E::Write { file, msg } => RuntimeError::Write { file, msg },
            E::Internal(msg) => RuntimeError::Internal(msg),
        }
    }
}
