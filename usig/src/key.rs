//! The USIG's key: generation, the key file (`bftnfs keygen`), and the signer the
//! software backends use for `createUI` (MinBFT section 3).
//!
//! Two kinds of key certify UIs:
//! - an ECDSA P-256 key pair per replica (PKCS#8 key file): anyone with the public key
//!   can check a UI;
//! - an HMAC-SHA256 key that every replica's USIG shares (the shared-key USIG of
//!   CheapBFT's CASH and Hybster's TrInX): checking a UI needs the key, so only USIGs
//!   can, and it costs about a microsecond instead of 40–70 µs. The file holds
//!   [`SHARED_KEY_MAGIC`] and the 32 secret bytes.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use sha2::{Digest as _, Sha256};

use crate::verify::{
    ECDSA_P256_PUBLIC_KEY_LEN, ECDSA_P256_SIGNATURE_LEN, HMAC_SHA256_CERT_LEN, Verifier,
};
use crate::{Digest, ReplicaId, Ui, UsigError, UsigIdentity, VerifyError, certified_bytes};

/// Largest key file accepted; a P-256 PKCS#8 document is about 140 bytes.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// First bytes of a shared-key (HMAC-SHA256) USIG key file; a PKCS#8 document starts
/// with 0x30, so the two never mix up.
pub const SHARED_KEY_MAGIC: &[u8; 16] = b"bftnfs/usig-hmac";

/// Length of a shared key's secret.
const SHARED_SECRET_LEN: usize = 32;

/// A USIG key: an ECDSA P-256 key pair (its PKCS#8 v1 bytes) or a shared HMAC-SHA256
/// key (`SHARED_KEY_MAGIC` ‖ secret): the bytes the key file holds either way.
pub struct SigningKey {
    bytes: Vec<u8>,
    identity: UsigIdentity,
}

impl SigningKey {
    /// A fresh ECDSA P-256 key pair from the system's randomness.
    pub fn generate() -> Result<Self, UsigError> {
        let rng = SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| UsigError::InvalidKey("key generation failed".into()))?;
        Self::from_pkcs8(document.as_ref())
    }

    /// A fresh shared HMAC-SHA256 key from the system's randomness: give the same key
    /// (its file) to every replica of a cluster.
    pub fn generate_shared() -> Result<Self, UsigError> {
        let mut secret = [0u8; SHARED_SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| UsigError::InvalidKey("key generation failed".into()))?;
        let key = Self::from_shared_secret(&secret);
        secret.fill(0);
        Ok(key)
    }

    /// The shared HMAC-SHA256 key with this secret.
    pub fn from_shared_secret(secret: &[u8; 32]) -> Self {
        let mut bytes = SHARED_KEY_MAGIC.to_vec();
        bytes.extend_from_slice(secret);
        SigningKey {
            bytes,
            identity: UsigIdentity::HmacSha256 {
                key_id: shared_key_id(secret).to_vec(),
            },
        }
    }

    /// Parse and check PKCS#8 bytes (as written by [`SigningKey::write_file`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, UsigError> {
        let signer = Signer::from_key_bytes(pkcs8)?;
        if !matches!(signer, Signer::EcdsaP256 { .. }) {
            return Err(UsigError::InvalidKey("not a PKCS#8 document".into()));
        }
        Ok(SigningKey {
            bytes: pkcs8.to_vec(),
            identity: signer.identity(),
        })
    }

    /// Parse either kind of key file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, UsigError> {
        let signer = Signer::from_key_bytes(bytes)?;
        Ok(SigningKey {
            bytes: bytes.to_vec(),
            identity: signer.identity(),
        })
    }

    /// What the key file holds: what the software, memory and process backends open.
    pub fn key_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether this is a shared HMAC-SHA256 key (checking a UI needs it).
    pub fn is_shared(&self) -> bool {
        matches!(self.identity, UsigIdentity::HmacSha256 { .. })
    }

    /// The identity to publish in the cluster configuration: the public key, or the
    /// shared key's id (a hash of it, which tells nothing of the secret).
    pub fn identity(&self) -> UsigIdentity {
        self.identity.clone()
    }

    /// What checks UIs of a replica that published `identity`. A shared-key identity
    /// needs this key (the same key id; another shared key: `OtherSharedKey`, a key
    /// pair: `SharedKeyNeeded`); any other identity is checked by its public part
    /// alone ([`Verifier::new`]).
    pub fn verifier_for(&self, identity: &UsigIdentity) -> Result<Verifier, VerifyError> {
        match identity {
            UsigIdentity::HmacSha256 { key_id } => match &self.identity {
                UsigIdentity::HmacSha256 { key_id: mine } if mine == key_id => {
                    Ok(Verifier::shared(&self.bytes[SHARED_KEY_MAGIC.len()..]))
                }
                UsigIdentity::HmacSha256 { .. } => Err(VerifyError::OtherSharedKey),
                _ => Err(VerifyError::SharedKeyNeeded),
            },
            _ => Verifier::new(identity),
        }
    }

    /// Write the key to a new file readable by its owner only (mode 0600) and sync it.
    /// Refuses to overwrite an existing file: losing a USIG key loses the replica.
    pub fn write_file(&self, path: &Path) -> Result<(), UsigError> {
        let context = || format!("writing key file {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| UsigError::io(context(), e))?;
        file.write_all(&self.bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| UsigError::io(context(), e))?;
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(dir)
    }

    /// Read a key file; refuses one that group or others can access.
    pub fn read_file(path: &Path) -> Result<Self, UsigError> {
        let context = || format!("reading key file {}", path.display());
        let file = File::open(path).map_err(|e| UsigError::io(context(), e))?;
        let mode = file
            .metadata()
            .map_err(|e| UsigError::io(context(), e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(UsigError::KeyFilePermissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let mut bytes = Vec::new();
        file.take(KEY_FILE_BYTES_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| UsigError::io(context(), e))?;
        if bytes.len() as u64 > KEY_FILE_BYTES_MAX {
            return Err(UsigError::InvalidKey(format!(
                "{} is larger than {KEY_FILE_BYTES_MAX} bytes",
                path.display()
            )));
        }
        let key = Self::from_bytes(&bytes);
        bytes.fill(0);
        key
    }
}

/// The public id of a shared key: SHA-256 under a tag of its own, so it reveals
/// nothing of the secret and is never a MAC of anything.
fn shared_key_id(secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"bftnfs/usig-hmac-key-id/v1");
    hasher.update(secret);
    hasher.finalize().into()
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: the allocator may have copied it, but do not leave it lying here.
        self.bytes.fill(0);
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), UsigError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| UsigError::io(format!("syncing directory {}", dir.display()), e))
}

/// The in-process signer shared by the software and memory backends.
pub(crate) enum Signer {
    EcdsaP256 {
        key_pair: EcdsaKeyPair,
        rng: SystemRandom,
        public_key: [u8; ECDSA_P256_PUBLIC_KEY_LEN],
    },
    HmacSha256 {
        key: ring::hmac::Key,
        key_id: [u8; 32],
    },
}

impl Signer {
    /// From a key file's bytes: PKCS#8, or `SHARED_KEY_MAGIC` ‖ 32-byte secret.
    pub(crate) fn from_key_bytes(bytes: &[u8]) -> Result<Self, UsigError> {
        if let Some(secret) = bytes.strip_prefix(SHARED_KEY_MAGIC.as_slice()) {
            if secret.len() != SHARED_SECRET_LEN {
                return Err(UsigError::InvalidKey(format!(
                    "a shared USIG key holds {SHARED_SECRET_LEN} secret bytes, not {}",
                    secret.len()
                )));
            }
            return Ok(Signer::HmacSha256 {
                key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
                key_id: shared_key_id(secret),
            });
        }
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes, &rng)
            .map_err(|e| UsigError::InvalidKey(e.to_string()))?;
        let public_key = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| UsigError::InvalidKey("public key is not 65 bytes".into()))?;
        Ok(Signer::EcdsaP256 {
            key_pair,
            rng,
            public_key,
        })
    }

    pub(crate) fn identity(&self) -> UsigIdentity {
        match self {
            Signer::EcdsaP256 { public_key, .. } => UsigIdentity::EcdsaP256 {
                public_key: public_key.to_vec(),
            },
            Signer::HmacSha256 { key_id, .. } => UsigIdentity::HmacSha256 {
                key_id: key_id.to_vec(),
            },
        }
    }

    /// 65 bytes that name the key in a state file's header: the public point, or 0x00
    /// (never a SEC1 tag) ‖ the shared key's id ‖ zeros.
    pub(crate) fn header_id(&self) -> [u8; ECDSA_P256_PUBLIC_KEY_LEN] {
        match self {
            Signer::EcdsaP256 { public_key, .. } => *public_key,
            Signer::HmacSha256 { key_id, .. } => {
                let mut out = [0u8; ECDSA_P256_PUBLIC_KEY_LEN];
                out[1..33].copy_from_slice(key_id);
                out
            }
        }
    }

    /// Length of the certificates this signer makes.
    pub(crate) fn cert_len(&self) -> usize {
        match self {
            Signer::EcdsaP256 { .. } => ECDSA_P256_SIGNATURE_LEN,
            Signer::HmacSha256 { .. } => HMAC_SHA256_CERT_LEN,
        }
    }

    /// What checks this signer's own UIs.
    pub(crate) fn verifier(&self) -> Verifier {
        match self {
            Signer::EcdsaP256 { .. } => {
                Verifier::new(&self.identity()).expect("a parsed key pair's point is well-formed")
            }
            Signer::HmacSha256 { key, .. } => Verifier::from_hmac_key(key.clone()),
        }
    }

    /// Certify (`replica`, `counter`, `digest`). Only the backends call this, each with
    /// a counter it has just reserved.
    pub(crate) fn certify(
        &self,
        replica: ReplicaId,
        counter: u64,
        digest: &Digest,
    ) -> Result<Ui, UsigError> {
        let bytes = certified_bytes(replica, counter, digest);
        let cert = match self {
            Signer::EcdsaP256 { key_pair, rng, .. } => key_pair
                .sign(rng, &bytes)
                .map_err(|_| UsigError::Signing)?
                .as_ref()
                .to_vec(),
            Signer::HmacSha256 { key, .. } => ring::hmac::sign(key, &bytes).as_ref().to_vec(),
        };
        assert_eq!(cert.len(), self.cert_len(), "fixed-size certificate");
        Ok(Ui { counter, cert })
    }
}
