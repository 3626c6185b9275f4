//! Errors a user can meet, each saying what went wrong and what to check.

/// Everything that makes `wasmlet` exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the master at all.
    #[error("cannot reach the master at {url}: {cause} (is wasmlet-master running? check --master / WASMLET_MASTER / the current context)")]
    Unreachable { url: String, cause: String },
    /// The master answered with an error; `message` is its `ApiError.message`.
    #[error("{message}")]
    Api { status: u16, reason: String, message: String },
    /// A manifest that cannot be applied; every line names file, document, field and problem.
    #[error("{}", .0.join("\n"))]
    Manifest(Vec<String>),
    /// A bad argument or configuration.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { status: 404, .. })
    }
}
