//! The only place that runs `nix`: reads closures from the Nix store.

use std::path::PathBuf;

use crate::closure::{Closure, ClosureError};
use crate::store_path::{StoreDir, StorePath};

/// How to call Nix.
#[derive(Debug, Clone)]
pub struct Nix {
    /// The `nix` program, `nix` from `PATH` by default.
    pub program: PathBuf,
}

impl Default for Nix {
    fn default() -> Self {
        Nix {
            program: PathBuf::from("nix"),
        }
    }
}

/// Why Nix could not tell us a closure.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot run '{program}': {source} (install Nix, or pass --closure-json)")]
    NixMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a valid path in the Nix store")]
    NotInStore(String),
    #[error("'{command}' failed: {stderr}")]
    NixFailed { command: String, stderr: String },
    #[error("reading the output of '{command}'")]
    Closure {
        command: String,
        #[source]
        source: ClosureError,
    },
}

impl EvalError {
    /// True when the user's input, not the operation, is at fault.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EvalError::NixMissing { .. } | EvalError::NotInStore(_)
        )
    }
}

/// Reads the closure of all `roots` with one `nix path-info --json --recursive`.
pub fn path_info_closure(
    nix: &Nix,
    store_dir: &StoreDir,
    roots: &[StorePath],
) -> Result<Closure, EvalError> {
    let _ = (nix, store_dir, roots);
    todo!()
}
