//! Checkpoint snapshots on disk (MinBFT section 5, checkpoints and state transfer).
//!
//! At each checkpoint the replica keeps the application state as of that batch plus the
//! core's client table, for two uses: a lagging peer fetches the stable one (state
//! transfer), and this replica restores it after a crash, because the core replays its
//! log from the stable checkpoint and so needs the application exactly there. One small
//! file per checkpoint: the application part is fs-state's `FsManifest` (metadata and
//! chunk hashes); file contents live once in fs-state's content-addressed chunk store,
//! shared by all checkpoints and garbage-collected when no retained manifest needs them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use consensus::SeqNum;
use consensus::replica::CoreState;
use serde::{Deserialize, Serialize};

pub const SNAPSHOT_DIR: &str = "snapshots";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub n: SeqNum,
    pub core_state: CoreState,
    #[serde(with = "serde_bytes")]
    pub app: Vec<u8>,
}

pub struct SnapshotStore {
    dir: PathBuf,
}

fn io_ctx(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl SnapshotStore {
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&dir).map_err(io_ctx(&dir))?;
        Ok(SnapshotStore { dir })
    }

    fn path(&self, n: SeqNum) -> PathBuf {
        self.dir.join(format!("{n:020}.snap"))
    }

    /// Writes the snapshot of batch `n` durably (temp, fsync, rename, fsync dir).
    pub fn save(&self, snap: &Snapshot) -> std::io::Result<()> {
        let path = self.write(snap, true)?;
        Self::sync_saved(std::slice::from_ref(&path))
    }

    /// Writes the snapshot of batch `n` (temp, rename) without making it durable, and
    /// returns its path for `sync_saved`. For a checkpoint taken on the protocol thread:
    /// its two fsyncs there cost 0.6–1.5 ms a checkpoint, and up to 100 ms when they
    /// queued behind the other replicas' `syncfs` on a shared disk; the checkpoint's
    /// flush thread syncs it instead, before its `Stable` record can be written. A
    /// power cut before that leaves a snapshot above the stable checkpoint that may not
    /// decode, which nothing needs (`is_expendable`).
    pub fn save_unsynced(&self, snap: &Snapshot) -> std::io::Result<PathBuf> {
        self.write(snap, false)
    }

    fn write(&self, snap: &Snapshot, sync: bool) -> std::io::Result<PathBuf> {
        let path = self.path(snap.n);
        let tmp = path.with_extension("tmp");
        let bytes = crate::net::encode(snap);
        let mut f = File::create(&tmp).map_err(io_ctx(&tmp))?;
        f.write_all(&bytes).map_err(io_ctx(&tmp))?;
        if sync {
            f.sync_all().map_err(io_ctx(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_ctx(&path))?;
        Ok(path)
    }

    /// Makes snapshots written by `save_unsynced` durable: each file, then their
    /// directory (the renames). Nothing to do for none.
    pub fn sync_saved(paths: &[PathBuf]) -> std::io::Result<()> {
        for path in paths {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(io_ctx(path))?;
        }
        if let Some(dir) = paths.first().and_then(|p| p.parent()) {
            super::log::sync_dir(dir).map_err(io_ctx(dir))?;
        }
        Ok(())
    }

    /// Whether snapshot `n` may be deleted when it does not decode: any but the stable
    /// checkpoint `stable`'s was perhaps never synced (`save_unsynced`) before a power
    /// cut, and no restart or peer reads it (a restart replays from the stable one, and a
    /// checkpoint is taken again if it is reached again). One below the stable
    /// checkpoint: a replica that restarted from an older one and then caught up past it
    /// by state transfer.
    pub fn is_expendable(n: SeqNum, stable: SeqNum) -> bool {
        n != stable
    }

    /// Deletes snapshot `n`.
    pub fn remove(&self, n: SeqNum) -> std::io::Result<()> {
        let path = self.path(n);
        std::fs::remove_file(&path).map_err(io_ctx(&path))
    }

    pub fn load(&self, n: SeqNum) -> std::io::Result<Option<Snapshot>> {
        let path = self.path(n);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_ctx(&path)(e)),
        };
        crate::net::decode(&bytes).map(Some).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: corrupt snapshot", path.display()),
            )
        })
    }

    /// Checkpoints on disk, ascending.
    pub fn list(&self) -> std::io::Result<Vec<SeqNum>> {
        let mut ns = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(k) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".snap"))
                .and_then(|s| s.parse::<SeqNum>().ok())
            {
                ns.push(k);
            }
        }
        ns.sort_unstable();
        Ok(ns)
    }

    pub fn has(&self, n: SeqNum) -> bool {
        self.path(n).exists()
    }

    /// Deletes snapshots below `n` (checkpoint `n` is stable).
    pub fn drop_below(&self, n: SeqNum) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|s| s.strip_suffix(".snap")) else {
                continue;
            };
            if stem.parse::<SeqNum>().is_ok_and(|k| k < n) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}
