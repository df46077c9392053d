//! `bftnfs replica`: one MinPBFT replica of a cluster, in this process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use nfs_frontend::config::ClusterConfig;
use nfs_frontend::replica::{self, ReplicaOptions, lock_data_dir_waiting, write_pid_file};
use tokio::net::TcpListener;
use tracing::info;

use crate::shutdown_signal;

/// Run replica ID of the cluster described by FILE.
///
/// Its USIG is the one cluster.toml configures for it (`usig = { kind = "software" |
/// "process" | "tpm", … }`; "tpm" needs a build with `--features tpm`).
/// Its backing tree is DIR/export; DIR also holds the USIG state (DIR/usig), the protocol
/// log, checkpoint snapshots, a lock (one replica process per DIR) and a pid file,
/// written once the replica listens. Killed or crashed, it restarts with the same
/// command and catches up from the others. Stops cleanly on SIGINT or SIGTERM.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long)]
    id: u32,
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Order requests but execute nothing (protocol benchmarks): every result is empty,
    /// or as many bytes as the request asks for (`nfs_frontend::null_op`).
    #[arg(long)]
    null_app: bool,
    /// Use the USIG held by `bftnfs usig-server` on this Unix socket instead of an
    /// in-process one; the replica then never reads its USIG key file.
    #[arg(long, value_name = "PATH")]
    usig_socket: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = Arc::new(ClusterConfig::load(&args.config)?);
    anyhow::ensure!(args.id < config.n(), "replica id {} out of range", args.id);
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    // Held until the process exits; a second replica on DIR stops here (after waiting a
    // little for a predecessor that was just killed to be gone).
    let _lock =
        lock_data_dir_waiting(&args.data, DATA_LOCK_WAIT).context("locking the data directory")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut pid = None;
    let result = rt.block_on(async {
        let addr = config.replica_addr(args.id);
        let listener = bind_with_retry(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        pid = Some(write_pid_file(&args.data)?);
        info!(id = args.id, %addr, "replica listening");
        let opts = ReplicaOptions {
            id: args.id,
            data_dir: args.data.clone(),
            null_app: args.null_app,
            fs_config: nfs_frontend::replica::replica_fs_config(&config),
            // The flag wins over cluster.toml's `usig = { kind = "process", socket = … }`.
            usig_socket: args.usig_socket.clone().or_else(|| {
                match &config.replicas[args.id as usize].usig {
                    nfs_frontend::config::UsigConfig::Process { socket } => Some(socket.clone()),
                    nfs_frontend::config::UsigConfig::Software
                    | nfs_frontend::config::UsigConfig::Tpm { .. } => None,
                }
            }),
            serve_corrupt_chunks: false,
            drop_large_client_copies: false,
        };
        let stats = replica::run(config.clone(), opts, listener, shutdown_signal()?).await?;
        info!(?stats, "stopped");
        anyhow::Ok(())
    });
    if let Some(pid) = pid {
        let _ = std::fs::remove_file(pid);
    }
    result
}

/// How long a starting replica waits for its data directory's previous holder to exit.
const DATA_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the replica's configured address, retrying for a while if it is in use: a
/// replica restarted right after a crash can find its port still held (a socket of the
/// old process not yet closed, or a peer's outgoing connection that happened to take it).
async fn bind_with_retry(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    const TRIES: u32 = 60;
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < TRIES => {
                if tries == 0 {
                    tracing::warn!(
                        %addr,
                        "address in use (is this replica already running?); retrying for up to 30 s"
                    );
                }
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}
