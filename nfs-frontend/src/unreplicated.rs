//! Unreplicated mode: one local `FileStateMachine`, with a replica's durability.
//!
//! The point of this mode is the benchmark's baseline (DESIGN.md, "The benchmark"), so it
//! must pay what a replica pays and nothing else: every operation gets a timestamp
//! (the host clock, made strictly increasing, standing in for the primary's PREPARE
//! timestamp), operations are applied in arrival order, and no reply leaves before the
//! `sync()` that made its operation durable. Operations that arrive together form one
//! batch with one `sync()`, as an ordered batch does on a replica.
//!
//! The state machine is owned by one executor future (a single-task actor) that the
//! caller polls on the same current-thread runtime as the server: a call crosses from
//! its task to the executor through a channel, without a thread hop or a lock, and the
//! executor sees every operation that queued up while it was syncing.
//! A local fault (EIO, ENOSPC) stops the executor, fails the calls in flight with
//! NFS3ERR_IO and ends the server: the state machine refuses further work, and reopening
//! it (a restart) repairs the tree from the journal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs_state::{
    AuthUnix, FileHandle, FileStateMachine, FsConfig, FsError, FsOp, FsReply, NfsStat3, OpContext,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, trace, warn};

use crate::backend::{FsBackend, error_reply};
use crate::server::{NfsServer, ServerConfig};

/// Operations applied before one `sync()`; bounds the latency a batch adds to its first
/// operation when many arrive at once.
pub const BATCH_OPS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum UnreplicatedError {
    #[error("cannot open the file state machine in {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: FsError,
    },
    /// The disk failed under the state machine; restarting reopens and repairs it.
    #[error("local fault, server stopped (restart to recover): {0}")]
    Fault(#[source] FsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("server thread panicked")]
    Panicked,
}

struct Job {
    cred: AuthUnix,
    op: FsOp,
    reply: oneshot::Sender<FsReply>,
}

/// The `FsBackend` half: cheap to clone, `Send + Sync`, hands operations to the executor.
#[derive(Clone)]
pub struct UnreplicatedBackend {
    jobs: mpsc::UnboundedSender<Job>,
    root: FileHandle,
}

/// The executor half: owns the state machine; `run` it on the server's thread.
pub struct UnreplicatedExecutor {
    jobs: mpsc::UnboundedReceiver<Job>,
    sm: FileStateMachine,
    clock: MonotonicClock,
}

/// Open (or create) the export in `data_dir` and return its two halves. The queue
/// between them needs no bound of its own: the server bounds connections and calls in
/// flight per connection.
pub fn open(
    data_dir: &Path,
    config: FsConfig,
) -> Result<(UnreplicatedBackend, UnreplicatedExecutor), UnreplicatedError> {
    let sm =
        FileStateMachine::open(data_dir, config).map_err(|source| UnreplicatedError::Open {
            path: data_dir.to_path_buf(),
            source,
        })?;
    if !sm.damaged().is_empty() {
        // A replica would restore these from the others; alone there is no one to ask.
        warn!(
            objects = ?sm.damaged(),
            "objects found inconsistent after a crash; serving them as they are"
        );
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = UnreplicatedBackend {
        jobs: tx,
        root: sm.root_handle(),
    };
    let executor = UnreplicatedExecutor {
        jobs: rx,
        sm,
        clock: MonotonicClock::default(),
    };
    Ok((backend, executor))
}

impl FsBackend for UnreplicatedBackend {
    fn root_handle(&self) -> FileHandle {
        self.root.clone()
    }

    fn execute(&self, cred: AuthUnix, op: FsOp) -> impl Future<Output = FsReply> + Send {
        // Computed up front because the op moves to the executor; it has no heap data.
        let stopped = error_reply(&op, NfsStat3::Io);
        let (tx, rx) = oneshot::channel();
        let sent = self.jobs.send(Job {
            cred,
            op,
            reply: tx,
        });
        async move {
            if sent.is_err() {
                return stopped;
            }
            rx.await.unwrap_or(stopped)
        }
    }
}

/// What an executor did, for measuring how well operations share syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    pub ops: u64,
    /// Batches, each ending in one `sync()`.
    pub batches: u64,
}

impl UnreplicatedExecutor {
    /// Apply operations until every `UnreplicatedBackend` is dropped, then close the
    /// state machine cleanly. Returns early on a local fault.
    pub async fn run(mut self) -> Result<ExecutorStats, UnreplicatedError> {
        let mut stats = ExecutorStats::default();
        let mut batch = Vec::with_capacity(BATCH_OPS_MAX);
        let mut replies = Vec::with_capacity(BATCH_OPS_MAX);
        while let Some(first) = self.jobs.recv().await {
            batch.push(first);
            while batch.len() < BATCH_OPS_MAX {
                match self.jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let ops = batch.len();
            for job in batch.drain(..) {
                let ctx = OpContext {
                    timestamp_ns: self.clock.next_ns(),
                    cred: job.cred,
                };
                match self.sm.apply(&ctx, &job.op) {
                    Ok(reply) => replies.push((job.reply, reply)),
                    // Dropping the batch's reply senders answers them NFS3ERR_IO: what
                    // was applied is not durable and will be undone by the reopen.
                    Err(e) => return Err(self.fault(e)),
                }
            }
            if let Err(e) = self.sm.sync() {
                return Err(self.fault(e));
            }
            stats.ops += ops as u64;
            stats.batches += 1;
            trace!(ops, sync = ?self.sm.last_sync_stats(), "batch durable");
            for (tx, reply) in replies.drain(..) {
                // The caller may have gone (connection closed): nothing to tell.
                let _ = tx.send(reply);
            }
        }
        info!(
            ops = stats.ops,
            batches = stats.batches,
            "closing the file state machine"
        );
        self.sm.close().map_err(UnreplicatedError::Fault)?;
        Ok(stats)
    }

    fn fault(&self, e: FsError) -> UnreplicatedError {
        error!("local fault, stopping: {e}");
        UnreplicatedError::Fault(e)
    }
}

/// Host time in nanoseconds, never repeating and never going back within one run.
#[derive(Debug, Default)]
struct MonotonicClock {
    last_ns: u64,
}

impl MonotonicClock {
    fn next_ns(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.last_ns = now.max(self.last_ns.saturating_add(1));
        self.last_ns
    }
}

/// Serve `data_dir` unreplicated on `listener` until `shutdown` completes (or a local
/// fault stops the executor). Meant for `block_on` of a current-thread runtime: the
/// executor is polled inside this future, so its blocking syncs run on that thread.
pub async fn serve(
    listener: TcpListener,
    data_dir: &Path,
    config: FsConfig,
    server_config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecutorStats, UnreplicatedError> {
    let (backend, executor) = open(data_dir, config)?;
    serve_opened(listener, backend, executor, server_config, shutdown).await
}

async fn serve_opened(
    listener: TcpListener,
    backend: UnreplicatedBackend,
    executor: UnreplicatedExecutor,
    server_config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ExecutorStats, UnreplicatedError> {
    let (fault_tx, fault_rx) = oneshot::channel::<()>();
    let executor = async move {
        let result = executor.run().await;
        if result.is_err() {
            let _ = fault_tx.send(());
        }
        result
    };
    let server = NfsServer::with_config(backend, server_config);
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            // Sent on a fault; dropped (also an end) only after the server has gone.
            _ = fault_rx => {}
        }
    };
    let (served, executed) = tokio::join!(server.serve(listener, stop), executor);
    let stats = executed?;
    served?;
    Ok(stats)
}

/// An unreplicated server on its own thread and current-thread runtime, for tests and
/// benchmarks that drive it from another runtime. Stopped on `stop` or drop.
pub struct UnreplicatedServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<ExecutorStats, UnreplicatedError>>>,
}

impl UnreplicatedServer {
    /// Bind `listen` (port 0 picks one), open `data_dir` and start serving. Returns once
    /// the server accepts connections.
    pub fn start(
        listen: SocketAddr,
        data_dir: &Path,
        config: FsConfig,
        server_config: ServerConfig,
    ) -> Result<Self, UnreplicatedError> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let data_dir = data_dir.to_path_buf();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("bftnfs-unreplicated-{}", addr.port()))
            .spawn(move || -> Result<ExecutorStats, UnreplicatedError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener)?;
                    let (backend, executor) = match open(&data_dir, config) {
                        Ok(halves) => {
                            let _ = ready_tx.send(Ok(()));
                            halves
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Ok(ExecutorStats::default());
                        }
                    };
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    serve_opened(listener, backend, executor, server_config, stop).await
                })
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(UnreplicatedServer {
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) | Err(_) => Err(UnreplicatedError::Panicked),
            },
        }
    }

    /// The address serving NFS, MOUNT and portmap.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shut down gracefully, wait for the state machine to close, and say how many
    /// operations shared how many syncs.
    pub fn stop(mut self) -> Result<ExecutorStats, UnreplicatedError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<ExecutorStats, UnreplicatedError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| UnreplicatedError::Panicked)?,
            None => Ok(ExecutorStats::default()),
        }
    }
}

impl Drop for UnreplicatedServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            error!("unreplicated server: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use fs_state::{CreateHow, Filename3, ReplyBody, Sattr3, StableHow};

    use super::*;

    fn root_cred() -> AuthUnix {
        AuthUnix::root()
    }

    #[test]
    fn operations_that_arrive_together_share_one_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (backend, executor) = open(dir.path(), FsConfig::default()).expect("open");
            let root = backend.root_handle();
            let create = FsOp::Create {
                dir: root.clone(),
                name: Filename3::from("f"),
                how: CreateHow::Unchecked(Sattr3::default()),
            };
            let run = executor.run();
            tokio::pin!(run);
            // The CREATE alone first: one batch.
            let fh = tokio::select! {
                r = backend.execute(root_cred(), create) => match r.0 {
                    Ok(ReplyBody::Create { obj: Some(fh), .. }) => fh,
                    other => panic!("create: {other:?}"),
                },
                _ = &mut run => panic!("executor ended"),
            };
            // Then eight WRITEs queued before the executor runs again: one more batch.
            let writes = (0..8u64).map(|i| {
                backend.execute(
                    root_cred(),
                    FsOp::Write {
                        fh: fh.clone(),
                        offset: i * 4096,
                        stable: StableHow::FileSync,
                        data: vec![i as u8; 4096],
                    },
                )
            });
            let writes: Vec<_> = writes.collect();
            let all = async {
                for w in writes {
                    assert!(w.await.is_ok(), "write succeeds");
                }
            };
            tokio::select! {
                () = all => {}
                _ = &mut run => panic!("executor ended"),
            }
            drop(backend);
            let stats = run.await.expect("clean close");
            assert_eq!(stats, ExecutorStats { ops: 9, batches: 2 });
        });
    }

    #[test]
    fn timestamps_strictly_increase() {
        let mut c = MonotonicClock::default();
        let mut last = 0;
        for _ in 0..10_000 {
            let t = c.next_ns();
            assert!(t > last);
            last = t;
        }
    }

    #[test]
    fn a_stopped_executor_answers_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (backend, executor) = open(dir.path(), FsConfig::default()).expect("open");
            drop(executor);
            let r = backend
                .execute(
                    root_cred(),
                    FsOp::Getattr {
                        fh: backend.root_handle(),
                    },
                )
                .await;
            assert_eq!(r.status(), Some(NfsStat3::Io));
        });
    }
}
