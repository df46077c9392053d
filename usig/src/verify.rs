//! `verifyUI` (MinBFT section 3): a pure check of a UI against a replica's public
//! identity. No backend, no I/O, no state; every replica runs it on every UI-carrying
//! message, so [`Verifier`] keeps the decoded key to avoid redoing that per message.

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

use crate::{Digest, ReplicaId, Ui, UsigIdentity, VerifyError, certified_bytes};

/// SEC1 uncompressed P-256 point: 0x04 ‖ x ‖ y.
pub const ECDSA_P256_PUBLIC_KEY_LEN: usize = 65;

/// Fixed-size ECDSA P-256 signature: r ‖ s, 32 bytes each.
pub const ECDSA_P256_SIGNATURE_LEN: usize = 64;

/// Check that `ui` certifies (`replica`, `ui.counter`, `digest`) under `identity`.
///
/// Convenience form of [`Verifier`]; use a `Verifier` per peer on hot paths.
pub fn verify_ui(
    identity: &UsigIdentity,
    replica: ReplicaId,
    digest: &Digest,
    ui: &Ui,
) -> Result<(), VerifyError> {
    Verifier::new(identity)?.verify(replica, digest, ui)
}

/// A replica's identity prepared for repeated verification.
#[derive(Clone, Debug)]
pub struct Verifier {
    key: VerifierKey,
}

#[derive(Clone, Debug)]
enum VerifierKey {
    EcdsaP256(UnparsedPublicKey<[u8; ECDSA_P256_PUBLIC_KEY_LEN]>),
}

impl Verifier {
    /// Checks the key's encoding (length and SEC1 uncompressed tag). ring validates the
    /// point itself inside each verification (a few hundred nanoseconds next to the
    /// 60 µs of the verification), so a point off the curve fails every UI with
    /// [`VerifyError::BadSignature`].
    pub fn new(identity: &UsigIdentity) -> Result<Self, VerifyError> {
        match identity {
            UsigIdentity::EcdsaP256 { public_key } => {
                let key: [u8; ECDSA_P256_PUBLIC_KEY_LEN] = public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| VerifyError::InvalidPublicKey)?;
                if key[0] != 0x04 {
                    return Err(VerifyError::InvalidPublicKey);
                }
                Ok(Verifier {
                    key: VerifierKey::EcdsaP256(UnparsedPublicKey::new(
                        &ECDSA_P256_SHA256_FIXED,
                        key,
                    )),
                })
            }
        }
    }

    /// Check that `ui` certifies (`replica`, `ui.counter`, `digest`).
    pub fn verify(&self, replica: ReplicaId, digest: &Digest, ui: &Ui) -> Result<(), VerifyError> {
        if ui.counter == 0 {
            return Err(VerifyError::ZeroCounter);
        }
        match &self.key {
            VerifierKey::EcdsaP256(key) => {
                if ui.cert.len() != ECDSA_P256_SIGNATURE_LEN {
                    return Err(VerifyError::CertLength {
                        len: ui.cert.len(),
                        expected: ECDSA_P256_SIGNATURE_LEN,
                    });
                }
                key.verify(&certified_bytes(replica, ui.counter, digest), &ui.cert)
                    .map_err(|_| VerifyError::BadSignature)
            }
        }
    }
}
