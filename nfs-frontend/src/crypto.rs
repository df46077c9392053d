//! The real implementation of `consensus::Crypto` (MinBFT section 5's assumptions):
//! USIG identifiers are checked with each replica's public USIG identity
//! (`usig::Verifier`, ECDSA P-256 through ring), client requests with the client's
//! ECDSA P-256 public key (ring: 5–8x faster here than the p256 crate, notes/limits.md),
//! and replies carry HMAC-SHA256 with a key shared by exactly one replica and one client.
//!
//! A party holds only its own reply keys: a replica can MAC replies to every client but
//! check nobody's, a client can check replies to itself only. A missing key never
//! verifies.

use std::collections::BTreeMap;
use std::sync::Arc;

use consensus::crypto::{constant_time_eq, hmac_sha256};
use consensus::types::Ui;
use consensus::{ClientId, Crypto, Digest, ReplicaId};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};

use crate::config::{ClientSecrets, ClusterConfig, ConfigError, ReplicaSecrets, unhex};

struct Inner {
    usig: Vec<usig::Verifier>,
    clients: BTreeMap<u64, UnparsedPublicKey<Vec<u8>>>,
    /// (replica, client index) -> reply MAC key.
    reply_keys: BTreeMap<(ReplicaId, u64), [u8; 32]>,
}

/// Cheap to clone: the validation path and the core each hold one.
#[derive(Clone)]
pub struct ClusterCrypto(Arc<Inner>);

impl ClusterCrypto {
    fn public(config: &ClusterConfig) -> Result<Inner, ConfigError> {
        let mut usig = Vec::new();
        for r in &config.replicas {
            let id = config.usig_identity(r.id)?;
            usig.push(
                usig::Verifier::new(&id)
                    .map_err(|_| ConfigError::Invalid(format!("replica {} key", r.id)))?,
            );
        }
        let mut clients = BTreeMap::new();
        for c in &config.clients {
            let pk = unhex(&c.public_key)
                .ok_or_else(|| ConfigError::Invalid(format!("client {} key", c.id)))?;
            clients.insert(c.id, UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pk));
        }
        Ok(Inner {
            usig,
            clients,
            reply_keys: BTreeMap::new(),
        })
    }

    /// What replica `secrets.id` verifies and MACs with.
    pub fn for_replica(
        config: &ClusterConfig,
        secrets: &ReplicaSecrets,
    ) -> Result<Self, ConfigError> {
        let mut inner = Self::public(config)?;
        for (&c, k) in &secrets.reply_keys {
            inner.reply_keys.insert((secrets.id, c), *k);
        }
        Ok(ClusterCrypto(Arc::new(inner)))
    }

    /// What client `secrets.id` verifies replies with.
    pub fn for_client(
        config: &ClusterConfig,
        secrets: &ClientSecrets,
    ) -> Result<Self, ConfigError> {
        let mut inner = Self::public(config)?;
        for (&r, k) in &secrets.reply_keys {
            inner.reply_keys.insert((r, secrets.id), *k);
        }
        Ok(ClusterCrypto(Arc::new(inner)))
    }

    fn reply_key(&self, replica: ReplicaId, client: ClientId) -> Option<&[u8; 32]> {
        self.0
            .reply_keys
            .get(&(replica, ClusterConfig::client_index(client)))
    }
}

impl Crypto for ClusterCrypto {
    fn verify_ui(&self, replica: ReplicaId, digest: &Digest, ui: &Ui) -> bool {
        self.0
            .usig
            .get(replica as usize)
            .is_some_and(|v| v.verify(replica, digest, ui).is_ok())
    }

    fn verify_request(&self, client: ClientId, digest: &Digest, sig: &[u8]) -> bool {
        self.0
            .clients
            .get(&ClusterConfig::client_index(client))
            .is_some_and(|k| k.verify(digest, sig).is_ok())
    }

    fn reply_mac(&self, replica: ReplicaId, client: ClientId, bytes: &Digest) -> [u8; 32] {
        match self.reply_key(replica, client) {
            Some(k) => hmac_sha256(k, &[b"bftnfs/reply-mac/v1", &client.to_be_bytes(), bytes]),
            // A client we share no key with cannot check anything we send it.
            None => [0; 32],
        }
    }

    fn verify_reply_mac(
        &self,
        replica: ReplicaId,
        client: ClientId,
        bytes: &Digest,
        mac: &[u8; 32],
    ) -> bool {
        self.reply_key(replica, client).is_some()
            && constant_time_eq(&self.reply_mac(replica, client, bytes), mac)
    }
}

/// A client's request signer (ECDSA P-256 over the request digest).
pub struct RequestSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl RequestSigner {
    pub fn new(pkcs8: &[u8]) -> Result<Self, ConfigError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| ConfigError::Invalid("client signing key".into()))?;
        Ok(RequestSigner { key, rng })
    }

    pub fn sign(&self, digest: &Digest) -> Vec<u8> {
        self.key
            .sign(&self.rng, digest)
            .map(|s| s.as_ref().to_vec())
            // ring fails only if the system RNG fails; an empty signature is then
            // dropped by every replica and the request is re-sent later.
            .unwrap_or_default()
    }
}

/// The HMAC over one replica-link frame: binds the link key, the connection's nonce
/// (no replay across connections) and the frame's position (no replay or reordering
/// within one).
pub fn link_mac(key: &[u8; 32], nonce: &[u8; 32], counter: u64, payload: &[u8]) -> [u8; 32] {
    hmac_sha256(
        key,
        &[b"bftnfs/link/v1", nonce, &counter.to_be_bytes(), payload],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeygenOptions, keygen};

    #[test]
    fn signatures_and_macs_check_across_parties() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 2)).expect("keygen");
        let c = ClusterConfig::load(&path).expect("load");
        let r0 = ClusterCrypto::for_replica(&c, &c.replica_secrets(0).expect("r0")).expect("r0");
        let cs = c.client_secrets(1).expect("c1");
        let k1 = ClusterCrypto::for_client(&c, &cs).expect("c1");
        let signer = RequestSigner::new(&cs.signing_pkcs8).expect("signer");
        let session = crate::config::SESSION_STRIDE + 3;
        let d = [7u8; 32];
        let sig = signer.sign(&d);
        assert!(r0.verify_request(session, &d, &sig));
        assert!(!r0.verify_request(session - crate::config::SESSION_STRIDE, &d, &sig));
        assert!(!r0.verify_request(session, &[8; 32], &sig));
        let mac = r0.reply_mac(0, session, &d);
        assert!(k1.verify_reply_mac(0, session, &d, &mac));
        assert!(!k1.verify_reply_mac(1, session, &d, &mac));
    }
}
