//! Shared by the integration tests: an unreplicated server on its own thread, and
//! nfs3_client connections to it with explicit AUTH_UNIX credentials from an
//! unprivileged source port (the client's defaults are AUTH_NULL and a port < 1024).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fs_state::FsConfig;
use nfs_frontend::{ClusterOptions, LocalCluster, ServerConfig, UnreplicatedServer};
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::nfs_fh3;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use tokio::net::TcpStream;

pub type Conn = nfs3_client::Nfs3Connection<TokioIo<TcpStream>>;

pub struct TestServer {
    pub server: Option<UnreplicatedServer>,
    pub cluster: Option<nfs_frontend::cluster::LocalCluster>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A fresh export in a new temporary directory (`<tmp>/data`).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_on(&dir.path().join("data"));
        TestServer {
            server: Some(server),
            cluster: None,
            dir,
        }
    }

    /// An embedded MinPBFT f=1 cluster (three replicas and a frontend) in a new
    /// temporary directory.
    pub fn start_replicated() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster =
            nfs_frontend::cluster::LocalCluster::start(nfs_frontend::cluster::ClusterOptions {
                f: 1,
                dir: dir.path().join("cluster"),
                ..Default::default()
            })
            .expect("cluster starts");
        TestServer {
            server: None,
            cluster: Some(cluster),
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match (&self.server, &self.cluster) {
            (Some(s), _) => s.addr(),
            (None, Some(c)) => c.nfs_addr(),
            (None, None) => panic!("not running"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop().expect("clean stop");
        }
    }
}

pub fn start_on(data: &Path) -> UnreplicatedServer {
    UnreplicatedServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        data,
        FsConfig::default(),
        ServerConfig::default(),
    )
    .expect("server starts")
}

pub fn cred(uid: u32, gid: u32, gids: &[u32]) -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 1,
        machinename: Opaque::owned(b"test".to_vec()),
        uid,
        gid,
        gids: gids.to_vec(),
    })
}

pub async fn connect(addr: SocketAddr, uid: u32, gid: u32) -> Conn {
    connect_with(addr, cred(uid, gid, &[]), "/").await
}

pub async fn connect_with(addr: SocketAddr, credential: opaque_auth<'static>, path: &str) -> Conn {
    Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), path)
        .mount_port(addr.port())
        .nfs3_port(addr.port())
        .connect_from_privileged_port(false)
        .credential(credential)
        .mount()
        .await
        .expect("mount")
}

pub fn fh(bytes: &[u8]) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(bytes.to_vec()),
    }
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The NFS port a `bftnfs serve`/`up` child prints in its "libnfs URL: …" line (stdout
/// must be piped); `None` if it exits without printing one.
pub fn port_from_stdout(child: &mut std::process::Child) -> Option<u16> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        if let Some(url) = line.strip_prefix("libnfs URL: ") {
            return url
                .split("nfsport=")
                .nth(1)
                .and_then(|s| s.split('&').next())
                .and_then(|p| p.parse().ok());
        }
    }
    None
}

/// The libnfs URL of `path` on a local server's `port` (both ports given: no portmapper).
pub fn url(port: u16, path: &str) -> String {
    format!("nfs://127.0.0.1{path}?nfsport={port}&mountport={port}")
}

/// NFS directory-operation arguments: `name` in `dir`.
pub fn dirop(dir: &nfs_fh3, n: &str) -> nfs3_client::nfs3_types::nfs3::diropargs3<'static> {
    nfs3_client::nfs3_types::nfs3::diropargs3 {
        dir: dir.clone(),
        name: nfs3_client::nfs3_types::nfs3::filename3(Opaque::owned(n.as_bytes().to_vec())),
    }
}

/// Creates `name` in `dir` (UNCHECKED); returns the file's handle.
pub async fn create_file(c: &mut Conn, dir: &nfs_fh3, name: &str) -> nfs_fh3 {
    use nfs3_client::nfs3_types::nfs3::{CREATE3args, createhow3, sattr3};
    c.create(&CREATE3args {
        where_: dirop(dir, name),
        how: createhow3::UNCHECKED(sattr3::default()),
    })
    .await
    .expect("rpc")
    .unwrap()
    .obj
    .unwrap()
}

/// Creates `name` in `dir` (UNCHECKED) and writes `data` into it with FILE_SYNC WRITEs
/// of at most 32 KiB; returns the file's handle.
pub async fn write_file(c: &mut Conn, dir: &nfs_fh3, name: &str, data: &[u8]) -> nfs_fh3 {
    write_file_in(c, dir, name, data, 32 << 10).await
}

/// `write_file` with WRITEs of at most `piece` bytes (at most the server's `wtmax`).
pub async fn write_file_in(
    c: &mut Conn,
    dir: &nfs_fh3,
    name: &str,
    data: &[u8],
    piece: usize,
) -> nfs_fh3 {
    use nfs3_client::nfs3_types::nfs3::{WRITE3args, stable_how};
    let f = create_file(c, dir, name).await;
    for (k, bytes) in data.chunks(piece).enumerate() {
        let w = c
            .write(&WRITE3args {
                file: f.clone(),
                offset: (k * piece) as u64,
                count: bytes.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::owned(bytes.to_vec()),
            })
            .await
            .expect("rpc")
            .unwrap();
        assert_eq!(w.count as usize, bytes.len(), "{name}: short write");
    }
    f
}

/// Whether two backing trees are byte-identical (`diff -r`, symlinks compared as links).
pub fn trees_equal(a: &Path, b: &Path) -> bool {
    std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether all `trees` become byte-identical within `limit` (a replica that was behind
/// when the client got its f+1 replies catches up), checked every half second.
pub fn trees_become_equal(trees: &[PathBuf], limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if trees[1..].iter().all(|t| trees_equal(&trees[0], t)) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`.
pub fn bounded<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("test exceeded its time bound")
}

/// `bftnfs up` as a child (real processes, as a user runs them); reads the NFS port from
/// the libnfs URL it prints. Replicas restarted by hand are killed on drop.
pub struct Up {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: PathBuf,
    /// Replicas restarted by hand (not children of `up`).
    pub restarted: Vec<std::process::Child>,
}

impl Up {
    pub fn start(dir: &Path) -> Up {
        Up::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Up {
        Up::start_with_env(dir, extra, &[])
    }

    /// `bftnfs up` with these environment variables (its replicas inherit them).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Up {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args(["up", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn bftnfs up");
        let port = port_from_stdout(&mut child).expect("bftnfs up printed its URL");
        Up {
            child,
            port,
            dir: dir.to_path_buf(),
            restarted: Vec::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        url(self.port, path)
    }

    pub fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().expect("addr")
    }

    pub fn replica_dir(&self, i: u32) -> PathBuf {
        self.dir.join(format!("replica-{i}"))
    }

    pub fn export(&self, i: u32) -> PathBuf {
        self.replica_dir(i).join("export")
    }

    pub fn pid_of(&self, i: u32) -> i32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(self.replica_dir(i).join("pid"))
                && let Ok(p) = s.trim().parse()
            {
                return p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "replica {i} wrote no pid file"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn kill9(&self, i: u32) {
        self.kill9_all(&[i]);
    }

    /// kill -9 of these replicas at once (all pids are read before the first kill).
    pub fn kill9_all(&self, ids: &[u32]) {
        let pids: Vec<i32> = ids.iter().map(|&i| self.pid_of(i)).collect();
        for (&i, pid) in ids.iter().zip(pids) {
            let _ = std::fs::remove_file(self.replica_dir(i).join("pid"));
            // SAFETY: kill(2) of a pid this test started (through `up`).
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGKILL) },
                0,
                "kill -9 {pid}"
            );
        }
        // Let the OS release their ports.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    /// `bftnfs replica --config D/cluster.toml --id I --data D/replica-I`.
    pub fn restart(&mut self, i: u32) {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args(["replica", "--config"])
            .arg(self.dir.join("cluster.toml"))
            .args(["--id", &i.to_string(), "--data"])
            .arg(self.replica_dir(i))
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("restart replica");
        self.restarted.push(child);
    }

    /// SIGTERM to everything; `up` must stop within 15 s.
    pub fn terminate(self) {
        self.terminate_within(std::time::Duration::from_secs(15));
    }

    /// SIGTERM to everything; `up` must stop within `limit`.
    pub fn terminate_within(mut self, limit: std::time::Duration) {
        for c in &mut self.restarted {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().expect("wait").is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("bftnfs up did not stop within {limit:?} of SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while std::time::Instant::now() < deadline
                && self.child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a libnfs tool; fails the test (with its stderr) unless it succeeds.
pub fn run_tool(cmd: &mut std::process::Command) -> Vec<u8> {
    let out = cmd.output().expect("run libnfs tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---- raw RPC -----------------------------------------------------------------------

pub fn be(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// A call record: header with an AUTH_UNIX credential `cred_body`, then `args`.
pub fn call(xid: u32, prog: u32, vers: u32, proc: u32, cred_body: &[u8], args: &[u8]) -> Vec<u8> {
    let mut m = be(&[xid, 0, 2, prog, vers, proc, 1, cred_body.len() as u32]);
    m.extend_from_slice(cred_body);
    m.resize(m.len().div_ceil(4) * 4, 0);
    m.extend(be(&[0, 0]));
    m.extend_from_slice(args);
    let mut rec = (0x8000_0000u32 | m.len() as u32).to_be_bytes().to_vec();
    rec.extend(m);
    rec
}

pub fn root_cred() -> Vec<u8> {
    be(&[1, 0, 0, 0, 0])
}

pub async fn reply(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 4];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(s, &mut h),
    )
    .await
    .expect("reply in time")
    .ok()?;
    let len = (u32::from_be_bytes(h) & 0x7fff_ffff) as usize;
    let mut b = vec![0; len];
    tokio::io::AsyncReadExt::read_exact(s, &mut b).await.ok()?;
    Some(b)
}

pub fn word(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

/// A cluster of the null application in `dir`, and a runtime to drive its client.
pub fn null_cluster(dir: &Path) -> (LocalCluster, tokio::runtime::Runtime) {
    cluster_with(ClusterOptions {
        dir: dir.to_path_buf(),
        null_app: true,
        ..ClusterOptions::default()
    })
}

/// A cluster of the file system in `dir` (embedded, default options), and a runtime to
/// drive NFS clients against it.
pub fn file_cluster(dir: &Path) -> (LocalCluster, tokio::runtime::Runtime) {
    cluster_with(ClusterOptions {
        dir: dir.to_path_buf(),
        ..ClusterOptions::default()
    })
}

/// A cluster started with `options`, and a runtime to drive its clients.
pub fn cluster_with(options: ClusterOptions) -> (LocalCluster, tokio::runtime::Runtime) {
    let cluster = LocalCluster::start(options).expect("cluster");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    (cluster, rt)
}
