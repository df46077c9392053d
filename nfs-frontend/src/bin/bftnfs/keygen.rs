//! `bftnfs keygen`: writes cluster.toml and every party's key files (see
//! `nfs_frontend::config` for what goes where and why).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nfs_frontend::config::{ExportLimits, KeygenOptions, UsigKeyKind, keygen, write_party_dirs};

/// Generate a cluster configuration and its keys.
///
/// Writes DIR/cluster.toml (public: addresses, consensus parameters, public keys) and
/// DIR/keys/ (one 0600 secrets file per replica and per client, plus the replicas' USIG
/// keys). Refuses to overwrite existing keys. With --party-dirs, also one directory per
/// party holding cluster.toml and that party's own keys only.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of replicas, 2f+1 (3, 5, ...).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Number of client keys (one per frontend or benchmark client).
    #[arg(long, default_value_t = 2)]
    clients: u64,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replica addresses IP:PORT, comma-separated, in replica-id order (default: free
    /// loopback ports). In containers: each replica's fixed IP on the private network.
    #[arg(long, value_delimiter = ',', value_name = "IP:PORT,...")]
    addrs: Option<Vec<SocketAddr>>,
    /// If DIR/cluster.toml already exists, keep it and its keys, print its path and
    /// succeed (for a one-shot keygen step that runs again on every `compose up`).
    #[arg(long)]
    if_missing: bool,
    /// Also write one directory per party under DIR: DIR/replica-<i>/ and
    /// DIR/client-<c>/, each with a copy of cluster.toml and only that party's own key
    /// files, to hand each host (or container) just its own secrets. With --if-missing
    /// the copies are refreshed from the kept cluster. Run it again after changing
    /// cluster.toml (e.g. after usig-provision).
    #[arg(long, value_name = "DIR")]
    party_dirs: Option<PathBuf>,
    /// One request per batch (for measuring the unbatched protocol).
    #[arg(long)]
    no_batching: bool,
    /// Bundles a frontend keeps in flight at once (Nagle's rule: calls that arrive
    /// meanwhile wait and travel together in the next). 1 suits replicas that share a
    /// few cores; raise it where each replica has cores of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    bundles_in_flight: u64,
    /// Space the export may use in all (`[export] bytes` in cluster.toml; FSSTAT reports
    /// it, and a write beyond it fails with NFS3ERR_NOSPC on every replica alike).
    /// Each replica's disk needs up to twice this (the export and its checkpoint
    /// chunks) plus its log; a replica whose disk fills stops. Binary units: 500M, 10G.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_byte_size, default_value = "1T")]
    quota: u64,
    /// What certifies each replica's UIs. `shared`: one HMAC-SHA256 key that every
    /// replica's in-process USIG holds; each replica's key file holds the same secret,
    /// and anyone who reads one of them can forge every replica's UIs (a UI costs about
    /// a microsecond to make and to check, against 20 and 40–70 µs; usig/README.md,
    /// "Shared-key certificates", weighs it). `ecdsa-p256`: a key pair per replica,
    /// checked with the public key; needed for a USIG in a process of its own
    /// (`usig-server`) or a TPM (`usig-provision`), and a replica can be given a new
    /// key alone.
    #[arg(long, value_enum, default_value_t = UsigKeyKind::Shared)]
    usig_key: UsigKeyKind,
    /// Files, directories and symbolic links the export may hold (`[export] files`).
    #[arg(long, value_name = "N", default_value_t = 1 << 24, value_parser = clap::value_parser!(u64).range(1..))]
    max_files: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.replicas % 2 == 1 && args.replicas >= 1,
        "--replicas must be 2f+1"
    );
    let existing = args.out.join("cluster.toml");
    if args.if_missing && existing.exists() {
        let config = nfs_frontend::config::ClusterConfig::load(&existing)?;
        anyhow::ensure!(
            config.n() == args.replicas,
            "{} is for {} replicas, not {}",
            existing.display(),
            config.n(),
            args.replicas
        );
        eprintln!(
            "bftnfs keygen: {} exists; keeping it and its keys",
            existing.display()
        );
        println!("{}", existing.display());
        return write_party_dirs_of(&existing, args.party_dirs.as_deref());
    }
    let f = (args.replicas - 1) / 2;
    let mut opts = KeygenOptions::new(f, args.clients);
    opts.addrs = args.addrs;
    opts.bundles_in_flight = args.bundles_in_flight;
    opts.usig_key = args.usig_key;
    opts.export = Some(ExportLimits {
        bytes: args.quota,
        files: args.max_files,
    });
    if args.no_batching {
        opts.consensus.batch_requests_max = 1;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let path = keygen(&args.out, &opts)?;
    println!("{}", path.display());
    write_party_dirs_of(&path, args.party_dirs.as_deref())
}

fn write_party_dirs_of(cluster_toml: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(out) = out else {
        return Ok(());
    };
    let dirs = write_party_dirs(cluster_toml, out)
        .with_context(|| format!("writing per-party directories under {}", out.display()))?;
    for dir in dirs {
        eprintln!("bftnfs keygen: wrote {}", dir.display());
    }
    Ok(())
}
