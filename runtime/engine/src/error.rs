//! Errors of reading and writing engines. `Load` and `Write` are the user's to fix (a
//! damaged engine, a full disk); `Internal` means the builder produced something the
//! contract forbids.

/// What went wrong with an engine directory.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// An engine file is missing, malformed, inconsistent or fails its checksum.
    #[error("{file}: {}{msg}", tensor.as_ref().map(|t| format!("tensor `{t}`: ")).unwrap_or_default())]
    Load {
        file: String,
        tensor: Option<String>,
        msg: String,
    },
    /// An engine file or directory could not be written (disk full, permissions).
    #[error("{file}: cannot write: {msg}")]
    Write { file: String, msg: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn load(file: impl Into<String>, tensor: Option<&str>, msg: impl Into<String>) -> Self {
        EngineError::Load {
            file: file.into(),
            tensor: tensor.map(str::to_string),
            msg: msg.into(),
        }
    }

    pub fn write(file: impl Into<String>, msg: impl std::fmt::Display) -> Self {
        EngineError::Write {
            file: file.into(),
            msg: msg.to_string(),
        }
    }
}
