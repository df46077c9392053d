//! Configuration of one file state machine.
//!
//! Everything an NFS reply reports about the file system as a whole (FSSTAT, FSINFO,
//! PATHCONF, the write verifier, the handle generation) comes from here and not from the
//! host, because replicas run on different disks with different free space. The fields
//! marked "replicated" must be equal on every replica of a group; the others only tune
//! local resource use.

use serde::{Deserialize, Serialize};

/// What a WRITE with `UNSTABLE` (or `DATA_SYNC`) means here.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnstableWrites {
    /// Every write is made durable by the batch's `sync()`, before its reply leaves,
    /// and the reply says `FILE_SYNC`, so the client never needs a COMMIT. This is the
    /// only policy that is safe with a write verifier that never changes.
    SyncAtBatch,
    /// `UNSTABLE` writes are left out of the batch sync and made durable by COMMIT
    /// (or `sync_all`); the reply says `UNSTABLE`. Data of such writes can be lost by a
    /// crash of this replica; it must then recover by state transfer, not by reusing
    /// its own tree (see README.md).
    DeferToCommit,
}

/// How `sync()` flushes the batch's dirty files and directories (local choice; the
/// journal record is always written and `fdatasync`ed after them).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` each dirty file and `fsync` each changed directory.
    PerObject,
    /// One `syncfs(2)` of the backing file system: cheaper for batches touching many
    /// files, but it also flushes whatever else is dirty on that file system.
    Syncfs,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// Replicated. Second half of every file handle; a handle with another generation
    /// is `NFS3ERR_STALE` (handles from an earlier, re-initialised export).
    pub generation: u64,
    /// Replicated. `fattr3.fsid`.
    pub fsid: u64,
    /// Replicated. `writeverf3` of WRITE and COMMIT.
    pub write_verifier: [u8; 8],
    /// Replicated. Longest name component (at most 255, the host's limit).
    pub name_max: u32,
    /// Replicated. Longest symbolic link target (at most 4095, the host's limit).
    pub path_max: u32,
    /// Replicated. PATHCONF `linkmax`; LINK beyond it is `NFS3ERR_MLINK`.
    pub link_max: u32,
    /// Replicated. FSINFO transfer sizes; READ counts and WRITE data are clamped to the
    /// maxima.
    pub rtmax: u32,
    pub rtpref: u32,
    pub wtmax: u32,
    pub wtpref: u32,
    pub dtpref: u32,
    /// Replicated. FSINFO `maxfilesize`; writes beyond it are `NFS3ERR_FBIG`.
    pub maxfilesize: u64,
    /// Replicated. FSSTAT `tbytes`; the deterministic quota: writes that would make
    /// the accounted `used` bytes exceed it are `NFS3ERR_NOSPC` on every replica.
    pub bytes_total: u64,
    /// Replicated. FSSTAT `tfiles`; creating more objects is `NFS3ERR_NOSPC`.
    pub files_total: u64,
    /// Replicated. Enforce Unix permissions from AUTH_UNIX credentials (uid 0 is
    /// never squashed).
    pub check_permissions: bool,
    /// Replicated. See `UnstableWrites`.
    pub unstable_writes: UnstableWrites,
    /// Replicated (used only when the export is first created). Root directory owner.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    /// Local. Bound of the open-file cache (file and directory descriptors by fileid).
    pub open_files_max: usize,
    /// Local. The metadata journal is folded into a snapshot once it exceeds this.
    pub journal_bytes_max: u64,
    /// Local. See `SyncMode`.
    pub sync_mode: SyncMode,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            generation: 1,
            fsid: 0x6266_746e_6673, // "bftnfs"
            write_verifier: *b"bftnfs01",
            name_max: 255,
            path_max: 4095,
            link_max: 32_000,
            rtmax: 1 << 20,
            rtpref: 1 << 20,
            wtmax: 1 << 20,
            wtpref: 1 << 20,
            dtpref: 64 << 10,
            maxfilesize: 1 << 40,
            bytes_total: 1 << 40,
            files_total: 1 << 24,
            check_permissions: true,
            unstable_writes: UnstableWrites::SyncAtBatch,
            root_mode: 0o755,
            root_uid: 0,
            root_gid: 0,
            open_files_max: 256,
            journal_bytes_max: 64 << 20,
            sync_mode: SyncMode::PerObject,
        }
    }
}

impl FsConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.name_max == 0 || self.name_max > 255 {
            return Err(format!("name_max {} not in 1..=255", self.name_max));
        }
        if self.path_max == 0 || self.path_max > 4095 {
            return Err(format!("path_max {} not in 1..=4095", self.path_max));
        }
        if self.rtmax == 0 || self.wtmax == 0 || self.dtpref == 0 {
            return Err("transfer sizes must be positive".into());
        }
        if self.open_files_max < 4 {
            return Err("open_files_max must be at least 4".into());
        }
        if self.link_max < 2 {
            return Err("link_max must be at least 2".into());
        }
        Ok(())
    }
}
