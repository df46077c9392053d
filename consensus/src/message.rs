//! The messages of MinPBFT (MinBFT sections 4–5) and the one place that defines which
//! bytes each UI and signature certifies (STYLE principle 7).
//!
//! Every message a replica certifies with its USIG is a [`UiMessage`]; receivers process
//! those strictly in the order of the sender's counter (the FIFO rule). Other replica
//! messages (REQ-VIEW-CHANGE, fetches, status) travel on authenticated point-to-point
//! channels and are never relayed.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::types::{ClientId, Digest, ReplicaId, SeqNum, Ui, View};

/// ⟨REQUEST, c, seq, op⟩σc. `read_only` requests take the unordered read path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub client: ClientId,
    pub seq: u64,
    pub read_only: bool,
    /// The operation, shared rather than copied wherever the request goes (a batch
    /// handed to execution, the log, a PREPARE to each backup): a WRITE carries up to
    /// 1 MiB. Encoded exactly like a byte vector.
    pub op: Bytes,
    /// The client's signature over the request's digest (`Crypto::request_digest`:
    /// [`Request::digest`] or [`Request::digest_blake3_op`], by cluster).
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Request {
    /// The request's digest as clusters made before the sixteenth session compute it:
    /// SHA-256 over the header and the whole operation (`Crypto::request_digest`'s
    /// default, and the simulator's).
    pub fn digest(&self) -> Digest {
        self.digest_over(b"bftnfs/request/v1", &self.op)
    }

    /// The digest of clusters made since the sixteenth session: SHA-256 over the header
    /// and the operation's BLAKE3 hash, under a tag of its own. A 1 MiB WRITE is
    /// hashed by every party that checks its signature; BLAKE3 does that about 4x
    /// faster here than SHA-256.
    pub fn digest_blake3_op(&self) -> Digest {
        self.digest_over(b"bftnfs/request/v2", blake3::hash(&self.op).as_bytes())
    }

    /// SHA-256 of `tag`, the header, the operation's length and `op_part`.
    fn digest_over(&self, tag: &[u8], op_part: &[u8]) -> Digest {
        let mut h = Sha256::new();
        h.update(tag);
        h.update(self.client.to_be_bytes());
        h.update(self.seq.to_be_bytes());
        h.update([u8::from(self.read_only)]);
        h.update((self.op.len() as u64).to_be_bytes());
        h.update(op_part);
        h.finalize().into()
    }
}

/// The ordered requests of one PREPARE, and the REBASEs it orders (see [`Rebase`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
    /// REBASEs of other replicas ordered at this batch's number (usually none).
    #[serde(default)]
    pub rebases: Vec<Rebase>,
}

impl Batch {
    /// The batch digest with every request under [`Request::digest`]: right for the
    /// simulator, tests and request-free batches only. A replica computes it with its
    /// cluster's request digest (`digest_of` over `validate::request_digest`).
    pub fn digest(&self) -> Digest {
        let requests: Vec<Digest> = self.requests.iter().map(Request::digest).collect();
        self.digest_of(&requests)
    }

    /// `digest` with the requests' digests already computed, in order.
    pub fn digest_of(&self, request_digests: &[Digest]) -> Digest {
        debug_assert_eq!(request_digests.len(), self.requests.len());
        let mut h = Sha256::new();
        h.update(b"bftnfs/batch/v1");
        h.update((self.requests.len() as u64).to_be_bytes());
        for d in request_digests {
            h.update(d);
        }
        // Batches without REBASEs keep the digest they always had.
        if !self.rebases.is_empty() {
            h.update(b"rebases");
            h.update((self.rebases.len() as u64).to_be_bytes());
            for r in &self.rebases {
                h.update(r.sender.to_be_bytes());
                h.update(r.ui.counter.to_be_bytes());
                h.update(UiMessage::Rebase(r.clone()).certified_digest());
            }
        }
        h.finalize().into()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.rebases.is_empty()
    }

    pub fn op_bytes(&self) -> usize {
        self.requests.iter().map(|r| r.op.len()).sum()
    }
}

/// ⟨REPLY, s, seq, res⟩ authenticated with the MAC key shared by replica and client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub view: View,
    pub replica: ReplicaId,
    pub client: ClientId,
    pub seq: u64,
    pub read_only: bool,
    /// The result; empty when `omitted` is set.
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
    /// A read-only reply from a replica other than the request's designated replier
    /// ([`read_only_replier`]) leaves the result out and carries its digest: the client
    /// needs all 2f+1 digests to match and one copy of the result, not 2f+1 copies of a
    /// 1 MiB READ.
    pub omitted: Option<Digest>,
    pub mac: [u8; 32],
}

impl Reply {
    /// What the MAC covers. The view is left out on purpose: replies from replicas that
    /// executed the request in different views still match.
    pub fn mac_bytes(&self) -> Digest {
        self.mac_bytes_of(&self.result_digest())
    }

    /// The digest of the result, carried or computed.
    pub fn result_digest(&self) -> Digest {
        self.omitted.unwrap_or_else(|| result_digest(&self.result))
    }

    /// `mac_bytes` for a reply whose result's digest is already known.
    pub fn mac_bytes_of(&self, result_digest: &Digest) -> Digest {
        let mut h = Sha256::new();
        h.update(b"bftnfs/reply/v1");
        h.update(self.replica.to_be_bytes());
        h.update(self.client.to_be_bytes());
        h.update(self.seq.to_be_bytes());
        h.update([u8::from(self.read_only)]);
        h.update(result_digest);
        h.finalize().into()
    }
}

/// The replica that sends the whole result of read-only request `seq` of `client`; the
/// others send its digest (`Reply::omitted`). It rotates with the sequence number, so
/// a client's READs spread over the replicas.
pub fn read_only_replier(client: ClientId, seq: u64, n: u32) -> ReplicaId {
    (client.wrapping_add(seq) % u64::from(n.max(1))) as ReplicaId
}

/// The digest of a reply's result, which the reply's MAC covers and clients match
/// replies by. BLAKE3 rather than SHA-256: a READ's result is up to 1 MiB, hashed by
/// every replica and again by the client for each reply, and BLAKE3 is about 2.5x
/// faster on these machines (`../shared/notes`). Nothing stores it, so it can change
/// between builds.
pub fn result_digest(result: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"bftnfs/result/v2");
    h.update(&(result.len() as u64).to_be_bytes());
    h.update(result);
    h.finalize().into()
}

/// The part of a PREPARE that the primary's UI certifies; COMMITs carry it instead of
/// the requests (the paper's hash-only COMMIT optimisation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrepareHeader {
    pub view: View,
    pub n: SeqNum,
    pub timestamp_ns: u64,
    pub batch_digest: Digest,
}

/// ⟨PREPARE, v, p, batch, UIp⟩.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub header: PrepareHeader,
    pub primary: ReplicaId,
    pub batch: Batch,
    pub ui: Ui,
}

/// ⟨COMMIT, v, j, p, header, UIp, UIj⟩.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub header: PrepareHeader,
    pub primary: ReplicaId,
    pub primary_ui: Ui,
    pub sender: ReplicaId,
    pub ui: Ui,
}

/// ⟨CHECKPOINT, n, d, UIj⟩; `view` is the sender's view when it executed `n`.
///
/// A *view-top* checkpoint (`view_top = Some(v)`) is taken at the last batch that the
/// NEW-VIEW of view `v` re-proposes; fresh proposals of view `v` start only above its
/// f+1 certificate, so every replica agrees where the re-proposals end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub n: SeqNum,
    pub state_digest: Digest,
    pub view: View,
    pub view_top: Option<View>,
    pub sender: ReplicaId,
    pub ui: Ui,
}

/// f+1 matching CHECKPOINTs: proof that a correct replica reached `n` with that digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointCert {
    pub n: SeqNum,
    pub state_digest: Digest,
    pub view_top: Option<View>,
    pub checkpoints: Vec<Checkpoint>,
}

/// ⟨VIEW-CHANGE, j, v', C_last, O, UIj⟩: the sender's stable checkpoint certificate and
/// every PREPARE it accepted above it, in the view it accepted it in, each self-certified
/// by its primary's UI, with the view-top certificates it holds for those views.
/// Receivers check it against the sender's stream: nothing accepted may be missing
/// (omission) and nothing they saw refused may be present (inclusion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    pub new_view: View,
    pub sender: ReplicaId,
    pub cert: CheckpointCert,
    pub accepted: Vec<Prepare>,
    pub view_certs: Vec<CheckpointCert>,
    pub ui: Ui,
}

/// ⟨REBASE, j, L, UIj⟩: "my USIG counter moved past my durable log (a crash between
/// creating a UI and logging its message, or a lost disk); my messages with counters
/// below this one that you do not hold are void". The one exception to FIFO: a receiver
/// jumps `sender`'s stream to this counter. It is then ordered in a batch like a request
/// and takes effect at that batch number `b` (the replicated core state records it); the
/// sender sends nothing else until it holds a stable checkpoint at or above `b`, and its
/// VIEW-CHANGEs count only with a checkpoint certificate at or above `b`. The argument is
/// in `consensus/README.md` (invariant I8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebase {
    pub sender: ReplicaId,
    /// The last counter the sender still holds in its log (0 if it lost its disk).
    pub last_logged: u64,
    pub ui: Ui,
}

/// One batch the new primary must re-propose with its original timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproposal {
    pub n: SeqNum,
    pub timestamp_ns: u64,
    pub batch_digest: Digest,
}

/// ⟨NEW-VIEW, p', v', V_vc, S, UIp'⟩. Every replica recomputes `base` and `reproposals`
/// from `view_changes` and rejects a NEW-VIEW that differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    pub new_view: View,
    pub sender: ReplicaId,
    pub view_changes: Vec<ViewChange>,
    pub base: SeqNum,
    pub reproposals: Vec<Reproposal>,
    pub ui: Ui,
}

/// A message certified by its sender's USIG, processed in FIFO order per sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UiMessage {
    Prepare(Prepare),
    Commit(Commit),
    Checkpoint(Checkpoint),
    ViewChange(ViewChange),
    NewView(NewView),
    Rebase(Rebase),
}

impl UiMessage {
    pub fn sender(&self) -> ReplicaId {
        match self {
            UiMessage::Prepare(m) => m.primary,
            UiMessage::Commit(m) => m.sender,
            UiMessage::Checkpoint(m) => m.sender,
            UiMessage::ViewChange(m) => m.sender,
            UiMessage::NewView(m) => m.sender,
            UiMessage::Rebase(m) => m.sender,
        }
    }

    pub fn ui(&self) -> &Ui {
        match self {
            UiMessage::Prepare(m) => &m.ui,
            UiMessage::Commit(m) => &m.ui,
            UiMessage::Checkpoint(m) => &m.ui,
            UiMessage::ViewChange(m) => &m.ui,
            UiMessage::NewView(m) => &m.ui,
            UiMessage::Rebase(m) => &m.ui,
        }
    }

    pub fn ui_mut(&mut self) -> &mut Ui {
        match self {
            UiMessage::Prepare(m) => &mut m.ui,
            UiMessage::Commit(m) => &mut m.ui,
            UiMessage::Checkpoint(m) => &mut m.ui,
            UiMessage::ViewChange(m) => &mut m.ui,
            UiMessage::NewView(m) => &mut m.ui,
            UiMessage::Rebase(m) => &mut m.ui,
        }
    }

    pub fn counter(&self) -> u64 {
        self.ui().counter
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UiMessage::Prepare(_) => "PREPARE",
            UiMessage::Commit(_) => "COMMIT",
            UiMessage::Checkpoint(_) => "CHECKPOINT",
            UiMessage::ViewChange(_) => "VIEW-CHANGE",
            UiMessage::NewView(_) => "NEW-VIEW",
            UiMessage::Rebase(_) => "REBASE",
        }
    }

    /// The digest the sender's UI certifies: everything in the message except the UI.
    pub fn certified_digest(&self) -> Digest {
        match self {
            UiMessage::Prepare(m) => prepare_digest(&m.header, m.primary),
            UiMessage::Commit(m) => {
                let mut h = Sha256::new();
                h.update(b"bftnfs/commit/v1");
                h.update(prepare_digest(&m.header, m.primary));
                h.update(m.primary_ui.counter.to_be_bytes());
                h.update(m.sender.to_be_bytes());
                h.finalize().into()
            }
            UiMessage::Checkpoint(m) => {
                let mut h = Sha256::new();
                h.update(b"bftnfs/checkpoint/v1");
                h.update(m.n.to_be_bytes());
                h.update(m.state_digest);
                h.update(m.view.to_be_bytes());
                match m.view_top {
                    Some(v) => {
                        h.update([1]);
                        h.update(v.to_be_bytes());
                    }
                    None => h.update([0]),
                }
                h.update(m.sender.to_be_bytes());
                h.finalize().into()
            }
            UiMessage::ViewChange(m) => view_change_digest(m),
            UiMessage::NewView(m) => {
                let mut h = Sha256::new();
                h.update(b"bftnfs/new-view/v1");
                h.update(m.new_view.to_be_bytes());
                h.update(m.sender.to_be_bytes());
                h.update((m.view_changes.len() as u64).to_be_bytes());
                for vc in &m.view_changes {
                    h.update(vc.sender.to_be_bytes());
                    h.update(vc.ui.counter.to_be_bytes());
                    h.update(view_change_digest(vc));
                }
                h.update(m.base.to_be_bytes());
                for r in &m.reproposals {
                    h.update(r.n.to_be_bytes());
                    h.update(r.timestamp_ns.to_be_bytes());
                    h.update(r.batch_digest);
                }
                h.finalize().into()
            }
            UiMessage::Rebase(m) => {
                let mut h = Sha256::new();
                h.update(b"bftnfs/rebase/v1");
                h.update(m.sender.to_be_bytes());
                h.update(m.last_logged.to_be_bytes());
                h.finalize().into()
            }
        }
    }
}

/// What the primary's UI on a PREPARE certifies: the header, never the requests
/// themselves (they are bound through the batch digest).
pub fn prepare_digest(header: &PrepareHeader, primary: ReplicaId) -> Digest {
    let mut h = Sha256::new();
    h.update(b"bftnfs/prepare/v1");
    h.update(header.view.to_be_bytes());
    h.update(header.n.to_be_bytes());
    h.update(header.timestamp_ns.to_be_bytes());
    h.update(header.batch_digest);
    h.update(primary.to_be_bytes());
    h.finalize().into()
}

fn cert_digest(h: &mut Sha256, cert: &CheckpointCert) {
    h.update(cert.n.to_be_bytes());
    h.update(cert.state_digest);
    h.update(cert.view_top.map_or(u64::MAX, |v| v).to_be_bytes());
    for c in &cert.checkpoints {
        h.update(c.sender.to_be_bytes());
        h.update(c.ui.counter.to_be_bytes());
    }
}

fn view_change_digest(m: &ViewChange) -> Digest {
    let mut h = Sha256::new();
    h.update(b"bftnfs/view-change/v1");
    h.update(m.new_view.to_be_bytes());
    h.update(m.sender.to_be_bytes());
    cert_digest(&mut h, &m.cert);
    h.update((m.view_certs.len() as u64).to_be_bytes());
    for c in &m.view_certs {
        cert_digest(&mut h, c);
    }
    h.update((m.accepted.len() as u64).to_be_bytes());
    for p in &m.accepted {
        h.update(prepare_digest(&p.header, p.primary));
        h.update(p.ui.counter.to_be_bytes());
    }
    h.finalize().into()
}

/// Messages between replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A USIG-certified protocol message, direct or relayed.
    Ui(UiMessage),
    /// ⟨REQ-VIEW-CHANGE, j, v, v'⟩ on an authenticated channel.
    ReqViewChange { view: View, new_view: View },
    /// "Send me what you hold of `sender`'s messages with counters in `from..=to`."
    Fetch {
        sender: ReplicaId,
        from: u64,
        to: u64,
    },
    /// "I have sent messages up to `last_counter`; my stable checkpoint is `stable`."
    Status {
        last_counter: u64,
        stable: SeqNum,
        view: View,
    },
    /// "Send me the stable checkpoint certificate for at least `n`."
    CertRequest { n: SeqNum },
    /// Answer to [`PeerMessage::CertRequest`].
    Cert(CheckpointCert),
    /// "Send me the NEW-VIEW of view `view` or later": for a replica whose FIFO stream was
    /// cut past that NEW-VIEW by a checkpoint and so can never process it in order.
    NewViewRequest { view: View },
    /// Answer to [`PeerMessage::NewViewRequest`]; self-certifying through its UIs.
    NewViewProof(NewView),
    /// "Send me `sender`'s messages from its CHECKPOINT(n) on": resumes a stream whose
    /// position was lost to a state transfer.
    FetchFromCheckpoint { sender: ReplicaId, n: SeqNum },
    /// "Send me the view-top checkpoint certificate of `view`" (answered with `Cert`).
    ViewCertRequest { view: View },
}

/// Everything that crosses the network, replica or client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Peer(PeerMessage),
    Request(Request),
    Reply(Reply),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request digest binds every field, and the two never agree (their tags
    /// differ), so a request signed under one cluster's digest fails under the other's.
    #[test]
    fn both_request_digests_bind_every_field_and_differ() {
        let base = Request {
            client: 7,
            seq: 3,
            read_only: false,
            op: vec![1u8; 100_000].into(),
            sig: vec![9; 64],
        };
        let mut changed = vec![base.clone(); 5];
        changed[0].client += 1;
        changed[1].seq += 1;
        changed[2].read_only = true;
        changed[3].op = vec![1u8; 100_001].into();
        let mut op = base.op.to_vec();
        op[54_321] ^= 1;
        changed[4].op = op.into();
        for digest in [Request::digest, Request::digest_blake3_op] {
            for (i, c) in changed.iter().enumerate() {
                assert_ne!(digest(&base), digest(c), "field {i} not bound");
            }
            let mut resigned = base.clone();
            resigned.sig = vec![1; 64];
            assert_eq!(
                digest(&base),
                digest(&resigned),
                "the signature is not digested"
            );
        }
        assert_ne!(base.digest(), base.digest_blake3_op());
    }
}
