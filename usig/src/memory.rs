//! An in-memory USIG: the same `createUI` (MinBFT section 3) as the software backend,
//! without the durable counter. For the deterministic simulator and tests, where a
//! "crash" that keeps the object alive keeps the counter too; never for a real replica.

use crate::key::Signer;
use crate::{
    Digest, IssuedUi, ReplicaId, Ui, Usig, UsigError, UsigIdentity, Verifier, VerifyError,
};

pub struct MemoryUsig {
    replica: ReplicaId,
    signer: Signer,
    last: Option<IssuedUi>,
}

impl MemoryUsig {
    /// `key` is a key file's bytes (`SigningKey::key_bytes`).
    pub fn new(replica: ReplicaId, key: &[u8]) -> Result<Self, UsigError> {
        Ok(MemoryUsig {
            replica,
            signer: Signer::from_key_bytes(key)?,
            last: None,
        })
    }
}

impl Usig for MemoryUsig {
    fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn identity(&self) -> UsigIdentity {
        self.signer.identity()
    }

    fn verifier(&self) -> Result<Verifier, VerifyError> {
        Ok(self.signer.verifier())
    }

    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        let counter_last = self.last.as_ref().map_or(0, |issued| issued.ui.counter);
        let counter = counter_last
            .checked_add(1)
            .ok_or(UsigError::CounterExhausted)?;
        let ui = self.signer.certify(self.replica, counter, digest)?;
        self.last = Some(IssuedUi {
            digest: *digest,
            ui: ui.clone(),
        });
        Ok(ui)
    }

    fn last_issued(&self) -> Option<IssuedUi> {
        self.last.clone()
    }
}

impl std::fmt::Debug for MemoryUsig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryUsig")
            .field("replica", &self.replica)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}
