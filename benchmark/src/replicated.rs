//! The replicated deployment as the benchmark sees it: an embedded MinPBFT cluster
//! (2f + 1 replicas, each on its own thread and runtime, in this process) that serves
//! NFSv3 on one address and hands out protocol clients for null operations (section 8.1).
//!
//! The benchmark needs only these few calls, so they sit behind a small trait over
//! `nfs_frontend::cluster::LocalCluster`: the measurements do not change when the
//! cluster's constructor does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;

use anyhow::Result;
use nfs_frontend::config::UsigKeyKind;

/// Which USIG backend the replicas use (DESIGN.md, "The USIG").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsigKind {
    /// In-process, with one HMAC-SHA256 key all the replicas' USIGs share (`bftnfs
    /// keygen --usig-key shared`, the default), counter in a state file and the log.
    Software,
    /// In-process, with an ECDSA P-256 key per replica (`--usig-key ecdsa-p256`).
    SoftwareEcdsa,
    /// The USIG in a separate process.
    Process,
    /// A TPM 2.0 (or its simulator).
    Tpm,
}

impl UsigKind {
    pub fn name(self) -> &'static str {
        match self {
            UsigKind::Software => "software (shared HMAC key)",
            UsigKind::SoftwareEcdsa => "software (ECDSA P-256)",
            UsigKind::Process => "process",
            UsigKind::Tpm => "tpm",
        }
    }

    /// What certifies the replicas' UIs with this backend.
    pub fn usig_key(self) -> UsigKeyKind {
        match self {
            UsigKind::Software => UsigKeyKind::Shared,
            UsigKind::SoftwareEcdsa | UsigKind::Process | UsigKind::Tpm => UsigKeyKind::EcdsaP256,
        }
    }

    /// Refuse backends that do not exist yet, before anything starts.
    pub fn check_available(self) -> Result<()> {
        match self {
            UsigKind::Software | UsigKind::SoftwareEcdsa | UsigKind::Process => Ok(()),
            #[cfg(feature = "tpm")]
            UsigKind::Tpm => {
                anyhow::ensure!(
                    usig_swtpm_available(),
                    "--usig tpm needs swtpm (one per replica): apt-get install swtpm swtpm-tools"
                );
                Ok(())
            }
            #[cfg(not(feature = "tpm"))]
            UsigKind::Tpm => anyhow::bail!(
                "--usig tpm: bftnfs-bench was built without the `tpm` feature; rebuild with \
                 `cargo build --release -p benchmark --features tpm` (needs libtss2-dev)"
            ),
        }
    }
}

#[cfg(feature = "tpm")]
fn usig_swtpm_available() -> bool {
    std::process::Command::new("swtpm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
    /// Requests one protocol client may have in flight (its BFT sessions); the
    /// throughput benchmark's concurrent clients share them.
    pub sessions: u64,
    /// Clients bundle the operations waiting beyond their idle sessions.
    pub bundling: bool,
    pub usig: UsigKind,
}

/// A running replicated deployment.
pub trait Cluster {
    /// Where the NFSv3 frontend of the cluster listens (NFS and MOUNT on one port).
    fn nfs_addr(&self) -> SocketAddr;
    /// A new protocol client (its own identity and request numbers).
    fn client(&self) -> Box<dyn ProtocolClient>;
    /// The protocol client's engine, once, for the caller to run beside the tasks that
    /// call `client()` (as the NFS frontend runs its own); abort it before `stop`.
    fn take_client_engine(&mut self) -> Option<nfs_frontend::cluster::ClientEngine>;
    /// Stops it; returns the highest view a replica ended in (0: no view change).
    fn stop(self: Box<Self>) -> Result<u64>;
}

/// One MinPBFT client: `invoke` returns once f + 1 replicas sent matching replies.
pub trait ProtocolClient {
    /// An empty `op` is a null operation with an empty result.
    fn invoke(&self, op: Vec<u8>, read_only: bool) -> Pin<Box<dyn Future<Output = Vec<u8>> + '_>>;
    /// Requests sent so far, all clones of this client together (a bundle counts once).
    fn requests_sent(&self) -> u64;
}

/// Start the embedded cluster.
pub fn start(config: &ClusterConfig) -> Result<Box<dyn Cluster>> {
    config.usig.check_available()?;
    imp::start(config)
}

mod imp {
    use nfs_frontend::client::BftClient;
    use nfs_frontend::cluster::{ClusterOptions, LocalCluster};

    use super::*;

    pub fn start(config: &ClusterConfig) -> Result<Box<dyn Cluster>> {
        let cluster = LocalCluster::start(ClusterOptions {
            f: config.f,
            dir: config.dir.clone(),
            batching: config.batching,
            null_app: config.null_app,
            sessions: config.sessions,
            process_usig: config.usig == UsigKind::Process,
            bundling: config.bundling,
            tpm_usig: config.usig == UsigKind::Tpm,
            client_engine_on_caller: true,
            export: None,
            usig_key: config.usig.usig_key(),
        })?;
        Ok(Box::new(Embedded(Some(cluster))))
    }

    struct Embedded(Option<LocalCluster>);

    impl Cluster for Embedded {
        fn nfs_addr(&self) -> SocketAddr {
            self.0.as_ref().expect("running").nfs_addr()
        }

        fn client(&self) -> Box<dyn ProtocolClient> {
            Box::new(self.0.as_ref().expect("running").client())
        }

        fn take_client_engine(&mut self) -> Option<nfs_frontend::cluster::ClientEngine> {
            self.0.as_mut().expect("running").take_client_engine()
        }

        fn stop(mut self: Box<Self>) -> Result<u64> {
            match self.0.take() {
                Some(cluster) => Ok(cluster.stop()?.iter().map(|s| s.view).max().unwrap_or(0)),
                None => Ok(0),
            }
        }
    }

    impl ProtocolClient for BftClient {
        fn invoke(
            &self,
            op: Vec<u8>,
            read_only: bool,
        ) -> Pin<Box<dyn Future<Output = Vec<u8>> + '_>> {
            Box::pin(BftClient::invoke(self, op, read_only))
        }

        fn requests_sent(&self) -> u64 {
            BftClient::requests_sent(self)
        }
    }
}
