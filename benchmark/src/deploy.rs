//! The three deployments the macro-benchmark measures over the NFS wire: the embedded
//! unreplicated server (the baseline, durable like a replica), the embedded MinPBFT
//! cluster, and any NFSv3 server given by address.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nfs_frontend::{ServerConfig, UnreplicatedServer};
use tracing::{info, warn};

use crate::nfs::Endpoint;
use crate::replicated::{self, Cluster, ClusterConfig, UsigKind};

/// BFT sessions of the cluster's NFS frontend (the cluster's default): NFS calls it
/// orders at once. The macro-benchmark's one client uses one at a time.
const NFS_SESSIONS: u64 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Unreplicated,
    MinPbft,
    Target(Target),
}

/// `HOST:PORT[:EXPORT]` of an NFSv3 server that serves MOUNT on the same port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        // "[v6]:port[:export]" or "host:port[:export]"; the export may contain ':'.
        let (host, rest) = if let Some(stripped) = s.strip_prefix('[') {
            let (host, rest) = stripped
                .split_once(']')
                .ok_or("missing ']' after an IPv6 address")?;
            let rest = rest.strip_prefix(':').ok_or("missing :PORT")?;
            (host.to_string(), rest)
        } else {
            let (host, rest) = s.split_once(':').ok_or("expected HOST:PORT[:EXPORT]")?;
            (host.to_string(), rest)
        };
        let (port, export) = match rest.split_once(':') {
            Some((port, export)) => (port, export.to_string()),
            None => (rest, "/".to_string()),
        };
        if host.is_empty() {
            return Err("empty HOST".into());
        }
        let port = port
            .parse::<u16>()
            .map_err(|e| format!("bad PORT {port:?}: {e}"))?;
        if export.is_empty() {
            return Err("empty EXPORT".into());
        }
        Ok(Target { host, port, export })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}:{}", self.host, self.port, self.export)
        } else {
            write!(f, "{}:{}:{}", self.host, self.port, self.export)
        }
    }
}

impl Mode {
    /// The key in the JSON output and the column in the table.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Unreplicated => "unreplicated",
            Mode::MinPbft => "minpbft",
            Mode::Target(_) => "target",
        }
    }
}

/// Options shared by the embedded deployments.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub data_root: PathBuf,
    pub f: u32,
    pub batching: bool,
    pub usig: UsigKind,
}

/// A started deployment; stops its servers on `stop` (or drop).
pub struct Deployment {
    pub mode: Mode,
    pub endpoint: Endpoint,
    /// What the table says about this deployment (address, f, where its data is).
    pub label: String,
    running: Running,
}

enum Running {
    Unreplicated(UnreplicatedServer),
    Cluster(Box<dyn Cluster>),
    External,
}

impl Deployment {
    pub fn start(mode: &Mode, options: &DeployOptions) -> Result<Deployment> {
        match mode {
            Mode::Unreplicated => {
                let dir = fresh_dir(&options.data_root, "unreplicated")?;
                let server = UnreplicatedServer::start(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    &dir,
                    fs_state::FsConfig::default(),
                    ServerConfig::default(),
                )
                .context("starting the embedded unreplicated server")?;
                let endpoint = Endpoint {
                    addr: server.addr(),
                    export: "/".into(),
                };
                info!(addr = %endpoint.addr, dir = %dir.display(), "unreplicated server up");
                Ok(Deployment {
                    mode: mode.clone(),
                    label: format!("unreplicated, embedded, {}", endpoint.addr),
                    endpoint,
                    running: Running::Unreplicated(server),
                })
            }
            Mode::MinPbft => {
                let dir = fresh_dir(&options.data_root, "minpbft")?;
                let cluster = replicated::start(&ClusterConfig {
                    f: options.f,
                    dir,
                    batching: options.batching,
                    null_app: false,
                    sessions: NFS_SESSIONS,
                    bundling: true,
                    usig: options.usig,
                })?;
                let endpoint = Endpoint {
                    addr: cluster.nfs_addr(),
                    export: "/".into(),
                };
                info!(addr = %endpoint.addr, f = options.f, "MinPBFT cluster up");
                Ok(Deployment {
                    mode: mode.clone(),
                    label: format!(
                        "MinPBFT f={} ({} replicas, {} USIG, batching {}), embedded, {}",
                        options.f,
                        2 * options.f + 1,
                        options.usig.name(),
                        if options.batching { "on" } else { "off" },
                        endpoint.addr
                    ),
                    endpoint,
                    running: Running::Cluster(cluster),
                })
            }
            Mode::Target(target) => {
                let addr = (target.host.as_str(), target.port)
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {}", target.host))?
                    .next()
                    .with_context(|| format!("{} has no address", target.host))?;
                Ok(Deployment {
                    mode: mode.clone(),
                    label: format!("NFSv3 server at {target}"),
                    endpoint: Endpoint {
                        addr,
                        export: target.export.clone(),
                    },
                    running: Running::External,
                })
            }
        }
    }

    pub fn stop(self) -> Result<()> {
        match self.running {
            Running::Unreplicated(server) => {
                let stats = server.stop().context("stopping the unreplicated server")?;
                info!(
                    ops = stats.ops,
                    batches = stats.batches,
                    "unreplicated server stopped"
                );
                Ok(())
            }
            Running::Cluster(cluster) => {
                let view = cluster.stop()?;
                if view > 0 {
                    warn!(
                        view,
                        "the cluster changed view during the run (a replica suspected the \
                         primary): its figures include view changes"
                    );
                }
                Ok(())
            }
            Running::External => Ok(()),
        }
    }
}

/// A new, empty directory `root/name[-k]`.
pub fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    for k in 0..1000 {
        let dir = if k == 0 {
            root.join(name)
        } else {
            root.join(format!("{name}-{k}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free directory name for {name} in {}", root.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "127.0.0.1:2049".parse().expect("parses");
        assert_eq!(
            (t.host.as_str(), t.port, t.export.as_str()),
            ("127.0.0.1", 2049, "/")
        );
        let t: Target = "nfs.local:2049:/export/a".parse().expect("parses");
        assert_eq!(t.export, "/export/a");
        let t: Target = "[::1]:111:/x".parse().expect("parses");
        assert_eq!((t.host.as_str(), t.port), ("::1", 111));
        assert!("host".parse::<Target>().is_err());
        assert!("host:port".parse::<Target>().is_err());
        assert!(":1".parse::<Target>().is_err());
    }
}
