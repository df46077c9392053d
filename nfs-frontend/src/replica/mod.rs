//! The replica runtime: the thin driver around the pure MinPBFT core (STYLE, "a pure
//! protocol core, a thin driver"). It owns the sockets, the clock, the USIG, the durable
//! log, the file state machine and the snapshots, and performs the core's outputs in
//! order, the way the simulator (`consensus::sim`) does with fakes.
//!
//! One current-thread tokio runtime: the protocol loop handles a burst of inputs
//! synchronously (validation, `step`, USIG, execution, log appends), then makes the log
//! durable with one `fdatasync` (which with the software USIG also makes its counter
//! durable; the file state is flushed after checkpoints, beside the loop), and only then hands what the burst
//! produced to the connection tasks (`release`). That is how "every `Persist` is durable
//! before any later send" holds while the log sync is shared by a whole burst. The one
//! exception is a primary's PREPARE under a counter lease (`Lease`), which leaves while
//! the sync runs.
//!
//! Modules: `links` (connections), `log` (protocol records), `app` (file state machine or
//! null app), `snapshots` (checkpoint manifests on disk), `transfer` (chunked state
//! transfer and self-repair), `verifier` (off-path signature checks at idle priority).

pub mod app;
pub mod links;
pub mod log;
pub mod slim;
pub mod snapshots;
pub mod transfer;
pub mod verifier;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consensus::replica::{CoreState, checkpoint_digest};
use consensus::{Input, Output, PeerMessage, Replica, ReplicaId, SeqNum};
use fs_state::FsConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};
pub use transfer::TransferStats;
use usig::{ProcessUsig, SoftwareUsig, Usig};

use crate::config::ClusterConfig;
use crate::crypto::ClusterCrypto;
use crate::net::{DropReason, LinkMsg, NetStats, Outgoing, ReplicaMsg, encode};
use app::App;
use links::Event;
use log::ProtocolLog;
use snapshots::{Snapshot, SnapshotStore};

/// A group commit slower than this is logged (debug): disk stalls show up in the tails.
const SLOW_SYNC: Duration = Duration::from_millis(10);
/// Time between two warnings about replaced client connections.
const REPLACED_WARN_EVERY: Duration = Duration::from_secs(60);

/// COMMITs held for one peer at most (`Node::may_hold`) before they go anyway.
const HELD_MAX: usize = 32;
/// Inputs handled before the log is synced and the loop yields.
const BURST_MAX: usize = 256;
/// Events queued from all connections toward the protocol loop.
const EVENT_QUEUE_MAX: usize = 4_096;
/// USIG counter values a primary leases ahead of its last UI (`Lease`): its PREPAREs up
/// to the lease leave while the log syncs. Far above the pipeline (8 batches).
const LEASE_WINDOW: u64 = 256;
/// Fault injection for tests: with this variable set to `ID:N`, replica ID aborts right
/// after its N-th early PREPARE reached the sockets, before its log sync, and leaves the
/// PREPARE's counter in `early-abort` in its data directory.
pub const ABORT_AFTER_EARLY_ENV: &str = "BFTNFS_FAULT_ABORT_AFTER_EARLY_PREPARE";

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("USIG: {0}")]
    Usig(#[from] usig::UsigError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("application (local fault, replica stops): {0}")]
    App(#[from] app::AppError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("recovery: {0}")]
    Recovery(String),
}

/// How to run one replica.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub id: ReplicaId,
    pub data_dir: PathBuf,
    /// Order requests but execute nothing (protocol micro-benchmarks).
    pub null_app: bool,
    pub fs_config: FsConfig,
    /// Reach the USIG in a separate `bftnfs usig-server` on this Unix socket instead of
    /// holding the key in-process (the replica then never reads the key file).
    pub usig_socket: Option<PathBuf>,
    /// Fault injection for tests: serve state-transfer chunks with a flipped byte (a
    /// Byzantine peer), so that the fetching replica must detect it and ask another.
    pub serve_corrupt_chunks: bool,
    /// Fault injection for tests: drop the large ordered requests that clients send
    /// straight to this replica, so that it must ask the primary for every slim PREPARE
    /// whole (`slim`).
    pub drop_large_client_copies: bool,
}

/// What a replica did, reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    pub executed_n: SeqNum,
    pub view: u64,
    pub dropped_core: BTreeMap<&'static str, u64>,
    pub dropped_net: u64,
    pub transfer: TransferStats,
    /// Signature checks handed to the idle-priority thread (`verifier`).
    pub checks_deferred: u64,
    /// Replies sent again from the exactly-once cache.
    pub replies_from_cache: u64,
    /// First copies of ordered requests that came straight from their client after
    /// this replica had executed them (their PREPARE overtook them): dropped unchecked,
    /// as the reply left at execution. A re-send (`ClientMsg::Resend`) is answered
    /// from the cache instead (`replies_from_cache`).
    pub late_request_copies: u64,
    /// Client connections that took the replies' route while the client's previous
    /// connection was still open (a reconnect, or two processes with one client key).
    pub client_conns_replaced: u64,
    /// PREPAREs sent while their log record was still being synced (`Lease`).
    pub prepares_early: u64,
    /// COMMITs held back for a peer that did not need them at once (`Node::may_hold`).
    pub commits_held: u64,
    /// Held COMMITs that have left since (with a later message to that peer, or at a
    /// tick); equal to `commits_held` once the replica is idle.
    pub commits_held_sent: u64,
    /// This run began by re-basing: its USIG was ahead of its log (consensus I8).
    pub started_rebasing: bool,
    /// PREPAREs that left large requests out, sent and received (`slim`).
    pub slim: slim::SlimStats,
}

/// The software USIG's counter lease, which lets a primary's PREPARE leave while the
/// log that makes its counter durable is still syncing, so that the primary's sync runs
/// beside the backups' instead of before them (one disk flush on a request's critical
/// path instead of two).
///
/// The rule the runtime otherwise keeps, "nothing leaves before what produced it is
/// durable", exists for the counter (a crash must never let the USIG issue a value
/// twice) and for the replica's memory of what it sent. The lease answers both:
/// - before a PREPARE leaves early, its `Sent` record is written to the log file (not
///   synced), so a crash of the process keeps it in the page cache: a restart in the
///   same boot finds every UI it released, as before;
/// - a PREPARE leaves early only if its counter is at most a `Lease` record already
///   synced; a restart after the machine went down (a different `boot_id`) moves the
///   USIG past the lease (`Usig::skip_to`), and if that is past the log the replica
///   re-bases (consensus I8), whose safety argument covers a replica that sent messages
///   and lost them (`Byzantine::RebaseOverSent`, the simulator's `usig_gaps`).
///
/// Everything else (COMMITs, replies, CHECKPOINTs, the PREPARE of a burst that held a
/// message before it) still waits for the sync, so a reply still means the replying
/// replica's log holds the batch.
#[derive(Debug, Default)]
struct Lease {
    /// This boot's id (`/proc/sys/kernel/random/boot_id`; empty if unknown, which never
    /// matches).
    boot: String,
    /// Counter of the newest `Lease` record appended.
    written: u64,
    /// Counter of the newest `Lease` record known durable: PREPAREs up to it may leave
    /// early.
    durable: u64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Lowers the USIG lease in the log of a replica that is not running (it crashed or was
/// killed) to its last logged UI, so that a machine restart before the replica's own
/// restart does not make it skip and re-base. Safe because a stopped process sends
/// nothing more and wrote every PREPARE it sent early into the log file before sending
/// it (`Lease`); opening the log makes what the page cache holds durable. Refuses while
/// a replica holds its data directory or the USIG's lock, and after a machine restart
/// (the page cache, and with it possibly PREPAREs' records, is gone: only the re-base
/// is safe then).
/// `bftnfs up` does this when a replica exits; `bftnfs seal` for other supervisors.
/// Returns the lease before and after, if it was lowered.
pub fn seal_lease(data_dir: &Path) -> Result<Option<(u64, u64)>, ReplicaError> {
    if !data_dir.join(log::LOG_FILE).exists() {
        return Ok(None);
    }
    // A running replica holds this whatever its USIG (`lock_data_dir`).
    let _dir_lock = lock_data_dir(data_dir)?;
    let usig_dir = data_dir.join("usig");
    let _lock = if usig_dir.is_dir() {
        Some(usig::lock_state_dir(&usig_dir)?)
    } else {
        None
    };
    if !data_dir.join(log::LOG_FILE).exists() {
        return Ok(None);
    }
    let mut log = ProtocolLog::open(data_dir)?;
    let last = log.durable.last_sent_counter();
    let Some(lease) = log.durable.lease.clone().filter(|l| l.counter > last) else {
        return Ok(None);
    };
    let boot = boot_id();
    if !written_in(&lease, &boot) {
        // The page cache that held the log's tail is gone: PREPAREs under the lease may
        // have left without a record. Only the re-base is safe now.
        return Err(ReplicaError::Recovery(format!(
            "the USIG lease in {} was written before the machine restarted; the replica \
             must re-base (start it), sealing now could let it issue a counter twice",
            data_dir.display()
        )));
    }
    log.append(consensus::PersistRecord::Lease(consensus::UsigLease {
        counter: last,
        boot,
    }));
    log.sync()?;
    info!(data = %data_dir.display(), from = lease.counter, to = last, "USIG lease sealed");
    Ok(Some((lease.counter, last)))
}

/// The counter a restarting replica's USIG must skip to, if any: the lease's, when it
/// was written in another boot (the log's unsynced tail, and with it PREPAREs that left
/// early, may be gone) and is above what the USIG already spent.
fn lease_skip(lease: Option<&consensus::UsigLease>, boot: &str, spent: u64) -> Option<u64> {
    let lease = lease?;
    (!written_in(lease, boot) && lease.counter > spent).then_some(lease.counter)
}

/// Whether `lease` was written in this machine boot (an unknown boot id never matches),
/// so that the page cache still holds every record written before a PREPARE left.
fn written_in(lease: &consensus::UsigLease, boot: &str) -> bool {
    !boot.is_empty() && lease.boot == boot
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where the USIG runs. The software USIG signs in tens of microseconds and its counter
/// rides on the log's sync, so it runs inline. A TPM (20–600 ms a UI) or a separate
/// USIG process runs on a thread of its own: while it certifies one message the
/// protocol thread keeps receiving, executing and replying, and requests arriving
/// meanwhile ride in the next batch. The core asks for one UI at a time, so one thread
/// and a queue of at most one digest keep the counters in order.
enum UsigSeat {
    Inline(Box<dyn Usig + Send>),
    Worker {
        /// Digests to certify; dropped to stop the thread.
        tx: Option<std::sync::mpsc::Sender<usig::Digest>>,
        /// The thread, which hands the USIG back when it stops (a TPM session is
        /// flushed when the USIG is dropped).
        thread: Option<std::thread::JoinHandle<Box<dyn Usig + Send>>>,
    },
}

impl UsigSeat {
    fn needs_sync(&self) -> bool {
        matches!(self, UsigSeat::Inline(u) if u.needs_sync())
    }

    /// Moves the USIG onto a thread of its own that reports to `events`.
    fn start_worker(&mut self, id: ReplicaId, events: mpsc::Sender<Event>) -> std::io::Result<()> {
        let placeholder = UsigSeat::Worker {
            tx: None,
            thread: None,
        };
        let UsigSeat::Inline(mut usig) = std::mem::replace(self, placeholder) else {
            return Ok(());
        };
        let (tx, rx) = std::sync::mpsc::channel::<usig::Digest>();
        let thread = std::thread::Builder::new()
            .name(format!("usig-{id}"))
            .spawn(move || {
                while let Ok(digest) = rx.recv() {
                    let result = usig.create_ui(&digest);
                    let failed = result.is_err();
                    if events.blocking_send(Event::UiCreated(result)).is_err() || failed {
                        break;
                    }
                }
                usig
            })?;
        *self = UsigSeat::Worker {
            tx: Some(tx),
            thread: Some(thread),
        };
        Ok(())
    }

    /// Stops a worker (after the protocol loop stopped reading its events) and makes
    /// everything durable.
    fn close(&mut self) -> Result<(), ReplicaError> {
        match self {
            UsigSeat::Inline(u) => Ok(u.sync()?),
            UsigSeat::Worker { tx, thread } => {
                drop(tx.take());
                if let Some(t) = thread.take() {
                    // At most one createUI in flight; the USIG is dropped here.
                    let mut usig = t.join().map_err(|_| {
                        ReplicaError::Io(std::io::Error::other("the USIG thread panicked"))
                    })?;
                    usig.sync()?;
                }
                Ok(())
            }
        }
    }
}

/// A checkpoint's file state on its way to the disk. The burst that took the checkpoint
/// waits only for its protocol log; the `syncfs` that makes the checkpoint's chunks and
/// files durable runs on a thread of its own, and what depends on it waits instead: the
/// `Stable` record of that checkpoint (until it is durable a restart starts from the
/// stable checkpoint before, whose snapshot, chunks and log records are all kept until
/// then), the metadata journal's record (`finish_sync`), the next checkpoint's flush, a
/// state transfer's install and a clean stop (`Node::settle_checkpoint`). Each held
/// output waits for the flush of the checkpoint it makes stable: the running one, or the
/// one a checkpoint captured in the current burst starts at its end (`flush_needed`). Measured
/// before: the checkpoint burst waited for two `syncfs` (the capture's and the file
/// state's), 0.76 + 1.07 ms at the median per replica and up to 54 ms, with all three
/// replicas at once (benchmark/README, fourteenth session).
struct CheckpointFlush {
    thread: std::thread::JoinHandle<std::io::Result<()>>,
    pending: fs_state::PendingSync,
    started: std::time::Instant,
}

/// A core output held for `CheckpointFlush`.
enum Held {
    Record(consensus::PersistRecord),
    Stable(SeqNum),
}

/// A held output and the number of the flush it waits for (`Node::flush_needed`).
struct HeldStable {
    needs: u64,
    output: Held,
}

struct Node {
    id: ReplicaId,
    data_dir: PathBuf,
    n: u32,
    config: Arc<ClusterConfig>,
    crypto: ClusterCrypto,
    core: Replica,
    app: Option<App>,
    usig: UsigSeat,
    /// The USIG defers its counter's sync to `sync_all` (in-process software USIG).
    group_commit: bool,
    log: ProtocolLog,
    /// A checkpoint of the file state was taken in this burst: flush it (`CheckpointFlush`).
    app_dirty: bool,
    /// The file state's flush after a checkpoint, on a thread of its own.
    checkpoint_flush: Option<CheckpointFlush>,
    /// `Stable` records and outputs waiting for that flush, in the core's order.
    stable_held: Vec<HeldStable>,
    /// The newest checkpoint that became stable and whose old manifests and chunks are
    /// still to be dropped (`Node::clean_up_stable`).
    stable_cleanup: Option<SeqNum>,
    /// Where the flush thread reports that it finished; set by `run`.
    events: Option<mpsc::Sender<Event>>,
    /// Checkpoint flushes started (numbers `Event::CheckpointFlushed`), and finished
    /// and committed; a checkpoint with nothing to flush counts as both at once.
    flushes_started: u64,
    flushes_done: u64,
    snaps: SnapshotStore,
    /// Snapshots saved by this burst's checkpoint without a sync
    /// (`SnapshotStore::save_unsynced`): the next checkpoint flush syncs them, or the
    /// burst's end if none starts, before any `Stable` record can follow them.
    unsynced_snapshots: Vec<PathBuf>,
    /// Application snapshots taken right after a batch whose digest a checkpoint needs,
    /// waiting for the core's `TakeSnapshot` (later batches may execute in between).
    pending_snapshots: BTreeMap<SeqNum, Vec<u8>>,
    peers: Vec<Option<mpsc::Sender<Arc<Outgoing>>>>,
    clients: BTreeMap<u64, (u64, mpsc::Sender<Vec<u8>>)>,
    transfer: Option<transfer::Transfer>,
    transfer_stats: TransferStats,
    chunk_req_seq: u64,
    serve_corrupt_chunks: bool,
    drop_large_client_copies: bool,
    ticks: u64,
    stats: Arc<NetStats>,
    /// Checks nobody waits for, on an idle-priority thread (`verifier`); set by `run`.
    lazy: Option<verifier::LazyVerifier>,
    lease: Lease,
    /// `ReplicaStats::late_request_copies`.
    late_request_copies: u64,
    /// `ReplicaStats::client_conns_replaced`.
    client_conns_replaced: u64,
    /// When the last warning about a replaced client connection was logged.
    client_replaced_warned: Option<std::time::Instant>,
    /// Peer messages and client replies of this burst, released after its sync.
    /// With each message, whether it may be held (`may_hold`).
    outbox: Vec<(ReplicaId, Arc<Outgoing>, bool)>,
    /// Per peer: released COMMITs that peer does not need soon (`may_hold`), sent with
    /// the next message to it or at the next tick.
    held: Vec<Vec<Arc<Outgoing>>>,
    commits_held: u64,
    commits_held_sent: u64,
    replies: Vec<(u64, Vec<u8>)>,
    /// PREPAREs that left before their burst's sync (`Lease`), and the last one's
    /// counter.
    prepares_early: u64,
    last_early: u64,
    started_rebasing: bool,
    slim: slim::SlimStats,
    /// Slim PREPAREs waiting for their requests' client copies.
    slim_waiting: Vec<slim::Waiting>,
    /// Per peer: counters of the PREPAREs it asked for whole and got (the latest).
    slim_answered: Vec<std::collections::BTreeSet<u64>>,
}

impl Node {
    fn app(&mut self) -> &mut App {
        self.app
            .as_mut()
            .expect("application open while the node runs")
    }

    /// Makes everything this burst produced durable before any of it can leave: protocol
    /// records (which hold every ordered request, so the executed batches too, and every
    /// message this replica certified) and the USIG's counter. When the burst took a
    /// checkpoint, its file state starts flushing on a thread of its own
    /// (`CheckpointFlush`); nothing of the burst waits for that.
    ///
    /// With the in-process software USIG (`group_commit`) the log's one `fdatasync` is
    /// also the counter's: every UI of the burst is in a `Sent` record of the synced
    /// log, `open_node` moves the counter up to the last logged one
    /// (`Usig::advance_to`, on the USIG's own signature), and log compaction always
    /// keeps the newest `Sent` record. The USIG only writes its counter back (no sync,
    /// so a process crash keeps it for a replica that loses its log but not its USIG
    /// state) after the log is durable, so its file is never ahead of the log; it syncs
    /// it at checkpoints. Other USIGs made their counter durable in `create_ui`.
    fn sync_all(&mut self) -> Result<(), ReplicaError> {
        let usig = self.usig.needs_sync();
        let log = self.log.must_sync() || (usig && self.log.is_dirty());
        let app = std::mem::take(&mut self.app_dirty) && self.app.is_some();
        let protocol =
            |log_ref: &mut ProtocolLog, seat: &mut UsigSeat| -> Result<(), ReplicaError> {
                if log {
                    log_ref.sync()?;
                }
                if usig && let UsigSeat::Inline(usig_ref) = seat {
                    if app {
                        usig_ref.sync()?;
                    } else {
                        usig_ref.write_back()?;
                    }
                }
                Ok(())
            };
        if app {
            // What the previous flush held goes into this burst's sync.
            self.settle_checkpoint()?;
        } else {
            // No flush starts to take them: durable before anything of the burst.
            self.sync_snapshots()?;
        }
        protocol(&mut self.log, &mut self.usig)?;
        if app {
            // After the log's sync, not before: a `syncfs` writes back every dirty page
            // of the file system, and an `fdatasync` that comes after it waits in the
            // disk's queue behind them (2–3 ms instead of 0.3 on the checkpoint's burst).
            self.start_checkpoint_flush()?;
            // With nothing to flush (the null application) what it held was released
            // just now, after the sync: it goes with this burst all the same.
            if self.log.must_sync() {
                self.log.sync()?;
            }
        }
        Ok(())
    }

    /// Starts flushing the file state of the checkpoint this burst took
    /// (`CheckpointFlush`), once the previous flush is done and what waited for it is
    /// handed over: a held `Stable` is never more than one flush behind.
    fn start_checkpoint_flush(&mut self) -> Result<(), ReplicaError> {
        self.settle_checkpoint()?;
        self.flushes_started += 1;
        let Some((flush, pending)) = self.app().begin_sync()? else {
            // Nothing to flush (the null application, or a file state synced per
            // object, synced already): what waited for it goes now.
            self.sync_snapshots()?;
            self.flushes_done = self.flushes_started;
            return self.release_held();
        };
        let (events, seq) = (self.events.clone(), self.flushes_started);
        let snapshots = std::mem::take(&mut self.unsynced_snapshots);
        let thread = std::thread::Builder::new()
            .name(format!("ckpt-flush-{}", self.id))
            .spawn(move || {
                // After the `syncfs` the snapshots' own syncs find little left to write
                // when they share its file system (and do the whole job when not).
                let flushed = flush
                    .run()
                    .and_then(|()| SnapshotStore::sync_saved(&snapshots));
                // Never blocks: the protocol thread may be joining this one, and a full
                // queue is drained only by it. Without the event the next tick notices
                // (`on_tick`).
                if let Some(events) = events {
                    let _ = events.try_send(Event::CheckpointFlushed { seq });
                }
                flushed
            })?;
        self.checkpoint_flush = Some(CheckpointFlush {
            thread,
            pending,
            started: std::time::Instant::now(),
        });
        Ok(())
    }

    /// Syncs the snapshots saved unsynced, where no checkpoint flush takes them.
    fn sync_snapshots(&mut self) -> Result<(), ReplicaError> {
        let snapshots = std::mem::take(&mut self.unsynced_snapshots);
        Ok(SnapshotStore::sync_saved(&snapshots)?)
    }

    /// Waits for the running checkpoint flush (if any), commits it, then hands over
    /// what waited for it.
    fn settle_checkpoint(&mut self) -> Result<(), ReplicaError> {
        self.finish_flush()?;
        self.release_held()
    }

    /// The flush numbered `seq` reported that it finished.
    fn on_flushed(&mut self, seq: u64) -> Result<(), ReplicaError> {
        if seq == self.flushes_started && self.checkpoint_flush.is_some() {
            self.settle_checkpoint()?;
        }
        Ok(())
    }

    fn finish_flush(&mut self) -> Result<(), ReplicaError> {
        let Some(f) = self.checkpoint_flush.take() else {
            return Ok(());
        };
        let flushed = f.thread.join().map_err(|_| {
            ReplicaError::Io(std::io::Error::other(
                "the checkpoint flush thread panicked",
            ))
        })?;
        flushed?;
        self.app().finish_sync(f.pending)?;
        self.flushes_done = self.flushes_started;
        debug!(
            id = self.id,
            flush_us = f.started.elapsed().as_micros() as u64,
            "checkpoint file state durable"
        );
        Ok(())
    }

    /// Hands over, in order, the held outputs whose flush is done.
    fn release_held(&mut self) -> Result<(), ReplicaError> {
        let ready = self
            .stable_held
            .iter()
            .take_while(|h| h.needs <= self.flushes_done)
            .count();
        for held in self.stable_held.drain(..ready).collect::<Vec<_>>() {
            self.hand_over(held.output)?;
        }
        Ok(())
    }

    fn hand_over(&mut self, output: Held) -> Result<(), ReplicaError> {
        match output {
            Held::Record(rec) => self.log.append(rec),
            // After the burst's sync and sends (`clean_up_stable`): dropping old
            // manifests and chunks (0.5–2.5 ms here) need not hold up its replies.
            Held::Stable(n) => self.stable_cleanup = self.stable_cleanup.max(Some(n)),
        }
        Ok(())
    }

    /// The flush a `Stable` produced now must wait for: the one running, or the one the
    /// checkpoint captured in this burst (`app_dirty`) starts at the burst's end.
    fn flush_needed(&self) -> u64 {
        self.flushes_started + u64::from(self.app_dirty)
    }

    /// Holds `output` until its flush is done, behind what is held already.
    fn hold_or_release(&mut self, output: Held) -> Result<(), ReplicaError> {
        let needs = self.flush_needed();
        if needs > self.flushes_done || !self.stable_held.is_empty() {
            self.stable_held.push(HeldStable { needs, output });
            return Ok(());
        }
        self.hand_over(output)
    }

    /// Appends a `Lease` record when a primary's lease runs low; once this replica is no
    /// longer primary, or `stopping`, one record brings the lease down to its last UI, so
    /// that a restart after a reboot skips no values it need not. Durable with the next
    /// sync.
    fn renew_lease(&mut self, stopping: bool) {
        if !self.group_commit {
            return;
        }
        let UsigSeat::Inline(usig) = &self.usig else {
            return;
        };
        let issued = usig.last_issued().map_or(0, |u| u.ui.counter);
        let leading = !stopping && self.core.is_primary() && !self.core.in_view_change();
        let counter = if leading {
            if self.lease.written >= issued + LEASE_WINDOW / 2 {
                return;
            }
            issued + LEASE_WINDOW
        } else {
            if self.lease.written <= issued {
                return;
            }
            issued
        };
        self.log
            .append(consensus::PersistRecord::Lease(consensus::UsigLease {
                counter,
                boot: self.lease.boot.clone(),
            }));
        self.lease.written = counter;
    }

    /// The end of a burst: the lease, one sync for everything, then what waited for it
    /// is handed to the connections. Whether anything was.
    fn commit_burst(&mut self) -> Result<bool, ReplicaError> {
        self.renew_lease(false);
        self.sync_all()?;
        self.lease.durable = self.lease.written;
        Ok(self.release())
    }

    fn feed(&mut self, input: Input) -> Result<(), ReplicaError> {
        let mut work = VecDeque::from([input]);
        while let Some(input) = work.pop_front() {
            let view = self.core.view();
            let outs = self.core.step(input);
            if self.core.view() != view {
                let v = self.core.view();
                info!(
                    id = self.id,
                    "entered view {v} (primary {})",
                    self.config.consensus.primary(v)
                );
                // For operators and tests: the view this replica is in.
                let _ = std::fs::write(self.data_dir.join("status"), format!("view {v}\n"));
            }
            for o in outs {
                self.perform(o, &mut work)?;
            }
        }
        Ok(())
    }

    /// Queues a message to leave after this burst's sync (`release`).
    fn send_peer(&mut self, to: ReplicaId, msg: Arc<Outgoing>) {
        self.outbox.push((to, msg, false));
    }

    /// The counter of this PREPARE if it may leave before the burst's sync (`Lease`):
    /// with the in-process software USIG only, with a counter under a durable lease, and
    /// only while nothing of this burst is held for a peer (FIFO order on the links).
    fn early_counter(&self, msg: &PeerMessage) -> Option<u64> {
        match msg {
            PeerMessage::Ui(m @ consensus::UiMessage::Prepare(_))
                if self.group_commit
                    && self.outbox.is_empty()
                    && m.counter() <= self.lease.durable =>
            {
                Some(m.counter())
            }
            _ => None,
        }
    }

    /// Hands what this burst produced to the connections; called once it is durable.
    /// Whether there was anything.
    fn release(&mut self) -> bool {
        let any = !self.outbox.is_empty() || !self.replies.is_empty();
        for (to, msg, holdable) in std::mem::take(&mut self.outbox) {
            if holdable {
                self.hold(to, msg);
            } else {
                self.send_now(to, msg);
            }
        }
        for (client, frame) in std::mem::take(&mut self.replies) {
            if let Some((_, tx)) = self.clients.get(&client)
                && tx.try_send(frame).is_err()
            {
                self.stats.count(DropReason::QueueFull);
            }
        }
        any
    }

    /// Hands `msg` to the connection to `to`, after what is held for it (a link keeps
    /// its sender's order).
    fn send_now(&mut self, to: ReplicaId, msg: Arc<Outgoing>) {
        self.flush_held(to);
        self.enqueue_link(to, msg);
    }

    fn enqueue_link(&mut self, to: ReplicaId, msg: Arc<Outgoing>) {
        if let Some(Some(tx)) = self.peers.get(to as usize)
            && tx.try_send(msg).is_err()
        {
            self.stats.count(DropReason::QueueFull);
        }
    }

    /// Whether `msg` may wait for the next message to `to` or the next tick. With f = 1
    /// a COMMIT matters at once only to the primary: a backup executes on the PREPARE
    /// and its own COMMIT (f + 1 = 2), so the other backup's COMMIT only keeps its
    /// stream of our messages complete. Sent one by one, each cost that backup a
    /// wake-up, a read and a hand-over to its idle checker per request; held, they
    /// travel together. A backup that needs them sooner (one catching up whose PREPARE
    /// is stale waits for the others' COMMITs) gets them at the next tick; anything else
    /// we send it, a CHECKPOINT or a VIEW-CHANGE, takes them along first. Only fresh
    /// COMMITs are held (`Output::Broadcast`): one sent again to a peer that asked for it
    /// (a Fetch) goes at once.
    fn may_hold(&self, to: ReplicaId, msg: &Outgoing) -> bool {
        let f1 = self.core.config().f == 1;
        matches!(&msg.msg, LinkMsg::Peer(PeerMessage::Ui(consensus::UiMessage::Commit(c)))
            if f1 && c.sender == self.id && to != c.primary)
    }

    fn hold(&mut self, to: ReplicaId, msg: Arc<Outgoing>) {
        let held = &mut self.held[to as usize];
        held.push(msg);
        self.commits_held += 1;
        if held.len() >= HELD_MAX {
            self.flush_held(to);
        }
    }

    fn flush_held(&mut self, to: ReplicaId) {
        let Some(held) = self.held.get_mut(to as usize) else {
            return;
        };
        for msg in std::mem::take(held) {
            self.commits_held_sent += 1;
            self.enqueue_link(to, msg);
        }
    }

    fn flush_all_held(&mut self) {
        for to in 0..self.held.len() {
            self.flush_held(to as ReplicaId);
        }
    }

    fn perform(&mut self, o: Output, work: &mut VecDeque<Input>) -> Result<(), ReplicaError> {
        match o {
            Output::Send { to, msg } => {
                self.send_peer(to, Arc::new(Outgoing::new(LinkMsg::Peer(msg))))
            }
            Output::Broadcast(msg) => {
                let early = self.early_counter(&msg);
                if let Some(counter) = early {
                    // Into the page cache first: a crash of this process keeps the
                    // record, and the USIG's own file its counter (a replica that then
                    // loses its log but keeps usig/ must not issue this value again).
                    self.log.write_pending()?;
                    if let UsigSeat::Inline(usig) = &mut self.usig {
                        usig.write_back()?;
                    }
                    self.prepares_early += 1;
                    self.last_early = counter;
                }
                let msg = Arc::new(Outgoing::new(self.link_form(msg)));
                for j in 0..self.n {
                    if j == self.id {
                        continue;
                    }
                    if early.is_some() {
                        self.send_now(j, msg.clone());
                    } else {
                        // Only what this replica broadcasts may be held, not its old
                        // messages it sends again to a peer that asked for them.
                        let holdable = self.may_hold(j, &msg);
                        self.outbox.push((j, msg.clone(), holdable));
                    }
                }
            }
            Output::CreateUi { digest } => {
                if !self.group_commit {
                    // Write-ahead: the message's intent (and every record before it) is
                    // durable before the USIG spends a counter on it, so a crash in
                    // between is completed on restart instead of leaving a hole in our
                    // stream.
                    self.log.sync()?;
                }
                match &mut self.usig {
                    // Group commit: the counter becomes durable with the log's sync in
                    // `sync_all`, before anything leaves (see `sync_all`).
                    UsigSeat::Inline(usig) if self.group_commit => {
                        let ui = usig.create_ui_deferred(&digest)?;
                        work.push_back(Input::UiCreated(ui));
                    }
                    UsigSeat::Inline(usig) => {
                        let ui = usig.create_ui(&digest)?;
                        work.push_back(Input::UiCreated(ui));
                    }
                    // The answer comes back as `Event::UiCreated`.
                    UsigSeat::Worker { tx, .. } => {
                        let sent = tx.as_ref().is_some_and(|tx| tx.send(digest).is_ok());
                        if !sent {
                            return Err(ReplicaError::Io(std::io::Error::other(
                                "the USIG thread stopped",
                            )));
                        }
                    }
                }
            }
            Output::Execute {
                n,
                timestamp_ns,
                requests,
                want_digest,
            } => {
                let app = self.app();
                let results = app.execute(n, timestamp_ns, &requests)?;
                // The file state is synced at checkpoints only: an executed batch is
                // durable through the protocol log (its PREPARE, synced before anything
                // leaves), and a restart restores the stable checkpoint and re-executes
                // the logged batches above it anyway (`open_node`), so a sync per batch
                // would buy nothing.
                self.app_dirty |= want_digest;
                let app = self.app();
                let app_digest = if want_digest {
                    let started = std::time::Instant::now();
                    let d = app.digest()?;
                    let digested = started.elapsed();
                    let snap = app.snapshot()?;
                    debug!(
                        n,
                        digest_us = digested.as_micros() as u64,
                        snapshot_us = (started.elapsed() - digested).as_micros() as u64,
                        manifest_bytes = snap.len(),
                        "checkpoint taken"
                    );
                    self.pending_snapshots.insert(n, snap);
                    Some(d)
                } else {
                    None
                };
                work.push_back(Input::Executed {
                    n,
                    results,
                    app_digest,
                });
            }
            Output::ComputeDigest { n } => {
                self.app_dirty = true;
                let app = self.app();
                let app_digest = app.digest()?;
                let snap = app.snapshot()?;
                self.pending_snapshots.insert(n, snap);
                work.push_back(Input::Digest { n, app_digest });
            }
            Output::ExecuteReadOnly { request } => {
                let result = self.app().query(&request.op)?;
                work.push_back(Input::ReadOnlyExecuted {
                    client: request.client,
                    seq: request.seq,
                    result,
                });
            }
            Output::Reply(reply) => {
                let client = ClusterConfig::client_index(reply.client);
                self.replies
                    .push((client, encode(&ReplicaMsg::Reply(reply))));
            }
            // A `Stable` record waits for the flush of the checkpoint it makes stable
            // (`CheckpointFlush`), the running one or the one this burst starts.
            Output::Persist(rec @ consensus::PersistRecord::Stable(_)) => {
                self.hold_or_release(Held::Record(rec))?;
            }
            Output::Persist(rec) => self.log.append(rec),
            Output::TakeSnapshot { n, core_state } => {
                let app = match self.pending_snapshots.remove(&n) {
                    Some(a) => a,
                    None => {
                        warn!(
                            n,
                            "snapshot requested without a digest first; taking it now"
                        );
                        // Its chunks wait for the burst's flush, like a digest's.
                        self.app_dirty = true;
                        self.app().snapshot()?
                    }
                };
                let saved = self.snaps.save_unsynced(&Snapshot { n, core_state, app })?;
                self.unsynced_snapshots.push(saved);
                // Synced by this burst's flush, which any `Stable` for it waits for (a
                // digest in the same burst set this already).
                self.app_dirty = true;
            }
            Output::Stable { n } => self.hold_or_release(Held::Stable(n))?,
            Output::FetchState { cert } => self.on_fetch_state(cert),
        }
        Ok(())
    }

    fn on_event(&mut self, ev: Event) -> Result<(), ReplicaError> {
        match ev {
            Event::UiCreated(result) => self.feed(Input::UiCreated(result?)),
            Event::Link { from, msg } => match msg {
                LinkMsg::Peer(m) => self.on_peer(from, m),
                LinkMsg::StateRequest { n } => self.on_state_request(from, n),
                LinkMsg::StateReply { n, state } => self.on_state_reply(from, n, state),
                LinkMsg::ChunkRequest { id, hashes } => self.on_chunk_request(from, id, hashes),
                LinkMsg::ChunkReply { id, chunks } => self.on_chunk_reply(from, id, chunks),
                LinkMsg::SlimPrepare { prepare, omitted } => {
                    self.on_slim_prepare(from, prepare, omitted)
                }
                LinkMsg::PrepareWanted { counter } => {
                    self.on_prepare_wanted(from, counter);
                    Ok(())
                }
            },
            Event::Request { req, resend } => {
                if self.drop_large_client_copies
                    && !req.read_only
                    && req.op.len() >= slim::SLIM_OP_BYTES_MIN
                {
                    return Ok(());
                }
                if !resend && !req.read_only && self.executed_already(&req) {
                    // A first copy its PREPARE overtook: the reply left when the batch
                    // executed. Neither checked nor answered (a re-send would be).
                    self.late_request_copies += 1;
                    return Ok(());
                }
                // A backup needs an ordered request only when the PREPARE carrying it
                // arrives (which verifies it then if the idle thread has not yet).
                // A slim PREPARE waiting for this copy has it checked now.
                let awaited = self.slim_waits_for(req.client, req.seq);
                let may_wait = !awaited && self.request_may_wait(&req);
                let Some(job) = self.defer(verifier::Job::Request(req), may_wait) else {
                    return Ok(());
                };
                if self.core.is_primary() || awaited {
                    // Requests deferred while this replica was a backup are the new
                    // primary's to propose; a slim PREPARE takes them in order.
                    self.take_back(verifier::Source::Clients)?;
                }
                let config = self.core.config().clone();
                self.apply(job.verify(&config, &self.crypto))?;
                if awaited {
                    self.retry_slim(false)?;
                }
                Ok(())
            }
            Event::Verified(verdict) => {
                let request = matches!(verdict, verifier::Verdict::Request(Ok(_)));
                self.apply_deferred(verdict)?;
                // The idle checker had a copy a slim PREPARE waits for in hand.
                if request && !self.slim_waiting.is_empty() {
                    self.retry_slim(false)?;
                }
                Ok(())
            }
            Event::CheckpointFlushed { seq } => self.on_flushed(seq),
            Event::ClientUp { client, conn, tx } => {
                if self.clients.insert(client, (conn, tx)).is_some() {
                    // The newest connection gets the replies; the one it replaces is
                    // still open. A reconnect over a dead link does this once; two
                    // processes with one client key do it on every reconnect, each
                    // taking the other's replies.
                    self.client_conns_replaced += 1;
                    if self
                        .client_replaced_warned
                        .is_none_or(|t| t.elapsed() >= REPLACED_WARN_EVERY)
                    {
                        self.client_replaced_warned = Some(std::time::Instant::now());
                        warn!(
                            id = self.id,
                            client,
                            replaced = self.client_conns_replaced,
                            "client {client} connected again while its previous connection \
                             is still open: a reconnect, or two frontends sharing client \
                             key {client}, which take each other's replies (give each \
                             frontend its own --client)"
                        );
                    }
                }
                Ok(())
            }
            Event::ClientDown { client, conn } => {
                if self.clients.get(&client).is_some_and(|(c, _)| *c == conn) {
                    self.clients.remove(&client);
                }
                Ok(())
            }
        }
    }

    fn on_peer(&mut self, from: ReplicaId, msg: PeerMessage) -> Result<(), ReplicaError> {
        let source = verifier::Job::peer_source(from, &msg);
        let may_wait = verifier::off_path(&msg, self.core.executed_n());
        let Some(job) = self.defer(verifier::Job::Peer { from, msg }, may_wait) else {
            return Ok(());
        };
        // The core takes a sender's messages in counter order: what waits of this
        // source goes first, verified here rather than after the idle thread.
        self.take_back(source)?;
        let config = self.core.config().clone();
        self.apply(job.verify(&config, &self.crypto))
    }

    /// Whether a client request may wait for the idle thread: an ordered one reaching
    /// a backup in normal operation for the first time (a re-sent one, whose client
    /// waits for the cached reply, is checked at once).
    fn request_may_wait(&self, r: &consensus::Request) -> bool {
        !r.read_only
            && !self.executed_already(r)
            && !self.core.is_primary()
            && !self.core.in_view_change()
    }

    /// Whether `r`, or a later request of its client, has been executed here.
    fn executed_already(&self, r: &consensus::Request) -> bool {
        self.core
            .last_executed_seq(r.client)
            .is_some_and(|s| r.seq <= s)
    }

    /// Queues `job` for the idle thread when it `may_wait` (and the queue has room);
    /// otherwise hands it back to be verified now.
    fn defer(&self, job: verifier::Job, may_wait: bool) -> Option<verifier::Job> {
        match &self.lazy {
            Some(lazy) if may_wait => lazy.defer(job),
            _ => Some(job),
        }
    }

    /// `apply` for a check that waited: a request executed meanwhile (its PREPARE
    /// arrived first) is dropped rather than answered a second time from the cache.
    fn apply_deferred(&mut self, verdict: verifier::Verdict) -> Result<(), ReplicaError> {
        if let verifier::Verdict::Request(Ok(req)) = &verdict
            && self.executed_already(req.get())
        {
            return Ok(());
        }
        self.apply(verdict)
    }

    /// Verifies here, in order, the queued jobs of `source`.
    fn take_back(&mut self, source: verifier::Source) -> Result<(), ReplicaError> {
        let Some(lazy) = &self.lazy else {
            return Ok(());
        };
        let jobs = lazy.take(source);
        self.verify_all(jobs)
    }

    fn verify_all(&mut self, jobs: Vec<verifier::Job>) -> Result<(), ReplicaError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let config = self.core.config().clone();
        for job in jobs {
            self.apply_deferred(job.verify(&config, &self.crypto))?;
        }
        Ok(())
    }

    /// Hands a verified message to the core, or counts why it was dropped.
    fn apply(&mut self, verdict: verifier::Verdict) -> Result<(), ReplicaError> {
        let input = match verdict {
            verifier::Verdict::Peer { from, result } => result.map(|msg| Input::Peer { from, msg }),
            verifier::Verdict::Request(result) => result.map(Input::Request),
        };
        match input {
            Ok(input) => self.feed(input),
            Err(e) => {
                self.core.record_rejected(e);
                Ok(())
            }
        }
    }

    fn on_tick(&mut self) -> Result<(), ReplicaError> {
        self.ticks += 1;
        // Released earlier (so durable): they need not wait for this burst's sync.
        self.flush_all_held();
        if let Some(lazy) = &self.lazy {
            let stale = lazy.take_stale();
            self.verify_all(stale)?;
        }
        self.transfer_tick()?;
        self.retry_slim(true)?;
        if self
            .checkpoint_flush
            .as_ref()
            .is_some_and(|f| f.thread.is_finished())
        {
            self.settle_checkpoint()?;
        }
        self.feed(Input::Tick { now_ns: now_ns() })
    }

    fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            executed_n: self.core.executed_n(),
            view: self.core.view(),
            dropped_core: self.core.dropped().clone(),
            dropped_net: self.stats.total(),
            transfer: self.transfer_stats.clone(),
            replies_from_cache: self.core.replies_from_cache(),
            late_request_copies: self.late_request_copies,
            client_conns_replaced: self.client_conns_replaced,
            prepares_early: self.prepares_early,
            commits_held: self.commits_held,
            commits_held_sent: self.commits_held_sent,
            started_rebasing: self.started_rebasing,
            slim: self.slim,
            checks_deferred: self.lazy.as_ref().map_or(0, |l| {
                l.stats.deferred.load(std::sync::atomic::Ordering::Relaxed)
            }),
        }
    }
}

/// The file state settings a replica runs with: the defaults, except that its file state
/// is made durable with one `syncfs` instead of an fsync per dirty file and directory. A
/// replica syncs its file state only at checkpoints (the protocol log makes each batch
/// durable), when up to a checkpoint interval's worth of objects is dirty. Measured in
/// the macro-benchmark (100 runs a phase): per-object flushes stalled a replica's burst
/// for more than 10 ms at 57 checkpoint syncs (up to 29 ms), `syncfs` at 13–21 (median
/// 1.7–2.1 ms); the MinPBFT total's standard deviation fell from 11 to 7.5 ms, its mean
/// ratio moved within the noise (A/B interleaved, three pairs: 3.01–3.46× before,
/// 2.96–3.20× after). The unreplicated server keeps per-object flushes: it syncs after
/// every small batch. Since the fourteenth session that `syncfs` runs on a thread of its
/// own (`CheckpointFlush`), and the capture leaves its chunks to it.
///
/// The export's limits come from the cluster configuration, the same on every replica;
/// so does the largest WRITE, which must fit in one request (`op::write_data_max`).
pub fn replica_fs_config(config: &ClusterConfig) -> FsConfig {
    let write_max = crate::op::write_data_max(config.consensus.request_bytes_max);
    FsConfig {
        sync_mode: fs_state::SyncMode::Syncfs,
        bytes_total: config.export.bytes,
        files_total: config.export.files,
        wtmax: write_max,
        wtpref: write_max,
        ..FsConfig::default()
    }
}

/// Opens (or recovers) replica `opts.id` from `opts.data_dir`.
fn open_node(
    config: Arc<ClusterConfig>,
    opts: &ReplicaOptions,
    stats: Arc<NetStats>,
) -> Result<Node, ReplicaError> {
    let id = opts.id;
    let secrets = config.replica_secrets(id)?;
    let crypto = ClusterCrypto::for_replica(&config, &secrets)?;
    let (mut usig, group_commit): (Box<dyn Usig + Send>, bool) = match &opts.usig_socket {
        Some(socket) => {
            config.require_own_usig_keys("a usig-server (--usig-socket)")?;
            let expected = config.usig_identity(id)?;
            (
                Box::new(ProcessUsig::connect(socket, Some(&expected))?),
                false,
            )
        }
        None if matches!(
            config.replicas[id as usize].usig,
            crate::config::UsigConfig::Tpm { .. }
        ) =>
        {
            let usig_dir = opts.data_dir.join("usig");
            std::fs::create_dir_all(&usig_dir)?;
            // The TPM's counter is its own authority: keep the write-ahead intent.
            (crate::tpm::open_usig(&config, id, &usig_dir)?, false)
        }
        None => {
            let usig_dir = opts.data_dir.join("usig");
            std::fs::create_dir_all(&usig_dir)?;
            // A key other than the one cluster.toml names would make UIs every peer
            // refuses: the replica would be lost without a word.
            let key = crate::crypto::own_usig_key(&config, &secrets)?;
            (
                Box::new(SoftwareUsig::open(&usig_dir, id, key.key_bytes())?),
                true,
            )
        }
    };
    let mut log = ProtocolLog::open(&opts.data_dir)?;
    if group_commit
        && let Some(msg) = log.durable.sent.values().next_back()
        && usig.last_issued().map_or(0, |u| u.ui.counter) < msg.counter()
    {
        // The log's sync made the counter durable (`sync_all`); the USIG's own file
        // lags after a power loss (or a crash before its write-back): the logged
        // message proves, by the USIG's own signature, that its counter was issued.
        let issued = usig::IssuedUi {
            digest: msg.certified_digest(),
            ui: msg.ui().clone(),
        };
        info!(
            counter = msg.counter(),
            "USIG counter moved up to the logged message"
        );
        usig.advance_to(&issued)?;
    }
    let mut lease = Lease {
        boot: boot_id(),
        ..Lease::default()
    };
    if group_commit {
        // The replayed log was synced on open, so its last lease is durable.
        let spent = usig.spent_counter()?;
        if let Some(to) = lease_skip(log.durable.lease.as_ref(), &lease.boot, spent) {
            warn!(
                id,
                spent,
                to,
                "first start since the machine restarted: PREPAREs up to the USIG lease \
                 may have left without their log record; spending the counter up to it"
            );
            usig.skip_to(to)?;
        }
        lease.written = log.durable.lease.as_ref().map_or(0, |l| l.counter);
        lease.durable = lease.written;
    }
    let snaps = SnapshotStore::open(&opts.data_dir)?;
    let mut app = if opts.null_app {
        App::Null { executed: 0 }
    } else {
        let quota = opts.fs_config.bytes_total;
        if let Some(why) = crate::config::disk_room_warning(&opts.data_dir, quota) {
            warn!(id, "{why}");
        }
        App::open_fs(&opts.data_dir, opts.fs_config.clone())?
    };
    // Not just the last UI: a TPM may have spent a value whose UI a crash cut off. Such a
    // gap puts the USIG ahead of the log, and the core re-bases over it (I8).
    let usig_counter = usig.spent_counter()?;
    if usig_counter > usig.last_issued().map_or(0, |u| u.ui.counter) {
        warn!(
            id,
            usig_counter, "the USIG spent a counter value whose UI never came back (a gap)"
        );
    }
    // An empty log with a USIG that has issued counters: the data directory was lost or
    // replaced while usig/ was kept. Start from genesis; the core re-bases (I8) and
    // catches up by state transfer.
    let fresh = log.replayed == 0;
    if fresh && usig_counter > 0 {
        warn!(
            id,
            usig_counter,
            "no protocol log but a used USIG: rejoining by re-base and state transfer"
        );
    }
    let stable = log.durable.stable.clone();
    let core_state = if fresh {
        // Genesis: keep its snapshot, so a crash before the first stable checkpoint
        // restarts from it.
        let snap = Snapshot {
            n: 0,
            core_state: CoreState::default(),
            app: app.snapshot()?,
        };
        snaps.save(&snap)?;
        CoreState::default()
    } else {
        // The core replays from the stable checkpoint: put the application there.
        let snap = snaps.load(stable.n)?.ok_or_else(|| {
            ReplicaError::Recovery(format!(
                "no snapshot of the stable checkpoint {} in {}; move the data directory \
                 away (keeping usig/) to rejoin by state transfer",
                stable.n,
                opts.data_dir.display()
            ))
        })?;
        // Fine-grained: files unchanged since the checkpoint stay, the others are
        // rewritten from the chunk store.
        match app.restore(&snap.app) {
            Ok(d)
                if stable.n == 0
                    || checkpoint_digest(&d, &snap.core_state) == stable.state_digest =>
            {
                info!(
                    id,
                    n = stable.n,
                    "restored the stable checkpoint from the chunk store"
                );
            }
            other => {
                // Our own checkpoint copy is bad (disk fault, tampering): run on, the next
                // checkpoint's digest disagrees and self-repair fetches the certified state.
                warn!(
                    id,
                    n = stable.n,
                    error = ?other.err().map(|e| e.to_string()),
                    "own stable checkpoint does not restore; will repair from the others"
                );
            }
        }
        snap.core_state
    };
    let mut last_sent = log.durable.last_sent_counter();
    // A crash between the USIG's durable increment and the `Sent` record: the intent
    // logged before `CreateUi` plus the USIG's last UI rebuild the message exactly.
    if usig_counter == last_sent + 1
        && let (Some(intent), Some(issued)) = (log.durable.intent.clone(), usig.last_issued())
        && issued.ui.counter == usig_counter
        && intent.certified_digest() == issued.digest
    {
        let mut msg = intent;
        *msg.ui_mut() = issued.ui;
        info!(
            counter = msg.counter(),
            kind = msg.kind(),
            "completed the message in flight at the crash"
        );
        log.append(consensus::PersistRecord::Sent(msg.clone()));
        log.sync()?;
        log.durable.apply(consensus::PersistRecord::Sent(msg));
        last_sent = usig_counter;
    }
    let recovered = log.durable.recovered(core_state, usig_counter);
    let started_rebasing = recovered.usig_ahead_of_log();
    if started_rebasing {
        // The USIG issued a UI whose message never reached the log (a crash in between,
        // or a lost log): peers would wait for that counter forever. The core re-bases
        // (consensus/README.md, I8): one ordered REBASE, readmission at the first stable
        // checkpoint at or above it.
        warn!(
            usig_counter,
            last_sent,
            logged = recovered.last_logged_counter(),
            "USIG counter ahead of the logged messages: re-basing"
        );
    }
    info!(
        id,
        view = recovered.view,
        stable = stable.n,
        usig_counter,
        fresh,
        "replica starting"
    );
    let core = Replica::recover(
        id,
        config.consensus.clone(),
        Box::new(crypto.clone()),
        recovered,
    );
    let n = config.n();
    Ok(Node {
        id,
        data_dir: opts.data_dir.clone(),
        n,
        config,
        crypto,
        core,
        app: Some(app),
        usig: UsigSeat::Inline(usig),
        group_commit,
        log,
        app_dirty: false,
        unsynced_snapshots: Vec::new(),
        checkpoint_flush: None,
        stable_held: Vec::new(),
        stable_cleanup: None,
        events: None,
        flushes_started: 0,
        flushes_done: 0,
        snaps,
        pending_snapshots: BTreeMap::new(),
        peers: Vec::new(),
        clients: BTreeMap::new(),
        transfer: None,
        transfer_stats: TransferStats::default(),
        chunk_req_seq: 0,
        serve_corrupt_chunks: opts.serve_corrupt_chunks,
        drop_large_client_copies: opts.drop_large_client_copies,
        ticks: 0,
        stats,
        lazy: None,
        lease,
        late_request_copies: 0,
        client_conns_replaced: 0,
        client_replaced_warned: None,
        outbox: Vec::new(),
        held: vec![Vec::new(); n as usize],
        commits_held: 0,
        commits_held_sent: 0,
        replies: Vec::new(),
        prepares_early: 0,
        last_early: 0,
        started_rebasing,
        slim: slim::SlimStats::default(),
        slim_waiting: Vec::new(),
        slim_answered: vec![std::collections::BTreeSet::new(); n as usize],
    })
}

/// Runs replica `opts.id` on `listener` until `shutdown` completes or a local fault
/// stops it. Meant for `block_on` of a current-thread runtime.
pub async fn run(
    config: Arc<ClusterConfig>,
    opts: ReplicaOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<ReplicaStats, ReplicaError> {
    let stats = Arc::new(NetStats::default());
    let mut node = open_node(config.clone(), &opts, stats.clone())?;
    let secrets = config.replica_secrets(opts.id)?;
    let link_keys = Arc::new(secrets.link_keys.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(EVENT_QUEUE_MAX);
    if !node.group_commit {
        node.usig.start_worker(opts.id, ev_tx.clone())?;
    }
    node.events = Some(ev_tx.clone());
    node.lazy = Some(verifier::LazyVerifier::start(
        opts.id,
        node.core.config().clone(),
        node.crypto.clone(),
        ev_tx.clone(),
    )?);
    let mut peer_tasks = Vec::new();
    for j in 0..config.n() {
        match link_keys[j as usize] {
            Some(key) if j != opts.id => {
                let (tx, rx) = mpsc::channel(links::PEER_QUEUE_MAX);
                node.peers.push(Some(tx));
                peer_tasks.push(tokio::spawn(links::dial_peer(
                    config.clone(),
                    opts.id,
                    j,
                    key,
                    rx,
                )));
            }
            _ => node.peers.push(None),
        }
    }
    let acceptor = tokio::spawn(links::accept_loop(
        listener,
        config.clone(),
        opts.id,
        link_keys,
        ev_tx,
        stats.clone(),
        stop_rx,
    ));
    let abort_after_early: Option<u64> = std::env::var(ABORT_AFTER_EARLY_ENV).ok().and_then(|v| {
        let (id, n) = v.split_once(':')?;
        (id.parse() == Ok(opts.id)).then(|| n.parse().ok())?
    });
    let mut tick = tokio::time::interval(Duration::from_nanos(config.consensus.tick_ns));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let result: Result<(), ReplicaError> = async {
        loop {
            let early_before = node.prepares_early;
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                _ = tick.tick() => node.on_tick()?,
                ev = ev_rx.recv() => match ev {
                    Some(ev) => node.on_event(ev)?,
                    None => return Ok(()),
                },
            }
            for _ in 0..BURST_MAX {
                match ev_rx.try_recv() {
                    Ok(ev) => node.on_event(ev)?,
                    Err(_) => break,
                }
            }
            // PREPAREs released early (`Lease`) reach the sockets now, while we sync.
            if node.prepares_early > early_before {
                tokio::task::yield_now().await;
                if abort_after_early.is_some_and(|n| node.prepares_early >= n) {
                    let note = node.data_dir.join("early-abort");
                    let _ = std::fs::write(note, format!("{}\n", node.last_early));
                    error!(
                        id = opts.id,
                        "fault injection: aborting before the log sync"
                    );
                    std::process::abort();
                }
            }
            // Durable before it leaves: everything else queued above waits for the
            // sync (with a TPM or process USIG, a `Sent` record may wait: the synced
            // intent and the USIG's own durable last UI cover it).
            let synced = std::time::Instant::now();
            let released = node.commit_burst()?;
            let took = synced.elapsed();
            if took > SLOW_SYNC {
                debug!(
                    id = opts.id,
                    took_us = took.as_micros() as u64,
                    "slow group commit"
                );
            }
            if released {
                // The connections write now, not after the next burst's sync.
                tokio::task::yield_now().await;
            }
            node.clean_up_stable()?;
        }
    }
    .await;
    let _ = stop_tx.send(true);
    acceptor.abort();
    for t in &peer_tasks {
        t.abort();
    }
    let final_stats = node.stats();
    if let Err(e) = &result {
        error!(id = opts.id, "replica stopped: {e}");
    }
    // Whatever was appended is made durable; a clean close lets the next open skip
    // rehashing. After a local fault the state machine refuses to close: leave it.
    // The USIG thread may be blocked handing over a UI: stop reading first.
    drop(ev_rx);
    if let Some(mut lazy) = node.lazy.take() {
        lazy.stop();
        let s = &lazy.stats;
        debug!(
            id = opts.id,
            deferred = s.deferred.load(std::sync::atomic::Ordering::Relaxed),
            verified_idle = s.verified_idle.load(std::sync::atomic::Ordering::Relaxed),
            taken_back = s.taken_back.load(std::sync::atomic::Ordering::Relaxed),
            "off-path checks"
        );
    }
    // A clean stop brings the lease down to the last UI: a restart after a reboot then
    // skips nothing.
    node.renew_lease(true);
    // A failure here still lets the log sync and the USIG close below.
    let settled = node
        .sync_snapshots()
        .and_then(|()| node.settle_checkpoint());
    node.log.sync()?;
    if settled.is_ok() {
        // The cleanup of a checkpoint the last flush made stable (disk space only).
        node.clean_up_stable()?;
    }
    node.usig.close()?;
    if result.is_ok()
        && settled.is_ok()
        && let Some(app) = node.app.take()
    {
        app.close()?;
    }
    result?;
    settled?;
    info!(
        id = opts.id,
        executed = final_stats.executed_n,
        view = final_stats.view,
        replies_from_cache = final_stats.replies_from_cache,
        late_request_copies = final_stats.late_request_copies,
        slim_sent = final_stats.slim.sent,
        slim_filled = final_stats.slim.filled,
        slim_waited = final_stats.slim.waited,
        slim_asked = final_stats.slim.asked,
        slim_answered = final_stats.slim.answered,
        "replica stopped"
    );
    Ok(final_stats)
}

/// Takes the lock that one replica process holds on its data directory (`dir/lock`) for
/// as long as it runs; fails at once if another process holds it. Two replicas on one
/// directory would interleave their protocol logs and file states; with an in-process
/// USIG its own lock would stop the second one, but a process or TPM USIG lives
/// elsewhere. Keep the returned file open: closing it releases the lock.
pub fn lock_data_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let path = dir.join("lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(dir.join("pid"))
                .map(|p| format!(" (pid {})", p.trim()))
                .unwrap_or_default();
            Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another replica process{holder}",
                    dir.display()
                ),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// `lock_data_dir`, waiting up to `wait` for a holder to let go: a replica just killed
/// (kill -9, a supervisor's restart) keeps its lock until the kernel has torn the
/// process down, which on a busy host can take longer than its restart. A replica that
/// is really running still holds it after `wait`, and the error names it.
pub fn lock_data_dir_waiting(dir: &Path, wait: Duration) -> std::io::Result<std::fs::File> {
    let deadline = std::time::Instant::now() + wait;
    let mut warned = false;
    loop {
        match lock_data_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                if !warned {
                    warn!("{e}; waiting up to {wait:?} for it to exit");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Writes `pid` into `dir/pid` (for `bftnfs up` and operators). Call it holding the
/// directory's lock (`lock_data_dir`), so that it never overwrites a running replica's.
pub fn write_pid_file(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("pid");
    std::fs::write(&path, format!("{}\n", std::process::id()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(counter: u64, boot: &str) -> consensus::UsigLease {
        consensus::UsigLease {
            counter,
            boot: boot.to_owned(),
        }
    }

    #[test]
    fn a_data_directory_serves_one_replica_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        write_pid_file(dir.path()).unwrap();
        let err = lock_data_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let pid = std::process::id().to_string();
        assert!(err.to_string().contains(&pid), "{err}");
        drop(held);
        let held = lock_data_dir(dir.path()).expect("released with the file");
        // A holder that lets go within the wait (a killed predecessor) is waited for;
        // one that does not is reported after it.
        let err = lock_data_dir_waiting(dir.path(), Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        lock_data_dir_waiting(dir.path(), Duration::from_secs(10)).expect("waited for");
        release.join().unwrap();
    }

    /// A checkpoint becomes stable while an older one, taken here, never did: the
    /// manifests below that older one are collected. A crash before the burst's sync
    /// (the new `Stable` record still in memory) leaves the log's stable checkpoint the
    /// previous one, whose manifest the restart needs.
    /// Replica 0 of a new f = 1 cluster in `dir`: its configuration and options.
    fn replica_zero(dir: &Path, null_app: bool) -> (Arc<ClusterConfig>, ReplicaOptions) {
        let toml =
            crate::cluster::ensure_keys(dir, &crate::config::KeygenOptions::new(1, 1)).unwrap();
        let config = Arc::new(ClusterConfig::load(&toml).unwrap());
        let opts = ReplicaOptions {
            id: 0,
            data_dir: dir.join("replica-0"),
            null_app,
            fs_config: replica_fs_config(&config),
            usig_socket: None,
            serve_corrupt_chunks: false,
            drop_large_client_copies: false,
        };
        std::fs::create_dir_all(&opts.data_dir).unwrap();
        (config, opts)
    }

    #[test]
    fn a_crash_right_after_a_stable_checkpoint_is_collected_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let (config, opts) = replica_zero(dir.path(), true);
        let cert = |n| consensus::message::CheckpointCert {
            n,
            ..Default::default()
        };
        {
            let mut node = open_node(config.clone(), &opts, Arc::default()).unwrap();
            // Checkpoint 128 is stable and durable; 256 was taken but never became
            // stable here; 384 was taken and is now certified.
            for n in [128, 256, 384] {
                let app = node.app().snapshot().unwrap();
                let core_state = CoreState::default();
                node.snaps.save(&Snapshot { n, core_state, app }).unwrap();
            }
            node.log.append(consensus::PersistRecord::Stable(cert(128)));
            node.log.sync().unwrap();
            // What the core's `make_stable` emits, performed in order.
            node.log.append(consensus::PersistRecord::Stable(cert(384)));
            node.on_stable(384).unwrap();
            // Killed before the burst's sync.
        }
        let node = open_node(config, &opts, Arc::default()).expect("restarts");
        assert!(node.log.durable.stable.n >= 128);
        assert!(node.snaps.has(node.log.durable.stable.n));
    }

    #[test]
    fn a_snapshot_not_of_the_stable_checkpoint_that_does_not_decode_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let (config, opts) = replica_zero(dir.path(), true);
        let mut node = open_node(config, &opts, Arc::default()).unwrap();
        let cert = |n| consensus::message::CheckpointCert {
            n,
            ..Default::default()
        };
        for n in [128, 256] {
            let app = node.app().snapshot().unwrap();
            let core_state = CoreState::default();
            node.snaps.save(&Snapshot { n, core_state, app }).unwrap();
        }
        node.log.append(consensus::PersistRecord::Stable(cert(128)));
        node.log.sync().unwrap();
        // What a power cut may leave of a snapshot saved unsynced above it.
        let path = opts.data_dir.join(snapshots::SNAPSHOT_DIR);
        std::fs::write(path.join(format!("{:020}.snap", 256)), b"torn").unwrap();
        node.on_stable(128)
            .expect("an expendable snapshot does not stop the replica");
        assert!(node.snaps.has(128));
        assert!(!node.snaps.has(256), "deleted");
        // Nor one below it (a replica that restarted from an older stable checkpoint
        // and caught up past the torn one by state transfer).
        std::fs::write(path.join(format!("{:020}.snap", 100)), b"torn").unwrap();
        node.on_stable(128)
            .expect("below the stable checkpoint too");
        assert!(!node.snaps.has(100), "deleted");
        // The stable checkpoint's own snapshot is never expendable.
        std::fs::write(path.join(format!("{:020}.snap", 128)), b"torn").unwrap();
        assert!(node.on_stable(128).is_err());
    }

    #[test]
    fn a_checkpoint_snapshot_is_synced_by_its_flush_or_at_the_burst_end() {
        let dir = tempfile::tempdir().unwrap();
        let (config, opts) = replica_zero(dir.path(), false);
        let mut node = open_node(config, &opts, Arc::default()).unwrap();
        let mut work = VecDeque::new();
        let core_state = CoreState::default();
        // A burst that took checkpoint 128: its snapshot goes with its flush.
        node.app().digest().unwrap();
        let app = node.app().snapshot().unwrap();
        node.pending_snapshots.insert(128, app);
        node.app_dirty = true;
        node.perform(
            Output::TakeSnapshot {
                n: 128,
                core_state: core_state.clone(),
            },
            &mut work,
        )
        .unwrap();
        assert_eq!(node.unsynced_snapshots.len(), 1);
        assert!(node.snaps.has(128));
        node.sync_all().unwrap();
        assert!(node.unsynced_snapshots.is_empty(), "handed to the flush");
        assert!(node.checkpoint_flush.is_some());
        node.settle_checkpoint().unwrap();
        // A snapshot in a burst without a digest still starts a flush, whose end its
        // `Stable` waits for.
        let app = node.app().snapshot().unwrap();
        node.pending_snapshots.insert(256, app);
        node.perform(Output::TakeSnapshot { n: 256, core_state }, &mut work)
            .unwrap();
        let cert = consensus::message::CheckpointCert {
            n: 256,
            ..Default::default()
        };
        node.perform(
            Output::Persist(consensus::PersistRecord::Stable(cert)),
            &mut work,
        )
        .unwrap();
        assert_eq!(node.stable_held.len(), 1, "the Stable waits for the flush");
        node.sync_all().unwrap();
        assert!(node.unsynced_snapshots.is_empty());
        assert!(node.checkpoint_flush.is_some());
        node.settle_checkpoint().unwrap();
        assert!(node.stable_held.is_empty());
        assert!(node.snaps.load(256).unwrap().is_some());
        // Where no flush runs at all (`sync_snapshots`), the burst's end syncs it.
        let app = node.app().snapshot().unwrap();
        let saved = node
            .snaps
            .save_unsynced(&Snapshot {
                n: 384,
                core_state: CoreState::default(),
                app,
            })
            .unwrap();
        node.unsynced_snapshots.push(saved);
        node.sync_all().unwrap();
        assert!(node.unsynced_snapshots.is_empty());
        assert!(node.checkpoint_flush.is_none());
    }

    #[test]
    fn a_stable_checkpoint_waits_for_its_file_state_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (config, opts) = replica_zero(dir.path(), false);
        let mut node = open_node(config, &opts, Arc::default()).unwrap();
        let cert = consensus::message::CheckpointCert {
            n: 128,
            ..Default::default()
        };
        let mut work = VecDeque::new();
        // A burst that took checkpoint 128 (`Execute` with `want_digest`) and then
        // collected its certificate: the `Stable` record and output wait.
        let app = node.app().snapshot().unwrap();
        node.snaps
            .save(&Snapshot {
                n: 128,
                core_state: CoreState::default(),
                app,
            })
            .unwrap();
        node.app_dirty = true;
        node.perform(
            Output::Persist(consensus::PersistRecord::Stable(cert)),
            &mut work,
        )
        .unwrap();
        node.perform(Output::Stable { n: 128 }, &mut work).unwrap();
        assert_eq!(node.stable_held.len(), 2);
        // The burst's end: its log is synced and the file state starts flushing; the
        // checkpoint is still not the stable one on disk.
        node.sync_all().unwrap();
        assert!(node.checkpoint_flush.is_some());
        assert_eq!(node.log.durable.stable.n, 0);
        node.log.sync().unwrap();
        assert_eq!(
            ProtocolLog::open(&opts.data_dir).unwrap().durable.stable.n,
            0,
            "a restart now starts from the stable checkpoint before"
        );
        // Flushed: the record goes to the log; the stable checkpoint's handling waits
        // for the end of the burst, and syncs the record before it deletes anything.
        node.settle_checkpoint().unwrap();
        assert!(node.stable_held.is_empty() && node.checkpoint_flush.is_none());
        assert_eq!(node.log.durable.stable.n, 128);
        assert_eq!(node.stable_cleanup, Some(128));
        node.clean_up_stable().unwrap();
        assert_eq!(node.stable_cleanup, None);
        assert_eq!(
            ProtocolLog::open(&opts.data_dir).unwrap().durable.stable.n,
            128
        );
        assert!(node.snaps.has(128));

        // While the flush of checkpoint 256 runs, a burst takes checkpoint 384 and
        // collects its certificate: the end of the running flush does not release it.
        node.app_dirty = true;
        node.sync_all().unwrap();
        assert!(node.checkpoint_flush.is_some());
        node.app_dirty = true;
        let cert = |n| consensus::message::CheckpointCert {
            n,
            ..Default::default()
        };
        node.perform(
            Output::Persist(consensus::PersistRecord::Stable(cert(384))),
            &mut work,
        )
        .unwrap();
        node.perform(Output::Stable { n: 384 }, &mut work).unwrap();
        node.settle_checkpoint().unwrap();
        assert_eq!(node.stable_held.len(), 2, "waits for the flush of 384");
        assert_eq!(node.log.durable.stable.n, 128);
        // That burst's end starts its flush; once it is done, 384 is stable on disk.
        node.sync_all().unwrap();
        assert_eq!(node.stable_held.len(), 2);
        node.settle_checkpoint().unwrap();
        assert!(node.stable_held.is_empty());
        assert_eq!(node.log.durable.stable.n, 384);

        // A Stable waiting for the running flush goes to the log when the next
        // checkpoint's burst starts its own flush, even if no event or tick came first.
        node.app_dirty = true;
        node.sync_all().unwrap();
        node.perform(
            Output::Persist(consensus::PersistRecord::Stable(cert(512))),
            &mut work,
        )
        .unwrap();
        node.perform(Output::Stable { n: 512 }, &mut work).unwrap();
        assert_eq!(node.stable_held.len(), 2);
        node.app_dirty = true;
        node.sync_all().unwrap();
        assert!(node.stable_held.is_empty());
        assert_eq!(node.log.durable.stable.n, 512);
        node.settle_checkpoint().unwrap();
    }

    #[test]
    fn a_lease_is_skipped_only_after_a_machine_restart_and_only_upwards() {
        // Same boot: the page cache kept every record written before a PREPARE left.
        assert_eq!(lease_skip(Some(&lease(300, "b1")), "b1", 44), None);
        // Another boot: the unsynced tail may be gone; spend up to the lease.
        assert_eq!(lease_skip(Some(&lease(300, "b0")), "b1", 44), Some(300));
        // An unknown boot id never counts as the same boot.
        assert_eq!(lease_skip(Some(&lease(300, "")), "", 44), Some(300));
        // Nothing to skip: no lease, or the USIG is past it already.
        assert_eq!(lease_skip(None, "b1", 44), None);
        assert_eq!(lease_skip(Some(&lease(40, "b0")), "b1", 44), None);
    }
}
