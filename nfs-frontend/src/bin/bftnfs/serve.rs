//! `bftnfs serve`: serve a data directory over NFSv3 from this process.
//!
//! Only `--unreplicated` exists for now: one local file state machine with the same
//! durability as a replica (no reply before its operation is synced), the baseline the
//! benchmark compares the replicated mode against.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use fs_state::FsConfig;
use nfs_frontend::{ServerConfig, libnfs_url, unreplicated};
use tokio::net::TcpListener;
use tracing::info;

use crate::shutdown_signal;

/// Serve a directory over NFSv3 (NFS, MOUNT and portmap on one TCP port).
///
/// The export is `/`. Clients must be given the port for both NFS and MOUNT (there is no
/// system portmapper), e.g. `nfs-ls 'nfs://127.0.0.1/?nfsport=2049&mountport=2049'`;
/// a file at the export root is `nfs://127.0.0.1//name?nfsport=...&mountport=...`.
/// Stops cleanly on SIGINT or SIGTERM (calls in flight finish, the state is closed).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Serve one local file state machine instead of a replicated group. Required: the
    /// replicated mode is served by `bftnfs frontend`.
    #[arg(long)]
    unreplicated: bool,

    /// Data directory: the backing tree is DIR/export, the metadata DIR/fsmeta. Created
    /// if missing; reopened (and repaired after a crash) if present.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Address to listen on for NFS, MOUNT and portmap (TCP). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2049")]
    listen: SocketAddr,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !args.unreplicated {
        bail!(
            "only `bftnfs serve --unreplicated` exists; the replicated mode is `bftnfs frontend`"
        );
    }
    // Current-thread: measured faster than the multi-thread runtime on these 2 cores,
    // and the state machine is single-threaded anyway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = shutdown_signal()?;
        println!("bftnfs: serving {} unreplicated", args.data.display());
        println!("NFS and MOUNT on tcp {addr} (export /)");
        println!("libnfs URL: {}", libnfs_url(addr, "/"));
        info!(%addr, data = %args.data.display(), "serving unreplicated");
        let stats = unreplicated::serve(
            listener,
            &args.data,
            FsConfig::default(),
            ServerConfig::default(),
            shutdown,
        )
        .await
        .context("unreplicated server")?;
        info!(ops = stats.ops, syncs = stats.batches, "stopped");
        Ok(())
    })
}
