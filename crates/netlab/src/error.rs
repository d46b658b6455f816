//! The crate's one error type.

use std::io;

/// Why building, changing or tearing down a lab failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The topology asks for something impossible (unknown host, bad name,
    /// too many links, ...). Nothing was created for it.
    #[error("invalid topology: {0}")]
    Spec(String),
    /// A command (`ip`, `sysctl`) ran and failed; its stderr says why.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the reader.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
