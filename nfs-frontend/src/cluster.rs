//! An embedded cluster for tests and the benchmark: 2f+1 replicas and an NFS frontend in
//! this process, each replica on its own thread with its own current-thread runtime
//! (as in its own process: separate USIG, log, export and sockets on 127.0.0.1), the
//! frontend on another, and a second BFT client for micro-benchmarks on a third (or, with
//! `client_engine_on_caller`, on the caller's runtime).
//!
//! Threads rather than child processes so that a benchmark or test needs no binary and
//! stops everything with `stop`; the kill -9 tests use real `bftnfs` processes instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use fs_state::FsConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::client::{BftBackend, BftClient};
use crate::config::{ClusterConfig, ExportLimits, KeygenOptions, UsigKeyKind, keygen};
use crate::replica::{self, ReplicaOptions, ReplicaStats};
use crate::server::{NfsServer, ServerConfig};

/// The client index the NFS frontend uses; `BENCH_CLIENT` is the programmatic client.
pub const FRONTEND_CLIENT: u64 = 0;
pub const BENCH_CLIENT: u64 = 1;

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub f: u32,
    /// Holds cluster.toml, keys/ and replica-<i>/ (reused if cluster.toml exists).
    pub dir: PathBuf,
    /// Batch requests in PREPAREs (false: one request per batch).
    pub batching: bool,
    /// Replicas order requests but execute nothing (protocol micro-benchmarks).
    pub null_app: bool,
    /// BFT sessions per client (requests in flight at once).
    pub sessions: u64,
    /// Each replica reaches its USIG through a separate USIG server (one thread per
    /// replica here, listening on `replica-<i>/usig.sock`) instead of holding the key.
    pub process_usig: bool,
    /// Clients send the operations waiting beyond their idle sessions as one bundled
    /// request (`crate::bundle`).
    pub bundling: bool,
    /// Each replica's USIG is a TPM: one swtpm per replica (state in `replica-<i>/swtpm`,
    /// free loopback ports), provisioned on first use, killed when the cluster drops.
    /// Needs the `tpm` feature and swtpm.
    pub tpm_usig: bool,
    /// The caller runs the micro-benchmark client's engine on its own runtime
    /// (`LocalCluster::take_client_engine`), beside the tasks that call it, as the NFS
    /// frontend runs its engine beside its NFS server. Otherwise a thread of the cluster
    /// runs it, and every call and reply crosses threads.
    pub client_engine_on_caller: bool,
    /// The export's limits, written into a new cluster.toml (`ClusterConfig::export`);
    /// `None`: a quota the replicas cannot outgrow on the disk of `dir`
    /// (`KeygenOptions::export`), as `bftnfs up` chooses.
    pub export: Option<ExportLimits>,
    /// What certifies the replicas' UIs in a new cluster.toml. A TPM or process USIG
    /// always gets an ECDSA P-256 key per replica.
    pub usig_key: UsigKeyKind,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        ClusterOptions {
            f: 1,
            dir: std::env::temp_dir()
                .join(format!("bftnfs-cluster-{}-{nanos}", std::process::id())),
            batching: true,
            null_app: false,
            sessions: 16,
            process_usig: false,
            bundling: true,
            tpm_usig: false,
            client_engine_on_caller: false,
            export: None,
            usig_key: UsigKeyKind::Shared,
        }
    }
}

type StopAndJoin<T> = (oneshot::Sender<()>, JoinHandle<anyhow::Result<T>>);

/// A BFT client's engine: the future that sends its requests and gathers the replies.
pub type ClientEngine = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct LocalCluster {
    config: Arc<ClusterConfig>,
    nfs_addr: SocketAddr,
    replicas: Vec<Option<StopAndJoin<ReplicaStats>>>,
    /// How each replica was started, to start it again.
    replica_opts: Vec<ReplicaOptions>,
    frontend: Option<StopAndJoin<()>>,
    bench: Option<(BftClient, Option<StopAndJoin<()>>)>,
    /// The micro-benchmark client's engine until the caller takes it.
    bench_engine: Option<ClientEngine>,
    dir: PathBuf,
    /// Kept to stop the USIG servers (after the replicas) when the cluster drops.
    #[allow(dead_code)]
    usig_servers: Vec<UsigServerThread>,
    /// The swtpm guards (`usig::swtpm::Swtpm`) of a TPM cluster, killed after the
    /// replicas stopped (fields drop in order).
    #[allow(dead_code)]
    swtpms: Vec<Box<dyn std::any::Any + Send>>,
}

/// A `usig::process` server on its own thread, stopped when dropped.
struct UsigServerThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UsigServerThread {
    fn start(config: &ClusterConfig, id: u32, dir: &Path) -> anyhow::Result<(Self, PathBuf)> {
        config.require_own_usig_keys("a usig-server")?;
        let secrets = config.replica_secrets(id)?;
        let key = crate::crypto::own_usig_key(config, &secrets)?;
        let state = dir.join("usig-server");
        std::fs::create_dir_all(&state)?;
        let mut usig = usig::SoftwareUsig::open(&state, id, key.key_bytes())?;
        let socket = dir.join("usig.sock");
        let listener = usig::process::bind(&socket)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let uid = rustix::process::getuid().as_raw();
        let thread = std::thread::Builder::new()
            .name(format!("bftnfs-usig-{id}"))
            .spawn(move || {
                if let Err(e) = usig::process::serve(&listener, &mut usig, uid, &flag) {
                    tracing::error!("USIG server {id}: {e}");
                }
            })?;
        Ok((
            UsigServerThread {
                stop,
                thread: Some(thread),
            },
            socket,
        ))
    }
}

impl Drop for UsigServerThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "tpm")]
fn start_swtpms(path: &Path, dir: &Path) -> anyhow::Result<Vec<Box<dyn std::any::Any + Send>>> {
    anyhow::ensure!(
        usig::swtpm::available(),
        "a TPM cluster needs swtpm: apt-get install swtpm swtpm-tools"
    );
    Ok(crate::tpm::start_swtpms(path, dir)?
        .into_iter()
        .map(|s| Box::new(s) as Box<dyn std::any::Any + Send>)
        .collect())
}

#[cfg(not(feature = "tpm"))]
fn start_swtpms(_path: &Path, _dir: &Path) -> anyhow::Result<Vec<Box<dyn std::any::Any + Send>>> {
    anyhow::bail!("a TPM cluster needs bftnfs built with the `tpm` feature (needs libtss2-dev)")
}

/// Writes a fresh cluster.toml and keys into `dir` unless one is there.
pub fn ensure_keys(dir: &Path, opts: &KeygenOptions) -> anyhow::Result<PathBuf> {
    let path = dir.join("cluster.toml");
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(keygen(dir, opts)?)
}

fn spawn_runtime_thread<T: Send + 'static, F, Fut>(
    name: String,
    f: F,
) -> anyhow::Result<StopAndJoin<T>>
where
    F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = oneshot::channel();
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(f(rx))
    })?;
    Ok((tx, handle))
}

/// Starts replica `id` of `config` on its own thread.
pub fn start_replica_thread(
    config: Arc<ClusterConfig>,
    opts: ReplicaOptions,
) -> anyhow::Result<(
    oneshot::Sender<()>,
    JoinHandle<anyhow::Result<ReplicaStats>>,
)> {
    let addr = config.replica_addr(opts.id);
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("replica {} binding {addr}", opts.id))?;
    std_listener.set_nonblocking(true)?;
    spawn_runtime_thread(
        format!("bftnfs-replica-{}", opts.id),
        move |stop| async move {
            let listener = TcpListener::from_std(std_listener)?;
            let stop = async move {
                let _ = stop.await;
            };
            Ok(replica::run(config, opts, listener, stop).await?)
        },
    )
}

impl LocalCluster {
    pub fn start(opts: ClusterOptions) -> anyhow::Result<LocalCluster> {
        let mut keygen_opts = KeygenOptions::new(opts.f, 2);
        keygen_opts.sessions = opts.sessions;
        keygen_opts.export = opts.export;
        keygen_opts.usig_key = match opts.tpm_usig || opts.process_usig {
            true => UsigKeyKind::EcdsaP256,
            false => opts.usig_key,
        };
        if !opts.batching {
            keygen_opts.consensus.batch_requests_max = 1;
        }
        let path = ensure_keys(&opts.dir, &keygen_opts)?;
        let swtpms = if opts.tpm_usig {
            start_swtpms(&path, &opts.dir)?
        } else {
            Vec::new()
        };
        let mut config = ClusterConfig::load(&path)?;
        config.bundling &= opts.bundling;
        let config = Arc::new(config);
        let mut replicas = Vec::new();
        let mut replica_opts = Vec::new();
        let mut usig_servers = Vec::new();
        for id in 0..config.n() {
            let data_dir = opts.dir.join(format!("replica-{id}"));
            std::fs::create_dir_all(&data_dir)?;
            let usig_socket = if opts.process_usig {
                let (server, socket) = UsigServerThread::start(&config, id, &data_dir)?;
                usig_servers.push(server);
                Some(socket)
            } else {
                None
            };
            let ropts = ReplicaOptions {
                id,
                data_dir,
                null_app: opts.null_app,
                fs_config: crate::replica::replica_fs_config(&config),
                usig_socket,
                serve_corrupt_chunks: false,
                drop_large_client_copies: false,
            };
            replica_opts.push(ropts.clone());
            replicas.push(Some(start_replica_thread(config.clone(), ropts)?));
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let nfs_addr = std_listener.local_addr()?;
        let fconfig = config.clone();
        let frontend = spawn_runtime_thread("bftnfs-frontend".into(), move |stop| async move {
            let listener = TcpListener::from_std(std_listener)?;
            let client = BftClient::spawn(fconfig, FRONTEND_CLIENT)?;
            let backend = BftBackend::new(client, FsConfig::default().generation);
            let stop = async move {
                let _ = stop.await;
            };
            NfsServer::with_config(backend, ServerConfig::default())
                .serve(listener, stop)
                .await?;
            Ok(())
        })?;
        let (bench, engine) = BftClient::build(config.clone(), BENCH_CLIENT)?;
        let (bench_thread, bench_engine) = if opts.client_engine_on_caller {
            (None, Some(Box::pin(engine) as ClientEngine))
        } else {
            let thread =
                spawn_runtime_thread("bftnfs-bench-client".into(), move |stop| async move {
                    tokio::select! {
                        () = engine => {}
                        _ = stop => {}
                    }
                    Ok(())
                })?;
            (Some(thread), None)
        };
        Ok(LocalCluster {
            config,
            nfs_addr,
            replicas,
            replica_opts,
            frontend: Some(frontend),
            bench: Some((bench, bench_thread)),
            bench_engine,
            dir: opts.dir,
            usig_servers,
            swtpms,
        })
    }

    /// NFS, MOUNT and portmap of the frontend (export "/").
    pub fn nfs_addr(&self) -> SocketAddr {
        self.nfs_addr
    }

    /// A BFT client for micro-benchmarks (its own client key and sessions). With
    /// `client_engine_on_caller`, its calls complete only while the engine from
    /// `take_client_engine` runs.
    pub fn client(&self) -> BftClient {
        self.bench.as_ref().expect("running").0.clone()
    }

    /// The engine of `client()`, once, for the caller to run on its own runtime (with
    /// `client_engine_on_caller`; `None` otherwise or when taken). Stop it before the
    /// cluster stops: it keeps reconnecting to replicas that are gone.
    pub fn take_client_engine(&mut self) -> Option<ClientEngine> {
        self.bench_engine.take()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backing tree of replica `id`.
    pub fn export_dir(&self, id: u32) -> PathBuf {
        self.dir
            .join(format!("replica-{id}"))
            .join(fs_state::EXPORT_DIR)
    }

    /// Stops replica `id` (clean shutdown), e.g. to test a crash-stop failure.
    pub fn stop_replica(&mut self, id: u32) -> anyhow::Result<ReplicaStats> {
        let (tx, handle) = self.replicas[id as usize]
            .take()
            .context("replica not running")?;
        let _ = tx.send(());
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("replica thread panicked"))?
    }

    /// Starts replica `id` again (after `stop_replica`) from its data directory, as a
    /// restarted process would.
    pub fn restart_replica(&mut self, id: u32) -> anyhow::Result<()> {
        self.restart_replica_with(id, |_| {})
    }

    /// `restart_replica` with its options changed by `change` for this run (fault
    /// injection in tests, such as `serve_corrupt_chunks`); a later `restart_replica`
    /// starts it with the cluster's options again.
    pub fn restart_replica_with(
        &mut self,
        id: u32,
        change: impl FnOnce(&mut ReplicaOptions),
    ) -> anyhow::Result<()> {
        let slot = self
            .replicas
            .get_mut(id as usize)
            .context("no such replica")?;
        anyhow::ensure!(slot.is_none(), "replica {id} is running");
        let mut opts = self.replica_opts[id as usize].clone();
        change(&mut opts);
        *slot = Some(start_replica_thread(self.config.clone(), opts)?);
        Ok(())
    }

    /// Stops everything; returns each replica's final statistics.
    pub fn stop(mut self) -> anyhow::Result<Vec<ReplicaStats>> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<Vec<ReplicaStats>> {
        if let Some((tx, h)) = self.frontend.take() {
            let _ = tx.send(());
            h.join()
                .map_err(|_| anyhow::anyhow!("frontend panicked"))??;
        }
        if let Some((_, Some((tx, h)))) = self.bench.take() {
            let _ = tx.send(());
            let _ = h.join();
        }
        let mut out = Vec::new();
        for id in 0..self.replicas.len() {
            if self.replicas[id].is_some() {
                out.push(self.stop_replica(id as u32)?);
            }
        }
        Ok(out)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("stopping the local cluster: {e}");
        }
    }
}
