//! The replica's durable protocol records (`PersistRecord`): an append-only log, replayed
//! into `consensus::Recovered` on restart (MinBFT section 5: a replica that restarts must
//! neither forget what it sent — its USIG counters, its COMMITs, the PREPAREs it accepted —
//! nor the view it is in).
//!
//! Records are buffered by `append` and made durable together by one `sync` (one
//! `fdatasync`), which the runtime calls before any message produced after them can
//! leave the process. Each record is `u32` length, an 8-byte check of the body, the
//! bincode body; a torn or corrupt tail (a crash during a write) is cut off on open. The
//! check is the body's CRC-32 and the tag `CRC1` (`record_check`); logs written before
//! the twelfth session have the first 8 bytes of the body's SHA-256 there, and replay
//! accepts either. It only has to find torn writes, not forgeries (whoever can write the
//! log can write any check), and SHA-256 over every PREPARE's batch (up to a 1 MiB WRITE)
//! cost 5–7% of a replica's CPU in large copies.
//!
//! The file is written ahead with zeros (`PREALLOC_BYTES`, 1 MiB, at a time) and records
//! overwrite that space, so an append changes neither the file's size nor its extent
//! map and its `fdatasync` is a data write and a cache flush, with no journal commit. On
//! this machine's ext4 a 1 KiB append plus `fdatasync` took 225 µs, 160 µs into
//! `fallocate`d space (its extents are still marked unwritten, so the first write to
//! each block commits the journal) and less again over written zeros: medians of
//! 145–198 µs against 210–236 µs, and p95 210–298 µs against 350–380 µs, with three
//! processes syncing at once as three replicas do. Zeros after the last record never
//! parse as one (the check of a new record ends in `CRC1`; no body hashes to zeros).
//! When a checkpoint becomes stable and the file has grown past a bound, it is rewritten
//! with only what is still needed (write temp, fsync, rename, fsync directory).
//!
//! Large records (a PREPARE carrying a 1 MiB WRITE) are written with `O_DIRECT` from a
//! buffer of this process, past the page cache. On this kind of machine (a virtual
//! machine whose host takes back the guest's free memory) the first touch of a page the
//! kernel hands out costs about 2 ms per MiB, so every MiB a buffered write puts into the
//! page cache, where nothing reads it again, cost that much CPU on the protocol thread.
//! Every write, direct or not, covers whole `BLOCK`s from the block holding the end of the
//! last record (whose bytes are kept, `tail`), padded with zeros as the file is, so that
//! a buffered write never has to read a block back that a direct write left uncached. A
//! file system that refuses `O_DIRECT` (tmpfs, or an alignment it does not take) gets
//! buffered writes only. `fdatasync` makes both kinds durable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use consensus::PersistRecord;
use sha2::{Digest as _, Sha256};

/// Rewrite the log at a stable checkpoint once it is larger than this.
pub const LOG_COMPACT_BYTES: u64 = 8 << 20;
/// Largest single record accepted on replay (a VIEW-CHANGE with a full log).
const RECORD_BYTES_MAX: usize = 1 << 30;
/// Space the log file is allocated ahead by: zeros written and synced with the next
/// records, so each step costs one sync of this much (about 2 ms here), eight times
/// between two compactions, rather than tens of milliseconds at once.
const PREALLOC_BYTES: u64 = 1 << 20;

pub const LOG_FILE: &str = "protocol.log";

/// Writes cover whole blocks of this size, at offsets that are multiples of it: a page,
/// so that a buffered write replaces whole pages, and at least any disk's logical block,
/// as `O_DIRECT` requires.
const BLOCK: usize = 4096;
/// Writes of at least this many bytes go past the page cache (`O_DIRECT`).
const DIRECT_BYTES_MIN: usize = 64 << 10;
/// The block buffer kept between writes at most (a 1 MiB WRITE's PREPARE fits).
const SCRATCH_KEEP_BYTES: usize = 4 << 20;
/// Zeroed space a direct write that grows the file leaves after its records.
const DIRECT_SLACK_BYTES: u64 = 64 << 10;

/// Zeros, what the log is allocated ahead with (`allocate`) and what its tail after the
/// last record must be (else it is torn).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// What the records say, kept in memory (the core bounds it between checkpoints).
pub use consensus::replica::DurableRecords as Durable;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("protocol log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct ProtocolLog {
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT`, if the file system takes it.
    direct: Option<File>,
    /// The records' bytes from the last `BLOCK` boundary at or below `len` to `len`.
    tail: Vec<u8>,
    /// Where whole blocks are assembled, at an aligned offset (`write_blocks`).
    scratch: Vec<u8>,
    /// Bytes of records in the file.
    len: u64,
    /// The file's size: records, then zeros allocated ahead.
    allocated: u64,
    pending: Vec<u8>,
    pub durable: Durable,
    /// Records read back on open (0 for a fresh log).
    pub replayed: usize,
    must_sync: bool,
    /// Written to the file but not yet synced.
    unsynced: bool,
}

/// The check written before a record's body: its CRC-32, then `CRC1`.
fn record_check(body: &[u8]) -> [u8; 8] {
    let mut check = [0; 8];
    check[..4].copy_from_slice(&crc32fast::hash(body).to_be_bytes());
    check[4..].copy_from_slice(b"CRC1");
    check
}

/// Whether `check` vouches for `body`: a current check, or an older log's SHA-256 prefix.
fn check_holds(check: &[u8], body: &[u8]) -> bool {
    check == record_check(body) || Sha256::digest(body)[..8] == *check
}

fn frame(rec: &PersistRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 12]);
    crate::net::encode_into(rec, out);
    let body = start + 12;
    let len = (out.len() - body) as u32;
    let check = record_check(&out[body..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..body].copy_from_slice(&check);
}

impl ProtocolLog {
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(LOG_FILE);
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut durable = Durable::default();
        let mut at = 0usize;
        let mut replayed = 0;
        while let Some(rec) = Self::next_record(&bytes, &mut at) {
            durable.apply(rec);
            replayed += 1;
        }
        // Anything but zeros after the last record is a torn write (compared a chunk at a
        // time: the allocated tail is up to a megabyte of zeros).
        let tail = &bytes[at..];
        let torn = tail.chunks(ZEROS.len()).any(|c| c != &ZEROS[..c.len()]);
        let mut allocated = bytes.len() as u64;
        if !allocated.is_multiple_of(BLOCK as u64) && !torn {
            // A log from before whole-block writes: its allocated end moves to a block
            // boundary (zeros, as after the records), so that direct writes align.
            let end = round_up(allocated);
            allocate(&file, allocated, end - allocated).map_err(io)?;
            allocated = end;
        }
        if torn {
            tracing::warn!(
                path = %path.display(),
                valid = at,
                "cutting a torn tail off the protocol log"
            );
            file.set_len(at as u64).map_err(io)?;
            allocated = round_up(at as u64 + PREALLOC_BYTES);
            allocate(&file, at as u64, allocated - at as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else if at > 0 {
            // What a crashed process left in the page cache becomes durable before the
            // replica acts on it (a USIG lease read back here is relied on at once),
            // including the name of a log a compaction renamed into place.
            file.sync_data().map_err(io)?;
            sync_dir(dir).map_err(io)?;
        }
        let direct = open_direct(&path);
        Ok(ProtocolLog {
            len: at as u64,
            allocated,
            tail: bytes[at - at % BLOCK..at].to_vec(),
            scratch: Vec::new(),
            direct,
            path,
            file,
            pending: Vec::new(),
            must_sync: false,
            unsynced: false,
            durable,
            replayed,
        })
    }

    fn next_record(bytes: &[u8], at: &mut usize) -> Option<PersistRecord> {
        let rest = bytes.get(*at..)?;
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        if len > RECORD_BYTES_MAX {
            return None;
        }
        let sum = rest.get(4..12)?;
        let body = rest.get(12..12 + len)?;
        if !check_holds(sum, body) {
            return None;
        }
        let rec = crate::net::decode(body).ok()?;
        *at += 12 + len;
        Some(rec)
    }

    /// Buffers a record; durable after the next `sync`.
    pub fn append(&mut self, rec: PersistRecord) {
        // A `Sent` record need not be durable before its message leaves: the intent
        // synced before its `CreateUi`, plus the USIG's last UI, rebuild it (and the next
        // intent's sync flushes it anyway). Everything else must be.
        if !matches!(rec, PersistRecord::Sent(_)) {
            self.must_sync = true;
        }
        frame(&rec, &mut self.pending);
        let compact = matches!(rec, PersistRecord::Stable(_));
        self.durable.apply(rec);
        if compact && self.len.saturating_add(self.pending.len() as u64) > LOG_COMPACT_BYTES {
            // Rewritten from `durable` at the next sync.
            self.pending.clear();
            self.len = u64::MAX;
        }
    }

    /// Whether a pending record must be durable before any message leaves.
    pub fn must_sync(&self) -> bool {
        self.must_sync || self.len == u64::MAX
    }

    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty() || self.len == u64::MAX || self.unsynced
    }

    /// Writes the appended records into the file (the page cache, which survives a
    /// killed process) without syncing; `sync` makes them durable.
    pub fn write_pending(&mut self) -> Result<(), LogError> {
        if self.len == u64::MAX {
            return self.compact();
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let io = |source| LogError::Io { path, source };
        self.write_pending_io().map_err(io)
    }

    fn write_pending_io(&mut self) -> std::io::Result<()> {
        let end = self.len + self.pending.len() as u64;
        let direct = self.pending.len() >= DIRECT_BYTES_MIN && self.direct.is_some();
        if direct {
            // One write of the records and, if they run past the allocated space, of a
            // little zeroed space after them (`DIRECT_SLACK_BYTES`) for the small records
            // that follow: a megabyte of zeros ahead of every large record would double
            // what the disk writes.
            let upto = if end > self.allocated {
                round_up(end + DIRECT_SLACK_BYTES)
            } else {
                round_up(end)
            };
            match self.write_blocks(upto, true) {
                Ok(()) => {
                    self.allocated = self.allocated.max(upto);
                    self.written(end);
                    return Ok(());
                }
                Err(e) => self.refuse_direct(e)?,
            }
        }
        if end > self.allocated {
            // Grows the file once per `PREALLOC_BYTES`: this sync commits the new size.
            let upto = round_up(self.allocated + (end - self.allocated).max(PREALLOC_BYTES));
            allocate(&self.file, self.allocated, upto - self.allocated)?;
            self.allocated = upto;
        }
        self.write_blocks(round_up(end), false)?;
        self.written(end);
        Ok(())
    }

    /// Accounts for `pending` written, up to `end`.
    fn written(&mut self, end: u64) {
        self.len = end;
        let keep = (end % BLOCK as u64) as usize;
        if keep <= self.pending.len() {
            self.tail.clear();
            self.tail
                .extend_from_slice(&self.pending[self.pending.len() - keep..]);
        } else {
            self.tail.extend_from_slice(&self.pending);
            self.tail.drain(..self.tail.len() - keep);
        }
        self.pending.clear();
        self.unsynced = true;
    }

    /// Writes `tail` and `pending` as whole blocks from the block holding `len`, padded
    /// with zeros up to `upto` (a block boundary), with `O_DIRECT` if `direct`.
    fn write_blocks(&mut self, upto: u64, direct: bool) -> std::io::Result<()> {
        let start = self.len - self.tail.len() as u64;
        let bytes = self.tail.len() + self.pending.len();
        let padded = (upto - start) as usize;
        if self.scratch.len() < padded + BLOCK {
            self.scratch.resize(padded + BLOCK, 0);
        }
        let at = self.scratch.as_ptr().align_offset(BLOCK);
        let buf = &mut self.scratch[at..at + padded];
        buf[..self.tail.len()].copy_from_slice(&self.tail);
        buf[self.tail.len()..bytes].copy_from_slice(&self.pending);
        buf[bytes..].fill(0);
        let file = match (&self.direct, direct) {
            (Some(d), true) => d,
            _ => &self.file,
        };
        let written = file.write_all_at(buf, start);
        if self.scratch.len() > SCRATCH_KEEP_BYTES {
            // A VIEW-CHANGE or a state record can be large; keep no such buffer for long.
            self.scratch = Vec::new();
        }
        written
    }

    /// After a direct write failed: an `EINVAL` means the file system does not take this
    /// alignment, and the log goes on with buffered writes; any other error is the
    /// caller's.
    fn refuse_direct(&mut self, e: std::io::Error) -> std::io::Result<()> {
        if e.raw_os_error() != Some(libc::EINVAL) || self.direct.is_none() {
            return Err(e);
        }
        tracing::info!(
            path = %self.path.display(),
            "O_DIRECT writes refused here ({e}); the protocol log writes through the page cache"
        );
        self.direct = None;
        Ok(())
    }

    /// Makes every appended record durable (one `fdatasync`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.write_pending()?;
        if !self.unsynced {
            self.must_sync = false;
            return Ok(());
        }
        self.file.sync_data().map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.unsynced = false;
        self.must_sync = false;
        Ok(())
    }

    fn compact(&mut self) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let old_len = self.file.metadata().map_or(0, |m| m.len());
        let tmp = self.path.with_extension("log.tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogError::Io { path, source }
        };
        let mut bytes = Vec::new();
        for rec in self.durable.records() {
            frame(&rec, &mut bytes);
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        let allocated = round_up(bytes.len() as u64 + PREALLOC_BYTES);
        allocate(&f, bytes.len() as u64, allocated - bytes.len() as u64).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir).map_err(io(dir))?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.direct = self
            .direct
            .is_some()
            .then(|| open_direct(&self.path))
            .flatten();
        self.len = bytes.len() as u64;
        self.allocated = allocated;
        self.tail = bytes[bytes.len() - bytes.len() % BLOCK..].to_vec();
        self.pending.clear();
        self.unsynced = false;
        self.must_sync = false;
        tracing::debug!(
            old_bytes = old_len,
            new_bytes = self.len,
            took_us = started.elapsed().as_micros() as u64,
            "protocol log compacted"
        );
        Ok(())
    }
}

/// Makes the names in `dir` durable (a file created or renamed into it).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The log file opened a second time for `O_DIRECT` writes, if the file system takes it.
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Extends `file` by `len` bytes of zeros at `offset`, written for real (not
/// `fallocate`d) so that later records overwrite blocks the file system already counts
/// as written: syncing them then needs no journal commit. The caller's next sync makes
/// the zeros durable with the size.
fn allocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = (end - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let valid = {
            let mut log = ProtocolLog::open(dir.path()).expect("open");
            log.append(PersistRecord::View(3));
            log.append(PersistRecord::NewViewAccepted(3));
            log.sync().expect("sync");
            log.append(PersistRecord::View(4));
            log.sync().expect("sync");
            log.len
        };
        let path = dir.path().join(LOG_FILE);
        // A record torn by a crash, in the space allocated after the last one.
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(&[0, 0, 0, 9, 1, 2], valid).expect("write");
        drop(f);
        let mut log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!(log.durable.view, 4);
        assert_eq!(log.durable.new_view_accepted, 3);
        assert_eq!(log.replayed, 3);
        assert_eq!(log.len, valid);
        let bytes = std::fs::read(&path).expect("read");
        assert!(
            bytes[valid as usize..].iter().all(|&b| b == 0),
            "torn bytes left"
        );
        // Appends go on after the cut.
        log.append(PersistRecord::View(5));
        log.sync().expect("sync");
        drop(log);
        assert_eq!(
            ProtocolLog::open(dir.path()).expect("reopen").durable.view,
            5
        );
    }

    /// A log written before the CRC check (8 bytes of SHA-256 per record) still
    /// replays, and records appended after it use the new check.
    #[test]
    fn a_log_with_sha_checks_still_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut old = Vec::new();
        for v in [7u64, 8] {
            let body = crate::net::encode(&PersistRecord::View(v));
            old.extend_from_slice(&(body.len() as u32).to_be_bytes());
            old.extend_from_slice(&Sha256::digest(&body)[..8]);
            old.extend_from_slice(&body);
        }
        std::fs::write(dir.path().join(LOG_FILE), &old).expect("write");
        let mut log = ProtocolLog::open(dir.path()).expect("open");
        assert_eq!((log.durable.view, log.replayed), (8, 2));
        log.append(PersistRecord::View(9));
        log.sync().expect("sync");
        drop(log);
        let bytes = std::fs::read(dir.path().join(LOG_FILE)).expect("read");
        assert_eq!(&bytes[old.len() + 8..old.len() + 12], b"CRC1");
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!((log.durable.view, log.replayed), (9, 3));
        // A flipped byte in a body fails either check.
        let mut bad = bytes.clone();
        bad[old.len() + 12] ^= 1;
        std::fs::write(dir.path().join(LOG_FILE), &bad).expect("write");
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!((log.durable.view, log.replayed), (8, 2));
    }

    #[test]
    fn appends_write_into_allocated_space_without_growing_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOG_FILE);
        let mut log = ProtocolLog::open(dir.path()).expect("open");
        log.append(PersistRecord::View(1));
        log.sync().expect("sync");
        let size = std::fs::metadata(&path).expect("stat").len();
        assert_eq!(size, PREALLOC_BYTES);
        for v in 2..100 {
            log.append(PersistRecord::View(v));
            log.sync().expect("sync");
        }
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
        drop(log);
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!((log.durable.view, log.replayed), (99, 99));
        // The zeros after the records are no torn tail: nothing was cut or re-allocated.
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    }

    /// Large records go past the page cache in whole blocks and grow the file by only a
    /// little slack; small ones before and after them land in the same blocks; all of it
    /// replays, with zeros after the last record.
    #[test]
    fn large_and_small_records_interleave_in_whole_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOG_FILE);
        let lease = |counter, fill: char, bytes| consensus::UsigLease {
            counter,
            boot: std::iter::repeat_n(fill, bytes).collect(),
        };
        let mut log = ProtocolLog::open(dir.path()).expect("open");
        log.append(PersistRecord::View(1));
        log.sync().expect("sync");
        for (i, bytes) in [(2u64, 200_000usize), (5, 1_500_000), (8, 300_000)] {
            log.append(PersistRecord::Lease(lease(i, 'a', bytes)));
            log.sync().expect("sync large");
            assert_eq!(log.tail.len() as u64, log.len % BLOCK as u64);
            log.append(PersistRecord::View(i + 1));
            log.append(PersistRecord::View(i + 2));
            log.sync().expect("sync small");
        }
        let last = lease(11, 'b', 70_000);
        log.append(PersistRecord::Lease(last.clone()));
        log.append(PersistRecord::View(12));
        log.sync().expect("sync both");
        let len = log.len;
        drop(log);
        let size = std::fs::metadata(&path).expect("stat").len();
        assert!(size.is_multiple_of(BLOCK as u64));
        assert!(
            size < len + PREALLOC_BYTES + BLOCK as u64,
            "{size} bytes for {len} of records"
        );
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!(log.replayed, 1 + 3 * 3 + 2);
        assert_eq!(
            (log.durable.view, log.durable.lease.clone()),
            (12, Some(last))
        );
        assert_eq!(log.len, len);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), size);
    }

    /// A log whose size is not a multiple of `BLOCK` (written before whole-block writes)
    /// is padded to one on open and goes on.
    #[test]
    fn an_unaligned_log_is_padded_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOG_FILE);
        let mut bytes = Vec::new();
        frame(&PersistRecord::View(3), &mut bytes);
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &bytes).expect("write");
        let mut log = ProtocolLog::open(dir.path()).expect("open");
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), BLOCK as u64);
        log.append(PersistRecord::Lease(consensus::UsigLease {
            counter: 4,
            boot: "c".repeat(100_000),
        }));
        log.append(PersistRecord::View(4));
        log.sync().expect("sync");
        drop(log);
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!((log.durable.view, log.replayed), (4, 3));
    }

    #[test]
    fn compaction_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = ProtocolLog::open(dir.path()).expect("open");
        log.append(PersistRecord::View(2));
        let lease = consensus::UsigLease {
            counter: 77,
            boot: "b".into(),
        };
        log.append(PersistRecord::Lease(lease.clone()));
        log.len = LOG_COMPACT_BYTES;
        log.append(PersistRecord::Stable(
            consensus::message::CheckpointCert::default(),
        ));
        assert!(log.is_dirty());
        log.sync().expect("compact");
        drop(log);
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!(log.durable.view, 2);
        assert_eq!(log.durable.lease, Some(lease));
        assert_eq!(log.replayed, 4);
    }
}
