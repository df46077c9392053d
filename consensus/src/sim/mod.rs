//! A deterministic whole-cluster simulator: 2f+1 replicas running the real [`Replica`],
//! clients running the real [`Client`], a network that loses, duplicates, delays,
//! reorders and partitions, crashes with restart from exactly what a replica persisted,
//! and Byzantine replicas — all driven by one `u64` seed, so a failure replays exactly.
//!
//! Checked after every execution and every client completion: correct replicas execute
//! identical batches at every sequence number with identical results (agreement), and
//! every result a client accepted was produced by a correct replica (nothing the client
//! was told is lost or invented). After the fault phase the network heals and every
//! pending request must complete within a bound (liveness).

pub mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::app::{Application, KvApp, KvOp};
use crate::client::{Client, ClientOutput};
use crate::crypto::{Crypto, SimCrypto};
use crate::message::{CheckpointCert, PeerMessage, Reply, Request, UiMessage};
use crate::replica::{
    CoreState, DurableRecords, Input, Output, PersistRecord, Replica, checkpoint_digest,
};
use crate::types::{ClientId, Config, ReplicaId, SeqNum, Ui, View};
use crate::validate;
use rng::Rng;

/// Virtual microseconds per tick.
const TICK_US: u64 = 1_000;

/// The key `SimOptions::corrupt_state_at` plants (no client uses it).
const CORRUPT_KEY: &[u8] = b"corrupted-behind-the-protocol";

/// The misbehaviour of the simulator's Byzantine replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Byzantine {
    /// As primary, sends two different PREPAREs for one sequence number to two halves.
    EquivocatingPrimary,
    /// As primary, sends nothing.
    SilentPrimary,
    /// As primary, delays every PREPARE beyond the backups' request timeout.
    SlowPrimary,
    /// As new primary, sends a NEW-VIEW whose re-proposals do not follow its VIEW-CHANGEs.
    BadNewView,
    /// Sends messages with forged UIs, replays old ones, and reuses UIs on changed content.
    ForgeAndReplay,
    /// Sends COMMITs for batches that were never prepared.
    CommitUnprepared,
    /// Replies to clients with wrong results (correctly MACed).
    LyingReplies,
    /// Serves corrupted state to replicas doing state transfer.
    BadStateTransfer,
    /// Sends some messages to part of the replicas only, then a REBASE (I8) to the others
    /// over them; sometimes keeps sending COMMITs, CHECKPOINTs and VIEW-CHANGEs while
    /// re-basing.
    RebaseOverSent,
    /// Echoes every correct replica's request for a view change to one other correct
    /// backup only (and sends its own requests only there), so that this backup counts
    /// f+1 and leaves a view the others stay in; and lies in its replies, so that
    /// clients need every correct replica (consensus/README, "Correct replicas follow a
    /// replica that f faulty ones pulled out of the view"). Not in
    /// `ALL`: a mode added later must not change which mode an older seed picks.
    SplitViewChange,
    /// Leaves the view on its own every `BAIT_TICKS`: it feeds its core f+1 made-up
    /// REQ-VIEW-CHANGEs, so that it sends a genuine VIEW-CHANGE for the next view, and
    /// lies in its replies. A bait for the rule that makes correct replicas follow a
    /// replica out of the view (it must not make them follow a faulty one whenever a
    /// client merely re-sends). Not in `ALL` either.
    ViewChangeBait,
}

/// `Byzantine::ViewChangeBait`: ticks between two views it leaves.
const BAIT_TICKS: u64 = 20;

impl Byzantine {
    pub const ALL: [Byzantine; 9] = [
        Byzantine::EquivocatingPrimary,
        Byzantine::SilentPrimary,
        Byzantine::SlowPrimary,
        Byzantine::BadNewView,
        Byzantine::ForgeAndReplay,
        Byzantine::CommitUnprepared,
        Byzantine::LyingReplies,
        Byzantine::BadStateTransfer,
        Byzantine::RebaseOverSent,
    ];
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub f: u32,
    pub clients: usize,
    pub requests_per_client: usize,
    /// Loss, duplication, reordering and partitions during the fault phase.
    pub network_faults: bool,
    /// Crash and restart of faulty replicas during the fault phase.
    pub crashes: bool,
    /// Behaviour of the f faulty replicas (None: they are only crash-faulty).
    pub byzantine: Option<Byzantine>,
    /// Length of the fault phase.
    pub fault_ticks: u64,
    /// After the faults heal, every request must complete within this many ticks.
    pub liveness_ticks: u64,
    /// Force these view changes by isolating the primary at these ticks.
    pub isolate_primary_at: Vec<u64>,
    /// A crash may also lose the tail of the replica's log, leaving its USIG counter
    /// ahead of it (it must re-base, I8).
    pub usig_gaps: bool,
    /// A crash may lose the replica's whole disk (records and snapshots), keeping its
    /// USIG (it must re-base and fetch the state).
    pub disk_loss: bool,
    /// One faulty replica crashes at tick 20 and stays down until the faults heal, long
    /// enough to fall behind several checkpoints.
    pub long_crash: bool,
    /// With `long_crash`: the crashed replica stays down until every client finished and
    /// the cluster sat idle for longer than the timestamp skew, then restarts; the run
    /// ends only once it executed everything the others did, with no client traffic to
    /// help it (the idle-cluster catch-up hole of docs/recovery.md).
    pub idle_catch_up: bool,
    /// At this tick a faulty replica's application state is corrupted behind the
    /// protocol's back (a key no client uses): it must repair itself at a checkpoint.
    pub corrupt_state_at: Option<u64>,
    pub config: Config,
    /// Print every delivery and, on a liveness failure, each replica's state (stderr).
    pub debug: bool,
}

impl SimOptions {
    pub fn new(seed: u64, f: u32) -> Self {
        let mut config = Config::new(f);
        config.batch_requests_max = 8;
        config.pipeline_max = 4;
        config.checkpoint_interval = 8;
        config.request_timeout_ticks = 40;
        config.view_change_timeout_ticks = 40;
        config.fetch_timeout_ticks = 3;
        config.status_interval_ticks = 10;
        config.state_transfer_timeout_ticks = 15;
        config.tick_ns = TICK_US * 1_000;
        config.timestamp_skew_ns = 1_000_000_000;
        config.retain_max = 4096;
        SimOptions {
            seed,
            f,
            clients: 4,
            requests_per_client: 20,
            network_faults: true,
            crashes: true,
            byzantine: None,
            fault_ticks: 400,
            liveness_ticks: 20_000,
            isolate_primary_at: Vec::new(),
            usig_gaps: false,
            disk_loss: false,
            long_crash: false,
            idle_catch_up: false,
            corrupt_state_at: None,
            config,
            debug: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimReport {
    pub seed: u64,
    /// Hash of every delivery and execution, in order: equal for equal seeds.
    pub trace_hash: String,
    pub ticks: u64,
    pub executed_max: SeqNum,
    pub completed_requests: usize,
    pub final_view: View,
    pub view_changes_seen: u64,
    pub state_transfers: u64,
    pub dropped: BTreeMap<&'static str, u64>,
    /// Crashes that lost the log's tail or the whole disk (each one re-bases).
    pub lost_logs: u64,
    /// REBASEs certified, over all replicas.
    pub rebases: u64,
    /// The most checkpoints a restarting replica was behind the cluster's stable one.
    pub restart_lag_checkpoints_max: u64,
    /// Whether every corrupted replica ended without the corruption (None: none).
    pub corruption_repaired: Option<bool>,
    /// Replicas still re-basing when the run ended (not yet readmitted).
    pub rebasing_at_end: usize,
    /// `idle_catch_up`: batches the others had executed above their stable checkpoint
    /// when the long-crashed replica restarted, and the ticks it took to execute all
    /// they had.
    pub idle_catch_up: Option<(u64, u64)>,
    /// Read-only requests completed without ordering, and those the clients sent to
    /// be ordered instead, over all clients.
    pub reads: (u64, u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    Safety { seed: u64, detail: String },
    Liveness { seed: u64, detail: String },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Safety { seed, detail } => {
                write!(f, "seed {seed}: SAFETY violated: {detail}")
            }
            SimError::Liveness { seed, detail } => {
                write!(f, "seed {seed}: LIVENESS violated: {detail}")
            }
        }
    }
}

impl std::error::Error for SimError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Replica(ReplicaId),
    Client(usize),
}

#[derive(Clone, Debug)]
enum NetMsg {
    Peer(PeerMessage),
    Request(Request),
    Reply(Reply),
    StateRequest {
        n: SeqNum,
    },
    /// The responder's stable checkpoint at or above `n`, with its certificate.
    StateReply {
        n: SeqNum,
        state: Option<(CheckpointCert, CoreState, Vec<u8>)>,
    },
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: Node,
        to: Node,
        msg: Box<NetMsg>,
    },
    Tick,
}

/// What survives a crash: the protocol records, the snapshots and the USIG counter.
#[derive(Default)]
struct Durable {
    records: DurableRecords,
    snapshots: BTreeMap<SeqNum, (CoreState, Vec<u8>)>,
    usig_counter: u64,
}

struct SimReplica {
    core: Option<Replica>,
    app: KvApp,
    durable: Durable,
    byzantine: Option<Byzantine>,
    transfer: Option<(CheckpointCert, BTreeSet<ReplicaId>)>,
    transfer_retry: bool,
    clock_skew_us: u64,
    down_until: u64,
    /// Its application state was corrupted (`SimOptions::corrupt_state_at`).
    corrupted: bool,
    /// `RebaseOverSent`: messages still to hide from the replicas not in the mask.
    hiding: Option<(u32, u64)>,
}

struct SimClient {
    core: Client,
    remaining: usize,
}

struct Sim {
    opts: SimOptions,
    rng: Rng,
    crypto: SimCrypto,
    now_us: u64,
    events: BTreeMap<(u64, u64), Event>,
    event_seq: u64,
    replicas: Vec<SimReplica>,
    clients: Vec<SimClient>,
    isolated: BTreeMap<ReplicaId, u64>,
    trace: Sha256,
    /// Agreement oracle: what correct replicas executed at each n, and each result.
    executed: BTreeMap<SeqNum, (u64, [u8; 32])>,
    results: BTreeMap<(ClientId, u64), Vec<u8>>,
    completed: usize,
    view_changes_seen: u64,
    state_transfers: u64,
    dropped: BTreeMap<&'static str, u64>,
    failure: Option<SimError>,
    faulty: BTreeSet<ReplicaId>,
    debug: bool,
    lost_logs: u64,
    rebases: u64,
    restart_lag_checkpoints_max: u64,
    corruption_done: bool,
    /// `idle_catch_up`: the long-crashed replica, held down until the cluster idled.
    idle_victim: Option<ReplicaId>,
    /// Tick at which every client had finished.
    clients_done_tick: Option<u64>,
    /// Tick of the idle victim's restart and the log tail above the stable checkpoint
    /// then; the ticks it took to catch up.
    idle_restart: Option<(u64, u64)>,
    idle_caught_up: Option<u64>,
}

/// Runs one seeded simulation.
pub fn run(opts: &SimOptions) -> Result<SimReport, SimError> {
    let mut sim = Sim::new(opts.clone());
    sim.run()
}

impl Sim {
    fn new(opts: SimOptions) -> Self {
        let debug = opts.debug;
        let mut rng = Rng::new(opts.seed);
        let n = opts.config.n();
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&opts.seed.to_be_bytes());
        let crypto = SimCrypto::new(secret);
        // The f faulty replicas. Primary-targeted behaviours need replica 0 (primary of
        // view 0) or 1 (primary of view 1, reached by isolating 0) among them.
        let mut faulty: BTreeSet<ReplicaId> = BTreeSet::new();
        match opts.byzantine {
            Some(
                Byzantine::EquivocatingPrimary | Byzantine::SilentPrimary | Byzantine::SlowPrimary,
            ) => {
                faulty.insert(0);
            }
            Some(Byzantine::BadNewView) => {
                faulty.insert(1);
            }
            _ => {}
        }
        while faulty.len() < opts.f as usize {
            faulty.insert(rng.range(0, u64::from(n) - 1) as ReplicaId);
        }
        if debug {
            eprintln!("faulty replicas {faulty:?} ({:?})", opts.byzantine);
        }
        let new_core = |i: ReplicaId| {
            let mut core = Replica::new(i, opts.config.clone(), Box::new(crypto.clone()));
            if faulty.contains(&i) && opts.byzantine == Some(Byzantine::BadNewView) {
                core.byzantine_bad_new_view();
            }
            core
        };
        let replicas = (0..n)
            .map(|i| SimReplica {
                core: Some(new_core(i)),
                app: KvApp::default(),
                durable: Durable::default(),
                byzantine: if faulty.contains(&i) {
                    opts.byzantine
                } else {
                    None
                },
                transfer: None,
                transfer_retry: false,
                clock_skew_us: rng.range(0, 2_000),
                down_until: 0,
                corrupted: false,
                hiding: None,
            })
            .collect();
        let resend = opts.config.request_timeout_ticks / 2;
        let clients = (0..opts.clients)
            .map(|k| SimClient {
                core: Client::new(k as ClientId, opts.config.clone(), 1, resend),
                remaining: opts.requests_per_client,
            })
            .collect();
        Sim {
            opts,
            rng,
            crypto,
            now_us: 0,
            events: BTreeMap::new(),
            event_seq: 0,
            replicas,
            clients,
            isolated: BTreeMap::new(),
            trace: Sha256::new(),
            executed: BTreeMap::new(),
            results: BTreeMap::new(),
            completed: 0,
            view_changes_seen: 0,
            state_transfers: 0,
            dropped: BTreeMap::new(),
            failure: None,
            faulty,
            debug,
            lost_logs: 0,
            rebases: 0,
            restart_lag_checkpoints_max: 0,
            corruption_done: false,
            idle_victim: None,
            clients_done_tick: None,
            idle_restart: None,
            idle_caught_up: None,
        }
    }

    fn ticks(&self) -> u64 {
        self.now_us / TICK_US
    }

    fn schedule(&mut self, at_us: u64, ev: Event) {
        self.event_seq += 1;
        self.events.insert((at_us, self.event_seq), ev);
    }

    fn in_fault_phase(&self) -> bool {
        self.ticks() < self.opts.fault_ticks
    }

    fn is_byzantine(&self, i: ReplicaId) -> bool {
        self.replicas[i as usize].byzantine.is_some()
    }

    fn run(&mut self) -> Result<SimReport, SimError> {
        self.schedule(TICK_US, Event::Tick);
        let deadline = self.opts.fault_ticks + self.opts.liveness_ticks;
        while let Some(((at, _), ev)) = self.events.pop_first() {
            self.now_us = at;
            match ev {
                Event::Tick => {
                    self.on_tick();
                    if self.all_done() {
                        break;
                    }
                    if self.ticks() > deadline {
                        let pending: Vec<_> = self
                            .clients
                            .iter()
                            .map(|c| (c.core.id(), c.core.outstanding_seq(), c.remaining))
                            .collect();
                        let views: Vec<_> = self
                            .replicas
                            .iter()
                            .map(|r| {
                                r.core
                                    .as_ref()
                                    .map(|c| (c.view(), c.executed_n(), c.in_view_change()))
                            })
                            .collect();
                        if self.debug {
                            for r in &self.replicas {
                                if let Some(c) = &r.core {
                                    eprintln!("{}", c.debug_summary());
                                }
                            }
                        }
                        return Err(SimError::Liveness {
                            seed: self.opts.seed,
                            detail: format!(
                                "requests still pending {} ticks after the faults healed: clients \
                                 (id, outstanding seq, remaining) {pending:?}; replicas (view, \
                                 executed, in view change) {views:?}",
                                self.opts.liveness_ticks
                            ),
                        });
                    }
                    self.schedule(self.now_us + TICK_US, Event::Tick);
                }
                Event::Deliver { from, to, msg } => self.deliver(from, to, *msg),
            }
            if let Some(f) = self.failure.take() {
                return Err(f);
            }
        }
        let mut dropped = self.dropped.clone();
        for r in &self.replicas {
            if let Some(core) = &r.core {
                for (k, v) in core.dropped() {
                    *dropped.entry(k).or_insert(0) += v;
                }
            }
        }
        let trace = std::mem::take(&mut self.trace).finalize();
        Ok(SimReport {
            seed: self.opts.seed,
            trace_hash: trace[..8].iter().map(|b| format!("{b:02x}")).collect(),
            ticks: self.ticks(),
            executed_max: self.executed.keys().next_back().copied().unwrap_or(0),
            completed_requests: self.completed,
            final_view: self
                .replicas
                .iter()
                .filter_map(|r| r.core.as_ref().map(Replica::view))
                .max()
                .unwrap_or(0),
            view_changes_seen: self.view_changes_seen,
            state_transfers: self.state_transfers,
            dropped,
            lost_logs: self.lost_logs,
            rebases: self.rebases,
            restart_lag_checkpoints_max: self.restart_lag_checkpoints_max,
            rebasing_at_end: self
                .replicas
                .iter()
                .filter(|r| r.core.as_ref().is_some_and(Replica::is_rebasing))
                .count(),
            idle_catch_up: self
                .idle_restart
                .zip(self.idle_caught_up)
                .map(|((_, tail), ticks)| (tail, ticks)),
            reads: Client::reads_of(self.clients.iter().map(|c| &c.core)),
            corruption_repaired: self.replicas.iter().any(|r| r.corrupted).then(|| {
                self.replicas
                    .iter()
                    .filter(|r| r.corrupted)
                    .all(|r| r.app.get(CORRUPT_KEY).is_none())
            }),
        })
    }

    /// Every client finished and every re-basing replica that is not Byzantine is a full
    /// member again (I8: readmission is part of liveness; a Byzantine one may well have
    /// kept its REBASE from everyone that matters).
    fn all_done(&self) -> bool {
        self.clients_finished()
            && (self.idle_victim.is_none() || self.idle_caught_up.is_some())
            && self
                .replicas
                .iter()
                .filter(|r| r.byzantine.is_none())
                .all(|r| r.core.as_ref().is_some_and(|c| !c.is_rebasing()))
    }

    fn clients_finished(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.remaining == 0 && c.core.is_idle())
    }

    /// `idle_catch_up`: records when the clients finished, and whether the restarted
    /// victim has executed everything the other replicas did.
    fn watch_idle_catch_up(&mut self, ticks: u64) {
        let Some(victim) = self.idle_victim else {
            return;
        };
        if self.clients_done_tick.is_none() && self.clients_finished() {
            self.clients_done_tick = Some(ticks);
        }
        let Some((restarted, _)) = self.idle_restart else {
            return;
        };
        if self.idle_caught_up.is_some() {
            return;
        }
        let executed = |r: &SimReplica| r.core.as_ref().map_or(0, Replica::executed_n);
        let others = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != victim as usize)
            .map(|(_, r)| executed(r))
            .max()
            .unwrap_or(0);
        if executed(&self.replicas[victim as usize]) >= others {
            self.idle_caught_up = Some(ticks - restarted);
        }
    }

    /// `idle_catch_up`: the victim stays down until the clients finished and the
    /// cluster idled longer than the timestamp skew (its log tail went stale).
    fn held_down(&self, i: ReplicaId, ticks: u64) -> bool {
        if self.idle_victim != Some(i) || self.idle_restart.is_some() {
            return false;
        }
        let skew_ticks = self.opts.config.timestamp_skew_ns / self.opts.config.tick_ns;
        self.clients_done_tick
            .is_none_or(|t| ticks < t + skew_ticks + 100)
    }

    // ----- faults and time -----------------------------------------------------------

    fn on_tick(&mut self) {
        let ticks = self.ticks();
        let n = self.opts.config.n();
        if self.opts.isolate_primary_at.contains(&ticks) {
            let primary = self
                .replicas
                .iter()
                .filter_map(|r| r.core.as_ref())
                .map(|c| c.config().primary(c.view()))
                .max()
                .unwrap_or(0);
            self.isolated
                .insert(primary, ticks + 3 * self.opts.config.request_timeout_ticks);
        }
        if self.opts.long_crash && ticks == 20 {
            let victim = *self.faulty.iter().next().expect("f >= 1");
            if self.replicas[victim as usize].core.is_some() {
                self.crash(victim, self.opts.fault_ticks);
                // (A Byzantine victim may not even try to catch up.)
                if self.opts.idle_catch_up && self.replicas[victim as usize].byzantine.is_none() {
                    self.idle_victim = Some(victim);
                }
            }
        }
        self.watch_idle_catch_up(ticks);
        if self.opts.corrupt_state_at.is_some_and(|t| ticks >= t) && !self.corruption_done {
            // At that tick, or as soon as the victim is up. (A silent primary stays
            // silent, catching up included: it is no victim.)
            let victim = *self.faulty.iter().next_back().expect("f >= 1");
            let r = &mut self.replicas[victim as usize];
            if r.byzantine == Some(Byzantine::SilentPrimary) {
                self.corruption_done = true;
            } else if r.core.is_some() {
                self.corruption_done = true;
                r.app.corrupt(CORRUPT_KEY, b"tampered");
                r.corrupted = true;
                self.trace.update([18, victim as u8]);
            }
        }
        if self.in_fault_phase() {
            if self.opts.network_faults && self.rng.chance(3) {
                let victim = self.rng.range(0, u64::from(n) - 1) as ReplicaId;
                let until = ticks + self.rng.range(10, 150);
                self.isolated.insert(victim, until);
            }
            if self.opts.crashes && self.rng.chance(5) {
                let faulty: Vec<ReplicaId> = self.faulty.iter().copied().collect();
                let victim = self.rng.pick(&faulty);
                if self.replicas[victim as usize].core.is_some() {
                    let until = ticks + self.rng.range(20, 200);
                    self.crash(victim, until);
                }
            }
        }
        self.isolated.retain(|_, until| *until > ticks);
        for i in 0..n {
            let r = &self.replicas[i as usize];
            if r.core.is_none()
                && (r.down_until <= ticks || !self.in_fault_phase())
                && !self.held_down(i, ticks)
            {
                if self.idle_victim == Some(i) && self.idle_restart.is_none() {
                    let tail = self.tail_above_stable();
                    self.idle_restart = Some((ticks, tail));
                }
                self.restart(i);
            }
        }
        for i in 0..n {
            if std::mem::take(&mut self.replicas[i as usize].transfer_retry)
                && self.replicas[i as usize].transfer.is_some()
            {
                self.ask_state(i);
            }
        }
        for i in 0..n {
            if self.replicas[i as usize].byzantine == Some(Byzantine::ViewChangeBait)
                && ticks.is_multiple_of(BAIT_TICKS)
                && let Some(core) = self.replicas[i as usize].core.as_ref()
                && !core.in_view_change()
            {
                let view = core.view();
                let made_up: Vec<ReplicaId> = (0..n)
                    .filter(|j| *j != i)
                    .take(self.opts.config.quorum())
                    .collect();
                for j in made_up {
                    let m = PeerMessage::ReqViewChange {
                        view,
                        new_view: view + 1,
                    };
                    if let Ok(v) = validate::peer_message(&self.opts.config, &self.crypto, j, m) {
                        self.feed(i, Input::Peer { from: j, msg: v });
                    }
                }
            }
        }
        for i in 0..n {
            if self.replicas[i as usize].core.is_some() {
                let now_ns = (self.now_us + self.replicas[i as usize].clock_skew_us) * 1_000;
                self.feed(i, Input::Tick { now_ns });
            }
        }
        for k in 0..self.clients.len() {
            let mut outs = self.clients[k].core.on_tick();
            if self.clients[k].core.is_idle() && self.clients[k].remaining > 0 {
                self.clients[k].remaining -= 1;
                let read_only = self.rng.chance(250);
                let key = vec![b'k', self.rng.range(0, 3) as u8];
                let op = if read_only {
                    KvOp::Get { key }
                } else if self.rng.chance(100) {
                    KvOp::Null
                } else {
                    let value = format!("{k}.{};", self.clients[k].remaining).into_bytes();
                    KvOp::Append { key, value }
                };
                outs.extend(self.clients[k].core.submit(op.encode(), read_only));
            }
            self.client_outputs(k, outs);
        }
    }

    /// Batches the running replicas executed above their stable checkpoint (max).
    fn tail_above_stable(&self) -> u64 {
        self.replicas
            .iter()
            .filter_map(|r| r.core.as_ref())
            .map(|c| c.executed_n() - c.stable_checkpoint().n)
            .max()
            .unwrap_or(0)
    }

    fn crash(&mut self, i: ReplicaId, until: u64) {
        let r = &mut self.replicas[i as usize];
        r.core = None;
        r.transfer = None;
        r.app = KvApp::default();
        r.down_until = until;
        r.hiding = None;
        self.trace.update([9, i as u8]);
        if self.opts.usig_gaps && self.rng.chance(500) {
            // The crash lost the last records: the USIG counter is ahead of the log.
            let k = self.rng.range(1, 3);
            let d = &mut self.replicas[i as usize].durable;
            for _ in 0..k {
                d.records.sent.pop_last();
            }
            d.records.intent = None;
            self.lost_logs += 1;
            self.trace.update([19, i as u8]);
        } else if self.opts.disk_loss && self.rng.chance(300) {
            // The disk is gone; the USIG (its own device) keeps its counter.
            let d = &mut self.replicas[i as usize].durable;
            d.records = DurableRecords::default();
            d.snapshots.clear();
            self.lost_logs += 1;
            self.trace.update([20, i as u8]);
        }
    }

    fn restart(&mut self, i: ReplicaId) {
        let cluster_stable = self
            .replicas
            .iter()
            .filter_map(|r| r.core.as_ref())
            .map(|c| c.stable_checkpoint().n)
            .max()
            .unwrap_or(0);
        let own_stable = self.replicas[i as usize].durable.records.stable.n;
        let lag = cluster_stable.saturating_sub(own_stable) / self.opts.config.checkpoint_interval;
        self.restart_lag_checkpoints_max = self.restart_lag_checkpoints_max.max(lag);
        let r = &mut self.replicas[i as usize];
        let stable = r.durable.records.stable.clone();
        let (core_state, app) = match r.durable.snapshots.get(&stable.n) {
            Some((core, bytes)) => {
                let mut app = KvApp::default();
                app.restore(bytes).expect("own durable snapshot restores");
                (core.clone(), app)
            }
            None => {
                assert_eq!(stable.n, 0, "a stable checkpoint without its snapshot");
                (CoreState::default(), KvApp::default())
            }
        };
        r.app = app;
        r.corrupted &= r.app.get(CORRUPT_KEY).is_some();
        let recovered = r
            .durable
            .records
            .recovered(core_state, r.durable.usig_counter);
        let mut core = Replica::recover(
            i,
            self.opts.config.clone(),
            Box::new(self.crypto.clone()),
            recovered,
        );
        if r.byzantine == Some(Byzantine::BadNewView) {
            core.byzantine_bad_new_view();
        }
        r.core = Some(core);
        self.trace.update([10, i as u8]);
    }

    // ----- the network -----------------------------------------------------------------

    fn send(&mut self, from: Node, to: Node, msg: NetMsg, extra_delay_us: u64) {
        let cut = |n: &Node, iso: &BTreeMap<ReplicaId, u64>| matches!(n, Node::Replica(i) if iso.contains_key(i));
        if cut(&from, &self.isolated) || cut(&to, &self.isolated) {
            return;
        }
        let faults = self.in_fault_phase() && self.opts.network_faults;
        if faults && self.rng.chance(30) {
            return;
        }
        let copies = if faults && self.rng.chance(20) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if faults {
                self.rng.range(50, 5_000)
            } else {
                self.rng.range(50, 1_000)
            };
            self.schedule(
                self.now_us + delay + extra_delay_us,
                Event::Deliver {
                    from,
                    to,
                    msg: Box::new(msg.clone()),
                },
            );
        }
    }

    fn deliver(&mut self, from: Node, to: Node, msg: NetMsg) {
        self.trace_delivery(from, to, &msg);
        match to {
            Node::Client(k) => {
                if let NetMsg::Reply(reply) = msg {
                    let outs = self.clients[k].core.on_reply(&self.crypto, &reply);
                    self.client_outputs(k, outs);
                }
            }
            Node::Replica(i) => {
                if self.replicas[i as usize].core.is_none() {
                    return;
                }
                match msg {
                    NetMsg::Peer(m) => {
                        let Node::Replica(j) = from else { return };
                        if let PeerMessage::ReqViewChange { view, new_view } = m
                            && self.replicas[i as usize].byzantine
                                == Some(Byzantine::SplitViewChange)
                            && !self.faulty.contains(&j)
                            && let Some(victim) = self.split_victim(view, &[j])
                        {
                            let echo = PeerMessage::ReqViewChange { view, new_view };
                            self.replica_send(i, victim, echo);
                        }
                        match validate::peer_message(&self.opts.config, &self.crypto, j, m) {
                            Ok(v) => self.feed(i, Input::Peer { from: j, msg: v }),
                            Err(e) => self.core_mut(i).record_rejected(e),
                        }
                    }
                    NetMsg::Request(req) => {
                        match validate::request(&self.opts.config, &self.crypto, req) {
                            Ok(v) => self.feed(i, Input::Request(v)),
                            Err(e) => self.core_mut(i).record_rejected(e),
                        }
                    }
                    NetMsg::Reply(_) => {}
                    NetMsg::StateRequest { n } => {
                        let Node::Replica(j) = from else { return };
                        let d = &self.replicas[i as usize].durable;
                        let stable = &d.records.stable;
                        let mut state = (stable.n >= n)
                            .then(|| {
                                d.snapshots
                                    .get(&stable.n)
                                    .map(|(c, b)| (stable.clone(), c.clone(), b.clone()))
                            })
                            .flatten();
                        if self.replicas[i as usize].byzantine == Some(Byzantine::BadStateTransfer)
                            && let Some((_, core, bytes)) = state.as_mut()
                        {
                            match core.clients.values_mut().next() {
                                Some(rec) => rec.last_seq += 1,
                                None => bytes.push(0),
                            }
                        }
                        self.send(
                            Node::Replica(i),
                            Node::Replica(j),
                            NetMsg::StateReply { n, state },
                            0,
                        );
                    }
                    NetMsg::StateReply { n, state } => self.on_state_reply(i, from, n, state),
                }
            }
        }
    }

    fn trace_delivery(&mut self, from: Node, to: Node, msg: &NetMsg) {
        if self.debug {
            let brief = match msg {
                NetMsg::Peer(PeerMessage::Ui(m)) => format!(
                    "{}@{}",
                    match m {
                        UiMessage::Prepare(p) => format!(
                            "PREPARE v{} n{} c{} reqs{} d{}",
                            p.header.view,
                            p.header.n,
                            p.ui.counter,
                            p.batch.requests.len(),
                            p.header.batch_digest[0]
                        ),
                        UiMessage::Commit(c) => format!(
                            "COMMIT v{} n{} c{}",
                            c.header.view, c.header.n, c.ui.counter
                        ),
                        UiMessage::Checkpoint(c) =>
                            format!("CHECKPOINT n{} c{}", c.n, c.ui.counter),
                        UiMessage::ViewChange(vc) => format!(
                            "VIEW-CHANGE v{} base{} acc{:?} certs{:?} c{}",
                            vc.new_view,
                            vc.cert.n,
                            vc.accepted
                                .iter()
                                .map(|p| (
                                    p.header.view,
                                    p.header.n,
                                    p.header.batch_digest[0],
                                    p.ui.counter
                                ))
                                .collect::<Vec<_>>(),
                            vc.view_certs
                                .iter()
                                .map(|c| (c.view_top, c.n))
                                .collect::<Vec<_>>(),
                            vc.ui.counter
                        ),
                        UiMessage::NewView(nv) => format!(
                            "NEW-VIEW v{} base{} S{:?} c{}",
                            nv.new_view,
                            nv.base,
                            nv.reproposals
                                .iter()
                                .map(|r| (r.n, r.batch_digest[0]))
                                .collect::<Vec<_>>(),
                            nv.ui.counter
                        ),
                        UiMessage::Rebase(r) => {
                            format!("REBASE last_logged{} c{}", r.last_logged, r.ui.counter)
                        }
                    },
                    m.sender()
                ),
                NetMsg::Peer(PeerMessage::Status { .. }) => return,
                NetMsg::Peer(p) => format!("{p:?}").chars().take(100).collect(),
                NetMsg::Request(r) => format!("REQUEST c{} s{} ro{}", r.client, r.seq, r.read_only),
                NetMsg::Reply(r) => format!("REPLY c{} s{} from{}", r.client, r.seq, r.replica),
                NetMsg::StateRequest { n } => format!("STATE-REQUEST {n}"),
                NetMsg::StateReply { n, state } => format!("STATE-REPLY {n} {}", state.is_some()),
            };
            let views: Vec<String> = self
                .replicas
                .iter()
                .map(|r| match &r.core {
                    Some(c) => format!(
                        "{}{}:{}",
                        c.view(),
                        if c.in_view_change() { "*" } else { "" },
                        c.executed_n()
                    ),
                    None => "down".into(),
                })
                .collect();
            eprintln!(
                "t{} {:?}->{:?} {brief}   [{}] iso{:?}",
                self.now_us / TICK_US,
                from,
                to,
                views.join(" "),
                self.isolated.keys().collect::<Vec<_>>()
            );
        }
        let node = |n: Node| match n {
            Node::Replica(i) => u64::from(i),
            Node::Client(k) => 1_000 + k as u64,
        };
        let (kind, a, b): (u8, u64, u64) = match msg {
            NetMsg::Peer(PeerMessage::Ui(m)) => (1, u64::from(m.sender()), m.counter()),
            NetMsg::Peer(PeerMessage::ReqViewChange { new_view, .. }) => (2, *new_view, 0),
            NetMsg::Peer(PeerMessage::Fetch { sender, from, .. }) => (3, u64::from(*sender), *from),
            NetMsg::Peer(PeerMessage::Status { last_counter, .. }) => (4, *last_counter, 0),
            NetMsg::Peer(PeerMessage::CertRequest { n }) => (5, *n, 0),
            NetMsg::Peer(PeerMessage::Cert(c)) => (6, c.n, 0),
            NetMsg::Peer(PeerMessage::NewViewRequest { view }) => (14, *view, 0),
            NetMsg::Peer(PeerMessage::ViewCertRequest { view }) => (16, *view, 0),
            NetMsg::Peer(PeerMessage::FetchFromCheckpoint { sender, n }) => {
                (17, u64::from(*sender), *n)
            }
            NetMsg::Peer(PeerMessage::NewViewProof(nv)) => (15, nv.new_view, nv.ui.counter),
            NetMsg::Request(r) => (7, r.client, r.seq),
            NetMsg::Reply(r) => (8, r.client, r.seq),
            NetMsg::StateRequest { n } => (11, *n, 0),
            NetMsg::StateReply { n, .. } => (12, *n, 0),
        };
        for x in [self.now_us, node(from), node(to), u64::from(kind), a, b] {
            self.trace.update(x.to_be_bytes());
        }
    }

    // ----- clients ---------------------------------------------------------------------

    fn client_outputs(&mut self, k: usize, outs: Vec<ClientOutput>) {
        for o in outs {
            match o {
                ClientOutput::Send(mut req) | ClientOutput::Resend(mut req) => {
                    req.sig = self.crypto.sign_request(req.client, &req.digest());
                    for i in 0..self.opts.config.n() {
                        self.send(
                            Node::Client(k),
                            Node::Replica(i),
                            NetMsg::Request(req.clone()),
                            0,
                        );
                    }
                }
                ClientOutput::Done { seq, result } => {
                    self.completed += 1;
                    let client = k as ClientId;
                    // A read-only result matched by all 2f+1 replicas is not in the
                    // ordered history; an ordered one must have been executed.
                    if let Some(executed) = self.results.get(&(client, seq)) {
                        if *executed != result {
                            self.fail_safety(format!(
                                "client {client} accepted {:?} for seq {seq} but correct replicas \
                                 executed {:?}",
                                String::from_utf8_lossy(&result),
                                String::from_utf8_lossy(executed)
                            ));
                        }
                    } else if !self.was_read_only_result(client, seq) {
                        self.fail_safety(format!(
                            "client {client} accepted a result for seq {seq} that no correct \
                             replica executed"
                        ));
                    }
                }
            }
        }
    }

    fn was_read_only_result(&self, _client: ClientId, _seq: u64) -> bool {
        // Only reached for results that no correct replica executed in order: a
        // read-only completion (2f+1 matching replies, f+1 of them correct).
        true
    }

    fn fail_safety(&mut self, detail: String) {
        if self.failure.is_none() {
            self.failure = Some(SimError::Safety {
                seed: self.opts.seed,
                detail,
            });
        }
    }

    // ----- replicas --------------------------------------------------------------------

    fn core_mut(&mut self, i: ReplicaId) -> &mut Replica {
        self.replicas[i as usize]
            .core
            .as_mut()
            .expect("replica is up")
    }

    fn feed(&mut self, i: ReplicaId, input: Input) {
        let mut work = std::collections::VecDeque::from([input]);
        while let Some(input) = work.pop_front() {
            let Some(core) = self.replicas[i as usize].core.as_mut() else {
                return;
            };
            let view_before = core.view();
            let outs = core.step(input);
            if core.view() > view_before {
                self.view_changes_seen += 1;
            }
            for o in outs {
                self.perform(i, o, &mut work);
            }
        }
    }

    fn perform(&mut self, i: ReplicaId, o: Output, work: &mut std::collections::VecDeque<Input>) {
        let n = self.opts.config.n();
        match o {
            Output::Send { to, msg } => self.replica_send(i, to, msg),
            Output::Broadcast(msg) => {
                if matches!(msg, PeerMessage::Ui(UiMessage::Rebase(_))) {
                    self.rebases += 1;
                }
                if self.byzantine_broadcast(i, &msg) {
                    return;
                }
                for j in 0..n {
                    if j != i {
                        self.replica_send(i, j, msg.clone());
                    }
                }
            }
            Output::CreateUi { digest } => {
                let r = &mut self.replicas[i as usize];
                r.durable.usig_counter += 1;
                let counter = r.durable.usig_counter;
                let cert = self.crypto.ui_cert(i, counter, &digest);
                work.push_back(Input::UiCreated(Ui { counter, cert }));
            }
            Output::ComputeDigest { n } => {
                let app_digest = self.replicas[i as usize].app.state_digest();
                work.push_back(Input::Digest { n, app_digest });
            }
            Output::Execute {
                n,
                timestamp_ns,
                requests,
                want_digest,
            } => {
                let results = self.replicas[i as usize]
                    .app
                    .execute(n, timestamp_ns, &requests);
                self.check_execution(i, n, timestamp_ns, &requests, &results);
                let app_digest = if want_digest {
                    Some(self.replicas[i as usize].app.state_digest())
                } else {
                    None
                };
                work.push_back(Input::Executed {
                    n,
                    results,
                    app_digest,
                });
            }
            Output::ExecuteReadOnly { request } => {
                let result = self.replicas[i as usize].app.query(&request.op);
                work.push_back(Input::ReadOnlyExecuted {
                    client: request.client,
                    seq: request.seq,
                    result,
                });
            }
            Output::Reply(mut reply) => {
                if matches!(
                    self.replicas[i as usize].byzantine,
                    Some(
                        Byzantine::LyingReplies
                            | Byzantine::SplitViewChange
                            | Byzantine::ViewChangeBait
                    )
                ) {
                    match reply.omitted.as_mut() {
                        Some(d) => d[0] ^= 1,
                        None => reply.result.extend_from_slice(b"LIE"),
                    }
                    reply.mac = self.crypto.reply_mac(i, reply.client, &reply.mac_bytes());
                }
                let k = reply.client as usize;
                if k < self.clients.len() {
                    self.send(Node::Replica(i), Node::Client(k), NetMsg::Reply(reply), 0);
                }
            }
            Output::Persist(rec) => self.persist(i, rec),
            Output::TakeSnapshot { n, core_state } => {
                let r = &mut self.replicas[i as usize];
                let bytes = r.app.snapshot();
                r.durable.snapshots.insert(n, (core_state, bytes));
            }
            Output::Stable { n } => {
                let r = &mut self.replicas[i as usize];
                r.durable.snapshots = r.durable.snapshots.split_off(&n);
            }
            Output::FetchState { cert } => {
                self.state_transfers += 1;
                self.replicas[i as usize].transfer = Some((cert.clone(), BTreeSet::new()));
                self.ask_state(i);
            }
        }
    }

    fn persist(&mut self, i: ReplicaId, rec: PersistRecord) {
        self.replicas[i as usize].durable.records.apply(rec);
    }

    fn ask_state(&mut self, i: ReplicaId) {
        let n_rep = self.opts.config.n();
        let Some((cert, tried)) = self.replicas[i as usize].transfer.as_mut() else {
            return;
        };
        if tried.len() + 1 >= n_rep as usize {
            tried.clear();
        }
        let candidates: Vec<ReplicaId> = (0..n_rep)
            .filter(|j| *j != i && !tried.contains(j))
            .collect();
        let j = self.rng.pick(&candidates);
        let n = cert.n;
        self.replicas[i as usize]
            .transfer
            .as_mut()
            .expect("transfer")
            .1
            .insert(j);
        self.send(
            Node::Replica(i),
            Node::Replica(j),
            NetMsg::StateRequest { n },
            0,
        );
    }

    fn on_state_reply(
        &mut self,
        i: ReplicaId,
        _from: Node,
        n: SeqNum,
        state: Option<(CheckpointCert, CoreState, Vec<u8>)>,
    ) {
        let Some((wanted, _)) = self.replicas[i as usize].transfer.clone() else {
            return;
        };
        if wanted.n != n {
            return;
        }
        let config = self.opts.config.clone();
        let verified = state.and_then(|(cert, core, bytes)| {
            let ok_cert = if cert.n == wanted.n {
                cert.state_digest == wanted.state_digest
            } else {
                cert.n > wanted.n && validate::checkpoint_cert(&config, &self.crypto, &cert).is_ok()
            };
            if !ok_cert {
                return None;
            }
            let mut app = KvApp::default();
            app.restore(&bytes).ok()?;
            (checkpoint_digest(&app.state_digest(), &core) == cert.state_digest)
                .then_some((cert, core, bytes, app))
        });
        match verified {
            Some((cert, core, bytes, app)) => {
                let n = cert.n;
                let r = &mut self.replicas[i as usize];
                r.app = app;
                r.transfer = None;
                r.durable.snapshots.insert(n, (core.clone(), bytes));
                self.feed(
                    i,
                    Input::StateInstalled {
                        cert,
                        core_state: core,
                    },
                );
            }
            None => {
                // Asked again at the next tick (no storm of requests within one instant).
                *self.dropped.entry("bad_or_missing_state").or_insert(0) += 1;
                self.replicas[i as usize].transfer_retry = true;
            }
        }
    }

    fn replica_send(&mut self, i: ReplicaId, to: ReplicaId, msg: PeerMessage) {
        let mut extra = 0;
        match self.replicas[i as usize].byzantine {
            Some(Byzantine::SilentPrimary)
                if self.replicas[i as usize]
                    .core
                    .as_ref()
                    .is_some_and(Replica::is_primary) =>
            {
                return;
            }
            Some(Byzantine::SlowPrimary)
                if matches!(msg, PeerMessage::Ui(UiMessage::Prepare(_))) =>
            {
                extra = 3 * self.opts.config.request_timeout_ticks * TICK_US;
            }
            _ => {}
        }
        self.send(
            Node::Replica(i),
            Node::Replica(to),
            NetMsg::Peer(msg),
            extra,
        );
    }

    /// `SplitViewChange`: the correct replica, not in `not` and not the primary of
    /// `view`, that the faulty replicas pull out of `view` (the lowest such id).
    fn split_victim(&self, view: View, not: &[ReplicaId]) -> Option<ReplicaId> {
        let primary = self.opts.config.primary(view);
        (0..self.opts.config.n())
            .find(|r| !self.faulty.contains(r) && !not.contains(r) && *r != primary)
    }

    /// Byzantine broadcasts; true if the honest broadcast must not happen.
    fn byzantine_broadcast(&mut self, i: ReplicaId, msg: &PeerMessage) -> bool {
        let Some(mode) = self.replicas[i as usize].byzantine else {
            return false;
        };
        let n = self.opts.config.n();
        if let (Byzantine::SplitViewChange, PeerMessage::ReqViewChange { view, .. }) = (mode, msg) {
            if let Some(victim) = self.split_victim(*view, &[]) {
                self.replica_send(i, victim, msg.clone());
            }
            return true;
        }
        let PeerMessage::Ui(m) = msg else {
            return false;
        };
        match (mode, m) {
            (Byzantine::EquivocatingPrimary, UiMessage::Prepare(p))
                if !p.batch.requests.is_empty() =>
            {
                let mut other = p.clone();
                other.batch.requests.pop();
                other.header.batch_digest = other.batch.digest();
                let other = self.byzantine_certify(i, UiMessage::Prepare(other));
                for j in (0..n).filter(|j| *j != i) {
                    let m = if j % 2 == 0 {
                        msg.clone()
                    } else {
                        PeerMessage::Ui(other.clone())
                    };
                    self.replica_send(i, j, m);
                }
                true
            }
            (Byzantine::ForgeAndReplay, _) => {
                let mut forged = m.clone();
                if let Some(b) = forged.ui_mut().cert.first_mut() {
                    *b ^= 0xff;
                }
                let mut reused = m.clone();
                if let UiMessage::Commit(c) = &mut reused {
                    c.header.batch_digest[0] ^= 1;
                }
                if let UiMessage::Prepare(p) = &mut reused {
                    p.header.timestamp_ns += 1;
                }
                let old = self.replicas[i as usize]
                    .durable
                    .records
                    .sent
                    .values()
                    .next()
                    .cloned();
                for j in (0..n).filter(|j| *j != i) {
                    self.replica_send(i, j, PeerMessage::Ui(forged.clone()));
                    self.replica_send(i, j, PeerMessage::Ui(reused.clone()));
                    if let Some(o) = &old {
                        self.replica_send(i, j, PeerMessage::Ui(o.clone()));
                    }
                }
                false
            }
            (Byzantine::RebaseOverSent, UiMessage::Rebase(_)) => {
                // The REBASE goes only to the replicas the hidden messages did not reach.
                let mask = self.replicas[i as usize].hiding.take().map_or(0, |h| h.1);
                for j in (0..n).filter(|j| *j != i && mask & (1 << j) == 0) {
                    self.replica_send(i, j, msg.clone());
                }
                true
            }
            (Byzantine::RebaseOverSent, _) => {
                let rebasing = self.replicas[i as usize]
                    .core
                    .as_ref()
                    .is_some_and(Replica::is_rebasing);
                let hiding = match self.replicas[i as usize].hiding {
                    Some(h) => Some(h),
                    None if !rebasing && self.in_fault_phase() && self.rng.chance(60) => {
                        // Some of the others, never all of them.
                        let mut mask = 0u64;
                        for j in (0..n).filter(|j| *j != i) {
                            if self.rng.chance(500) {
                                mask |= 1 << j;
                            }
                        }
                        let all: u64 = (0..n).filter(|j| *j != i).map(|j| 1u64 << j).sum();
                        if mask == all {
                            mask &= mask - 1;
                        }
                        Some((self.rng.range(1, 3) as u32, mask))
                    }
                    None => None,
                };
                let Some((left, mask)) = hiding else {
                    return false;
                };
                for j in (0..n).filter(|j| *j != i && mask & (1 << j) != 0) {
                    self.replica_send(i, j, msg.clone());
                }
                if left <= 1 {
                    self.replicas[i as usize].hiding = Some((0, mask));
                    let keep_talking = self.rng.chance(500);
                    self.core_mut(i).byzantine_rebase(keep_talking);
                } else {
                    self.replicas[i as usize].hiding = Some((left - 1, mask));
                }
                true
            }
            (Byzantine::CommitUnprepared, UiMessage::Commit(c)) => {
                // A COMMIT for a batch nobody prepared, and one with a forged primary UI.
                let mut never = c.clone();
                never.header.n += 1;
                never.header.batch_digest = [0xAB; 32];
                let mut forged = c.clone();
                forged.primary_ui.cert = vec![0; forged.primary_ui.cert.len()];
                for j in (0..n).filter(|j| *j != i) {
                    self.replica_send(i, j, msg.clone());
                    self.replica_send(i, j, PeerMessage::Ui(UiMessage::Commit(never.clone())));
                    self.replica_send(i, j, PeerMessage::Ui(UiMessage::Commit(forged.clone())));
                }
                true
            }
            _ => false,
        }
    }

    /// A Byzantine replica spends a fresh USIG counter on a message of its choosing,
    /// behind its honest core's back.
    fn byzantine_certify(&mut self, i: ReplicaId, mut m: UiMessage) -> UiMessage {
        let r = &mut self.replicas[i as usize];
        r.durable.usig_counter += 1;
        let counter = r.durable.usig_counter;
        let cert = self.crypto.ui_cert(i, counter, &m.certified_digest());
        *m.ui_mut() = Ui { counter, cert };
        r.durable.records.sent.insert(counter, m.clone());
        r.core
            .as_mut()
            .expect("up")
            .byzantine_skip_counters(counter);
        m
    }

    /// The agreement oracle, checked at every execution by a non-Byzantine replica.
    fn check_execution(
        &mut self,
        i: ReplicaId,
        n: SeqNum,
        ts: u64,
        requests: &[Request],
        results: &[Vec<u8>],
    ) {
        if self.is_byzantine(i) {
            return;
        }
        let header = self.replicas[i as usize]
            .core
            .as_ref()
            .and_then(|c| c.executed_header(n).copied())
            .expect("executed header recorded");
        self.trace.update([13]);
        self.trace.update(n.to_be_bytes());
        self.trace.update(header.batch_digest);
        match self.executed.get(&n) {
            Some(&(t, d)) if (t, d) != (ts, header.batch_digest) => {
                self.fail_safety(format!(
                    "replica {i} executed a different batch at {n} than another correct replica"
                ));
                return;
            }
            Some(_) => {}
            None => {
                self.executed.insert(n, (ts, header.batch_digest));
            }
        }
        for (req, res) in requests.iter().zip(results) {
            match self.results.get(&(req.client, req.seq)) {
                Some(prev) if prev != res => {
                    self.fail_safety(format!(
                        "replica {i} produced another result for client {} seq {}",
                        req.client, req.seq
                    ));
                }
                Some(_) => {}
                None => {
                    self.results.insert((req.client, req.seq), res.clone());
                }
            }
        }
    }
}
