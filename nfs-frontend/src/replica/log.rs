//! The replica's durable protocol records (`PersistRecord`): an append-only log, replayed
//! into `consensus::Recovered` on restart (MinBFT section 5: a replica that restarts must
//! neither forget what it sent — its USIG counters, its COMMITs, the PREPAREs it accepted —
//! nor the view it is in).
//!
//! Records are buffered by `append` and made durable together by one `sync` (one
//! `fdatasync`), which the runtime calls before any message produced after them can
//! leave the process. Each record is `u32` length, 8 bytes of SHA-256 over the body, the
//! bincode body; a torn or corrupt tail (a crash during a write) is cut off on open.
//! When a checkpoint becomes stable and the file has grown past a bound, it is rewritten
//! with only what is still needed (write temp, fsync, rename, fsync directory).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use consensus::PersistRecord;
use sha2::{Digest as _, Sha256};

/// Rewrite the log at a stable checkpoint once it is larger than this.
pub const LOG_COMPACT_BYTES: u64 = 8 << 20;
/// Largest single record accepted on replay (a VIEW-CHANGE with a full log).
const RECORD_BYTES_MAX: usize = 1 << 30;

pub const LOG_FILE: &str = "protocol.log";

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
    len: u64,
    pending: Vec<u8>,
    pub durable: Durable,
    /// Records read back on open (0 for a fresh log).
    pub replayed: usize,
    must_sync: bool,
    /// Written to the file but not yet synced.
    unsynced: bool,
}

fn frame(rec: &PersistRecord, out: &mut Vec<u8>) {
    let body = crate::net::encode(rec);
    let sum = Sha256::digest(&body);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&sum[..8]);
    out.extend_from_slice(&body);
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
            .append(true)
            .create(true)
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
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid = at,
                dropped = bytes.len() - at,
                "cutting a torn tail off the protocol log"
            );
            file.set_len(at as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        } else if at > 0 {
            // What a crashed process left in the page cache becomes durable before the
            // replica acts on it (a USIG lease read back here is relied on at once).
            file.sync_data().map_err(io)?;
        }
        Ok(ProtocolLog {
            len: at as u64,
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
        if Sha256::digest(body)[..8] != *sum {
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
        if compact && self.len + self.pending.len() as u64 > LOG_COMPACT_BYTES {
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
        self.file
            .write_all(&self.pending)
            .map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.len += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
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
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.len = bytes.len() as u64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = ProtocolLog::open(dir.path()).expect("open");
            log.append(PersistRecord::View(3));
            log.append(PersistRecord::NewViewAccepted(3));
            log.sync().expect("sync");
            log.append(PersistRecord::View(4));
            log.sync().expect("sync");
        }
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let full = bytes.len();
        bytes.extend_from_slice(&[0, 0, 0, 9, 1, 2]);
        std::fs::write(&path, &bytes).expect("write");
        let log = ProtocolLog::open(dir.path()).expect("reopen");
        assert_eq!(log.durable.view, 4);
        assert_eq!(log.durable.new_view_accepted, 3);
        assert_eq!(log.replayed, 3);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), full as u64);
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
