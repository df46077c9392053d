//! Crash recovery and state transfer hooks.
//!
//! The journal record written by `sync()` is the commit point of a batch, so after a
//! crash the metadata is exactly the last synced batch, while the backing tree may
//! carry part of the next one. `check_tree` compares the two: entries the metadata does
//! not know are removed (creations of the lost batch); what cannot be undone locally
//! (lost or overwritten data, a missing or renamed entry) marks the object damaged,
//! which makes its digest leaf differ, so the checkpoint protocol sees this replica as
//! behind and state transfer (DESIGN.md, "Replicas persist their state") fetches it.
//! `snapshot`/`restore` are that transfer in its coarse form: all metadata plus every
//! regular file's bytes. The digest tree (`digest_tree`, `leaf`) already tells which
//! objects differ, for a finer transfer later.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::confine::{self, FdCache, HostKind};
use crate::digest::{self, Hash};
use crate::error::{Ctx, FsError, LocalFault};
use crate::meta::{CHUNK_BYTES, Meta, MetaImage};
use crate::ops::{DecodeError, FType3, Filename3, ROOT_FILEID};
use crate::state::{FileStateMachine, open_by_fileid};

/// Walk the backing tree against the metadata. `deep`: also rehash every regular
/// file (after an unclean shutdown).
pub(crate) fn check_tree(sm: &mut FileStateMachine, deep: bool) -> Result<(), LocalFault> {
    let mut damaged = BTreeSet::new();
    let mut inos: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    // Directories still to walk, by fileid: their descriptors come from the bounded
    // cache, so a tree wider or deeper than the open-file limit walks all the same.
    let mut queue = vec![ROOT_FILEID];
    let mut buf = Vec::new();
    while let Some(d) = queue.pop() {
        let dfd = sm.fd(d)?;
        let host: BTreeSet<Vec<u8>> = confine::list_dir(&dfd)
            .ctx("list directory")?
            .into_iter()
            .collect();
        let dir = sm.meta.dirs[&d].clone();
        for name in &host {
            if !dir.by_name.contains_key(&Filename3(name.clone())) {
                confine::remove_tree(&dfd, name).ctx("remove entry unknown to metadata")?;
            }
        }
        for (name, e) in &dir.by_name {
            let id = e.fileid;
            let inode = &sm.meta.inodes[&id];
            if !host.contains(&name.0) {
                damaged.insert(id);
                continue;
            }
            let st = confine::stat_child(&dfd, &name.0).ctx("stat entry")?;
            let host_type = rustix::fs::FileType::from_raw_mode(st.st_mode);
            let expected = match inode.ftype {
                FType3::Dir => rustix::fs::FileType::Directory,
                FType3::Lnk => rustix::fs::FileType::Symlink,
                _ => rustix::fs::FileType::RegularFile,
            };
            if host_type != expected {
                damaged.insert(id);
                continue;
            }
            let ino = (st.st_dev, st.st_ino);
            if *inos.entry(id).or_insert(ino) != ino {
                damaged.insert(id);
                continue;
            }
            match inode.ftype {
                FType3::Dir => queue.push(id),
                FType3::Lnk => {
                    let target = confine::readlink(&dfd, &name.0).ctx("readlink")?;
                    if Some(&target) != inode.target.as_ref().map(|t| &t.0) {
                        damaged.insert(id);
                    }
                }
                _ => {
                    if st.st_size as u64 != inode.size {
                        damaged.insert(id);
                    } else if deep && inode.links.iter().next() == Some(&(d, name.clone())) {
                        let f =
                            confine::open_child(&dfd, &name.0, HostKind::File).ctx("open file")?;
                        let chunks = &sm.meta.content[&id].chunks;
                        for (i, expected) in chunks.iter().enumerate() {
                            let off = i as u64 * CHUNK_BYTES;
                            buf.resize(CHUNK_BYTES.min(inode.size - off) as usize, 0);
                            f.read_exact_at(&mut buf, off)
                                .ctx("read for verification")?;
                            if digest::chunk_hash(&buf) != *expected {
                                damaged.insert(id);
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    sm.stale_leaves.extend(damaged.iter().copied());
    sm.damaged = damaged;
    // The walk may have removed entries through descriptors the cache does not hold;
    // start the cache afresh.
    sm.fds.clear();
    Ok(())
}

/// One regular file's bytes in a snapshot (written at its first link).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub fileid: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The whole replicated state: metadata plus file contents. Coarse (everything, in
/// memory); a finer transfer walks `digest_tree` and fetches only differing objects.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FsSnapshot {
    pub meta: MetaImage,
    pub files: Vec<SnapshotFile>,
}

impl FsSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        crate::ops::encode(self)
    }

    /// Decode a snapshot from another replica (no size limit: it is as large as the
    /// export; verify `restore`'s digest against the checkpoint certificate).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::ops::decode_local(bytes)
    }
}

impl FileStateMachine {
    /// Everything applied so far, for a replica that restores from it.
    pub fn snapshot(&mut self) -> Result<FsSnapshot, FsError> {
        self.check_usable()?;
        let r = self.snapshot_inner();
        r.map_err(|f| self.poison(f))
    }

    fn snapshot_inner(&mut self) -> Result<FsSnapshot, LocalFault> {
        self.refresh_chunks()?;
        let regs: Vec<(u64, u64)> = self
            .meta
            .inodes
            .iter()
            .filter(|(_, i)| i.ftype == FType3::Reg)
            .map(|(id, i)| (*id, i.size))
            .collect();
        let mut files = Vec::with_capacity(regs.len());
        for (fileid, size) in regs {
            let f = self.fd(fileid)?;
            let mut data = vec![0; size as usize];
            f.read_exact_at(&mut data, 0).ctx("read for snapshot")?;
            files.push(SnapshotFile { fileid, data });
        }
        Ok(FsSnapshot {
            meta: self.meta.to_image(),
            files,
        })
    }

    /// Replace the whole state by `snapshot`: check it is self-consistent, rebuild the
    /// backing tree from it, make it durable, and return the new digest (which the
    /// caller compares with the stable checkpoint's). Clears a poisoned or damaged
    /// state: this is the recovery path.
    pub fn restore(&mut self, snapshot: &FsSnapshot) -> Result<Hash, FsError> {
        let meta = Meta::from_image(snapshot.meta.clone());
        meta.check_invariants().map_err(FsError::BadSnapshot)?;
        let root_gen = meta.inodes[&ROOT_FILEID].generation;
        if root_gen != self.config.generation {
            return Err(FsError::BadSnapshot(format!("generation {root_gen}")));
        }
        let mut data: BTreeMap<u64, &[u8]> = BTreeMap::new();
        for f in &snapshot.files {
            let inode = meta
                .inodes
                .get(&f.fileid)
                .filter(|i| i.ftype == FType3::Reg)
                .ok_or_else(|| FsError::BadSnapshot(format!("data for non-file {}", f.fileid)))?;
            if inode.size != f.data.len() as u64 {
                return Err(FsError::BadSnapshot(format!("size of {}", f.fileid)));
            }
            let chunks: Vec<Hash> = f
                .data
                .chunks(CHUNK_BYTES as usize)
                .map(digest::chunk_hash)
                .collect();
            if chunks != meta.content[&f.fileid].chunks {
                return Err(FsError::BadSnapshot(format!("content of {}", f.fileid)));
            }
            data.insert(f.fileid, &f.data);
        }
        for (id, inode) in &meta.inodes {
            if inode.ftype == FType3::Reg && !data.contains_key(id) {
                return Err(FsError::BadSnapshot(format!("no data for {id}")));
            }
            if !matches!(inode.ftype, FType3::Reg | FType3::Dir | FType3::Lnk) {
                return Err(FsError::BadSnapshot(format!("type of {id}")));
            }
            if inode.ftype == FType3::Lnk {
                let ok = inode.target.as_ref().is_some_and(|t| {
                    !t.0.is_empty()
                        && !t.0.contains(&0)
                        && t.0.len() <= self.config.path_max as usize
                });
                if !ok {
                    return Err(FsError::BadSnapshot(format!("symlink target of {id}")));
                }
            }
        }
        for (name, _) in meta.dirs.values().flat_map(|d| d.by_name.iter()) {
            if confine::check_name(name, self.config.name_max, confine::NameUse::Create).is_err() {
                return Err(FsError::BadSnapshot(format!("name {name:?}")));
            }
        }
        self.rebuild(meta, &data).map_err(|f| self.poison(f))?;
        self.poisoned = None;
        self.state_digest()
    }

    fn rebuild(&mut self, meta: Meta, data: &BTreeMap<u64, &[u8]>) -> Result<(), LocalFault> {
        self.fds.clear();
        for name in confine::list_dir(&self.root).ctx("list export")? {
            confine::remove_tree(&self.root, &name).ctx("clear export")?;
        }
        // Directories from the root down, each one's entries in cookie order; a file
        // with several names is written at its first one and hard-linked at the rest.
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
                    confine::link(&pfd, pname, &dfd, &name.0).ctx("restore link")?;
                    continue;
                }
                match inode.ftype {
                    FType3::Dir => {
                        confine::mkdir(&dfd, &name.0).ctx("restore mkdir")?;
                        queue.push(id);
                    }
                    FType3::Lnk => {
                        let t = inode.target.as_ref().expect("checked");
                        confine::symlink(&dfd, &name.0, &t.0).ctx("restore symlink")?;
                    }
                    _ => {
                        let f = confine::create_file(&dfd, &name.0).ctx("restore create")?;
                        f.write_all_at(data[&id], 0).ctx("restore write")?;
                    }
                }
                placed.insert(id, (d, name.0.clone()));
            }
        }
        rustix::fs::syncfs(&*self.root).ctx("syncfs after restore")?;
        self.adopt(meta)
    }
}
