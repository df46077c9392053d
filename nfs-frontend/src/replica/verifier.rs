//! Signature checks that no request waits for, run on a thread of idle priority.
//!
//! Of the ECDSA checks a replica makes for one ordered request, several are off every
//! critical path: a COMMIT for a batch this replica has already executed (a backup
//! executes on the PREPARE plus its own COMMIT; the primary on the first COMMIT), and a
//! backup's check of a request that reaches it straight from the client (it is needed
//! only when the PREPARE carrying it arrives, a log sync later). On a host where the
//! replicas and the clients share a few cores, running those checks at once took the
//! cores from the checks and syncs a client was waiting for. Here they run on a
//! `SCHED_IDLE` thread, which gets only cycles nobody else wants.
//!
//! Nothing changes for the protocol: every message is verified in full before the core
//! sees it; only when differs, exactly as if the network had delayed the message, which
//! the protocol tolerates. The delay is bounded three ways:
//! - a message that is on a critical path never waits: before the loop verifies one
//!   from a source, it takes back that source's queued jobs and verifies them itself,
//!   in order (the core processes a sender's messages in counter order, so a later one
//!   would otherwise wait for them);
//! - a job older than a bound is taken back at the next tick, so a saturated host,
//!   where the idle thread never runs, delays a check by at most that bound;
//! - the queue is bounded, in jobs and in bytes (a sender's message is held before
//!   any check, also of its size); a full queue means verifying at once.
//!
//! A job the loop takes back while the thread is already verifying it, or a request
//! the loop meets inside a PREPARE while the thread verifies the client's copy, is not
//! verified twice: the loop waits for the thread's check of the same signature
//! (`ClusterCrypto::verified_once`, at most half a millisecond), and the thread's own
//! answer is then dropped. A deferred request whose PREPARE arrived
//! and executed first is dropped after its check (`Node::apply_deferred`): answering it
//! would send the cached reply a second time, once per request per backup.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use consensus::validate::{self, Reject, Verified};
use consensus::{Config, PeerMessage, ReplicaId, Request, UiMessage};
use tokio::sync::mpsc;
use tracing::debug;

use super::links::Event;
use crate::crypto::ClusterCrypto;

/// Jobs waiting at most; beyond it a message is verified at once.
pub const JOBS_MAX: usize = 4_096;
/// Bytes of deferred messages at most (`Job::bytes`); beyond it a message is verified
/// at once. A client's request may be as large as a frame before the core's size check.
pub const JOBS_BYTES_MAX: usize = 64 << 20;
/// A job waiting longer is taken back by the protocol loop at its next tick.
pub const JOB_AGE_MAX: Duration = Duration::from_millis(200);

/// Whose messages a job holds: the core orders each replica's USIG messages by counter,
/// so jobs are taken back per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Replica(ReplicaId),
    Clients,
}

/// A message waiting for its check.
#[derive(Clone, Debug)]
pub enum Job {
    Peer { from: ReplicaId, msg: PeerMessage },
    Request(Request),
}

/// The result of a check, for the protocol loop.
#[derive(Debug)]
pub enum Verdict {
    Peer {
        from: ReplicaId,
        result: Result<Verified<PeerMessage>, Reject>,
    },
    Request(Result<Verified<Request>, Reject>),
}

impl Job {
    /// The source a peer message counts for: the certifying replica of a USIG message
    /// (also when another replica relays it), else the link it came on.
    pub fn peer_source(from: ReplicaId, msg: &PeerMessage) -> Source {
        match msg {
            PeerMessage::Ui(m) => Source::Replica(m.sender()),
            _ => Source::Replica(from),
        }
    }

    /// What the job holds in memory: the parts whose size its sender chose, plus a
    /// fixed overhead.
    fn bytes(&self) -> usize {
        const FIXED: usize = 256;
        FIXED
            + match self {
                Job::Request(r) => r.op.len() + r.sig.len(),
                Job::Peer {
                    msg: PeerMessage::Ui(UiMessage::Commit(c)),
                    ..
                } => c.ui.cert.len() + c.primary_ui.cert.len(),
                Job::Peer { msg, .. } => crate::net::encode(msg).len(),
            }
    }

    fn source(&self) -> Source {
        match self {
            Job::Peer { from, msg } => Self::peer_source(*from, msg),
            Job::Request(_) => Source::Clients,
        }
    }

    /// Verifies the message in full (`consensus::validate`).
    pub fn verify(self, config: &Config, crypto: &ClusterCrypto) -> Verdict {
        match self {
            Job::Peer { from, msg } => Verdict::Peer {
                from,
                result: validate::peer_message(config, crypto, from, msg),
            },
            Job::Request(req) => Verdict::Request(validate::request(config, crypto, req)),
        }
    }
}

/// Whether a peer message may wait: a COMMIT for a batch this replica has executed.
pub fn off_path(msg: &PeerMessage, executed_n: u64) -> bool {
    matches!(msg, PeerMessage::Ui(UiMessage::Commit(c)) if c.header.n <= executed_n)
}

/// A job waiting for the idle thread, with its size counted once (`Job::bytes`).
struct Queued {
    id: u64,
    at: Instant,
    bytes: usize,
    job: Job,
}

struct Queue {
    jobs: VecDeque<Queued>,
    /// `Queued::bytes` of `jobs`.
    bytes: usize,
    next_id: u64,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the idle thread did, for the replica's stop report.
#[derive(Debug, Default)]
pub struct LazyStats {
    pub deferred: AtomicU64,
    pub verified_idle: AtomicU64,
    pub taken_back: AtomicU64,
}

/// The idle-priority checker of one replica.
pub struct LazyVerifier {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<LazyStats>,
}

impl LazyVerifier {
    /// Starts the thread; its verdicts arrive as `Event::Verified` on `events`.
    pub fn start(
        id: ReplicaId,
        config: Config,
        crypto: ClusterCrypto,
        events: mpsc::Sender<Event>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                bytes: 0,
                next_id: 0,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let stats = Arc::new(LazyStats::default());
        let thread = {
            let (shared, stats) = (shared.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("verify-{id}"))
                .spawn(move || {
                    idle_priority();
                    work(&shared, &stats, &config, &crypto, &events);
                })?
        };
        Ok(LazyVerifier {
            shared,
            thread: Some(thread),
            stats,
        })
    }

    /// Queues `job`, or hands it back (`Some`) when the queue is full.
    pub fn defer(&self, job: Job) -> Option<Job> {
        let mut q = self.shared.lock();
        let bytes = job.bytes();
        if q.jobs.len() >= JOBS_MAX || q.bytes.saturating_add(bytes) > JOBS_BYTES_MAX || q.stop {
            return Some(job);
        }
        let id = q.next_id;
        q.next_id += 1;
        q.bytes += bytes;
        q.jobs.push_back(Queued {
            id,
            at: Instant::now(),
            bytes,
            job,
        });
        drop(q);
        self.stats.deferred.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_one();
        None
    }

    /// Takes back every queued job of `source`, oldest first.
    pub fn take(&self, source: Source) -> Vec<Job> {
        let mut q = self.shared.lock();
        self.take_from(&mut q, |job| job.source() == source)
    }

    /// Takes back every job that has waited longer than `JOB_AGE_MAX`, and every job of
    /// the sources those belong to (so each source's order is kept).
    pub fn take_stale(&self) -> Vec<Job> {
        let now = Instant::now();
        let mut q = self.shared.lock();
        let stale: Vec<Source> = q
            .jobs
            .iter()
            .filter(|e| now.duration_since(e.at) > JOB_AGE_MAX)
            .map(|e| e.job.source())
            .collect();
        if stale.is_empty() {
            return Vec::new();
        }
        self.take_from(&mut q, |job| stale.contains(&job.source()))
    }

    fn take_from(&self, q: &mut Queue, pick: impl Fn(&Job) -> bool) -> Vec<Job> {
        if q.jobs.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(q.jobs.len());
        for e in q.jobs.drain(..) {
            if pick(&e.job) {
                q.bytes -= e.bytes;
                taken.push(e.job);
            } else {
                kept.push_back(e);
            }
        }
        q.jobs = kept;
        self.stats
            .taken_back
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        taken
    }

    /// Stops the thread; queued jobs are dropped (their messages count as lost, which
    /// the protocol tolerates).
    pub fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LazyVerifier {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lowers the calling thread to `SCHED_IDLE`; if refused, it stays as it is.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads `param`; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        debug!(
            "SCHED_IDLE refused ({}); off-path checks run at normal priority",
            std::io::Error::last_os_error()
        );
    }
}

fn work(
    shared: &Shared,
    stats: &LazyStats,
    config: &Config,
    crypto: &ClusterCrypto,
    events: &mpsc::Sender<Event>,
) {
    loop {
        // Work on a copy of the oldest job and leave it queued, so the loop can still
        // take it back (and not wait for a thread that may not be scheduled).
        let (id, job) = {
            let mut q = shared.lock();
            loop {
                if q.stop {
                    return;
                }
                if let Some(e) = q.jobs.front() {
                    break (e.id, e.job.clone());
                }
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let verdict = job.verify(config, crypto);
        let ours = {
            let mut q = shared.lock();
            let front = q.jobs.front().is_some_and(|e| e.id == id);
            if front && let Some(e) = q.jobs.pop_front() {
                q.bytes -= e.bytes;
            }
            front
        };
        if ours {
            stats.verified_idle.fetch_add(1, Ordering::Relaxed);
            if events.blocking_send(Event::Verified(verdict)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only_request(client: u64, seq: u64) -> Request {
        Request {
            client,
            seq,
            op: Default::default(),
            read_only: true,
            sig: Vec::new(),
        }
    }

    /// A verifier whose thread is stopped at once, so that the queue only changes by
    /// the calls under test.
    fn queue_only() -> LazyVerifier {
        LazyVerifier {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    bytes: 0,
                    next_id: 0,
                    stop: false,
                }),
                wake: Condvar::new(),
            }),
            thread: None,
            stats: Arc::new(LazyStats::default()),
        }
    }

    fn peer_job(from: ReplicaId) -> Job {
        Job::Peer {
            from,
            msg: PeerMessage::ReqViewChange {
                view: 0,
                new_view: 1,
            },
        }
    }

    #[test]
    fn taking_back_keeps_each_source_in_order_and_leaves_the_others() {
        let v = queue_only();
        assert!(v.defer(peer_job(1)).is_none(), "room");
        assert!(
            v.defer(Job::Request(read_only_request(7, 1))).is_none(),
            "room"
        );
        assert!(v.defer(peer_job(2)).is_none(), "room");
        assert!(
            v.defer(Job::Request(read_only_request(7, 2))).is_none(),
            "room"
        );
        let taken = v.take(Source::Clients);
        let seqs: Vec<u64> = taken
            .iter()
            .map(|j| match j {
                Job::Request(r) => r.seq,
                Job::Peer { .. } => panic!("a peer job was taken for the clients"),
            })
            .collect();
        assert_eq!(seqs, [1, 2]);
        assert!(v.take(Source::Clients).is_empty(), "taken once");
        assert_eq!(v.take(Source::Replica(2)).len(), 1);
        assert_eq!(v.take(Source::Replica(1)).len(), 1);
        assert_eq!(v.stats.taken_back.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        let v = queue_only();
        for _ in 0..JOBS_MAX {
            assert!(v.defer(peer_job(1)).is_none(), "room");
        }
        assert!(v.defer(peer_job(1)).is_some());
        assert!(v.take_stale().is_empty(), "nothing is old yet");
        let mut q = v.shared.lock();
        let old = Instant::now() - JOB_AGE_MAX * 2;
        q.jobs[3].at = old;
        drop(q);
        assert_eq!(
            v.take_stale().len(),
            JOBS_MAX,
            "a stale job takes its whole source back"
        );
    }

    /// A client may send requests up to the frame limit (256 MiB by default), far
    /// beyond what the core accepts; deferred before that check, 4,096 of them must not
    /// be held at once. Bytes held are bounded, not only jobs.
    #[test]
    fn large_jobs_are_handed_back_beyond_a_byte_budget() {
        let v = queue_only();
        let mut held = 0usize;
        for seq in 0..256 {
            let mut req = read_only_request(7, seq);
            req.op = vec![0; 1 << 20].into();
            if v.defer(Job::Request(req)).is_some() {
                break;
            }
            held += 1 << 20;
        }
        assert!(held <= 64 << 20, "{} MiB of requests deferred", held >> 20);
        let taken = v.take(Source::Clients).len();
        assert_eq!(taken << 20, held);
        assert!(
            v.defer(Job::Request(read_only_request(7, 1))).is_none(),
            "room again once taken back"
        );
    }

    #[test]
    fn only_commits_of_executed_batches_may_wait() {
        use consensus::message::{Commit, Prepare, PrepareHeader};
        let header = PrepareHeader {
            view: 0,
            n: 10,
            timestamp_ns: 1,
            batch_digest: [0; 32],
        };
        let ui = usig::Ui {
            counter: 3,
            cert: Vec::new(),
        };
        let commit = PeerMessage::Ui(UiMessage::Commit(Commit {
            header,
            primary: 0,
            primary_ui: ui.clone(),
            sender: 2,
            ui: ui.clone(),
        }));
        assert!(off_path(&commit, 10), "batch 10 executed");
        assert!(!off_path(&commit, 9), "batch 10 still waits for votes");
        assert_eq!(Job::peer_source(1, &commit), Source::Replica(2), "relayed");
        let prepare = PeerMessage::Ui(UiMessage::Prepare(Prepare {
            header,
            primary: 0,
            batch: Default::default(),
            ui,
        }));
        assert!(!off_path(&prepare, 10));
        let rvc = PeerMessage::ReqViewChange {
            view: 0,
            new_view: 1,
        };
        assert!(!off_path(&rvc, 10));
        assert_eq!(Job::peer_source(1, &rvc), Source::Replica(1));
    }
}
