//! Errors at the crate boundary.
//!
//! An NFS error (`NfsStat3`) is a *reply*: every correct replica computes the same one
//! from replicated state. A `LocalFault` is the opposite: something only this replica
//! saw (ENOSPC, EIO, a backing tree that does not match the metadata). It must never be
//! turned into a reply, because the other replicas would answer differently; the replica
//! stops applying operations and recovers (restart, state transfer) instead.

use std::io;

/// A failure of this replica's own disk or backing tree. After one, the state machine
/// refuses further operations (`FsError::Poisoned`) until it is reopened or restored.
#[derive(Debug, thiserror::Error)]
#[error("local fault during {context}: {source}")]
pub struct LocalFault {
    pub context: String,
    #[source]
    pub source: io::Error,
}

impl LocalFault {
    pub(crate) fn new(context: impl Into<String>, source: io::Error) -> Self {
        LocalFault {
            context: context.into(),
            source,
        }
    }

    /// The backing tree or metadata disagrees with itself: not an I/O error from the
    /// kernel, but just as local.
    pub(crate) fn inconsistent(context: impl Into<String>) -> Self {
        LocalFault {
            context: context.into(),
            source: io::Error::other("backing tree inconsistent with metadata"),
        }
    }
}

impl From<rustix::io::Errno> for LocalFault {
    fn from(e: rustix::io::Errno) -> Self {
        LocalFault::new("host call", e.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    LocalFault(#[from] LocalFault),
    #[error("state machine stopped after an earlier local fault: {0}")]
    Poisoned(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("metadata corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot does not match its own content: {0}")]
    BadSnapshot(String),
}

pub(crate) trait Ctx<T> {
    /// Attach what the replica was doing to a host error.
    fn ctx(self, context: &str) -> Result<T, LocalFault>;
}

impl<T> Ctx<T> for Result<T, rustix::io::Errno> {
    fn ctx(self, context: &str) -> Result<T, LocalFault> {
        self.map_err(|e| LocalFault::new(context, e.into()))
    }
}

impl<T> Ctx<T> for Result<T, io::Error> {
    fn ctx(self, context: &str) -> Result<T, LocalFault> {
        self.map_err(|e| LocalFault::new(context, e))
    }
}
