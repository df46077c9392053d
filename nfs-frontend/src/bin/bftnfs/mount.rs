//! `bftnfs mount`: the file system on a directory, through FUSE (`nfs-mount`), for
//! machines without a kernel NFS client.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use nfs_mount::{MountOptions, Mounted};
use tracing::info;

/// Mount an NFSv3 export (a `bftnfs frontend`, `up` or `serve`) on a directory through
/// FUSE, so that ordinary tools (cp, ls, tar, diff, editors) work on it.
///
/// Runs in the foreground until the directory is unmounted: Ctrl-C or SIGTERM unmounts
/// it, and so does `fusermount3 -u DIR` (or `umount DIR` as root). Each file operation is
/// one NFS call to the server (a few for large reads and writes); names and attributes
/// are cached for `--attr-ttl`, and a file's cached pages are dropped at every open;
/// with `--attr-ttl 0` a file closed by one client is read whole by the next
/// (close-to-open consistency), with more a change can show up to that much later.
/// Permissions are checked by the kernel against the files' modes; every call carries
/// the one identity given by `--uid`/`--gid`. If the server goes away, calls fail with
/// EIO (within about 30 s if its host vanished silently) and the next one connects
/// again. Needs /dev/fuse and fusermount3 (Debian: fuse3).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The NFS server as HOST:PORT (NFS and MOUNT on one port, as `bftnfs up` and
    /// `frontend` print), optionally followed by :EXPORT (default /).
    #[arg(value_name = "HOST:PORT[:EXPORT]")]
    server: String,

    /// An existing, empty directory to mount on.
    #[arg(value_name = "DIR")]
    mountpoint: PathBuf,

    /// AUTH_UNIX user id every call carries (default: this process's).
    #[arg(long)]
    uid: Option<u32>,

    /// AUTH_UNIX group id every call carries (default: this process's).
    #[arg(long)]
    gid: Option<u32>,

    /// How long the kernel may cache names and attributes, in milliseconds. Longer is
    /// faster; 0 asks the server about every name and every stat.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    attr_ttl: u64,

    /// Worker threads: calls from this many processes at once go out side by side,
    /// each on a TCP connection of its own.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,

    /// Mount read-only.
    #[arg(long)]
    read_only: bool,

    /// Let users other than the one who mounted use the mount (needs root, or
    /// `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    allow_other: bool,
}

/// `HOST:PORT[:EXPORT]`: the address, and the export (which starts with `/`).
fn parse_server(s: &str) -> anyhow::Result<(SocketAddr, String)> {
    let (addr, export) = match s.find(":/") {
        Some(i) => (&s[..i], s[i + 1..].to_string()),
        None => (s, "/".to_string()),
    };
    let addr = addr
        .to_socket_addrs()
        .with_context(|| format!("{addr}: not a HOST:PORT"))?
        .next()
        .with_context(|| format!("{addr}: no address"))?;
    Ok((addr, export))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (server, export) = parse_server(&args.server)?;
    if !args.mountpoint.is_dir() {
        bail!(
            "{}: not a directory (make it first: the mount goes on an existing directory)",
            args.mountpoint.display()
        );
    }
    let opts = MountOptions {
        server,
        export,
        uid: args
            .uid
            .unwrap_or_else(|| rustix::process::getuid().as_raw()),
        gid: args
            .gid
            .unwrap_or_else(|| rustix::process::getgid().as_raw()),
        attr_ttl: Duration::from_millis(args.attr_ttl),
        read_only: args.read_only,
        threads: usize::from(args.threads),
        allow_other: args.allow_other,
    };
    let mut mounted = Mounted::new(&opts, &args.mountpoint)?;
    let mut unmounter = mounted.unmounter();
    // Ctrl-C or SIGTERM unmounts; the session below then ends by itself.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    let shutdown = crate::shutdown_signal_in(&signals)?;
    let mountpoint = args.mountpoint.clone();
    std::thread::Builder::new()
        .name("unmount-on-signal".into())
        .spawn(move || {
            signals.block_on(shutdown);
            if let Err(e) = unmounter.unmount() {
                eprintln!("bftnfs: unmounting {}: {e}", mountpoint.display());
            }
        })
        .context("starting the signal thread")?;
    println!(
        "bftnfs: {}:{} mounted on {} (fusermount3 -u {} or Ctrl-C to unmount)",
        opts.server,
        opts.export,
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    info!(server = %opts.server, mountpoint = %args.mountpoint.display(), "mounted");
    mounted
        .run()
        .with_context(|| format!("serving the mount on {}", args.mountpoint.display()))?;
    info!("unmounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_server;

    #[test]
    fn a_server_may_name_its_export() {
        let (addr, export) = parse_server("127.0.0.1:2049").unwrap();
        assert_eq!(addr.port(), 2049);
        assert_eq!(export, "/");
        let (_, export) = parse_server("127.0.0.1:2049:/data/x").unwrap();
        assert_eq!(export, "/data/x");
        assert!(parse_server("127.0.0.1").is_err());
    }
}
