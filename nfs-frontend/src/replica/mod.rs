//! The replica runtime: the thin driver around the pure MinPBFT core (STYLE, "a pure
//! protocol core, a thin driver"). It owns the sockets, the clock, the USIG, the durable
//! log, the file state machine and the snapshots, and performs the core's outputs in
//! order, the way the simulator (`consensus::sim`) does with fakes.
//!
//! One current-thread tokio runtime: the protocol loop handles a burst of inputs
//! synchronously (validation, `step`, USIG, execution with its one sync per batch, log
//! appends), then makes the log durable with one `fdatasync`, and only then yields, which
//! is the first moment the connection tasks can write anything queued during the burst.
//! That is how "every `Persist` is durable before any later send" holds while the log
//! sync is shared by a whole burst.
//!
//! Modules: `links` (connections), `log` (protocol records), `app` (file state machine or
//! null app), `snapshots` (checkpoint state on disk, coarse state transfer).

pub mod app;
pub mod links;
pub mod log;
pub mod snapshots;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consensus::message::CheckpointCert;
use consensus::replica::{CoreState, checkpoint_digest};
use consensus::{Input, Output, PeerMessage, Replica, ReplicaId, SeqNum, validate};
use fs_state::FsConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};
use usig::{ProcessUsig, SoftwareUsig, Usig};

use crate::config::ClusterConfig;
use crate::crypto::ClusterCrypto;
use crate::net::{DropReason, LinkMsg, NetStats, ReplicaMsg, StateBlob, encode};
use app::App;
use links::Event;
use log::ProtocolLog;
use snapshots::{Snapshot, SnapshotStore};

/// Inputs handled before the log is synced and the loop yields.
const BURST_MAX: usize = 256;
/// Events queued from all connections toward the protocol loop.
const EVENT_QUEUE_MAX: usize = 4_096;

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
}

/// What a replica did, reported when it stops.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStats {
    pub executed_n: SeqNum,
    pub view: u64,
    pub dropped_core: BTreeMap<&'static str, u64>,
    pub dropped_net: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Transfer {
    cert: CheckpointCert,
    tried: BTreeSet<ReplicaId>,
    asked_tick: u64,
}

struct Node {
    id: ReplicaId,
    data_dir: PathBuf,
    n: u32,
    config: Arc<ClusterConfig>,
    crypto: ClusterCrypto,
    core: Replica,
    app: Option<App>,
    usig: Box<dyn Usig + Send>,
    log: ProtocolLog,
    snaps: SnapshotStore,
    /// Application snapshots taken right after a batch whose digest a checkpoint needs,
    /// waiting for the core's `TakeSnapshot` (later batches may execute in between).
    pending_snapshots: BTreeMap<SeqNum, Vec<u8>>,
    peers: Vec<Option<mpsc::Sender<Arc<LinkMsg>>>>,
    clients: BTreeMap<u64, (u64, mpsc::Sender<Vec<u8>>)>,
    transfer: Option<Transfer>,
    ticks: u64,
    stats: Arc<NetStats>,
}

impl Node {
    fn app(&mut self) -> &mut App {
        self.app
            .as_mut()
            .expect("application open while the node runs")
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

    fn send_peer(&mut self, to: ReplicaId, msg: Arc<LinkMsg>) {
        if let Some(Some(tx)) = self.peers.get(to as usize)
            && tx.try_send(msg).is_err()
        {
            self.stats.count(DropReason::QueueFull);
        }
    }

    fn perform(&mut self, o: Output, work: &mut VecDeque<Input>) -> Result<(), ReplicaError> {
        match o {
            Output::Send { to, msg } => self.send_peer(to, Arc::new(LinkMsg::Peer(msg))),
            Output::Broadcast(msg) => {
                let msg = Arc::new(LinkMsg::Peer(msg));
                for j in 0..self.n {
                    if j != self.id {
                        self.send_peer(j, msg.clone());
                    }
                }
            }
            Output::CreateUi { digest } => {
                // Write-ahead: the message's intent (and every record before it) is
                // durable before the USIG spends a counter on it, so a crash in between
                // is completed on restart instead of leaving a hole in our stream.
                self.log.sync()?;
                let ui = self.usig.create_ui(&digest)?;
                work.push_back(Input::UiCreated(ui));
            }
            Output::Execute {
                n,
                timestamp_ns,
                requests,
                want_digest,
            } => {
                let app = self.app();
                let results = app.execute(n, timestamp_ns, &requests)?;
                let app_digest = if want_digest {
                    let d = app.digest()?;
                    let snap = app.snapshot()?;
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
                if let Some((_, tx)) = self.clients.get(&client)
                    && tx.try_send(encode(&ReplicaMsg::Reply(reply))).is_err()
                {
                    self.stats.count(DropReason::QueueFull);
                }
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
                        self.app().snapshot()?
                    }
                };
                self.snaps.save(&Snapshot { n, core_state, app })?;
            }
            Output::Stable { n } => {
                self.snaps.drop_below(n)?;
                self.pending_snapshots = self.pending_snapshots.split_off(&n);
            }
            Output::FetchState { cert } => {
                info!(n = cert.n, "behind a stable checkpoint: fetching state");
                self.transfer = Some(Transfer {
                    cert,
                    tried: BTreeSet::new(),
                    asked_tick: 0,
                });
                self.ask_state();
            }
        }
        Ok(())
    }

    fn ask_state(&mut self) {
        let n_rep = self.n;
        let me = self.id;
        let ticks = self.ticks;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.tried.len() + 1 >= n_rep as usize {
            t.tried.clear();
        }
        let Some(j) = (0..n_rep).find(|j| *j != me && !t.tried.contains(j)) else {
            return;
        };
        t.tried.insert(j);
        t.asked_tick = ticks;
        let n = t.cert.n;
        self.send_peer(j, Arc::new(LinkMsg::StateRequest { n }));
    }

    fn on_event(&mut self, ev: Event) -> Result<(), ReplicaError> {
        match ev {
            Event::Link { from, msg } => match msg {
                LinkMsg::Peer(m) => self.on_peer(from, m),
                LinkMsg::StateRequest { n } => self.on_state_request(from, n),
                LinkMsg::StateReply { n, state } => self.on_state_reply(from, n, state),
            },
            Event::Request { req } => {
                let config = self.core.config().clone();
                match validate::request(&config, &self.crypto, req) {
                    Ok(v) => self.feed(Input::Request(v)),
                    Err(e) => {
                        self.core.record_rejected(e);
                        Ok(())
                    }
                }
            }
            Event::ClientUp { client, conn, tx } => {
                self.clients.insert(client, (conn, tx));
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
        let config = self.core.config().clone();
        match validate::peer_message(&config, &self.crypto, from, msg) {
            Ok(v) => self.feed(Input::Peer { from, msg: v }),
            Err(e) => {
                self.core.record_rejected(e);
                Ok(())
            }
        }
    }

    fn on_state_request(&mut self, from: ReplicaId, n: SeqNum) -> Result<(), ReplicaError> {
        let stable = self.log.durable.stable.clone();
        let state = if stable.n >= n && stable.n > 0 {
            self.snaps.load(stable.n)?.map(|s| {
                Box::new(StateBlob {
                    cert: stable,
                    core_state: s.core_state,
                    app: s.app,
                })
            })
        } else {
            None
        };
        self.send_peer(from, Arc::new(LinkMsg::StateReply { n, state }));
        Ok(())
    }

    fn on_state_reply(
        &mut self,
        from: ReplicaId,
        n: SeqNum,
        state: Option<Box<StateBlob>>,
    ) -> Result<(), ReplicaError> {
        let Some(wanted) = self.transfer.as_ref().map(|t| t.cert.clone()) else {
            return Ok(());
        };
        if wanted.n != n {
            return Ok(());
        }
        let Some(blob) = state else {
            // That peer has nothing recent enough; the next tick asks another.
            return Ok(());
        };
        let config = self.core.config().clone();
        let cert_ok = if blob.cert.n == wanted.n {
            blob.cert.state_digest == wanted.state_digest
        } else {
            blob.cert.n > wanted.n
                && validate::checkpoint_cert(&config, &self.crypto, &blob.cert).is_ok()
        };
        if !cert_ok {
            warn!(from, "state transfer: uncertified state offered; dropped");
            self.stats.count(DropReason::Garbage);
            return Ok(());
        }
        let app_digest = match self.app().restore(&blob.app) {
            Ok(d) => d,
            Err(e) => {
                warn!(from, "state transfer: bad snapshot: {e}");
                self.stats.count(DropReason::Garbage);
                return Ok(());
            }
        };
        if checkpoint_digest(&app_digest, &blob.core_state) != blob.cert.state_digest {
            warn!(from, "state transfer: state does not match its certificate");
            self.stats.count(DropReason::Garbage);
            return Ok(());
        }
        let StateBlob {
            cert,
            core_state,
            app,
        } = *blob;
        info!(n = cert.n, from, "state transfer: installed");
        self.snaps.save(&Snapshot {
            n: cert.n,
            core_state: core_state.clone(),
            app,
        })?;
        self.transfer = None;
        self.feed(Input::StateInstalled { cert, core_state })
    }

    fn on_tick(&mut self) -> Result<(), ReplicaError> {
        self.ticks += 1;
        let retry = self.config.consensus.fetch_timeout_ticks.max(1) * 4;
        if self
            .transfer
            .as_ref()
            .is_some_and(|t| self.ticks - t.asked_tick >= retry)
        {
            self.ask_state();
        }
        self.feed(Input::Tick { now_ns: now_ns() })
    }

    fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            executed_n: self.core.executed_n(),
            view: self.core.view(),
            dropped_core: self.core.dropped().clone(),
            dropped_net: self.stats.total(),
        }
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
    let usig: Box<dyn Usig + Send> = match &opts.usig_socket {
        Some(socket) => {
            let expected = config.usig_identity(id)?;
            Box::new(ProcessUsig::connect(socket, Some(&expected))?)
        }
        None if matches!(
            config.replicas[id as usize].usig,
            crate::config::UsigConfig::Tpm { .. }
        ) =>
        {
            let usig_dir = opts.data_dir.join("usig");
            std::fs::create_dir_all(&usig_dir)?;
            crate::tpm::open_usig(&config, id, &usig_dir)?
        }
        None => {
            let usig_dir = opts.data_dir.join("usig");
            std::fs::create_dir_all(&usig_dir)?;
            let key = usig::SigningKey::read_file(&secrets.usig_key_file)?;
            Box::new(SoftwareUsig::open(&usig_dir, id, key.pkcs8())?)
        }
    };
    let mut log = ProtocolLog::open(&opts.data_dir)?;
    let snaps = SnapshotStore::open(&opts.data_dir)?;
    let mut app = if opts.null_app {
        App::Null { executed: 0 }
    } else {
        App::open_fs(&opts.data_dir, opts.fs_config.clone())?
    };
    let usig_counter = usig.last_issued().map_or(0, |u| u.ui.counter);
    let fresh = log.replayed == 0 && usig_counter == 0;
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
        let d = app.restore(&snap.app)?;
        if stable.n > 0 && checkpoint_digest(&d, &snap.core_state) != stable.state_digest {
            return Err(ReplicaError::Recovery(format!(
                "snapshot {} does not match the stable checkpoint's digest",
                stable.n
            )));
        }
        snap.core_state
    };
    let mut last_sent = log.durable.sent.keys().next_back().copied().unwrap_or(0);
    // A crash between the USIG's durable increment and the `Sent` record: the intent
    // logged before `CreateUi` plus the USIG's last UI rebuild the message exactly.
    if usig_counter == last_sent + 1
        && let (Some(intent), Some(issued)) = (log.durable.intent.clone(), usig.last_issued())
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
    if usig_counter > last_sent && !fresh {
        // The USIG issued a UI whose message never reached the log (crash in between):
        // peers will wait for that counter. See the report: the core needs a way out.
        warn!(
            usig_counter,
            last_sent, "USIG counter ahead of the logged messages"
        );
    }
    let recovered = log.durable.recovered(core_state, usig_counter);
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
    Ok(Node {
        id,
        data_dir: opts.data_dir.clone(),
        n: config.n(),
        config,
        crypto,
        core,
        app: Some(app),
        usig,
        log,
        snaps,
        pending_snapshots: BTreeMap::new(),
        peers: Vec::new(),
        clients: BTreeMap::new(),
        transfer: None,
        ticks: 0,
        stats,
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
    let mut tick = tokio::time::interval(Duration::from_nanos(config.consensus.tick_ns));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let result: Result<(), ReplicaError> = async {
        loop {
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
            // Durable before we yield: nothing queued above reaches a socket before
            // (except `Sent` records, which the synced intents already cover).
            if node.log.must_sync() {
                node.log.sync()?;
            }
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
    node.log.sync()?;
    if result.is_ok()
        && let Some(app) = node.app.take()
    {
        app.close()?;
    }
    result?;
    info!(
        id = opts.id,
        executed = final_stats.executed_n,
        view = final_stats.view,
        "replica stopped"
    );
    Ok(final_stats)
}

/// Writes `pid` into `dir/pid` (for `bftnfs up` and operators).
pub fn write_pid_file(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("pid");
    std::fs::write(&path, format!("{}\n", std::process::id()))?;
    Ok(path)
}
