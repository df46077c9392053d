//! `bftnfs`: the one command-line entry point of bftnfs.
//!
//! Each subcommand lives in its own module with its own `Args` and `run`, so adding one
//! (`keygen`, `replica`, `frontend`, `up`, `mount`, `usig-server`, `usig-provision`) is a new file plus one variant
//! and one match arm here. Each `run` builds the runtime it needs; logging is set up once
//! here from `RUST_LOG` (default `info`), on stderr, so stdout stays for what a script
//! reads (addresses, URLs).

mod frontend;
mod keygen;
mod mount;
mod replica;
mod seal;
mod serve;
mod up;
mod usig_provision;
mod usig_server;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bftnfs",
    version,
    about = "Byzantine-fault-tolerant replicated NFSv3 file system",
    long_about = "Byzantine-fault-tolerant replicated NFSv3 file system.\n\n\
        An NFS client mounts a frontend; the frontend orders each file operation across \
        2f+1 replicas with MinPBFT, each applying it to its own backing directory, so one \
        of three replicas may crash or lie without losing or corrupting data.\n\n\
        Logging: set RUST_LOG (e.g. RUST_LOG=debug or RUST_LOG=nfs_frontend=trace); \
        logs go to stderr."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Serve(serve::Args),
    Keygen(keygen::Args),
    Replica(replica::Args),
    Seal(seal::Args),
    Frontend(frontend::Args),
    Up(up::Args),
    Mount(mount::Args),
    UsigServer(usig_server::Args),
    UsigProvision(usig_provision::Args),
}

/// A size on the command line: bytes, or with a binary unit (`64M`, `10 GiB`, `1T`).
fn parse_byte_size(s: &str) -> Result<u64, String> {
    let size = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (a size such as 500M, 10G or 1T)"))?;
    if size == 0 {
        return Err("must be above 0".into());
    }
    Ok(size)
}

fn main() -> anyhow::Result<()> {
    nfs_frontend::alloc::keep_large_buffers();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser (`mount`) warns when an unmount finds the mount gone already,
                // as it is after `fusermount3 -u`.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Replica(args) => replica::run(args),
        Command::Seal(args) => seal::run(args),
        Command::Frontend(args) => frontend::run(args),
        Command::Up(args) => up::run(args),
        Command::Mount(args) => mount::run(args),
        Command::UsigServer(args) => usig_server::run(args),
        Command::UsigProvision(args) => usig_provision::run(args),
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    })
}

/// [`shutdown_signal`] for a thread that owns its own runtime `rt`.
/// The future does not borrow `rt`, so `rt` can move to the thread that awaits it.
pub fn shutdown_signal_in(
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<impl std::future::Future<Output = ()> + use<>> {
    let _guard = rt.enter();
    shutdown_signal()
}
