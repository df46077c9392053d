//! The application a replica runs (MinBFT section 5, "execute"): the file state machine,
//! or a null service for protocol micro-benchmarks.
//!
//! Execution is deterministic (the batch's primary timestamp, the request's
//! credentials). Executed batches are durable through the protocol log, which the runtime
//! syncs before any reply leaves (`replica::Node::sync_all`); the file state itself is
//! synced at checkpoints, and a restart restores the stable checkpoint and re-executes
//! the logged batches above it. A local fault
//! (EIO, ENOSPC, a damaged tree) is an `Err`: the replica stops rather than reply
//! something other replicas would not.

use std::path::Path;

use consensus::{Digest, Request, SeqNum};
use fs_state::{FileStateMachine, FsConfig, FsError, FsManifest, OpContext, is_read_only};
use sha2::{Digest as _, Sha256};
use tracing::{debug, warn};

use crate::op::{BAD_OP_RESULT, decode_op};
use crate::{bundle, null_op};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("snapshot does not decode")]
    BadSnapshot,
}

/// Chunks rehashed per checkpoint by the rolling scrub (on top of the stamp check), so
/// that a change that kept a file's size and times is found within
/// `chunks / SCRUB_REHASH_CHUNKS` checkpoints.
pub const SCRUB_REHASH_CHUNKS: u64 = 64;
/// Regular files whose host stamp the scrub checks per checkpoint, in rolling order, so
/// that a change that moved a file's stamp is found within `files / SCRUB_STAMP_FILES`
/// checkpoints. Checking every file at every checkpoint costs O(files) on the protocol
/// thread: 2–4 ms a checkpoint in the macro-benchmark's last phase, 4–9 ms when each
/// file was opened (`FileStateMachine::scrub_within`).
pub const SCRUB_STAMP_FILES: u64 = 64;

pub enum App {
    Fs(Box<FileStateMachine>),
    /// Orders requests and answers each with an empty result, or one of the size it
    /// asks for (`null_op`).
    Null {
        executed: SeqNum,
    },
}

impl App {
    pub fn open_fs(data_dir: &Path, config: FsConfig) -> Result<Self, AppError> {
        let mut sm = FileStateMachine::open(data_dir, config)?;
        // Checkpoints need every chunk in the store: take them as the digest hashes them.
        sm.store_chunks_when_hashing(true);
        // The flush after each checkpoint (`begin_sync`) makes its chunks durable too.
        sm.defer_capture_sync(true);
        Ok(App::Fs(Box::new(sm)))
    }

    /// Applies batch `n`; one result per request. Durable after the next `sync`, which
    /// the runtime calls before any result (or anything else) leaves the replica.
    pub fn execute(
        &mut self,
        n: SeqNum,
        timestamp_ns: u64,
        requests: &[Request],
    ) -> Result<Vec<Vec<u8>>, AppError> {
        match self {
            App::Null { executed } => {
                *executed = n;
                Ok(requests.iter().map(|r| null_result(&r.op)).collect())
            }
            App::Fs(sm) => {
                let mut results = Vec::with_capacity(requests.len());
                for r in requests {
                    let result = if bundle::is_bundle(&r.op) {
                        match bundle::decode(&r.op) {
                            Some(ops) => {
                                let mut out = Vec::with_capacity(ops.len());
                                for op in ops {
                                    out.push(apply_one(sm, timestamp_ns, op)?);
                                }
                                bundle::encode(&out)
                            }
                            None => BAD_OP_RESULT.to_vec(),
                        }
                    } else {
                        apply_one(sm, timestamp_ns, &r.op)?
                    };
                    results.push(result);
                }
                Ok(results)
            }
        }
    }

    /// Makes every executed batch durable (one sync for all batches since the last).
    /// `FileStateMachine::begin_sync`. `None`: nothing left to flush (the null
    /// application, or a file state configured for per-object syncs, synced here).
    pub fn begin_sync(
        &mut self,
    ) -> Result<Option<(fs_state::Flush, fs_state::PendingSync)>, AppError> {
        match self {
            App::Null { .. } => Ok(None),
            App::Fs(sm) if sm.config().sync_mode != fs_state::SyncMode::Syncfs => {
                sm.sync()?;
                Ok(None)
            }
            App::Fs(sm) => Ok(Some(sm.begin_sync()?)),
        }
    }

    /// `FileStateMachine::finish_sync`.
    pub fn finish_sync(&mut self, pending: fs_state::PendingSync) -> Result<(), AppError> {
        match self {
            App::Null { .. } => Ok(()),
            App::Fs(sm) => Ok(sm.finish_sync(pending)?),
        }
    }

    pub fn sync(&mut self) -> Result<(), AppError> {
        match self {
            App::Null { .. } => Ok(()),
            App::Fs(sm) => Ok(sm.sync()?),
        }
    }

    /// Answers a read-only request without ordering. A mutating operation sent down this
    /// path (a faulty client) is refused, never applied.
    pub fn query(&mut self, op: &[u8]) -> Result<Vec<u8>, AppError> {
        match self {
            App::Null { .. } => Ok(null_result(op)),
            App::Fs(sm) => {
                if !bundle::is_bundle(op) {
                    return query_one(sm, op);
                }
                let Some(ops) = bundle::decode(op) else {
                    return Ok(BAD_OP_RESULT.to_vec());
                };
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    out.push(query_one(sm, op)?);
                }
                Ok(bundle::encode(&out))
            }
        }
    }

    /// The state digest at a checkpoint. First compares (part of) the backing files with
    /// the metadata (`scrub_within`), so that a file changed behind our back makes this digest
    /// differ from the correct replicas' and the core's self-repair path fetches it.
    pub fn digest(&mut self) -> Result<Digest, AppError> {
        match self {
            App::Null { .. } => Ok(Sha256::digest(b"bftnfs/null-app/v1").into()),
            App::Fs(sm) => {
                let s = sm.scrub_within(SCRUB_STAMP_FILES, SCRUB_REHASH_CHUNKS)?;
                if !s.found.is_empty() {
                    warn!(
                        fileids = ?s.found,
                        "backing files differ from the metadata (tampered or corrupt): \
                         this replica's checkpoint will disagree and repair itself"
                    );
                }
                Ok(sm.state_digest()?)
            }
        }
    }

    /// The checkpoint of the current state: an encoded `FsManifest` (metadata and chunk
    /// hashes); the chunks themselves go to the chunk store.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, AppError> {
        match self {
            App::Null { .. } => Ok(Vec::new()),
            App::Fs(sm) => {
                let (m, stats) = sm.checkpoint()?;
                debug!(
                    chunks = stats.chunks_stored,
                    bytes = stats.bytes_stored,
                    copy_us = stats.copy_us,
                    sync_us = stats.sync_us,
                    "checkpoint: new chunks stored"
                );
                Ok(m.encode())
            }
        }
    }

    /// Puts the state at the checkpoint `bytes` (our own stored manifest, or a verified
    /// one whose chunks were fetched); returns the new digest (the caller compares it
    /// with the certified one).
    pub fn restore(&mut self, bytes: &[u8]) -> Result<Digest, AppError> {
        match self {
            App::Null { .. } => {
                if !bytes.is_empty() {
                    return Err(AppError::BadSnapshot);
                }
                self.digest()
            }
            App::Fs(sm) => {
                let m = FsManifest::decode_local(bytes).map_err(|_| AppError::BadSnapshot)?;
                let (d, st) = sm.install(&m)?;
                debug!(?st, "checkpoint installed");
                Ok(d)
            }
        }
    }

    /// The digest a peer's manifest describes (checked for consistency first).
    pub fn manifest_digest(&self, bytes: &[u8]) -> Result<Digest, AppError> {
        match self {
            App::Null { .. } if bytes.is_empty() => {
                Ok(Sha256::digest(b"bftnfs/null-app/v1").into())
            }
            App::Null { .. } => Err(AppError::BadSnapshot),
            App::Fs(sm) => {
                let m = FsManifest::decode(bytes).map_err(|_| AppError::BadSnapshot)?;
                Ok(m.verify(sm.config())?)
            }
        }
    }

    /// Chunks of the manifest `bytes` that our store lacks, and the manifest's content size.
    pub fn missing_chunks(&self, bytes: &[u8]) -> Result<(Vec<Digest>, u64), AppError> {
        match self {
            App::Null { .. } => Ok((Vec::new(), 0)),
            App::Fs(sm) => {
                let m = FsManifest::decode(bytes).map_err(|_| AppError::BadSnapshot)?;
                Ok((sm.missing_chunks(&m), m.content_bytes()))
            }
        }
    }

    pub fn get_chunk(&mut self, h: &Digest) -> Result<Option<Vec<u8>>, AppError> {
        match self {
            App::Null { .. } => Ok(None),
            App::Fs(sm) => Ok(sm.get_chunk(h)?),
        }
    }

    /// Stores a fetched chunk; false if it does not hash to `h`.
    pub fn put_chunk(&mut self, h: &Digest, data: &[u8]) -> Result<bool, AppError> {
        match self {
            App::Null { .. } => Ok(false),
            App::Fs(sm) => Ok(sm.put_chunk(h, data)?),
        }
    }

    /// Deletes stored chunks that none of the manifests `keep` references.
    pub fn retain_chunks(&mut self, keep: &[&[u8]]) -> Result<usize, AppError> {
        match self {
            App::Null { .. } => Ok(0),
            App::Fs(sm) => {
                let ms = keep
                    .iter()
                    .map(|b| FsManifest::decode_local(b).map_err(|_| AppError::BadSnapshot))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(sm.retain_chunks(ms.iter())?)
            }
        }
    }

    /// Tells the file state machine that a state transfer starts (`true`) or ended.
    pub fn set_transfer(&mut self, active: bool) {
        if let App::Fs(sm) = self {
            if active {
                sm.transfer_started();
            } else {
                sm.transfer_ended();
            }
        }
    }

    /// Clean shutdown (the next open skips rehashing).
    pub fn close(self) -> Result<(), AppError> {
        match self {
            App::Null { .. } => Ok(()),
            App::Fs(sm) => Ok(sm.close()?),
        }
    }
}

/// The null application's answer: empty, or one empty result per bundled operation.
fn null_result(op: &[u8]) -> Vec<u8> {
    match bundle::decode(op) {
        Some(ops) => bundle::encode(&ops.iter().map(|op| null_op::result(op)).collect::<Vec<_>>()),
        None if bundle::is_bundle(op) => BAD_OP_RESULT.to_vec(),
        None => null_op::result(op),
    }
}

/// Applies one ordered operation (durable at the next `App::sync`).
fn apply_one(sm: &mut FileStateMachine, timestamp_ns: u64, op: &[u8]) -> Result<Vec<u8>, AppError> {
    if op.is_empty() {
        return Ok(Vec::new());
    }
    let Some((cred, op)) = decode_op(op) else {
        return Ok(BAD_OP_RESULT.to_vec());
    };
    let ctx = OpContext { timestamp_ns, cred };
    Ok(sm.apply(&ctx, &op)?.encode())
}

/// Answers one operation on the read-only path; a mutating one is refused.
fn query_one(sm: &mut FileStateMachine, op: &[u8]) -> Result<Vec<u8>, AppError> {
    if op.is_empty() {
        return Ok(Vec::new());
    }
    match decode_op(op) {
        Some((cred, op)) if is_read_only(&op) => {
            // Read-only procedures ignore the time (fs-state: READ does not touch
            // atime); 0 makes any accidental use visible.
            let ctx = OpContext {
                timestamp_ns: 0,
                cred,
            };
            Ok(sm.apply(&ctx, &op)?.encode())
        }
        _ => Ok(BAD_OP_RESULT.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use fs_state::{AuthUnix, CreateHow, Filename3, FsOp, Sattr3, StableHow};

    use super::*;
    use crate::op::encode_op;

    fn req(op: &FsOp) -> Request {
        Request {
            client: 1,
            seq: 1,
            read_only: false,
            op: encode_op(&AuthUnix::root(), op).into(),
            sig: Vec::new(),
        }
    }

    /// The read-only path runs unordered on each replica at a different moment, so it
    /// must leave the replicated state (and thus the digest) exactly as it was.
    #[test]
    fn read_only_operations_change_no_replicated_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut app = App::open_fs(dir.path(), FsConfig::default()).expect("open");
        let root = fs_state::FileHandle::root(FsConfig::default().generation);
        let create = FsOp::Create {
            dir: root.clone(),
            name: Filename3::from("f"),
            how: CreateHow::Unchecked(Sattr3::default()),
        };
        let out = app.execute(1, 1_000, &[req(&create)]).expect("create");
        let reply = fs_state::FsReply::decode(&out[0]).expect("reply");
        let Ok(fs_state::ReplyBody::Create { obj: Some(fh), .. }) = reply.0 else {
            panic!("create: {reply:?}")
        };
        let write = FsOp::Write {
            fh: fh.clone(),
            offset: 0,
            stable: StableHow::FileSync,
            data: vec![1; 100],
        };
        app.execute(2, 2_000, &[req(&write)]).expect("write");
        let before = app.digest().expect("digest");
        let reads = [
            FsOp::Getattr { fh: fh.clone() },
            FsOp::Read {
                fh: fh.clone(),
                offset: 0,
                count: 4096,
            },
            FsOp::Lookup {
                dir: root.clone(),
                name: Filename3::from("f"),
            },
            FsOp::Access {
                fh: fh.clone(),
                mask: 0x3f,
            },
            FsOp::Readdir {
                dir: root.clone(),
                cookie: 0,
                cookieverf: [0; 8],
                count: 4096,
            },
            FsOp::Readdirplus {
                dir: root.clone(),
                cookie: 0,
                cookieverf: [0; 8],
                dircount: 4096,
                maxcount: 8192,
            },
            FsOp::Fsstat { fh: root.clone() },
            FsOp::Fsinfo { fh: root.clone() },
            FsOp::Pathconf { fh: root.clone() },
        ];
        for op in &reads {
            let r = app.query(&encode_op(&AuthUnix::root(), op)).expect("query");
            assert_ne!(r, BAD_OP_RESULT, "{op:?}");
        }
        assert_eq!(app.digest().expect("digest"), before);
        // A write sent down the read-only path is refused and changes nothing.
        let r = app
            .query(&encode_op(&AuthUnix::root(), &write))
            .expect("query");
        assert_eq!(r, BAD_OP_RESULT);
        assert_eq!(app.digest().expect("digest"), before);
    }
}
