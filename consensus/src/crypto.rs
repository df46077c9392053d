//! The cryptographic checks the core needs, behind one trait so that the deterministic
//! simulator can run thousands of seeds with keyed hashes while the runtime uses ECDSA
//! P-256 (USIG, client requests) and HMAC-SHA256 (replies).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::message::Request;
use crate::types::{ClientId, Digest, ReplicaId, Ui};

/// Verification of USIG identifiers and client signatures, and reply MACs.
/// Every method is a pure function of its arguments and the keys fixed at construction.
pub trait Crypto {
    /// Is `ui` a valid USIG identifier of `replica` for `digest`?
    fn verify_ui(&self, replica: ReplicaId, digest: &Digest, ui: &Ui) -> bool;
    /// Is `sig` the signature of `client` over a request with `digest`?
    fn verify_request(&self, client: ClientId, digest: &Digest, sig: &[u8]) -> bool;
    /// The same for a read-only request, which is never ordered (a PREPARE carrying one
    /// is malformed) and so may also be authenticated by something that convinces only
    /// the replica checking it, such as a MAC authenticator (one MAC per replica): no
    /// other replica ever has to accept the same request on this replica's word.
    fn verify_read_only_request(&self, client: ClientId, digest: &Digest, auth: &[u8]) -> bool {
        self.verify_request(client, digest, auth)
    }
    /// The digest a client signs and every replica checks for `req`: one function of
    /// the request per cluster (`Request::digest` unless the cluster chose another).
    fn request_digest(&self, req: &Request) -> Digest {
        req.digest()
    }
    /// The digest of `req` if this replica computed it before for the very same request
    /// (client, sequence number, read-only flag, signature and operation bytes all
    /// equal), so a large WRITE is not hashed again when its PREPARE, or the primary's
    /// proposal, carries a copy. `None` is always a correct answer.
    fn known_request_digest(&self, _req: &Request) -> Option<Digest> {
        None
    }
    /// Offers `d`, the digest of `req` whose signature just verified, for
    /// `known_request_digest`.
    fn remember_request_digest(&self, _req: &Request, _d: &Digest) {}
    /// The MAC `replica` attaches to a reply for `client` (replica side).
    fn reply_mac(&self, replica: ReplicaId, client: ClientId, bytes: &Digest) -> [u8; 32];
    /// Checks a reply MAC (client side).
    fn verify_reply_mac(
        &self,
        replica: ReplicaId,
        client: ClientId,
        bytes: &Digest,
        mac: &[u8; 32],
    ) -> bool {
        constant_time_eq(&self.reply_mac(replica, client, bytes), mac)
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Keyed-hash stand-ins for signatures, for the simulator and tests. Every key derives
/// from one secret, so the simulator can hand a Byzantine replica only its own USIG
/// while correct replicas verify everybody.
#[derive(Clone, Debug)]
pub struct SimCrypto {
    secret: [u8; 32],
}

impl SimCrypto {
    pub fn new(secret: [u8; 32]) -> Self {
        SimCrypto { secret }
    }

    fn key(&self, label: &[u8], id: u64) -> [u8; 32] {
        hmac_sha256(&self.secret, &[label, &id.to_be_bytes()])
    }

    /// The certificate a simulated USIG of `replica` produces.
    pub fn ui_cert(&self, replica: ReplicaId, counter: u64, digest: &Digest) -> Vec<u8> {
        let key = self.key(b"usig", u64::from(replica));
        hmac_sha256(&key, &[&usig::certified_bytes(replica, counter, digest)]).to_vec()
    }

    /// A simulated client signature.
    pub fn sign_request(&self, client: ClientId, digest: &Digest) -> Vec<u8> {
        let key = self.key(b"client", client);
        hmac_sha256(&key, &[digest]).to_vec()
    }
}

impl Crypto for SimCrypto {
    fn verify_ui(&self, replica: ReplicaId, digest: &Digest, ui: &Ui) -> bool {
        ui.counter > 0 && constant_time_eq(&self.ui_cert(replica, ui.counter, digest), &ui.cert)
    }

    fn verify_request(&self, client: ClientId, digest: &Digest, sig: &[u8]) -> bool {
        constant_time_eq(&self.sign_request(client, digest), sig)
    }

    fn reply_mac(&self, replica: ReplicaId, client: ClientId, bytes: &Digest) -> [u8; 32] {
        let key = self.key(b"reply", (u64::from(replica) << 48) ^ client);
        hmac_sha256(&key, &[bytes])
    }
}
