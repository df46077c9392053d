//! The TCP server: accepts connections, splits records, runs calls concurrently, and
//! writes each reply in one `write`.
//!
//! One task per connection reads records and spawns one task per call, so a client that
//! pipelines (libnfs, the Linux client) has several calls in the backend at once; that is
//! what lets the unreplicated backend share one `sync` and the BFT client keep several
//! requests in flight. Both the number of connections and the calls in flight per
//! connection are bounded; a connection at its bound simply stops reading. Written for a
//! current-thread runtime: the tasks interleave on one thread and never hop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fs_state::AuthUnix;
use nfs3_types::rpc::{accept_stat_data, auth_stat, rejected_reply};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tracing::{debug, info, warn};

use crate::backend::FsBackend;
use crate::nfs::CallError;
use crate::rpc::{self, ConnectionError, Credential, RecordReader, Reply};

/// The uid and gid that AUTH_NULL calls run as (the traditional `nobody`).
pub const ANONYMOUS_ID: u32 = 65534;

/// Limits of one server. Every one bounds memory a client can make the server hold.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more are accepted and closed at once.
    pub connections_max: usize,
    /// Calls of one connection in the backend at once; beyond it the connection is not
    /// read until one finishes (TCP pushes back on the client).
    pub calls_in_flight_max: usize,
    /// How long shutdown waits for calls in flight before dropping them.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 256,
            calls_in_flight_max: 64,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// An NFSv3 + MOUNT + portmap server in front of a backend.
pub struct NfsServer<B: FsBackend> {
    backend: B,
    config: ServerConfig,
}

struct Shared<B> {
    backend: B,
    /// The listening port, which the portmapper reports for every program.
    port: u16,
}

impl<B: FsBackend> NfsServer<B> {
    pub fn new(backend: B) -> Self {
        Self::with_config(backend, ServerConfig::default())
    }

    pub fn with_config(backend: B, config: ServerConfig) -> Self {
        NfsServer { backend, config }
    }

    /// Serve `listener` until `shutdown` completes; then stop accepting, let calls in
    /// flight finish (up to `shutdown_grace`), close every connection and return. The
    /// backend is dropped before this returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            backend: self.backend,
            port,
        });
        let config = self.config;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        if conns.len() >= config.connections_max {
                            warn!(%peer, limit = config.connections_max, "too many connections; closing");
                            continue;
                        }
                        if let Err(e) = sock.set_nodelay(true) {
                            debug!(%peer, "set_nodelay: {e}");
                        }
                        debug!(%peer, "connection accepted");
                        conns.spawn(connection(
                            shared.clone(),
                            sock,
                            peer,
                            stop_rx.clone(),
                            config.calls_in_flight_max,
                        ));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = conns.join_next(), if !conns.is_empty() => reap(done),
            }
        }
        drop(listener);
        drop(shared);
        // Ignore the error: no connection left to tell is fine.
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while let Some(done) = conns.join_next().await {
                reap(done);
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = conns.len(),
                "calls still in flight after the shutdown grace period; dropping them"
            );
            conns.shutdown().await;
        }
        Ok(())
    }
}

/// A panic in a task is a broken invariant: crash instead of serving on.
fn reap<T>(done: Result<T, JoinError>) -> T {
    match done {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task cancelled unexpectedly: {e}"),
    }
}

async fn connection<B: FsBackend>(
    shared: Arc<Shared<B>>,
    mut sock: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    calls_in_flight_max: usize,
) {
    match serve_connection(&shared, &mut sock, stop, calls_in_flight_max).await {
        Ok(()) => debug!(%peer, "connection closed"),
        // Clients reset connections they are done with (libnfs does): not news.
        Err(ConnectionError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            debug!(%peer, "connection reset: {e}")
        }
        Err(e) => info!(%peer, "closing connection: {e}"),
    }
}

async fn serve_connection<B: FsBackend>(
    shared: &Arc<Shared<B>>,
    sock: &mut TcpStream,
    mut stop: watch::Receiver<bool>,
    calls_in_flight_max: usize,
) -> Result<(), ConnectionError> {
    let (mut rd, mut wr) = sock.split();
    let mut reader = RecordReader::default();
    let mut calls: JoinSet<Result<Vec<u8>, ConnectionError>> = JoinSet::new();
    let mut out = Vec::new();
    // `accepting` ends with shutdown (calls already read still finish); `eof` when the
    // client half-closes, after which the records it sent are still served.
    let mut accepting = !*stop.borrow();
    let mut eof = false;
    loop {
        while accepting && calls.len() < calls_in_flight_max {
            match reader.next_record()? {
                Some(record) => {
                    calls.spawn(handle_record(shared.clone(), record));
                }
                None => break,
            }
        }
        let more_to_read = accepting && !eof;
        if calls.is_empty() && !more_to_read {
            if eof && reader.buffered() > 0 {
                debug!(bytes = reader.buffered(), "end of stream inside a record");
            }
            return Ok(());
        }
        tokio::select! {
            Some(done) = calls.join_next(), if !calls.is_empty() => {
                out.extend_from_slice(&reap(done)?);
                // Replies that are ready together leave together.
                while let Some(done) = calls.try_join_next() {
                    out.extend_from_slice(&reap(done)?);
                }
                wr.write_all(&out).await?;
                out.clear();
            }
            n = reader.fill(&mut rd), if more_to_read && calls.len() < calls_in_flight_max => {
                eof = n? == 0;
            }
            _ = stop.changed(), if accepting => accepting = false,
        }
    }
}

/// Serve one call record; the result is the complete reply record.
async fn handle_record<B: FsBackend>(
    shared: Arc<Shared<B>>,
    record: Vec<u8>,
) -> Result<Vec<u8>, ConnectionError> {
    let Some(call) = rpc::parse_call(&record) else {
        // Not even an RPC call: nothing sensible can be answered on this stream.
        debug!(xid = ?rpc::xid_of(&record), "malformed call header");
        return Err(ConnectionError::MalformedCall);
    };
    let xid = call.xid;
    if call.rpcvers != 2 {
        return Ok(Reply::denied(xid, rejected_reply::rpc_mismatch(2, 2)).finish());
    }
    let args = &record[call.args..];
    if call.prog == nfs3_types::portmap::PROGRAM {
        if call.vers != nfs3_types::portmap::VERSION {
            return Ok(mismatch(xid, nfs3_types::portmap::VERSION));
        }
        let mut reply = Reply::accepted(xid, accept_stat_data::SUCCESS);
        return Ok(
            match crate::mount::portmap_call(shared.port, call.proc, args, reply.body()) {
                Ok(()) => reply.finish(),
                Err(e) => failed(xid, e),
            },
        );
    }
    let cred = match call.cred {
        Credential::Unix(a) => a,
        Credential::Null => AuthUnix {
            uid: ANONYMOUS_ID,
            gid: ANONYMOUS_ID,
            gids: Vec::new(),
        },
        Credential::Unsupported(flavor) => {
            debug!(xid, flavor, "unsupported auth flavor");
            return Ok(Reply::auth_error(xid, auth_stat::AUTH_TOOWEAK).finish());
        }
        Credential::Malformed => {
            debug!(xid, "malformed AUTH_UNIX credential");
            return Ok(Reply::auth_error(xid, auth_stat::AUTH_BADCRED).finish());
        }
    };
    let mut reply = Reply::accepted(xid, accept_stat_data::SUCCESS);
    let result = match call.prog {
        nfs3_types::nfs3::PROGRAM => {
            if call.vers != nfs3_types::nfs3::VERSION {
                return Ok(mismatch(xid, nfs3_types::nfs3::VERSION));
            }
            crate::nfs::call(&shared.backend, cred, call.proc, args, reply.body()).await
        }
        nfs3_types::mount::PROGRAM => {
            if call.vers != nfs3_types::mount::VERSION {
                return Ok(mismatch(xid, nfs3_types::mount::VERSION));
            }
            crate::mount::call(&shared.backend, cred, call.proc, args, reply.body()).await
        }
        prog => {
            debug!(xid, prog, "program unavailable");
            return Ok(Reply::accepted(xid, accept_stat_data::PROG_UNAVAIL).finish());
        }
    };
    Ok(match result {
        Ok(()) => reply.finish(),
        Err(e) => failed(xid, e),
    })
}

fn mismatch(xid: u32, version: u32) -> Vec<u8> {
    Reply::accepted(
        xid,
        accept_stat_data::PROG_MISMATCH {
            low: version,
            high: version,
        },
    )
    .finish()
}

fn failed(xid: u32, e: CallError) -> Vec<u8> {
    debug!(xid, ?e, "call not served");
    let stat = match e {
        CallError::ProcUnavail => accept_stat_data::PROC_UNAVAIL,
        CallError::GarbageArgs => accept_stat_data::GARBAGE_ARGS,
    };
    Reply::accepted(xid, stat).finish()
}
