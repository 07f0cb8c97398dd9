//! Writing the intermediate forms of a compilation (`--dump-dir`): what was built, what the
//! pipelines made of it, the LLVM IR and the PTX, one file per kernel and stage, so a
//! miscompile can be traced to the stage that introduced it.

use crate::error::CodegenError;
use std::path::{Path, PathBuf};

/// Where dumps go, if anywhere.
pub(crate) struct Dumps {
    directory: Option<PathBuf>,
}

impl Dumps {
    /// Dumps into `directory` (created if missing), or nowhere.
    pub(crate) fn new(directory: Option<&Path>) -> Result<Self, CodegenError> {
        if let Some(directory) = directory {
            std::fs::create_dir_all(directory)
                .map_err(|error| CodegenError::io(directory, error))?;
        }
        Ok(Self {
            directory: directory.map(Path::to_path_buf),
        })
    }

    /// Writes `name` with the text `contents()` (not computed when dumps are off).
    pub(crate) fn write(
        &self,
        name: &str,
        contents: impl FnOnce() -> String,
    ) -> Result<(), CodegenError> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let path = directory.join(name);
        std::fs::write(&path, contents()).map_err(|error| CodegenError::io(&path, error))
    }
}
