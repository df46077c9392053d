//! The client side of MinPBFT as a pure state machine (MinBFT section 5, "Clients").
//!
//! An ordered request completes on f+1 matching replies (one of them is from a correct
//! replica). A read-only request is sent to every replica and executed at once without
//! ordering; it completes on 2f+1 matching replies, and otherwise — a mismatch, or a
//! timeout — it is re-sent as an ordered request with the same sequence number.
//! The driver signs each request it sends (signing is an effect: it needs the key).

use std::collections::BTreeMap;

use crate::crypto::Crypto;
use crate::message::{Reply, Request, result_digest};
use crate::types::{ClientId, Config, Digest, ReplicaId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutput {
    /// Sign and send this request to every replica.
    Send(Request),
    /// The outstanding request completed with this result.
    Done { seq: u64, result: Vec<u8> },
}

#[derive(Debug)]
struct Outstanding {
    request: Request,
    sent_tick: u64,
    replies: BTreeMap<ReplicaId, Digest>,
    results: BTreeMap<Digest, Vec<u8>>,
}

/// One BFT client session: at most one request outstanding.
#[derive(Debug)]
pub struct Client {
    id: ClientId,
    config: Config,
    next_seq: u64,
    resend_ticks: u64,
    ticks: u64,
    outstanding: Option<Outstanding>,
    rejected_replies: u64,
}

impl Client {
    /// `first_seq` must exceed every sequence number this client id used before (a
    /// restarted frontend derives it from its clock), or replicas drop its requests.
    pub fn new(id: ClientId, config: Config, first_seq: u64, resend_ticks: u64) -> Self {
        Client {
            id,
            config,
            next_seq: first_seq.max(1),
            resend_ticks: resend_ticks.max(1),
            ticks: 0,
            outstanding: None,
            rejected_replies: 0,
        }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }
    pub fn is_idle(&self) -> bool {
        self.outstanding.is_none()
    }
    pub fn outstanding_seq(&self) -> Option<u64> {
        self.outstanding.as_ref().map(|o| o.request.seq)
    }
    /// Replies dropped for a bad MAC or for not matching the outstanding request.
    pub fn rejected_replies(&self) -> u64 {
        self.rejected_replies
    }

    /// Starts a request. Panics if one is outstanding (a programming error).
    pub fn submit(&mut self, op: Vec<u8>, read_only: bool) -> Vec<ClientOutput> {
        assert!(
            self.outstanding.is_none(),
            "one outstanding request per client session"
        );
        let request = Request {
            client: self.id,
            seq: self.next_seq,
            read_only,
            op,
            sig: Vec::new(),
        };
        self.next_seq += 1;
        self.outstanding = Some(Outstanding {
            request: request.clone(),
            sent_tick: self.ticks,
            replies: BTreeMap::new(),
            results: BTreeMap::new(),
        });
        vec![ClientOutput::Send(request)]
    }

    pub fn on_reply(&mut self, crypto: &dyn Crypto, reply: &Reply) -> Vec<ClientOutput> {
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        if reply.client != self.id
            || reply.seq != o.request.seq
            || reply.read_only != o.request.read_only
            || reply.replica >= self.config.n()
            || !crypto.verify_reply_mac(reply.replica, self.id, &reply.mac_bytes(), &reply.mac)
        {
            self.rejected_replies += 1;
            return Vec::new();
        }
        let d = result_digest(&reply.result);
        o.replies.insert(reply.replica, d);
        o.results.entry(d).or_insert_with(|| reply.result.clone());
        let needed = if o.request.read_only {
            self.config.n() as usize
        } else {
            self.config.quorum()
        };
        let matching = o.replies.values().filter(|&&x| x == d).count();
        if matching >= needed {
            let result = o.results.remove(&d).expect("result recorded above");
            let seq = o.request.seq;
            self.outstanding = None;
            return vec![ClientOutput::Done { seq, result }];
        }
        if o.request.read_only && o.replies.len() == self.config.n() as usize {
            return self.fall_back_to_ordered();
        }
        Vec::new()
    }

    pub fn on_tick(&mut self) -> Vec<ClientOutput> {
        self.ticks += 1;
        let Some(o) = self.outstanding.as_mut() else {
            return Vec::new();
        };
        if self.ticks - o.sent_tick < self.resend_ticks {
            return Vec::new();
        }
        if o.request.read_only {
            return self.fall_back_to_ordered();
        }
        o.sent_tick = self.ticks;
        vec![ClientOutput::Send(o.request.clone())]
    }

    /// Read-only replies disagreed or did not all come: order it like a write.
    fn fall_back_to_ordered(&mut self) -> Vec<ClientOutput> {
        let o = self.outstanding.as_mut().expect("outstanding");
        o.request.read_only = false;
        o.replies.clear();
        o.results.clear();
        o.sent_tick = self.ticks;
        vec![ClientOutput::Send(o.request.clone())]
    }
}
