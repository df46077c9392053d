//! Confinement: nothing outside the backing directory is ever read or written.
//!
//! Names from clients are checked here before anything else sees them: a valid name is a
//! single component with no `/` or NUL, not `.`/`..`, and not longer than `name_max`,
//! so it can only ever denote an entry of the directory it is resolved in. Host calls
//! are `*at` calls relative to a directory descriptor with `O_NOFOLLOW`, one component
//! at a time, and the descriptors come from walking the replicated metadata by fileid
//! from the export's root descriptor, never from a client-supplied path. Symbolic links
//! are stored as real symlinks (so two replicas' trees compare with `diff -r
//! --no-dereference`) and are only ever read with `readlinkat` or unlinked/renamed/linked
//! as entries: no call here follows one.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs::File;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::ops::{Filename3, NfsStat3};

/// How a name is about to be used; decides what `.`/`..` mean (knfsd-like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameUse {
    /// LOOKUP: `.` and `..` are resolved in the metadata.
    Lookup,
    /// CREATE, MKDIR, SYMLINK, MKNOD, LINK: `.`/`..` already exist (`NFS3ERR_EXIST`).
    Create,
    /// REMOVE, RMDIR, RENAME: `.`/`..` cannot be the object (`NFS3ERR_INVAL`).
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Normal,
    Dot,
    DotDot,
}

/// Check a client-supplied name. Order: too long, then malformed, then dots.
pub fn check_name(name: &Filename3, name_max: u32, usage: NameUse) -> Result<NameKind, NfsStat3> {
    let b = name.as_bytes();
    if b.len() > name_max as usize {
        return Err(NfsStat3::Nametoolong);
    }
    if b.is_empty() || b.contains(&b'/') || b.contains(&0) {
        return Err(NfsStat3::Acces);
    }
    let kind = match b {
        b"." => NameKind::Dot,
        b".." => NameKind::DotDot,
        _ => return Ok(NameKind::Normal),
    };
    match usage {
        NameUse::Lookup => Ok(kind),
        NameUse::Create => Err(NfsStat3::Exist),
        NameUse::Remove => Err(NfsStat3::Inval),
    }
}

/// The host object kinds the backing tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    Dir,
    File,
}

const NOFOLLOW: OFlags = OFlags::NOFOLLOW.union(OFlags::CLOEXEC);

/// Open an existing entry of `parent` without following a symlink.
pub fn open_child(parent: &File, name: &[u8], kind: HostKind) -> Result<File, Errno> {
    let flags = match kind {
        HostKind::Dir => OFlags::RDONLY | OFlags::DIRECTORY,
        HostKind::File => OFlags::RDWR,
    };
    let fd = rustix::fs::openat(parent, name, flags | NOFOLLOW, Mode::empty())?;
    Ok(File::from(fd))
}

/// Create a new regular file (never an existing one, never through a symlink). Host
/// permissions are fixed; the NFS mode lives in the metadata.
pub fn create_file(parent: &File, name: &[u8]) -> Result<File, Errno> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | NOFOLLOW;
    let fd = rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

pub fn mkdir(parent: &File, name: &[u8]) -> Result<(), Errno> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
}

pub fn symlink(parent: &File, name: &[u8], target: &[u8]) -> Result<(), Errno> {
    rustix::fs::symlinkat(target, parent, name)
}

pub fn unlink(parent: &File, name: &[u8]) -> Result<(), Errno> {
    rustix::fs::unlinkat(parent, name, AtFlags::empty())
}

pub fn rmdir(parent: &File, name: &[u8]) -> Result<(), Errno> {
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

pub fn rename(from: &File, from_name: &[u8], to: &File, to_name: &[u8]) -> Result<(), Errno> {
    rustix::fs::renameat(from, from_name, to, to_name)
}

/// Hard link; without `AT_SYMLINK_FOLLOW` a symlink is linked, not its target.
pub fn link(from: &File, from_name: &[u8], to: &File, to_name: &[u8]) -> Result<(), Errno> {
    rustix::fs::linkat(from, from_name, to, to_name, AtFlags::empty())
}

pub fn readlink(parent: &File, name: &[u8]) -> Result<Vec<u8>, Errno> {
    Ok(rustix::fs::readlinkat(parent, name, Vec::new())?.into_bytes())
}

/// `lstat` of an entry.
pub fn stat_child(parent: &File, name: &[u8]) -> Result<rustix::fs::Stat, Errno> {
    rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Names in a directory (without `.` and `..`), sorted.
pub fn list_dir(dir: &File) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let n: &CStr = entry.file_name();
        let n = n.to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Remove an entry and, for a directory, everything below it, without following any
/// symlink (used to discard what a crash left behind and before a restore).
///
/// Iterative, with one directory descriptor open at a time: a client can build a tree
/// deeper than the stack or the open-file limit allows for one frame or descriptor per
/// level. The walk keeps the names of the path and of the subdirectories still to visit;
/// it goes back up through `..` and checks that it arrives where it came from.
pub fn remove_tree(parent: &File, name: &[u8]) -> Result<(), Errno> {
    let st = stat_child(parent, name)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return unlink(parent, name);
    }
    /// A directory on the path: its name in its parent, its identity, and the
    /// subdirectories it still holds (its other entries are gone once it is entered).
    struct Level {
        name: Vec<u8>,
        dev_ino: (u64, u64),
        subdirs: Vec<Vec<u8>>,
    }
    fn enter(dir: &File, name: &[u8]) -> Result<Level, Errno> {
        let st = rustix::fs::fstat(dir)?;
        let mut subdirs = Vec::new();
        for child in list_dir(dir)? {
            let cst = stat_child(dir, &child)?;
            if rustix::fs::FileType::from_raw_mode(cst.st_mode) == rustix::fs::FileType::Directory {
                subdirs.push(child);
            } else {
                unlink(dir, &child)?;
            }
        }
        Ok(Level {
            name: name.to_vec(),
            dev_ino: (st.st_dev, st.st_ino),
            subdirs,
        })
    }
    let mut cur = open_child(parent, name, HostKind::Dir)?;
    let mut path = vec![enter(&cur, name)?];
    while let Some(level) = path.last_mut() {
        if let Some(sub) = level.subdirs.pop() {
            let next = open_child(&cur, &sub, HostKind::Dir)?;
            path.push(enter(&next, &sub)?);
            cur = next;
            continue;
        }
        let done = path.pop().expect("a level");
        let Some(above) = path.last() else {
            break;
        };
        let up = open_child(&cur, b"..", HostKind::Dir)?;
        let st = rustix::fs::fstat(&up)?;
        if (st.st_dev, st.st_ino) != above.dev_ino {
            // Moved while we were below it: not ours to follow.
            return Err(Errno::STALE);
        }
        rmdir(&up, &done.name)?;
        cur = up;
    }
    drop(cur);
    rmdir(parent, name)
}

/// Open descriptors by fileid, for files (READ/WRITE) and directories (the `*at`
/// calls). A descriptor follows its object through renames, so entries stay valid
/// until the object is removed. Bounded by `cap`, least recently used out first; closing
/// a dirty file early is harmless because `fsync` works on the inode through any
/// descriptor, and `sync` reopens it.
#[derive(Debug)]
pub struct FdCache {
    map: BTreeMap<u64, (Arc<File>, u64)>,
    lru: BTreeMap<u64, u64>,
    tick: u64,
    cap: usize,
}

impl FdCache {
    pub fn new(cap: usize) -> Self {
        FdCache {
            map: BTreeMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            cap,
        }
    }

    pub fn get(&mut self, fileid: u64) -> Option<Arc<File>> {
        let (fd, t) = self.map.get_mut(&fileid)?;
        self.lru.remove(t);
        self.tick += 1;
        *t = self.tick;
        self.lru.insert(self.tick, fileid);
        Some(fd.clone())
    }

    pub fn insert(&mut self, fileid: u64, fd: Arc<File>) {
        self.remove(fileid);
        self.tick += 1;
        self.map.insert(fileid, (fd, self.tick));
        self.lru.insert(self.tick, fileid);
        if self.map.len() > self.cap {
            while self.map.len() > self.cap {
                let (_, victim) = self.lru.pop_first().expect("lru mirrors map");
                self.map.remove(&victim);
            }
        }
    }

    pub fn remove(&mut self, fileid: u64) {
        if let Some((_, t)) = self.map.remove(&fileid) {
            self.lru.remove(&t);
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.lru.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let c = |s: &[u8], u| check_name(&Filename3(s.to_vec()), 255, u);
        assert_eq!(c(b"a", NameUse::Create), Ok(NameKind::Normal));
        assert_eq!(c(b"", NameUse::Create), Err(NfsStat3::Acces));
        assert_eq!(c(b"a/b", NameUse::Lookup), Err(NfsStat3::Acces));
        assert_eq!(c(b"a\0", NameUse::Lookup), Err(NfsStat3::Acces));
        assert_eq!(c(b"..", NameUse::Lookup), Ok(NameKind::DotDot));
        assert_eq!(c(b".", NameUse::Create), Err(NfsStat3::Exist));
        assert_eq!(c(b"..", NameUse::Remove), Err(NfsStat3::Inval));
        assert_eq!(c(&[b'x'; 256], NameUse::Lookup), Err(NfsStat3::Nametoolong));
        assert_eq!(c(b"...", NameUse::Remove), Ok(NameKind::Normal));
    }

    #[test]
    fn remove_tree_removes_everything_below_and_follows_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("keep")).unwrap();
        std::fs::write(outside.join("file"), b"kept").unwrap();
        let top = tmp.path().join("export").join("t");
        let mut d = top.clone();
        for i in 0..50 {
            std::fs::create_dir_all(d.join("side").join("deeper")).unwrap();
            std::fs::write(d.join(format!("f{i}")), b"x").unwrap();
            std::os::unix::fs::symlink(&outside, d.join("to-outside")).unwrap();
            std::os::unix::fs::symlink("../..", d.join("up")).unwrap();
            d = d.join(format!("l{i}"));
        }
        std::fs::create_dir_all(&d).unwrap();
        let parent = File::open(tmp.path().join("export")).unwrap();
        remove_tree(&parent, b"t").unwrap();
        assert!(!top.exists());
        assert_eq!(list_dir(&parent).unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(std::fs::read(outside.join("file")).unwrap(), b"kept");
        assert!(outside.join("keep").is_dir());
        // A plain file and a symlink are unlinked, not followed.
        std::os::unix::fs::symlink(&outside, tmp.path().join("export").join("s")).unwrap();
        remove_tree(&parent, b"s").unwrap();
        assert!(outside.join("keep").is_dir());
    }
}
