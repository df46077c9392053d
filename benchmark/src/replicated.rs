//! The replicated deployment as the benchmark sees it: an embedded MinPBFT cluster
//! (f + 1 ... 2f + 1 replicas in this process) that serves NFSv3 on one address and hands
//! out protocol clients for null operations (section 8.1).
//!
//! The benchmark needs only these few calls, so they sit behind a small trait: the
//! measurements do not change when the cluster's constructor does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

use anyhow::Result;

/// Which USIG backend the replicas use (DESIGN.md, "The USIG").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsigKind {
    /// In-process ECDSA P-256 key, counter fdatasync'ed in a state file.
    Software,
    /// The USIG in a separate process.
    Process,
    /// A TPM 2.0 (or its simulator).
    Tpm,
}

impl UsigKind {
    pub fn name(self) -> &'static str {
        match self {
            UsigKind::Software => "software",
            UsigKind::Process => "process",
            UsigKind::Tpm => "tpm",
        }
    }

    /// Refuse backends that do not exist yet, before anything starts.
    pub fn check_available(self) -> Result<()> {
        match self {
            UsigKind::Software => Ok(()),
            UsigKind::Process | UsigKind::Tpm => anyhow::bail!(
                "USIG backend `{}` is not available yet: only `--usig software` exists",
                self.name()
            ),
        }
    }
}

/// How to start the embedded cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub f: u32,
    /// Parent of every replica's state.
    pub dir: PathBuf,
    /// Order several requests in one PREPARE.
    pub batching: bool,
    /// Execute null operations (no file system) instead of NFS.
    pub null_app: bool,
    pub usig: UsigKind,
}

/// A running replicated deployment.
pub trait Cluster {
    /// Where the NFSv3 frontend of the cluster listens (NFS and MOUNT on one port).
    fn nfs_addr(&self) -> SocketAddr;
    /// A new protocol client (its own identity and request numbers).
    fn client(&self) -> Box<dyn ProtocolClient>;
    fn stop(self: Box<Self>) -> Result<()>;
}

/// One MinPBFT client: `invoke` returns once f + 1 replicas sent matching replies.
pub trait ProtocolClient {
    /// An empty `op` is a null operation with an empty result.
    fn invoke(&self, op: Vec<u8>, read_only: bool) -> Pin<Box<dyn Future<Output = Vec<u8>> + '_>>;
}

/// Start the embedded cluster.
pub fn start(config: &ClusterConfig) -> Result<Box<dyn Cluster>> {
    config.usig.check_available()?;
    imp::start(config)
}

mod imp {
    use super::*;

    pub fn start(config: &ClusterConfig) -> Result<Box<dyn Cluster>> {
        let _ = config;
        anyhow::bail!(
            "replicated cluster not available yet (nfs_frontend::cluster::LocalCluster \
             is not in this build)"
        )
    }
}
