//! The USIG's ECDSA P-256 key: generation, the PKCS#8 key file (`bftnfs keygen`), and
//! the signer the software backends use for `createUI` (MinBFT section 3).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use crate::verify::{ECDSA_P256_PUBLIC_KEY_LEN, ECDSA_P256_SIGNATURE_LEN};
use crate::{Digest, ReplicaId, Ui, UsigError, UsigIdentity, certified_bytes};

/// Largest key file accepted; a P-256 PKCS#8 document is about 140 bytes.
const KEY_FILE_BYTES_MAX: u64 = 4096;

/// A P-256 key pair as PKCS#8 v1 bytes, the format the key file holds.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public_key: [u8; ECDSA_P256_PUBLIC_KEY_LEN],
}

impl SigningKey {
    /// A fresh key pair from the system's randomness.
    pub fn generate() -> Result<Self, UsigError> {
        let rng = SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| UsigError::InvalidKey("key generation failed".into()))?;
        Self::from_pkcs8(document.as_ref())
    }

    /// Parse and check PKCS#8 bytes (as written by [`SigningKey::write_file`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, UsigError> {
        let signer = Signer::from_pkcs8(pkcs8)?;
        Ok(SigningKey {
            pkcs8: pkcs8.to_vec(),
            public_key: signer.public_key,
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The identity to publish in the cluster configuration.
    pub fn identity(&self) -> UsigIdentity {
        UsigIdentity::EcdsaP256 {
            public_key: self.public_key.to_vec(),
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
        file.write_all(&self.pkcs8)
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
        let mut pkcs8 = Vec::new();
        file.take(KEY_FILE_BYTES_MAX + 1)
            .read_to_end(&mut pkcs8)
            .map_err(|e| UsigError::io(context(), e))?;
        if pkcs8.len() as u64 > KEY_FILE_BYTES_MAX {
            return Err(UsigError::InvalidKey(format!(
                "{} is larger than {KEY_FILE_BYTES_MAX} bytes",
                path.display()
            )));
        }
        let key = Self::from_pkcs8(&pkcs8);
        pkcs8.fill(0);
        key
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: the allocator may have copied it, but do not leave it lying here.
        self.pkcs8.fill(0);
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), UsigError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| UsigError::io(format!("syncing directory {}", dir.display()), e))
}

/// The in-process signer shared by the software and memory backends.
pub(crate) struct Signer {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    pub(crate) public_key: [u8; ECDSA_P256_PUBLIC_KEY_LEN],
}

impl Signer {
    pub(crate) fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, UsigError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| UsigError::InvalidKey(e.to_string()))?;
        let public_key = key_pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| UsigError::InvalidKey("public key is not 65 bytes".into()))?;
        Ok(Signer {
            key_pair,
            rng,
            public_key,
        })
    }

    pub(crate) fn identity(&self) -> UsigIdentity {
        UsigIdentity::EcdsaP256 {
            public_key: self.public_key.to_vec(),
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
        let signature = self
            .key_pair
            .sign(&self.rng, &certified_bytes(replica, counter, digest))
            .map_err(|_| UsigError::Signing)?;
        let cert = signature.as_ref().to_vec();
        assert_eq!(cert.len(), ECDSA_P256_SIGNATURE_LEN, "fixed-size signature");
        Ok(Ui { counter, cert })
    }
}
