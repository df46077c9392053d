//! FIFO processing of USIG-certified messages (MinBFT section 5, "FIFO order").
//!
//! A replica processes replica j's messages strictly in the order of j's USIG counter,
//! with no gaps: it holds back what arrives early (bounded), asks every replica for what
//! is missing (any of them can relay it, the UI makes it self-certifying), and treats a
//! sender whose gap never closes as faulty. This is what stops a faulty replica from
//! telling different stories to different replicas: a message can only be read after
//! everything its sender certified before it.
//!
//! A stream may also be *cut* at a stable checkpoint: because a correct replica sends
//! CHECKPOINT(n) before any message about a batch above `n` (the clean-cut rule in
//! `normal`), a replica that installs checkpoint `n` may resume j's stream right after
//! j's CHECKPOINT(n).

use std::collections::BTreeMap;

use super::{Output, Recovered, Replica};
use crate::message::{CheckpointCert, PeerMessage, UiMessage};
use crate::types::{ReplicaId, SeqNum, View};
use crate::validate::FETCH_RANGE_MAX;

/// Fetch rounds a gap may survive before its sender is treated as faulty.
const GAP_FETCH_ROUNDS_MAX: u64 = 20;

#[derive(Debug)]
pub(super) struct Stream {
    /// Counter of the next message to process.
    pub next: u64,
    pub holdback: BTreeMap<u64, UiMessage>,
    /// Processed messages, kept to relay to peers until a stable checkpoint cuts them.
    pub retained: BTreeMap<u64, UiMessage>,
    /// Highest counter this sender is known to have used.
    pub known_max: u64,
    pub gap_since_tick: Option<u64>,
    pub last_fetch_tick: u64,
    /// Position unknown (after a state transfer without this sender's CHECKPOINT): the
    /// next CHECKPOINT from it at or above the stable checkpoint resumes the stream.
    pub awaiting_cut: bool,
    /// Counter of this sender's CHECKPOINT(n) messages, by n.
    pub checkpoint_counters: BTreeMap<SeqNum, u64>,
    pub suspected: bool,
}

impl Stream {
    pub fn new() -> Self {
        Stream {
            next: 1,
            holdback: BTreeMap::new(),
            retained: BTreeMap::new(),
            known_max: 0,
            gap_since_tick: None,
            last_fetch_tick: 0,
            awaiting_cut: false,
            checkpoint_counters: BTreeMap::new(),
            suspected: false,
        }
    }
}

/// Whether a stream head could be processed now.
pub(super) enum Flow {
    Done,
    /// Not yet: keep it at the head and try again after the next state change.
    Defer,
}

impl Replica {
    pub(super) fn recover_streams(&mut self, recovered: &Recovered) {
        let me = self.id as usize;
        self.cut_streams(&recovered.stable.clone(), true);
        let own = &mut self.streams[me];
        own.awaiting_cut = false;
        own.next = recovered.usig_counter + 1;
        for m in &recovered.sent {
            own.retained.insert(m.counter(), m.clone());
            // Where our stream resumes for a peer that restarted too, or whose stable
            // certificate lacks our CHECKPOINT (`on_fetch_from_checkpoint`). Unknown,
            // every peer missing it waited for our next CHECKPOINT, which an idle
            // cluster only reaches by filling empty batches, and the first requests
            // after a restart of the whole cluster timed out into a view change.
            if let UiMessage::Checkpoint(cp) = m {
                own.checkpoint_counters.insert(cp.n, m.counter());
            }
        }
        // Accepted PREPAREs are the primary's votes; our own COMMITs are ours.
        for p in &recovered.accepted {
            let key = (p.header.view, p.header.n);
            self.log.insert(key, super::Slot { prepare: p.clone() });
            self.votes
                .entry(key)
                .or_default()
                .insert(p.primary, p.header);
            if p.header.view == self.view {
                self.prepared_n = self.prepared_n.max(p.header.n);
            }
        }
        for m in &recovered.sent {
            if let UiMessage::Commit(c) = m {
                self.votes
                    .entry((c.header.view, c.header.n))
                    .or_default()
                    .insert(self.id, c.header);
            }
        }
        self.proposed_n = self.prepared_n;
    }

    /// Resumes every stream right after its sender's CHECKPOINT in `cert` (or marks it
    /// as waiting for its next CHECKPOINT when the sender is not in the certificate).
    pub(super) fn cut_streams(&mut self, cert: &CheckpointCert, mark_unknown: bool) {
        if cert.n == 0 {
            return;
        }
        for j in 0..self.config.n() {
            if j == self.id {
                continue;
            }
            let s = &mut self.streams[j as usize];
            match cert.checkpoints.iter().find(|c| c.sender == j) {
                Some(c) if s.next <= c.ui.counter => {
                    s.next = c.ui.counter + 1;
                    s.awaiting_cut = false;
                }
                Some(_) => {}
                None if mark_unknown
                    && s.checkpoint_counters
                        .get(&cert.n)
                        .is_none_or(|&c| s.next <= c) =>
                {
                    s.awaiting_cut = true;
                }
                None => {}
            }
            let next = s.next;
            s.holdback.retain(|&c, _| c >= next);
            s.gap_since_tick = None;
        }
    }

    /// Entry point for every USIG-certified message, direct or relayed.
    pub(super) fn receive_ui(&mut self, msg: UiMessage) {
        let j = msg.sender() as usize;
        let c = msg.counter();
        let stable_n = self.stable.n;
        let holdback_max = self.config.holdback_max;
        let s = &mut self.streams[j];
        s.known_max = s.known_max.max(c);
        if s.awaiting_cut {
            // A CHECKPOINT at or above ours, or a VIEW-CHANGE whose certificate is, is a
            // point from which the sender's stream means something to us again.
            let resumes = match &msg {
                UiMessage::Checkpoint(cp) => cp.n >= stable_n,
                UiMessage::ViewChange(vc) => vc.cert.n >= stable_n,
                UiMessage::Rebase(_) => c >= s.next,
                _ => false,
            };
            if resumes {
                s.awaiting_cut = false;
                s.next = c;
                s.holdback.retain(|&k, _| k > c);
            }
        }
        if let UiMessage::Rebase(_) = &msg
            && c > s.next
            && j != self.id as usize
        {
            // I8: the one exception to FIFO. What we have not processed of this sender
            // below its REBASE is void for us.
            let lo = s.next;
            s.next = c;
            s.holdback.retain(|&k, _| k >= c);
            s.gap_since_tick = None;
            self.record_void(j as ReplicaId, lo, c);
        }
        let s = &mut self.streams[j];
        if c < s.next || s.holdback.contains_key(&c) {
            self.drop_input("duplicate_ui");
            return;
        }
        if s.holdback.len() >= holdback_max {
            self.drop_input("holdback_full");
            return;
        }
        s.holdback.insert(c, msg);
    }

    /// Processes every stream head that can be processed; true if anything happened.
    pub(super) fn pump_streams(&mut self) -> bool {
        let mut progressed = false;
        for j in 0..self.config.n() as usize {
            loop {
                let s = &mut self.streams[j];
                if s.awaiting_cut {
                    break;
                }
                let next = s.next;
                let Some(msg) = s.holdback.remove(&next) else {
                    break;
                };
                match self.handle_ui(&msg) {
                    Flow::Done => {
                        let s = &mut self.streams[j];
                        // The handler may itself have cut this stream forward.
                        s.next = s.next.max(next + 1);
                        s.gap_since_tick = None;
                        if let UiMessage::Checkpoint(cp) = &msg {
                            s.checkpoint_counters.insert(cp.n, next);
                        }
                        s.retained.insert(next, msg);
                        if s.retained.len() > self.config.retain_max {
                            s.retained.pop_first();
                        }
                        progressed = true;
                    }
                    Flow::Defer => {
                        self.streams[j].holdback.insert(next, msg);
                        break;
                    }
                }
            }
        }
        progressed
    }

    fn handle_ui(&mut self, msg: &UiMessage) -> Flow {
        match msg {
            UiMessage::Prepare(p) => self.on_prepare(p),
            UiMessage::Commit(c) => self.on_commit(c),
            UiMessage::Checkpoint(c) => self.on_checkpoint(c),
            UiMessage::ViewChange(vc) => self.on_view_change(vc),
            UiMessage::NewView(nv) => self.on_new_view(nv),
            UiMessage::Rebase(r) => self.on_rebase(r),
        }
    }

    /// Asks for missing messages; suspects a sender whose gap never closes.
    pub(super) fn check_gaps(&mut self) {
        let primary = self.config.primary(self.view);
        // Cut off from every peer (isolated, or its own links down), a replica learns
        // nothing about whether its gaps can be filled: their clocks stop. Otherwise a
        // partition longer than the give-up time below makes it skip messages its peers
        // still hold, such as a NEW-VIEW, and stay behind in an old view (simulator,
        // seed 90186 with f = 2 and bad state transfers). Status messages keep a
        // connected replica hearing from its peers.
        let quiet = self
            .config
            .status_interval_ticks
            .max(self.config.fetch_timeout_ticks);
        let silent_for = self.ticks.saturating_sub(self.peer_heard_tick);
        if silent_for > quiet {
            let mut open = false;
            for s in &mut self.streams {
                if let Some(t) = s.gap_since_tick.as_mut() {
                    *t = (*t + 1).min(self.ticks);
                    open = true;
                }
            }
            if open && silent_for == quiet + 1 {
                self.drop_input("gaps_held_while_cut_off");
            }
        }
        for j in 0..self.config.n() {
            if j == self.id {
                continue;
            }
            let ticks = self.ticks;
            let timeout = self.config.fetch_timeout_ticks;
            let s = &mut self.streams[j as usize];
            if s.awaiting_cut {
                if ticks.saturating_sub(s.last_fetch_tick) >= timeout {
                    s.last_fetch_tick = ticks;
                    let n = self.stable.n;
                    let msg = PeerMessage::FetchFromCheckpoint { sender: j, n };
                    self.outputs.push(Output::Broadcast(msg));
                }
                continue;
            }
            let want = s
                .known_max
                .max(s.holdback.keys().next_back().copied().unwrap_or(0));
            if want < s.next || s.holdback.contains_key(&s.next) {
                s.gap_since_tick = None;
                continue;
            }
            let since = *s.gap_since_tick.get_or_insert(ticks);
            if ticks.saturating_sub(s.last_fetch_tick) >= timeout {
                s.last_fetch_tick = ticks;
                let from = s.next;
                let to = want.min(from + FETCH_RANGE_MAX - 1);
                self.outputs.push(Output::Broadcast(PeerMessage::Fetch {
                    sender: j,
                    from,
                    to,
                }));
            }
            let stable_n = self.stable.n;
            let s = &mut self.streams[j as usize];
            if ticks - since > GAP_FETCH_ROUNDS_MAX * timeout && !s.suspected {
                s.suspected = true;
                self.drop_input("sender_gap");
                if j == primary {
                    self.suspect_primary();
                }
            }
            let s = &mut self.streams[j as usize];
            if ticks - since > 2 * GAP_FETCH_ROUNDS_MAX * timeout && stable_n > 0 {
                // Nobody holds the missing messages any more (truncated at a checkpoint
                // everywhere): resume this sender at its next CHECKPOINT or VIEW-CHANGE
                // at or above our stable checkpoint (see `receive_ui`).
                s.awaiting_cut = true;
                s.gap_since_tick = None;
                s.suspected = false;
            }
        }
    }

    pub(super) fn on_fetch(&mut self, from: ReplicaId, sender: ReplicaId, lo: u64, hi: u64) {
        let s = &self.streams[sender as usize];
        let mut msgs: Vec<UiMessage> = s.retained.range(lo..=hi).map(|(_, m)| m.clone()).collect();
        // A hole nobody can fill ends at the sender's REBASE: hand that over too.
        if let Some((&c, m)) = s.retained.range(lo..).next()
            && c > hi
            && matches!(m, UiMessage::Rebase(_))
        {
            msgs.push(m.clone());
        }
        for m in msgs {
            self.outputs.push(Output::Send {
                to: from,
                msg: PeerMessage::Ui(m),
            });
        }
    }

    pub(super) fn on_fetch_from_checkpoint(
        &mut self,
        from: ReplicaId,
        sender: ReplicaId,
        n: SeqNum,
    ) {
        let s = &self.streams[sender as usize];
        let Some(&c) = s.checkpoint_counters.get(&n) else {
            // A re-basing sender certifies no CHECKPOINT: its REBASE is the place to
            // resume from (I8). Without either, the stream resumes only at the sender's
            // next CHECKPOINT.
            match self.latest_rebase_of(sender) {
                Some(m) => self.outputs.push(Output::Send {
                    to: from,
                    msg: PeerMessage::Ui(m),
                }),
                None => self.fill_for_a_cut(n),
            }
            return;
        };
        let msgs: Vec<UiMessage> = s
            .retained
            .range(c..)
            .take(FETCH_RANGE_MAX as usize)
            .map(|(_, m)| m.clone())
            .collect();
        for m in msgs {
            self.outputs.push(Output::Send {
                to: from,
                msg: PeerMessage::Ui(m),
            });
        }
    }

    pub(super) fn on_status(
        &mut self,
        from: ReplicaId,
        last_counter: u64,
        stable: SeqNum,
        _view: View,
    ) {
        let s = &mut self.streams[from as usize];
        s.known_max = s.known_max.max(last_counter);
        if stable > self.stable.n && self.ticks.saturating_sub(s.last_fetch_tick) >= 1 {
            self.outputs.push(Output::Send {
                to: from,
                msg: PeerMessage::CertRequest { n: stable },
            });
        }
    }

    /// A replica asked to resume a stream right after its sender's CHECKPOINT at our
    /// stable checkpoint `n` (it lost its place in that stream by a restart or a state
    /// transfer), and we hold no such CHECKPOINT of that sender, nor a REBASE to resume
    /// from (our own messages pass through our own stream too, so this covers us). A
    /// sender that never certified that CHECKPOINT (it installed the state instead of
    /// executing it) only resumes the stream at its next one, and a cluster with nothing
    /// to order never gets there: that replica would stay behind for good, and with f
    /// replicas lying in their replies the clients with it (simulator, seeds 2254 and
    /// 3994 with f = 2). So the primary, when it executed past `n`, fills up to the next
    /// checkpoint boundary with empty batches. A faulty replica asking about a stream
    /// that can resume gets nothing filled, and asking again gains it at most that one
    /// interval per stretch of real work: once the boundary is stable, nothing lies
    /// beyond it to fill. Empty batches go out only while no request waits
    /// (`maybe_propose`).
    fn fill_for_a_cut(&mut self, n: SeqNum) {
        if !self.is_primary()
            || self.status != super::Status::Normal
            || n != self.stable.n
            || self.executed_n <= n
        {
            return;
        }
        let ci = self.config.checkpoint_interval;
        let boundary = self.executed_n.div_ceil(ci) * ci;
        if boundary > self.fill_to {
            self.fill_to = boundary;
            self.drop_input("filled_to_checkpoint_for_a_cut");
        }
    }

    /// Drops relayable messages that a stable checkpoint made useless: everything a
    /// sender certified up to and including its CHECKPOINT(n).
    pub(super) fn truncate_streams(&mut self, n: SeqNum) {
        for s in &mut self.streams {
            if let Some(&c) = s.checkpoint_counters.get(&n) {
                s.retained = s.retained.split_off(&c);
            }
            s.checkpoint_counters = s.checkpoint_counters.split_off(&n);
        }
    }
}
