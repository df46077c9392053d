//! A MinPBFT replica as a deterministic state machine (MinBFT section 5).
//!
//! `Replica::step(input) -> Vec<Output>`: inputs are verified messages, client requests,
//! clock ticks and completions (a UI created, a batch executed, state installed); outputs
//! are sends, UI creations, executions, replies and records to persist. The driver performs
//! outputs in order, and must make every `Persist` durable before any later `Send`.
//!
//! Modules follow the protocol's phases: `fifo` (per-sender ordering by USIG counter),
//! `normal` (requests, PREPARE, COMMIT, execution, replies), `checkpoint` (checkpoints,
//! log truncation, state transfer) and `view_change`. Invariants are numbered in
//! `consensus/README.md` and cited as `I<k>` at the asserts.

mod checkpoint;
mod durable;
mod fifo;
mod normal;
mod rebase;
pub(crate) mod view_change;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::message::{
    CheckpointCert, NewView, PeerMessage, Prepare, PrepareHeader, Reply, Request, UiMessage,
};
use crate::types::{ClientId, Config, Digest, ReplicaId, SeqNum, Ui, View};
use crate::validate::{Reject, Verified};

pub use checkpoint::{ClientRecord, CoreState, RebaseRecord, checkpoint_digest};
pub use durable::DurableRecords;

/// What the driver feeds the replica.
#[derive(Clone, Debug)]
pub enum Input {
    /// A message from replica `from`, validated by [`crate::validate::peer_message`].
    Peer {
        from: ReplicaId,
        msg: Verified<PeerMessage>,
    },
    /// A client request, validated by [`crate::validate::request`].
    Request(Verified<Request>),
    /// The clock advanced by one tick and now reads `now_ns`.
    Tick { now_ns: u64 },
    /// The USIG finished the `CreateUi` asked for last.
    UiCreated(Ui),
    /// The application executed batch `n`: one result per request in the `Execute`, and,
    /// for a checkpoint batch, the application's state digest.
    Executed {
        n: SeqNum,
        results: Vec<Vec<u8>>,
        app_digest: Option<Digest>,
    },
    /// The application's state digest asked for by [`Output::ComputeDigest`].
    Digest { n: SeqNum, app_digest: Digest },
    /// The application answered a read-only request.
    ReadOnlyExecuted {
        client: ClientId,
        seq: u64,
        result: Vec<u8>,
    },
    /// The driver installed the application state certified by `cert` (after verifying
    /// `checkpoint_digest(app, core_state) == cert.state_digest`).
    StateInstalled {
        cert: CheckpointCert,
        core_state: CoreState,
    },
}

/// What the replica asks the driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: ReplicaId,
        msg: PeerMessage,
    },
    /// Send to every other replica.
    Broadcast(PeerMessage),
    /// Ask the USIG for a UI over `digest`; answered by [`Input::UiCreated`]. At most one
    /// is outstanding at a time.
    CreateUi {
        digest: Digest,
    },
    /// Execute these requests (already filtered for exactly-once) as batch `n`; answer
    /// with the application's state digest when `want_digest` (a checkpoint follows).
    Execute {
        n: SeqNum,
        timestamp_ns: u64,
        requests: Vec<Request>,
        want_digest: bool,
    },
    /// Report the application's current state digest (state as of batch `n`) with
    /// [`Input::Digest`]. Every one must be answered: the core hands over no later
    /// batch until then (the checkpoint's core state must be the one at `n`).
    ComputeDigest {
        n: SeqNum,
    },
    ExecuteReadOnly {
        request: Request,
    },
    Reply(Reply),
    Persist(PersistRecord),
    /// Keep the application's state as of batch `n` (just executed) together with
    /// `core_state`, to serve state transfer; drop snapshots older than the stable one.
    TakeSnapshot {
        n: SeqNum,
        core_state: CoreState,
    },
    /// Checkpoint `n` is stable: snapshots below `n` may go.
    Stable {
        n: SeqNum,
    },
    /// This replica is behind `cert`: fetch and install that state, then answer with
    /// [`Input::StateInstalled`].
    FetchState {
        cert: CheckpointCert,
    },
}

/// Records the driver must make durable before later sends (crash recovery).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistRecord {
    /// The message about to be certified (its UI still blank), persisted before the
    /// `CreateUi` that follows. A replica that crashes after its USIG issued the UI but
    /// before `Sent` reached the log completes this message with the USIG's
    /// `last_issued()` on restart (when the digests match), so no counter value is lost
    /// and its FIFO stream has no hole.
    Intent(UiMessage),
    /// A UI message this replica created (its own log; needed for view changes and
    /// retransmission, and to never lose a counter value).
    Sent(UiMessage),
    /// A PREPARE this replica accepted.
    Accepted(Prepare),
    /// The current view.
    View(View),
    /// A new stable checkpoint: records below it may be discarded.
    Stable(CheckpointCert),
    /// A view-top checkpoint certificate (justifies fresh PREPAREs of that view in a
    /// later VIEW-CHANGE, so it must survive a restart like the PREPAREs it justifies).
    ViewCert(CheckpointCert),
    /// The NEW-VIEW of this view was accepted (a restarted replica must not accept a
    /// relayed copy of it a second time).
    NewViewAccepted(View),
    /// Written by the driver, never emitted by the core: USIG counter values up to
    /// `counter` may be released before their `Sent` record is durable (a runtime that
    /// lets its PREPAREs leave while its log syncs). Every record is truthful when
    /// written: no value above `counter` has been issued. The last one counts.
    Lease(UsigLease),
}

/// A durable promise about the USIG counter (`PersistRecord::Lease`): nothing above
/// `counter` was issued while this lease was the last one. `boot` names the machine's
/// boot in which it was written (Linux `boot_id`): within the same boot the page cache
/// still holds every record the runtime wrote before a message left, so the lease only
/// matters after a machine restart (power cut, kernel crash), when the log's unsynced
/// tail may be gone and the counter must move past every value that may have left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsigLease {
    pub counter: u64,
    pub boot: String,
}

/// What a restarting replica read back from its durable records.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub view: View,
    pub stable: CheckpointCert,
    /// Its own messages above the stable checkpoint, in counter order.
    pub sent: Vec<UiMessage>,
    pub accepted: Vec<Prepare>,
    /// The client table at `stable` (the application restores its own snapshot).
    pub core_state: CoreState,
    /// The last counter the USIG issued (from `Usig::last_issued`).
    pub usig_counter: u64,
    /// The last view whose NEW-VIEW was accepted.
    pub new_view_accepted: View,
    /// View-top certificates, by view.
    pub view_certs: Vec<CheckpointCert>,
}

impl Recovered {
    /// The last counter of this replica's own messages in its log (0 if none).
    pub fn last_logged_counter(&self) -> u64 {
        self.sent.iter().map(UiMessage::counter).max().unwrap_or(0)
    }

    /// True if the USIG issued counters the log does not hold: `Replica::recover` will
    /// make this replica re-base (I8) instead of waiting for a hole nobody can fill.
    pub fn usig_ahead_of_log(&self) -> bool {
        self.usig_counter > self.last_logged_counter()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Normal,
    /// Sent VIEW-CHANGE for `self.view`, waiting for its NEW-VIEW.
    ViewChange,
}

/// A message waiting for this replica's USIG.
#[derive(Clone, Debug)]
enum Intent {
    Prepare {
        header: PrepareHeader,
        batch: crate::message::Batch,
    },
    Commit {
        header: PrepareHeader,
        primary_ui: Ui,
    },
    Checkpoint {
        n: SeqNum,
        state_digest: Digest,
        view_top: Option<View>,
    },
    ViewChange {
        new_view: View,
    },
    NewView {
        nv: NewView,
    },
    Rebase {
        last_logged: u64,
    },
}

#[derive(Clone, Debug)]
struct PendingRequest {
    request: Request,
    arrived_tick: u64,
    /// Arrival order on this replica (`Replica::arrivals`): a primary proposes the
    /// oldest first.
    arrival: u64,
    /// Set on the primary once the request is in a batch it proposed.
    proposed: bool,
}

/// A read-only request waiting for the batches this replica had accepted when it arrived.
#[derive(Clone, Debug)]
struct HeldRead {
    until: SeqNum,
    arrived_tick: u64,
    request: Request,
}

/// Longest a read-only request is held for accepted batches to execute (ticks).
const READ_HOLD_TICKS: u64 = 2;
/// Most read-only requests, and most bytes of them, held at once; beyond, reads are
/// answered at once (as without holding), so a flood of reads costs no memory.
const HELD_READS_MAX: usize = 4096;
const HELD_READ_BYTES_MAX: usize = 16 << 20;

/// One batch slot above the stable checkpoint.
#[derive(Clone, Debug)]
struct Slot {
    prepare: Prepare,
}

/// A MinPBFT replica.
pub struct Replica {
    id: ReplicaId,
    config: Config,
    crypto: Box<dyn Crypto + Send>,

    view: View,
    status: Status,
    now_ns: u64,
    ticks: u64,
    /// Tick of the last message from any peer: a gap in a stream only ages while the
    /// replica hears from its peers (`check_gaps`).
    peer_heard_tick: u64,

    // USIG: messages waiting for a UI; the head is outstanding when `ui_outstanding`.
    ui_queue: VecDeque<Intent>,
    ui_outstanding: Option<UiMessage>,
    own_counter: u64,

    streams: Vec<fifo::Stream>,

    // Normal case.
    pending: BTreeMap<ClientId, PendingRequest>,
    /// Requests that became pending so far (`PendingRequest::arrival`).
    arrivals: u64,
    /// Read-only requests held until the batches accepted before they arrived execute
    /// (see `Replica::on_request`).
    held_reads: VecDeque<HeldRead>,
    held_read_bytes: usize,
    /// Accepted PREPAREs above the stable checkpoint, by (view, n).
    log: BTreeMap<(View, SeqNum), Slot>,
    /// COMMIT votes (the primary's PREPARE counts as its vote), by (view, n).
    votes: BTreeMap<(View, SeqNum), BTreeMap<ReplicaId, PrepareHeader>>,
    /// Highest n accepted from the primary in the current view.
    prepared_n: SeqNum,
    /// Highest n this primary has proposed (>= prepared_n).
    proposed_n: SeqNum,
    last_timestamp_ns: u64,
    /// Batches handed to the application (`exec_n`) and completed (`executed_n`).
    exec_n: SeqNum,
    executed_n: SeqNum,
    executed_log: BTreeMap<SeqNum, PrepareHeader>,
    executing: BTreeMap<SeqNum, Vec<(ClientId, u64)>>,
    clients: BTreeMap<ClientId, ClientRecord>,
    /// What each peer accepted (its PREPAREs as primary, its COMMITs as backup), for the
    /// omission check on its VIEW-CHANGE.
    peer_accepted: Vec<BTreeMap<(View, SeqNum), PrepareHeader>>,
    /// What each peer certified that we found inconsistent, for the inclusion check.
    peer_rejected: Vec<BTreeSet<(View, SeqNum, Digest)>>,

    // Checkpoints.
    stable: CheckpointCert,
    checkpoint_votes: BTreeMap<SeqNum, BTreeMap<ReplicaId, crate::message::Checkpoint>>,
    /// View-top CHECKPOINT votes and certificates, by view.
    view_top_votes: BTreeMap<View, BTreeMap<ReplicaId, crate::message::Checkpoint>>,
    view_certs: BTreeMap<View, CheckpointCert>,
    /// Last batch the NEW-VIEW of the current view re-proposes (None in view 0).
    view_top: Option<SeqNum>,
    view_top_sent: Option<View>,
    view_cert_request_tick: u64,
    own_checkpoints: BTreeMap<SeqNum, (Digest, CoreState)>,
    state_transfer: Option<checkpoint::Transfer>,
    best_cert: Option<CheckpointCert>,
    /// A certificate at our last executed batch, waiting for our own digest there.
    cert_awaiting_digest: Option<CheckpointCert>,
    /// A `ComputeDigest` is out for this batch: no later batch is handed over until its
    /// answer (`Replica::ask_digest`).
    digest_asked: Option<SeqNum>,
    behind_since_tick: Option<u64>,
    /// Extra time the primary gets to finish a checkpoint we finished (`normal.rs`).
    checkpoint_grace: normal::CheckpointGrace,

    // View change.
    /// Highest view each replica asked for (REQ-VIEW-CHANGE or VIEW-CHANGE).
    requested_view: Vec<View>,
    /// Per client: the seq of its last executed request, the view and the tick when a
    /// copy of it first arrived after it executed (volatile; `client_still_waits`).
    resent: BTreeMap<ClientId, (u64, View, u64)>,
    sent_req_view_change: Option<View>,
    req_view_change_tick: u64,
    view_changes: BTreeMap<View, BTreeMap<ReplicaId, crate::message::ViewChange>>,
    view_change_started_tick: u64,
    view_change_timeout_ticks: u64,
    reproposals: BTreeMap<SeqNum, crate::message::Reproposal>,
    new_view_sent: Option<View>,
    last_new_view: Option<NewView>,
    new_view_accepted: View,
    new_view_request_tick: u64,
    invalid_view_changes: BTreeSet<(ReplicaId, u64)>,
    /// The view whose NEW-VIEW we refused because it rests on a VIEW-CHANGE we skipped
    /// as void: we join that view by its view-top certificate instead.
    void_new_view: Option<View>,

    // Re-basing (I8).
    /// Some while this replica re-bases: its REBASE counter (0 until certified).
    rebasing: Option<u64>,
    /// Executed REBASEs (replicated, part of the checkpointed core state).
    rebases: BTreeMap<ReplicaId, RebaseRecord>,
    /// REBASEs seen but not executed yet (the primary orders them; backups time them).
    pending_rebases: BTreeMap<ReplicaId, rebase::PendingRebase>,
    /// Highest REBASE counter processed in each sender's stream (0: none).
    rebase_seen: Vec<u64>,
    /// Counter ranges `lo..hi` of each sender skipped because of a REBASE.
    void_ranges: Vec<BTreeMap<u64, u64>>,
    /// A checkpoint boundary the primary fills up to with empty batches, so that even an
    /// idle cluster reaches it: the one at or after the last executed REBASE (so the
    /// re-basing replica is readmitted), or the next one after a replica asked to resume
    /// a stream from our stable checkpoint that the sender never certified
    /// (`on_fetch_from_checkpoint`).
    fill_to: SeqNum,

    dropped: BTreeMap<&'static str, u64>,
    /// Replies sent again from the exactly-once cache (a client re-sent its request).
    replies_from_cache: u64,
    outputs: Vec<Output>,
    /// Simulator hook: certify NEW-VIEWs whose re-proposals were tampered with.
    byzantine_bad_new_view: bool,
    /// Simulator hook: keep certifying everything while re-basing.
    byzantine_keep_talking: bool,
}

impl Replica {
    /// A fresh replica at genesis.
    pub fn new(id: ReplicaId, config: Config, crypto: Box<dyn Crypto + Send>) -> Self {
        Self::recover(id, config, crypto, Recovered::default())
    }

    /// A replica restarting from its durable records. The driver has already restored the
    /// application to the snapshot of `recovered.stable`.
    pub fn recover(
        id: ReplicaId,
        config: Config,
        crypto: Box<dyn Crypto + Send>,
        recovered: Recovered,
    ) -> Self {
        assert!(id < config.n(), "replica id {id} out of range");
        let n = config.n() as usize;
        let vc_timeout = config.view_change_timeout_ticks;
        let mut replica = Replica {
            id,
            crypto,
            view: recovered.view,
            status: Status::Normal,
            now_ns: 0,
            ticks: 0,
            peer_heard_tick: 0,
            ui_queue: VecDeque::new(),
            ui_outstanding: None,
            own_counter: recovered.usig_counter,
            streams: (0..n).map(|_| fifo::Stream::new()).collect(),
            pending: BTreeMap::new(),
            arrivals: 0,
            held_reads: VecDeque::new(),
            held_read_bytes: 0,
            log: BTreeMap::new(),
            votes: BTreeMap::new(),
            prepared_n: recovered.stable.n,
            proposed_n: recovered.stable.n,
            last_timestamp_ns: 0,
            exec_n: recovered.stable.n,
            executed_n: recovered.stable.n,
            executed_log: BTreeMap::new(),
            executing: BTreeMap::new(),
            clients: recovered.core_state.clients.clone(),
            peer_accepted: vec![BTreeMap::new(); n],
            peer_rejected: vec![BTreeSet::new(); n],
            stable: recovered.stable.clone(),
            checkpoint_votes: BTreeMap::new(),
            view_top_votes: BTreeMap::new(),
            view_certs: BTreeMap::new(),
            view_top: None,
            view_top_sent: None,
            view_cert_request_tick: 0,
            own_checkpoints: BTreeMap::new(),
            state_transfer: None,
            best_cert: None,
            cert_awaiting_digest: None,
            digest_asked: None,
            behind_since_tick: None,
            checkpoint_grace: normal::CheckpointGrace::default(),
            requested_view: vec![0; n],
            resent: BTreeMap::new(),
            sent_req_view_change: None,
            req_view_change_tick: 0,
            view_changes: BTreeMap::new(),
            view_change_started_tick: 0,
            view_change_timeout_ticks: vc_timeout,
            reproposals: BTreeMap::new(),
            new_view_sent: None,
            last_new_view: None,
            new_view_accepted: recovered.new_view_accepted,
            new_view_request_tick: 0,
            void_new_view: None,
            invalid_view_changes: BTreeSet::new(),
            rebasing: None,
            rebases: recovered.core_state.rebases.clone(),
            pending_rebases: BTreeMap::new(),
            rebase_seen: vec![0; n],
            void_ranges: vec![BTreeMap::new(); n],
            fill_to: 0,
            dropped: BTreeMap::new(),
            replies_from_cache: 0,
            outputs: Vec::new(),
            byzantine_bad_new_view: false,
            byzantine_keep_talking: false,
            config,
        };
        replica.own_checkpoints.insert(
            recovered.stable.n,
            (recovered.stable.state_digest, recovered.core_state.clone()),
        );
        for c in &recovered.view_certs {
            if let Some(v) = c.view_top {
                replica.view_certs.insert(v, c.clone());
            }
        }
        replica.recover_streams(&recovered);
        replica.recover_rebase(&recovered);
        replica
    }

    pub fn id(&self) -> ReplicaId {
        self.id
    }
    pub fn view(&self) -> View {
        self.view
    }
    pub fn is_primary(&self) -> bool {
        self.config.primary(self.view) == self.id
    }
    pub fn in_view_change(&self) -> bool {
        self.status == Status::ViewChange
    }
    /// Highest batch whose execution completed.
    pub fn executed_n(&self) -> SeqNum {
        self.executed_n
    }
    pub fn stable_checkpoint(&self) -> &CheckpointCert {
        &self.stable
    }
    /// The highest batch this replica proposes or accepts (`Config::log_window`).
    pub(super) fn log_window_top(&self) -> SeqNum {
        self.stable.n.saturating_add(self.config.log_window())
    }
    /// Accepted PREPAREs held above the stable checkpoint (the log checkpoints truncate).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
    /// Messages held for relaying, over all senders (truncated at stable checkpoints).
    pub fn retained_len(&self) -> usize {
        self.streams.iter().map(|s| s.retained.len()).sum()
    }
    /// Replies sent again from the exactly-once cache.
    pub fn replies_from_cache(&self) -> u64 {
        self.replies_from_cache
    }

    /// The last request of `client` this replica executed (exactly-once record).
    pub fn last_executed_seq(&self, client: ClientId) -> Option<u64> {
        self.clients.get(&client).map(|r| r.last_seq)
    }

    /// The request of `client` with `seq` if it waits here to be executed (it was
    /// verified when it arrived). A runtime that moves PREPAREs without their large
    /// operations fills them in from these.
    pub fn pending_request(&self, client: ClientId, seq: u64) -> Option<&Request> {
        self.pending
            .get(&client)
            .map(|p| &p.request)
            .filter(|r| r.seq == seq)
    }

    /// Whether this primary's PREPARE for `n` re-proposes a batch its NEW-VIEW fixed
    /// rather than fresh requests: its requests may have been executed long ago by the
    /// replicas that had them.
    pub fn reproposes(&self, n: SeqNum) -> bool {
        self.reproposals.contains_key(&n)
    }

    /// Byzantine or malformed input dropped so far, by reason.
    pub fn dropped(&self) -> &BTreeMap<&'static str, u64> {
        &self.dropped
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Header of the batch executed at `n`, while it is above the stable checkpoint.
    pub fn executed_header(&self, n: SeqNum) -> Option<&PrepareHeader> {
        self.executed_log.get(&n)
    }

    /// Feeds one input; returns what to do, in order.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        debug_assert!(self.outputs.is_empty());
        match input {
            Input::Peer { from, msg } => self.on_peer(from, msg.into_inner()),
            Input::Request(req) => self.on_request(req.into_inner()),
            Input::Tick { now_ns } => self.on_tick(now_ns),
            Input::UiCreated(ui) => self.on_ui_created(ui),
            Input::Executed {
                n,
                results,
                app_digest,
            } => self.on_executed(n, results, app_digest),
            Input::Digest { n, app_digest } => self.on_digest(n, app_digest),
            Input::ReadOnlyExecuted {
                client,
                seq,
                result,
            } => self.on_read_only_executed(client, seq, result),
            Input::StateInstalled { cert, core_state } => self.on_state_installed(cert, core_state),
        }
        self.pump();
        std::mem::take(&mut self.outputs)
    }

    fn on_peer(&mut self, from: ReplicaId, msg: PeerMessage) {
        self.peer_heard_tick = self.ticks;
        match msg {
            PeerMessage::Ui(m) => self.receive_ui(m),
            PeerMessage::ReqViewChange { view, new_view } => {
                self.on_req_view_change(from, view, new_view)
            }
            PeerMessage::Fetch {
                sender,
                from: lo,
                to: hi,
            } => self.on_fetch(from, sender, lo, hi),
            PeerMessage::Status {
                last_counter,
                stable,
                view,
            } => self.on_status(from, last_counter, stable, view),
            PeerMessage::CertRequest { n } => self.on_cert_request(from, n),
            PeerMessage::Cert(cert) => self.on_cert(cert),
            PeerMessage::NewViewRequest { view } => self.on_new_view_request(from, view),
            PeerMessage::NewViewProof(nv) => self.on_new_view_proof(nv),
            PeerMessage::FetchFromCheckpoint { sender, n } => {
                self.on_fetch_from_checkpoint(from, sender, n)
            }
            PeerMessage::ViewCertRequest { view } => {
                if let Some(c) = self.view_certs.get(&view) {
                    let msg = PeerMessage::Cert(c.clone());
                    self.outputs.push(Output::Send { to: from, msg });
                }
            }
        }
    }

    fn on_tick(&mut self, now_ns: u64) {
        self.ticks += 1;
        self.measure_checkpoint_stall(now_ns);
        self.now_ns = self.now_ns.max(now_ns);
        if self.ticks.is_multiple_of(self.config.status_interval_ticks) {
            self.outputs.push(Output::Broadcast(PeerMessage::Status {
                last_counter: self.own_counter,
                stable: self.stable.n,
                view: self.view,
            }));
        }
        self.release_reads();
        self.check_gaps();
        self.check_request_timers();
        self.check_view_change_timer();
        self.repeat_req_view_change();
        self.check_behind();
        self.check_missing_new_view();
        self.check_join_by_view_cert();
    }

    /// Runs everything that may have become possible: deferred stream heads, execution,
    /// the next batch, the next UI.
    fn pump(&mut self) {
        loop {
            let progressed = self.pump_streams() | self.try_execute();
            if !progressed {
                break;
            }
        }
        self.check_readmitted();
        self.maybe_propose();
        self.maybe_new_view();
        self.request_next_ui();
    }

    /// A one-line summary of the protocol state, for failure reports.
    pub fn debug_summary(&self) -> String {
        let streams: Vec<String> = self
            .streams
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let head = s
                    .holdback
                    .get(&s.next)
                    .map_or("-".to_string(), |m| m.kind().to_string());
                format!(
                    "{j}:next{} hold{:?}..{:?} head {head}{}",
                    s.next,
                    s.holdback.keys().next(),
                    s.holdback.keys().next_back(),
                    if s.awaiting_cut { " awaiting-cut" } else { "" }
                )
            })
            .collect();
        format!(
            "replica {} rebasing {:?} rebases {:?} pending_rebases {:?} fill_to {} view {} {:?} exec {} executed {} prepared {} stable {} transfer {:?} best_cert {:?} nv_accepted {} requested {:?} last_ts {} view_certs {:?} view_top {:?} pending {} proposed_n {} reproposals {:?} streams [{}] dropped {:?}",
            self.id,
            self.rebasing,
            self.rebases,
            self.pending_rebases
                .iter()
                .map(|(j, p)| (*j, p.rebase.ui.counter, p.proposed, p.relayed))
                .collect::<Vec<_>>(),
            self.fill_to,
            self.view,
            self.status,
            self.exec_n,
            self.executed_n,
            self.prepared_n,
            self.stable.n,
            self.state_transfer.as_ref().map(|t| t.cert.n),
            self.best_cert.as_ref().map(|c| c.n),
            self.new_view_accepted,
            self.requested_view,
            self.last_timestamp_ns,
            self.view_certs
                .iter()
                .map(|(v, c)| (*v, c.n))
                .collect::<Vec<_>>(),
            self.view_top,
            self.pending.len(),
            self.proposed_n,
            self.reproposals.keys().collect::<Vec<_>>(),
            streams.join("; "),
            self.dropped
        )
    }

    /// Simulator hook: from now on this replica, as a new primary, certifies NEW-VIEWs
    /// that do not follow from their VIEW-CHANGEs (every correct replica must reject them).
    #[doc(hidden)]
    pub fn byzantine_bad_new_view(&mut self) {
        self.byzantine_bad_new_view = true;
    }

    /// Simulator hook for a Byzantine replica that re-bases without having lost anything
    /// (to void, at some receivers, messages it sent to others); with `keep_talking` it
    /// goes on certifying COMMITs, CHECKPOINTs and VIEW-CHANGEs while re-basing.
    #[doc(hidden)]
    pub fn byzantine_rebase(&mut self, keep_talking: bool) {
        if self.rebasing.is_some() {
            return;
        }
        self.byzantine_keep_talking = keep_talking;
        self.rebasing = Some(0);
        let last_logged = self.own_counter;
        self.enqueue(Intent::Rebase { last_logged });
    }

    /// Simulator hook for a Byzantine driver that spent USIG counters behind its core's
    /// back (equivocation): the core continues after the counters it did not see.
    #[doc(hidden)]
    pub fn byzantine_skip_counters(&mut self, to: u64) {
        assert!(to >= self.own_counter);
        self.own_counter = to;
        self.streams[self.id as usize].next = to + 1;
    }

    fn drop_input(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_insert(0) += 1;
    }

    /// Counts a message the driver dropped in stateless validation.
    pub fn record_rejected(&mut self, r: Reject) {
        let reason = match r {
            Reject::UnknownSender => "unknown_sender",
            Reject::BadUi => "bad_ui",
            Reject::BadClientSignature => "bad_client_signature",
            Reject::NotPrimary => "not_primary",
            Reject::BadBatchDigest => "bad_batch_digest",
            Reject::BatchTooLarge => "batch_too_large",
            Reject::Malformed => "malformed",
            Reject::BadCertificate => "bad_certificate",
            Reject::RequestTooLarge => "request_too_large",
        };
        self.drop_input(reason);
    }

    // ----- the USIG pipeline -------------------------------------------------------------

    fn enqueue(&mut self, intent: Intent) {
        self.ui_queue.push_back(intent);
    }

    /// Materialises the next queued message and asks the USIG to certify it. The content
    /// is fixed only now, so that a VIEW-CHANGE reflects everything sent before it.
    fn request_next_ui(&mut self) {
        while self.ui_outstanding.is_none() {
            let Some(intent) = self.ui_queue.pop_front() else {
                return;
            };
            let Some(msg) = self.materialise(intent) else {
                continue;
            };
            // I8: a re-basing replica certifies nothing but its REBASE until readmitted.
            assert!(
                self.rebasing.is_none()
                    || self.byzantine_keep_talking
                    || matches!(msg, UiMessage::Rebase(_)),
                "I8: replica {} asked to certify a {} while re-basing",
                self.id,
                msg.kind()
            );
            self.outputs
                .push(Output::Persist(PersistRecord::Intent(msg.clone())));
            self.outputs.push(Output::CreateUi {
                digest: msg.certified_digest(),
            });
            self.ui_outstanding = Some(msg);
        }
    }

    fn materialise(&mut self, intent: Intent) -> Option<UiMessage> {
        let blank = Ui {
            counter: 0,
            cert: Vec::new(),
        };
        if self.rebasing.is_some()
            && !self.byzantine_keep_talking
            && !matches!(intent, Intent::Rebase { .. })
        {
            return None; // I8: a re-basing replica certifies nothing but its REBASE
        }
        Some(match intent {
            Intent::Prepare { header, batch } => {
                if header.view != self.view || self.status != Status::Normal {
                    return None;
                }
                UiMessage::Prepare(Prepare {
                    header,
                    primary: self.id,
                    batch,
                    ui: blank,
                })
            }
            Intent::Commit { header, primary_ui } => {
                if header.view != self.view || self.status != Status::Normal {
                    return None;
                }
                UiMessage::Commit(crate::message::Commit {
                    header,
                    primary: self.config.primary(header.view),
                    primary_ui,
                    sender: self.id,
                    ui: blank,
                })
            }
            Intent::Checkpoint {
                n,
                state_digest,
                view_top,
            } => UiMessage::Checkpoint(crate::message::Checkpoint {
                n,
                state_digest,
                view: self.view,
                view_top,
                sender: self.id,
                ui: blank,
            }),
            Intent::ViewChange { new_view } => {
                if new_view != self.view || self.status != Status::ViewChange {
                    return None;
                }
                UiMessage::ViewChange(self.build_view_change(new_view))
            }
            Intent::NewView { nv } => {
                if nv.new_view != self.view {
                    return None;
                }
                UiMessage::NewView(nv)
            }
            Intent::Rebase { last_logged } => UiMessage::Rebase(crate::message::Rebase {
                sender: self.id,
                last_logged,
                ui: blank,
            }),
        })
    }

    fn on_ui_created(&mut self, ui: Ui) {
        let Some(mut msg) = self.ui_outstanding.take() else {
            panic!("I1: UiCreated without an outstanding CreateUi");
        };
        // I1: a USIG hands out consecutive counters; a gap would leave a hole in this
        // replica's FIFO stream that no peer could ever fill.
        assert_eq!(
            ui.counter,
            self.own_counter + 1,
            "I1: USIG counter not consecutive"
        );
        self.own_counter = ui.counter;
        if let UiMessage::Rebase(_) = msg {
            self.rebasing = Some(ui.counter);
        }
        *msg.ui_mut() = ui;
        self.outputs
            .push(Output::Persist(PersistRecord::Sent(msg.clone())));
        self.outputs
            .push(Output::Broadcast(PeerMessage::Ui(msg.clone())));
        // Our own message enters our own stream like anybody's.
        self.receive_ui(msg);
    }
}

#[cfg(test)]
mod tests;
