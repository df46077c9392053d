//! The software USIG: `createUI` (MinBFT section 3) with an in-process key (ECDSA P-256,
//! or an HMAC-SHA256 key the cluster's USIGs share) and a counter kept in a small state file, durable before a UI leaves this module
//! (`create_ui`), or anchored in the caller's own synced log (`create_ui_deferred`).
//!
//! Section 3 requires that a USIG never assigns one counter value to two messages, also
//! across restarts. `create_ui` releases a UI only after the record of its counter (with
//! its digest and signature) is on disk, so a restart continues above every released
//! value. A caller that logs every message it certifies, syncs that log before any of
//! them leaves, and on restart moves the counter up to the last logged UI
//! (`advance_to`, checked against this USIG's own signature) may instead use
//! `create_ui_deferred` + `write_back`, with `sync` now and then: the replica's protocol
//! log then carries the counter's durability and one `fdatasync` serves both.
//!
//! # State file and why it is crash-safe
//!
//! `usig.state` is 1536 bytes: a 512-byte header block (magic, format version, replica
//! id, public key, SHA-256 checksum) and two 512-byte record slots. Each record holds a
//! counter, the digest and the signature of the UI with that counter, and a SHA-256
//! checksum over the record, the header's checksum and the slot index. One slot holds the
//! last synced record and is never written until another record is synced; every write
//! goes to the other slot with one `pwrite` (and, to make it durable, `fdatasync`), after
//! which the roles swap. The file is written in full and fsynced (then renamed into place
//! and the directory fsynced) once, when the state is created, so later writes never
//! change its size or block allocation and `fdatasync` is enough.
//!
//! On open both slots are read and the higher valid counter is the last issued value.
//! One valid: the other is a write torn by a crash; it can only be the slot being
//! written, whose `fdatasync` never returned, so (for `create_ui`) that UI was never
//! released, and (for deferred UIs) the caller's log holds it. None valid, a wrong size,
//! header or key: an error, never a reset to 0. The argument assumes that the disk
//! returns what an `fdatasync` that returned wrote (a record that decays after a
//! successful sync is indistinguishable from a torn write), as every durable system on a
//! single disk does, and that a 512-byte aligned block is written whole or not at all
//! (the sector size of the disks here; a torn scratch slot is detected by its checksum
//! in any case, and the synced slot shares no sector with it).
//!
//! A failed write or sync poisons the instance: whether the value reached the disk is
//! unknown, so it refuses to continue until reopened, which reads back what is there.
//! An exclusive lock on `usig.lock` keeps two processes from sharing one state.
//!
//! One record write costs a `pwrite` + `fdatasync` of one block in place, measured at
//! about a fifth of the write-temp, fsync, rename, fsync-directory scheme (README.md).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::key::{Signer, sync_dir};
use crate::verify::{ECDSA_P256_PUBLIC_KEY_LEN, ECDSA_P256_SIGNATURE_LEN};
use crate::{
    Digest, IssuedUi, ReplicaId, Ui, Usig, UsigError, UsigIdentity, Verifier, VerifyError,
};

/// Name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "usig.state";
const STATE_TEMP_NAME: &str = "usig.state.tmp";
const LOCK_FILE_NAME: &str = "usig.lock";

const BLOCK_LEN: usize = 512;
const SLOT_COUNT: usize = 2;
const FILE_LEN: usize = BLOCK_LEN * (1 + SLOT_COUNT);

const HEADER_MAGIC: &[u8; 16] = b"bftnfs/usig/st1\0";
const FORMAT_VERSION: u32 = 1;
const HEADER_BODY_LEN: usize = 16 + 4 + 4 + ECDSA_P256_PUBLIC_KEY_LEN;

const SLOT_MAGIC: &[u8; 8] = b"usigslot";
const SLOT_BODY_LEN: usize = 8 + 8 + 32 + ECDSA_P256_SIGNATURE_LEN;

/// A record slot's contents: the UI with `counter` (none yet if `counter` is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    counter: u64,
    digest: Digest,
    cert: [u8; ECDSA_P256_SIGNATURE_LEN],
}

impl Record {
    const NONE: Record = Record {
        counter: 0,
        digest: [0; 32],
        cert: [0; ECDSA_P256_SIGNATURE_LEN],
    };

    /// Shared-key certificates are shorter than the slot; the rest of it is zeros.
    fn new(counter: u64, digest: Digest, cert: &[u8]) -> Option<Record> {
        let mut out = [0; ECDSA_P256_SIGNATURE_LEN];
        out.get_mut(..cert.len())?.copy_from_slice(cert);
        Some(Record {
            counter,
            digest,
            cert: out,
        })
    }

    fn issued(&self, cert_len: usize) -> Option<IssuedUi> {
        (self.counter > 0).then(|| IssuedUi {
            digest: self.digest,
            ui: Ui {
                counter: self.counter,
                cert: self.cert[..cert_len].to_vec(),
            },
        })
    }
}

/// A USIG with an in-process key whose counter is durable in `state_dir`.
pub struct SoftwareUsig {
    replica: ReplicaId,
    signer: Signer,
    path: PathBuf,
    file: File,
    /// Held for the lifetime of the instance; the lock is the open file description.
    _lock: File,
    header_sum: [u8; 32],
    /// The last UI issued (perhaps only in memory so far).
    last: Record,
    /// The slot holding the last synced record; writes go to the other one.
    synced_slot: usize,
    /// `last` is in the file (page cache at least) / on disk.
    written: bool,
    synced: bool,
    poisoned: bool,
}

impl SoftwareUsig {
    /// Open the USIG state in `state_dir` (which must exist), creating it at counter 0
    /// if there is none. Fails if the state belongs to another replica or key, is
    /// corrupt, or is held by another process.
    /// `key` is a key file's bytes (`SigningKey::key_bytes`).
    pub fn open(state_dir: &Path, replica: ReplicaId, key: &[u8]) -> Result<Self, UsigError> {
        let signer = Signer::from_key_bytes(key)?;
        let lock = lock_state_dir(state_dir)?;
        let path = state_dir.join(STATE_FILE_NAME);
        let header = encode_header(replica, &signer.header_id());
        let header_sum: [u8; 32] = header[HEADER_BODY_LEN..HEADER_BODY_LEN + 32]
            .try_into()
            .expect("32-byte checksum");

        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                create_state_file(state_dir, &header, &header_sum)?;
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| UsigError::io(format!("opening {}", path.display()), e))?
            }
            Err(e) => return Err(UsigError::io(format!("opening {}", path.display()), e)),
        };

        let bytes = read_state_file(&file, &path)?;
        let corrupt = |reason: String| UsigError::CorruptState {
            path: path.clone(),
            reason,
        };
        check_header(&bytes[..BLOCK_LEN], &header, replica, &path)?;
        let slots: [Result<Record, String>; SLOT_COUNT] = std::array::from_fn(|index| {
            let block = &bytes[BLOCK_LEN * (1 + index)..BLOCK_LEN * (2 + index)];
            decode_slot(block, index, &header_sum)
        });
        let (last, synced_slot) = match slots {
            [Ok(a), Ok(b)] => {
                if a.counter == b.counter && a.counter != 0 {
                    return Err(corrupt(format!(
                        "both slots hold counter {}, which no sequence of writes leaves",
                        a.counter
                    )));
                }
                if a.counter >= b.counter {
                    (a, 0)
                } else {
                    (b, 1)
                }
            }
            // A torn write of the other slot: see the module documentation.
            [Ok(valid), Err(_)] => (valid, 0),
            [Err(_), Ok(valid)] => (valid, 1),
            [Err(e0), Err(e1)] => {
                return Err(corrupt(format!("slot 0: {e0}; slot 1: {e1}")));
            }
        };
        if last.cert[signer.cert_len()..].iter().any(|&b| b != 0) {
            return Err(corrupt(format!(
                "the last record's certificate runs past the {} bytes this key makes",
                signer.cert_len()
            )));
        }
        if let Some(issued) = last.issued(signer.cert_len()) {
            signer
                .verifier()
                .verify(replica, &issued.digest, &issued.ui)
                .map_err(|e| corrupt(format!("last issued UI does not verify: {e}")))?;
        }

        let mut usig = SoftwareUsig {
            replica,
            signer,
            path,
            file,
            _lock: lock,
            header_sum,
            last,
            synced_slot,
            written: true,
            synced: true,
            poisoned: false,
        };
        // What was read may be a write-back still in the page cache (a process crash
        // keeps it): make it durable before any write goes to the other slot.
        usig.sync_file()?;
        Ok(usig)
    }

    /// Writes `last` into the slot that does not hold the last synced record, without
    /// syncing. Repeated write-backs overwrite that scratch slot; only `sync` swaps.
    fn write_last(&mut self) -> Result<(), UsigError> {
        let slot = 1 - self.synced_slot;
        let block = encode_slot(&self.last, slot, &self.header_sum);
        let offset = (BLOCK_LEN * (1 + slot)) as u64;
        if let Err(e) = self.file.write_all_at(&block, offset) {
            self.poisoned = true;
            return Err(self.persist_error(e));
        }
        self.written = true;
        Ok(())
    }

    fn persist_error(&self, e: std::io::Error) -> UsigError {
        UsigError::io(
            format!(
                "persisting counter {} to {}",
                self.last.counter,
                self.path.display()
            ),
            e,
        )
    }

    fn sync_file(&mut self) -> Result<(), UsigError> {
        self.file.sync_data().map_err(|e| {
            self.poisoned = true;
            self.persist_error(e)
        })
    }

    /// The state file this instance persists to.
    pub fn state_path(&self) -> &Path {
        &self.path
    }
}

impl Usig for SoftwareUsig {
    fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn identity(&self) -> UsigIdentity {
        self.signer.identity()
    }

    fn verifier(&self) -> Result<Verifier, VerifyError> {
        Ok(self.signer.verifier())
    }

    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        let ui = self.create_ui_deferred(digest)?;
        self.sync()?;
        Ok(ui)
    }

    /// Signs now; nothing of this UI is in the file until `write_back` or `sync`, so a
    /// crash before them leaves the counter where it was. Several deferred UIs may be
    /// issued in a row: the file only ever needs the last. The caller must log each UI
    /// and sync that log before the UI leaves, and call `advance_to` with the last
    /// logged UI on restart (see the module documentation).
    fn create_ui_deferred(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        if self.poisoned {
            return Err(UsigError::Poisoned);
        }
        let counter = self
            .last
            .counter
            .checked_add(1)
            .ok_or(UsigError::CounterExhausted)?;
        let ui = self.signer.certify(self.replica, counter, digest)?;
        self.last = Record::new(counter, *digest, &ui.cert).expect("a certificate fits a slot");
        self.written = false;
        self.synced = false;
        Ok(ui)
    }

    fn write_back(&mut self) -> Result<(), UsigError> {
        if self.poisoned {
            return Err(UsigError::Poisoned);
        }
        if self.written {
            return Ok(());
        }
        self.write_last()
    }

    fn sync(&mut self) -> Result<(), UsigError> {
        if self.poisoned {
            return Err(UsigError::Poisoned);
        }
        if self.synced {
            return Ok(());
        }
        if !self.written {
            self.write_last()?;
        }
        self.sync_file()?;
        self.synced_slot = 1 - self.synced_slot;
        self.synced = true;
        Ok(())
    }

    fn needs_sync(&self) -> bool {
        !self.synced
    }

    /// Any counter above ours is accepted if this USIG's key certified it: moving up is
    /// always safe for the USIG property (a counter never goes back), and the signature
    /// shows the value was issued by this USIG, so the caller is not inventing one.
    fn advance_to(&mut self, issued: &IssuedUi) -> Result<(), UsigError> {
        self.sync()?;
        if issued.ui.counter <= self.last.counter {
            return Ok(());
        }
        self.signer
            .verifier()
            .verify(self.replica, &issued.digest, &issued.ui)
            .map_err(|e| UsigError::NotOurs(e.to_string()))?;
        self.last = Record::new(issued.ui.counter, issued.digest, &issued.ui.cert)
            .ok_or_else(|| UsigError::NotOurs("certificate length".into()))?;
        self.written = false;
        self.synced = false;
        self.sync()
    }

    fn skip_to(&mut self, counter: u64) -> Result<(), UsigError> {
        self.sync()?;
        if counter <= self.last.counter {
            return Ok(());
        }
        let ui = self
            .signer
            .certify(self.replica, counter, &crate::SKIP_DIGEST)?;
        self.last =
            Record::new(counter, crate::SKIP_DIGEST, &ui.cert).expect("a certificate fits a slot");
        self.written = false;
        self.synced = false;
        self.sync()
    }

    fn last_issued(&self) -> Option<IssuedUi> {
        self.last.issued(self.signer.cert_len())
    }
}

impl std::fmt::Debug for SoftwareUsig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareUsig")
            .field("replica", &self.replica)
            .field("path", &self.path)
            .field("counter", &self.last.counter)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Takes the lock a `SoftwareUsig` holds on `state_dir` for as long as it is open; fails
/// if a USIG (a running replica) holds it. For tools that must not touch a live replica's
/// files.
pub fn lock_state_dir(state_dir: &Path) -> Result<File, UsigError> {
    let path = state_dir.join(LOCK_FILE_NAME);
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| UsigError::io(format!("opening lock file {}", path.display()), e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(UsigError::Locked { path }),
        Err(TryLockError::Error(e)) => Err(UsigError::io(format!("locking {}", path.display()), e)),
    }
}

/// Create the state at counter 0: written in full to a temporary file, synced, renamed
/// into place, directory synced, so a crash leaves either no state file or a whole one.
fn create_state_file(
    state_dir: &Path,
    header: &[u8; BLOCK_LEN],
    header_sum: &[u8; 32],
) -> Result<(), UsigError> {
    let temp = state_dir.join(STATE_TEMP_NAME);
    let context = || format!("creating {}", temp.display());
    let mut bytes = Vec::with_capacity(FILE_LEN);
    bytes.extend_from_slice(header);
    for slot in 0..SLOT_COUNT {
        bytes.extend_from_slice(&encode_slot(&Record::NONE, slot, header_sum));
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| UsigError::io(context(), e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| UsigError::io(context(), e))?;
    drop(file);
    fs::rename(&temp, state_dir.join(STATE_FILE_NAME)).map_err(|e| UsigError::io(context(), e))?;
    sync_dir(state_dir)
}

fn read_state_file(file: &File, path: &Path) -> Result<Vec<u8>, UsigError> {
    let mut bytes = Vec::with_capacity(FILE_LEN + 1);
    file.take(FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UsigError::io(format!("reading {}", path.display()), e))?;
    if bytes.len() != FILE_LEN {
        return Err(UsigError::CorruptState {
            path: path.to_path_buf(),
            reason: if bytes.len() < FILE_LEN {
                format!("truncated: {} bytes, expected {FILE_LEN}", bytes.len())
            } else {
                format!("longer than the expected {FILE_LEN} bytes")
            },
        });
    }
    Ok(bytes)
}

fn encode_header(
    replica: ReplicaId,
    public_key: &[u8; ECDSA_P256_PUBLIC_KEY_LEN],
) -> [u8; BLOCK_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    block[..16].copy_from_slice(HEADER_MAGIC);
    block[16..20].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    block[20..24].copy_from_slice(&replica.to_be_bytes());
    block[24..HEADER_BODY_LEN].copy_from_slice(public_key);
    let sum = Sha256::digest(&block[..HEADER_BODY_LEN]);
    block[HEADER_BODY_LEN..HEADER_BODY_LEN + 32].copy_from_slice(&sum);
    block
}

/// Compare the stored header with the one this replica and key would write, reporting
/// the most specific difference.
fn check_header(
    stored: &[u8],
    expected: &[u8; BLOCK_LEN],
    replica: ReplicaId,
    path: &Path,
) -> Result<(), UsigError> {
    let corrupt = |reason: &str| UsigError::CorruptState {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if stored[..16] != HEADER_MAGIC[..] {
        return Err(corrupt("not a USIG state file (bad magic)"));
    }
    let sum = Sha256::digest(&stored[..HEADER_BODY_LEN]);
    if stored[HEADER_BODY_LEN..HEADER_BODY_LEN + 32] != sum[..]
        || stored[HEADER_BODY_LEN + 32..].iter().any(|&b| b != 0)
    {
        return Err(corrupt("header checksum mismatch"));
    }
    if stored[16..20] != FORMAT_VERSION.to_be_bytes() {
        return Err(corrupt("unsupported format version"));
    }
    let found = ReplicaId::from_be_bytes(stored[20..24].try_into().expect("4 bytes"));
    if found != replica {
        return Err(UsigError::ReplicaMismatch {
            path: path.to_path_buf(),
            expected: replica,
            found,
        });
    }
    if stored[24..HEADER_BODY_LEN] != expected[24..HEADER_BODY_LEN] {
        return Err(UsigError::KeyMismatch {
            path: path.to_path_buf(),
        });
    }
    debug_assert_eq!(stored, &expected[..]);
    Ok(())
}

fn slot_sum(body: &[u8], slot: usize, header_sum: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(header_sum);
    hasher.update([slot as u8]);
    hasher.update(body);
    hasher.finalize().into()
}

fn encode_slot(record: &Record, slot: usize, header_sum: &[u8; 32]) -> [u8; BLOCK_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    block[..8].copy_from_slice(SLOT_MAGIC);
    block[8..16].copy_from_slice(&record.counter.to_be_bytes());
    block[16..48].copy_from_slice(&record.digest);
    block[48..SLOT_BODY_LEN].copy_from_slice(&record.cert);
    let sum = slot_sum(&block[..SLOT_BODY_LEN], slot, header_sum);
    block[SLOT_BODY_LEN..SLOT_BODY_LEN + 32].copy_from_slice(&sum);
    block
}

fn decode_slot(block: &[u8], slot: usize, header_sum: &[u8; 32]) -> Result<Record, String> {
    if block[..8] != SLOT_MAGIC[..] {
        return Err("bad record magic".into());
    }
    if block[SLOT_BODY_LEN..SLOT_BODY_LEN + 32]
        != slot_sum(&block[..SLOT_BODY_LEN], slot, header_sum)
        || block[SLOT_BODY_LEN + 32..].iter().any(|&b| b != 0)
    {
        return Err("record checksum mismatch".into());
    }
    let record = Record {
        counter: u64::from_be_bytes(block[8..16].try_into().expect("8 bytes")),
        digest: block[16..48].try_into().expect("32 bytes"),
        cert: block[48..SLOT_BODY_LEN].try_into().expect("64 bytes"),
    };
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trips_and_rejects_wrong_slot() {
        let sum = [7u8; 32];
        let record = Record {
            counter: 5,
            digest: [1; 32],
            cert: [2; 64],
        };
        let block = encode_slot(&record, 1, &sum);
        assert_eq!(decode_slot(&block, 1, &sum), Ok(record));
        assert!(decode_slot(&block, 0, &sum).is_err());
        assert!(decode_slot(&block, 1, &[8u8; 32]).is_err());
    }

    #[test]
    fn initial_slots_are_valid_at_both_positions() {
        let sum = [7u8; 32];
        for slot in 0..SLOT_COUNT {
            let block = encode_slot(&Record::NONE, slot, &sum);
            assert_eq!(decode_slot(&block, slot, &sum), Ok(Record::NONE));
            assert!(decode_slot(&block, 1 - slot, &sum).is_err());
        }
    }

    #[test]
    fn bytes_past_a_shared_key_certificate_must_be_zero() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::SigningKey::generate_shared().unwrap();
        let mut usig = SoftwareUsig::open(dir.path(), 3, key.key_bytes()).unwrap();
        usig.create_ui(&[5; 32]).unwrap();
        let slot = usig.synced_slot;
        let header_sum = usig.header_sum;
        drop(usig);
        let path = dir.path().join(STATE_FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = BLOCK_LEN * (1 + slot);
        let mut record = decode_slot(&bytes[at..at + BLOCK_LEN], slot, &header_sum).unwrap();
        record.cert[40] = 1;
        bytes[at..at + BLOCK_LEN].copy_from_slice(&encode_slot(&record, slot, &header_sum));
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            SoftwareUsig::open(dir.path(), 3, key.key_bytes()),
            Err(UsigError::CorruptState { .. })
        ));
    }
}
