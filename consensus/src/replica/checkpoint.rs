//! Checkpoints, log truncation and state transfer (MinBFT section 5, garbage collection;
//! the Prime model of telling the application when it must fetch state).
//!
//! Every `checkpoint_interval` batches a replica certifies CHECKPOINT(n, d) where d binds
//! the application's digest and the exactly-once client table. f+1 matching CHECKPOINTs
//! make `n` stable: one of them comes from a correct replica, so the state is right, and
//! everything below `n` may be forgotten. A replica behind a stable checkpoint (or whose
//! own digest disagrees with a certified one: self-repair) asks the driver for that state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::fifo::Flow;
use super::{Intent, Output, PersistRecord, Replica};
use crate::message::{Checkpoint, CheckpointCert, PeerMessage};
use crate::types::{ClientId, Digest, ReplicaId, SeqNum, View};

/// Exactly-once state per client: the last executed request and its reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub last_seq: u64,
    /// None while the request is executing.
    pub result: Option<Vec<u8>>,
    /// Batch in which the client's last request executed (for bounded, deterministic
    /// eviction).
    pub last_n: SeqNum,
}

/// An executed REBASE: replica `j`'s stream restarted at `counter`, ordered at batch `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebaseRecord {
    pub counter: u64,
    pub n: SeqNum,
}

/// The replicated state the core owns, part of every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreState {
    pub clients: BTreeMap<ClientId, ClientRecord>,
    /// The last executed REBASE of each replica (I8).
    #[serde(default)]
    pub rebases: BTreeMap<ReplicaId, RebaseRecord>,
}

impl CoreState {
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(b"bftnfs/core-state/v1");
        for (client, rec) in &self.clients {
            h.update(client.to_be_bytes());
            h.update(rec.last_seq.to_be_bytes());
            h.update(rec.last_n.to_be_bytes());
            match &rec.result {
                Some(r) => {
                    h.update([1]);
                    h.update((r.len() as u64).to_be_bytes());
                    h.update(r);
                }
                None => h.update([0]),
            }
        }
        // States without REBASEs keep the digest they always had.
        if !self.rebases.is_empty() {
            h.update(b"rebases");
            for (j, r) in &self.rebases {
                h.update(j.to_be_bytes());
                h.update(r.counter.to_be_bytes());
                h.update(r.n.to_be_bytes());
            }
        }
        h.finalize().into()
    }
}

/// The digest a CHECKPOINT certifies; drivers use it to verify transferred state.
pub fn checkpoint_digest(app_digest: &Digest, core: &CoreState) -> Digest {
    let mut h = Sha256::new();
    h.update(b"bftnfs/checkpoint-state/v1");
    h.update(app_digest);
    h.update(core.digest());
    h.finalize().into()
}

#[derive(Clone, Debug)]
pub(super) struct Transfer {
    pub cert: CheckpointCert,
    pub started_tick: u64,
}

impl Replica {
    pub(super) fn take_checkpoint(
        &mut self,
        n: SeqNum,
        app_digest: Digest,
        view_top: Option<View>,
    ) {
        let state_digest = self.own_checkpoint(n, app_digest);
        self.enqueue(Intent::Checkpoint {
            n,
            state_digest,
            view_top,
        });
    }

    /// Our checkpoint state at `n` (just executed): snapshot it once, return its digest.
    pub(super) fn own_checkpoint(&mut self, n: SeqNum, app_digest: Digest) -> Digest {
        if let Some((d, _)) = self.own_checkpoints.get(&n) {
            return *d;
        }
        let core = super::CoreState {
            clients: self.clients.clone(),
            rebases: self.rebases.clone(),
        };
        let d = checkpoint_digest(&app_digest, &core);
        self.outputs.push(Output::TakeSnapshot {
            n,
            core_state: core.clone(),
        });
        self.own_checkpoints.insert(n, (d, core));
        d
    }

    /// Keeps the client table bounded, deterministically: after each batch, the least
    /// recently active clients (by the batch their last request executed in) go first.
    /// Only executed batches decide, never which checkpoints this replica happened to
    /// take: a view-top checkpoint is taken only by the replicas that reach the top in
    /// the new view, and stamping or evicting records at checkpoint time made replicas'
    /// client tables, and so their checkpoint digests, differ.
    ///
    /// A record evicted while its request still executes (only with more than
    /// `clients_max` clients active within the batches in flight) loses its cached
    /// reply; a retransmission then runs again, the same way on every replica.
    pub(super) fn evict_clients(&mut self) {
        while self.clients.len() > self.config.clients_max {
            let oldest = self
                .clients
                .iter()
                .min_by_key(|(id, r)| (r.last_n, **id))
                .map(|(id, _)| *id)
                .expect("non-empty");
            self.clients.remove(&oldest);
        }
    }

    pub(super) fn on_checkpoint(&mut self, c: &Checkpoint) -> Flow {
        if let Some(v) = c.view_top {
            let n = u64::from(self.config.n());
            // Votes are kept only for views near ours: a faulty sender cannot grow the
            // table with views that will never come.
            if v.saturating_add(n) < self.view
                || v > self.view.saturating_add(n)
                || self.view_certs.contains_key(&v)
            {
                return Flow::Done;
            }
            let votes = self.view_top_votes.entry(v).or_default();
            votes.insert(c.sender, c.clone());
            let matching: Vec<Checkpoint> = votes
                .values()
                .filter(|x| x.state_digest == c.state_digest && x.n == c.n)
                .cloned()
                .collect();
            if matching.len() >= self.config.quorum() {
                let cert = CheckpointCert {
                    n: c.n,
                    state_digest: c.state_digest,
                    view_top: Some(v),
                    checkpoints: matching,
                };
                self.view_top_votes.remove(&v);
                self.consider_cert(cert);
            }
            return Flow::Done;
        }
        // Far-future checkpoints cannot come from a correct replica in step with us (it
        // is at most a few intervals ahead, bounded by the pipeline); not keeping them
        // bounds the vote table against a faulty sender.
        let horizon = self.stable.n + 8 * self.config.checkpoint_interval;
        if c.n <= self.stable.n
            || c.n > horizon.max(self.executed_n + 8 * self.config.checkpoint_interval)
        {
            return Flow::Done;
        }
        let votes = self.checkpoint_votes.entry(c.n).or_default();
        votes.insert(c.sender, c.clone());
        let matching: Vec<Checkpoint> = votes
            .values()
            .filter(|v| v.state_digest == c.state_digest)
            .cloned()
            .collect();
        if matching.len() >= self.config.quorum() {
            let cert = CheckpointCert {
                n: c.n,
                state_digest: c.state_digest,
                view_top: None,
                checkpoints: matching,
            };
            self.consider_cert(cert);
        }
        Flow::Done
    }

    /// The certificate that the CHECKPOINT votes for `n` already form, if any.
    pub(super) fn cert_from_votes(&self, n: SeqNum) -> Option<CheckpointCert> {
        let votes = self.checkpoint_votes.get(&n)?;
        votes.values().find_map(|c| {
            let matching: Vec<Checkpoint> = votes
                .values()
                .filter(|v| v.state_digest == c.state_digest)
                .cloned()
                .collect();
            (matching.len() >= self.config.quorum()).then_some(CheckpointCert {
                n,
                state_digest: c.state_digest,
                view_top: None,
                checkpoints: matching,
            })
        })
    }

    /// A valid certificate for a checkpoint above ours: adopt it, or, if we have not
    /// reached it (or our own state disagrees), remember it and fetch its state.
    pub(super) fn consider_cert(&mut self, cert: CheckpointCert) {
        self.record_view_cert(&cert);
        if cert.n <= self.stable.n {
            return;
        }
        if self.executed_n >= cert.n {
            match self.own_checkpoints.get(&cert.n) {
                Some((d, _)) if *d == cert.state_digest => {
                    self.make_stable(cert);
                    return;
                }
                Some(_) => {
                    // Self-repair: f+1 replicas, one of them correct, certified another
                    // state than ours for the same batch: our backing state is corrupt.
                    self.drop_input("own_state_diverged");
                    self.start_transfer(cert);
                    return;
                }
                None if self.executed_n == cert.n && self.exec_n == self.executed_n => {
                    // No checkpoint of our own at n (a view-top checkpoint we were not
                    // there for): take one now, compare, and adopt it.
                    self.ask_digest(cert.n);
                    self.cert_awaiting_digest = Some(cert);
                    return;
                }
                None => {
                    // Executed past n without a snapshot at n: it cannot become our stable
                    // checkpoint, but streams stuck below it may resume after it.
                    self.cut_streams(&cert, false);
                    return;
                }
            }
        }
        let better = self.best_cert.as_ref().is_none_or(|c| c.n < cert.n);
        if better {
            if self.behind_since_tick.is_none() {
                self.behind_since_tick = Some(self.ticks);
            }
            self.best_cert = Some(cert);
        }
    }

    /// Keeps (durably) the view-top certificate of its view, the first one seen.
    pub(super) fn record_view_cert(&mut self, cert: &CheckpointCert) {
        let Some(v) = cert.view_top else { return };
        if let std::collections::btree_map::Entry::Vacant(e) = self.view_certs.entry(v) {
            e.insert(cert.clone());
            self.outputs
                .push(Output::Persist(PersistRecord::ViewCert(cert.clone())));
        }
    }

    pub(super) fn make_stable(&mut self, cert: CheckpointCert) {
        let n = cert.n;
        assert!(
            n > self.stable.n,
            "I6: stable checkpoints only move forward"
        );
        let previous = self.stable.n;
        self.outputs
            .push(Output::Persist(PersistRecord::Stable(cert.clone())));
        self.outputs.push(Output::Stable { n });
        self.stable = cert;
        // Batches up to n are settled: a PREPARE for them (a late re-proposal after a
        // view-top checkpoint, say) is no longer expected from the primary's stream.
        self.prepared_n = self.prepared_n.max(n);
        self.proposed_n = self.proposed_n.max(n);
        self.reproposals = self.reproposals.split_off(&(n + 1));
        self.log = self
            .log
            .split_off(&(0, 0))
            .into_iter()
            .filter(|((_, k), _)| *k > n)
            .collect();
        self.votes.retain(|(_, k), _| *k > n);
        self.executed_log = self.executed_log.split_off(&(n + 1));
        self.checkpoint_votes = self.checkpoint_votes.split_off(&(n + 1));
        self.own_checkpoints = self.own_checkpoints.split_off(&n);
        for pa in &mut self.peer_accepted {
            pa.retain(|(_, k), _| *k > n);
        }
        for pr in &mut self.peer_rejected {
            pr.retain(|(_, k, _)| *k > n);
        }
        if self.best_cert.as_ref().is_some_and(|c| c.n <= n) {
            self.best_cert = None;
            self.behind_since_tick = None;
        }
        // Keep one checkpoint interval of messages for peers that lag a little.
        self.truncate_streams(previous);
        // Streams still behind a signer's CHECKPOINT(n) only hold messages about batches
        // we have now certified: resume them after it (the clean-cut rule).
        let cert = self.stable.clone();
        self.cut_streams(&cert, false);
    }

    /// How far we know we will get without new PREPAREs from the current view: a
    /// certified checkpoint we are transferring or will transfer, or the top of the
    /// view's re-proposals (whose certificate brings it if the re-proposals do not).
    pub(super) fn catching_up_to(&self) -> SeqNum {
        let transfer = self.state_transfer.as_ref().map_or(0, |t| t.cert.n);
        let best = self.best_cert.as_ref().map_or(0, |c| c.n);
        let top = self.view_top.unwrap_or(0);
        transfer.max(best).max(top).max(self.executed_n)
    }

    /// Starts a state transfer once we stayed behind a certified checkpoint too long.
    pub(super) fn check_behind(&mut self) {
        if let Some(t) = &self.state_transfer {
            // The driver retries other replicas; re-ask if it has been silent too long.
            if self.ticks - t.started_tick > 4 * self.config.state_transfer_timeout_ticks {
                let cert = t.cert.clone();
                self.start_transfer(cert);
            }
            return;
        }
        let Some(since) = self.behind_since_tick else {
            return;
        };
        let Some(cert) = self.best_cert.clone() else {
            return;
        };
        if self.executed_n >= cert.n {
            self.best_cert = None;
            self.behind_since_tick = None;
            return;
        }
        if self.ticks - since >= self.config.state_transfer_timeout_ticks
            && self.exec_n == self.executed_n
        {
            self.start_transfer(cert);
        }
    }

    pub(super) fn start_transfer(&mut self, cert: CheckpointCert) {
        if self.exec_n != self.executed_n {
            // Wait until the application is idle; check_behind retries.
            self.best_cert = Some(cert);
            self.behind_since_tick.get_or_insert(self.ticks);
            return;
        }
        self.outputs.push(Output::FetchState { cert: cert.clone() });
        // Peers serve only their stable checkpoint. One that executed n but never saw
        // f+1 CHECKPOINTs for it (a sender's CHECKPOINT became void for it through that
        // sender's REBASE) holds the state but would not serve it; with the certificate
        // it makes n stable (`consider_cert`) and can (simulator, seed 115008 with f = 2:
        // the two replicas that held the state had 8 as stable, the two that needed it
        // asked for 16 for good, and the view change lacked them).
        self.outputs
            .push(Output::Broadcast(PeerMessage::Cert(cert.clone())));
        self.state_transfer = Some(super::checkpoint::Transfer {
            cert,
            started_tick: self.ticks,
        });
    }

    pub(super) fn on_state_installed(
        &mut self,
        cert: CheckpointCert,
        core_state: super::CoreState,
    ) {
        let Some(t) = self.state_transfer.take() else {
            self.drop_input("unexpected_state");
            return;
        };
        self.digest_asked = None;
        // The driver may install a newer certified state than the one asked for (the one
        // asked for may be gone everywhere); it must be certified, and the driver has
        // checked the state against the certificate's digest.
        if cert.n < t.cert.n
            || (cert.n == t.cert.n && cert.state_digest != t.cert.state_digest)
            || crate::validate::checkpoint_cert(&self.config, self.crypto.as_ref(), &cert).is_err()
        {
            panic!("I6: the driver installed state that is not certified or older than asked");
        }

        let n = cert.n;
        self.clients = core_state.clients.clone();
        self.rebases = core_state.rebases.clone();
        self.prune_pending_rebases();
        // Requests the installed state executed are no longer pending (left there, a
        // primary's request timer would suspect itself for them).
        let clients = &self.clients;
        self.pending
            .retain(|c, p| clients.get(c).is_none_or(|r| r.last_seq < p.request.seq));
        self.exec_n = n;
        self.executed_n = n;
        self.executing.clear();
        self.prepared_n = self.prepared_n.max(n);
        self.proposed_n = self.proposed_n.max(n);
        self.own_checkpoints
            .insert(n, (cert.state_digest, core_state));
        self.best_cert = None;
        self.behind_since_tick = None;
        // Join the view the certificate's signers were in, taking the lowest so that a
        // faulty signer cannot push us into a view that does not exist.
        let view = cert
            .checkpoints
            .iter()
            .map(|c| c.view)
            .min()
            .unwrap_or(self.view);
        if view > self.view {
            self.view = view;
            // We did not adopt this view's NEW-VIEW, so we know no top of its
            // re-proposals and certify no view-top CHECKPOINT for it.
            self.enter_view_without_new_view(n, None);
            self.outputs
                .push(Output::Persist(PersistRecord::View(view)));
        }
        if n > self.stable.n {
            self.make_stable(cert.clone());
        }
        self.cut_streams(&cert, true);
    }

    pub(super) fn on_cert_request(&mut self, from: ReplicaId, n: SeqNum) {
        if self.stable.n >= n && self.stable.n > 0 {
            self.outputs.push(Output::Send {
                to: from,
                msg: PeerMessage::Cert(self.stable.clone()),
            });
        }
    }

    pub(super) fn on_cert(&mut self, cert: CheckpointCert) {
        self.consider_cert(cert);
    }
}
