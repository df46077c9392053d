//! The replicated file state machine of bftnfs (DESIGN.md, "The file state machine").
//!
//! Every replica applies the same ordered NFSv3 operations (`FsOp`) to its own backing
//! directory and must produce byte-identical replies (`FsReply`) and identical backing
//! trees. Nothing here reads the host's clock, inode numbers, directory order, free
//! space, umask or owner: all of that is replicated metadata, changed only by ordered
//! operations. There is no networking and no async here; file I/O stays inside the
//! data directory. Unreplicated mode uses the same crate.
//!
//! Modules: `ops` (the boundary types and their one encoding), `meta` (replicated
//! metadata), `journal` (its persistence), `confine` (names and host calls that cannot
//! escape the export), `perm` (Unix permissions), `dir` (listings and cookies), `apply`
//! (the procedures), `digest` (the Merkle tree), `state` (lifecycle, sync, digest),
//! `recover` (crash check, snapshot, restore), `transfer` (chunked checkpoints, state
//! transfer, self-repair), `chunks` (the chunk store's pack files), `spare` (removed host objects kept for reuse).

mod apply;
mod chunks;
pub mod config;
mod confine;
pub mod digest;
mod dir;
pub mod error;
mod journal;
pub mod meta;
pub mod ops;
mod perm;
mod recover;
mod spare;
mod state;
pub mod transfer;

pub use config::{FsConfig, SyncMode, UnstableWrites};
pub use digest::{DigestTree, Hash};
pub use error::{FsError, LocalFault};
pub use ops::*;
pub use recover::{FsSnapshot, SnapshotFile};
pub use spare::{SPARE_DIR, SPARES_MAX, SpareStats};
pub use state::{EXPORT_DIR, FileStateMachine, Flush, META_DIR, PendingSync, SyncStats};
pub use transfer::{CaptureStats, ChunkStore, FsManifest, InstallStats, ScrubStats};
