//! The NFSv3 frontend of bftnfs: an NFSv3 + MOUNT server (one TCP port) in front of a
//! backend that executes file operations (DESIGN.md, "The file state machine").
//!
//! Each NFS procedure becomes exactly one `fs_state::FsOp`, executed by an [`FsBackend`]
//! with the caller's AUTH_UNIX credentials, and the backend's `FsReply` is encoded as the
//! RFC 1813 result. File handles, cookies, verifiers and every attribute come from the
//! backend, so replicas that agree on replies give the client identical bytes.
//!
//! The RPC layer is written here on `nfs3_types` (the XDR types of the nfs3_server
//! family) instead of using `nfs3_server`'s file-system trait: that trait turns one call
//! into several backend calls (pre/post attributes, LOOKUP before GUARDED CREATE), which
//! would be several ordered BFT requests and not atomic, and it has no place for
//! credentials, ACCESS, PATHCONF, FSSTAT, LINK, MKNOD or RMDIR.
//!
//! Modules: `backend` (the trait), `rpc` (record marking, call headers, AUTH_UNIX),
//! `nfs` (the 21 procedures), `wire` (type conversions), `mount` (MOUNT and portmap),
//! `server` (connections and concurrency), `unreplicated` (one local state machine).
//!
//! Replicated mode: `config` (cluster.toml, keys, `keygen`), `crypto` (the real
//! `consensus::Crypto`), `net` (frames, authenticated replica links), `op` (the request
//! encoding of an operation), `null_op` (the null application's operations), `replica` (the replica runtime around the MinPBFT core),
//! `client` (the BFT client and `BftBackend`), `cluster` (an embedded cluster).

pub mod alloc;
pub mod backend;
pub mod bundle;
pub mod client;
pub mod cluster;
pub mod config;
pub mod crypto;
mod mount;
pub mod net;
mod nfs;
pub mod null_op;
pub mod op;
pub mod replica;
pub mod rpc;
pub mod server;
pub mod tpm;
pub mod unreplicated;
mod wire;

use std::net::SocketAddr;

pub use backend::{FsBackend, error_reply};
pub use client::{BftBackend, BftClient};
pub use cluster::{ClusterOptions, LocalCluster};
pub use server::{ANONYMOUS_ID, NfsServer, ServerConfig};
pub use unreplicated::{
    ExecutorStats, UnreplicatedBackend, UnreplicatedExecutor, UnreplicatedServer,
};

/// The libnfs URL of `path` on a server at `addr` (no portmapper needed: both ports are
/// given). `path` "/" is the export root; a file at the root is "//name".
pub fn libnfs_url(addr: SocketAddr, path: &str) -> String {
    let port = addr.port();
    format!("nfs://{}{path}?nfsport={port}&mountport={port}", addr.ip())
}
