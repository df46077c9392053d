//! Shared by the integration tests: an unreplicated server on its own thread, and
//! nfs3_client connections to it with explicit AUTH_UNIX credentials from an
//! unprivileged source port (the client's defaults are AUTH_NULL and a port < 1024).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fs_state::FsConfig;
use nfs_frontend::{ServerConfig, UnreplicatedServer};
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
