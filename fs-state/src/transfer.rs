//! Fine-grained checkpoints, state transfer and self-repair (issue 6).
//!
//! A checkpoint of the file state is a **manifest**: the replicated metadata, which
//! already holds every regular file's 64 KiB chunk hashes, so the manifest alone
//! determines the state digest (`FsManifest::verify`). File contents live in a
//! content-addressed **chunk store** (`data_dir/chunks/`, pack files of chunks indexed by
//! `digest::chunk_hash` of their bytes; `chunks.rs`): a checkpoint copies in only the
//! chunks no earlier checkpoint stored, so checkpoints share unchanged data, and
//! `retain_chunks` drops what no retained manifest references.
//!
//! A lagging replica verifies a peer's manifest against the certified digest, asks
//! `missing_chunks` for what its own store lacks, stores each fetched chunk after checking
//! its hash (`put_chunk`), and then `install`s: files whose content is unchanged are kept
//! (hard-linked aside), the others are written from the store (each chunk rehashed as it
//! is read), the tree is rebuilt from the manifest's namespace, and the metadata snapshot
//! is the commit point. A crash at any step leaves either the old metadata (the reopen
//! check repairs the tree, the replica restores its stable checkpoint from its store) or
//! the new one.
//!
//! Self-repair: the backing tree can be changed behind the replica's back. `scrub`, run at
//! each checkpoint, compares every regular file's host size/mtime/ctime/inode with what
//! was recorded when the state machine last wrote or checked it, rehashes a file whose
//! stamp moved, and rehashes a bounded number of further chunks in rolling order (for a
//! change that kept the stamp). A file whose bytes disagree with the metadata becomes
//! *suspect*: its digest leaf is the damaged marker, so this replica's checkpoint digest
//! differs from the correct replicas', the consensus core's self-repair path asks for
//! the certified state, and `install` rewrites only the suspect files' contents.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::confine::{self, FdCache};
use crate::digest::{self, DigestTree, Hash};
use crate::error::{Ctx, FsError, LocalFault};
use crate::meta::{CHUNK_BYTES, Meta, MetaImage};
use crate::ops::{DecodeError, FType3, Filename3, ROOT_FILEID};
use crate::state::{FileStateMachine, open_by_fileid};

pub use crate::chunks::ChunkStore;

pub const CHUNK_DIR: &str = "chunks";
/// Where `install` stages file contents (same file system as the export).
const STAGING_DIR: &str = "install";

/// A checkpoint of the file state: the replicated metadata with its chunk hashes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsManifest {
    pub meta: MetaImage,
}

impl FsManifest {
    pub fn encode(&self) -> Vec<u8> {
        crate::ops::encode(self)
    }

    /// Decode a manifest from another replica (bounded by the decoder's limit).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::ops::decode(bytes)
    }

    /// Decode this replica's own stored manifest.
    pub fn decode_local(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::ops::decode_local(bytes)
    }

    /// Checks that the manifest is self-consistent and acceptable for `config`, and
    /// returns the state digest it describes (the caller compares it with the
    /// certified one before fetching anything).
    pub fn verify(&self, config: &crate::FsConfig) -> Result<Hash, FsError> {
        let meta = checked_meta(&self.meta, config)?;
        Ok(meta_digest(&meta))
    }

    /// Every chunk hash the manifest references.
    pub fn chunk_hashes(&self) -> BTreeSet<Hash> {
        self.meta
            .content
            .iter()
            .flat_map(|(_, c)| c.chunks.iter().copied())
            .collect()
    }

    /// Bytes of regular-file content the manifest describes.
    pub fn content_bytes(&self) -> u64 {
        self.meta
            .inodes
            .iter()
            .filter(|(_, i)| i.ftype == FType3::Reg)
            .map(|(_, i)| i.size)
            .sum()
    }
}

/// The digest of a whole metadata table, computed from scratch.
fn meta_digest(meta: &Meta) -> Hash {
    let mut tree = DigestTree::new();
    for (id, inode) in &meta.inodes {
        let content = match inode.ftype {
            FType3::Reg => digest::file_content_hash(inode.size, &meta.content[id]),
            FType3::Dir => digest::dir_content_hash(&meta.dirs[id]),
            _ => [0; 32],
        };
        tree.set_leaf(*id, Some(digest::leaf_hash(*id, inode, &content)));
    }
    tree.recompute(&meta.globals_bytes())
}

/// The checks `restore` makes on metadata from elsewhere.
pub(crate) fn checked_meta(image: &MetaImage, config: &crate::FsConfig) -> Result<Meta, FsError> {
    // `Meta` sums every object's `used` as it loads: a size that overflows that sum
    // (a panic with overflow checks) is refused first.
    let mut used = 0u64;
    for (id, inode) in &image.inodes {
        used = inode
            .checked_used()
            .and_then(|u| used.checked_add(u))
            .ok_or_else(|| FsError::BadSnapshot(format!("size of {id}")))?;
    }
    let meta = Meta::from_image(image.clone());
    meta.check_invariants().map_err(FsError::BadSnapshot)?;
    let root_gen = meta.inodes[&ROOT_FILEID].generation;
    if root_gen != config.generation {
        return Err(FsError::BadSnapshot(format!("generation {root_gen}")));
    }
    if meta.inodes.len() != image.inodes.len() || meta.content.len() != image.content.len() {
        return Err(FsError::BadSnapshot("duplicate objects".into()));
    }
    for (id, inode) in &meta.inodes {
        if !matches!(inode.ftype, FType3::Reg | FType3::Dir | FType3::Lnk) {
            return Err(FsError::BadSnapshot(format!("type of {id}")));
        }
        if inode.ftype == FType3::Lnk {
            let ok = inode.target.as_ref().is_some_and(|t| {
                !t.0.is_empty() && !t.0.contains(&0) && t.0.len() <= config.path_max as usize
            });
            if !ok {
                return Err(FsError::BadSnapshot(format!("symlink target of {id}")));
            }
        }
    }
    for id in meta.content.keys() {
        if meta.inodes.get(id).map(|i| i.ftype) != Some(FType3::Reg) {
            return Err(FsError::BadSnapshot(format!("content of non-file {id}")));
        }
    }
    for (name, _) in meta.dirs.values().flat_map(|d| d.by_name.iter()) {
        if confine::check_name(name, config.name_max, confine::NameUse::Create).is_err() {
            return Err(FsError::BadSnapshot(format!("name {name:?}")));
        }
    }
    Ok(meta)
}

/// What a host file looked like when the state machine last wrote or verified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

impl Stamp {
    pub(crate) fn of(f: &File) -> std::io::Result<Stamp> {
        let m = f.metadata()?;
        Ok(Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        })
    }

    /// The same stamp from a `stat` of the file's name (`Stamp::of` needs it open).
    fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
            ino: st.st_ino,
        }
    }
}

/// A file whose stamp a scrub checks: (fileid, size, its primary link).
type DueStamp = (u64, u64, Option<(u64, Filename3)>);

/// `files` (by ascending fileid) in rolling order: from fileid `from` on, then round to
/// the start.
fn rolling_from(files: &[(u64, u64)], from: u64) -> impl Iterator<Item = &(u64, u64)> {
    let split = files.partition_point(|(id, _)| *id < from);
    files[split..].iter().chain(&files[..split])
}

/// What a checkpoint's `capture` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub chunks_stored: u64,
    pub bytes_stored: u64,
    /// Time spent reading, checking and storing the new chunks, and in the sync after.
    pub copy_us: u64,
    pub sync_us: u64,
}

/// What a `scrub` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStats {
    pub files_checked: u64,
    pub files_rehashed: u64,
    pub chunks_rehashed: u64,
    /// Files found to differ from the metadata in this scrub.
    pub found: Vec<u64>,
}

/// What an `install` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstallStats {
    pub files_kept: u64,
    pub files_written: u64,
    pub bytes_written: u64,
}

impl FileStateMachine {
    /// The checkpoint of the current state: stores every chunk the store lacks (read back
    /// from the export, checked against the metadata, made durable) and returns the
    /// manifest. Call right after the checkpoint batch's `state_digest`.
    pub fn checkpoint(&mut self) -> Result<(FsManifest, CaptureStats), FsError> {
        self.check_usable()?;
        let r = self.capture_inner();
        r.map_err(|f| self.poison(f))
    }

    fn capture_inner(&mut self) -> Result<(FsManifest, CaptureStats), LocalFault> {
        self.refresh_chunks()?;
        let mut stats = CaptureStats::default();
        let regs: Vec<(u64, u64)> = self
            .meta
            .inodes
            .iter()
            .filter(|(id, i)| {
                i.ftype == FType3::Reg && !self.suspect.contains(id) && !self.damaged.contains(id)
            })
            .map(|(id, i)| (*id, i.size))
            .collect();
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        for (id, size) in regs {
            let missing: Vec<(usize, Hash)> = self.meta.content[&id]
                .chunks
                .iter()
                .enumerate()
                .filter(|(_, h)| !self.store.has(h))
                .map(|(i, h)| (i, *h))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let f = self.fd(id)?;
            for (i, h) in missing {
                let off = i as u64 * CHUNK_BYTES;
                buf.resize(CHUNK_BYTES.min(size - off) as usize, 0);
                if f.read_exact_at(&mut buf, off).is_err() || digest::chunk_hash(&buf) != h {
                    // Changed behind our back since it was hashed: self-repair.
                    self.mark_suspect(id);
                    break;
                }
                self.store.put_hashed(&h, &buf).ctx("store chunk")?;
            }
        }
        stats.copy_us = started.elapsed().as_micros() as u64;
        // With the chunks the digest stored as it hashed them (`store_chunks_when_hashing`).
        (stats.chunks_stored, stats.bytes_stored) = self.store.unsynced();
        if stats.chunks_stored > 0 && !self.capture_sync_deferred {
            let started = std::time::Instant::now();
            self.store.sync().ctx("sync chunk store")?;
            stats.sync_us = started.elapsed().as_micros() as u64;
        }
        Ok((
            FsManifest {
                meta: self.meta.to_image(),
            },
            stats,
        ))
    }

    pub(crate) fn mark_suspect(&mut self, id: u64) {
        self.suspect.insert(id);
        self.stale_leaves.insert(id);
        self.stamps.remove(&id);
    }

    /// Objects whose backing file was found to differ from the metadata (tampered with
    /// or corrupted); repaired by the next `install`.
    pub fn suspect(&self) -> &BTreeSet<u64> {
        &self.suspect
    }

    /// Compares the backing files with the metadata (every file's stamp, plus
    /// `rehash_chunks` chunks of rolling rehash) and marks what differs as suspect, so
    /// that the next `state_digest` reflects what is really on disk.
    pub fn scrub(&mut self, rehash_chunks: u64) -> Result<ScrubStats, FsError> {
        self.scrub_within(u64::MAX, rehash_chunks)
    }

    /// `scrub` with the stamp check bounded too: the stamps of at most `stamp_files`
    /// regular files, in rolling fileid order from where the last call stopped, so a
    /// file changed behind our back is found within `files / stamp_files` calls. An
    /// unbounded check costs O(files) at every checkpoint, on the replica's protocol
    /// thread: a `stat` per file and, past the open-file cache, an open of its
    /// directory (2–4 ms in the macro-benchmark's last phase).
    pub fn scrub_within(
        &mut self,
        stamp_files: u64,
        rehash_chunks: u64,
    ) -> Result<ScrubStats, FsError> {
        self.check_usable()?;
        let r = self.scrub_inner(stamp_files, rehash_chunks);
        r.map_err(|f| self.poison(f))
    }

    fn scrub_inner(
        &mut self,
        stamp_files: u64,
        rehash_chunks: u64,
    ) -> Result<ScrubStats, LocalFault> {
        self.refresh_chunks()?;
        let inodes = &self.meta.inodes;
        self.suspect.retain(|id| inodes.contains_key(id));
        self.stamps.retain(|id, _| inodes.contains_key(id));
        let mut stats = ScrubStats::default();
        let regs: Vec<(u64, u64)> = self
            .meta
            .inodes
            .iter()
            .filter(|(id, i)| {
                i.ftype == FType3::Reg && !self.suspect.contains(id) && !self.damaged.contains(id)
            })
            .map(|(id, i)| (*id, i.size))
            .collect();
        let mut due: Vec<DueStamp> = rolling_from(&regs, self.stamp_cursor)
            .take(usize::try_from(stamp_files).unwrap_or(usize::MAX))
            .map(|&(id, size)| (id, size, self.meta.inodes[&id].primary_link().cloned()))
            .collect();
        self.stamp_cursor = match due.last() {
            Some((last, ..)) if due.len() < regs.len() => last + 1,
            // Went round everything: start over next time.
            _ => 0,
        };
        // By name in the parent directory, a directory at a time: a file need not be
        // opened (past the open-file cache, an open of it and perhaps of its
        // directories, then a close, for every file at every checkpoint).
        due.sort_by_key(|(id, _, link)| (link.as_ref().map(|(p, _)| *p), *id));
        let mut dir: Option<(u64, Arc<File>)> = None;
        for (id, size, link) in due {
            let by_name = match &link {
                Some((parent, name)) => {
                    let parent_fd = match &dir {
                        Some((p, f)) if p == parent => f.clone(),
                        _ => {
                            let f = self.fd(*parent)?;
                            dir = Some((*parent, f.clone()));
                            f
                        }
                    };
                    confine::stat_child(&parent_fd, &name.0)
                        .ok()
                        .filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
                        .map(|st| Stamp::of_stat(&st))
                }
                None => None,
            };
            // Not a regular file under its name: the open says why, as it always did.
            let stamp = match by_name {
                Some(stamp) => stamp,
                None => {
                    let f = self.fd(id)?;
                    Stamp::of(&f).ctx("stat for scrub")?
                }
            };
            stats.files_checked += 1;
            match self.stamps.get(&id) {
                Some(s) if *s == stamp => continue,
                // First sight since open or install: trust it (the rolling rehash
                // catches what this misses).
                None if stamp.size == size => {
                    self.stamps.insert(id, stamp);
                    continue;
                }
                _ => {}
            }
            stats.files_rehashed += 1;
            // The object under the name, not a descriptor the cache may still hold of
            // one renamed over since: that one could verify while the name serves other
            // bytes.
            self.fds.remove(id);
            let f = self.fd(id)?;
            let (ok, n) = self.verify_file(&f, id, size)?;
            stats.chunks_rehashed += n;
            if ok {
                self.stamps.insert(id, stamp);
            } else {
                self.mark_suspect(id);
                stats.found.push(id);
            }
        }
        // Rolling rehash from the cursor.
        let mut budget = rehash_chunks;
        let mut buf = Vec::new();
        let start = self.scrub_cursor;
        for &(id, size) in rolling_from(&regs, start.0) {
            if budget == 0 {
                break;
            }
            if self.suspect.contains(&id) {
                continue;
            }
            let count = size.div_ceil(CHUNK_BYTES);
            let from = if id == start.0 { start.1 } else { 0 };
            let f = self.fd(id)?;
            let mut i = from;
            while i < count && budget > 0 {
                let off = i * CHUNK_BYTES;
                buf.resize(CHUNK_BYTES.min(size - off) as usize, 0);
                let ok = f.read_exact_at(&mut buf, off).is_ok()
                    && digest::chunk_hash(&buf) == self.meta.content[&id].chunks[i as usize];
                stats.chunks_rehashed += 1;
                budget -= 1;
                i += 1;
                if !ok {
                    self.mark_suspect(id);
                    stats.found.push(id);
                    i = count;
                }
            }
            self.scrub_cursor = if i < count { (id, i) } else { (id + 1, 0) };
        }
        if budget > 0 {
            // Went round everything: start over next time.
            self.scrub_cursor = (0, 0);
        }
        Ok(stats)
    }

    /// Rehashes a whole file against the metadata: (matches, chunks read).
    fn verify_file(&self, f: &File, id: u64, size: u64) -> Result<(bool, u64), LocalFault> {
        let host = f.metadata().ctx("stat for verification")?.len();
        if host != size {
            return Ok((false, 0));
        }
        let mut buf = Vec::new();
        let mut n = 0;
        for (i, expected) in self.meta.content[&id].chunks.iter().enumerate() {
            let off = i as u64 * CHUNK_BYTES;
            buf.resize(CHUNK_BYTES.min(size - off) as usize, 0);
            n += 1;
            if f.read_exact_at(&mut buf, off).is_err() || digest::chunk_hash(&buf) != *expected {
                return Ok((false, n));
            }
        }
        Ok((true, n))
    }

    /// Whether the chunk store holds `h`.
    pub fn has_chunk(&self, h: &Hash) -> bool {
        self.store.has(h)
    }

    /// A stored chunk (verified), for a peer's state transfer.
    pub fn get_chunk(&mut self, h: &Hash) -> Result<Option<Vec<u8>>, FsError> {
        Ok(self.store.get(h).ctx("read chunk")?)
    }

    /// Stores a fetched chunk; `false` if `data` does not hash to `h` (bad peer data).
    pub fn put_chunk(&mut self, h: &Hash, data: &[u8]) -> Result<bool, FsError> {
        if data.len() as u64 > CHUNK_BYTES || digest::chunk_hash(data) != *h {
            return Ok(false);
        }
        self.store.put_hashed(h, data).ctx("store fetched chunk")?;
        Ok(true)
    }

    /// The chunks `manifest` needs that the store lacks, in manifest order, each once.
    pub fn missing_chunks(&self, manifest: &FsManifest) -> Vec<Hash> {
        let mut seen = BTreeSet::new();
        manifest
            .meta
            .content
            .iter()
            .flat_map(|(_, c)| c.chunks.iter())
            .filter(|h| !self.store.has(h) && seen.insert(**h))
            .copied()
            .collect()
    }

    /// Deletes stored chunks that none of `keep` references.
    pub fn retain_chunks<'a>(
        &mut self,
        keep: impl IntoIterator<Item = &'a FsManifest>,
    ) -> Result<usize, FsError> {
        let mut set = BTreeSet::new();
        for m in keep {
            set.extend(m.chunk_hashes());
        }
        Ok(self.store.retain(&set).ctx("chunk garbage collection")?)
    }

    pub fn chunk_count(&self) -> usize {
        self.store.len()
    }

    /// A state transfer starts: nothing is applied until `transfer_ended`.
    pub fn transfer_started(&mut self) {
        self.in_transfer = true;
    }

    pub fn transfer_ended(&mut self) {
        self.in_transfer = false;
    }

    pub fn in_transfer(&self) -> bool {
        self.in_transfer
    }

    /// Replaces the state by `manifest`, whose chunks must all be in the store (see
    /// `missing_chunks`). Keeps files whose content is unchanged, writes the others from
    /// the store, rebuilds the namespace, commits the metadata, and returns the new
    /// digest (equal to `manifest.verify`'s unless the store was corrupted meanwhile, in
    /// which case this is an error). Clears poisoned, damaged and suspect state.
    pub fn install(&mut self, manifest: &FsManifest) -> Result<(Hash, InstallStats), FsError> {
        debug_assert!(
            !self.split_pending,
            "install between begin_sync and finish_sync"
        );
        let meta = checked_meta(&manifest.meta, &self.config)?;
        let want = meta_digest(&meta);
        let stats = self.install_inner(meta).map_err(|e| match e {
            InstallError::Local(f) => self.poison(f),
            InstallError::Missing(h) => {
                FsError::BadSnapshot(format!("chunk {} not in the store", crate::chunks::hex(&h)))
            }
        })?;
        self.poisoned = None;
        let got = self.state_digest()?;
        if got != want {
            return Err(FsError::BadSnapshot(
                "installed state has another digest".into(),
            ));
        }
        Ok((got, stats))
    }

    fn install_inner(&mut self, meta: Meta) -> Result<InstallStats, InstallError> {
        let mut stats = InstallStats::default();
        self.fds.clear();
        let staging_path = self.data_dir.join(crate::state::META_DIR).join(STAGING_DIR);
        if staging_path.exists() {
            std::fs::remove_dir_all(&staging_path).ctx("clear staging")?;
        }
        std::fs::create_dir_all(&staging_path).ctx("create staging")?;
        let staging = File::from(
            rustix::fs::open(
                &staging_path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ctx("open staging")?,
        );
        // 1. Every regular file's content, staged under its fileid.
        for (id, inode) in &meta.inodes {
            if inode.ftype != FType3::Reg {
                continue;
            }
            let name = id.to_string().into_bytes();
            let keep = self.meta.inodes.get(id).is_some_and(|cur| {
                cur.ftype == FType3::Reg
                    && cur.size == inode.size
                    && self.meta.content.get(id) == meta.content.get(id)
            }) && !self.suspect.contains(id)
                && !self.damaged.contains(id)
                && self.stale_chunks.get(id).is_none_or(|s| s.is_empty());
            if keep && self.link_current(*id, &staging, &name).is_ok() {
                stats.files_kept += 1;
                continue;
            }
            let f = confine::create_file(&staging, &name).ctx("create staged file")?;
            for (i, h) in meta.content[id].chunks.iter().enumerate() {
                let data = self
                    .store
                    .get(h)
                    .ctx("read chunk")?
                    .ok_or(InstallError::Missing(*h))?;
                let off = i as u64 * CHUNK_BYTES;
                let len = CHUNK_BYTES.min(inode.size - off);
                if data.len() as u64 != len {
                    return Err(InstallError::Missing(*h));
                }
                f.write_all_at(&data, off).ctx("write staged file")?;
                stats.bytes_written += len;
            }
            f.set_len(inode.size).ctx("size staged file")?;
            stats.files_written += 1;
        }
        // 2. The namespace, from scratch; regular files move in from staging.
        for name in confine::list_dir(&self.root).ctx("list export")? {
            confine::remove_tree(&self.root, &name).ctx("clear export")?;
        }
        // Where each object was placed first, and the directories still to fill, by
        // fileid: descriptors come from a cache of bounded size, so a tree wider or
        // deeper than the open-file limit is placed all the same.
        let mut fds = FdCache::new(self.config.open_files_max);
        let mut placed: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
        let mut queue = vec![ROOT_FILEID];
        while let Some(d) = queue.pop() {
            let dfd = open_by_fileid(&meta, &self.root, &mut fds, d)?;
            for name in meta.dirs[&d].by_seq.values() {
                let id = meta.dirs[&d].by_name[name].fileid;
                let inode = &meta.inodes[&id];
                if let Some((pd, pname)) = placed.get(&id) {
                    let pfd = open_by_fileid(&meta, &self.root, &mut fds, *pd)?;
                    confine::link(&pfd, pname, &dfd, &name.0).ctx("install link")?;
                    continue;
                }
                match inode.ftype {
                    FType3::Dir => {
                        confine::mkdir(&dfd, &name.0).ctx("install mkdir")?;
                        queue.push(id);
                    }
                    FType3::Lnk => {
                        let t = inode.target.as_ref().expect("checked_meta");
                        confine::symlink(&dfd, &name.0, &t.0).ctx("install symlink")?;
                    }
                    _ => {
                        let staged = id.to_string().into_bytes();
                        confine::rename(&staging, &staged, &dfd, &name.0).ctx("install file")?;
                    }
                }
                placed.insert(id, (d, name.0.clone()));
            }
        }
        rustix::fs::syncfs(&*self.root).ctx("syncfs after install")?;
        // The fetched chunks too, should the store live on another file system.
        self.store.sync().ctx("sync chunk store after install")?;
        // 3. The commit point: the new metadata.
        self.adopt(meta)?;
        drop(staging);
        let _ = std::fs::remove_dir_all(&staging_path);
        Ok(stats)
    }

    /// Hard-links the current backing file of `id` into `dir` as `name`.
    fn link_current(&mut self, id: u64, dir: &File, name: &[u8]) -> Result<(), LocalFault> {
        let (parent, pname) = self.meta.inodes[&id]
            .primary_link()
            .cloned()
            .ok_or_else(|| LocalFault::inconsistent("file without a name"))?;
        let pfd = self.fd(parent)?;
        confine::link(&pfd, &pname.0, dir, name).ctx("link kept file")?;
        Ok(())
    }
}

enum InstallError {
    Local(LocalFault),
    Missing(Hash),
}

impl From<LocalFault> for InstallError {
    fn from(f: LocalFault) -> Self {
        InstallError::Local(f)
    }
}
