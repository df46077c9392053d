//! View change (MinBFT section 5, Figure 2; appendix B.2).
//!
//! A backup that suspects the primary sends REQ-VIEW-CHANGE; on f+1 of them a replica
//! moves to the next view and certifies VIEW-CHANGE with its stable checkpoint
//! certificate and every PREPARE it accepted above it. Because receivers process each
//! sender's messages in counter order, a VIEW-CHANGE that leaves out something its
//! sender accepted is caught (the omission check) — a faulty replica cannot hide a
//! COMMIT — and so is one that reports a PREPARE the receiver saw refused (the
//! inclusion check). The new primary, on f+1 valid VIEW-CHANGEs, certifies NEW-VIEW; every replica
//! recomputes its base checkpoint and the batches to re-propose, and rejects a NEW-VIEW
//! that differs. The new primary then re-proposes those batches, with their original
//! timestamps, through the normal case. Timeouts double on consecutive view changes.

use std::collections::BTreeMap;

use super::fifo::Flow;
use super::{Intent, Output, PersistRecord, Replica, Status};
use crate::message::{
    Batch, CheckpointCert, NewView, PeerMessage, Prepare, Reproposal, UiMessage, ViewChange,
};
use crate::types::{ReplicaId, SeqNum, View};

/// What a NEW-VIEW decides, recomputed by every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewViewDecision {
    pub base: SeqNum,
    pub base_cert: CheckpointCert,
    pub reproposals: Vec<Reproposal>,
}

/// The deterministic choice from f+1 VIEW-CHANGEs: the highest certified checkpoint is
/// the base; above it, for each batch number, the PREPARE from the highest view; a
/// number nobody accepted becomes an empty batch.
pub fn decide_new_view(view_changes: &[ViewChange]) -> NewViewDecision {
    let base_cert = view_changes
        .iter()
        .map(|vc| &vc.cert)
        .max_by_key(|c| c.n)
        .cloned()
        .unwrap_or_default();
    let base = base_cert.n;
    let mut chosen: BTreeMap<SeqNum, &Prepare> = BTreeMap::new();
    for vc in view_changes {
        for p in &vc.accepted {
            if p.header.n <= base {
                continue;
            }
            let e = chosen.entry(p.header.n).or_insert(p);
            // Highest view wins; within one view the primary's first PREPARE for n (the
            // lowest counter) is the one correct replicas accepted in FIFO order.
            if (p.header.view, std::cmp::Reverse(p.ui.counter))
                > (e.header.view, std::cmp::Reverse(e.ui.counter))
            {
                *e = p;
            }
        }
    }
    let top = chosen.keys().next_back().copied().unwrap_or(base);
    let null = Batch::default().digest();
    let reproposals = (base + 1..=top)
        .map(|n| match chosen.get(&n) {
            Some(p) => Reproposal {
                n,
                timestamp_ns: p.header.timestamp_ns,
                batch_digest: p.header.batch_digest,
            },
            None => Reproposal {
                n,
                timestamp_ns: 0,
                batch_digest: null,
            },
        })
        .collect();
    NewViewDecision {
        base,
        base_cert,
        reproposals,
    }
}

impl Replica {
    /// Asks for the next view (once per view).
    pub(super) fn suspect_primary(&mut self) {
        if self.rebasing.is_some() {
            return; // I8: a re-basing replica only listens
        }
        let target = self.view + 1;
        if self.sent_req_view_change.is_some_and(|v| v >= target) {
            return;
        }
        self.request_view_change(target);
    }

    /// Sends REQ-VIEW-CHANGE(view, target) and counts it as our own.
    fn request_view_change(&mut self, target: View) {
        self.sent_req_view_change = Some(target);
        self.req_view_change_tick = self.ticks;
        self.outputs
            .push(Output::Broadcast(PeerMessage::ReqViewChange {
                view: self.view,
                new_view: target,
            }));
        self.on_req_view_change(self.id, self.view, target);
    }

    /// A copy of `client`'s last request arrived after this replica executed it: the
    /// client is still short of f+1 matching replies (or its first copy was overtaken by
    /// the PREPARE). If it still asks a whole request timeout after the first such copy,
    /// while another replica has left this view (its VIEW-CHANGE for a later one is
    /// here), that replica's replies are missing for as long as the rest stay, and with
    /// f replicas lying the client needs every correct one: ask for the view it is in,
    /// so that the correct replicas follow it there. MinBFT's f+1 rule lets f faulty
    /// replicas plus one correct replica's request pull another correct replica out of
    /// a view the rest stay in (consensus/README, "Correct replicas follow a replica
    /// that f faulty ones pulled out of the view").
    pub(super) fn client_still_waits(&mut self, client: crate::ClientId, seq: u64) {
        let (view, now) = (self.view, self.ticks);
        let first = match self.resent.get(&client) {
            Some(&(s, v, t)) if s == seq && v == view => t,
            _ => {
                if self.resent.len() >= self.config.clients_max {
                    self.resent.clear();
                }
                self.resent.insert(client, (seq, view, now));
                now
            }
        };
        if now.saturating_sub(first) < self.config.request_timeout_ticks
            || self.status != Status::Normal
            || self.rebasing.is_some()
        {
            return;
        }
        // Where each other replica that left this view is now (its latest VIEW-CHANGE
        // within reach); the lowest of those, so that a faulty replica cannot send the
        // correct ones further than a replica that is really there.
        let mut latest: BTreeMap<ReplicaId, View> = BTreeMap::new();
        let reach = view + u64::from(self.config.n());
        for (v, vcs) in self.view_changes.range(view + 1..=reach) {
            for sender in vcs.keys().filter(|s| **s != self.id) {
                latest.insert(*sender, *v);
            }
        }
        let Some(target) = latest.values().min().copied() else {
            return;
        };
        if self.sent_req_view_change.is_some_and(|v| v >= target) {
            return;
        }
        self.resent.remove(&client);
        self.drop_input("followed_a_replica_out_of_the_view_for_a_client");
        self.request_view_change(target);
    }

    /// REQ-VIEW-CHANGE is not USIG-certified, so nobody relays it: repeat it until the
    /// view changes, or the request would be lost with the message.
    pub(super) fn repeat_req_view_change(&mut self) {
        let Some(target) = self.sent_req_view_change else {
            return;
        };
        if target <= self.view {
            return;
        }
        if self.ticks - self.req_view_change_tick >= self.config.fetch_timeout_ticks * 4 {
            self.req_view_change_tick = self.ticks;
            self.outputs
                .push(Output::Broadcast(PeerMessage::ReqViewChange {
                    view: self.view,
                    new_view: target,
                }));
        }
    }

    /// Records that `from` asks for a view of at least `new_view`, then moves to the
    /// highest view that f+1 replicas (so at least one correct one) ask for at least.
    /// Counting a request for a higher view as support for a lower one lets replicas
    /// that drifted into different views converge, while a single faulty replica
    /// cannot force any change on its own.
    pub(super) fn on_req_view_change(&mut self, from: ReplicaId, _view: View, new_view: View) {
        if new_view <= self.view || new_view > self.view + u64::from(self.config.n()) {
            return;
        }
        let r = &mut self.requested_view[from as usize];
        *r = (*r).max(new_view);
        let mut asks: Vec<View> = self
            .requested_view
            .iter()
            .copied()
            .filter(|&v| v > self.view)
            .collect();
        if asks.len() < self.config.quorum() {
            return;
        }
        asks.sort_unstable_by(|a, b| b.cmp(a));
        let target = asks[self.config.quorum() - 1];
        if target > self.view {
            self.start_view_change(target);
        }
    }

    fn start_view_change(&mut self, new_view: View) {
        debug_assert!(new_view > self.view);
        self.view = new_view;
        self.status = Status::ViewChange;
        self.view_change_started_tick = self.ticks;
        self.sent_req_view_change = Some(new_view);
        self.reproposals.clear();
        self.view_changes = self.view_changes.split_off(&new_view);
        self.outputs
            .push(Output::Persist(PersistRecord::View(new_view)));
        self.enqueue(Intent::ViewChange { new_view });
    }

    /// Every PREPARE accepted above the stable checkpoint, each in the view it was
    /// accepted in (a re-proposal ranks as the view that re-decided it), with the
    /// view-top certificates we hold for those views.
    pub(super) fn build_view_change(&self, new_view: View) -> ViewChange {
        let mut view_certs: BTreeMap<View, CheckpointCert> = BTreeMap::new();
        let accepted: Vec<Prepare> = self
            .log
            .values()
            .map(|s| &s.prepare)
            .filter(|p| p.header.n > self.stable.n && p.header.view < new_view)
            .cloned()
            .collect();
        for p in &accepted {
            if let Some(c) = self.view_certs.get(&p.header.view) {
                view_certs.insert(p.header.view, c.clone());
            }
        }
        ViewChange {
            new_view,
            sender: self.id,
            cert: self.stable.clone(),
            accepted,
            view_certs: view_certs.into_values().collect(),
            ui: usig::Ui {
                counter: 0,
                cert: Vec::new(),
            },
        }
    }

    pub(super) fn on_view_change(&mut self, vc: &ViewChange) -> Flow {
        let sender = vc.sender;
        if vc.new_view < self.view {
            return Flow::Done;
        }
        if let Some(flow) = self.rebased_view_change(vc) {
            return flow;
        }
        // Omission check: everything we saw this sender accept above its checkpoint, in
        // a view before the new one, must be in its VIEW-CHANGE.
        let null = Batch::default().digest();
        let omitted = self.peer_accepted[sender as usize]
            .iter()
            .any(|(&(v, n), h)| {
                n > vc.cert.n
                    && v < vc.new_view
                    && h.batch_digest != null
                    && !vc
                        .accepted
                        .iter()
                        .any(|p| p.header.n == n && p.header.batch_digest == h.batch_digest)
            });
        if omitted {
            self.drop_input("view_change_omission");
            self.invalid_view_changes.insert((sender, vc.ui.counter));
            return Flow::Done;
        }
        // Inclusion check, the dual: nothing we saw this sender certify and found
        // inconsistent (a PREPARE contradicting its NEW-VIEW or equivocating, a COMMIT for
        // such a PREPARE) may be reported as accepted.
        let rejected = &self.peer_rejected[sender as usize];
        if vc
            .accepted
            .iter()
            .any(|p| rejected.contains(&(p.header.view, p.header.n, p.header.batch_digest)))
        {
            self.drop_input("view_change_includes_rejected");
            self.invalid_view_changes.insert((sender, vc.ui.counter));
            return Flow::Done;
        }
        if vc.new_view > self.view {
            // Ahead of our view, keep one VIEW-CHANGE per sender, its latest (a correct
            // sender's views only grow): otherwise a faulty sender fills the table with
            // one for each of as many future views as it likes.
            use std::ops::Bound::{Excluded, Unbounded};
            if self
                .view_changes
                .range((Excluded(vc.new_view), Unbounded))
                .any(|(_, m)| m.contains_key(&sender))
            {
                self.drop_input("superseded_view_change");
                return Flow::Done;
            }
            for m in self
                .view_changes
                .range_mut((Excluded(self.view), Excluded(vc.new_view)))
                .map(|(_, m)| m)
            {
                m.remove(&sender);
            }
            self.view_changes.retain(|_, m| !m.is_empty());
        }
        let entry = self.view_changes.entry(vc.new_view).or_default();
        if entry.contains_key(&sender) {
            self.drop_input("duplicate_view_change");
            return Flow::Done;
        }
        entry.insert(sender, vc.clone());
        self.consider_cert(vc.cert.clone());
        // A VIEW-CHANGE is also its sender's request for that view.
        self.on_req_view_change(sender, vc.new_view - 1, vc.new_view);
        Flow::Done
    }

    /// The new primary certifies NEW-VIEW once it holds f+1 valid VIEW-CHANGEs.
    pub(super) fn maybe_new_view(&mut self) {
        if !self.is_primary()
            || self.status != Status::ViewChange
            || self.new_view_sent == Some(self.view)
        {
            return;
        }
        let Some(vcs) = self.view_changes.get(&self.view) else {
            return;
        };
        if vcs.len() < self.config.quorum() || !vcs.contains_key(&self.id) {
            return;
        }
        let chosen: Vec<ViewChange> = vcs.values().take(self.config.quorum()).cloned().collect();
        let mut decision = decide_new_view(&chosen);
        if self.byzantine_bad_new_view {
            match decision.reproposals.last_mut() {
                Some(r) => r.batch_digest = [7; 32],
                None => decision.reproposals.push(crate::message::Reproposal {
                    n: decision.base + 1,
                    timestamp_ns: 1,
                    batch_digest: [7; 32],
                }),
            }
        }
        self.new_view_sent = Some(self.view);
        let nv = NewView {
            new_view: self.view,
            sender: self.id,
            view_changes: chosen,
            base: decision.base,
            reproposals: decision.reproposals,
            ui: usig::Ui {
                counter: 0,
                cert: Vec::new(),
            },
        };
        self.enqueue(Intent::NewView { nv });
    }

    pub(super) fn on_new_view(&mut self, nv: &NewView) -> Flow {
        if nv.new_view < self.view || nv.new_view <= self.new_view_accepted {
            self.drop_input("stale_new_view");
            return Flow::Done;
        }
        if self.new_view_uses_void(&nv.view_changes) {
            // Not the primary's fault: what is void depends on us, not on the NEW-VIEW.
            self.drop_input("new_view_with_void_view_change");
            self.refused_void_new_view(nv.new_view);
            return Flow::Done;
        }
        // Every VIEW-CHANGE inside must first be processed in its sender's own stream.
        let mut deferred = false;
        let stuck_after = 4 * self.config.fetch_timeout_ticks;
        for vc in &nv.view_changes {
            let s = &mut self.streams[vc.sender as usize];
            if vc.ui.counter >= s.next && !s.awaiting_cut {
                // If the sender's stream is stuck on a gap nobody can fill any more (the
                // messages were truncated everywhere), resume it at this VIEW-CHANGE: the
                // skipped messages only concern views this NEW-VIEW supersedes.
                if s.gap_since_tick
                    .is_some_and(|t| self.ticks - t >= stuck_after)
                {
                    s.next = vc.ui.counter;
                    s.holdback.retain(|&k, _| k >= vc.ui.counter);
                    s.gap_since_tick = None;
                }
                self.receive_ui(UiMessage::ViewChange(vc.clone()));
                deferred = true;
            } else if self
                .invalid_view_changes
                .contains(&(vc.sender, vc.ui.counter))
            {
                self.drop_input("new_view_with_invalid_view_change");
                self.suspect_primary_of(nv.new_view);
                return Flow::Done;
            }
        }
        if deferred {
            return Flow::Defer;
        }
        // In order: nothing of the new view was accepted yet, so it resumes at the base.
        self.adopt_new_view(nv, 0);
        Flow::Done
    }

    /// Checks a NEW-VIEW against the decision recomputed from its VIEW-CHANGEs and, if it
    /// matches, enters its view. `resume_n` is the last batch already accepted from the
    /// new primary's stream (its base when the NEW-VIEW is processed in FIFO order).
    fn adopt_new_view(&mut self, nv: &NewView, resume_n: SeqNum) -> bool {
        if nv.new_view == self.view && self.status == Status::Normal {
            // Already working in this view (joined it through a state transfer): the
            // NEW-VIEW only confirms it; what it re-proposed is below what we installed.
            self.outputs
                .push(Output::Persist(PersistRecord::NewViewAccepted(nv.new_view)));
            self.new_view_accepted = nv.new_view;
            self.last_new_view = Some(nv.clone());
            return true;
        }
        let decision = decide_new_view(&nv.view_changes);
        if decision.base != nv.base || decision.reproposals != nv.reproposals {
            self.drop_input("bad_new_view");
            self.suspect_primary_of(nv.new_view);
            return false;
        }
        // I5: whatever we executed above the base is exactly what the new view
        // re-proposes (quorum intersection plus the omission check).
        for r in &decision.reproposals {
            if let Some(h) = self.executed_log.get(&r.n) {
                assert_eq!(
                    h.batch_digest, r.batch_digest,
                    "I5: replica {} executed batch {} that the new view replaces",
                    self.id, r.n
                );
            }
        }
        let top = decision.reproposals.last().map_or(decision.base, |r| r.n);
        assert!(
            self.exec_n <= top.max(self.stable.n),
            "I5: replica {} executed {} beyond the new view's last batch {}",
            self.id,
            self.exec_n,
            top
        );
        if nv.new_view > self.view {
            self.outputs
                .push(Output::Persist(PersistRecord::View(nv.new_view)));
        }
        self.outputs
            .push(Output::Persist(PersistRecord::NewViewAccepted(nv.new_view)));
        self.new_view_accepted = nv.new_view;
        self.view = nv.new_view;
        self.status = Status::Normal;
        self.sent_req_view_change = None;
        self.view_changes = self.view_changes.split_off(&(nv.new_view + 1));
        self.prepared_n = resume_n.max(decision.base);
        if !self.is_primary() {
            // A backup never stands below its stable checkpoint (a state transfer may have
            // brought it above the base): batches up to it are settled. Left below, a
            // fresh PREPARE above the top looked like a gap that never closes (simulator,
            // seed 7845 with f = 2 and lying replies). The primary still re-proposes from
            // the base, for backups behind it.
            self.prepared_n = self.prepared_n.max(self.stable.n);
        }
        self.proposed_n = self.prepared_n;
        self.last_timestamp_ns = decision
            .reproposals
            .iter()
            .map(|r| r.timestamp_ns)
            .max()
            .unwrap_or(0);
        self.reproposals = decision
            .reproposals
            .iter()
            .filter(|r| r.n > self.prepared_n)
            .map(|r| (r.n, *r))
            .collect();
        // The view-top certificates that justify the origins travel with the NEW-VIEW's
        // VIEW-CHANGEs (validated with it): keep them to justify our own next report.
        for vc in &nv.view_changes {
            for c in &vc.view_certs {
                self.record_view_cert(c);
            }
        }
        self.view_top = Some(top);
        self.view_top_sent = None;
        let oldest = self.log.keys().map(|(v, _)| *v).min().unwrap_or(self.view);
        self.view_certs = self.view_certs.split_off(&oldest.min(self.view));
        self.view_top_votes = self.view_top_votes.split_off(&self.view);
        if self.exec_n == self.executed_n && self.executed_n == top && self.stable.n <= top {
            self.ask_digest(top);
        }
        self.last_new_view = Some(nv.clone());
        self.reset_pending();
        if self.executed_n < decision.base {
            self.consider_cert(decision.base_cert);
            if let Some(cert) = self.best_cert.clone() {
                self.start_transfer(cert);
            }
        }
        true
    }

    /// Stream heads waiting for a view we never entered, while that view's NEW-VIEW lies
    /// behind a checkpoint cut: ask for it out of order.
    pub(super) fn check_missing_new_view(&mut self) {
        if self.view > 0
            && self.status == Status::Normal
            && !self.view_certs.contains_key(&self.view)
            && self.ticks - self.view_cert_request_tick >= 4 * self.config.fetch_timeout_ticks
        {
            self.view_cert_request_tick = self.ticks;
            let view = self.view;
            self.outputs
                .push(Output::Broadcast(PeerMessage::ViewCertRequest { view }));
        }
        let waiting = self
            .streams
            .iter()
            .filter_map(|s| s.holdback.get(&s.next))
            .filter_map(|m| match m {
                UiMessage::Prepare(p) => Some(p.header.view),
                UiMessage::Commit(c) => Some(c.header.view),
                _ => None,
            })
            .filter(|&v| v > self.view || (v == self.view && self.status == Status::ViewChange))
            .max();
        let Some(view) = waiting else { return };
        if self.ticks - self.new_view_request_tick >= 4 * self.config.fetch_timeout_ticks {
            self.new_view_request_tick = self.ticks;
            self.outputs
                .push(Output::Broadcast(PeerMessage::NewViewRequest { view }));
        }
    }

    pub(super) fn on_new_view_request(&mut self, from: ReplicaId, view: View) {
        if let Some(nv) = &self.last_new_view
            && nv.new_view >= view
        {
            let msg = PeerMessage::NewViewProof(nv.clone());
            self.outputs.push(Output::Send { to: from, msg });
        }
    }

    pub(super) fn on_new_view_proof(&mut self, nv: NewView) {
        if nv.new_view < self.view || nv.new_view <= self.new_view_accepted {
            return;
        }
        if self.is_void(nv.sender, nv.ui.counter) || self.new_view_uses_void(&nv.view_changes) {
            self.drop_input("new_view_with_void_view_change");
            self.refused_void_new_view(nv.new_view);
            return;
        }
        let stuck_after = 4 * self.config.fetch_timeout_ticks;
        let ticks = self.ticks;
        let s = &mut self.streams[nv.sender as usize];
        if nv.ui.counter >= s.next && !s.awaiting_cut {
            if s.gap_since_tick.is_some_and(|t| ticks - t >= stuck_after) {
                // The new primary's stream is stuck on a gap nobody can fill: resume it
                // at this NEW-VIEW.
                s.next = nv.ui.counter;
                s.holdback.retain(|&k, _| k >= nv.ui.counter);
                s.gap_since_tick = None;
            }
            // Still ahead in the sender's stream: process it there, in order.
            self.receive_ui(UiMessage::NewView(nv));
            return;
        }
        // Cut past it: the new primary's stream resumes right after its CHECKPOINT at our
        // stable checkpoint, that is with the batch after it (the clean-cut rule).
        let resume = self.stable.n;
        self.adopt_new_view(&nv, resume);
    }

    fn suspect_primary_of(&mut self, view: View) {
        if view == self.view {
            self.suspect_primary();
        }
    }

    /// The batch a re-proposal names, from the VIEW-CHANGEs of our own NEW-VIEW.
    pub(super) fn reproposal_batch(&self, r: &Reproposal) -> Option<Batch> {
        if r.batch_digest == Batch::default().digest() {
            return Some(Batch::default());
        }
        let nv = self.last_new_view.as_ref()?;
        nv.view_changes
            .iter()
            .flat_map(|vc| vc.accepted.iter())
            .find(|p| p.header.n == r.n && p.header.batch_digest == r.batch_digest)
            .map(|p| p.batch.clone())
    }

    /// In a view change for too long: ask for the next one, with a doubled timeout.
    pub(super) fn check_view_change_timer(&mut self) {
        if self.status != Status::ViewChange || self.rebasing.is_some() {
            return;
        }
        if self.ticks - self.view_change_started_tick >= self.view_change_timeout_ticks {
            self.view_change_timeout_ticks = self.view_change_timeout_ticks.saturating_mul(2);
            self.view_change_started_tick = self.ticks;
            let target = self.view + 1;
            if self.sent_req_view_change.is_none_or(|v| v < target) {
                self.sent_req_view_change = Some(target);
                self.outputs
                    .push(Output::Broadcast(PeerMessage::ReqViewChange {
                        view: self.view,
                        new_view: target,
                    }));
                self.on_req_view_change(self.id, self.view, target);
            }
        }
    }
}
