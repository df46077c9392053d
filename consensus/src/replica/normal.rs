//! Normal-case operation (MinBFT section 5, Figure 1): the primary batches client
//! requests into PREPAREs certified by its USIG; a backup that accepts a PREPARE sends a
//! COMMIT carrying the batch digest; f+1 matching votes (the PREPARE counts as the
//! primary's) execute the batch in the order of the primary's counters.
//!
//! Clean-cut rule: a batch right after a checkpoint boundary is neither proposed nor
//! accepted before the boundary batch executed, so every correct replica's CHECKPOINT(n)
//! precedes, in its own counter order, all its messages about batches above `n`.

use super::fifo::Flow;
use super::{
    HELD_READ_BYTES_MAX, HELD_READS_MAX, HeldRead, Intent, Output, PendingRequest, READ_HOLD_TICKS,
    Replica, Slot, Status,
};
use crate::message::{
    Batch, Commit, Prepare, PrepareHeader, Reply, Request, read_only_replier, result_digest,
};
use crate::types::{ClientId, Digest, SeqNum, View};

impl Replica {
    pub(super) fn on_request(&mut self, req: Request) {
        if req.read_only {
            // A read right after a write reaches every replica while the slowest of the
            // replicas that will execute the write has only accepted it: answered at
            // once, its reply would differ, and the client would have to order the read.
            // Held until the batches accepted by now execute (or for a few ticks), all
            // replies match. Waiting only makes the state read later, never older.
            if self.status == Status::Normal
                && self.prepared_n > self.executed_n
                && self.held_reads.len() < HELD_READS_MAX
                && self.held_read_bytes + req.op.len() <= HELD_READ_BYTES_MAX
            {
                self.held_read_bytes += req.op.len();
                self.held_reads.push_back(HeldRead {
                    until: self.prepared_n,
                    arrived_tick: self.ticks,
                    request: req,
                });
            } else {
                self.outputs.push(Output::ExecuteReadOnly { request: req });
            }
            return;
        }
        if let Some(rec) = self.clients.get(&req.client) {
            if req.seq < rec.last_seq {
                self.drop_input("old_request");
                return;
            }
            if req.seq == rec.last_seq {
                // Exactly-once: a re-sent request gets the cached reply (once executed).
                if let Some(result) = rec.result.clone() {
                    self.replies_from_cache += 1;
                    self.send_reply(req.client, req.seq, false, result);
                    self.client_still_waits(req.client, req.seq);
                }
                return;
            }
        }
        if let Some(p) = self.pending.get(&req.client)
            && p.request.seq >= req.seq
        {
            return;
        }
        if self.pending.len() >= self.config.clients_max && !self.pending.contains_key(&req.client)
        {
            self.drop_input("pending_full");
            return;
        }
        let arrived_tick = self.ticks;
        self.arrivals += 1;
        self.pending.insert(
            req.client,
            PendingRequest {
                request: req,
                arrived_tick,
                arrival: self.arrivals,
                proposed: false,
            },
        );
    }

    /// The primary cuts the next batch while no UI is outstanding: requests arriving
    /// during a createUI ride in the next PREPARE (the paper's batching optimisation).
    pub(super) fn maybe_propose(&mut self) {
        if !self.is_primary()
            || self.rebasing.is_some()
            || self.status != Status::Normal
            || self.ui_outstanding.is_some()
            || !self.ui_queue.is_empty()
            || self.state_transfer.is_some()
        {
            return;
        }
        let n = self.proposed_n + 1;
        if n > self.exec_n + self.config.pipeline_max || n > self.log_window_top() {
            return;
        }
        if self.config.is_checkpoint(n - 1) && self.executed_n < n - 1 {
            return; // clean-cut rule
        }
        if let Some(r) = self.reproposals.get(&n).copied() {
            // Re-propose what the NEW-VIEW fixed, with its original timestamp.
            let Some(batch) = self.reproposal_batch(&r) else {
                panic!("I7: the new primary lacks a batch its own NEW-VIEW re-proposes");
            };
            let header = PrepareHeader {
                view: self.view,
                n,
                timestamp_ns: r.timestamp_ns,
                batch_digest: r.batch_digest,
            };
            self.proposed_n = n;
            self.enqueue(Intent::Prepare { header, batch });
            return;
        }
        if !self.reproposals.is_empty() && n <= *self.reproposals.keys().next_back().unwrap() {
            return;
        }
        if !self.fresh_allowed(n) {
            return; // wait for the view-top certificate of this view
        }
        if self.now_ns == 0 {
            // No clock reading yet (a request can arrive before the first tick): a
            // PREPARE stamped now would be stale for every backup and wait for votes
            // that never come, until the request timers replace this primary.
            return;
        }
        // Oldest first. In client-id order (the map's), a full batch left the highest
        // ids behind for as long as lower ones kept sending: with one request per batch
        // and 64 clients, the backups' timers for those requests ran out and replaced
        // a correct primary about once a second.
        let mut waiting: Vec<(u64, ClientId)> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.proposed)
            .map(|(c, p)| (p.arrival, *c))
            .collect();
        waiting.sort_unstable();
        let mut batch = Batch::default();
        let mut bytes = 0;
        for (_, client) in waiting {
            let p = self.pending.get_mut(&client).expect("listed above");
            if batch.requests.len() >= self.config.batch_requests_max
                || (bytes + p.request.op.len() > self.config.batch_bytes_max
                    && !batch.requests.is_empty())
            {
                break;
            }
            bytes += p.request.op.len();
            p.proposed = true;
            batch.requests.push(p.request.clone());
        }
        batch.rebases = self.rebases_to_propose();
        if batch.is_empty() && n > self.fill_to {
            return; // (empty batches only to reach a checkpoint someone waits for)
        }
        let timestamp_ns = self.now_ns.max(self.last_timestamp_ns + 1);
        // Each request was hashed when its signature was checked.
        let digests: Vec<Digest> = batch
            .requests
            .iter()
            .map(|r| crate::validate::request_digest(self.crypto.as_ref(), r))
            .collect();
        let header = PrepareHeader {
            view: self.view,
            n,
            timestamp_ns,
            batch_digest: batch.digest_of(&digests),
        };
        self.proposed_n = n;
        self.enqueue(Intent::Prepare { header, batch });
    }

    pub(super) fn on_prepare(&mut self, p: &Prepare) -> Flow {
        let h = p.header;
        if h.view > self.view || (h.view == self.view && self.status != Status::Normal) {
            return Flow::Defer;
        }
        let within_window = h.n <= self.log_window_top();
        if within_window {
            // Kept for the omission check only within the log window: no correct
            // replica prepared a batch beyond it, and a faulty former primary could
            // otherwise add an entry per old-view message it sends.
            self.peer_accepted[p.primary as usize].insert((h.view, h.n), h);
        }
        if h.view < self.view {
            self.drop_input("old_view");
            return Flow::Done;
        }
        if !within_window {
            // Beyond the log window: judged once a stable checkpoint moves it.
            self.drop_input("prepare_beyond_log_window");
            return Flow::Defer;
        }
        if h.n <= self.prepared_n {
            let known = self
                .log
                .get(&(h.view, h.n))
                .is_some_and(|s| s.prepare.header == h);
            if h.n > self.stable.n && !known {
                // A second PREPARE for a number already used in this view: equivocation.
                self.drop_input("prepare_equivocation");
                self.reject_prepare(p);
                self.suspect_primary();
            }
            return Flow::Done;
        }
        if self.config.is_checkpoint(h.n - 1) && self.executed_n < h.n - 1 {
            return Flow::Defer; // clean-cut rule
        }
        if h.n > self.prepared_n + 1 && self.catching_up_to() >= h.n - 1 {
            // Our stream of the primary resumed past batches we lack (at its view-top
            // CHECKPOINT, after a gap nobody filled) and we will stand at that checkpoint
            // by state transfer: judge this PREPARE then, instead of refusing what the
            // others accepted and staying behind until the next checkpoint.
            self.drop_input("prepare_deferred_until_caught_up");
            return Flow::Defer;
        }
        if h.n != self.prepared_n + 1 {
            self.drop_input("prepare_out_of_order");
            self.reject_prepare(p);
            self.suspect_primary();
            return Flow::Done;
        }
        let reproposal = self.reproposals.get(&h.n).copied();
        if let Some(r) = reproposal {
            if r.timestamp_ns != h.timestamp_ns || r.batch_digest != h.batch_digest {
                self.drop_input("reproposal_mismatch");
                self.reject_prepare(p);
                self.suspect_primary();
                return Flow::Done;
            }
        } else {
            if self.view > 0 && !self.view_certs.contains_key(&self.view) {
                return Flow::Defer; // fresh proposals start above the view-top certificate
            }
            if !self.fresh_allowed(h.n) {
                self.drop_input("fresh_prepare_below_view_top");
                self.reject_prepare(p);
                self.suspect_primary();
                return Flow::Done;
            }
            if self.now_ns == 0 {
                return Flow::Defer; // no clock reading yet: judge it at the first tick
            }
            if !self.timestamp_ok(h.timestamp_ns) && !self.committed_by_others(p) {
                if self.timestamp_stale(h.timestamp_ns) {
                    // Too old for our clock: either a faulty primary, or we are catching
                    // up (after a restart or a state transfer) on a batch the others
                    // decided long ago. Wait for their COMMITs: f of them with the
                    // PREPARE are a commit quorum, so one correct replica judged this
                    // timestamp against its clock when it was fresh. Rejecting would
                    // leave us behind until the next checkpoint, forever in an idle
                    // cluster. A faulty primary's stale batch never gathers those votes
                    // and the request timers replace it.
                    return Flow::Defer;
                }
                self.drop_input("bad_timestamp");
                self.reject_prepare(p);
                self.suspect_primary();
                return Flow::Done;
            }
        }
        // Accept.
        self.prepared_n = h.n;
        self.proposed_n = self.proposed_n.max(h.n);
        self.last_timestamp_ns = self.last_timestamp_ns.max(h.timestamp_ns);
        self.outputs
            .push(Output::Persist(super::PersistRecord::Accepted(p.clone())));
        self.log.insert((h.view, h.n), Slot { prepare: p.clone() });
        // The REBASEs it orders also reach their senders' streams this way (I8).
        for r in &p.batch.rebases {
            if r.sender != self.id {
                self.receive_ui(crate::message::UiMessage::Rebase(r.clone()));
            }
        }
        self.votes
            .entry((h.view, h.n))
            .or_default()
            .insert(p.primary, h);
        if p.primary != self.id {
            self.enqueue(Intent::Commit {
                header: h,
                primary_ui: p.ui.clone(),
            });
        }
        Flow::Done
    }

    /// Remembers a PREPARE we refused, so its primary cannot later report it as accepted.
    fn reject_prepare(&mut self, p: &Prepare) {
        let h = p.header;
        let rejected = &mut self.peer_rejected[p.primary as usize];
        rejected.insert((h.view, h.n, h.batch_digest));
        if rejected.len() > self.config.holdback_max {
            rejected.pop_first();
        }
    }

    /// In a view after a view change, fresh batches come only above the view-top
    /// checkpoint, once it is certified.
    pub(super) fn fresh_allowed(&self, n: SeqNum) -> bool {
        if self.view == 0 {
            return true;
        }
        self.view_certs.get(&self.view).is_some_and(|c| n > c.n)
    }

    /// Backups check the primary's clock: monotonic, and within the configured skew of
    /// their own clock input.
    fn timestamp_ok(&self, ts: u64) -> bool {
        ts > self.last_timestamp_ns
            && ts <= self.now_ns.saturating_add(self.config.timestamp_skew_ns)
            && ts >= self.now_ns.saturating_sub(self.config.timestamp_skew_ns)
    }

    /// True when the primary's timestamp is older than our clock allows (not merely
    /// non-monotonic or in the future).
    fn timestamp_stale(&self, ts: u64) -> bool {
        ts > self.last_timestamp_ns
            && ts < self.now_ns.saturating_sub(self.config.timestamp_skew_ns)
    }

    /// True when f backups other than us COMMITted exactly this PREPARE: with the
    /// primary's PREPARE that is f+1 matching votes, a decided batch (at least one of
    /// them is correct and applied the acceptance rules when it voted).
    fn committed_by_others(&self, p: &Prepare) -> bool {
        let h = p.header;
        self.votes.get(&(h.view, h.n)).is_some_and(|votes| {
            votes
                .iter()
                .filter(|&(&j, &vh)| j != self.id && j != p.primary && vh == h)
                .count()
                >= self.config.quorum() - 1
        })
    }

    pub(super) fn on_commit(&mut self, c: &Commit) -> Flow {
        let h = c.header;
        if h.view > self.view || (h.view == self.view && self.status != Status::Normal) {
            return Flow::Defer;
        }
        self.peer_accepted[c.sender as usize].insert((h.view, h.n), h);
        if h.n <= self.stable.n {
            return Flow::Done;
        }
        // A vote of an older view still counts for that view: a batch committed there
        // may be executed even after this replica moved on (it is in our VIEW-CHANGE, so
        // every later NEW-VIEW re-proposes it unchanged).
        // The commit proves the primary certified this PREPARE: make sure we fetch it.
        let ps = &mut self.streams[c.primary as usize];
        ps.known_max = ps.known_max.max(c.primary_ui.counter);
        self.votes
            .entry((h.view, h.n))
            .or_default()
            .insert(c.sender, h);
        Flow::Done
    }

    /// Executes the next batch once f+1 matching votes cover it. True if it did.
    pub(super) fn try_execute(&mut self) -> bool {
        let mut progressed = false;
        loop {
            if self.state_transfer.is_some() {
                return progressed;
            }
            if self.digest_asked.is_some()
                || (self.exec_n > self.executed_n && self.wants_digest(self.exec_n))
            {
                // A checkpoint's core state is the client table as its batch completes
                // or as its digest comes back (`own_checkpoint`): the next batch must not
                // touch the table before. Otherwise a replica that had several batches
                // committed at once (catching up, re-proposals, a certificate for a
                // batch it executed) would vote a digest the others do not.
                return progressed;
            }
            let n = self.exec_n + 1;
            let Some((h, batch)) = self.committed_batch(n) else {
                return progressed;
            };
            self.execute(h, batch);
            progressed = true;
        }
    }

    /// Batch `n` as prepared in the highest view up to ours in which it gathered f+1
    /// matching votes, if any. Called on every input: it visits the log's views (a
    /// handful), not its entries, since the log holds every batch since the stable
    /// checkpoint (and, before this, a replica waiting for a batch's votes walked all of
    /// them each time: with checkpoints turned off, a fifth of all CPU after 4000 batches).
    fn committed_batch(&self, n: SeqNum) -> Option<(PrepareHeader, Batch)> {
        let mut view = self.view;
        loop {
            let ((v, k), slot) = self.log.range(..=(view, n)).next_back()?;
            if *v < view {
                // Nothing of view `view` at or below n: go on with the highest view below it
                // that has entries, looking for n there.
                view = *v;
                continue;
            }
            if *k == n {
                let h = slot.prepare.header;
                let matching = self
                    .votes
                    .get(&(*v, n))
                    .map_or(0, |votes| votes.values().filter(|&&vh| vh == h).count());
                if matching >= self.config.quorum() {
                    return Some((h, slot.prepare.batch.clone()));
                }
            }
            view = view.checked_sub(1)?;
        }
    }

    /// Asks the application for its digest at batch `n` (just executed, nothing after it
    /// handed over): until the answer, no later batch is, so the checkpoint's core state
    /// is the one at `n` too.
    pub(super) fn ask_digest(&mut self, n: SeqNum) {
        assert_eq!(
            self.exec_n, n,
            "digest asked with later batches handed over"
        );
        self.digest_asked = Some(n);
        self.outputs.push(Output::ComputeDigest { n });
    }

    /// Whether batch `n` ends with a checkpoint (periodic, or the top of a new view).
    fn wants_digest(&self, n: SeqNum) -> bool {
        self.config.is_checkpoint(n) || self.view_top == Some(n)
    }

    fn execute(&mut self, h: PrepareHeader, batch: Batch) {
        // I2: batches are handed to the application in order, each exactly once.
        assert_eq!(h.n, self.exec_n + 1, "I2: execution out of order");
        self.exec_n = h.n;
        self.executed_log.insert(h.n, h);
        self.apply_rebases(&batch.rebases, h.n);
        let mut included = Vec::new();
        let mut ids = Vec::new();
        for r in batch.requests {
            // Executed now, or before (it may have come with an installed state): no
            // longer pending either way.
            if self
                .pending
                .get(&r.client)
                .is_some_and(|p| p.request.seq <= r.seq)
            {
                self.pending.remove(&r.client);
            }
            if r.seq <= self.clients.get(&r.client).map_or(0, |rec| rec.last_seq) {
                continue; // exactly-once: already executed (and no record for seq 0)
            }
            let rec = self.clients.entry(r.client).or_default();
            rec.last_seq = r.seq;
            rec.last_n = h.n;
            rec.result = None;
            ids.push((r.client, r.seq));
            included.push(r);
        }
        self.evict_clients();
        self.executing.insert(h.n, ids);
        let want_digest = self.wants_digest(h.n);
        self.outputs.push(Output::Execute {
            n: h.n,
            timestamp_ns: h.timestamp_ns,
            requests: included,
            want_digest,
        });
    }

    pub(super) fn on_executed(
        &mut self,
        n: SeqNum,
        results: Vec<Vec<u8>>,
        app_digest: Option<Digest>,
    ) {
        // I3: completions arrive in the order executions were asked for.
        assert_eq!(n, self.executed_n + 1, "I3: completion out of order");
        let ids = self
            .executing
            .remove(&n)
            .expect("I3: completion for an unknown batch");
        assert_eq!(
            ids.len(),
            results.len(),
            "I3: one result per executed request"
        );
        self.executed_n = n;
        self.release_reads();
        // Progress in this view: the next view change starts from the base timeout again.
        self.view_change_timeout_ticks = self.config.view_change_timeout_ticks;
        for ((client, seq), result) in ids.into_iter().zip(results) {
            if let Some(rec) = self.clients.get_mut(&client)
                && rec.last_seq == seq
            {
                rec.result = Some(result.clone());
            }
            self.send_reply(client, seq, false, result);
        }
        match app_digest {
            Some(d) => self.on_digest(n, d),
            None => {
                // I4: every periodic checkpoint batch was executed with want_digest.
                assert!(
                    !self.config.is_checkpoint(n),
                    "I4: checkpoint batch {n} without digest"
                );
                if self.view_top == Some(n) && self.exec_n == n {
                    // The NEW-VIEW naming n as its top arrived after n was handed over
                    // (and nothing after it was: that would be in the digest's state).
                    self.ask_digest(n);
                }
            }
        }
    }

    /// The application's digest at batch `n` (just executed, or asked for).
    pub(super) fn on_digest(&mut self, n: SeqNum, app_digest: Digest) {
        if self.digest_asked == Some(n) {
            self.digest_asked = None;
        }
        if n != self.executed_n || n != self.exec_n {
            if n == self.executed_n && !self.own_checkpoints.contains_key(&n) {
                // A later batch was handed over before this digest came back: the core
                // state is past n, so no checkpoint of ours at n (`try_execute` and
                // `ask_digest` keep this from happening; counted so tests can see it).
                self.drop_input("digest_after_later_batch");
            }
            return; // state moved on since it was asked for
        }
        if let Some(cert) = self.cert_awaiting_digest.take_if(|c| c.n == n) {
            self.own_checkpoint(n, app_digest);
            self.consider_cert(cert);
        }
        if self.config.is_checkpoint(n) && !self.own_checkpoints.contains_key(&n) {
            // The capture ran between the last tick and this input: the next tick
            // measures it (`measure_checkpoint_stall`). None before the first tick, and
            // none for a primary that let a grace run out in this view.
            let forfeited = self.checkpoint_grace.forfeited_in == Some(self.view);
            self.checkpoint_grace = CheckpointGrace {
                n,
                capture_from_ns: (self.now_ns > 0 && !forfeited).then_some(self.now_ns),
                ticks_left: 0,
                forfeited_in: self.checkpoint_grace.forfeited_in,
            };
            self.take_checkpoint(n, app_digest, None);
            // A certificate for n may have formed before we executed n: judge our own
            // state against it now (self-repair would otherwise miss it).
            if let Some(cert) = self.cert_from_votes(n) {
                self.consider_cert(cert);
            }
        }
        if self.view > 0
            && self.view_top == Some(n)
            && self.status == Status::Normal
            && self.view_top_sent != Some(self.view)
        {
            self.view_top_sent = Some(self.view);
            self.take_checkpoint(n, app_digest, Some(self.view));
        }
    }

    /// Answers the held reads whose batches executed or whose wait is over.
    pub(super) fn release_reads(&mut self) {
        if self.held_reads.is_empty() {
            return;
        }
        let (executed, ticks) = (self.executed_n, self.ticks);
        let held = std::mem::take(&mut self.held_reads);
        for h in held {
            if h.until <= executed || ticks.saturating_sub(h.arrived_tick) >= READ_HOLD_TICKS {
                self.held_read_bytes -= h.request.op.len();
                self.outputs
                    .push(Output::ExecuteReadOnly { request: h.request });
            } else {
                self.held_reads.push_back(h);
            }
        }
    }

    pub(super) fn on_read_only_executed(&mut self, client: ClientId, seq: u64, result: Vec<u8>) {
        if read_only_replier(client, seq, self.config.n()) == self.id {
            self.reply_with(client, seq, true, result, None);
        } else {
            let digest = result_digest(&result);
            self.reply_with(client, seq, true, Vec::new(), Some(digest));
        }
    }

    pub(super) fn send_reply(
        &mut self,
        client: ClientId,
        seq: u64,
        read_only: bool,
        result: Vec<u8>,
    ) {
        self.reply_with(client, seq, read_only, result, None);
    }

    fn reply_with(
        &mut self,
        client: ClientId,
        seq: u64,
        read_only: bool,
        result: Vec<u8>,
        omitted: Option<Digest>,
    ) {
        let mut reply = Reply {
            view: self.view,
            replica: self.id,
            client,
            seq,
            read_only,
            result,
            omitted,
            mac: [0; 32],
        };
        reply.mac = self.crypto.reply_mac(self.id, client, &reply.mac_bytes());
        self.outputs.push(Output::Reply(reply));
    }

    /// A replica suspects the primary when a request waits longer than the timeout. The
    /// primary itself does too: a primary that cannot get its batches executed has lost
    /// its backups to another view and must follow them.
    pub(super) fn check_request_timers(&mut self) {
        if self.status != Status::Normal {
            return;
        }
        self.relay_waiting_rebases();
        self.apply_checkpoint_grace();
        let timeout = self.config.request_timeout_ticks;
        let ticks = self.ticks;
        // A REBASE waits for its ordering like a request (I8).
        if self
            .pending
            .values()
            .any(|p| ticks.saturating_sub(p.arrived_tick) > timeout)
            || self
                .pending_rebases
                .values()
                .any(|p| ticks.saturating_sub(p.arrived_tick) > timeout)
        {
            self.suspect_primary();
        }
    }

    /// After a view change every pending request gets a fresh timer and may be proposed
    /// again by the new primary (execution filters duplicates).
    pub(super) fn reset_pending(&mut self) {
        let ticks = self.ticks;
        for p in self.pending.values_mut() {
            p.arrived_tick = ticks;
            p.proposed = false;
        }
        for p in self.pending_rebases.values_mut() {
            p.arrived_tick = ticks;
            p.proposed = false;
            p.relayed = false;
        }
    }
}

/// Time a backup gives the primary to finish a periodic checkpoint that the backup has
/// finished itself.
///
/// A checkpoint's capture blocks a replica's loop for a time that grows with the data
/// written since the last one (seconds after 100 MB; `docs/recovery.md`), and no ticks
/// reach the core meanwhile. The replicas start it at the same batch but not at the same
/// moment, and they take different times, so a backup may finish a second before the
/// primary and then count its pending requests' age while the primary, still capturing,
/// cannot order them: the cluster changed view after large copies. So while the primary
/// owes us its CHECKPOINT for the batch at which we took ours, pending requests do not
/// age, for at most twice our own capture's stall: the primary captures the same state.
/// A correct primary sends that CHECKPOINT as soon as its capture ends. A faulty one
/// that withholds it gains this grace once: a primary that lets a grace run out gets no
/// more in this view (`forfeited_in`), so its requests age as usual from then on. One
/// that sends its CHECKPOINTs late, each within the grace, slows ordering at most to
/// twice the replicas' own capture time. Nothing at all is given when checkpoints are
/// cheap (the stall is the gap between two ticks beyond the tick itself; in the
/// simulator, none) or before the replica's first tick.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CheckpointGrace {
    /// The checkpoint we took last.
    pub n: SeqNum,
    /// The time of the last tick before our capture, until the next tick measures it.
    pub capture_from_ns: Option<u64>,
    /// Ticks of grace left.
    pub ticks_left: u64,
    /// The view whose primary let a grace run out without its CHECKPOINT.
    pub forfeited_in: Option<View>,
}

/// The grace is at most this many request timeouts, however long our capture took.
const CHECKPOINT_GRACE_MAX_TIMEOUTS: u64 = 30;

impl Replica {
    /// Called at each tick before `now_ns` advances: turns the stall of our last capture
    /// into grace ticks.
    pub(super) fn measure_checkpoint_stall(&mut self, now_ns: u64) {
        let Some(from) = self.checkpoint_grace.capture_from_ns.take() else {
            return;
        };
        let tick_ns = self.config.tick_ns.max(1);
        let stall_ns = now_ns.saturating_sub(from).saturating_sub(tick_ns);
        let max = CHECKPOINT_GRACE_MAX_TIMEOUTS.saturating_mul(self.config.request_timeout_ticks);
        self.checkpoint_grace.ticks_left = (stall_ns.saturating_mul(2) / tick_ns).min(max);
    }

    /// One tick of grace: pending requests and REBASEs do not age while the primary
    /// owes the CHECKPOINT of our last checkpoint (`CheckpointGrace`).
    fn apply_checkpoint_grace(&mut self) {
        let grace = &mut self.checkpoint_grace;
        if grace.ticks_left == 0 {
            return;
        }
        let primary = self.config.primary(self.view);
        // Its CHECKPOINT at or above n, processed in its stream (kept down to the
        // stable checkpoint, which n is at or above).
        let sent = self.streams[primary as usize]
            .checkpoint_counters
            .range(grace.n..)
            .next()
            .is_some();
        if primary == self.id || sent {
            grace.ticks_left = 0;
            return;
        }
        grace.ticks_left -= 1;
        if grace.ticks_left == 0 {
            // Run out while the primary still owes its CHECKPOINT.
            grace.forfeited_in = Some(self.view);
        }
        let ticks = self.ticks;
        for p in self.pending.values_mut() {
            p.arrived_tick = (p.arrived_tick + 1).min(ticks);
        }
        for p in self.pending_rebases.values_mut() {
            p.arrived_tick = (p.arrived_tick + 1).min(ticks);
        }
    }
}
