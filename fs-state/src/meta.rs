//! Replicated metadata: the fileid table, directory entries and content hashes.
//!
//! Everything NFS reports about an object that the host would report differently on
//! each replica (fileid, owner, mode, times, link count, `used`, directory order) lives
//! here and is changed only by `apply`, from the ordered operation and its context.
//! The backing tree holds names and bytes only. Every change is recorded in a dirty set
//! so that `sync()` journals exactly what changed and the digest rehashes only that.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::FsConfig;
use crate::ops::{FType3, Fattr3, FileHandle, Filename3, NfsPath3, NfsTime, SpecData3, WccAttr};

/// Content is hashed in chunks of this size, so a write rehashes only what it touched
/// and state transfer can fetch only the chunks that differ.
pub const CHUNK_BYTES: u64 = 64 << 10;
/// `used` is accounted in blocks of this size.
pub const BLOCK_BYTES: u64 = 4096;
/// `size` and `used` reported for a directory (the host's depends on its history).
pub const DIR_SIZE: u64 = 4096;

/// One file-system object. Serialised into the journal and into the digest leaf, so
/// every field is deterministic and ordered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub ftype: FType3,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: NfsTime,
    pub mtime: NfsTime,
    pub ctime: NfsTime,
    pub generation: u64,
    /// Every name of the object as (directory fileid, name). A directory has exactly
    /// one; the root has none. The first one is the path used on the host.
    pub links: BTreeSet<(u64, Filename3)>,
    /// Symbolic link target (also stored as a real symlink in the backing tree).
    pub target: Option<NfsPath3>,
    /// Verifier of an EXCLUSIVE CREATE, so that its retry finds the file.
    pub create_verf: Option<[u8; 8]>,
    /// Directories: the sequence number the next entry gets (its READDIR cookie).
    pub next_seq: u64,
    /// Directories: number of subdirectories (for `nlink`).
    pub subdirs: u32,
}

impl Inode {
    pub fn nlink(&self) -> u32 {
        match self.ftype {
            FType3::Dir => 2 + self.subdirs,
            _ => self.links.len() as u32,
        }
    }

    pub fn used(&self) -> u64 {
        // A size this large is refused before it gets here (`maxfilesize`, and
        // `checked_used` for metadata from elsewhere).
        self.checked_used().unwrap_or(u64::MAX)
    }

    /// Bytes the object takes (FSSTAT and the quota); `None` when its size is too large
    /// to round up to whole blocks.
    pub fn checked_used(&self) -> Option<u64> {
        match self.ftype {
            FType3::Reg => self.size.div_ceil(BLOCK_BYTES).checked_mul(BLOCK_BYTES),
            FType3::Dir => Some(DIR_SIZE),
            _ => Some(BLOCK_BYTES),
        }
    }

    pub fn wcc(&self) -> WccAttr {
        WccAttr {
            size: self.size,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }

    pub fn primary_link(&self) -> Option<&(u64, Filename3)> {
        self.links.iter().next()
    }

    pub fn handle(&self, fileid: u64) -> FileHandle {
        FileHandle::new(fileid, self.generation)
    }

    pub fn fattr(&self, fileid: u64, config: &FsConfig) -> Fattr3 {
        Fattr3 {
            ftype: self.ftype,
            mode: self.mode & 0o7777,
            nlink: self.nlink(),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            used: self.used(),
            rdev: SpecData3::default(),
            fsid: config.fsid,
            fileid,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }
}

/// A directory entry: the fileid it names and its sequence number, which is also its
/// READDIR cookie. Sequence numbers only grow, so a cookie stays meaningful across
/// pages even while entries are added and removed between them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub seq: u64,
    pub fileid: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub by_name: BTreeMap<Filename3, DirEntry>,
    pub by_seq: BTreeMap<u64, Filename3>,
}

impl Directory {
    pub fn insert(&mut self, name: Filename3, entry: DirEntry) {
        if let Some(old) = self.by_name.insert(name.clone(), entry) {
            self.by_seq.remove(&old.seq);
        }
        self.by_seq.insert(entry.seq, name);
    }

    pub fn remove(&mut self, name: &Filename3) -> Option<DirEntry> {
        let e = self.by_name.remove(name)?;
        self.by_seq.remove(&e.seq);
        Some(e)
    }

    pub fn get(&self, name: &Filename3) -> Option<DirEntry> {
        self.by_name.get(name).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Chunk hashes of a regular file; `chunks.len() == size.div_ceil(CHUNK_BYTES)`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub chunks: Vec<[u8; 32]>,
}

/// What changed since the last `sync()` (to journal) and since the last digest (to
/// rehash). Bounded by the work of one batch.
#[derive(Debug, Default)]
pub struct Dirty {
    pub inodes: BTreeSet<u64>,
    pub entries: BTreeSet<(u64, Filename3)>,
    /// Chunk indices to journal per file (their hashes are fresh by then).
    pub chunks_journal: BTreeMap<u64, BTreeSet<u64>>,
    /// Regular files whose data must be fsynced at the next `sync()`.
    pub data_sync: BTreeSet<u64>,
    /// Regular files with UNSTABLE writes waiting for COMMIT (`DeferToCommit`).
    pub data_unstable: BTreeSet<u64>,
    /// Directories whose host entries changed and must be fsynced.
    pub dirs_sync: BTreeSet<u64>,
    /// `next_fileid` or `last_time_ns` changed.
    pub globals: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.entries.is_empty()
            && self.chunks_journal.is_empty()
            && self.data_sync.is_empty()
            && self.dirs_sync.is_empty()
            && !self.globals
    }
}

/// The replicated metadata of the whole export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub next_fileid: u64,
    /// Time of the last mutating operation: each one gets a strictly later time than
    /// the one before, even within one batch (one primary timestamp), so that clients
    /// see ctime/mtime change on every change.
    pub last_time_ns: u64,
    pub inodes: BTreeMap<u64, Inode>,
    pub dirs: BTreeMap<u64, Directory>,
    pub content: BTreeMap<u64, Content>,
    /// Sum of `used` over all objects (FSSTAT and the quota).
    pub bytes_used: u64,
}

/// The serialised form of `Meta` (snapshot file and state-transfer snapshot).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MetaImage {
    pub next_fileid: u64,
    pub last_time_ns: u64,
    pub inodes: Vec<(u64, Inode)>,
    /// (directory, name, entry)
    pub entries: Vec<(u64, Filename3, DirEntry)>,
    pub content: Vec<(u64, Content)>,
}

impl Meta {
    /// A fresh export: only the root directory, with times at the epoch so that every
    /// replica creates the same one.
    pub fn new_root(config: &FsConfig) -> Self {
        let root = Inode {
            ftype: FType3::Dir,
            mode: config.root_mode & 0o7777,
            uid: config.root_uid,
            gid: config.root_gid,
            size: DIR_SIZE,
            atime: NfsTime::default(),
            mtime: NfsTime::default(),
            ctime: NfsTime::default(),
            generation: config.generation,
            links: BTreeSet::new(),
            target: None,
            create_verf: None,
            next_seq: 1,
            subdirs: 0,
        };
        let mut meta = Meta {
            next_fileid: crate::ops::ROOT_FILEID + 1,
            last_time_ns: 0,
            inodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            content: BTreeMap::new(),
            bytes_used: 0,
        };
        meta.put_inode(crate::ops::ROOT_FILEID, root);
        meta
    }

    /// Insert or replace an inode, keeping `bytes_used`, the directory table and the
    /// content table in step with its type.
    pub fn put_inode(&mut self, fileid: u64, inode: Inode) {
        if let Some(old) = self.inodes.get(&fileid) {
            self.bytes_used -= old.used();
        }
        self.bytes_used += inode.used();
        match inode.ftype {
            FType3::Dir => {
                self.dirs.entry(fileid).or_default();
            }
            FType3::Reg => {
                self.content.entry(fileid).or_default();
            }
            _ => {}
        }
        self.inodes.insert(fileid, inode);
    }

    pub fn del_inode(&mut self, fileid: u64) {
        if let Some(old) = self.inodes.remove(&fileid) {
            self.bytes_used -= old.used();
        }
        self.dirs.remove(&fileid);
        self.content.remove(&fileid);
    }

    /// Change an inode in place, keeping `bytes_used` right.
    pub fn update_inode<R>(&mut self, fileid: u64, f: impl FnOnce(&mut Inode) -> R) -> R {
        let inode = self
            .inodes
            .get_mut(&fileid)
            .expect("update_inode of a fileid that was resolved before");
        let before = inode.used();
        let r = f(inode);
        let after = inode.used();
        self.bytes_used = self.bytes_used - before + after;
        r
    }

    /// Replicated state that belongs to no object, as hashed into the digest.
    pub fn globals_bytes(&self) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&self.next_fileid.to_be_bytes());
        b[8..].copy_from_slice(&self.last_time_ns.to_be_bytes());
        b
    }

    pub fn to_image(&self) -> MetaImage {
        MetaImage {
            next_fileid: self.next_fileid,
            last_time_ns: self.last_time_ns,
            inodes: self.inodes.iter().map(|(k, v)| (*k, v.clone())).collect(),
            entries: self
                .dirs
                .iter()
                .flat_map(|(d, dir)| dir.by_name.iter().map(|(n, e)| (*d, n.clone(), *e)))
                .collect(),
            content: self.content.iter().map(|(k, v)| (*k, v.clone())).collect(),
        }
    }

    pub fn from_image(image: MetaImage) -> Self {
        let mut meta = Meta {
            next_fileid: image.next_fileid,
            last_time_ns: image.last_time_ns,
            inodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            content: BTreeMap::new(),
            bytes_used: 0,
        };
        for (fileid, inode) in image.inodes {
            meta.put_inode(fileid, inode);
        }
        for (dir, name, entry) in image.entries {
            meta.dirs.entry(dir).or_default().insert(name, entry);
        }
        for (fileid, content) in image.content {
            meta.content.insert(fileid, content);
        }
        meta
    }

    /// Structural invariants between the tables; checked after loading and in tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let root = self
            .inodes
            .get(&crate::ops::ROOT_FILEID)
            .ok_or("no root inode")?;
        if root.ftype != FType3::Dir || !root.links.is_empty() {
            return Err("root is not a linkless directory".into());
        }
        let mut used = 0u64;
        for (&fileid, inode) in &self.inodes {
            if fileid >= self.next_fileid {
                return Err(format!("fileid {fileid} >= next_fileid"));
            }
            used += inode.used();
            if inode.ftype == FType3::Dir
                && fileid != crate::ops::ROOT_FILEID
                && inode.links.len() != 1
            {
                return Err(format!(
                    "directory {fileid} has {} links",
                    inode.links.len()
                ));
            }
            for (dir, name) in &inode.links {
                let e = self
                    .dirs
                    .get(dir)
                    .and_then(|d| d.get(name))
                    .ok_or_else(|| format!("link ({dir}, {name:?}) of {fileid} missing"))?;
                if e.fileid != fileid {
                    return Err(format!(
                        "entry ({dir}, {name:?}) names {} not {fileid}",
                        e.fileid
                    ));
                }
            }
            if inode.ftype == FType3::Reg {
                let c = self
                    .content
                    .get(&fileid)
                    .ok_or("regular file without content")?;
                if c.chunks.len() as u64 != inode.size.div_ceil(CHUNK_BYTES) {
                    return Err(format!(
                        "file {fileid} has {} chunks for size {}",
                        c.chunks.len(),
                        inode.size
                    ));
                }
            }
        }
        if used != self.bytes_used {
            return Err(format!(
                "bytes_used {} but objects use {used}",
                self.bytes_used
            ));
        }
        for (&d, dir) in &self.dirs {
            let inode = self
                .inodes
                .get(&d)
                .ok_or("entries of a missing directory")?;
            let mut subdirs = 0;
            for (name, e) in &dir.by_name {
                if e.seq >= inode.next_seq {
                    return Err(format!(
                        "entry seq {} >= next_seq {}",
                        e.seq, inode.next_seq
                    ));
                }
                let child = self
                    .inodes
                    .get(&e.fileid)
                    .ok_or_else(|| format!("entry {name:?} names missing {}", e.fileid))?;
                if !child.links.contains(&(d, name.clone())) {
                    return Err(format!(
                        "entry ({d}, {name:?}) not among its target's links"
                    ));
                }
                if child.ftype == FType3::Dir {
                    subdirs += 1;
                }
            }
            if subdirs != inode.subdirs {
                return Err(format!(
                    "directory {d} counts {} subdirs, has {subdirs}",
                    inode.subdirs
                ));
            }
            if dir.by_seq.len() != dir.by_name.len() {
                return Err("by_seq and by_name differ".into());
            }
        }
        Ok(())
    }
}
