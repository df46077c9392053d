//! The BFT client of the replicated mode (MinBFT section 5, "Clients") and the
//! `FsBackend` that puts the NFS server on top of it.
//!
//! One engine task runs several `consensus::Client` sessions (each has at most one
//! request outstanding), so that as many NFS calls as there are sessions are ordered at
//! once. It signs each request, sends it to every replica, checks reply MACs and hands
//! back the result f+1 (ordered) or 2f+1 (read-only) replicas agree on. Ticks drive
//! re-sends: a dead replica or a view change costs latency, never an NFS error. While a
//! replica's connection is down, and for a while after a read-only request timed out (a
//! paused or cut-off replica whose connection still looks up), reads go straight down
//! the ordered path, because the read-only path needs all 2f+1 replies and would only
//! time out first.
//!
//! With bundling, operations that can travel together wait while
//! `ClusterConfig::bundles_in_flight` bundles (1 by default) are out, unless a full
//! bundle waits, and then leave as one (Nagle's rule, for requests): on a host where the
//! replicas share the cores, requests in flight at once only contend for them, while one
//! fuller request costs one signature and one round of protocol messages for all its
//! operations. After replies come in, the engine yields once so that the callers they
//! completed can queue their next operations before the next bundle forms (callers in
//! this process, such as the micro-benchmark's; an NFS client's next call comes over
//! TCP later). Read-only and ordered bundles are counted apart, and a bundle that has
//! been out for `BUNDLE_HOLD_MAX` (a view change) no longer holds anything back.
//!
//! `first_seq` of every session is the wall clock in nanoseconds at start, so a
//! restarted frontend never reuses a sequence number (replicas drop old ones).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consensus::{Client, ClientOutput, Crypto, ReplicaId, Reply};
use fs_state::{AuthUnix, FileHandle, FsOp, FsReply, NfsStat3, is_read_only};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, info};

use crate::backend::{FsBackend, error_reply};
use crate::bundle;
use crate::config::{ClusterConfig, ConfigError, SESSION_STRIDE};
use crate::crypto::{ClusterCrypto, RequestSigner};
use crate::net::{
    ClientMsg, DropReason, Hello, NetStats, ReplicaMsg, decode, encode, read_frame, write_frame,
};
use crate::op::{BAD_OP_RESULT, encode_op, write_data_max};

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A bundle out for longer than this no longer holds the next one back (Nagle's rule
/// gives way while a request is stuck, as in a view change).
const BUNDLE_HOLD_MAX: Duration = Duration::from_millis(20);
/// How long reads take the ordered path after a read-only request timed out.
const READ_ONLY_PAUSE: Duration = Duration::from_secs(2);
/// Requests queued toward one replica connection.
const CONN_QUEUE_MAX: usize = 4_096;
/// Largest reply frame accepted from a replica (a READ of the largest size, encoded).
const REPLY_FRAME_BYTES_MAX: usize = 16 << 20;
/// Reply bytes one replica connection may have waiting for the engine, in KiB. Counting
/// replies alone would let a faulty replica queue `CONN_QUEUE_MAX` frames of
/// `REPLY_FRAME_BYTES_MAX` (64 GiB) faster than the engine checks and drops them; per
/// connection, so that it cannot spend what the correct replicas' replies need.
const REPLY_QUEUE_KIB_MAX: u32 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the client engine has stopped")]
    Stopped,
    /// Replicas drop a request above the cluster's `request_bytes_max` unread, so
    /// sending it would only be re-sent forever.
    #[error("an operation of {bytes} bytes exceeds the cluster's request limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

struct Job {
    op: Vec<u8>,
    read_only: bool,
    /// May share a request with other operations (`bundle`); false for operations
    /// whose results can be large (READ, READDIR), so a reply stays small.
    bundleable: bool,
    reply: oneshot::Sender<Vec<u8>>,
}

/// A handle to a running BFT client engine; cheap to clone, usable from any runtime.
#[derive(Clone)]
pub struct BftClient {
    jobs: mpsc::UnboundedSender<Job>,
    /// The cluster's `request_bytes_max`.
    request_bytes_max: usize,
    bundled: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl BftClient {
    /// Operations this client has sent inside bundles so far.
    pub fn bundled_ops(&self) -> u64 {
        self.bundled.load(Ordering::Relaxed)
    }

    /// Requests this client has sent so far (a bundle is one; retransmissions are not
    /// counted): operations per request is the bundling factor.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Orders `op` (or runs it on the read-only path) and returns the agreed result.
    /// Waits through replica failures and view changes; an empty result only if the
    /// engine has stopped.
    pub async fn invoke(&self, op: Vec<u8>, read_only: bool) -> Vec<u8> {
        self.try_invoke(op, read_only).await.unwrap_or_default()
    }

    pub async fn try_invoke(&self, op: Vec<u8>, read_only: bool) -> Result<Vec<u8>, ClientError> {
        self.submit(op, read_only, true).await
    }

    /// Like `try_invoke`, for an operation that must travel alone (its result may be
    /// large).
    pub async fn try_invoke_alone(
        &self,
        op: Vec<u8>,
        read_only: bool,
    ) -> Result<Vec<u8>, ClientError> {
        self.submit(op, read_only, false).await
    }

    /// The most operation bytes one request may carry in this cluster.
    pub fn request_bytes_max(&self) -> usize {
        self.request_bytes_max
    }

    async fn submit(
        &self,
        op: Vec<u8>,
        read_only: bool,
        bundleable: bool,
    ) -> Result<Vec<u8>, ClientError> {
        if op.len() > self.request_bytes_max {
            return Err(ClientError::TooLarge {
                bytes: op.len(),
                max: self.request_bytes_max,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job {
                op,
                read_only,
                bundleable,
                reply: tx,
            })
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Starts the engine of client `client` on the current tokio runtime. It runs until
    /// every handle is dropped.
    pub fn spawn(config: Arc<ClusterConfig>, client: u64) -> Result<BftClient, ClientError> {
        let (handle, engine) = Self::build(config, client)?;
        tokio::spawn(engine);
        Ok(handle)
    }

    /// The handle and the engine future (to run where the caller likes).
    pub fn build(
        config: Arc<ClusterConfig>,
        client: u64,
    ) -> Result<(BftClient, impl Future<Output = ()> + Send + 'static), ClientError> {
        let secrets = config.client_secrets(client)?;
        let crypto = ClusterCrypto::for_client(&config, &secrets)?;
        let signer = RequestSigner::new(&secrets.signing_pkcs8)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let request_bytes_max = config.consensus.request_bytes_max;
        let engine = Engine::new(config, client, crypto, signer);
        let bundled = engine.bundled.clone();
        let requests = engine.requests.clone();
        Ok((
            BftClient {
                jobs: tx,
                request_bytes_max,
                bundled,
                requests,
            },
            engine.run(rx),
        ))
    }
}

struct Engine {
    config: Arc<ClusterConfig>,
    client: u64,
    crypto: ClusterCrypto,
    signer: RequestSigner,
    sessions: Vec<Client>,
    /// Per session, the callers of its outstanding request (several for a bundle).
    waiting: Vec<Vec<oneshot::Sender<Vec<u8>>>>,
    bundling: bool,
    /// Per session: its outstanding request is a bundle (or could have been one) of
    /// this kind (read-only or not), sent then.
    bundle_lane: Vec<Option<(bool, tokio::time::Instant)>>,
    bundles_in_flight: usize,
    bundled: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    /// Per session: its outstanding request went down the read-only path.
    read_only_sent: Vec<bool>,
    /// Reads are ordered until then: a recent read-only request timed out.
    read_only_paused_until: Option<tokio::time::Instant>,
    queue: VecDeque<Job>,
    /// Per replica: request frames to send (one frame shared by every connection).
    conns: Vec<mpsc::Sender<Arc<Vec<u8>>>>,
    up: Vec<Arc<AtomicBool>>,
    stats: Arc<NetStats>,
}

impl Engine {
    fn new(
        config: Arc<ClusterConfig>,
        client: u64,
        crypto: ClusterCrypto,
        signer: RequestSigner,
    ) -> Self {
        let first_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2));
        let resend = (config.consensus.request_timeout_ticks / 4).max(2);
        let sessions = (0..config.sessions)
            .map(|s| {
                Client::new(
                    client * SESSION_STRIDE + s,
                    config.consensus.clone(),
                    first_seq,
                    resend,
                )
            })
            .collect();
        Engine {
            waiting: (0..config.sessions).map(|_| Vec::new()).collect(),
            bundling: config.bundling,
            bundle_lane: vec![None; config.sessions as usize],
            bundles_in_flight: usize::try_from(config.bundles_in_flight).unwrap_or(usize::MAX),
            bundled: Arc::new(AtomicU64::new(0)),
            requests: Arc::new(AtomicU64::new(0)),
            read_only_sent: vec![false; config.sessions as usize],
            read_only_paused_until: None,
            config,
            client,
            crypto,
            signer,
            sessions,
            queue: VecDeque::new(),
            conns: Vec::new(),
            up: Vec::new(),
            stats: Arc::new(NetStats::default()),
        }
    }

    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>) {
        // Each reply carries its share of its connection's byte budget, given back once
        // the engine has handled it.
        let (reply_tx, mut replies) =
            mpsc::channel::<(Reply, OwnedSemaphorePermit)>(CONN_QUEUE_MAX);
        let mut tasks = Vec::new();
        for i in 0..self.config.n() {
            let (tx, rx) = mpsc::channel(CONN_QUEUE_MAX);
            let up = Arc::new(AtomicBool::new(false));
            self.conns.push(tx);
            self.up.push(up.clone());
            tasks.push(tokio::spawn(connection(
                self.config.clone(),
                self.client,
                i,
                rx,
                reply_tx.clone(),
                up,
                self.stats.clone(),
            )));
        }
        drop(reply_tx);
        let mut tick = tokio::time::interval(Duration::from_nanos(self.config.consensus.tick_ns));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        self.queue.push_back(job);
                        while let Ok(job) = jobs.try_recv() {
                            self.queue.push_back(job);
                        }
                        self.dispatch();
                    }
                    None => break,
                },
                Some((reply, _budget)) = replies.recv() => {
                    self.on_reply(&reply);
                    while let Ok((reply, _budget)) = replies.try_recv() {
                        self.on_reply(&reply);
                    }
                    // The callers these replies completed run first (same runtime):
                    // what they call next joins the queue before the next bundle forms.
                    tokio::task::yield_now().await;
                    while let Ok(job) = jobs.try_recv() {
                        self.queue.push_back(job);
                    }
                    self.dispatch();
                }
                _ = tick.tick() => {
                    for s in 0..self.sessions.len() {
                        let outs = self.sessions[s].on_tick();
                        // A read-only request that timed out (not every replica answered:
                        // one is paused or cut off behind a connection that still looks
                        // up) goes down the ordered path; so do further reads for a while
                        // instead of each waiting for the same timeout.
                        if outs.iter().any(|o| {
                            matches!(o, ClientOutput::Send(r) if !r.read_only)
                        }) && std::mem::take(&mut self.read_only_sent[s])
                        {
                            self.read_only_paused_until =
                                Some(tokio::time::Instant::now() + READ_ONLY_PAUSE);
                        }
                        self.outputs(s, outs);
                    }
                    // A session the tick finished frees what waited for it.
                    self.dispatch();
                }
            }
        }
        for t in tasks {
            t.abort();
        }
        // Reads that went down the ordered path after all (replies that disagreed, a
        // missing result, a timeout) cost an ordering each: worth seeing in the logs.
        let (reads_unordered, reads_ordered) = Client::reads_of(&self.sessions);
        debug!(
            client = self.client,
            reads_unordered, reads_ordered, "client engine stopped"
        );
    }

    fn dispatch(&mut self) {
        let paused = self
            .read_only_paused_until
            .is_some_and(|t| tokio::time::Instant::now() < t);
        let all_up = !paused && self.up.iter().all(|u| u.load(Ordering::Relaxed));
        // Calls whose caller went away neither leave nor count towards a full bundle.
        self.queue.retain(|job| !job.reply.is_closed());
        for s in 0..self.sessions.len() {
            if !self.sessions[s].is_idle() {
                continue;
            }
            let held = [self.hold_bundles(false), self.hold_bundles(true)];
            let Some(job) = self.next_job(held) else {
                return;
            };
            self.bundle_lane[s] = (job.bundleable && self.bundling)
                .then(|| (job.read_only, tokio::time::Instant::now()));
            let read_only = job.read_only;
            let mut ops = vec![job.op];
            self.waiting[s] = vec![job.reply];
            if job.bundleable && self.bundling {
                // Everything else waiting of the same kind rides along, up to the limits:
                // one signature and one message per replica for all of them.
                let mut bytes = ops[0].len();
                let mut i = 0;
                while i < self.queue.len() && ops.len() < bundle::BUNDLE_OPS_MAX {
                    let j = &self.queue[i];
                    if j.reply.is_closed() {
                        self.queue.remove(i);
                        continue;
                    }
                    if !j.bundleable
                        || j.read_only != read_only
                        || bytes + j.op.len() > bundle::BUNDLE_BYTES_MAX
                    {
                        i += 1;
                        continue;
                    }
                    let j = self.queue.remove(i).expect("index in range");
                    bytes += j.op.len();
                    ops.push(j.op);
                    self.waiting[s].push(j.reply);
                }
            }
            let op = if ops.len() == 1 {
                ops.pop().expect("one op")
            } else {
                self.bundled.fetch_add(ops.len() as u64, Ordering::Relaxed);
                bundle::encode(&ops)
            };
            self.read_only_sent[s] = read_only && all_up;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outs = self.sessions[s].submit(op, read_only && all_up);
            self.outputs(s, outs);
        }
    }

    /// The oldest queued job, passing over bundleable ones of a kind that is `held`
    /// (indexed by `read_only`). `dispatch` has dropped those whose caller went away.
    fn next_job(&mut self, held: [bool; 2]) -> Option<Job> {
        let at = self
            .queue
            .iter()
            .position(|job| !(job.bundleable && held[usize::from(job.read_only)]))?;
        self.queue.remove(at)
    }

    /// Whether bundleable operations of this kind (read-only or ordered; they never share
    /// a request) wait for the next bundle, by Nagle's rule: while `bundles_in_flight`
    /// bundles of the kind are out, unless a full bundle of it waits. A bundle out for
    /// longer than `BUNDLE_HOLD_MAX` (a view change, a replica that stopped answering
    /// reads) no longer counts, and the ticks dispatch what it held.
    fn hold_bundles(&self, read_only: bool) -> bool {
        if !self.bundling {
            return false;
        }
        let now = tokio::time::Instant::now();
        let out = (0..self.sessions.len())
            .filter(|&s| {
                !self.sessions[s].is_idle()
                    && self.bundle_lane[s].is_some_and(|(kind, since)| {
                        kind == read_only && now.duration_since(since) < BUNDLE_HOLD_MAX
                    })
            })
            .count();
        if out < self.bundles_in_flight {
            return false;
        }
        let (mut ops, mut bytes) = (0, 0);
        for job in self
            .queue
            .iter()
            .filter(|j| j.bundleable && j.read_only == read_only)
        {
            ops += 1;
            bytes += job.op.len();
            if ops >= bundle::BUNDLE_OPS_MAX || bytes >= bundle::BUNDLE_BYTES_MAX {
                return false;
            }
        }
        true
    }

    fn on_reply(&mut self, reply: &Reply) {
        let base = self.client * SESSION_STRIDE;
        let Some(s) = reply
            .client
            .checked_sub(base)
            .filter(|s| *s < self.sessions.len() as u64)
        else {
            self.stats.count(DropReason::WrongClient);
            return;
        };
        let crypto: &dyn Crypto = &self.crypto;
        let outs = self.sessions[s as usize].on_reply(crypto, reply);
        self.outputs(s as usize, outs);
    }

    fn outputs(&mut self, s: usize, outs: Vec<ClientOutput>) {
        for o in outs {
            let resend = matches!(o, ClientOutput::Resend(_));
            match o {
                ClientOutput::Send(mut req) | ClientOutput::Resend(mut req) => {
                    let digest = self.crypto.request_digest(&req);
                    req.sig = if req.read_only {
                        self.crypto.read_only_authenticator(req.client, &digest)
                    } else {
                        self.signer.sign(&digest)
                    };
                    let frame = Arc::new(encode(&if resend {
                        ClientMsg::Resend(req)
                    } else {
                        ClientMsg::Request(req)
                    }));
                    for c in &self.conns {
                        if c.try_send(frame.clone()).is_err() {
                            self.stats.count(DropReason::QueueFull);
                        }
                    }
                }
                ClientOutput::Done { result, .. } => {
                    let mut waiting = std::mem::take(&mut self.waiting[s]);
                    if waiting.len() == 1 {
                        let _ = waiting.pop().expect("one caller").send(result);
                        continue;
                    }
                    // The agreed result of a bundle: one per caller, in order. A result
                    // that does not split (f+1 replicas agreed on it, so only a faulty
                    // client could cause it) fails each call the way garbage does.
                    match bundle::decode(&result).filter(|r| r.len() == waiting.len()) {
                        Some(results) => {
                            for (tx, r) in waiting.into_iter().zip(results) {
                                let _ = tx.send(r.to_vec());
                            }
                        }
                        None => {
                            for tx in waiting {
                                let _ = tx.send(BAD_OP_RESULT.to_vec());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One replica connection: dials with backoff, sends queued requests, forwards replies.
async fn connection(
    config: Arc<ClusterConfig>,
    client: u64,
    replica: ReplicaId,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    replies: mpsc::Sender<(Reply, OwnedSemaphorePermit)>,
    up: Arc<AtomicBool>,
    stats: Arc<NetStats>,
) {
    let addr = config.replica_addr(replica);
    let budget = Arc::new(Semaphore::new(REPLY_QUEUE_KIB_MAX as usize));
    let mut backoff = crate::net::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let Some(stream) = crate::net::dial(addr, &mut rx, &mut backoff).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let mut r = BufReader::with_capacity(64 << 10, r);
        let mut w = BufWriter::with_capacity(64 << 10, w);
        if write_frame(&mut w, &encode(&Hello::Client { client }))
            .await
            .is_err()
            || w.flush().await.is_err()
        {
            tokio::time::sleep(backoff.current).await;
            continue;
        }
        info!(replica, %addr, "connected to replica");
        backoff.reset();
        up.store(true, Ordering::Relaxed);
        let replies = replies.clone();
        let stats2 = stats.clone();
        let budget = budget.clone();
        let mut reader = tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut r, REPLY_FRAME_BYTES_MAX).await {
                    Ok(f) => f,
                    Err(e) => {
                        if let Some(why) = e.drop_reason() {
                            stats2.count(why);
                        }
                        return;
                    }
                };
                match decode::<ReplicaMsg>(&frame) {
                    Ok(ReplicaMsg::Reply(reply)) => {
                        if reply.replica != replica {
                            stats2.count(DropReason::WrongClient);
                            continue;
                        }
                        // Waits while this replica's replies already fill the budget: the
                        // connection, not the engine's memory, holds back the rest.
                        let kib = frame.len().div_ceil(1024).min(REPLY_QUEUE_KIB_MAX as usize);
                        let Ok(permit) = budget.clone().acquire_many_owned(kib as u32).await else {
                            return;
                        };
                        if replies.send((reply, permit)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        stats2.count(DropReason::Garbage);
                        return;
                    }
                }
            }
        });
        let closed = loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { break true };
                    let mut ok = write_frame(&mut w, &frame).await.is_ok();
                    while ok && let Ok(frame) = rx.try_recv() {
                        ok = write_frame(&mut w, &frame).await.is_ok();
                    }
                    if !ok || w.flush().await.is_err() {
                        break false;
                    }
                }
                _ = &mut reader => break false,
            }
        };
        up.store(false, Ordering::Relaxed);
        reader.abort();
        if closed {
            return;
        }
        info!(replica, "connection to replica lost; reconnecting");
    }
}

/// The replicated `FsBackend`: every NFS call is one BFT request.
#[derive(Clone)]
pub struct BftBackend {
    client: BftClient,
    root: FileHandle,
}

impl BftBackend {
    pub fn new(client: BftClient, generation: u64) -> Self {
        BftBackend {
            client,
            root: FileHandle::root(generation),
        }
    }
}

impl FsBackend for BftBackend {
    fn root_handle(&self) -> FileHandle {
        self.root.clone()
    }

    fn execute(&self, cred: AuthUnix, mut op: FsOp) -> impl Future<Output = FsReply> + Send {
        // The replicas write at most this much (FSINFO's wtmax); a client that sends
        // more gets a short write, as from any server, instead of a request too large
        // to order.
        if let FsOp::Write { data, .. } = &mut op {
            data.truncate(write_data_max(self.client.request_bytes_max()) as usize);
        }
        let bytes = encode_op(&cred, &op);
        let read_only = is_read_only(&op);
        let large_result = matches!(
            op,
            FsOp::Read { .. } | FsOp::Readdir { .. } | FsOp::Readdirplus { .. }
        );
        let client = self.client.clone();
        async move {
            let result = if large_result {
                client.try_invoke_alone(bytes, read_only).await
            } else {
                client.try_invoke(bytes, read_only).await
            };
            match result {
                Ok(result) => {
                    FsReply::decode(&result).unwrap_or_else(|_| error_reply(&op, NfsStat3::Io))
                }
                Err(e @ ClientError::TooLarge { .. }) => {
                    debug!("refused: {e}");
                    let status = match op {
                        FsOp::Symlink { .. } => NfsStat3::Nametoolong,
                        _ => NfsStat3::Inval,
                    };
                    error_reply(&op, status)
                }
                Err(_) => error_reply(&op, NfsStat3::Io),
            }
        }
    }
}
