//! `bftnfs seal`: lower the USIG lease of a replica that is not running.

use std::path::PathBuf;

use nfs_frontend::replica;

/// Seal the protocol log of a stopped (crashed or killed) replica.
///
/// A primary lets its PREPAREs leave while its log syncs, under a lease of USIG counter
/// values. If the machine restarts before the replica does, the replica must assume
/// those PREPAREs were lost, spends its counter up to the lease and re-bases; when more
/// than f replicas do that at once the cluster stalls. This command, run
/// after a replica stopped (systemd `ExecStopPost=`, or by hand), makes the log durable
/// and lowers the lease to the last logged UI, so the next start needs no re-base.
/// `bftnfs up` does it by itself when a replica exits. Refuses while the replica runs,
/// and after the machine restarted since the lease was written (then the replica must
/// re-base: start it).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The replica's data directory (`--data` of `bftnfs replica`).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.data.join(replica::log::LOG_FILE).is_file(),
        "{} holds no protocol log: not a replica's data directory (`--data` of `bftnfs \
         replica`)",
        args.data.display()
    );
    match replica::seal_lease(&args.data)? {
        Some((from, to)) => println!("lease lowered from counter {from} to {to}"),
        None => println!("nothing to seal: the lease is not above the last logged UI"),
    }
    Ok(())
}
