//! USIG: the Unique Sequential Identifier Generator (MinBFT, section 3).
//!
//! A replica's USIG binds each message digest it certifies to a counter value that is
//! never reused and never goes back. Creating a UI is an effect performed by a backend
//! (in-process software key, separate process, TPM); verifying a UI is a pure function
//! of the replica's public identity, or, for a shared-key USIG, of the shared key.
//!
//! Section 3 of the paper gives the service two operations: `createUI(m)` increments the
//! counter and returns a UI certifying (counter, H(m)), and `verifyUI(PK, UI, m)` checks
//! it with the public key alone. The [`Usig`] trait is `createUI`; [`verify_ui`] and
//! [`Verifier`] are `verifyUI`. Every backend must keep the one property the protocol
//! relies on to need only 2f+1 replicas: no two valid UIs from one replica share a
//! counter value, and the counter never goes back, across crashes and restarts too.
//! [`conformance`] checks that for any backend.
//!
//! Backends here: [`SoftwareUsig`] (durable counter file, key in process) and
//! [`MemoryUsig`] (no durability; simulators and tests). Their key ([`SigningKey`]) is
//! either an ECDSA P-256 key pair (SHA-256 of [`certified_bytes`], 64-byte fixed r‖s
//! signatures, through `ring`: tied with aws-lc-rs and 5x faster than the p256 crate
//! here) or an HMAC-SHA256 key that all USIGs of a cluster share (32-byte tags, about
//! 60x cheaper to check; only a key holder can check them, see README.md, "Shared-key
//! certificates").

use serde::{Deserialize, Serialize};

pub mod conformance;
mod error;
mod key;
mod memory;
pub mod process;
mod software;
#[cfg(feature = "tpm")]
pub mod swtpm;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm_attest;
#[cfg(feature = "tpm")]
mod tpm_wire;
mod verify;

pub use error::{UsigError, VerifyError};
pub use key::{SHARED_KEY_MAGIC, SigningKey};
pub use memory::MemoryUsig;
pub use process::ProcessUsig;
pub use software::{STATE_FILE_NAME, SoftwareUsig, lock_state_dir};
#[cfg(feature = "tpm")]
pub use tpm::{TpmLocation, TpmUsig};
pub use verify::{
    ECDSA_P256_PUBLIC_KEY_LEN, ECDSA_P256_SIGNATURE_LEN, HMAC_SHA256_CERT_LEN, Verifier, verify_ui,
};

/// SHA-256 digest of the message a UI certifies.
pub type Digest = [u8; 32];

/// Index of a replica in the cluster configuration (0..n).
pub type ReplicaId = u32;

/// Domain tag mixed into every certified byte string, so a USIG signature can never be
/// confused with a signature made for any other purpose with the same key.
pub const DOMAIN_TAG: &[u8; 16] = b"bftnfs/usig/v1\0\0";

/// A unique identifier: the counter value plus the backend's certificate over
/// (domain tag, replica id, counter, digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ui {
    pub counter: u64,
    /// Backend-specific proof: a DER/fixed ECDSA signature for the software and process
    /// backends, attest bytes plus signature for the TPM backend.
    #[serde(with = "serde_bytes")]
    pub cert: Vec<u8>,
}

/// The one canonical encoding of what a UI certifies (STYLE principle 7).
pub fn certified_bytes(replica: ReplicaId, counter: u64, digest: &Digest) -> [u8; 60] {
    let mut out = [0u8; 60];
    out[..16].copy_from_slice(DOMAIN_TAG);
    out[16..20].copy_from_slice(&replica.to_be_bytes());
    out[20..28].copy_from_slice(&counter.to_be_bytes());
    out[28..60].copy_from_slice(digest);
    out
}

/// What a replica publishes so that its UIs can be checked: the public half of its
/// USIG key (software and process backends), its TPM's key, key and counter Names and
/// base counter (TPM backend), or the id of the key every USIG of the cluster shares
/// (shared-key software backend); verification dispatches on this enum.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UsigIdentity {
    /// ECDSA P-256 with SHA-256 over [`certified_bytes`]; `cert` is the 64-byte r‖s.
    EcdsaP256 {
        /// SEC1 uncompressed point (0x04 ‖ x ‖ y), 65 bytes.
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
    },
    /// HMAC-SHA256 under a key all the cluster's USIGs share, over [`certified_bytes`];
    /// `cert` is the 32-byte tag. Only holders of the key can check a UI
    /// (`SigningKey::verifier_for`).
    HmacSha256 {
        /// SHA-256 of the key under a tag of its own: names the key, hides it.
        #[serde(with = "serde_bytes")]
        key_id: Vec<u8>,
    },
    /// A TPM 2.0 USIG (`tpm_attest` has the UI format): `cert` carries the TPM's signed
    /// session-audit attest of read–increment–read–stir on the replica's NV counter.
    Tpm {
        /// SEC1 uncompressed point of the restricted signing key, 65 bytes.
        #[serde(with = "serde_bytes")]
        public_key: Vec<u8>,
        /// The key's marshalled `TPMT_PUBLIC`: shows restricted, sign, fixedTPM and the
        /// point; its SHA-256 Name must be `key_name`.
        #[serde(with = "serde_bytes")]
        key_public: Vec<u8>,
        #[serde(with = "serde_bytes")]
        key_name: Vec<u8>,
        /// The key's qualified Name, as the TPM writes it into every attest it signs.
        #[serde(with = "serde_bytes")]
        qualified_signer: Vec<u8>,
        /// Name of the NV counter index (written, so fixed).
        #[serde(with = "serde_bytes")]
        counter_name: Vec<u8>,
        /// TPM counter value at provisioning; UI counter k is TPM counter value base + k.
        base_counter: u64,
    },
}

/// The last UI a USIG released, with the digest it certifies. A replica that crashed
/// after its USIG issued a UI but before the replica logged the message carrying it
/// recovers the UI from here instead of leaving a gap in its counter sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IssuedUi {
    pub digest: Digest,
    pub ui: Ui,
}

/// The trusted component as the replica sees it: `createUI` (MinBFT section 3).
///
/// `create_ui` is a blocking call that may take from microseconds (software) to hundreds
/// of milliseconds (a TPM chip); drivers run it off the protocol thread, hence `Send`.
/// Counters start at 1 and grow by exactly one per call; 0 is never a valid counter.
pub trait Usig: Send {
    /// The replica this USIG certifies for; part of every certified byte string.
    fn replica(&self) -> ReplicaId;

    /// The public identity that verifies this USIG's UIs.
    fn identity(&self) -> UsigIdentity;

    /// What checks this USIG's UIs: from its identity, or for a shared key (whose
    /// identity only names it) from the key.
    fn verifier(&self) -> Result<Verifier, VerifyError> {
        Verifier::new(&self.identity())
    }

    /// Assign the next counter value to `digest` and certify it. The counter is durable
    /// (for durable backends) before this returns, so the value is never issued again.
    /// After an error, the USIG may refuse further calls until reopened; it never
    /// reissues a value it may have released.
    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError>;

    /// The last UI this USIG issued (across restarts, for durable backends), or `None`
    /// if it has issued none.
    fn last_issued(&self) -> Option<IssuedUi>;

    /// Group commit: like `create_ui`, but the counter may not be durable until `sync`.
    /// The caller must not let the UI leave the process before `sync` has returned, or
    /// before its own synced record of the UI stands in for it (see `write_back`); a
    /// crash in between loses the increment together with the UI, which nobody saw.
    /// Several deferred UIs may precede one `sync`. Backends that cannot defer (the
    /// default) are durable at once.
    fn create_ui_deferred(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        self.create_ui(digest)
    }

    /// Puts the last deferred UI where a crash of this process (not of the machine)
    /// keeps it, without waiting for the disk. For callers that log every UI they are
    /// given, sync that log before any UI leaves, and on restart `advance_to` the last
    /// logged one: their log makes the counter durable, so one disk sync serves both
    /// (the in-process software USIG). Nothing to do for the default.
    fn write_back(&mut self) -> Result<(), UsigError> {
        Ok(())
    }

    /// Makes every deferred increment durable (nothing to do for the default).
    fn sync(&mut self) -> Result<(), UsigError> {
        Ok(())
    }

    /// Whether a deferred increment awaits `sync`.
    fn needs_sync(&self) -> bool {
        false
    }

    /// The highest counter value this USIG has used up: `last_issued`'s, or more when a
    /// value was spent without its UI coming back (a TPM increment whose signature or
    /// cache write a crash cut off). A restarting caller must take this as its own
    /// counter: the next UI comes after it, so a higher value means a gap to re-base
    /// over, not a UI to wait for.
    fn spent_counter(&mut self) -> Result<u64, UsigError> {
        Ok(self.last_issued().map_or(0, |u| u.ui.counter))
    }

    /// Recovery after a crash between the caller's durable record of `issued` and this
    /// USIG's own `sync`: move the counter up to `issued`, which must be a UI this USIG
    /// certified (its own signature is the proof), and make it durable. Never moves the
    /// counter back.
    fn advance_to(&mut self, issued: &IssuedUi) -> Result<(), UsigError> {
        let _ = issued;
        Err(UsigError::Unsupported("advance_to"))
    }

    /// Recovery after a machine restart for a caller that leased counter values (let
    /// UIs up to `counter` leave before its own log made them durable): spend every
    /// value up to `counter`, durably, so none of them is ever issued again. The USIG
    /// certifies `SKIP_DIGEST` at `counter` as its last UI, a value no message can have.
    /// Never moves the counter back.
    fn skip_to(&mut self, counter: u64) -> Result<(), UsigError> {
        let _ = counter;
        Err(UsigError::Unsupported("skip_to"))
    }
}

/// The digest a USIG certifies when it skips counter values (`Usig::skip_to`): all
/// zeros, which no SHA-256 of a message is.
pub const SKIP_DIGEST: Digest = [0; 32];

impl<U: Usig + ?Sized> Usig for Box<U> {
    fn replica(&self) -> ReplicaId {
        (**self).replica()
    }

    fn identity(&self) -> UsigIdentity {
        (**self).identity()
    }

    fn verifier(&self) -> Result<Verifier, VerifyError> {
        (**self).verifier()
    }

    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        (**self).create_ui(digest)
    }

    fn last_issued(&self) -> Option<IssuedUi> {
        (**self).last_issued()
    }

    fn create_ui_deferred(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        (**self).create_ui_deferred(digest)
    }

    fn write_back(&mut self) -> Result<(), UsigError> {
        (**self).write_back()
    }

    fn sync(&mut self) -> Result<(), UsigError> {
        (**self).sync()
    }

    fn needs_sync(&self) -> bool {
        (**self).needs_sync()
    }

    fn advance_to(&mut self, issued: &IssuedUi) -> Result<(), UsigError> {
        (**self).advance_to(issued)
    }

    fn spent_counter(&mut self) -> Result<u64, UsigError> {
        (**self).spent_counter()
    }

    fn skip_to(&mut self, counter: u64) -> Result<(), UsigError> {
        (**self).skip_to(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certified_bytes_layout_is_tag_replica_counter_digest() {
        let digest = [0xAB; 32];
        let bytes = certified_bytes(0x0102_0304, 0x0506_0708_090A_0B0C, &digest);
        assert_eq!(&bytes[..16], DOMAIN_TAG);
        assert_eq!(&bytes[16..20], &[1, 2, 3, 4]);
        assert_eq!(&bytes[20..28], &[5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&bytes[28..], &digest);
    }
}
