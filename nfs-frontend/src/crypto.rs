//! The real implementation of `consensus::Crypto` (MinBFT section 5's assumptions):
//! USIG identifiers are checked with each replica's public USIG identity
//! (`usig::Verifier`, ECDSA P-256 through ring) or, in a cluster whose USIGs share an
//! HMAC-SHA256 key, with that key (replicas only), client requests with the client's
//! ECDSA P-256 public key (ring: 5–8x faster here than the p256 crate, notes/limits.md),
//! and replies carry HMAC-SHA256 with a key shared by exactly one replica and one client.
//!
//! A party holds only its own reply keys: a replica can MAC replies to every client but
//! check nobody's, a client can check replies to itself only. A missing key never
//! verifies.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use consensus::crypto::{constant_time_eq, hmac_sha256};
use consensus::types::Ui;
use consensus::{ClientId, Crypto, Digest, ReplicaId};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use sha2::{Digest as _, Sha256};

use crate::config::{
    ClientSecrets, ClusterConfig, ConfigError, ReplicaSecrets, RequestDigestKind, unhex,
};

struct Inner {
    /// Per replica; `None` for a shared-key identity this party cannot check (a
    /// client: only replicas hold the shared USIG key, and clients check no UIs).
    usig: Vec<Option<usig::Verifier>>,
    /// The cluster's request digest (`Crypto::request_digest`).
    request_digest: RequestDigestKind,
    /// Every replica's UIs are shared-key MACs: checking one (under a µs) costs less than
    /// looking it up in `verified`, so they are checked every time.
    usig_shared: bool,
    clients: BTreeMap<u64, UnparsedPublicKey<Vec<u8>>>,
    /// (replica, client index) -> reply MAC key.
    reply_keys: BTreeMap<(ReplicaId, u64), [u8; 32]>,
    /// The replica this is (replica side): which entry of a read-only authenticator to
    /// check.
    me: Option<ReplicaId>,
    /// Replicas in the cluster (entries of a read-only authenticator).
    n: u32,
    /// Request signatures already found valid (see `VerifiedRequests`).
    verified: Mutex<VerifiedRequests>,
    /// Signalled when a check `verified` lists as running ends.
    verified_done: Condvar,
    /// Digests of large requests already hashed here (see `RequestDigests`).
    digests: Mutex<RequestDigests>,
}

/// Digests of large ordered requests whose signatures verified here, with the requests'
/// bytes (`Crypto::known_request_digest`). A replica gets each request twice, from the
/// client and inside the PREPARE (the primary: from the client, then in its own
/// proposal), and hashing a 1 MiB WRITE costs about 0.6 ms; comparing the bytes of the
/// second copy with the first costs a tenth of that. A hit needs the same client,
/// sequence number, signature and operation bytes, so it answers exactly what hashing
/// would. Requests under `REQUEST_DIGEST_MIN_BYTES` are hashed every time.
#[derive(Default)]
struct RequestDigests {
    entries: VecDeque<(consensus::Request, Digest)>,
    bytes: usize,
}

/// Smaller requests hash in less time than a lookup saves.
const REQUEST_DIGEST_MIN_BYTES: usize = 16 << 10;
/// Requests kept at most, and their bytes (the operations are shared, not copied, but
/// kept alive while listed).
const REQUEST_DIGESTS_MAX: usize = 32;
const REQUEST_DIGESTS_BYTES_MAX: usize = 32 << 20;

impl RequestDigests {
    fn find(&self, req: &consensus::Request) -> Option<Digest> {
        let (_, d) = self.entries.iter().find(|(r, _)| {
            r.client == req.client
                && r.seq == req.seq
                && r.read_only == req.read_only
                && r.sig == req.sig
                && (r.op.as_ptr() == req.op.as_ptr() && r.op.len() == req.op.len()
                    || r.op == req.op)
        })?;
        Some(*d)
    }

    /// A remembered ordered request of `client` with `seq` whose digest is `digest`.
    fn with_digest(
        &self,
        client: ClientId,
        seq: u64,
        digest: &Digest,
    ) -> Option<consensus::Request> {
        self.entries
            .iter()
            .find(|(r, d)| r.client == client && r.seq == seq && !r.read_only && d == digest)
            .map(|(r, _)| r.clone())
    }

    fn insert(&mut self, req: &consensus::Request, d: &Digest) {
        if self.find(req).is_some() {
            return;
        }
        self.bytes += req.op.len();
        self.entries.push_back((req.clone(), *d));
        while self.entries.len() > REQUEST_DIGESTS_MAX || self.bytes > REQUEST_DIGESTS_BYTES_MAX {
            let Some((old, _)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.op.len();
        }
    }
}

/// Recently verified request signatures and UIs. Every replica receives each request
/// twice: from the client, and inside the primary's PREPARE; a backup that already
/// checked the client's copy need not spend another ECDSA verification (≈ 68 µs, on its
/// critical path) on the identical bytes. Likewise the primary's UI, carried by the
/// PREPARE and again by every COMMIT. A hit requires the same signer, digest and
/// signature bytes (hashed under a domain tag per kind), so it answers exactly what
/// verifying again would.
///
/// A check that another thread of this party is running on the same key is waited for
/// (`CHECK_WAIT_MAX`), not repeated: a backup's idle-priority verifier
/// (`replica::verifier`) is usually half-way through the client's copy when the PREPARE
/// carrying it reaches the protocol loop, and before this the loop verified it again,
/// about 1.2 extra ECDSA verifications per ordered request across the backups.
#[derive(Default)]
struct VerifiedRequests {
    set: HashSet<Digest>,
    order: VecDeque<Digest>,
    /// Keys being checked now, with how many threads check each.
    running: HashMap<Digest, u32>,
}

/// How long a thread waits for another's check of the same signature before it checks
/// on its own. Several ECDSA verifications long, so that an idle-priority verifier that
/// is half-way through gets the core the waiting thread leaves; bounded, because that
/// verifier may get no core at all on a saturated host.
const CHECK_WAIT_MAX: Duration = Duration::from_micros(500);

/// First byte of a read-only authenticator, which is 1 + 16 n bytes long: never 64, the
/// length of an ECDSA signature (r‖s), so the two cannot be confused.
const READ_AUTH_TAG: u8 = 0xA7;
/// Bytes of each replica's MAC in a read-only authenticator (128 bits).
const READ_MAC_LEN: usize = 16;

fn read_mac(key: &[u8; 32], client: ClientId, digest: &Digest) -> [u8; 32] {
    hmac_sha256(
        key,
        &[
            b"bftnfs/read-only-request/v1",
            &client.to_be_bytes(),
            digest,
        ],
    )
}

/// Entries kept: a few batches' worth of requests from every session.
const VERIFIED_REQUESTS_MAX: usize = 8_192;

impl VerifiedRequests {
    fn key(client: ClientId, digest: &Digest, sig: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(b"bftnfs/verified-request/v1");
        h.update(client.to_be_bytes());
        h.update(digest);
        h.update(sig);
        h.finalize().into()
    }

    fn ui_key(replica: ReplicaId, digest: &Digest, ui: &Ui) -> Digest {
        let mut h = Sha256::new();
        h.update(b"bftnfs/verified-ui/v1");
        h.update(replica.to_be_bytes());
        h.update(ui.counter.to_be_bytes());
        h.update(digest);
        h.update(&ui.cert);
        h.finalize().into()
    }

    fn insert(&mut self, key: Digest) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > VERIFIED_REQUESTS_MAX
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// Replica `secrets.id`'s USIG key file, which must hold the key cluster.toml names
/// for it (for a shared key, the one every replica checks UIs with).
pub fn own_usig_key(
    config: &ClusterConfig,
    secrets: &ReplicaSecrets,
) -> Result<usig::SigningKey, ConfigError> {
    let key = usig::SigningKey::read_file(&secrets.usig_key_file)?;
    let expected = config.usig_identity(secrets.id)?;
    if key.identity() != expected {
        return Err(ConfigError::Invalid(format!(
            "{} does not hold the USIG key cluster.toml names for replica {} \
             (it holds {}, cluster.toml names {})",
            secrets.usig_key_file.display(),
            secrets.id,
            describe_identity(&key.identity()),
            describe_identity(&expected),
        )));
    }
    Ok(key)
}

/// A short name for a USIG identity in error messages.
fn describe_identity(identity: &usig::UsigIdentity) -> String {
    let short = |bytes: &[u8]| crate::config::hex(bytes.get(..8).unwrap_or(bytes));
    match identity {
        usig::UsigIdentity::EcdsaP256 { public_key } => {
            format!(
                "the ECDSA P-256 key {}…",
                short(public_key.get(1..).unwrap_or(&[]))
            )
        }
        usig::UsigIdentity::HmacSha256 { key_id } => {
            format!("the shared key with id {}…", short(key_id))
        }
        usig::UsigIdentity::Tpm { public_key, .. } => {
            format!("the TPM key {}…", short(public_key.get(1..).unwrap_or(&[])))
        }
    }
}

/// Cheap to clone: the validation path and the core each hold one.
#[derive(Clone)]
pub struct ClusterCrypto(Arc<Inner>);

impl ClusterCrypto {
    /// `usig_key`: the replica's own USIG key, which checks shared-key identities.
    fn public(
        config: &ClusterConfig,
        usig_key: Option<&usig::SigningKey>,
    ) -> Result<Inner, ConfigError> {
        let mut usig = Vec::new();
        let mut usig_shared = true;
        for r in &config.replicas {
            let id = config.usig_identity(r.id)?;
            usig_shared &= matches!(id, usig::UsigIdentity::HmacSha256 { .. });
            let verifier = match (&id, usig_key) {
                (usig::UsigIdentity::HmacSha256 { .. }, None) => None,
                (_, Some(key)) => Some(key.verifier_for(&id)),
                (_, None) => Some(usig::Verifier::new(&id)),
            };
            usig.push(
                verifier
                    .transpose()
                    .map_err(|e| ConfigError::Invalid(format!("replica {} USIG key: {e}", r.id)))?,
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
            request_digest: config.request_digest,
            usig_shared,
            clients,
            reply_keys: BTreeMap::new(),
            me: None,
            n: config.n(),
            verified: Mutex::default(),
            verified_done: Condvar::new(),
            digests: Mutex::default(),
        })
    }

    /// What replica `secrets.id` verifies and MACs with. In a cluster with a shared
    /// USIG key, the replica's key file is read: it checks the others' UIs.
    pub fn for_replica(
        config: &ClusterConfig,
        secrets: &ReplicaSecrets,
    ) -> Result<Self, ConfigError> {
        let shared = matches!(
            config.usig_identity(secrets.id)?,
            usig::UsigIdentity::HmacSha256 { .. }
        );
        let key = match shared {
            true => Some(own_usig_key(config, secrets)?),
            false => None,
        };
        let mut inner = Self::public(config, key.as_ref())?;
        for (&c, k) in &secrets.reply_keys {
            inner.reply_keys.insert((secrets.id, c), *k);
        }
        inner.me = Some(secrets.id);
        Ok(ClusterCrypto(Arc::new(inner)))
    }

    /// What client `secrets.id` verifies replies with.
    pub fn for_client(
        config: &ClusterConfig,
        secrets: &ClientSecrets,
    ) -> Result<Self, ConfigError> {
        let mut inner = Self::public(config, None)?;
        for (&r, k) in &secrets.reply_keys {
            inner.reply_keys.insert((r, secrets.id), *k);
        }
        Ok(ClusterCrypto(Arc::new(inner)))
    }

    /// A read-only request's authenticator (client side): `READ_AUTH_TAG`, then for each
    /// replica in order the first `READ_MAC_LEN` bytes of HMAC-SHA256 under the key this
    /// client shares with it. About 1 µs instead of an ECDSA signature (≈ 22 µs to sign,
    /// ≈ 68 µs to verify on every replica); reads need no proof a third party could
    /// check, because a read-only request is never ordered.
    /// An ordered request of `client` with `seq` and digest `digest` whose signature
    /// this replica verified recently (`remember_request_digest`: large requests only),
    /// sharing its operation's bytes. For filling in slim PREPAREs (`replica::slim`).
    pub fn verified_request(
        &self,
        client: ClientId,
        seq: u64,
        digest: &Digest,
    ) -> Option<consensus::Request> {
        let memo = self.0.digests.lock().unwrap_or_else(|p| p.into_inner());
        memo.with_digest(client, seq, digest)
    }

    pub fn read_only_authenticator(&self, client: ClientId, digest: &Digest) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + READ_MAC_LEN * self.0.n as usize);
        out.push(READ_AUTH_TAG);
        for r in 0..self.0.n {
            let mac = self
                .reply_key(r, client)
                .map_or([0; 32], |k| read_mac(k, client, digest));
            out.extend_from_slice(&mac[..READ_MAC_LEN]);
        }
        out
    }

    /// `verify()`, unless the same `key` verified before (`VerifiedRequests`) or does
    /// while we wait for a check of it already running; a success is remembered, a
    /// failure never (a waiter then checks for itself).
    fn verified_once(&self, key: Digest, verify: impl FnOnce() -> bool) -> bool {
        self.verified_once_within(key, CHECK_WAIT_MAX, verify)
    }

    /// `verified_once`, waiting at most `wait` for a running check of `key`.
    fn verified_once_within(
        &self,
        key: Digest,
        wait: Duration,
        verify: impl FnOnce() -> bool,
    ) -> bool {
        let mut cache = self.verified_cache();
        let deadline = Instant::now() + wait;
        loop {
            if cache.set.contains(&key) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !cache.running.contains_key(&key) || left.is_zero() {
                break;
            }
            cache = match self.0.verified_done.wait_timeout(cache, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        *cache.running.entry(key).or_default() += 1;
        drop(cache);
        let ok = verify();
        let mut cache = self.verified_cache();
        if ok {
            cache.insert(key);
        }
        if let Some(count) = cache.running.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                cache.running.remove(&key);
            }
        }
        drop(cache);
        self.0.verified_done.notify_all();
        ok
    }

    fn verified_cache(&self) -> MutexGuard<'_, VerifiedRequests> {
        self.0.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reply_key(&self, replica: ReplicaId, client: ClientId) -> Option<&[u8; 32]> {
        self.0
            .reply_keys
            .get(&(replica, ClusterConfig::client_index(client)))
    }
}

impl Crypto for ClusterCrypto {
    fn verify_ui(&self, replica: ReplicaId, digest: &Digest, ui: &Ui) -> bool {
        let check = || {
            self.0
                .usig
                .get(replica as usize)
                .and_then(Option::as_ref)
                .is_some_and(|v| v.verify(replica, digest, ui).is_ok())
        };
        if self.0.usig_shared {
            return check();
        }
        // A COMMIT embeds the primary's UI that its PREPARE already carried: each
        // receiver checks that UI once, not once per COMMIT.
        self.verified_once(VerifiedRequests::ui_key(replica, digest, ui), check)
    }

    fn verify_request(&self, client: ClientId, digest: &Digest, sig: &[u8]) -> bool {
        self.verified_once(VerifiedRequests::key(client, digest, sig), || {
            self.0
                .clients
                .get(&ClusterConfig::client_index(client))
                .is_some_and(|k| k.verify(digest, sig).is_ok())
        })
    }

    fn verify_read_only_request(&self, client: ClientId, digest: &Digest, auth: &[u8]) -> bool {
        let authenticator_len = 1 + READ_MAC_LEN * self.0.n as usize;
        if auth.len() != authenticator_len || auth.first() != Some(&READ_AUTH_TAG) {
            return self.verify_request(client, digest, auth);
        }
        let (Some(me), Some(key)) = (self.0.me, self.0.me.and_then(|r| self.reply_key(r, client)))
        else {
            return false;
        };
        let at = 1 + READ_MAC_LEN * me as usize;
        constant_time_eq(
            &read_mac(key, client, digest)[..READ_MAC_LEN],
            &auth[at..at + READ_MAC_LEN],
        )
    }

    fn request_digest(&self, req: &consensus::Request) -> Digest {
        match self.0.request_digest {
            RequestDigestKind::Sha256 => req.digest(),
            RequestDigestKind::Blake3Op => req.digest_blake3_op(),
        }
    }

    fn known_request_digest(&self, req: &consensus::Request) -> Option<Digest> {
        if req.op.len() < REQUEST_DIGEST_MIN_BYTES {
            return None;
        }
        let memo = self.0.digests.lock().unwrap_or_else(|p| p.into_inner());
        memo.find(req)
    }

    fn remember_request_digest(&self, req: &consensus::Request, d: &Digest) {
        if req.op.len() < REQUEST_DIGEST_MIN_BYTES {
            return;
        }
        let mut memo = self.0.digests.lock().unwrap_or_else(|p| p.into_inner());
        memo.insert(req, d);
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

/// The MAC over one replica-link frame: binds the link key, the connection's nonce
/// (no replay across connections) and the frame's position (no replay or reordering
/// within one). Keyed BLAKE3 (a PRF under a 32-byte key) rather than HMAC-SHA256: a
/// PREPARE carrying a 1 MiB WRITE is MACed once per backup and checked by each, and
/// BLAKE3 is about 2.5x faster here. Links of builds before it fail as `BadMac`.
pub fn link_mac(key: &[u8; 32], nonce: &[u8; 32], counter: u64, body_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"bftnfs/link/v3");
    h.update(nonce);
    h.update(&counter.to_be_bytes());
    h.update(body_hash);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeygenOptions, keygen};

    #[test]
    fn a_large_request_is_hashed_once_and_only_the_same_bytes_reuse_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 2)).expect("keygen");
        let c = ClusterConfig::load(&path).expect("load");
        let config = c.consensus.clone();
        let r0 = ClusterCrypto::for_replica(&c, &c.replica_secrets(0).expect("r0")).expect("r0");
        let cs = c.client_secrets(1).expect("c1");
        let signer = RequestSigner::new(&cs.signing_pkcs8).expect("signer");
        let request = |seq: u64, op: Vec<u8>| {
            let mut r = consensus::Request {
                client: crate::config::SESSION_STRIDE,
                seq,
                read_only: false,
                op: op.into(),
                sig: Vec::new(),
            };
            r.sig = signer.sign(&r0.request_digest(&r));
            r
        };
        let big = request(1, vec![5u8; 1 << 20]);
        assert_eq!(r0.known_request_digest(&big), None);
        consensus::validate::request(&config, &r0, big.clone()).expect("valid");
        // The PREPARE's copy: the same bytes in another buffer.
        let copy: consensus::Request = bincode_round_trip(&big);
        assert_ne!(copy.op.as_ptr(), big.op.as_ptr());
        assert_eq!(r0.known_request_digest(&copy), Some(big.digest_blake3_op()));
        // One byte of the operation, or the signature, differs: hashed again.
        let mut other = copy.clone();
        let mut op = other.op.to_vec();
        op[12345] ^= 1;
        other.op = op.into();
        assert_eq!(r0.known_request_digest(&other), None);
        let mut resigned = copy.clone();
        resigned.sig[5] ^= 1;
        assert_eq!(r0.known_request_digest(&resigned), None);
        // A request whose signature does not verify is never remembered.
        assert!(consensus::validate::request(&config, &r0, other.clone()).is_err());
        assert_eq!(r0.known_request_digest(&other), None);
        // Small requests are not kept; the memo is bounded.
        let small = request(2, vec![1u8; 100]);
        consensus::validate::request(&config, &r0, small.clone()).expect("valid");
        assert_eq!(r0.known_request_digest(&small), None);
        for seq in 3..3 + REQUEST_DIGESTS_MAX as u64 {
            let r = request(seq, vec![seq as u8; REQUEST_DIGEST_MIN_BYTES]);
            consensus::validate::request(&config, &r0, r).expect("valid");
        }
        assert_eq!(r0.known_request_digest(&big), None, "evicted");
        let memo = r0.0.digests.lock().unwrap();
        assert!(memo.entries.len() <= REQUEST_DIGESTS_MAX);
        assert!(memo.bytes <= REQUEST_DIGESTS_BYTES_MAX);
    }

    #[test]
    fn a_check_running_on_another_thread_is_waited_for_not_repeated() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::mpsc;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 1)).expect("keygen");
        let c = ClusterConfig::load(&path).expect("load");
        let r0 = ClusterCrypto::for_replica(&c, &c.replica_secrets(0).expect("r0")).expect("r0");
        let checks = AtomicU32::new(0);
        // The first thread's check of `key` runs until released, and answers `first`;
        // a second thread asks for the same key meanwhile, waiting up to `wait`.
        let race = |key: Digest, first: bool, wait: Duration| {
            checks.store(0, Ordering::SeqCst);
            let (started, is_started) = mpsc::channel();
            let (release, is_released) = mpsc::channel::<()>();
            let (r0, checks) = (&r0, &checks);
            std::thread::scope(|s| {
                let a = s.spawn(move || {
                    r0.verified_once_within(key, wait, || {
                        started.send(()).expect("send");
                        is_released.recv().expect("released");
                        checks.fetch_add(1, Ordering::SeqCst);
                        first
                    })
                });
                is_started.recv().expect("started");
                let b = s.spawn(move || {
                    r0.verified_once_within(key, wait, || {
                        checks.fetch_add(1, Ordering::SeqCst);
                        true
                    })
                });
                // Let the second thread reach its wait (or its own check) first.
                std::thread::sleep(Duration::from_millis(50));
                release.send(()).expect("release");
                let a = a.join().expect("a");
                let b = b.join().expect("b");
                (a, b, checks.load(Ordering::SeqCst))
            })
        };
        // Waited for: one check answers both.
        assert_eq!(
            race([1; 32], true, Duration::from_secs(60)),
            (true, true, 1)
        );
        // A failure is not an answer for the waiter, which checks for itself.
        assert_eq!(
            race([2; 32], false, Duration::from_secs(60)),
            (false, true, 2)
        );
        // A check running longer than the wait: the waiter checks for itself.
        assert_eq!(
            race([3; 32], true, Duration::from_millis(1)),
            (true, true, 2)
        );
        // Nothing is left marked as running.
        assert!(r0.verified_cache().running.is_empty());
    }

    fn bincode_round_trip(r: &consensus::Request) -> consensus::Request {
        crate::net::decode(&crate::net::encode(r)).expect("decodes")
    }

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
        // Answered from the verified-request cache now, and only for the same bytes.
        assert!(r0.clone().verify_request(session, &d, &sig));
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert!(!r0.verify_request(session, &d, &bad));
        assert!(!r0.verify_request(session, &d, &bad));
        // Read-only requests: the MAC authenticator convinces each replica of its own
        // entry only, and nothing else accepts it.
        let r1 = ClusterCrypto::for_replica(&c, &c.replica_secrets(1).expect("r1")).expect("r1");
        let auth = k1.read_only_authenticator(session, &d);
        assert!(r0.verify_read_only_request(session, &d, &auth));
        assert!(r1.verify_read_only_request(session, &d, &auth));
        assert!(
            !r0.verify_request(session, &d, &auth),
            "never for an ordered request"
        );
        assert!(!r0.verify_read_only_request(session, &[8; 32], &auth));
        assert!(!r0.verify_read_only_request(session + 1, &d, &auth));
        let mut only_r0 = auth.clone();
        only_r0[1 + 16] ^= 1; // replica 1's entry
        assert!(r0.verify_read_only_request(session, &d, &only_r0));
        assert!(!r1.verify_read_only_request(session, &d, &only_r0));
        assert!(
            r0.verify_read_only_request(session, &d, &sig),
            "a signature still works"
        );
        let mac = r0.reply_mac(0, session, &d);
        assert!(k1.verify_reply_mac(0, session, &d, &mac));
        assert!(!k1.verify_reply_mac(1, session, &d, &mac));
    }

    /// Each replica's UIs check at every replica, for both kinds of USIG key; a client
    /// of a shared-key cluster holds no key and checks none (it never needs to).
    #[test]
    fn usig_identifiers_check_at_every_replica_for_both_key_kinds() {
        use crate::config::UsigKeyKind;
        use usig::Usig as _;
        for kind in [UsigKeyKind::Shared, UsigKeyKind::EcdsaP256] {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = crate::config::test_support::cluster(dir.path(), 2, kind);
            let replicas: Vec<ClusterCrypto> = (0..3)
                .map(|i| {
                    ClusterCrypto::for_replica(&c, &c.replica_secrets(i).expect("secrets"))
                        .expect("replica crypto")
                })
                .collect();
            let client =
                ClusterCrypto::for_client(&c, &c.client_secrets(0).expect("c0")).expect("c0");
            for signer in 0..3u32 {
                let secrets = c.replica_secrets(signer).expect("secrets");
                let key = usig::SigningKey::read_file(&secrets.usig_key_file).expect("key");
                let mut usig = usig::MemoryUsig::new(signer, key.key_bytes()).expect("usig");
                let d = [signer as u8 + 1; 32];
                let ui = usig.create_ui(&d).expect("ui");
                for (at, r) in replicas.iter().enumerate() {
                    assert!(
                        r.verify_ui(signer, &d, &ui),
                        "{kind:?}: {signer}'s UI at {at}"
                    );
                    assert!(
                        !r.verify_ui((signer + 1) % 3, &d, &ui),
                        "{kind:?}: other signer"
                    );
                    assert!(
                        !r.verify_ui(signer, &[0; 32], &ui),
                        "{kind:?}: other digest"
                    );
                }
                assert_eq!(
                    client.verify_ui(signer, &d, &ui),
                    kind == UsigKeyKind::EcdsaP256,
                    "{kind:?}: at a client"
                );
            }
        }
    }

    /// A replica whose key file holds another key than cluster.toml names is refused
    /// with both named, for both kinds: its UIs would be refused by every peer.
    #[test]
    fn a_usig_key_file_that_is_not_the_named_key_is_refused() {
        use crate::config::UsigKeyKind;
        for (kind, other) in [
            (UsigKeyKind::Shared, usig::SigningKey::generate_shared()),
            (UsigKeyKind::Shared, usig::SigningKey::generate()),
            (UsigKeyKind::EcdsaP256, usig::SigningKey::generate()),
            (UsigKeyKind::EcdsaP256, usig::SigningKey::generate_shared()),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let c = crate::config::test_support::cluster(dir.path(), 1, kind);
            let secrets = c.replica_secrets(2).expect("secrets");
            own_usig_key(&c, &secrets).expect("the key keygen wrote");
            std::fs::remove_file(&secrets.usig_key_file).expect("remove");
            other
                .expect("key")
                .write_file(&secrets.usig_key_file)
                .expect("write");
            let err = own_usig_key(&c, &secrets)
                .expect_err("another key")
                .to_string();
            assert!(
                err.contains("replica-2.usig") && err.contains("does not hold"),
                "{kind:?}: {err}"
            );
            if kind == UsigKeyKind::Shared {
                let err = ClusterCrypto::for_replica(&c, &secrets)
                    .err()
                    .expect("refused");
                assert!(err.to_string().contains("does not hold"), "{err}");
            }
        }
    }

    /// New clusters digest requests with `digest_blake3_op`; a cluster.toml without
    /// `request_digest` (written before the sixteenth session) keeps `digest`, and a
    /// request signed under one is refused under the other.
    #[test]
    fn the_request_digest_is_the_clusters_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 2)).expect("keygen");
        let new = ClusterConfig::load(&path).expect("load");
        let text = crate::config::test_support::drop_setting(&path, "request_digest");
        assert!(text.contains("request_digest = \"blake3-op\""), "{text}");
        let old = ClusterConfig::load(&path).expect("load an older file");
        let cs = new.client_secrets(1).expect("c1");
        let signer = RequestSigner::new(&cs.signing_pkcs8).expect("signer");
        let mut r = consensus::Request {
            client: crate::config::SESSION_STRIDE,
            seq: 1,
            read_only: false,
            op: vec![3u8; 200_000].into(),
            sig: Vec::new(),
        };
        let replica = |c: &ClusterConfig| {
            ClusterCrypto::for_replica(c, &c.replica_secrets(0).expect("r0")).expect("r0")
        };
        let (new_r0, old_r0) = (replica(&new), replica(&old));
        assert_eq!(new_r0.request_digest(&r), r.digest_blake3_op());
        assert_eq!(old_r0.request_digest(&r), r.digest());
        let client = ClusterCrypto::for_client(&new, &cs).expect("client");
        assert_eq!(client.request_digest(&r), new_r0.request_digest(&r));
        r.sig = signer.sign(&client.request_digest(&r));
        consensus::validate::request(&new.consensus, &new_r0, r.clone()).expect("valid");
        assert!(consensus::validate::request(&old.consensus, &old_r0, r).is_err());
    }
}
