//! An NFSv3 export mounted through FUSE: `bftnfs mount`.
//!
//! The machines bftnfs is built on have no kernel NFS client, so ordinary tools (`cp -r`,
//! `ls -lR`, `tar`, `diff -r`, editors) could not reach the replicated file system at
//! all; only NFS-speaking tools (libnfs-utils, `nfs3_client`) could. This crate is a
//! small NFSv3 client (RFC 1813, over `nfs3_client`) behind the kernel's FUSE interface
//! (`fuser`): each FUSE request becomes one NFS call, or a few for a large READ or WRITE,
//! to the frontend, which orders it across the replicas like any other client's call.
//!
//! Requests are served by a few worker threads (`MountOptions::threads`), each taking
//! an idle connection from a pool for its call (or making one), so calls from several
//! processes go out side by side: the frontend keeps many requests in flight.
//!
//! What it keeps: a table from FUSE inode numbers to NFS file handles (the NFS fileid is
//! the inode number, with the export's root swapped with inode 1, which FUSE reserves for
//! the root), counted by the kernel's lookups and dropped on FORGET; a cookie verifier per
//! open directory; and which files have WRITEs the server answered UNSTABLE, which are
//! COMMITted on `fsync` and `close` (bftnfs's servers answer FILE_SYNC, so there never
//! are any there). Attributes and names are cached by the kernel for `attr_ttl`, and a
//! file's pages are dropped at each open (close-to-open consistency, as NFS clients
//! have, once `attr_ttl` has passed: an open does not refresh the attributes).
//! Permissions are checked by the kernel against the attributes (`default_permissions`);
//! every call goes out under the one AUTH_UNIX identity the mount was made with.
//!
//! A lost connection fails the calls in flight with EIO and is made again on the next
//! call: a frontend restarted under the mount is picked up without remounting. Nothing
//! is retried behind the caller's back, because a CREATE or a REMOVE sent twice could
//! answer EEXIST or ENOENT for work that was done.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nfs3_client::net::Connector;
use nfs3_client::nfs3_types::nfs3::{
    COMMIT3args, CREATE3args, FSINFO3args, FSSTAT3args, GETATTR3args, LINK3args, LOOKUP3args,
    MKDIR3args, Nfs3Option, Nfs3Result, READ3args, READDIRPLUS3args, READLINK3args, REMOVE3args,
    RENAME3args, RMDIR3args, SETATTR3args, SYMLINK3args, WRITE3args, cookieverf3, createhow3,
    diropargs3, fattr3, filename3, ftype3, nfs_fh3, nfspath3, nfsstat3, sattr3, set_atime,
    set_mtime, stable_how, symlinkdata3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder, RpcError};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// Bytes asked for per READ and sent per WRITE when the server's FSINFO says nothing
/// usable; otherwise its preferred sizes, at most `TRANSFER_BYTES_MAX`.
const TRANSFER_BYTES_DEFAULT: u32 = 64 << 10;
const TRANSFER_BYTES_MAX: u32 = 1 << 20;
/// READDIRPLUS sizes asked for per call.
const READDIR_DIRCOUNT: u32 = 16 << 10;
const READDIR_MAXCOUNT: u32 = 64 << 10;
/// The block statfs counts in, and the least `st_blksize` reported (which is otherwise
/// the server's preferred WRITE size: tools such as `cp` size their buffers by it, and
/// each of their writes is one FUSE WRITE and so one NFS WRITE, ordered across the
/// replicas; a 4 KiB `st_blksize` made `cp` write in 128 KiB pieces, 8 ordered calls per
/// MiB where 1 does).
const BLOCK_BYTES: u32 = 4096;
/// A connection whose peer has been silent this long is probed, every
/// `KEEPALIVE_INTERVAL`, and given up after `KEEPALIVE_PROBES` unanswered probes (about
/// 25 s); a view change among bftnfs's replicas keeps the frontend's TCP alive.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Sent bytes unacknowledged this long end the connection (TCP_USER_TIMEOUT).
const UNACKED_MS_MAX: u32 = 30_000;
/// Connecting and mounting give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest name the server takes (bftnfs's PATHCONF says 255 too).
const NAME_BYTES_MAX: u32 = 255;

/// Where to mount from and how.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// The NFS server: NFS and MOUNT on this one TCP port (bftnfs's frontend and
    /// `serve`), as `nfs3_client` reaches it.
    pub server: SocketAddr,
    /// The export's path on the server (`/` for bftnfs).
    pub export: String,
    /// The AUTH_UNIX identity every call carries.
    pub uid: u32,
    pub gid: u32,
    /// How long the kernel may cache attributes and names.
    pub attr_ttl: Duration,
    pub read_only: bool,
    /// FUSE worker threads, so requests from several processes go out at once, each
    /// on a connection of its own (at least 1).
    pub threads: usize,
    /// Let other users than the one who mounted use the mount (FUSE's `allow_other`;
    /// as root, or with `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
}

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot reach the NFS export {export} at {server}: {source}")]
    Connect {
        server: SocketAddr,
        export: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the NFS server refused {procedure} on the export's root: {status}")]
    Refused {
        procedure: &'static str,
        status: nfsstat3,
    },
    #[error("cannot start the FUSE session on {path}: {source}")]
    Fuse {
        path: String,
        source: std::io::Error,
    },
}

/// The mounted file system: connects, then serves FUSE requests on `mountpoint` until
/// it is unmounted (`fusermount3 -u`, or `Unmounter::unmount`).
pub struct Mounted {
    session: fuser::Session<NfsFs>,
}

/// Unmounts a `Mounted` from another thread (a signal handler's).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    /// Connects to the export and mounts it on `mountpoint` (an existing directory).
    pub fn new(opts: &MountOptions, mountpoint: &Path) -> Result<Mounted, MountError> {
        let fs = NfsFs::connect(opts.clone())?;
        let mut options = vec![
            fuser::MountOption::FSName(format!("{}:{}", opts.server, opts.export)),
            fuser::MountOption::Subtype("bftnfs".to_string()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        options.push(if opts.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        });
        let mut config = fuser::Config::default();
        config.mount_options = options;
        if opts.allow_other {
            config.acl = fuser::SessionACL::All;
        }
        config.n_threads = Some(opts.threads.max(1));
        // Each worker reads the kernel's requests from a descriptor of its own.
        config.clone_fd = opts.threads > 1;
        let session =
            fuser::Session::new(fs, mountpoint, &config).map_err(|source| MountError::Fuse {
                path: mountpoint.display().to_string(),
                source,
            })?;
        Ok(Mounted { session })
    }

    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the file system is unmounted.
    pub fn run(self) -> std::io::Result<()> {
        self.session.run()
    }
}

/// The connection to the server. Unlike `nfs3_client::tokio::TokioIo`, a read that finds
/// the connection closed is an error: nfs3_client's `async_read_exact` loops on a read of
/// zero bytes, so a server that went away left the caller spinning at full CPU for good.
pub struct Stream(TcpStream);

impl nfs3_client::io::AsyncRead for Stream {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = tokio::io::AsyncReadExt::read(&mut self.0, buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }
}

impl nfs3_client::io::AsyncWrite for Stream {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        tokio::io::AsyncWriteExt::write(&mut self.0, buf).await
    }
}

/// Connects with TCP_NODELAY: every call is one write, and its reply must not wait for
/// a delayed ACK.
struct NoDelay;

impl Connector for NoDelay {
    type Connection = Stream;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        // A server whose host died, or a cut network, sends no RST: without these a
        // call would wait for its reply for ever, and the process that made it with
        // it (uninterruptibly, inside the kernel's FUSE request). Keepalive probes find
        // a silent peer while we wait for a reply; the user timeout while our own
        // bytes go unacknowledged.
        use rustix::net::sockopt;
        sockopt::set_socket_keepalive(&stream, true)?;
        sockopt::set_tcp_keepidle(&stream, KEEPALIVE_IDLE)?;
        sockopt::set_tcp_keepintvl(&stream, KEEPALIVE_INTERVAL)?;
        sockopt::set_tcp_keepcnt(&stream, KEEPALIVE_PROBES)?;
        sockopt::set_tcp_user_timeout(&stream, UNACKED_MS_MAX)?;
        Ok(Stream(stream))
    }

    async fn connect_with_port(
        &self,
        addr: SocketAddr,
        _local_port: u16,
    ) -> std::io::Result<Self::Connection> {
        // Never asked for: the builder is told not to use a privileged port.
        self.connect(addr).await
    }
}

/// A connection made by `connect_export`.
pub type Conn = Nfs3Connection<Stream>;

/// A FUSE inode the kernel knows: its handle and how many lookups it holds.
struct Known {
    fh: nfs_fh3,
    lookups: u64,
}

/// What the kernel's requests share: kept under one lock, never held across a call.
#[derive(Default)]
struct Tables {
    known: HashMap<u64, Known>,
    /// Per open directory: the cookie verifier its listing started with.
    dirs: HashMap<u64, cookieverf3>,
    next_dir: u64,
    /// Inodes with WRITEs the server did not answer FILE_SYNC: COMMITted on fsync/close.
    unstable: HashMap<u64, Unstable>,
}

/// WRITEs of one file waiting for a COMMIT (RFC 1813 3.3.7 and 3.3.21).
struct Unstable {
    /// The write verifier of the first of them: a COMMIT (or a later WRITE) with
    /// another one means the server restarted and may have lost them.
    verf: [u8; 8],
    /// The verifier changed between two of them: the next COMMIT fails.
    lost: bool,
    /// Counts the WRITEs, so that a COMMIT settles only those sent before it.
    writes: u64,
}

/// One connection with the runtime that drives it; each FUSE worker thread takes one
/// from the pool for a call, so calls from several processes go out side by side.
struct Link {
    rt: tokio::runtime::Runtime,
    conn: Conn,
}

/// The `Filesystem` FUSE calls, from `MountOptions::threads` worker threads at once.
pub struct NfsFs {
    opts: MountOptions,
    root: nfs_fh3,
    root_fileid: u64,
    read_bytes: u32,
    write_bytes: u32,
    tables: Mutex<Tables>,
    /// Idle connections; one that failed is dropped, and a new one made when none is
    /// idle.
    links: Mutex<Vec<Link>>,
}

/// An NFS failure as the errno FUSE hands the caller (RFC 1813 2.6 names the pairs).
fn errno_of(status: nfsstat3) -> Errno {
    use nfsstat3::*;
    let e = match status {
        NFS3_OK => 0,
        NFS3ERR_PERM => libc::EPERM,
        NFS3ERR_NOENT => libc::ENOENT,
        NFS3ERR_IO | NFS3ERR_SERVERFAULT => libc::EIO,
        NFS3ERR_NXIO => libc::ENXIO,
        NFS3ERR_ACCES => libc::EACCES,
        NFS3ERR_EXIST => libc::EEXIST,
        NFS3ERR_XDEV => libc::EXDEV,
        NFS3ERR_NODEV => libc::ENODEV,
        NFS3ERR_NOTDIR => libc::ENOTDIR,
        NFS3ERR_ISDIR => libc::EISDIR,
        NFS3ERR_INVAL | NFS3ERR_BADTYPE | NFS3ERR_BAD_COOKIE | NFS3ERR_TOOSMALL => libc::EINVAL,
        NFS3ERR_FBIG => libc::EFBIG,
        NFS3ERR_NOSPC => libc::ENOSPC,
        NFS3ERR_ROFS => libc::EROFS,
        NFS3ERR_MLINK => libc::EMLINK,
        NFS3ERR_NAMETOOLONG => libc::ENAMETOOLONG,
        NFS3ERR_NOTEMPTY => libc::ENOTEMPTY,
        NFS3ERR_DQUOT => libc::EDQUOT,
        NFS3ERR_STALE | NFS3ERR_BADHANDLE => libc::ESTALE,
        NFS3ERR_REMOTE => libc::EREMOTE,
        NFS3ERR_NOT_SYNC => libc::EIO,
        NFS3ERR_NOTSUPP => libc::EOPNOTSUPP,
        NFS3ERR_JUKEBOX => libc::EAGAIN,
    };
    Errno::from_i32(e)
}

fn file_type(t: ftype3) -> FileType {
    match t {
        ftype3::NF3REG => FileType::RegularFile,
        ftype3::NF3DIR => FileType::Directory,
        ftype3::NF3BLK => FileType::BlockDevice,
        ftype3::NF3CHR => FileType::CharDevice,
        ftype3::NF3LNK => FileType::Symlink,
        ftype3::NF3SOCK => FileType::Socket,
        ftype3::NF3FIFO => FileType::NamedPipe,
    }
}

fn dirop<'a>(dir: &nfs_fh3, name: &'a OsStr) -> diropargs3<'a> {
    diropargs3 {
        dir: dir.clone(),
        name: filename3(Opaque::borrowed(name.as_bytes())),
    }
}

/// A new object's mode: what the caller asked for less its umask, permission bits only.
fn create_mode(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

/// The outcome of one call: its result, or the errno to answer with.
macro_rules! call {
    ($fs:expr, $method:ident($args:expr)) => {{
        let fs: &NfsFs = $fs;
        match fs.link() {
            Err(e) => Err(e),
            Ok(mut link) => {
                let reply = link.rt.block_on(link.conn.$method($args));
                fs.settle(stringify!($method), link, reply)
            }
        }
    }};
}

impl NfsFs {
    /// An idle connection, or a new one.
    fn link(&self) -> Result<Link, Errno> {
        if let Some(link) = lock(&self.links).pop() {
            return Ok(link);
        }
        match Link::open(&self.opts) {
            Ok(link) => {
                if link.conn.root_nfs_fh3() != self.root {
                    // Another export (or a server that was replaced): handles held by
                    // the kernel mean nothing there.
                    warn!("the export's root handle changed on reconnecting");
                }
                Ok(link)
            }
            Err(e) => {
                warn!("connecting to {}: {e}", self.opts.server);
                Err(Errno::EIO)
            }
        }
    }

    /// A call's reply as a result; its connection goes back to the pool unless the
    /// call failed on the wire.
    fn settle<T, E>(
        &self,
        procedure: &str,
        link: Link,
        reply: Result<Nfs3Result<T, E>, RpcError>,
    ) -> Result<T, Errno> {
        match reply {
            Ok(r) => {
                lock(&self.links).push(link);
                match r {
                    Nfs3Result::Ok(v) => Ok(v),
                    Nfs3Result::Err((status, _)) => {
                        debug!("{procedure}: {status}");
                        Err(errno_of(status))
                    }
                }
            }
            Err(e) if e.is_connection_reusable() => {
                lock(&self.links).push(link);
                warn!("{procedure}: {e}");
                Err(match e {
                    RpcError::Auth(_) => Errno::EACCES,
                    RpcError::ProcUnavail | RpcError::ProgUnavail => Errno::EOPNOTSUPP,
                    _ => Errno::EIO,
                })
            }
            Err(e) => {
                // The idle ones went to the same server: most likely gone too.
                lock(&self.links).clear();
                warn!("{procedure}: {e}; the next call connects again");
                Err(Errno::EIO)
            }
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        lock(&self.tables)
    }

    /// FUSE's inode number for an NFS fileid (and back: the swap is its own inverse).
    fn ino(&self, fileid: u64) -> u64 {
        if fileid == self.root_fileid {
            INodeNo::ROOT.0
        } else if fileid == INodeNo::ROOT.0 {
            self.root_fileid
        } else {
            fileid
        }
    }

    fn fh(&self, ino: INodeNo) -> Result<nfs_fh3, Errno> {
        if ino == INodeNo::ROOT {
            return Ok(self.root.clone());
        }
        self.tables()
            .known
            .get(&ino.0)
            .map(|k| k.fh.clone())
            .ok_or(Errno::ESTALE)
    }

    fn attr(&self, a: &fattr3) -> FileAttr {
        let ctime = SystemTime::from(a.ctime);
        FileAttr {
            ino: INodeNo(self.ino(a.fileid)),
            size: a.size,
            blocks: a.used.div_ceil(512),
            atime: SystemTime::from(a.atime),
            mtime: SystemTime::from(a.mtime),
            ctime,
            crtime: ctime,
            kind: file_type(a.type_),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: match a.type_ {
                ftype3::NF3BLK | ftype3::NF3CHR => {
                    libc::makedev(a.rdev.specdata1, a.rdev.specdata2) as u32
                }
                _ => 0,
            },
            blksize: self.write_bytes.max(BLOCK_BYTES),
            flags: 0,
        }
    }

    fn getattr(&self, fh: &nfs_fh3) -> Result<fattr3, Errno> {
        let args = GETATTR3args { object: fh.clone() };
        Ok(call!(self, getattr(&args))?.obj_attributes)
    }

    /// The attributes a reply carried for `fh`, or a GETATTR's when it left them out.
    fn attrs_or_getattr(&self, fh: &nfs_fh3, attrs: Nfs3Option<fattr3>) -> Result<fattr3, Errno> {
        match attrs {
            Nfs3Option::Some(a) => Ok(a),
            Nfs3Option::None => self.getattr(fh),
        }
    }

    /// A new or looked-up object the kernel now holds one more lookup of.
    fn remember(&self, fh: nfs_fh3, attrs: &fattr3) -> FileAttr {
        let attr = self.attr(attrs);
        if attr.ino != INodeNo::ROOT {
            let mut tables = self.tables();
            let known = tables.known.entry(attr.ino.0).or_insert(Known {
                fh: fh.clone(),
                lookups: 0,
            });
            // A fileid whose handle changed is an object the server replaced.
            known.fh = fh;
            known.lookups += 1;
        }
        attr
    }

    /// An object a CREATE, MKDIR or SYMLINK made: its handle and attributes, asked for
    /// with LOOKUP when the reply left them out.
    fn made(
        &self,
        parent: &nfs_fh3,
        name: &OsStr,
        fh: Nfs3Option<nfs_fh3>,
        attrs: Nfs3Option<fattr3>,
    ) -> Result<FileAttr, Errno> {
        let Nfs3Option::Some(fh) = fh else {
            return self.lookup_in(parent, name);
        };
        let attrs = self.attrs_or_getattr(&fh, attrs)?;
        Ok(self.remember(fh, &attrs))
    }

    fn lookup_in(&self, parent: &nfs_fh3, name: &OsStr) -> Result<FileAttr, Errno> {
        let args = LOOKUP3args {
            what: dirop(parent, name),
        };
        let ok = call!(self, lookup(&args))?;
        let attrs = self.attrs_or_getattr(&ok.object, ok.obj_attributes)?;
        Ok(self.remember(ok.object, &attrs))
    }

    /// COMMITs the file's UNSTABLE WRITEs; EIO if the server's write verifier changed
    /// since the first of them (it restarted, and may have lost them).
    fn commit(&self, ino: INodeNo) -> Result<(), Errno> {
        let Some((verf, lost, writes)) = self
            .tables()
            .unstable
            .get(&ino.0)
            .map(|u| (u.verf, u.lost, u.writes))
        else {
            return Ok(());
        };
        let args = COMMIT3args {
            file: self.fh(ino)?,
            offset: 0,
            count: 0,
        };
        let ok = call!(self, commit(&args))?;
        let mut tables = self.tables();
        // WRITEs that came meanwhile wait for the next COMMIT.
        if tables
            .unstable
            .get(&ino.0)
            .is_some_and(|u| u.writes == writes)
        {
            tables.unstable.remove(&ino.0);
        }
        if lost || ok.verf.0 != verf {
            warn!("the server's write verifier changed before a COMMIT: written data may be lost");
            return Err(Errno::EIO);
        }
        Ok(())
    }
}

/// A call made while mounting: refused by the server or failed on the wire.
fn refused<T, E>(
    procedure: &'static str,
    reply: Result<Nfs3Result<T, E>, RpcError>,
    opts: &MountOptions,
) -> Result<T, MountError> {
    match reply {
        Ok(Nfs3Result::Ok(v)) => Ok(v),
        Ok(Nfs3Result::Err((status, _))) => Err(MountError::Refused { procedure, status }),
        Err(e) => Err(MountError::Connect {
            server: opts.server,
            export: opts.export.clone(),
            source: Box::new(e),
        }),
    }
}

/// Mounts `export` of the NFSv3 server at `server` (MOUNT on the NFS port, as bftnfs's
/// servers have it) over a `Stream`, from an unprivileged source port, with AUTH_UNIX
/// `uid`/`gid` from host `machine`. The benchmark's client connects with it too.
pub async fn connect_export(
    server: SocketAddr,
    export: &str,
    uid: u32,
    gid: u32,
    machine: &str,
) -> Result<Conn, nfs3_client::ConnectError> {
    let credential = opaque_auth::auth_unix(&auth_unix {
        stamp: std::process::id(),
        machinename: Opaque::owned(machine.as_bytes().to_vec()),
        uid,
        gid,
        gids: vec![gid],
    });
    Nfs3ConnectionBuilder::new(NoDelay, server.ip().to_string(), export)
        .mount_port(server.port())
        .nfs3_port(server.port())
        .connect_from_privileged_port(false)
        .credential(credential)
        .mount()
        .await
}

impl Link {
    /// A new connection, on a runtime of its own, within `CONNECT_TIMEOUT`.
    fn open(opts: &MountOptions) -> Result<Link, Box<dyn std::error::Error + Send + Sync>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mount = connect_export(
            opts.server,
            &opts.export,
            opts.uid,
            opts.gid,
            "bftnfs-mount",
        );
        let conn = match rt.block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, mount).await }) {
            Ok(connected) => connected?,
            Err(_) => return Err(format!("no answer within {CONNECT_TIMEOUT:?}").into()),
        };
        Ok(Link { rt, conn })
    }
}

impl NfsFs {
    /// Connects and reads the root's attributes and the server's transfer sizes.
    pub fn connect(opts: MountOptions) -> Result<NfsFs, MountError> {
        let Link { rt, mut conn } = Link::open(&opts).map_err(|source| MountError::Connect {
            server: opts.server,
            export: opts.export.clone(),
            source,
        })?;
        let root = conn.root_nfs_fh3();
        let attrs = refused(
            "GETATTR",
            rt.block_on(conn.getattr(&GETATTR3args {
                object: root.clone(),
            })),
            &opts,
        )?
        .obj_attributes;
        let info = refused(
            "FSINFO",
            rt.block_on(conn.fsinfo(&FSINFO3args {
                fsroot: root.clone(),
            })),
            &opts,
        )?;
        let size = |preferred: u32, max: u32| {
            match (preferred, max) {
                (0, 0) => TRANSFER_BYTES_DEFAULT,
                (0, m) => m.min(TRANSFER_BYTES_DEFAULT),
                (p, 0) => p,
                (p, m) => p.min(m),
            }
            .clamp(1, TRANSFER_BYTES_MAX)
        };
        Ok(NfsFs {
            read_bytes: size(info.rtpref, info.rtmax),
            write_bytes: size(info.wtpref, info.wtmax),
            opts,
            root,
            root_fileid: attrs.fileid,
            tables: Mutex::new(Tables {
                next_dir: 1,
                ..Tables::default()
            }),
            links: Mutex::new(vec![Link { rt, conn }]),
        })
    }

    /// Answers a request that made or found an object: its entry, which the kernel may
    /// cache for `attr_ttl`, or the error.
    fn answer_entry(&self, reply: ReplyEntry, result: Result<FileAttr, Errno>) {
        match result {
            Ok(attr) => reply.entry(&self.opts.attr_ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

/// Answers a request with nothing to return but success or an error.
fn answer_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// A panic while serving one request leaves nothing half-updated that matters: the
/// tables only cache what the server holds, and a connection is either back or gone.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Filesystem for NfsFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.answer_entry(
            reply,
            self.fh(parent).and_then(|p| self.lookup_in(&p, name)),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut tables = self.tables();
        if let Some(k) = tables.known.get_mut(&ino.0) {
            k.lookups = k.lookups.saturating_sub(nlookup);
            if k.lookups == 0 {
                tables.known.remove(&ino.0);
                tables.unstable.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fh(ino).and_then(|fh| self.getattr(&fh)) {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let opt = |v: Option<u32>| v.map_or(Nfs3Option::None, Nfs3Option::Some);
        let time = |t: Option<TimeOrNow>| match t {
            None => Ok(None),
            Some(TimeOrNow::Now) => Ok(Some(None)),
            Some(TimeOrNow::SpecificTime(t)) => t
                .try_into()
                .map(|t| Some(Some(t)))
                .map_err(|_| Errno::EINVAL),
        };
        let (atime, mtime) = match (time(atime), time(mtime)) {
            (Ok(a), Ok(m)) => (a, m),
            _ => return reply.error(Errno::EINVAL),
        };
        let new_attributes = sattr3 {
            mode: opt(mode.map(|m| m & 0o7777)),
            uid: opt(uid),
            gid: opt(gid),
            size: size.map_or(Nfs3Option::None, Nfs3Option::Some),
            atime: match atime {
                None => set_atime::DONT_CHANGE,
                Some(None) => set_atime::SET_TO_SERVER_TIME,
                Some(Some(t)) => set_atime::SET_TO_CLIENT_TIME(t),
            },
            mtime: match mtime {
                None => set_mtime::DONT_CHANGE,
                Some(None) => set_mtime::SET_TO_SERVER_TIME,
                Some(Some(t)) => set_mtime::SET_TO_CLIENT_TIME(t),
            },
        };
        let result = self.fh(ino).and_then(|fh| {
            let args = SETATTR3args {
                object: fh.clone(),
                new_attributes,
                guard: Nfs3Option::None,
            };
            let ok = call!(self, setattr(&args))?;
            self.attrs_or_getattr(&fh, ok.obj_wcc.after)
        });
        match result {
            Ok(a) => reply.attr(&self.opts.attr_ttl, &self.attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.fh(ino).and_then(|fh| {
            let args = READLINK3args { symlink: fh };
            Ok(call!(self, readlink(&args))?.data.0.to_vec())
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only (what `mknod` is asked for when `create` is not used);
        // bftnfs's state machine makes no devices, FIFOs or sockets.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.answer_entry(
            reply,
            self.make_file(parent, name, mode, umask, true, false),
        )
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.fh(parent).and_then(|dir| {
            let args = MKDIR3args {
                where_: dirop(&dir, name),
                attributes: sattr3 {
                    mode: Nfs3Option::Some(create_mode(mode, umask)),
                    ..sattr3::default()
                },
            };
            let ok = call!(self, mkdir(&args))?;
            self.made(&dir, name, ok.obj, ok.obj_attributes)
        });
        self.answer_entry(reply, result)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.fh(parent).and_then(|dir| {
            let args = REMOVE3args {
                object: dirop(&dir, name),
            };
            call!(self, remove(&args)).map(|_| ())
        });
        answer_empty(reply, result)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.fh(parent).and_then(|dir| {
            let args = RMDIR3args {
                object: dirop(&dir, name),
            };
            call!(self, rmdir(&args)).map(|_| ())
        });
        answer_empty(reply, result)
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.fh(parent).and_then(|dir| {
            let args = SYMLINK3args {
                where_: dirop(&dir, link_name),
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: nfspath3(Opaque::borrowed(target.as_os_str().as_bytes())),
                },
            };
            let ok = call!(self, symlink(&args))?;
            self.made(&dir, link_name, ok.obj, ok.obj_attributes)
        });
        self.answer_entry(reply, result)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // NFSv3's RENAME replaces the target: RENAME_NOREPLACE and RENAME_EXCHANGE
        // cannot be kept atomically.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let result = self.fh(parent).and_then(|from| {
            let to = self.fh(newparent)?;
            let args = RENAME3args {
                from: dirop(&from, name),
                to: dirop(&to, newname),
            };
            call!(self, rename(&args)).map(|_| ())
        });
        answer_empty(reply, result)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = self.fh(ino).and_then(|file| {
            let dir = self.fh(newparent)?;
            let args = LINK3args {
                file: file.clone(),
                link: dirop(&dir, newname),
            };
            let ok = call!(self, link(&args))?;
            let attrs = self.attrs_or_getattr(&file, ok.file_attributes)?;
            Ok(self.remember(file, &attrs))
        });
        self.answer_entry(reply, result)
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE: the kernel drops the file's pages at each open, so a
        // reader sees what other clients wrote before (close-to-open consistency).
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.fh(ino) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        // The kernel takes a short read for the end of the file: fill `size` unless
        // the server says EOF.
        let mut data = Vec::with_capacity(size as usize);
        while data.len() < size as usize {
            let want = (size as usize - data.len()).min(self.read_bytes as usize) as u32;
            let args = READ3args {
                file: file.clone(),
                offset: offset + data.len() as u64,
                count: want,
            };
            match call!(self, read(&args)) {
                Ok(ok) => {
                    // A server that sends more than asked: the kernel takes no more.
                    let got = ok.data.as_ref();
                    data.extend_from_slice(&got[..got.len().min(want as usize)]);
                    if ok.eof || got.is_empty() {
                        break;
                    }
                }
                Err(e) => return reply.error(e),
            }
        }
        reply.data(&data);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.fh(ino) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        let mut done = 0usize;
        while done < data.len() {
            let chunk = &data[done..(done + self.write_bytes as usize).min(data.len())];
            let args = WRITE3args {
                file: file.clone(),
                offset: offset + done as u64,
                count: chunk.len() as u32,
                stable: stable_how::UNSTABLE,
                data: Opaque::borrowed(chunk),
            };
            match call!(self, write(&args)) {
                Ok(ok) if ok.count == 0 => return reply.error(Errno::EIO),
                Ok(ok) => {
                    if ok.committed != stable_how::FILE_SYNC {
                        let mut tables = self.tables();
                        let u = tables.unstable.entry(ino.0).or_insert(Unstable {
                            verf: ok.verf.0,
                            lost: false,
                            writes: 0,
                        });
                        u.lost |= u.verf != ok.verf.0;
                        u.writes += 1;
                    }
                    done += (ok.count as usize).min(chunk.len());
                }
                Err(e) if done == 0 => return reply.error(e),
                // What was written counts; the caller retries the rest.
                Err(_) => break,
            }
        }
        reply.written(done as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // At close: what was written is durable before `close` returns, as an NFS
        // client's close-to-open consistency has it.
        answer_empty(reply, self.commit(ino))
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer_empty(reply, self.commit(ino))
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut tables = self.tables();
        let id = tables.next_dir;
        tables.next_dir += 1;
        tables.dirs.insert(id, cookieverf3::default());
        drop(tables);
        reply.opened(FileHandle(id), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.fh(ino) {
            Ok(fh) => fh,
            Err(e) => return reply.error(e),
        };
        // The offset FUSE hands back is the NFS cookie of the last entry it took.
        let cookieverf = if offset == 0 {
            cookieverf3::default()
        } else {
            self.tables().dirs.get(&fh.0).copied().unwrap_or_default()
        };
        let args = READDIRPLUS3args {
            dir,
            cookie: offset,
            cookieverf,
            dircount: READDIR_DIRCOUNT,
            maxcount: READDIR_MAXCOUNT,
        };
        let ok = match call!(self, readdirplus(&args)) {
            Ok(ok) => ok,
            Err(e) => return reply.error(e),
        };
        self.tables().dirs.insert(fh.0, ok.cookieverf);
        for e in &ok.reply.entries.0 {
            let kind = match &e.name_attributes {
                Nfs3Option::Some(a) => file_type(a.type_),
                // Without attributes, a LOOKUP says what it is.
                Nfs3Option::None => {
                    let lookup = LOOKUP3args {
                        what: dirop(&args.dir, OsStr::from_bytes(e.name.as_ref())),
                    };
                    match call!(self, lookup(&lookup)) {
                        Ok(found) => match found.obj_attributes {
                            Nfs3Option::Some(a) => file_type(a.type_),
                            Nfs3Option::None => FileType::RegularFile,
                        },
                        // Removed since the listing: leave it out.
                        Err(err) if err == Errno::ENOENT => continue,
                        Err(err) => return reply.error(err),
                    }
                }
            };
            // The kernel asks again from the last offset it took: a cookie of 0 or one
            // that does not move would list the same entries for ever.
            if e.cookie == 0 || e.cookie == offset {
                warn!("READDIRPLUS gave the cookie {} after {offset}", e.cookie);
                return reply.error(Errno::EIO);
            }
            let ino = INodeNo(self.ino(e.fileid));
            if reply.add(ino, e.cookie, kind, OsStr::from_bytes(e.name.as_ref())) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tables().dirs.remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let args = FSSTAT3args {
            fsroot: self.root.clone(),
        };
        match call!(self, fsstat(&args)) {
            Ok(s) => {
                let b = u64::from(BLOCK_BYTES);
                reply.statfs(
                    s.tbytes / b,
                    s.fbytes / b,
                    s.abytes / b,
                    s.tfiles,
                    s.ffiles,
                    BLOCK_BYTES,
                    NAME_BYTES_MAX,
                    BLOCK_BYTES,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    // NFSv3 has no extended attributes. ENOSYS (fuser's default, which also logs a
    // warning) makes the kernel stop asking and answer EOPNOTSUPP itself.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // `default_permissions`: the kernel checked the mode bits already.
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let exclusive = flags & libc::O_EXCL != 0;
        let truncate = flags & libc::O_TRUNC != 0;
        match self.make_file(parent, name, mode, umask, exclusive, truncate) {
            Ok(attr) => reply.created(
                &self.opts.attr_ttl,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }
}

impl NfsFs {
    /// CREATE: GUARDED for O_EXCL and mknod (EEXIST if the name exists), else
    /// UNCHECKED, which also truncates for O_TRUNC: the kernel asked because its lookup
    /// found nothing, so it takes the file for new and will not truncate it itself if
    /// another client made it meanwhile.
    fn make_file(
        &self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        exclusive: bool,
        truncate: bool,
    ) -> Result<FileAttr, Errno> {
        let dir = self.fh(parent)?;
        let attributes = sattr3 {
            mode: Nfs3Option::Some(create_mode(mode, umask)),
            ..sattr3::default()
        };
        let args = CREATE3args {
            where_: dirop(&dir, name),
            how: if exclusive {
                createhow3::GUARDED(attributes)
            } else {
                createhow3::UNCHECKED(sattr3 {
                    size: if truncate {
                        Nfs3Option::Some(0)
                    } else {
                        Nfs3Option::None
                    },
                    ..attributes
                })
            },
        };
        let ok = call!(self, create(&args))?;
        self.made(&dir, name, ok.obj, ok.obj_attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nfs_error_maps_to_a_distinct_meaningful_errno() {
        assert_eq!(errno_of(nfsstat3::NFS3ERR_NOENT), Errno::ENOENT);
        assert_eq!(errno_of(nfsstat3::NFS3ERR_EXIST), Errno::EEXIST);
        assert_eq!(
            errno_of(nfsstat3::NFS3ERR_NOTEMPTY),
            Errno::from_i32(libc::ENOTEMPTY)
        );
        assert_eq!(
            errno_of(nfsstat3::NFS3ERR_STALE),
            Errno::from_i32(libc::ESTALE)
        );
        assert_eq!(
            errno_of(nfsstat3::NFS3ERR_ACCES),
            Errno::from_i32(libc::EACCES)
        );
    }

    #[test]
    fn a_new_objects_mode_drops_the_umask_and_the_type_bits() {
        assert_eq!(create_mode(0o100666, 0o022), 0o644);
        assert_eq!(create_mode(0o40777, 0o077), 0o700);
        assert_eq!(create_mode(0o4755, 0), 0o4755);
    }
}
