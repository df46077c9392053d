//! Recycled host objects: REMOVE and RMDIR park the emptied file or directory in
//! `spare/` beside the export, and the next CREATE or MKDIR moves one back under its new
//! name, instead of freeing a host inode and allocating another.
//!
//! Why: ext4 without a journal (the root disk of the machines this runs on) does not
//! reuse an inode freed in the last half minute or so, and skips each one with a
//! buffer-cache lookup when it allocates. Under create/remove churn, such as the
//! macro-benchmark's phases, a `mkdir` then cost 100–280 µs and an `rmdir` 50 µs there,
//! against 15–20 µs for either rename; every replica pays it, on the critical path of
//! the call. On other file systems a rename is still no dearer than an allocation.
//!
//! Only host objects are reused, never replicated state: fileids, generations and every
//! attribute come from the metadata, host permissions are fixed, a parked file is
//! truncated to nothing, and a directory is parked only if it is empty. The pool is
//! local and never trusted across a restart: `Spares::open` removes whatever `spare/`
//! holds (after a crash an object could have a name there and one in the export). If
//! anything about the pool fails (a file system without `RENAME_NOREPLACE`, an export
//! on another mount), it switches itself off and the plain calls are used.

use std::fs::File;
use std::path::Path;

use rustix::fs::{Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::confine::{self, HostKind};

/// The pool's directory, beside `export/` in the data directory.
pub const SPARE_DIR: &str = "spare";
/// Parked objects of each kind at most; beyond, a removal frees the object.
pub const SPARES_MAX: usize = 256;

/// Counters of the pool's use (for tests and measurement).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpareStats {
    /// Objects created by taking one from the pool.
    pub reused: u64,
    /// Objects parked instead of freed.
    pub parked: u64,
}

/// What a parked object is; indexes `Spares::pools`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    File = 0,
    Dir = 1,
}

#[derive(Debug)]
pub(crate) struct Spares {
    /// `spare/`, or `None` when the pool is off.
    dir: Option<File>,
    /// The numbers of the parked files and directories (`spare_name`), by `Kind`.
    pools: [Vec<u64>; 2],
    next: u64,
    pub(crate) stats: SpareStats,
}

/// `f<n>` or `d<n>`.
fn spare_name(kind: Kind, n: u64) -> Vec<u8> {
    let tag = match kind {
        Kind::File => 'f',
        Kind::Dir => 'd',
    };
    format!("{tag}{n}").into_bytes()
}

fn move_noreplace(from: &File, from_name: &[u8], to: &File, to_name: &[u8]) -> Result<(), Errno> {
    rustix::fs::renameat_with(from, from_name, to, to_name, RenameFlags::NOREPLACE)
}

impl Spares {
    /// The pool of `data_dir`, emptied; off if `spare/` cannot be made.
    pub(crate) fn open(data_dir: &Path) -> Spares {
        let dir = Self::fresh_dir(data_dir)
            .inspect_err(|e| {
                tracing::warn!(
                    "{}: cannot use {SPARE_DIR}/ ({e}); removed files and directories are freed",
                    data_dir.display()
                );
            })
            .ok();
        Spares {
            dir,
            pools: [Vec::new(), Vec::new()],
            next: 0,
            stats: SpareStats::default(),
        }
    }

    fn fresh_dir(data_dir: &Path) -> Result<File, Errno> {
        let parent = File::from(rustix::fs::open(
            data_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let name = SPARE_DIR.as_bytes();
        match confine::remove_tree(&parent, name) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        confine::mkdir(&parent, name)?;
        confine::open_child(&parent, name, HostKind::Dir)
    }

    fn off(&mut self, why: Errno) {
        tracing::warn!("recycling host objects switched off: {why}");
        self.dir = None;
        self.pools = [Vec::new(), Vec::new()];
    }

    /// Takes a parked object of `kind` and moves it to `name` in `parent`.
    /// `None`: nothing parked (or the pool just switched off); make a new one.
    fn take(&mut self, kind: Kind, parent: &File, name: &[u8]) -> Option<Result<(), Errno>> {
        let dir = self.dir.as_ref()?;
        let pool = &mut self.pools[kind as usize];
        let n = pool.pop()?;
        match move_noreplace(dir, &spare_name(kind, n), parent, name) {
            Ok(()) => {
                self.stats.reused += 1;
                Some(Ok(()))
            }
            Err(Errno::EXIST) => {
                pool.push(n);
                Some(Err(Errno::EXIST))
            }
            Err(e) => {
                self.off(e);
                None
            }
        }
    }

    /// Parks `name` of `parent` as a `kind` object. `false`: not parked (pool full or
    /// off); free it instead.
    fn park(&mut self, kind: Kind, parent: &File, name: &[u8]) -> Result<bool, Errno> {
        let Some(dir) = self.dir.as_ref() else {
            return Ok(false);
        };
        let pool = &mut self.pools[kind as usize];
        if pool.len() >= SPARES_MAX {
            return Ok(false);
        }
        let n = self.next;
        match move_noreplace(parent, name, dir, &spare_name(kind, n)) {
            Ok(()) => {
                self.next += 1;
                pool.push(n);
                self.stats.parked += 1;
                Ok(true)
            }
            Err(Errno::NOENT) => Err(Errno::NOENT),
            Err(e) => {
                self.off(e);
                Ok(false)
            }
        }
    }

    /// A new, empty regular file `name` in `parent` (never an existing entry).
    pub(crate) fn create_file(&mut self, parent: &File, name: &[u8]) -> Result<File, Errno> {
        match self.take(Kind::File, parent, name) {
            Some(Ok(())) => {
                let f = confine::open_child(parent, name, HostKind::File)?;
                // Emptied when parked; checked again, since `spare/` is on the host.
                if rustix::fs::fstat(&f)?.st_size != 0 {
                    rustix::fs::ftruncate(&f, 0)?;
                }
                Ok(f)
            }
            Some(Err(e)) => Err(e),
            None => confine::create_file(parent, name),
        }
    }

    /// A new, empty directory `name` in `parent` (never an existing entry).
    pub(crate) fn mkdir(&mut self, parent: &File, name: &[u8]) -> Result<(), Errno> {
        match self.take(Kind::Dir, parent, name) {
            Some(r) => r,
            None => confine::mkdir(parent, name),
        }
    }

    /// Removes the regular file `name` of `parent`, which holds its last name. The
    /// object parked is the one emptied (opened under its name in `spare/`); one with
    /// another host link, or that cannot be emptied, is freed instead.
    pub(crate) fn unlink_file(&mut self, parent: &File, name: &[u8]) -> Result<(), Errno> {
        if !self.park(Kind::File, parent, name)? {
            return confine::unlink(parent, name);
        }
        let dir = self.dir.as_ref().expect("pool is on after parking");
        let files = &mut self.pools[Kind::File as usize];
        let spare = spare_name(Kind::File, *files.last().expect("just parked"));
        let emptied = confine::open_child(dir, &spare, HostKind::File).and_then(|f| {
            if rustix::fs::fstat(&f)?.st_nlink != 1 {
                return Err(Errno::MLINK);
            }
            rustix::fs::ftruncate(&f, 0)
        });
        if emptied.is_err() {
            files.pop();
            self.stats.parked -= 1;
            return confine::unlink(dir, &spare);
        }
        Ok(())
    }

    /// Removes the directory `name` of `parent`, which must be empty on the host too
    /// (else `ENOTEMPTY`, as `rmdir` would say).
    pub(crate) fn rmdir(&mut self, parent: &File, name: &[u8]) -> Result<(), Errno> {
        if self.dir.is_some() {
            let dir = confine::open_child(parent, name, HostKind::Dir)?;
            if !confine::list_dir(&dir)?.is_empty() {
                return Err(Errno::NOTEMPTY);
            }
            if self.park(Kind::Dir, parent, name)? {
                return Ok(());
            }
        }
        confine::rmdir(parent, name)
    }
}
