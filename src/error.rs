//! Driver errors and their exit codes: 2 for bad input (the user can fix it), 1 for
//! internal failures (a compiler bug or the environment).

use std::fmt;

/// An error that ends a command.
#[derive(Debug)]
pub enum CliError {
    /// Bad input: a description, a checkpoint, a flag. Printed as is, exit code 2.
    Input(String),
    /// Anything else, exit code 1.
    Internal(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Input(_) => 2,
            CliError::Internal(_) => 1,
        }
    }

    pub fn input(msg: impl Into<String>) -> CliError {
        CliError::Input(msg.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Input(m) => f.write_str(m.trim_end()),
            CliError::Internal(e) => write!(f, "internal error: {e:#}"),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> CliError {
        CliError::Internal(e)
    }
}

impl From<zambac_frontend::FrontendError> for CliError {
    fn from(e: zambac_frontend::FrontendError) -> CliError {
        CliError::Input(e.render())
    }
}

impl From<zambac_ir::build::BuildError> for CliError {
    fn from(e: zambac_ir::build::BuildError) -> CliError {
        CliError::Internal(e.into())
    }
}

impl From<zambac_engine::EngineError> for CliError {
    fn from(e: zambac_engine::EngineError) -> CliError {
        zambac_runtime::RuntimeError::from(e).into()
    }
}

impl From<zambac_runtime::RuntimeError> for CliError {
    fn from(e: zambac_runtime::RuntimeError) -> CliError {
        if e.is_user_error() {
            CliError::Input(format!("error: {e}"))
        } else {
            CliError::Internal(anyhow::anyhow!("{e}"))
        }
    }
}

impl From<zambac_passes::PipelineError> for CliError {
    fn from(e: zambac_passes::PipelineError) -> CliError {
        if e.is_user_error() {
            CliError::Input(format!("error: {e}"))
        } else {
            CliError::Internal(e.into())
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;
