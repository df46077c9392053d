//! Errors at the USIG boundary: creating UIs (an effect that can fail on I/O or a bad
//! state file) and verifying them (Byzantine input, an expected operating error).

use std::path::PathBuf;

use crate::ReplicaId;

/// Why a USIG could not be opened or could not create a UI.
#[derive(Debug, thiserror::Error)]
pub enum UsigError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid USIG signing key: {0}")]
    InvalidKey(String),
    #[error("key file {path} is accessible by group or others (mode {mode:o}); run chmod 600")]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    /// The state file exists but cannot be trusted. Never silently reset: starting again
    /// from counter 1 would reissue counter values.
    #[error("corrupt USIG state file {path}: {reason}")]
    CorruptState { path: PathBuf, reason: String },
    #[error("USIG state {path} belongs to replica {found}, not replica {expected}")]
    ReplicaMismatch {
        path: PathBuf,
        expected: ReplicaId,
        found: ReplicaId,
    },
    #[error("USIG state {path} was created with a different signing key")]
    KeyMismatch { path: PathBuf },
    #[error("USIG state {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("USIG counter exhausted")]
    CounterExhausted,
    /// A durable write failed, so whether its counter value reached the disk is unknown.
    /// Reopening reads back what is there and continues above it.
    #[error("USIG refuses to continue after a failed durable write; reopen it")]
    Poisoned,
    #[error("USIG signing failed")]
    Signing,
    #[error("this USIG backend does not support {0}")]
    Unsupported(&'static str),
    /// `advance_to` was shown a UI this USIG did not certify.
    #[error("not a UI of this USIG: {0}")]
    NotOurs(String),
    /// The TPM (or the TSS talking to it) refused or failed a command.
    #[error("TPM: {0}")]
    Tpm(String),
}

impl UsigError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        UsigError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Why a UI does not verify. Every variant means "reject the message".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("UI counter 0 is never valid")]
    ZeroCounter,
    #[error("USIG identity holds a malformed public key")]
    InvalidPublicKey,
    #[error("UI certificate is {len} bytes, expected {expected}")]
    CertLength { len: usize, expected: usize },
    #[error("UI signature does not verify")]
    BadSignature,
    /// A shared-key (HMAC) identity, and no key to check it with: only a holder of the
    /// cluster's shared USIG key can check those UIs.
    #[error("UI of a shared-key USIG, and this party does not hold the key")]
    SharedKeyNeeded,
    /// A shared-key identity that names another key than the one held here.
    #[error("UI of a shared-key USIG whose key is not the one held here")]
    OtherSharedKey,
    /// A TPM UI whose attest is malformed or does not log exactly this replica's
    /// read–increment–read of counter value `counter` and the message.
    #[error("TPM UI attest does not certify this counter value and message")]
    BadAttest,
}
