//! REBASE: the agreed way back for a replica whose USIG counter moved past its durable log
//! (a crash between the USIG's increment and logging the message, or a lost disk with the
//! USIG kept). Beyond the MinBFT paper, which assumes the log survives; the argument is
//! invariant I8 in `consensus/README.md`.
//!
//! The replica certifies one REBASE with its next counter and sends nothing else. Every
//! receiver jumps the sender's stream to it (the one exception to FIFO): what it had not
//! processed of that sender below the REBASE is void for it. The primary orders the REBASE
//! in a batch like a request; executing it records (counter, batch number `b`) in the
//! replicated core state. Until a stable checkpoint at or above `b` exists the replica
//! stays silent, and its VIEW-CHANGEs after the REBASE count only with a checkpoint
//! certificate at or above `b`, so nothing a receiver may have skipped can matter.

use super::fifo::Flow;
use super::{Intent, Output, PersistRecord, Replica, Status};
use crate::message::{PeerMessage, Rebase, UiMessage, ViewChange};
use crate::types::{ReplicaId, SeqNum, View};

/// Void counter ranges remembered per sender (for refusing NEW-VIEWs built on them).
const VOID_RANGES_MAX: usize = 16;

#[derive(Clone, Debug)]
pub(super) struct PendingRebase {
    pub rebase: Rebase,
    pub arrived_tick: u64,
    /// Set on the primary once the REBASE is in a batch it proposed.
    pub proposed: bool,
    /// Relayed to everyone once it waited half a request timeout (the primary, or the
    /// f+1 needed to replace it, may not have it).
    pub relayed: bool,
}

impl Replica {
    /// Whether this replica is re-basing (silent until readmitted).
    pub fn is_rebasing(&self) -> bool {
        self.rebasing.is_some()
    }

    /// The REBASEs the replicated state has executed, by replica.
    pub fn rebase_records(&self) -> &std::collections::BTreeMap<ReplicaId, super::RebaseRecord> {
        &self.rebases
    }

    /// Decides at start-up whether this replica must re-base: its USIG issued counters its
    /// log does not hold, or it logged a REBASE the stable state has not executed yet.
    pub(super) fn recover_rebase(&mut self, recovered: &super::Recovered) {
        let last_logged = recovered
            .sent
            .iter()
            .map(|m| m.counter())
            .max()
            .unwrap_or(0);
        let logged_rebase = recovered.sent.iter().rev().find_map(|m| match m {
            UiMessage::Rebase(r) => Some(r.ui.counter),
            _ => None,
        });
        let executed = |c: u64| {
            recovered
                .core_state
                .rebases
                .get(&self.id)
                .is_some_and(|r| r.counter >= c)
        };
        if recovered.usig_ahead_of_log() {
            self.rebasing = Some(0);
            self.enqueue(Intent::Rebase { last_logged });
        } else if let Some(c) = logged_rebase
            && !executed(c)
        {
            // Crashed again while re-basing: the logged REBASE still stands (peers fetch
            // it from our retained messages like any other).
            self.rebasing = Some(c);
        }
    }

    /// The REBASE as a stream entry: `receive_ui` already jumped the stream to it.
    pub(super) fn on_rebase(&mut self, r: &Rebase) -> Flow {
        let j = r.sender;
        let c = r.ui.counter;
        let seen = &mut self.rebase_seen[j as usize];
        *seen = (*seen).max(c);
        if j == self.id {
            return Flow::Done;
        }
        // What we knew this sender accepted before its REBASE concerns batches below the
        // one that orders it (or superseded ones): its later VIEW-CHANGEs report only
        // above a checkpoint at or past that batch, so they are checked against its new
        // stream only.
        self.peer_accepted[j as usize].clear();
        self.peer_rejected[j as usize].clear();
        self.streams[j as usize].suspected = false;
        let executed = self.rebases.get(&j).is_some_and(|x| x.counter >= c);
        let newer = self
            .pending_rebases
            .get(&j)
            .is_none_or(|p| p.rebase.ui.counter < c);
        if !executed && newer {
            let arrived_tick = self.ticks;
            self.pending_rebases.insert(
                j,
                PendingRebase {
                    rebase: r.clone(),
                    arrived_tick,
                    proposed: false,
                    relayed: false,
                },
            );
        }
        Flow::Done
    }

    /// Records a stream jump over `lo..hi` (the counters a REBASE voids for us).
    pub(super) fn record_void(&mut self, j: ReplicaId, lo: u64, hi: u64) {
        if lo >= hi {
            return;
        }
        let v = &mut self.void_ranges[j as usize];
        v.insert(lo, hi);
        if v.len() > VOID_RANGES_MAX {
            v.pop_first();
        }
        self.drop_input("rebase_voided_messages");
    }

    /// True if we skipped `j`'s message with counter `c` because of a REBASE.
    pub(super) fn is_void(&self, j: ReplicaId, c: u64) -> bool {
        self.void_ranges[j as usize]
            .range(..=c)
            .next_back()
            .is_some_and(|(_, &hi)| c < hi)
    }

    /// Executes the REBASEs of batch `n` into the replicated core state.
    pub(super) fn apply_rebases(&mut self, rebases: &[Rebase], n: SeqNum) {
        if !rebases.is_empty() {
            let ci = self.config.checkpoint_interval;
            self.fill_to = self.fill_to.max(n.div_ceil(ci) * ci);
        }
        for r in rebases {
            let rec = self.rebases.entry(r.sender).or_default();
            if rec.counter < r.ui.counter {
                *rec = super::RebaseRecord {
                    counter: r.ui.counter,
                    n,
                };
            }
            if self
                .pending_rebases
                .get(&r.sender)
                .is_some_and(|p| p.rebase.ui.counter <= r.ui.counter)
            {
                self.pending_rebases.remove(&r.sender);
            }
        }
    }

    /// Relays REBASEs that wait too long for their ordering, like a client re-sending its
    /// request to every replica.
    pub(super) fn relay_waiting_rebases(&mut self) {
        let due = self
            .ticks
            .saturating_sub(self.config.request_timeout_ticks / 2);
        let mut relay = Vec::new();
        for p in self.pending_rebases.values_mut() {
            if !p.relayed && p.arrived_tick <= due {
                p.relayed = true;
                relay.push(p.rebase.clone());
            }
        }
        for r in relay {
            let msg = crate::message::PeerMessage::Ui(UiMessage::Rebase(r));
            self.outputs.push(super::Output::Broadcast(msg));
        }
    }

    /// The latest REBASE of `sender` we hold, as a resumption point for a peer that lost
    /// its place in that sender's stream.
    pub(super) fn latest_rebase_of(&self, sender: ReplicaId) -> Option<UiMessage> {
        let c = self.rebase_seen[sender as usize];
        if c == 0 {
            return None;
        }
        let s = &self.streams[sender as usize];
        // Only while its stream still ends there (it is still re-basing).
        if s.retained.range(c + 1..).next().is_some() {
            return None;
        }
        s.retained.get(&c).cloned()
    }

    /// Forgets pending REBASEs the installed or executed state already holds.
    pub(super) fn prune_pending_rebases(&mut self) {
        let table = &self.rebases;
        self.pending_rebases
            .retain(|j, p| table.get(j).is_none_or(|r| r.counter < p.rebase.ui.counter));
    }

    /// The REBASEs the primary puts into its next batch.
    pub(super) fn rebases_to_propose(&mut self) -> Vec<Rebase> {
        let me = self.id;
        self.pending_rebases
            .iter_mut()
            .filter(|(j, p)| **j != me && !p.proposed)
            .map(|(_, p)| {
                p.proposed = true;
                p.rebase.clone()
            })
            .collect()
    }

    /// A re-basing replica is readmitted once its stable checkpoint's state holds its
    /// REBASE (so that checkpoint is at or above the batch that ordered it).
    pub(super) fn check_readmitted(&mut self) {
        let Some(c) = self.rebasing else { return };
        if c == 0 {
            return; // its REBASE is not certified yet
        }
        let readmitted = self
            .own_checkpoints
            .get(&self.stable.n)
            .is_some_and(|(_, cs)| cs.rebases.get(&self.id).is_some_and(|r| r.counter >= c));
        if !readmitted {
            return;
        }
        self.rebasing = None;
        self.drop_input("rebase_readmitted");
        if self.status == Status::ViewChange {
            let new_view = self.view;
            self.enqueue(Intent::ViewChange { new_view });
        }
    }

    /// I8 on receipt of a VIEW-CHANGE certified after its sender's REBASE: it counts only
    /// with a certificate at or above the batch that ordered that REBASE. `None` lets the
    /// ordinary checks run.
    pub(super) fn rebased_view_change(&mut self, vc: &ViewChange) -> Option<Flow> {
        let j = vc.sender;
        let seen = self.rebase_seen[j as usize];
        if seen == 0 || vc.ui.counter < seen {
            return None;
        }
        match self.rebases.get(&j) {
            Some(r) if r.counter >= seen => {
                if vc.cert.n >= r.n {
                    None
                } else {
                    self.drop_input("view_change_below_rebase");
                    self.invalid_view_changes.insert((j, vc.ui.counter));
                    Some(Flow::Done)
                }
            }
            _ if self.exec_n >= vc.cert.n => {
                // Executed through its certificate without its REBASE ordered there: the
                // REBASE is ordered above it (or never), so this VIEW-CHANGE cannot count.
                self.drop_input("view_change_below_rebase");
                self.invalid_view_changes.insert((j, vc.ui.counter));
                Some(Flow::Done)
            }
            _ => {
                // Its certificate is ahead of us: catch up to it first, then judge.
                self.consider_cert(vc.cert.clone());
                Some(Flow::Defer)
            }
        }
    }

    /// A NEW-VIEW may not rest on a VIEW-CHANGE we skipped as void: we could not check it
    /// against its sender's stream.
    pub(super) fn new_view_uses_void(&self, view_changes: &[ViewChange]) -> bool {
        view_changes
            .iter()
            .any(|vc| self.is_void(vc.sender, vc.ui.counter))
    }

    /// Enters the current view in normal operation at batch `at` without its NEW-VIEW
    /// (by a state transfer, or by the view-top certificate, whose `top` we then know),
    /// the way a restart from our records would: accepting from the primary's stream
    /// after `at`, with no clock reference (ours may be our own proposals of an older
    /// view, later than the new primary's first timestamp, so its fresh PREPAREs would
    /// look like time going back), and certifying no view-top CHECKPOINT for this view
    /// (its certificate exists already, or we never saw its re-proposals).
    pub(super) fn enter_view_without_new_view(&mut self, at: SeqNum, top: Option<SeqNum>) {
        self.status = Status::Normal;
        self.prepared_n = at;
        self.proposed_n = at;
        self.last_timestamp_ns = 0;
        self.view_top = top;
        self.view_top_sent = Some(self.view);
    }

    /// Notes that we refused the NEW-VIEW of `view` because it rests on a VIEW-CHANGE we
    /// skipped as void (`check_join_by_view_cert` then joins that view another way).
    pub(super) fn refused_void_new_view(&mut self, view: View) {
        self.void_new_view = self.void_new_view.max(Some(view));
    }

    /// Joins the view whose NEW-VIEW we had to refuse as resting on a void VIEW-CHANGE,
    /// once we hold its view-top certificate and a stable checkpoint at or above its top.
    ///
    /// Refusing that NEW-VIEW is right (we could not check the skipped VIEW-CHANGE), but
    /// refusing it for good left us in the view change while the others went on in the
    /// new view; with f others faulty, clients then lacked a matching reply (simulator,
    /// seed 10186 with f = 2). The view-top certificate is f+1 CHECKPOINTs that replicas
    /// certify only after adopting that view's NEW-VIEW (validated with every check) and
    /// executing its re-proposals, so at least one correct replica did both. Everything
    /// that NEW-VIEW decides lies at or below its top, hence at or below our certified
    /// stable state, so we need nothing of it: we enter the view at our stable checkpoint,
    /// as a state transfer joins a view (`on_state_installed`), and accept the primary's
    /// fresh PREPAREs above it in stream order like everyone in that view.
    ///
    /// The same holds for a replica still in an older view, in any status: one cut off
    /// while the others changed view, whose peers' VIEW-CHANGEs then became void for it
    /// through their REBASEs, never gathered the requests to change view itself and
    /// stayed in the old view while the new one lacked its COMMITs (simulator, seed
    /// 60215 with f = 2 and `rebase-over-sent`). It moves to that view the way a state
    /// transfer does (`on_state_installed`).
    pub(super) fn check_join_by_view_cert(&mut self) {
        let Some(view) = self.void_new_view else {
            return;
        };
        let behind = view > self.view;
        let in_its_view_change = view == self.view && self.status == Status::ViewChange;
        if !(behind || in_its_view_change) || self.config.primary(view) == self.id {
            return;
        }
        let Some(top) = self.view_certs.get(&view).map(|c| c.n) else {
            // Ask for it; `consider_cert` fetches the state at its top when it arrives.
            if self.ticks - self.view_cert_request_tick >= 4 * self.config.fetch_timeout_ticks {
                self.view_cert_request_tick = self.ticks;
                self.outputs
                    .push(Output::Broadcast(PeerMessage::ViewCertRequest { view }));
            }
            return;
        };
        // At or past the top, with nothing executed beyond our stable state (a batch of
        // an earlier view executed above it would lie above the new view's re-proposals,
        // which quorum intersection rules out; we simply wait for a later checkpoint).
        if self.stable.n < top || self.executed_n != self.stable.n || self.exec_n != self.executed_n
        {
            return;
        }
        if behind {
            self.view = view;
            self.outputs
                .push(Output::Persist(PersistRecord::View(view)));
        }
        self.outputs
            .push(Output::Persist(PersistRecord::NewViewAccepted(view)));
        self.new_view_accepted = view;
        self.sent_req_view_change = None;
        self.view_changes = self.view_changes.split_off(&(view + 1));
        // What we accepted in the old view above our stable state never committed there
        // (the new view's re-proposals end at or below it).
        let stable = self.stable.n;
        self.enter_view_without_new_view(stable, Some(top));
        self.reproposals.clear();
        self.void_new_view = None;
        self.reset_pending();
        self.drop_input("joined_view_by_certificate");
    }
}
