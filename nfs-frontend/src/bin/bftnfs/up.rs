//! `bftnfs up`: a whole replicated file system on this host in one command: keys (once),
//! 2f+1 `bftnfs replica` child processes, and the NFS frontend in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;

use anyhow::Context;
use nfs_frontend::cluster::{FRONTEND_CLIENT, ensure_keys};
use nfs_frontend::config::{ClusterConfig, ExportLimits, KeygenOptions, UsigKeyKind};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::shutdown_signal;

/// Start 2f+1 replicas and a frontend; stop them all on Ctrl-C or SIGTERM.
///
/// DIR gets cluster.toml and keys/ on first use, and replica-<i>/ for each replica (its
/// export, logs and pid file). A replica killed meanwhile restarts by hand with
/// `bftnfs replica --config DIR/cluster.toml --id <i> --data DIR/replica-<i>`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value_t = 1)]
    f: u32,
    #[arg(long, value_name = "DIR", default_value = "bftnfs-cluster")]
    dir: PathBuf,
    /// NFS address of the frontend. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2049")]
    listen: SocketAddr,
    /// Where each replica's USIG lives: `software` (in the replica process), `process`
    /// (a separate `bftnfs usig-server` per replica, socket DIR/replica-<i>/usig.sock,
    /// state DIR/replica-<i>/usig-server; the replica never reads the key) or `tpm` (one
    /// swtpm per replica on free loopback ports, state DIR/replica-<i>/swtpm, provisioned
    /// on first use and stopped on exit; needs swtpm and a build with `--features tpm`).
    /// A new cluster for `software` gets one HMAC key all the USIGs share (`bftnfs
    /// keygen --usig-key shared`), the others an ECDSA P-256 key per replica.
    #[arg(long, value_name = "KIND", default_value = "software", value_parser = ["software", "process", "tpm"])]
    usig: String,
    /// Space the export may use (`[export] bytes` of a new cluster.toml; see `bftnfs
    /// keygen --quota`). Default: what keeps the 2f+1 replicas, which all keep their
    /// data under DIR, from filling its disk (each may need twice its export), at most
    /// 1T. A full disk would stop every replica at once; the quota answers
    /// NFS3ERR_NOSPC instead.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_byte_size)]
    quota: Option<u64>,
}

/// The cluster's keys and cluster.toml under `args.dir`, made on first use with the
/// export quota of `--quota` or one that fits the disk.
fn ensure_cluster(args: &Args) -> anyhow::Result<PathBuf> {
    let path = args.dir.join("cluster.toml");
    if path.exists() {
        if let Some(quota) = args.quota {
            let config = ClusterConfig::load(&path)?;
            anyhow::ensure!(
                config.export.bytes == quota,
                "{} already sets the export quota to {} bytes; --quota applies to a new \
                 cluster only (to change it, stop every replica and edit [export] bytes)",
                path.display(),
                config.export.bytes
            );
        }
        if args.usig != "software" {
            ClusterConfig::load(&path)?
                .require_own_usig_keys(&format!("--usig {}", args.usig))
                .with_context(|| format!("{} was made for --usig software", path.display()))?;
        }
        return Ok(path);
    }
    let mut opts = KeygenOptions::new(args.f, 2);
    opts.export = args.quota.map(|bytes| ExportLimits {
        bytes,
        ..ExportLimits::default()
    });
    // In-process USIGs share one HMAC key (cheap UIs); the others need keys of their own.
    if args.usig != "software" {
        opts.usig_key = UsigKeyKind::EcdsaP256;
    }
    ensure_keys(&args.dir, &opts)
}

struct Children(Vec<Child>);

/// The replica children, each waited for by a thread of its own that seals the
/// replica's USIG lease as soon as it exits (`replica::seal_lease`): a replica killed
/// while it led then needs no re-base if the machine restarts before it does.
struct Replicas {
    /// Each child's pid, and whether its watcher has seen it exit (its pid may then
    /// belong to another process).
    pids: Vec<(u32, Arc<std::sync::atomic::AtomicBool>)>,
    watchers: Vec<std::thread::JoinHandle<()>>,
}

impl Replicas {
    fn watch(&mut self, i: u32, mut child: Child, data: PathBuf) -> std::io::Result<()> {
        let exited = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.pids.push((child.id(), exited.clone()));
        let watcher = std::thread::Builder::new()
            .name(format!("watch-replica-{i}"))
            .spawn(move || {
                let status = child.wait();
                exited.store(true, std::sync::atomic::Ordering::SeqCst);
                info!(replica = i, ?status, "replica exited");
                match nfs_frontend::replica::seal_lease(&data) {
                    Ok(Some((from, to))) => {
                        info!(replica = i, from, to, "sealed its USIG lease");
                    }
                    Ok(None) => {}
                    Err(e) => warn!(replica = i, "could not seal its USIG lease: {e}"),
                }
            })?;
        self.watchers.push(watcher);
        Ok(())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for (pid, exited) in &self.pids {
            if exited.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if let Ok(pid) = i32::try_from(*pid) {
                // SAFETY: kill(2) on our own child's pid has no memory effects.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for w in self.watchers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM: a clean stop (logs synced, state machine closed).
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid has no memory effects.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

#[cfg(feature = "tpm")]
fn start_swtpms(args: &Args, config: &std::path::Path) -> anyhow::Result<Vec<usig::swtpm::Swtpm>> {
    if args.usig != "tpm" {
        return Ok(Vec::new());
    }
    anyhow::ensure!(
        usig::swtpm::available(),
        "--usig tpm needs swtpm: apt-get install swtpm swtpm-tools"
    );
    let swtpms = nfs_frontend::tpm::start_swtpms(config, &args.dir)
        .context("starting and provisioning one swtpm per replica")?;
    for (i, s) in swtpms.iter().enumerate() {
        info!(replica = i, tcti = %s.tcti(), "swtpm started");
    }
    Ok(swtpms)
}

#[cfg(not(feature = "tpm"))]
fn start_swtpms(args: &Args, _config: &std::path::Path) -> anyhow::Result<Vec<()>> {
    anyhow::ensure!(
        args.usig != "tpm",
        "--usig tpm: this bftnfs was built without the `tpm` feature; rebuild with \
         `cargo build --features tpm` (needs libtss2-dev)"
    );
    Ok(Vec::new())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = ensure_cluster(&args)?;
    let config = Arc::new(ClusterConfig::load(&path)?);
    info!(quota_mib = config.export.bytes >> 20, "export quota");
    anyhow::ensure!(
        config.f == args.f,
        "{} is for f = {}",
        path.display(),
        config.f
    );
    let exe = std::env::current_exe().context("locating the bftnfs binary")?;
    // Declared before `children`, so dropped after them: replicas stop before their TPMs.
    let _swtpms = start_swtpms(&args, &path)?;
    let mut children = Children(Vec::new());
    // Declared after `children`, so dropped before them: replicas stop before their
    // USIG servers.
    let mut replicas = Replicas {
        pids: Vec::new(),
        watchers: Vec::new(),
    };
    for i in 0..config.n() {
        let data = args.dir.join(format!("replica-{i}"));
        std::fs::create_dir_all(&data)?;
        let mut replica = Command::new(&exe);
        replica
            .arg("replica")
            .arg("--config")
            .arg(&path)
            .arg("--id")
            .arg(i.to_string())
            .arg("--data")
            .arg(&data);
        if args.usig == "process" {
            let socket = data.join("usig.sock");
            let _ = std::fs::remove_file(&socket);
            let server = Command::new(&exe)
                .arg("usig-server")
                .arg("--config")
                .arg(&path)
                .arg("--id")
                .arg(i.to_string())
                .arg("--socket")
                .arg(&socket)
                .arg("--state")
                .arg(data.join("usig-server"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .with_context(|| format!("starting the USIG server of replica {i}"))?;
            info!(replica = i, pid = server.id(), "USIG server started");
            children.0.push(server);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !socket.exists() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "USIG server {i} did not open {}",
                    socket.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            replica.arg("--usig-socket").arg(&socket);
        }
        let child = replica
            .spawn()
            .with_context(|| format!("starting replica {i}"))?;
        info!(replica = i, pid = child.id(), "replica started");
        replicas.watch(i, child, data)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        crate::frontend::serve(config, FRONTEND_CLIENT, listener, shutdown_signal()?).await
    });
    if let Err(e) = &result {
        warn!("frontend: {e}");
    }
    drop(replicas);
    drop(children);
    result
}
