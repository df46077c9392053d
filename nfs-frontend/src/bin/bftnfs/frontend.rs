//! `bftnfs frontend`: the NFS server of the replicated mode, on a BFT client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use fs_state::FsConfig;
use nfs_frontend::config::ClusterConfig;
use nfs_frontend::{BftBackend, BftClient, NfsServer, ServerConfig, libnfs_url};
use tokio::net::TcpListener;

use crate::shutdown_signal;

/// Serve the replicated file system over NFSv3 as client K of the cluster in FILE.
///
/// Every NFS call becomes one request ordered by the replicas; a reply is returned once
/// f+1 of them agree (2f+1 for reads on the fast path). Run it next to the NFS client.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Client index (its key in cluster.toml).
    #[arg(long, default_value_t = 0)]
    client: u64,
    /// NFS, MOUNT and portmap address (TCP). Port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2049")]
    listen: SocketAddr,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = Arc::new(ClusterConfig::load(&args.config)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        serve(config, args.client, listener, shutdown_signal()?).await
    })
}

/// Runs a frontend on the current runtime until `stop`.
pub async fn serve(
    config: Arc<ClusterConfig>,
    client: u64,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let bft = BftClient::spawn(config.clone(), client)?;
    let backend = BftBackend::new(bft, FsConfig::default().generation);
    println!(
        "bftnfs: replicated over {} replicas (f = {})",
        config.n(),
        config.f
    );
    println!("NFS and MOUNT on tcp {addr} (export /)");
    println!("libnfs URL: {}", libnfs_url(addr, "/"));
    NfsServer::with_config(backend, ServerConfig::default())
        .serve(listener, stop)
        .await?;
    Ok(())
}
