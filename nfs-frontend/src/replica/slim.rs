//! Slim PREPAREs: a primary leaves the operations of large requests out of the PREPAREs
//! it sends, because every backup already has them.
//!
//! The frontend sends each request to every replica (MinBFT section 5), so a PREPARE
//! that carries a 1 MiB WRITE again made the primary encode, hash and send 2f more
//! megabytes, and each backup read, hash and decode one, on the critical path of the
//! WRITE. A slim PREPARE names each left-out request by its index in the batch and its
//! digest (`LinkMsg::SlimPrepare`); a backup fills it in from the verified copy the
//! client sent it (`ClusterCrypto::verified_request`, or the core's pending request:
//! same client, sequence number and digest, so the same bytes) and hands the core the
//! whole PREPARE, exactly as if it had
//! arrived whole. Only the wire changes: the core, its logs, its UIs and its digests all
//! see whole PREPAREs, and retransmissions (fetches, VIEW-CHANGEs) are sent whole. So are
//! a new primary's re-proposals of what its NEW-VIEW fixed (`Replica::reproposes`): the
//! backups may have executed those requests long ago, and their copies are gone.
//!
//! A backup that lacks a copy waits for it a little (`SLIM_WAIT_TICKS`: the client's copy
//! and the PREPARE race over different connections), then asks the primary for the
//! whole PREPARE (`LinkMsg::PrepareWanted`), which answers from its log. Meanwhile the
//! core holds back what the primary sent after it, as for a PREPARE the network delayed;
//! if the answer never comes, the core's own gap fetch asks every replica. A primary that
//! names a request nobody has therefore costs what one that withholds a PREPARE costs: a
//! view change.

use std::sync::Arc;

use consensus::message::{PeerMessage, Prepare, UiMessage};
use consensus::{Digest, ReplicaId};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{Node, ReplicaError};
use crate::net::{DropReason, LinkMsg, Outgoing};

/// Requests whose operation is at least this large leave a PREPARE slim.
pub const SLIM_OP_BYTES_MIN: usize = 64 << 10;
/// Ticks a slim PREPARE waits for the client's copies of its requests before the
/// primary is asked for the whole PREPARE (at least one whole tick).
const SLIM_WAIT_TICKS: u64 = 2;
/// Counters of whole PREPAREs remembered per peer as answered (`on_prepare_wanted`).
const ANSWERED_MAX: usize = 256;
/// Slim PREPAREs waiting at most; beyond, the whole PREPARE is asked for at once.
const SLIM_WAITING_MAX: usize = 64;

/// A request a slim PREPARE left out: its index in the batch and its digest.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Omitted {
    pub index: u32,
    pub digest: Digest,
}

/// A slim PREPARE waiting for client copies.
#[derive(Debug)]
pub(super) struct Waiting {
    from: ReplicaId,
    prepare: Box<Prepare>,
    omitted: Vec<Omitted>,
    since_tick: u64,
}

/// What slim PREPAREs did on this replica (`ReplicaStats::slim`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlimStats {
    /// PREPAREs sent slim (once per PREPARE, whatever the number of backups).
    pub sent: u64,
    /// Re-proposals after a view change that had large requests and went whole.
    pub reproposed_whole: u64,
    /// Slim PREPAREs filled in from the clients' copies, at once or after waiting.
    pub filled: u64,
    /// Of those, the ones that waited for a copy.
    pub waited: u64,
    /// Whole PREPAREs asked of the primary.
    pub asked: u64,
    /// Whole PREPAREs sent to a backup that asked.
    pub answered: u64,
}

/// Whether `r` is large enough to leave a PREPARE slim.
fn large(r: &consensus::Request) -> bool {
    r.op.len() >= SLIM_OP_BYTES_MIN
}

/// The slim form of `p` for the links, if any of its requests is large: those lose their
/// operation and are named by index and digest (`digest_of` gives each request's).
pub fn slim(p: &Prepare, digest_of: impl Fn(&consensus::Request) -> Digest) -> Option<LinkMsg> {
    let mut slim = None::<(Prepare, Vec<Omitted>)>;
    for (i, r) in p.batch.requests.iter().enumerate() {
        if !large(r) {
            continue;
        }
        let (prepare, omitted) = slim.get_or_insert_with(|| (p.clone(), Vec::new()));
        omitted.push(Omitted {
            index: u32::try_from(i).ok()?,
            digest: digest_of(r),
        });
        prepare.batch.requests[i].op = Default::default();
    }
    slim.map(|(prepare, omitted)| LinkMsg::SlimPrepare {
        prepare: Box::new(prepare),
        omitted,
    })
}

impl Node {
    /// What our broadcast `msg` travels as: our fresh PREPAREs leave large requests out
    /// (the backups have them). Not a re-proposal after a view change: its requests may
    /// be long executed and gone from the backups' memory, and it is not hashed for a
    /// slim form it will not take.
    pub(super) fn link_form(&mut self, msg: PeerMessage) -> LinkMsg {
        let slim = match &msg {
            PeerMessage::Ui(UiMessage::Prepare(p))
                if p.primary == self.id && p.batch.requests.iter().any(large) =>
            {
                if self.core.reproposes(p.header.n) {
                    self.slim.reproposed_whole += 1;
                    None
                } else {
                    slim(p, |r| consensus::validate::request_digest(&self.crypto, r))
                }
            }
            _ => None,
        };
        self.slim.sent += u64::from(slim.is_some());
        slim.unwrap_or(LinkMsg::Peer(msg))
    }

    /// A slim PREPARE from `from`: filled in and handed on, or left waiting for copies.
    pub(super) fn on_slim_prepare(
        &mut self,
        from: ReplicaId,
        prepare: Box<Prepare>,
        omitted: Vec<Omitted>,
    ) -> Result<(), ReplicaError> {
        // Slim PREPAREs come straight from their primary (nobody relays them).
        if prepare.primary != from || !well_formed(&prepare, &omitted) {
            self.stats.count(DropReason::Garbage);
            return Ok(());
        }
        let waiting = Waiting {
            from,
            prepare,
            omitted,
            since_tick: self.ticks,
        };
        let waiting = match self.fill(waiting) {
            Ok(prepare) => return self.filled(from, prepare, false),
            Err(w) => w,
        };
        // A copy may still wait for the idle checker (only verified copies fill a slim
        // PREPARE in): the client copies queued there are checked now, as the check of
        // a whole PREPARE would have.
        self.take_back(super::verifier::Source::Clients)?;
        match self.fill(waiting) {
            Ok(prepare) => self.filled(from, prepare, false),
            Err(w) if self.slim_waiting.len() < SLIM_WAITING_MAX => {
                self.slim_waiting.push(w);
                Ok(())
            }
            Err(w) => {
                self.ask_whole(&w);
                Ok(())
            }
        }
    }

    /// Retries the waiting slim PREPAREs (a client copy was verified); with `expire`, asks
    /// for the whole of those that waited long enough.
    pub(super) fn retry_slim(&mut self, expire: bool) -> Result<(), ReplicaError> {
        if self.slim_waiting.is_empty() {
            return Ok(());
        }
        for w in std::mem::take(&mut self.slim_waiting) {
            let from = w.from;
            match self.fill(w) {
                Ok(prepare) => self.filled(from, prepare, true)?,
                Err(w) if expire && self.ticks >= w.since_tick + SLIM_WAIT_TICKS => {
                    self.ask_whole(&w);
                }
                Err(w) => self.slim_waiting.push(w),
            }
        }
        Ok(())
    }

    /// Hands a filled-in PREPARE on, as if it had come whole.
    fn filled(
        &mut self,
        from: ReplicaId,
        prepare: Prepare,
        waited: bool,
    ) -> Result<(), ReplicaError> {
        self.slim.filled += 1;
        self.slim.waited += u64::from(waited);
        self.on_peer(from, PeerMessage::Ui(UiMessage::Prepare(prepare)))
    }

    /// Whether a slim PREPARE waits for the copy of a request of `client` with `seq`.
    pub(super) fn slim_waits_for(&self, client: consensus::ClientId, seq: u64) -> bool {
        self.slim_waiting.iter().any(|w| {
            w.omitted.iter().any(|o| {
                let r = &w.prepare.batch.requests[o.index as usize];
                r.client == client && r.seq == seq
            })
        })
    }

    /// The whole PREPARE, if every left-out request has a verified copy here.
    fn fill(&self, mut w: Waiting) -> Result<Prepare, Waiting> {
        let mut filled = Vec::with_capacity(w.omitted.len());
        for o in &w.omitted {
            let r = &w.prepare.batch.requests[o.index as usize];
            // A recent verified copy, or the one waiting in the core to be executed
            // (hashed again only if the memo has forgotten it: under a backlog, such
            // as the requests a view change leaves, more are pending than it keeps).
            let copy = self
                .crypto
                .verified_request(r.client, r.seq, &o.digest)
                .or_else(|| {
                    let p = self.core.pending_request(r.client, r.seq)?;
                    (consensus::validate::request_digest(&self.crypto, p) == o.digest)
                        .then(|| p.clone())
                });
            match copy {
                Some(copy) => filled.push(copy.op),
                None => return Err(w),
            }
        }
        for (o, op) in w.omitted.iter().zip(filled) {
            w.prepare.batch.requests[o.index as usize].op = op;
        }
        Ok(*w.prepare)
    }

    fn ask_whole(&mut self, w: &Waiting) {
        self.slim.asked += 1;
        debug!(
            id = self.id,
            primary = w.from,
            counter = w.prepare.ui.counter,
            "no copy of a slim PREPARE's request; asking for the whole PREPARE"
        );
        let ask = LinkMsg::PrepareWanted {
            counter: w.prepare.ui.counter,
        };
        self.send_now(w.from, Arc::new(Outgoing::new(ask)));
    }

    /// A backup asks for our PREPARE with `counter` whole: sent from the log, once per
    /// counter (a correct backup asks for each once; the last `ANSWERED_MAX` are
    /// remembered, so a peer asking again gets nothing it did not get before).
    pub(super) fn on_prepare_wanted(&mut self, from: ReplicaId, counter: u64) {
        let Some(answered) = self.slim_answered.get_mut(from as usize) else {
            return;
        };
        if answered.contains(&counter) {
            self.stats.count(DropReason::Garbage);
            return;
        }
        let Some(msg @ UiMessage::Prepare(_)) = self.log.durable.sent.get(&counter) else {
            // Collected after a stable checkpoint: the backup gets past it that way.
            return;
        };
        answered.insert(counter);
        if answered.len() > ANSWERED_MAX {
            answered.pop_first();
        }
        self.slim.answered += 1;
        let whole = LinkMsg::Peer(PeerMessage::Ui(msg.clone()));
        self.send_now(from, Arc::new(Outgoing::new(whole)));
    }
}

/// Each left-out request exists once in the batch and arrived without its operation.
fn well_formed(p: &Prepare, omitted: &[Omitted]) -> bool {
    let requests = &p.batch.requests;
    !omitted.is_empty()
        && omitted.len() <= requests.len()
        && omitted.windows(2).all(|w| w[0].index < w[1].index)
        && omitted.iter().all(|o| {
            requests
                .get(o.index as usize)
                .is_some_and(|r| r.op.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use consensus::Request;
    use consensus::message::{Batch, PrepareHeader};
    use consensus::types::Ui;

    use super::*;

    fn request(client: u64, op_bytes: usize) -> Request {
        Request {
            client,
            seq: 7,
            read_only: false,
            op: vec![client as u8; op_bytes].into(),
            sig: vec![1; 64],
        }
    }

    fn prepare(requests: Vec<Request>) -> Prepare {
        let batch = Batch {
            requests,
            ..Batch::default()
        };
        Prepare {
            header: PrepareHeader {
                view: 0,
                n: 3,
                timestamp_ns: 1,
                batch_digest: batch.digest(),
            },
            primary: 0,
            batch,
            ui: Ui {
                counter: 9,
                cert: vec![2; 64],
            },
        }
    }

    #[test]
    fn only_large_requests_leave_and_are_named_by_index_and_digest() {
        let small = request(1, 100);
        let large = request(2, SLIM_OP_BYTES_MIN);
        let p = prepare(vec![small.clone(), large.clone(), small.clone()]);
        assert!(slim(&prepare(vec![small.clone()]), Request::digest).is_none());
        let Some(LinkMsg::SlimPrepare {
            prepare: s,
            omitted,
        }) = slim(&p, Request::digest)
        else {
            panic!("a large request makes the PREPARE slim");
        };
        assert_eq!(
            omitted,
            vec![Omitted {
                index: 1,
                digest: large.digest()
            }]
        );
        assert!(well_formed(&s, &omitted));
        assert!(s.batch.requests[1].op.is_empty());
        assert_eq!(s.batch.requests[0], small);
        // Everything the UI and the batch digest cover is unchanged.
        assert_eq!((s.header, s.ui.clone()), (p.header, p.ui.clone()));
        // Filling the operation back in gives the PREPARE that was sent.
        let mut back = *s;
        back.batch.requests[1].op = large.op.clone();
        assert_eq!(back, p);
    }

    #[test]
    fn malformed_slim_prepares_are_refused() {
        let mut p = prepare(vec![request(1, 10), request(2, 10)]);
        p.batch.requests[1].op = Default::default();
        let o = |index| Omitted {
            index,
            digest: [0; 32],
        };
        assert!(well_formed(&p, &[o(1)]));
        assert!(!well_formed(&p, &[]), "nothing left out");
        assert!(!well_formed(&p, &[o(0)]), "an operation left in");
        assert!(!well_formed(&p, &[o(2)]), "no such request");
        assert!(!well_formed(&p, &[o(1), o(1)]), "named twice");
    }
}
