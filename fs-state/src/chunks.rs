//! The content-addressed chunk store of a replica's checkpoints (`data_dir/chunks/`).
//!
//! Chunks are appended to **pack files** (`pack-<id>`, 16 hex digits), one record after
//! another: the tag `CHK1`, the chunk's hash (`digest::chunk_hash` of its bytes), its
//! length (`u32`, big-endian, at most `CHUNK_BYTES`), its bytes. An index in memory maps
//! each hash to its pack and offset. A pack takes appends until it holds `PACK_BYTES`;
//! then the next one starts.
//!
//! Until the twelfth session each chunk was a file of its own named by its hash. Making
//! a file costs 0.4–0.7 ms on this machine's ext4 (empty or not), so a checkpoint after
//! 122 MB of new data spent 1.1–1.2 s creating 1913 chunk files, blocking its replica
//! (docs/recovery.md); an append to a pack costs what writing the bytes costs. Such
//! chunk files found on open are moved into a pack (read, checked when `verify`, made
//! durable, then deleted).
//!
//! Durability: appends are not synced here; `sync` makes them durable with one `syncfs`
//! (with the export's data, in the same file system). After an unclean stop (`verify`),
//! every record is rehashed on open and a pack is cut at its first record that does not
//! hold (a power cut can keep a pack's length and lose its bytes). After a clean stop
//! the records are trusted, and `get` still rehashes every chunk it returns.
//!
//! Garbage collection (`retain`): a pack none of whose chunks are kept is deleted; a pack
//! that keeps less than half its bytes has its kept chunks appended to the current pack
//! and is deleted after the next `sync`, once the copies are durable.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::digest::{self, Hash};
use crate::meta::CHUNK_BYTES;

/// A pack takes appends until it is this large.
const PACK_BYTES: u64 = 64 << 20;
const TAG: &[u8; 4] = b"CHK1";
/// Tag, hash, length.
const HEADER_BYTES: u64 = 4 + 32 + 4;

/// Where a stored chunk is: its pack, the offset of its bytes, their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    pack: u64,
    offset: u64,
    len: u32,
}

/// What a pack holds: all its bytes, and those of chunks still indexed.
#[derive(Debug, Default, Clone, Copy)]
struct PackUse {
    bytes: u64,
    live: u64,
}

/// The store's state when a `syncfs` began (`ChunkStore::mark`).
#[derive(Debug, Clone)]
pub struct StoreMark {
    unsynced: (u64, u64),
    obsolete: Vec<u64>,
}

/// Content-addressed chunks in pack files; see the module documentation.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    index: BTreeMap<Hash, Place>,
    packs: BTreeMap<u64, PackUse>,
    /// The pack appends go to, open for reading and writing.
    current: Option<(u64, File)>,
    /// Packs emptied by compaction, deleted after the next `sync`.
    obsolete: Vec<u64>,
    /// Chunks and bytes appended since the last `sync`.
    unsynced: (u64, u64),
    /// The id of the next pack: above every pack this store has seen, deleted or not
    /// (a compacted pack's file stays until the next `sync`).
    next_id: u64,
}

fn pack_name(id: u64) -> String {
    format!("pack-{id:016x}")
}

/// The id of a pack file's name, if it is exactly what `pack_name` makes.
fn pack_id(name: &str) -> Option<u64> {
    let id = u64::from_str_radix(name.strip_prefix("pack-")?, 16).ok()?;
    (pack_name(id) == name).then_some(id)
}

pub(crate) fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

impl ChunkStore {
    /// Opens (or makes) the store in `dir`. `verify`: after an unclean shutdown, keep
    /// only records whose bytes match their hash (see the module documentation).
    pub fn open(dir: &Path, verify: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut store = ChunkStore {
            dir: dir.to_path_buf(),
            index: BTreeMap::new(),
            packs: BTreeMap::new(),
            current: None,
            obsolete: Vec::new(),
            unsynced: (0, 0),
            next_id: 1,
        };
        let mut legacy = Vec::new();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            if let Some(id) = pack_id(name) {
                ids.push(id);
            } else if let Some(h) = unhex(name)
                && entry.file_type()?.is_file()
            {
                legacy.push((h, entry.path()));
            } else if entry.file_type()?.is_file() {
                // A temporary file of a crashed write, or a stranger: not ours.
                std::fs::remove_file(entry.path())?;
            }
        }
        ids.sort_unstable();
        store.next_id = match ids.last() {
            Some(last) => last.checked_add(1).ok_or_else(|| {
                std::io::Error::other(format!("chunk pack ids exhausted in {}", dir.display()))
            })?,
            None => 1,
        };
        let last = ids.last().copied();
        for id in ids {
            store.load_pack(id, verify, Some(id) == last)?;
        }
        if !legacy.is_empty() {
            store.import_legacy(legacy, verify)?;
        }
        Ok(store)
    }

    /// Indexes pack `id`'s records up to the first one that does not parse; with
    /// `verify`, a record whose bytes do not hash to its name is left out (a bad sector
    /// costs that chunk, not the rest of the pack). The `last` pack, which takes the
    /// next appends, is cut where parsing stopped (a torn tail).
    fn load_pack(&mut self, id: u64, verify: bool, last: bool) -> std::io::Result<()> {
        let path = self.dir.join(pack_name(id));
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut at = 0u64;
        let mut header = [0u8; HEADER_BYTES as usize];
        let mut data = Vec::new();
        let mut use_ = PackUse::default();
        while at + HEADER_BYTES <= size {
            if file.read_exact_at(&mut header, at).is_err() || &header[..4] != TAG {
                break;
            }
            let h: Hash = header[4..36].try_into().expect("32 bytes");
            let len = u32::from_be_bytes(header[36..40].try_into().expect("4 bytes"));
            let offset = at + HEADER_BYTES;
            if u64::from(len) > CHUNK_BYTES || offset + u64::from(len) > size {
                break;
            }
            let record = HEADER_BYTES + u64::from(len);
            use_.bytes += record;
            at = offset + u64::from(len);
            if verify {
                data.resize(len as usize, 0);
                if file.read_exact_at(&mut data, offset).is_err() || digest::chunk_hash(&data) != h
                {
                    continue;
                }
            }
            // A chunk stored twice (a compaction's copy made before its old pack was
            // deleted): the first one indexed stays.
            if let std::collections::btree_map::Entry::Vacant(e) = self.index.entry(h) {
                e.insert(Place {
                    pack: id,
                    offset,
                    len,
                });
                use_.live += record;
            }
        }
        if !last {
            if use_.bytes > 0 {
                self.packs.insert(id, use_);
            }
            return Ok(());
        }
        if at < size {
            file.set_len(at)?;
        }
        if use_.bytes == 0 {
            drop(file);
            std::fs::remove_file(&path)?;
            return Ok(());
        }
        self.packs.insert(id, use_);
        // The last pack goes on taking appends while it has room.
        self.current = (at < PACK_BYTES).then_some((id, file));
        Ok(())
    }

    /// Moves chunk files of the old layout into a pack: the copies are made durable
    /// before the files go.
    fn import_legacy(&mut self, files: Vec<(Hash, PathBuf)>, verify: bool) -> std::io::Result<()> {
        for (h, path) in &files {
            let data = std::fs::read(path)?;
            if data.len() as u64 > CHUNK_BYTES || (verify && digest::chunk_hash(&data) != *h) {
                continue;
            }
            if !self.index.contains_key(h) {
                self.append(h, &data)?;
            }
        }
        // Every pack written and its name durable before the old files go.
        self.sync()?;
        for (_, path) in files {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }

    pub fn has(&self, h: &Hash) -> bool {
        self.index.contains_key(h)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Stores `data` under its hash, unless present. Not durable until `sync`.
    pub fn put(&mut self, data: &[u8]) -> std::io::Result<Hash> {
        let h = digest::chunk_hash(data);
        self.put_hashed(&h, data)?;
        Ok(h)
    }

    /// Stores `data`, which the caller just hashed to `h` (`chunk_hash`), unless present.
    /// Not durable until `sync`.
    pub fn put_hashed(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<()> {
        debug_assert_eq!(digest::chunk_hash(data), *h);
        if !self.index.contains_key(h) {
            self.append(h, data)?;
        }
        Ok(())
    }

    /// Chunks and bytes stored since the last `sync`.
    pub fn unsynced(&self) -> (u64, u64) {
        self.unsynced
    }

    /// What a `syncfs` begun now will make durable (`synced_since`).
    pub fn mark(&self) -> StoreMark {
        StoreMark {
            unsynced: self.unsynced,
            obsolete: self.obsolete.clone(),
        }
    }

    /// A `syncfs` of this store's file system, begun when `mark` was taken, finished:
    /// what was appended before the mark is durable, and the packs that were obsolete
    /// then may go. Appends and compactions since the mark wait for the next sync.
    pub fn synced_since(&mut self, mark: StoreMark) -> std::io::Result<()> {
        self.unsynced.0 = self.unsynced.0.saturating_sub(mark.unsynced.0);
        self.unsynced.1 = self.unsynced.1.saturating_sub(mark.unsynced.1);
        for id in mark.obsolete {
            let Some(i) = self.obsolete.iter().position(|o| *o == id) else {
                continue;
            };
            self.obsolete.swap_remove(i);
            match std::fs::remove_file(self.dir.join(pack_name(id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record of `data` (hashing to `h`) to the current pack, starting a new
    /// one when it is full.
    fn append(&mut self, h: &Hash, data: &[u8]) -> std::io::Result<()> {
        assert!(
            data.len() as u64 <= CHUNK_BYTES,
            "a chunk is at most CHUNK_BYTES"
        );
        let full = match &self.current {
            Some((id, _)) => self.packs.get(id).is_none_or(|u| u.bytes >= PACK_BYTES),
            None => true,
        };
        if full {
            let id = self.next_id;
            self.next_id += 1;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.dir.join(pack_name(id)))?;
            self.packs.insert(id, PackUse::default());
            self.current = Some((id, file));
        }
        let (id, file) = self.current.as_ref().expect("a current pack");
        let id = *id;
        let use_ = self.packs.get_mut(&id).expect("current pack is listed");
        let mut record = Vec::with_capacity(HEADER_BYTES as usize + data.len());
        record.extend_from_slice(TAG);
        record.extend_from_slice(h);
        record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        record.extend_from_slice(data);
        file.write_all_at(&record, use_.bytes)?;
        self.unsynced.0 += 1;
        self.unsynced.1 += data.len() as u64;
        let place = Place {
            pack: id,
            offset: use_.bytes + HEADER_BYTES,
            len: data.len() as u32,
        };
        use_.bytes += record.len() as u64;
        use_.live += record.len() as u64;
        self.index.insert(*h, place);
        Ok(())
    }

    /// The chunk with hash `h`, verified; a stored chunk that no longer matches its hash
    /// (disk corruption, tampering) is forgotten and reported absent.
    pub fn get(&mut self, h: &Hash) -> std::io::Result<Option<Vec<u8>>> {
        let Some(place) = self.index.get(h).copied() else {
            return Ok(None);
        };
        let mut data = vec![0; place.len as usize];
        let read = match &self.current {
            Some((id, f)) if *id == place.pack => f.read_exact_at(&mut data, place.offset),
            _ => File::open(self.dir.join(pack_name(place.pack)))
                .and_then(|f| f.read_exact_at(&mut data, place.offset)),
        };
        match read {
            Ok(()) if digest::chunk_hash(&data) == *h => Ok(Some(data)),
            Ok(()) => {
                self.forget(h);
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                self.forget(h);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn forget(&mut self, h: &Hash) {
        if let Some(place) = self.index.remove(h)
            && let Some(u) = self.packs.get_mut(&place.pack)
        {
            u.live = u.live.saturating_sub(HEADER_BYTES + u64::from(place.len));
        }
    }

    /// Makes every stored chunk durable (one `syncfs`), then deletes the packs a
    /// compaction emptied.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let d = File::open(&self.dir)?;
        rustix::fs::syncfs(&d)?;
        self.unsynced = (0, 0);
        for id in std::mem::take(&mut self.obsolete) {
            match std::fs::remove_file(self.dir.join(pack_name(id))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Forgets every chunk not in `keep`; returns how many were forgotten. Packs left
    /// empty are deleted, packs left less than half full are compacted.
    pub fn retain(&mut self, keep: &BTreeSet<Hash>) -> std::io::Result<usize> {
        let gone: Vec<Hash> = self
            .index
            .keys()
            .filter(|h| !keep.contains(*h))
            .copied()
            .collect();
        for h in &gone {
            self.forget(h);
        }
        let current = self.current.as_ref().map(|(id, _)| *id);
        let sparse: Vec<(u64, PackUse)> = self
            .packs
            .iter()
            .filter(|(id, u)| Some(**id) != current && u.live * 2 < u.bytes)
            .map(|(id, u)| (*id, *u))
            .collect();
        for (id, use_) in sparse {
            if use_.live > 0 {
                self.compact(id)?;
            }
            self.packs.remove(&id);
            if use_.live == 0 {
                let path = self.dir.join(pack_name(id));
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            } else {
                self.obsolete.push(id);
            }
        }
        Ok(gone.len())
    }

    /// Appends pack `id`'s indexed chunks to the current pack (read and checked; a chunk
    /// that no longer matches is forgotten).
    fn compact(&mut self, id: u64) -> std::io::Result<()> {
        let live: Vec<Hash> = self
            .index
            .iter()
            .filter(|(_, p)| p.pack == id)
            .map(|(h, _)| *h)
            .collect();
        let file = File::open(self.dir.join(pack_name(id)))?;
        let mut data = Vec::new();
        for h in live {
            let place = self.index[&h];
            data.resize(place.len as usize, 0);
            if file.read_exact_at(&mut data, place.offset).is_ok() && digest::chunk_hash(&data) == h
            {
                // Re-indexed at its copy. If the append fails the chunk stays where it
                // is, and so does its pack: the error ends `retain` before the pack is
                // given up.
                self.append(&h, &data)?;
            } else {
                self.forget(&h);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes (at least 4), different for every `i`.
    fn chunk(i: u32, len: usize) -> Vec<u8> {
        let mut data = i.to_le_bytes().to_vec();
        data.extend((4..len as u32).map(|k| (k.wrapping_mul(2_654_435_761) >> 13) as u8 ^ i as u8));
        data
    }

    fn packs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunks_come_back_after_a_clean_and_an_unclean_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        let hashes: Vec<Hash> = (0..20)
            .map(|i| s.put(&chunk(i, 1000 + i as usize * 3000)).unwrap())
            .collect();
        // Stored once.
        assert_eq!(s.put(&chunk(3, 10_000)).unwrap(), hashes[3]);
        assert_eq!(s.len(), 20);
        s.sync().unwrap();
        assert_eq!(packs(tmp.path()), ["pack-0000000000000001"]);
        for verify in [false, true] {
            let mut s = ChunkStore::open(tmp.path(), verify).unwrap();
            assert_eq!(s.len(), 20);
            for (i, h) in hashes.iter().enumerate() {
                let want = chunk(i as u32, 1000 + i * 3000);
                assert_eq!(s.get(h).unwrap().as_deref(), Some(&want[..]));
            }
        }
    }

    /// After an unclean stop a record whose bytes went bad is left out (the rest of its
    /// pack stays), and a torn tail of the last pack is cut off before new appends.
    #[test]
    fn an_unclean_reopen_drops_bad_records_and_cuts_a_torn_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        let a = s.put(&chunk(1, 5000)).unwrap();
        let b = s.put(&chunk(2, 5000)).unwrap();
        let c = s.put(&chunk(3, 5000)).unwrap();
        drop(s);
        let pack = tmp.path().join(pack_name(1));
        let mut bytes = std::fs::read(&pack).unwrap();
        let record = (HEADER_BYTES + 5000) as usize;
        bytes[record + HEADER_BYTES as usize + 10] ^= 0xff;
        // A torn append after the three: a header whose bytes never came, then zeros.
        let full_len = bytes.len();
        bytes.extend_from_within(..HEADER_BYTES as usize);
        bytes.extend_from_slice(&[0; 300]);
        std::fs::write(&pack, &bytes).unwrap();
        // A clean open trusts the records, and `get` still finds the bad one.
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(&b).unwrap(), None);
        assert!(!s.has(&b));
        drop(s);
        let mut s = ChunkStore::open(tmp.path(), true).unwrap();
        assert!(s.has(&a) && !s.has(&b) && s.has(&c));
        assert_eq!(std::fs::metadata(&pack).unwrap().len(), full_len as u64);
        // Appends go on after the cut, and b can be stored again.
        assert_eq!(s.put(&chunk(2, 5000)).unwrap(), b);
        drop(s);
        let mut s = ChunkStore::open(tmp.path(), true).unwrap();
        for (h, i) in [(a, 1), (b, 2), (c, 3)] {
            assert_eq!(s.get(&h).unwrap(), Some(chunk(i, 5000)));
        }
    }

    /// Only names `pack_name` makes are packs; a foreign directory is left alone.
    #[test]
    fn only_exact_pack_names_are_packs() {
        assert_eq!(pack_id("pack-0000000000000001"), Some(1));
        assert_eq!(pack_id("pack-+000000000000001"), None);
        assert_eq!(pack_id("pack-000000000000000A"), None);
        assert_eq!(pack_id("pack-1"), None);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("stray")).unwrap();
        std::fs::write(tmp.path().join("pack-+000000000000001"), b"x").unwrap();
        let mut s = ChunkStore::open(tmp.path(), true).unwrap();
        let h = s.put(&chunk(9, 100)).unwrap();
        assert!(s.get(&h).unwrap().is_some());
        assert!(tmp.path().join("stray").is_dir());
    }

    #[test]
    fn retain_deletes_empty_packs_and_compacts_sparse_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        // Three packs: 1024 + 1024 + 10 chunks of 64 KiB (a pack holds 64 MiB).
        let hashes: Vec<Hash> = (0..2058)
            .map(|i| s.put(&chunk(i, CHUNK_BYTES as usize)).unwrap())
            .collect();
        assert_eq!(packs(tmp.path()).len(), 3);
        // Keep nothing of pack 1, one chunk in ten of pack 2, all of pack 3.
        let keep: BTreeSet<Hash> = hashes[1024..2048]
            .iter()
            .step_by(10)
            .chain(&hashes[2048..])
            .copied()
            .collect();
        assert_eq!(s.retain(&keep).unwrap(), 2058 - keep.len());
        assert_eq!(s.len(), keep.len());
        // Pack 1 is gone at once; pack 2 after the sync that makes its copies durable.
        assert_eq!(packs(tmp.path()).len(), 2);
        s.sync().unwrap();
        assert_eq!(packs(tmp.path()), ["pack-0000000000000003"]);
        drop(s);
        let mut s = ChunkStore::open(tmp.path(), true).unwrap();
        assert_eq!(s.len(), keep.len());
        for h in &keep {
            assert!(s.get(h).unwrap().is_some());
        }
        assert!(!s.has(&hashes[0]) && !s.has(&hashes[1025]));
    }

    /// Reopened with its last pack full, a store compacts that pack into a new one
    /// (never under the id of the old one, whose file stays until the next sync) and
    /// keeps every kept chunk.
    #[test]
    fn compacting_the_last_pack_after_a_reopen_keeps_what_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        // Exactly one full pack (1024 chunks of 64 KiB and their headers).
        let hashes: Vec<Hash> = (0..1024)
            .map(|i| s.put(&chunk(i, CHUNK_BYTES as usize)).unwrap())
            .collect();
        s.sync().unwrap();
        drop(s);
        let mut s = ChunkStore::open(tmp.path(), false).unwrap();
        let keep: BTreeSet<Hash> = hashes.iter().step_by(4).copied().collect();
        s.retain(&keep).unwrap();
        s.sync().unwrap();
        assert_eq!(packs(tmp.path()), ["pack-0000000000000002"]);
        for h in &keep {
            assert!(s.get(h).unwrap().is_some());
        }
    }

    #[test]
    fn chunk_files_of_the_old_layout_move_into_a_pack() {
        let tmp = tempfile::tempdir().unwrap();
        let good = chunk(1, 7000);
        let h = digest::chunk_hash(&good);
        std::fs::write(tmp.path().join(hex(&h)), &good).unwrap();
        // A file whose bytes lost their name's hash (a power cut), and a stray temporary.
        let lost = digest::chunk_hash(&chunk(2, 7000));
        std::fs::write(tmp.path().join(hex(&lost)), b"").unwrap();
        std::fs::write(tmp.path().join("x.tmp"), b"junk").unwrap();
        let mut s = ChunkStore::open(tmp.path(), true).unwrap();
        assert_eq!(s.get(&h).unwrap(), Some(good));
        assert!(!s.has(&lost));
        assert_eq!(packs(tmp.path()), ["pack-0000000000000001"]);
    }
}
