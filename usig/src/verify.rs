//! `verifyUI` (MinBFT section 3): a pure check of a UI against a replica's public
//! identity. No backend, no I/O, no state; every replica runs it on every UI-carrying
//! message, so [`Verifier`] keeps the decoded key to avoid redoing that per message.

use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

use crate::tpm_attest::{self, NAME_LEN};
use crate::{Digest, ReplicaId, Ui, UsigIdentity, VerifyError, certified_bytes};

/// SEC1 uncompressed P-256 point: 0x04 ‖ x ‖ y.
pub const ECDSA_P256_PUBLIC_KEY_LEN: usize = 65;

/// Fixed-size ECDSA P-256 signature: r ‖ s, 32 bytes each.
pub const ECDSA_P256_SIGNATURE_LEN: usize = 64;

/// A shared-key UI's certificate: HMAC-SHA256 over [`certified_bytes`].
pub const HMAC_SHA256_CERT_LEN: usize = 32;

/// Check that `ui` certifies (`replica`, `ui.counter`, `digest`) under `identity`.
///
/// Convenience form of [`Verifier`]; use a `Verifier` per peer on hot paths. A
/// shared-key identity cannot be checked without the key: `SharedKeyNeeded`
/// (`SigningKey::verifier_for` makes its verifier).
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
    HmacSha256(ring::hmac::Key),
    Tpm {
        key: UnparsedPublicKey<[u8; ECDSA_P256_PUBLIC_KEY_LEN]>,
        qualified_signer: Vec<u8>,
        counter_name: Vec<u8>,
        base_counter: u64,
    },
}

impl Verifier {
    /// Checks the key's encoding (length and SEC1 uncompressed tag). ring validates the
    /// point itself inside each verification (a few hundred nanoseconds next to the
    /// 60 µs of the verification), so a point off the curve fails every UI with
    /// [`VerifyError::BadSignature`].
    pub fn new(identity: &UsigIdentity) -> Result<Self, VerifyError> {
        match identity {
            UsigIdentity::HmacSha256 { .. } => Err(VerifyError::SharedKeyNeeded),
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
            UsigIdentity::Tpm {
                public_key,
                key_public,
                key_name,
                qualified_signer,
                counter_name,
                base_counter,
            } => {
                // The published point must be the one in a restricted, fixedTPM signing
                // key's public area whose Name is the published key Name.
                let point = tpm_attest::parse_signing_key_public(key_public)
                    .ok_or(VerifyError::InvalidPublicKey)?;
                if point.as_slice() != public_key.as_slice()
                    || tpm_attest::name_of(key_public).as_slice() != key_name.as_slice()
                    || qualified_signer.len() != NAME_LEN
                    || counter_name.len() != NAME_LEN
                    || counter_name[..2] != tpm_attest::ALG_SHA256.to_be_bytes()
                {
                    return Err(VerifyError::InvalidPublicKey);
                }
                Ok(Verifier {
                    key: VerifierKey::Tpm {
                        key: UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point),
                        qualified_signer: qualified_signer.clone(),
                        counter_name: counter_name.clone(),
                        base_counter: *base_counter,
                    },
                })
            }
        }
    }

    /// Checks UIs of a shared key with this secret (`SigningKey::verifier_for`).
    pub(crate) fn shared(secret: &[u8]) -> Self {
        Self::from_hmac_key(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    pub(crate) fn from_hmac_key(key: ring::hmac::Key) -> Self {
        Verifier {
            key: VerifierKey::HmacSha256(key),
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
            VerifierKey::HmacSha256(key) => {
                if ui.cert.len() != HMAC_SHA256_CERT_LEN {
                    return Err(VerifyError::CertLength {
                        len: ui.cert.len(),
                        expected: HMAC_SHA256_CERT_LEN,
                    });
                }
                // Constant time: ring compares the tags without an early exit.
                ring::hmac::verify(key, &certified_bytes(replica, ui.counter, digest), &ui.cert)
                    .map_err(|_| VerifyError::BadSignature)
            }
            VerifierKey::Tpm {
                key,
                qualified_signer,
                counter_name,
                base_counter,
            } => {
                // TPM counter value c = base + counter; the log must show c - 1 → c.
                let tpm_counter = base_counter
                    .checked_add(ui.counter)
                    .ok_or(VerifyError::BadAttest)?;
                let (attest, signature) =
                    tpm_attest::split_cert(&ui.cert).ok_or(VerifyError::BadAttest)?;
                let parsed =
                    tpm_attest::parse_session_audit(attest).ok_or(VerifyError::BadAttest)?;
                if parsed.qualified_signer != qualified_signer.as_slice()
                    || !parsed.extra_data.is_empty()
                {
                    return Err(VerifyError::BadAttest);
                }
                let stirred = tpm_attest::message_hash(replica, ui.counter, digest);
                let expected =
                    tpm_attest::expected_audit_digest(counter_name, tpm_counter - 1, &stirred);
                if parsed.session_digest != expected.as_slice() {
                    return Err(VerifyError::BadAttest);
                }
                // ECDSA over SHA-256(attest), which is what the TPM signs.
                key.verify(attest, signature)
                    .map_err(|_| VerifyError::BadSignature)
            }
        }
    }
}
