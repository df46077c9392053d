//! Persistence of the replicated metadata: a snapshot file plus an append-only journal.
//!
//! `sync()` appends one record holding the absolute new value of every key that changed
//! since the previous sync (inodes, directory entries, chunk hashes, the fileid
//! counter) and makes it durable with one `fdatasync`; that record is the commit point
//! of the batch on this replica. Each record's checksum covers the checksum of the
//! snapshot it follows, so after a compaction (write snapshot, rename, truncate journal)
//! records left behind by a crash before the truncation fail their checksum and are cut
//! off like a torn tail: `install` compacts to metadata those records do not lead to,
//! and replaying them over it would mix two states. A torn tail record (crash during
//! append) fails its checksum and is cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::sha256;
use crate::error::{Ctx, FsError, LocalFault};
use crate::meta::{Content, DirEntry, Inode, Meta, MetaImage};
use crate::ops::Filename3;

const SNAPSHOT: &str = "meta.snap";
const SNAPSHOT_TMP: &str = "meta.snap.tmp";
const JOURNAL: &str = "journal";
const CLEAN: &str = "clean";
const SNAPSHOT_MAGIC: &[u8; 8] = b"BFTNFSM2";
/// Before records were bound to their snapshot: read, then compacted at once.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"BFTNFSM1";
/// Frame header: payload length (u32 LE) and the first 8 bytes of the SHA-256 of the
/// snapshot's checksum followed by the payload.
const FRAME_HEADER: usize = 12;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MetaChange {
    Globals {
        next_fileid: u64,
        last_time_ns: u64,
    },
    PutInode(u64, Inode),
    DelInode(u64),
    PutEntry {
        dir: u64,
        name: Filename3,
        entry: DirEntry,
    },
    DelEntry {
        dir: u64,
        name: Filename3,
    },
    Chunks {
        fileid: u64,
        count: u64,
        updates: Vec<(u64, [u8; 32])>,
    },
}

pub fn apply_change(meta: &mut Meta, change: MetaChange) {
    match change {
        MetaChange::Globals {
            next_fileid,
            last_time_ns,
        } => {
            meta.next_fileid = next_fileid;
            meta.last_time_ns = last_time_ns;
        }
        MetaChange::PutInode(id, inode) => meta.put_inode(id, inode),
        MetaChange::DelInode(id) => meta.del_inode(id),
        MetaChange::PutEntry { dir, name, entry } => {
            meta.dirs.entry(dir).or_default().insert(name, entry);
        }
        MetaChange::DelEntry { dir, name } => {
            if let Some(d) = meta.dirs.get_mut(&dir) {
                d.remove(&name);
            }
        }
        MetaChange::Chunks {
            fileid,
            count,
            updates,
        } => {
            if meta.inodes.contains_key(&fileid) {
                let c: &mut Content = meta.content.entry(fileid).or_default();
                c.chunks.resize(count as usize, [0; 32]);
                for (i, h) in updates {
                    if let Some(slot) = c.chunks.get_mut(i as usize) {
                        *slot = h;
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    len: u64,
    /// The checksum of the snapshot the records follow (zeros before the first).
    base: [u8; 32],
}

/// What `Journal::open` found.
pub struct Loaded {
    pub meta: Option<Meta>,
    pub journal: Journal,
    /// The previous instance closed cleanly (tree known to match the metadata).
    pub clean: bool,
}

fn fsync_dir(dir: &Path) -> Result<(), LocalFault> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync of metadata directory")
}

impl Journal {
    /// Load the snapshot and replay the journal. `meta` is `None` for a new export.
    pub fn open(dir: &Path) -> Result<Loaded, FsError> {
        std::fs::create_dir_all(dir).ctx("create metadata directory")?;
        let clean_path = dir.join(CLEAN);
        let clean = clean_path.exists();
        let snap_path = dir.join(SNAPSHOT);
        let (mut meta, base, v1) = if snap_path.exists() {
            let mut bytes = Vec::new();
            File::open(&snap_path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .ctx("read metadata snapshot")?;
            let (meta, base, v1) = decode_snapshot(&bytes)?;
            (Some(meta), base, v1)
        } else {
            (None, [0; 32], false)
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(dir.join(JOURNAL))
            .ctx("open journal")?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ctx("read journal")?;
        let mut pos = 0usize;
        while pos + FRAME_HEADER <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let Some(payload) = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
                break;
            };
            let sum = if v1 {
                sha256(&[payload])
            } else {
                sha256(&[&base, payload])
            };
            if sum[..8] != bytes[pos + 4..pos + FRAME_HEADER] {
                break;
            }
            let changes: Vec<MetaChange> = crate::ops::decode_local(payload)
                .map_err(|e| FsError::Corrupt(format!("journal record at {pos}: {e}")))?;
            let m = meta.get_or_insert_with(|| Meta {
                next_fileid: 0,
                last_time_ns: 0,
                inodes: Default::default(),
                dirs: Default::default(),
                content: Default::default(),
                bytes_used: 0,
            });
            for c in changes {
                apply_change(m, c);
            }
            pos += FRAME_HEADER + len;
        }
        if pos != bytes.len() {
            // Torn tail from a crash during append: the batch it belonged to was never
            // acknowledged (its sync did not return), so it is dropped.
            file.set_len(pos as u64).ctx("truncate torn journal tail")?;
            file.sync_all().ctx("fsync journal")?;
        }
        if clean {
            std::fs::remove_file(&clean_path).ctx("remove clean marker")?;
            fsync_dir(dir)?;
        }
        if let Some(m) = &meta {
            m.check_invariants().map_err(FsError::Corrupt)?;
        }
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            len: pos as u64,
            base,
        };
        if v1 && let Some(m) = &meta {
            journal.compact(m)?;
        }
        Ok(Loaded {
            meta,
            journal,
            clean,
        })
    }

    /// Append one record and make it durable.
    pub fn append(&mut self, changes: &[MetaChange]) -> Result<(), LocalFault> {
        let payload = crate::ops::encode(&changes);
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&sha256(&[&self.base, &payload])[..8]);
        frame.extend_from_slice(&payload);
        self.file
            .write_all_at(&frame, self.len)
            .ctx("append to journal")?;
        self.file.sync_data().ctx("fdatasync journal")?;
        self.len += frame.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Fold everything into a new snapshot and empty the journal.
    pub fn compact(&mut self, meta: &Meta) -> Result<(), LocalFault> {
        self.compact_to(&meta.to_image())
    }

    /// `compact` to `image`, the metadata as it was when it was taken.
    pub fn compact_to(&mut self, image: &crate::meta::MetaImage) -> Result<(), LocalFault> {
        let payload = crate::ops::encode(image);
        let base = sha256(&[&payload]);
        let mut bytes = Vec::with_capacity(40 + payload.len());
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&base);
        bytes.extend_from_slice(&payload);
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let mut f = File::create(&tmp).ctx("create metadata snapshot")?;
        f.write_all(&bytes).ctx("write metadata snapshot")?;
        f.sync_all().ctx("fsync metadata snapshot")?;
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT)).ctx("install metadata snapshot")?;
        fsync_dir(&self.dir)?;
        // From here the old records no longer verify (a crash before the truncation
        // leaves them behind as a torn tail).
        self.base = base;
        self.file.set_len(0).ctx("truncate journal")?;
        self.file.sync_all().ctx("fsync journal")?;
        self.len = 0;
        Ok(())
    }

    /// Record that the tree matches the metadata (after a final sync).
    pub fn mark_clean(&mut self) -> Result<(), LocalFault> {
        File::create(self.dir.join(CLEAN))
            .and_then(|f| f.sync_all())
            .ctx("write clean marker")?;
        fsync_dir(&self.dir)
    }
}

/// The metadata, the snapshot's checksum (the journal's base), and whether it is in the
/// format whose journal records are not bound to it.
fn decode_snapshot(bytes: &[u8]) -> Result<(Meta, [u8; 32], bool), FsError> {
    let v1 = bytes.get(..8) == Some(&SNAPSHOT_MAGIC_V1[..]);
    if bytes.len() < 40 || (&bytes[..8] != SNAPSHOT_MAGIC && !v1) {
        return Err(FsError::Corrupt("metadata snapshot header".into()));
    }
    let payload = &bytes[40..];
    if sha256(&[payload])[..] != bytes[8..40] {
        return Err(FsError::Corrupt("metadata snapshot checksum".into()));
    }
    let image: MetaImage = crate::ops::decode_local(payload)
        .map_err(|e| FsError::Corrupt(format!("metadata snapshot: {e}")))?;
    let base = bytes[8..40].try_into().expect("32 bytes");
    Ok((Meta::from_image(image), base, v1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory written before records were bound to their snapshot: its
    /// journal is replayed as it was, then folded into a snapshot of the new format.
    #[test]
    fn a_journal_of_the_first_format_is_replayed_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::new_root(&crate::FsConfig::default());
        let mut journal = Journal::open(dir.path()).unwrap().journal;
        journal.compact(&meta).unwrap();
        drop(journal);
        let snap = dir.path().join(SNAPSHOT);
        let mut bytes = std::fs::read(&snap).unwrap();
        bytes[..8].copy_from_slice(SNAPSHOT_MAGIC_V1);
        std::fs::write(&snap, &bytes).unwrap();
        let payload = crate::ops::encode(&vec![MetaChange::Globals {
            next_fileid: 77,
            last_time_ns: 5,
        }]);
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&sha256(&[&payload])[..8]);
        frame.extend_from_slice(&payload);
        std::fs::write(dir.path().join(JOURNAL), &frame).unwrap();
        let loaded = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded.meta.unwrap().next_fileid, 77);
        assert_eq!(loaded.journal.len(), 0);
        drop(loaded.journal);
        assert_eq!(&std::fs::read(&snap).unwrap()[..8], SNAPSHOT_MAGIC);
        let again = Journal::open(dir.path()).unwrap();
        assert_eq!(again.meta.unwrap().next_fileid, 77);
    }
}
