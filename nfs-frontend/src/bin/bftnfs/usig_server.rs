//! `bftnfs usig-server`: the USIG as a separate process (MinBFT section 7). It holds the
//! replica's USIG key and durable counter; the replica (`bftnfs replica --usig-socket`)
//! only asks it for UIs over a Unix socket and never sees the key.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use nfs_frontend::config::ClusterConfig;
use tracing::info;
use usig::{SoftwareUsig, process};

/// Serve replica ID's USIG on a Unix socket.
///
/// The socket file is created with mode 0600 and every connection's peer uid must be
/// ALLOWED_UID (default: this process's uid). The counter and the last UI are persisted
/// in STATE before each answer. Stops on SIGINT or SIGTERM.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    #[arg(long)]
    id: u32,
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Uid allowed to connect (default: the uid of this process).
    #[arg(long)]
    allowed_uid: Option<u32>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&args.config)?;
    anyhow::ensure!(args.id < config.n(), "replica id {} out of range", args.id);
    config.require_own_usig_keys("a usig-server")?;
    let secrets = config.replica_secrets(args.id)?;
    let key = nfs_frontend::crypto::own_usig_key(&config, &secrets)?;
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating {}", args.state.display()))?;
    let mut usig = SoftwareUsig::open(&args.state, args.id, key.key_bytes())?;
    let listener = process::bind(&args.socket)?;
    let allowed = args
        .allowed_uid
        .unwrap_or_else(|| rustix::process::getuid().as_raw());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt
            && let Ok(signal) = crate::shutdown_signal_in(&rt)
        {
            rt.block_on(signal);
        }
        flag.store(true, Ordering::SeqCst);
    });
    info!(id = args.id, socket = %args.socket.display(), allowed_uid = allowed, "USIG server listening");
    println!(
        "usig-server for replica {} on {}",
        args.id,
        args.socket.display()
    );
    let stats = process::serve(&listener, &mut usig, allowed, &stop)?;
    let _ = std::fs::remove_file(&args.socket);
    info!(?stats, "USIG server stopped");
    Ok(())
}
