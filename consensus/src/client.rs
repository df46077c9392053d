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
    /// Sign and send again the request no f+1 matching replies answered in time: a
    /// replica that executed it answers from its reply cache. (A runtime may mark it
    /// as a re-send, so that a first copy overtaken by its PREPARE needs no answer.)
    Resend(Request),
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
    reads_unordered: u64,
    reads_ordered: u64,
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
            reads_unordered: 0,
            reads_ordered: 0,
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
    /// Read-only requests completed without ordering, and those sent to be ordered
    /// instead (their replies disagreed, lacked the result, or did not all come).
    pub fn reads(&self) -> (u64, u64) {
        (self.reads_unordered, self.reads_ordered)
    }

    /// [`Client::reads`] summed over several sessions.
    pub fn reads_of<'a>(sessions: impl IntoIterator<Item = &'a Client>) -> (u64, u64) {
        sessions
            .into_iter()
            .map(Client::reads)
            .fold((0, 0), |(u, o), (su, so)| (u + su, o + so))
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
            op: op.into(),
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
        {
            self.rejected_replies += 1;
            return Vec::new();
        }
        // Hashed once, for the MAC and the comparison (a READ's result is up to 1 MiB).
        // A reply that leaves its result out carries the digest instead (read-only
        // replies from all but the designated replier); it must carry nothing else.
        let d = match reply.omitted {
            Some(_) if !reply.result.is_empty() || !o.request.read_only => {
                self.rejected_replies += 1;
                return Vec::new();
            }
            Some(d) => d,
            None => result_digest(&reply.result),
        };
        if !crypto.verify_reply_mac(reply.replica, self.id, &reply.mac_bytes_of(&d), &reply.mac) {
            self.rejected_replies += 1;
            return Vec::new();
        }
        // Only each replica's latest reply counts; a result no replica names any more
        // goes, so a faulty replica that keeps changing its reply costs no memory.
        if let Some(old) = o.replies.insert(reply.replica, d)
            && old != d
            && !o.replies.values().any(|&x| x == old)
        {
            o.results.remove(&old);
        }
        if reply.omitted.is_none() {
            o.results.entry(d).or_insert_with(|| reply.result.clone());
        }
        let needed = if o.request.read_only {
            self.config.n() as usize
        } else {
            self.config.quorum()
        };
        let matching = o.replies.values().filter(|&&x| x == d).count();
        if matching >= needed
            && let Some(result) = o.results.remove(&d)
        {
            let seq = o.request.seq;
            self.reads_unordered += u64::from(o.request.read_only);
            self.outstanding = None;
            return vec![ClientOutput::Done { seq, result }];
        }
        // Every replica answered a read-only request, and they disagree or nobody sent
        // the result itself (the designated replier left it out): order it instead.
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
        vec![ClientOutput::Resend(o.request.clone())]
    }

    /// Read-only replies disagreed or did not all come: order it like a write.
    fn fall_back_to_ordered(&mut self) -> Vec<ClientOutput> {
        self.reads_ordered += 1;
        let o = self.outstanding.as_mut().expect("outstanding");
        o.request.read_only = false;
        o.replies.clear();
        o.results.clear();
        o.sent_tick = self.ticks;
        vec![ClientOutput::Send(o.request.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SimCrypto;

    fn reply(crypto: &SimCrypto, replica: ReplicaId, seq: u64, result: Vec<u8>) -> Reply {
        let mut r = Reply {
            view: 0,
            replica,
            client: 7,
            seq,
            read_only: false,
            result,
            omitted: None,
            mac: [0; 32],
        };
        r.mac = crypto.reply_mac(replica, 7, &r.mac_bytes());
        r
    }

    /// A read-only reply as a replica sends it: the whole result from the designated
    /// replier, its digest from the others.
    fn read_reply(crypto: &SimCrypto, replica: ReplicaId, seq: u64, result: &[u8]) -> Reply {
        let mut r = reply(crypto, replica, seq, result.to_vec());
        r.read_only = true;
        if crate::message::read_only_replier(7, seq, 3) != replica {
            leave_result_out(crypto, &mut r);
        } else {
            r.mac = crypto.reply_mac(replica, 7, &r.mac_bytes());
        }
        r
    }

    /// Replaces `r`'s result by its digest and MACs it again.
    fn leave_result_out(crypto: &SimCrypto, r: &mut Reply) {
        r.omitted = Some(result_digest(&r.result));
        r.result.clear();
        r.mac = crypto.reply_mac(r.replica, 7, &r.mac_bytes());
    }

    /// Client 7 of an f = 1 cluster with one read sent: the client, the read's seq and
    /// its designated replier.
    fn read_in_flight() -> (Client, u64, ReplicaId) {
        let mut c = Client::new(7, Config::new(1), 1, 10);
        let seq = match c.submit(b"r".to_vec(), true).as_slice() {
            [ClientOutput::Send(r)] if r.read_only => r.seq,
            other => panic!("unexpected {other:?}"),
        };
        (c, seq, crate::message::read_only_replier(7, seq, 3))
    }

    /// A read completes on 2f+1 matching digests once one of them came with the result,
    /// whichever order they arrive in.
    #[test]
    fn a_read_completes_on_all_digests_and_the_designated_replicas_result() {
        let crypto = SimCrypto::new([3; 32]);
        for designated_last in [false, true] {
            let (mut c, seq, designated) = read_in_flight();
            let mut order: Vec<ReplicaId> = (0..3).filter(|&i| i != designated).collect();
            if designated_last {
                order.push(designated);
            } else {
                order.insert(0, designated);
            }
            let (last, first) = order.split_last().expect("three");
            for &i in first {
                assert!(
                    c.on_reply(&crypto, &read_reply(&crypto, i, seq, b"data"))
                        .is_empty()
                );
            }
            assert_eq!(
                c.on_reply(&crypto, &read_reply(&crypto, *last, seq, b"data")),
                [ClientOutput::Done {
                    seq,
                    result: b"data".to_vec()
                }]
            );
        }
    }

    /// All digests agree but nobody sent the result (the designated replier left it
    /// out too): the read is ordered instead. A designated replier whose result does
    /// not match the others' digests gets the same.
    #[test]
    fn a_read_without_its_result_or_with_a_wrong_one_is_ordered_instead() {
        let crypto = SimCrypto::new([3; 32]);
        let (mut c, seq, designated) = read_in_flight();
        for i in 0..3 {
            let mut r = read_reply(&crypto, i, seq, b"data");
            if i == designated {
                leave_result_out(&crypto, &mut r);
            }
            let out = c.on_reply(&crypto, &r);
            if i < 2 {
                assert!(out.is_empty());
            } else {
                assert!(matches!(out.as_slice(), [ClientOutput::Send(q)] if !q.read_only));
            }
        }

        let (mut c, seq, designated) = read_in_flight();
        let mut outs = Vec::new();
        for i in 0..3 {
            let result: &[u8] = if i == designated { b"lie" } else { b"data" };
            outs.push(c.on_reply(&crypto, &read_reply(&crypto, i, seq, result)));
        }
        assert!(matches!(outs[2].as_slice(), [ClientOutput::Send(q)] if !q.read_only));
    }

    /// A reply that leaves its result out must carry nothing else, and only read-only
    /// replies may leave it out.
    #[test]
    fn malformed_digest_only_replies_are_rejected() {
        let crypto = SimCrypto::new([3; 32]);
        let (mut c, seq, designated) = read_in_flight();
        let other = (designated + 1) % 3;
        let mut r = read_reply(&crypto, other, seq, b"data");
        r.result = b"extra".to_vec();
        r.mac = crypto.reply_mac(other, 7, &r.mac_bytes());
        assert!(c.on_reply(&crypto, &r).is_empty());
        assert_eq!(c.rejected_replies(), 1);

        let mut w = Client::new(7, Config::new(1), 1, 10);
        let seq = match w.submit(b"w".to_vec(), false).as_slice() {
            [ClientOutput::Send(r)] => r.seq,
            other => panic!("unexpected {other:?}"),
        };
        let mut r = reply(&crypto, 0, seq, Vec::new());
        r.omitted = Some(result_digest(b"ok"));
        r.mac = crypto.reply_mac(0, 7, &r.mac_bytes());
        assert!(w.on_reply(&crypto, &r).is_empty());
        assert_eq!(w.rejected_replies(), 1);
    }

    /// The first send of a request and its re-sends are told apart (a runtime marks a
    /// re-send; a replica answers only a re-send of a request it executed), and a read
    /// that falls back to ordering is a first ordered send.
    #[test]
    fn re_sends_are_marked_and_an_ordered_fallback_is_a_first_send() {
        let mut c = Client::new(7, Config::new(1), 1, 3);
        assert!(matches!(
            c.submit(b"w".to_vec(), false).as_slice(),
            [ClientOutput::Send(_)]
        ));
        assert!(c.on_tick().is_empty() && c.on_tick().is_empty());
        assert!(matches!(c.on_tick().as_slice(), [ClientOutput::Resend(r)] if !r.read_only));
        let mut r = Client::new(8, Config::new(1), 1, 3);
        assert!(
            matches!(r.submit(b"r".to_vec(), true).as_slice(), [ClientOutput::Send(q)] if q.read_only)
        );
        r.on_tick();
        r.on_tick();
        assert!(matches!(r.on_tick().as_slice(), [ClientOutput::Send(q)] if !q.read_only));
    }

    /// A faulty replica that keeps changing its reply (each validly MACed) must not
    /// make the client keep every result it ever sent: only the latest reply of each
    /// replica can still count towards a quorum.
    #[test]
    fn a_faulty_replica_changing_its_reply_does_not_grow_the_client() {
        let crypto = SimCrypto::new([3; 32]);
        let mut c = Client::new(7, Config::new(1), 1, 10);
        let seq = match c.submit(b"op".to_vec(), false).as_slice() {
            [ClientOutput::Send(r)] => r.seq,
            other => panic!("unexpected {other:?}"),
        };
        for i in 0..1_000u32 {
            let out = c.on_reply(&crypto, &reply(&crypto, 2, seq, i.to_be_bytes().to_vec()));
            assert!(out.is_empty(), "one replica alone completes nothing");
        }
        let kept = c.outstanding.as_ref().expect("outstanding").results.len();
        assert!(kept <= 3, "{kept} results kept for 3 replicas");
        // The correct replicas still complete it with their agreed result.
        assert!(
            c.on_reply(&crypto, &reply(&crypto, 0, seq, b"ok".to_vec()))
                .is_empty()
        );
        assert_eq!(
            c.on_reply(&crypto, &reply(&crypto, 1, seq, b"ok".to_vec())),
            [ClientOutput::Done {
                seq,
                result: b"ok".to_vec()
            }]
        );
    }
}
