//! Stateless validation: signatures, UIs, structure and limits. The core accepts only
//! [`Verified`] messages, whose constructor lives here, so no unchecked input can reach
//! the protocol state (STYLE: "validated statelessly first").
//!
//! Everything here is a pure function of the message, the configuration and the keys,
//! so a runtime may run it on another thread, or cache it, without changing behaviour.

use std::collections::BTreeSet;

use crate::crypto::Crypto;
use crate::message::{
    Checkpoint, CheckpointCert, Commit, NewView, PeerMessage, Prepare, Rebase, Request, UiMessage,
    ViewChange, prepare_digest,
};
use crate::types::{Config, Digest, ReplicaId};

/// Most messages one FETCH may ask for.
pub const FETCH_RANGE_MAX: u64 = 64;

/// A message that passed stateless validation. Only this module can make one.
#[derive(Clone, Debug)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn get(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// Why a message was dropped; counted per reason by the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    #[error("unknown replica or client id")]
    UnknownSender,
    #[error("invalid USIG identifier")]
    BadUi,
    #[error("invalid client signature")]
    BadClientSignature,
    #[error("message from a replica that is not the primary of that view")]
    NotPrimary,
    #[error("batch digest does not match the requests")]
    BadBatchDigest,
    #[error("batch exceeds configured limits")]
    BatchTooLarge,
    #[error("malformed message")]
    Malformed,
    #[error("invalid checkpoint certificate")]
    BadCertificate,
    #[error("request exceeds configured limits")]
    RequestTooLarge,
}

/// Validates a message received from replica `from` on an authenticated channel.
pub fn peer_message(
    config: &Config,
    crypto: &dyn Crypto,
    from: ReplicaId,
    msg: PeerMessage,
) -> Result<Verified<PeerMessage>, Reject> {
    if from >= config.n() {
        return Err(Reject::UnknownSender);
    }
    match &msg {
        PeerMessage::Ui(m) => ui_message(config, crypto, m)?,
        PeerMessage::ReqViewChange { view, new_view } => {
            if new_view <= view {
                return Err(Reject::Malformed);
            }
        }
        PeerMessage::Fetch { sender, from, to } => {
            if *sender >= config.n() || from > to || to - from >= FETCH_RANGE_MAX || *from == 0 {
                return Err(Reject::Malformed);
            }
        }
        PeerMessage::Status { .. }
        | PeerMessage::CertRequest { .. }
        | PeerMessage::NewViewRequest { .. }
        | PeerMessage::ViewCertRequest { .. } => {}
        PeerMessage::FetchFromCheckpoint { sender, .. } => {
            if *sender >= config.n() {
                return Err(Reject::Malformed);
            }
        }
        PeerMessage::NewViewProof(nv) => {
            ui_message(config, crypto, &UiMessage::NewView(nv.clone()))?
        }
        PeerMessage::Cert(cert) => checkpoint_cert(config, crypto, cert)?,
    }
    Ok(Verified(msg))
}

/// Validates a client request: size, signature.
pub fn request(
    config: &Config,
    crypto: &dyn Crypto,
    req: Request,
) -> Result<Verified<Request>, Reject> {
    request_ref(config, crypto, &req)?;
    Ok(Verified(req))
}

fn request_ref(config: &Config, crypto: &dyn Crypto, req: &Request) -> Result<(), Reject> {
    request_size(config, req)?;
    let d = crypto.request_digest(req);
    request_signed(crypto, req, &d)?;
    if !req.read_only {
        crypto.remember_request_digest(req, &d);
    }
    Ok(())
}

/// A request's digest, from `known_request_digest` when this replica hashed the same
/// request before.
pub fn request_digest(crypto: &dyn Crypto, req: &Request) -> Digest {
    crypto
        .known_request_digest(req)
        .unwrap_or_else(|| crypto.request_digest(req))
}

/// A request's operation is within `request_bytes_max` (checked before it is hashed).
fn request_size(config: &Config, req: &Request) -> Result<(), Reject> {
    if req.op.len() > config.request_bytes_max {
        return Err(Reject::RequestTooLarge);
    }
    Ok(())
}

/// The request's signature (or read-only authenticator) over its digest `d`.
fn request_signed(crypto: &dyn Crypto, req: &Request, d: &Digest) -> Result<(), Reject> {
    let ok = if req.read_only {
        crypto.verify_read_only_request(req.client, d, &req.sig)
    } else {
        crypto.verify_request(req.client, d, &req.sig)
    };
    if !ok {
        return Err(Reject::BadClientSignature);
    }
    Ok(())
}

fn check_ui(crypto: &dyn Crypto, config: &Config, m: &UiMessage) -> Result<(), Reject> {
    let sender = m.sender();
    if sender >= config.n() {
        return Err(Reject::UnknownSender);
    }
    // Counters start at 1 and a USIG stops before `u64::MAX` (the receiver's stream
    // then expects `counter + 1`), so neither end is ever a correct replica's.
    if m.counter() == 0
        || m.counter() == u64::MAX
        || !crypto.verify_ui(sender, &m.certified_digest(), m.ui())
    {
        return Err(Reject::BadUi);
    }
    Ok(())
}

/// Validates one USIG-certified message (and everything embedded in it).
pub fn ui_message(config: &Config, crypto: &dyn Crypto, m: &UiMessage) -> Result<(), Reject> {
    check_ui(crypto, config, m)?;
    match m {
        UiMessage::Prepare(p) => prepare_body(config, crypto, p),
        UiMessage::Commit(c) => commit_body(config, crypto, c),
        UiMessage::Checkpoint(_) => Ok(()),
        UiMessage::ViewChange(vc) => view_change_body(config, crypto, vc),
        UiMessage::NewView(nv) => new_view_body(config, crypto, nv),
        UiMessage::Rebase(r) => rebase_body(r),
    }
}

fn rebase_body(r: &Rebase) -> Result<(), Reject> {
    // The REBASE comes after everything its sender still holds.
    if r.last_logged >= r.ui.counter {
        return Err(Reject::Malformed);
    }
    Ok(())
}

fn prepare_body(config: &Config, crypto: &dyn Crypto, p: &Prepare) -> Result<(), Reject> {
    if p.primary != config.primary(p.header.view) {
        return Err(Reject::NotPrimary);
    }
    if p.header.n == 0 {
        return Err(Reject::Malformed);
    }
    // A batch of one request is bounded by `request_bytes_max` alone: a primary
    // proposes a request larger than `batch_bytes_max` on its own rather than never.
    if p.batch.requests.len() > config.batch_requests_max
        || (p.batch.op_bytes() > config.batch_bytes_max && p.batch.requests.len() > 1)
    {
        return Err(Reject::BatchTooLarge);
    }
    for r in &p.batch.requests {
        request_size(config, r)?;
    }
    // Each request is hashed once, for the batch digest and its signature (a WRITE's
    // request is up to 1 MiB), and not at all if its copy straight from the client was.
    let digests: Vec<Digest> = p
        .batch
        .requests
        .iter()
        .map(|r| request_digest(crypto, r))
        .collect();
    if p.batch.digest_of(&digests) != p.header.batch_digest {
        return Err(Reject::BadBatchDigest);
    }
    // The REBASEs a primary orders: each certified by another replica, one per sender.
    if p.batch.rebases.len() > config.n() as usize {
        return Err(Reject::BatchTooLarge);
    }
    let mut senders = BTreeSet::new();
    for r in &p.batch.rebases {
        if r.sender == p.primary || !senders.insert(r.sender) {
            return Err(Reject::Malformed);
        }
        let m = UiMessage::Rebase(r.clone());
        check_ui(crypto, config, &m)?;
        rebase_body(r)?;
    }
    let mut clients = BTreeSet::new();
    for (r, d) in p.batch.requests.iter().zip(&digests) {
        // One request per client per batch keeps execution order unambiguous.
        if r.read_only || !clients.insert(r.client) {
            return Err(Reject::Malformed);
        }
        request_signed(crypto, r, d)?;
    }
    Ok(())
}

/// A PREPARE embedded in another message carries its own UI; check it fully.
fn embedded_prepare(config: &Config, crypto: &dyn Crypto, p: &Prepare) -> Result<(), Reject> {
    if !crypto.verify_ui(p.primary, &prepare_digest(&p.header, p.primary), &p.ui) {
        return Err(Reject::BadUi);
    }
    prepare_body(config, crypto, p)
}

fn commit_body(config: &Config, crypto: &dyn Crypto, c: &Commit) -> Result<(), Reject> {
    if c.primary != config.primary(c.header.view) || c.sender == c.primary {
        return Err(Reject::NotPrimary);
    }
    if c.header.n == 0 {
        return Err(Reject::Malformed);
    }
    if !crypto.verify_ui(
        c.primary,
        &prepare_digest(&c.header, c.primary),
        &c.primary_ui,
    ) {
        return Err(Reject::BadUi);
    }
    Ok(())
}

/// f+1 CHECKPOINTs from distinct replicas for the same (n, digest), each with a valid UI.
/// The genesis certificate (n = 0) is empty.
pub fn checkpoint_cert(
    config: &Config,
    crypto: &dyn Crypto,
    cert: &CheckpointCert,
) -> Result<(), Reject> {
    if cert.n == 0 && cert.view_top.is_none() {
        return if cert.checkpoints.is_empty() {
            Ok(())
        } else {
            Err(Reject::BadCertificate)
        };
    }
    if cert.checkpoints.len() < config.quorum() || cert.checkpoints.len() > config.n() as usize {
        return Err(Reject::BadCertificate);
    }
    let mut senders = BTreeSet::new();
    for c in &cert.checkpoints {
        if c.n != cert.n
            || c.state_digest != cert.state_digest
            || c.view_top != cert.view_top
            || !senders.insert(c.sender)
        {
            return Err(Reject::BadCertificate);
        }
        check_ui(crypto, config, &UiMessage::Checkpoint(c.clone()))
            .map_err(|_| Reject::BadCertificate)?;
    }
    Ok(())
}

fn view_change_body(config: &Config, crypto: &dyn Crypto, vc: &ViewChange) -> Result<(), Reject> {
    // Nobody changes to view 0, the first one (the core takes `new_view - 1`).
    if vc.new_view == 0 {
        return Err(Reject::Malformed);
    }
    if vc.cert.view_top.is_some() && vc.cert.n == 0 {
        return Err(Reject::BadCertificate);
    }
    checkpoint_cert(config, crypto, &vc.cert)?;
    let mut tops = std::collections::BTreeMap::new();
    for c in &vc.view_certs {
        let Some(v) = c.view_top else {
            return Err(Reject::BadCertificate);
        };
        if v == 0 || v >= vc.new_view || tops.insert(v, c.n).is_some() {
            return Err(Reject::BadCertificate);
        }
        checkpoint_cert(config, crypto, c)?;
    }
    let mut seen = BTreeSet::new();
    // A correct replica prepares nothing beyond its log window (`Config::log_window`).
    let window = vc.cert.n.saturating_add(config.log_window());
    for p in &vc.accepted {
        if p.header.view >= vc.new_view
            || p.header.n <= vc.cert.n
            || p.header.n > window
            || !seen.insert((p.header.view, p.header.n))
        {
            return Err(Reject::Malformed);
        }
        embedded_prepare(config, crypto, p)?;
    }
    Ok(())
}

fn new_view_body(config: &Config, crypto: &dyn Crypto, nv: &NewView) -> Result<(), Reject> {
    if nv.sender != config.primary(nv.new_view) {
        return Err(Reject::NotPrimary);
    }
    let mut senders = BTreeSet::new();
    if nv.view_changes.len() < config.quorum() || nv.view_changes.len() > config.n() as usize {
        return Err(Reject::Malformed);
    }
    for vc in &nv.view_changes {
        if vc.new_view != nv.new_view || !senders.insert(vc.sender) {
            return Err(Reject::Malformed);
        }
        ui_message(config, crypto, &UiMessage::ViewChange(vc.clone()))?;
    }
    Ok(())
}

/// Checks a CHECKPOINT's UI (used when a certificate member arrives on its own).
pub fn checkpoint(config: &Config, crypto: &dyn Crypto, c: &Checkpoint) -> Result<(), Reject> {
    check_ui(crypto, config, &UiMessage::Checkpoint(c.clone()))
}
