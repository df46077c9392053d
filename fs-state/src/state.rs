//! `FileStateMachine`: lifecycle, durability and the state digest.
//!
//! One instance owns one data directory: `export/` (the backing tree, real names, so
//! replicas' trees compare with `diff -r`) and `fsmeta/` (the replicated metadata's
//! snapshot and journal). `apply` (in `apply.rs`) changes the tree and the in-memory
//! metadata; `sync` makes a whole batch durable at once; `state_digest` folds what
//! changed into the Merkle tree for a checkpoint. The replica's contract is: a reply
//! leaves only after the batch that produced it was synced (README.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use crate::config::{FsConfig, SyncMode, UnstableWrites};
use crate::confine::{self, FdCache, HostKind};
use crate::digest::{self, DigestTree, Hash};
use crate::error::{Ctx, FsError, LocalFault};
use crate::journal::{Journal, MetaChange};
use crate::meta::{CHUNK_BYTES, Dirty, Meta};
use crate::ops::{FType3, FileHandle, FsOp, FsReply, OpContext, ROOT_FILEID};

pub const EXPORT_DIR: &str = "export";
pub const META_DIR: &str = "fsmeta";

/// Counters of what the last `sync` had to do (for measuring the per-batch cost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub files_synced: u64,
    pub dirs_synced: u64,
    pub journal_bytes: u64,
    pub chunks_hashed: u64,
}

pub struct FileStateMachine {
    pub(crate) config: FsConfig,
    pub(crate) data_dir: PathBuf,
    pub(crate) root: Arc<File>,
    pub(crate) meta: Meta,
    pub(crate) fds: FdCache,
    pub(crate) dirty: Dirty,
    /// Chunks whose hash must be recomputed from the backing file.
    pub(crate) stale_chunks: BTreeMap<u64, BTreeSet<u64>>,
    /// Leaves whose hash must be recomputed before the next digest.
    pub(crate) stale_leaves: BTreeSet<u64>,
    pub(crate) tree: DigestTree,
    pub(crate) journal: Journal,
    pub(crate) poisoned: Option<String>,
    /// Objects found inconsistent with the metadata when reopening after a crash.
    pub(crate) damaged: BTreeSet<u64>,
    pub(crate) last_sync: SyncStats,
    /// Content-addressed chunks of checkpoints (`transfer.rs`).
    pub(crate) store: crate::transfer::ChunkStore,
    /// Host stamp of each regular file when we last wrote or verified it (not replicated).
    pub(crate) stamps: BTreeMap<u64, crate::transfer::Stamp>,
    /// Files whose backing bytes were found to differ from the metadata (self-repair).
    pub(crate) suspect: BTreeSet<u64>,
    /// Where the rolling rehash of `scrub` continues: (fileid, chunk).
    pub(crate) scrub_cursor: (u64, u64),
    /// The fileid the stamp check of `scrub_within` continues from.
    pub(crate) stamp_cursor: u64,
    pub(crate) in_transfer: bool,
    /// Store each chunk in the chunk store as it is hashed (`store_chunks_when_hashing`).
    pub(crate) store_when_hashing: bool,
    /// Removed host files and directories kept for the next CREATE or MKDIR (`spare.rs`).
    pub(crate) spares: crate::spare::Spares,
    /// A checkpoint's capture leaves its chunks to the next sync's `syncfs`
    /// (`defer_capture_sync`).
    pub(crate) capture_sync_deferred: bool,
    /// A `begin_sync` awaits its `finish_sync` (nothing else may sync meanwhile).
    pub(crate) split_pending: bool,
}

/// The flush half of a sync split in two (`FileStateMachine::begin_sync`): one `syncfs`
/// per file system the state lives on, runnable on any thread.
#[derive(Debug)]
pub struct Flush {
    fds: Vec<File>,
}

impl Flush {
    pub fn run(&self) -> std::io::Result<()> {
        for fd in &self.fds {
            rustix::fs::syncfs(fd)?;
        }
        Ok(())
    }
}

/// The other half: what `finish_sync` commits once the `Flush` is done.
#[derive(Debug)]
pub struct PendingSync {
    changes: Vec<MetaChange>,
    /// When the journal is due for compaction: the metadata as the flush writes it
    /// (the current one may be ahead of the flushed tree by then).
    image: Option<crate::meta::MetaImage>,
    store: crate::chunks::StoreMark,
}

impl std::fmt::Debug for FileStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStateMachine")
            .field("data_dir", &self.data_dir)
            .field("objects", &self.meta.inodes.len())
            .field("poisoned", &self.poisoned)
            .field("damaged", &self.damaged)
            .field("suspect", &self.suspect)
            .finish()
    }
}

impl FileStateMachine {
    /// Open (or create) the export in `data_dir`. After a crash the backing tree is
    /// checked against the metadata: entries the metadata does not know (an unsynced
    /// batch's creations) are removed, and objects that cannot be repaired locally are
    /// reported by `damaged()` and make the digest differ until a `restore`.
    pub fn open(data_dir: &Path, config: FsConfig) -> Result<Self, FsError> {
        config.validate().map_err(FsError::Config)?;
        let export = data_dir.join(EXPORT_DIR);
        std::fs::create_dir_all(&export).ctx("create export directory")?;
        let root = rustix::fs::open(
            &export,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx("open export directory")?;
        let root = Arc::new(File::from(root));
        let loaded = Journal::open(&data_dir.join(META_DIR))?;
        let fresh = loaded.meta.is_none();
        let meta = match loaded.meta {
            Some(m) => m,
            None => {
                if !confine::list_dir(&root).ctx("list export")?.is_empty() {
                    return Err(FsError::Config(format!(
                        "{} is not empty but has no metadata",
                        export.display()
                    )));
                }
                Meta::new_root(&config)
            }
        };
        let root_gen = meta.inodes[&ROOT_FILEID].generation;
        if root_gen != config.generation {
            return Err(FsError::Config(format!(
                "export has generation {root_gen}, configuration says {}",
                config.generation
            )));
        }
        let mut sm = FileStateMachine {
            fds: FdCache::new(config.open_files_max),
            config,
            data_dir: data_dir.to_path_buf(),
            root,
            stale_leaves: meta.inodes.keys().copied().collect(),
            meta,
            dirty: Dirty::default(),
            stale_chunks: BTreeMap::new(),
            tree: DigestTree::new(),
            journal: loaded.journal,
            poisoned: None,
            damaged: BTreeSet::new(),
            last_sync: SyncStats::default(),
            store: crate::transfer::ChunkStore::open(
                &data_dir.join(crate::transfer::CHUNK_DIR),
                !loaded.clean,
            )
            .ctx("open chunk store")?,
            stamps: BTreeMap::new(),
            suspect: BTreeSet::new(),
            scrub_cursor: (0, 0),
            stamp_cursor: 0,
            in_transfer: false,
            store_when_hashing: false,
            spares: crate::spare::Spares::open(data_dir),
            capture_sync_deferred: false,
            split_pending: false,
        };
        if fresh {
            sm.journal.compact(&sm.meta)?;
        } else {
            crate::recover::check_tree(&mut sm, !loaded.clean)?;
        }
        sm.state_digest()?;
        Ok(sm)
    }

    /// Apply one ordered operation. `Ok` is the reply every correct replica sends;
    /// `Err` is a local fault: send nothing, stop, recover.
    pub fn apply(&mut self, ctx: &OpContext, op: &FsOp) -> Result<FsReply, FsError> {
        self.check_usable()?;
        match self.apply_op(ctx, op) {
            Ok(reply) => Ok(reply),
            Err(fault) => Err(self.poison(fault)),
        }
    }

    /// Make everything applied so far durable, except UNSTABLE writes not yet committed
    /// under `UnstableWrites::DeferToCommit`. One call per ordered batch.
    pub fn sync(&mut self) -> Result<(), FsError> {
        self.check_usable()?;
        self.sync_inner().map_err(|f| self.poison(f))
    }

    /// `sync` including uncommitted UNSTABLE writes.
    pub fn sync_all(&mut self) -> Result<(), FsError> {
        self.check_usable()?;
        let unstable = std::mem::take(&mut self.dirty.data_unstable);
        self.dirty.data_sync.extend(unstable);
        self.sync_inner().map_err(|f| self.poison(f))
    }

    /// Lets `checkpoint` leave its chunks' durability to the next sync (`sync`, or
    /// `begin_sync` and `finish_sync`), instead of a `syncfs` of its own: a replica
    /// that syncs its file state right after each capture then flushes once. Whoever
    /// relies on a checkpoint's chunks being durable must sync first.
    pub fn defer_capture_sync(&mut self, deferred: bool) {
        self.capture_sync_deferred = deferred;
    }

    /// `sync` split in two for `SyncMode::Syncfs`, so that the flush need not block the
    /// caller: this takes what the sync commits (the changed metadata, the chunk store's
    /// state) and returns the `Flush` (run it on any thread) and the `PendingSync` to
    /// hand to `finish_sync` once the flush succeeded. Operations applied in between are
    /// not part of it (they may reach the disk with the flush; their metadata goes with
    /// the next sync). Nothing else may sync, restore or install until `finish_sync`.
    pub fn begin_sync(&mut self) -> Result<(Flush, PendingSync), FsError> {
        self.check_usable()?;
        if self.config.sync_mode != SyncMode::Syncfs {
            return Err(FsError::Config(
                "a split sync needs SyncMode::Syncfs".into(),
            ));
        }
        debug_assert!(!self.split_pending, "begin_sync twice without finish_sync");
        let r = self.begin_sync_inner();
        self.split_pending = r.is_ok();
        r.map_err(|f| self.poison(f))
    }

    fn begin_sync_inner(&mut self) -> Result<(Flush, PendingSync), LocalFault> {
        self.refresh_chunks()?;
        self.dirty.data_sync.clear();
        self.dirty.dirs_sync.clear();
        let changes = self.take_changes();
        let root = self.root.try_clone().ctx("duplicate export descriptor")?;
        let mut fds = vec![root];
        let store = File::open(self.store.dir()).ctx("open chunk store")?;
        use std::os::unix::fs::MetadataExt;
        let dev = |f: &File| f.metadata().map(|m| m.dev());
        if dev(&store).ctx("stat chunk store")? != dev(&fds[0]).ctx("stat export")? {
            fds.push(store);
        }
        let image =
            (self.journal.len() > self.config.journal_bytes_max).then(|| self.meta.to_image());
        Ok((
            Flush { fds },
            PendingSync {
                changes,
                image,
                store: self.store.mark(),
            },
        ))
    }

    /// Commits what `begin_sync` took, after its `Flush` succeeded: the metadata journal
    /// record (the commit point, after the data it describes) and the chunk store's
    /// bookkeeping.
    pub fn finish_sync(&mut self, pending: PendingSync) -> Result<(), FsError> {
        self.check_usable()?;
        self.split_pending = false;
        let r = self.finish_sync_inner(pending);
        r.map_err(|f| self.poison(f))
    }

    fn finish_sync_inner(&mut self, pending: PendingSync) -> Result<(), LocalFault> {
        match &pending.image {
            // Holds the changes too; what was applied since goes with the next sync.
            Some(image) => self.journal.compact_to(image)?,
            None if !pending.changes.is_empty() => self.journal.append(&pending.changes)?,
            None => {}
        }
        self.store
            .synced_since(pending.store)
            .ctx("delete compacted packs")?;
        Ok(())
    }

    /// Sync, fold the journal into a snapshot and mark the shutdown clean, so the next
    /// `open` need not rehash file contents.
    pub fn close(mut self) -> Result<(), FsError> {
        self.sync_all()?;
        // Chunks fetched by an unfinished transfer too: a clean open trusts the store.
        self.store.sync().ctx("sync chunk store")?;
        self.journal.compact(&self.meta)?;
        self.journal.mark_clean()?;
        Ok(())
    }

    /// Digest of the whole replicated state; cheap when little changed since the last
    /// call (only touched chunks, leaves and their ancestors are rehashed).
    pub fn state_digest(&mut self) -> Result<Hash, FsError> {
        if let Some(p) = &self.poisoned {
            return Err(FsError::Poisoned(p.clone()));
        }
        self.refresh_chunks().map_err(|f| self.poison(f))?;
        for id in std::mem::take(&mut self.stale_leaves) {
            let leaf = self.compute_leaf(id);
            self.tree.set_leaf(id, leaf);
        }
        Ok(self.tree.recompute(&self.meta.globals_bytes()))
    }

    /// The Merkle tree as of the last `state_digest` (for state transfer).
    pub fn digest_tree(&self) -> &DigestTree {
        &self.tree
    }

    /// One object's leaf as of the last `state_digest`.
    pub fn leaf(&self, fileid: u64) -> Option<Hash> {
        self.tree.leaf(fileid)
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn root_handle(&self) -> FileHandle {
        FileHandle::root(self.config.generation)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The backing tree (`data_dir/export`).
    pub fn export_dir(&self) -> PathBuf {
        self.data_dir.join(EXPORT_DIR)
    }

    /// Objects found inconsistent after a crash; non-empty means this replica must
    /// restore from the others before serving.
    pub fn damaged(&self) -> &BTreeSet<u64> {
        &self.damaged
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Chunks the chunk store holds that no sync has made durable yet.
    pub fn unsynced_chunks(&self) -> u64 {
        self.store.unsynced().0
    }

    /// How often removed host objects were kept and reused (`spare.rs`).
    pub fn spare_stats(&self) -> crate::spare::SpareStats {
        self.spares.stats
    }

    pub fn object_count(&self) -> usize {
        self.meta.inodes.len()
    }

    pub fn last_sync_stats(&self) -> SyncStats {
        self.last_sync
    }

    /// Whether the metadata tables agree with each other (for tests and debugging).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.meta.check_invariants()
    }

    pub(crate) fn check_usable(&self) -> Result<(), FsError> {
        match &self.poisoned {
            Some(p) => Err(FsError::Poisoned(p.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn poison(&mut self, fault: LocalFault) -> FsError {
        self.poisoned = Some(fault.to_string());
        FsError::LocalFault(fault)
    }

    /// A descriptor for a directory or regular file, opened by walking the metadata
    /// from the nearest cached ancestor (`O_NOFOLLOW`, one component at a time).
    pub(crate) fn fd(&mut self, fileid: u64) -> Result<Arc<File>, LocalFault> {
        open_by_fileid(&self.meta, &self.root, &mut self.fds, fileid)
    }

    /// Record that a regular file's bytes in `[offset, offset+len)` changed and its size
    /// went from `old_size` to `new_size`.
    pub(crate) fn note_content_change(
        &mut self,
        id: u64,
        old_size: u64,
        new_size: u64,
        range: Option<(u64, u64)>,
    ) {
        let count = new_size.div_ceil(CHUNK_BYTES);
        let mut stale = BTreeSet::new();
        if let Some((off, len)) = range
            && len > 0
        {
            stale.extend(off / CHUNK_BYTES..=(off + len - 1) / CHUNK_BYTES);
        }
        // Whole chunks between the old end and the new one are a hole of zeros: their
        // hash is known without reading them, so growing a file by SETATTR (or a WRITE
        // far beyond its end) costs no rehash of up to `maxfilesize` bytes of zeros.
        let mut hole = 0..0;
        if new_size != old_size && count > 0 {
            let from = old_size.min(new_size) / CHUNK_BYTES;
            if new_size > old_size {
                hole = old_size.div_ceil(CHUNK_BYTES)..new_size / CHUNK_BYTES;
                stale.extend(from..hole.start.min(count));
                stale.extend(hole.end.max(from)..count);
            } else {
                stale.extend(from..count);
            }
        }
        stale.retain(|&i| i < count);
        let content = self.meta.content.entry(id).or_default();
        content.chunks.resize(count as usize, [0; 32]);
        if !hole.is_empty() {
            let zeros = digest::zero_chunk_hash();
            for slot in &mut content.chunks[hole.start as usize..hole.end as usize] {
                *slot = zeros;
            }
        }
        let s = self.stale_chunks.entry(id).or_default();
        s.retain(|&i| i < count);
        s.extend(stale.iter().copied());
        let j = self.dirty.chunks_journal.entry(id).or_default();
        j.retain(|&i| i < count);
        j.extend(stale);
        j.extend(hole);
        self.stale_leaves.insert(id);
    }

    /// For a replica, whose checkpoints need every chunk in the chunk store: store each
    /// changed chunk as the digest rehashes it, while its bytes are at hand, rather than
    /// read and hash it again in the checkpoint's capture (an unreplicated server, which
    /// keeps no checkpoints, leaves this off). A chunk overwritten before the next
    /// checkpoint is stored for nothing and dropped by the next `retain_chunks`.
    pub fn store_chunks_when_hashing(&mut self, on: bool) {
        self.store_when_hashing = on;
    }

    /// The commit point of an install or a restore: `meta` becomes the state, the
    /// backing tree having been rebuilt to match it. Everything derived from the old
    /// state goes: the digest tree starts over from the new metadata (marking only the
    /// old and the new objects for rehashing dropped the marks already pending, so an
    /// object removed since the last digest and absent from the new state kept its
    /// leaf, and the installed state never had the wanted digest), and so do dirty and
    /// stale chunks, damage, suspicion, stamps and open descriptors; the journal starts
    /// again from `meta`.
    pub(crate) fn adopt(&mut self, meta: Meta) -> Result<(), LocalFault> {
        self.tree = DigestTree::new();
        self.stale_leaves = meta.inodes.keys().copied().collect();
        self.meta = meta;
        self.dirty = Dirty::default();
        self.stale_chunks.clear();
        self.damaged.clear();
        self.suspect.clear();
        self.stamps.clear();
        self.fds.clear();
        self.journal.compact(&self.meta)
    }

    /// A backing file found shorter than its metadata says, by a READ or by hashing a
    /// chunk a WRITE changed: cut behind our back. That is damage for the checkpoints to
    /// find and repair (as the scrub's finds are), not a fault of this disk to stop for.
    pub(crate) fn found_cut_short(&mut self, id: u64) {
        tracing::warn!(
            fileid = id,
            "backing file shorter than its metadata (tampered or corrupt): this replica's checkpoint will disagree and repair itself"
        );
        self.mark_suspect(id);
    }

    /// Rehash stale chunks from the backing files.
    pub(crate) fn refresh_chunks(&mut self) -> Result<u64, LocalFault> {
        let mut hashed = 0;
        let mut buf = Vec::new();
        let mut shortened = Vec::new();
        for (id, idxs) in std::mem::take(&mut self.stale_chunks) {
            let Some(inode) = self.meta.inodes.get(&id) else {
                continue;
            };
            if inode.ftype != FType3::Reg {
                continue;
            }
            let size = inode.size;
            let f = self.fd(id)?;
            // What the file looks like after our own change (self-repair's reference).
            if let Ok(stamp) = crate::transfer::Stamp::of(&f) {
                self.stamps.insert(id, stamp);
            }
            let content = self
                .meta
                .content
                .get_mut(&id)
                .expect("regular file has content");
            for i in idxs {
                let off = i * CHUNK_BYTES;
                let len = CHUNK_BYTES.min(size - off) as usize;
                buf.resize(len, 0);
                match f.read_exact_at(&mut buf, off) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        shortened.push(id);
                        break;
                    }
                    Err(e) => return Err(e).ctx("read chunk for hashing"),
                }
                let h = digest::chunk_hash(&buf);
                content.chunks[i as usize] = h;
                if self.store_when_hashing {
                    self.store.put_hashed(&h, &buf).ctx("store chunk")?;
                }
                hashed += 1;
            }
        }
        for id in shortened {
            self.found_cut_short(id);
        }
        Ok(hashed)
    }

    pub(crate) fn compute_leaf(&self, id: u64) -> Option<Hash> {
        if self.damaged.contains(&id) {
            return Some(digest::damaged_leaf_hash(id));
        }
        let inode = self.meta.inodes.get(&id)?;
        if self.suspect.contains(&id) {
            return Some(digest::damaged_leaf_hash(id));
        }
        let content = match inode.ftype {
            FType3::Reg => digest::file_content_hash(inode.size, &self.meta.content[&id]),
            FType3::Dir => digest::dir_content_hash(&self.meta.dirs[&id]),
            _ => [0; 32],
        };
        Some(digest::leaf_hash(id, inode, &content))
    }

    fn sync_inner(&mut self) -> Result<(), LocalFault> {
        debug_assert!(
            !self.split_pending,
            "sync between begin_sync and finish_sync"
        );
        // Chunks a deferred capture left (`defer_capture_sync`).
        let store_pending = self.capture_sync_deferred && self.store.unsynced().0 > 0;
        if store_pending {
            self.store.sync().ctx("sync chunk store")?;
        }
        if self.dirty.is_empty() {
            self.last_sync = SyncStats::default();
            return Ok(());
        }
        let mut stats = SyncStats {
            chunks_hashed: self.refresh_chunks()?,
            ..SyncStats::default()
        };
        // Data and directory entries first, the journal record last: the record is the
        // commit point, so after a crash the metadata is never ahead of the tree.
        if self.config.sync_mode == SyncMode::Syncfs
            && !(self.dirty.data_sync.is_empty() && self.dirty.dirs_sync.is_empty())
        {
            rustix::fs::syncfs(&*self.root).ctx("syncfs")?;
            stats.files_synced = self.dirty.data_sync.len() as u64;
            stats.dirs_synced = self.dirty.dirs_sync.len() as u64;
            self.dirty.data_sync.clear();
            self.dirty.dirs_sync.clear();
        }
        for id in std::mem::take(&mut self.dirty.data_sync) {
            if self.meta.inodes.get(&id).map(|i| i.ftype) == Some(FType3::Reg) {
                self.fd(id)?.sync_data().ctx("fdatasync file")?;
                stats.files_synced += 1;
            }
        }
        for id in std::mem::take(&mut self.dirty.dirs_sync) {
            if self.meta.inodes.get(&id).map(|i| i.ftype) == Some(FType3::Dir) {
                self.fd(id)?.sync_all().ctx("fsync directory")?;
                stats.dirs_synced += 1;
            }
        }
        let changes = self.take_changes();
        if !changes.is_empty() {
            let before = self.journal.len();
            self.journal.append(&changes)?;
            stats.journal_bytes = self.journal.len() - before;
        }
        if self.journal.len() > self.config.journal_bytes_max {
            self.journal.compact(&self.meta)?;
        }
        self.last_sync = stats;
        Ok(())
    }

    fn take_changes(&mut self) -> Vec<MetaChange> {
        let mut changes = Vec::new();
        if std::mem::take(&mut self.dirty.globals) {
            changes.push(MetaChange::Globals {
                next_fileid: self.meta.next_fileid,
                last_time_ns: self.meta.last_time_ns,
            });
        }
        for id in std::mem::take(&mut self.dirty.inodes) {
            changes.push(match self.meta.inodes.get(&id) {
                Some(inode) => MetaChange::PutInode(id, inode.clone()),
                None => MetaChange::DelInode(id),
            });
        }
        for (dir, name) in std::mem::take(&mut self.dirty.entries) {
            let entry = self.meta.dirs.get(&dir).and_then(|d| d.get(&name));
            changes.push(match entry {
                Some(entry) => MetaChange::PutEntry { dir, name, entry },
                None => MetaChange::DelEntry { dir, name },
            });
        }
        for (fileid, idxs) in std::mem::take(&mut self.dirty.chunks_journal) {
            if let Some(c) = self.meta.content.get(&fileid) {
                changes.push(MetaChange::Chunks {
                    fileid,
                    count: c.chunks.len() as u64,
                    updates: idxs
                        .into_iter()
                        .filter_map(|i| c.chunks.get(i as usize).map(|h| (i, *h)))
                        .collect(),
                });
            }
        }
        changes
    }

    pub(crate) fn write_policy_unstable(&self) -> bool {
        self.config.unstable_writes == UnstableWrites::DeferToCommit
    }
}

/// The descriptor of regular file or directory `fileid` of `meta`, opened one name at a
/// time from the nearest ancestor `fds` holds (or `root`); what it opens goes into
/// `fds`, so a walk over the whole tree holds at most the cache's bound.
pub(crate) fn open_by_fileid(
    meta: &Meta,
    root: &Arc<File>,
    fds: &mut FdCache,
    fileid: u64,
) -> Result<Arc<File>, LocalFault> {
    if fileid == ROOT_FILEID {
        return Ok(root.clone());
    }
    if let Some(f) = fds.get(fileid) {
        return Ok(f);
    }
    let mut chain = Vec::new();
    let mut cur = fileid;
    let mut base = loop {
        let inode = meta
            .inodes
            .get(&cur)
            .ok_or_else(|| LocalFault::inconsistent(format!("fd of unknown fileid {cur}")))?;
        let kind = match inode.ftype {
            FType3::Dir => HostKind::Dir,
            FType3::Reg => HostKind::File,
            _ => return Err(LocalFault::inconsistent("fd of a non-file")),
        };
        let (parent, name) = inode
            .primary_link()
            .cloned()
            .ok_or_else(|| LocalFault::inconsistent(format!("fileid {cur} has no name")))?;
        chain.push((cur, name, kind));
        if parent == ROOT_FILEID {
            break root.clone();
        }
        if let Some(f) = fds.get(parent) {
            break f;
        }
        cur = parent;
    };
    for (id, name, kind) in chain.into_iter().rev() {
        let f = Arc::new(confine::open_child(&base, &name.0, kind).ctx("open by fileid")?);
        fds.insert(id, f.clone());
        base = f;
    }
    Ok(base)
}
