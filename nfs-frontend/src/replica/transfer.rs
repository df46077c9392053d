//! Fine-grained state transfer (MinBFT section 5; the Prime model where the replication
//! layer tells the application to fetch state): the core says `FetchState { cert }`
//! when this replica is behind a stable checkpoint or its own checkpoint digest
//! disagrees with a certified one (self-repair).
//!
//! 1. Ask one peer at a time for its stable checkpoint: certificate, client table and
//!    the file state's manifest (metadata with every file's chunk hashes, no contents).
//!    The manifest alone determines the state digest, so it is verified against the
//!    certificate before anything else happens; a peer whose manifest does not verify is
//!    counted and the next one is asked.
//! 2. Fetch the chunks our content-addressed store lacks, `CHUNKS_PER_REQUEST_MAX` per
//!    request, at most `CHUNK_REQUESTS_IN_FLIGHT_MAX` requests out at once, spread over
//!    the peers; every chunk is checked against its hash before it is stored, so a peer
//!    that sends bad data is counted, avoided for the rest of the transfer, and its
//!    chunks are asked from another peer. Memory stays bounded by the in-flight replies.
//! 3. Install (fs-state keeps unchanged files, writes the others from the store), check
//!    the installed digest against the certificate, save the manifest as our checkpoint,
//!    then hand the state to the core (`Input::StateInstalled`), which executes the log
//!    after it. A crash at any step restarts from our own last stable checkpoint and
//!    fetches again; chunks already fetched stay in the store until garbage collected.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use consensus::message::CheckpointCert;
use consensus::replica::checkpoint_digest;
use consensus::{Digest, Input, ReplicaId, SeqNum, validate};
use tracing::{info, warn};

use super::snapshots::{Snapshot, SnapshotStore};
use super::{Node, ReplicaError};
use crate::net::{CHUNKS_PER_REQUEST_MAX, ChunkData, DropReason, LinkMsg, Outgoing, StateBlob};

/// Chunk requests outstanding at once during a transfer (so at most this many replies of
/// `CHUNKS_PER_REQUEST_MAX` chunks of 64 KiB are in memory).
pub const CHUNK_REQUESTS_IN_FLIGHT_MAX: usize = 4;
/// Progress is logged at most this often.
const PROGRESS_LOG_SECS: u64 = 2;
/// `<data dir>/transfer-progress`: "n N chunks A of B bytes C millis D", rewritten
/// (atomically) after the manifest and after every chunk reply, removed when the state
/// is installed (then `<data dir>/transfer` holds the totals). Still there after a
/// restart: that transfer was interrupted. For operators and tests.
pub const PROGRESS_FILE: &str = "transfer-progress";

pub(super) struct Transfer {
    pub cert: CheckpointCert,
    started: Instant,
    /// Manifest phase: peers asked so far, and when.
    tried: BTreeSet<ReplicaId>,
    asked_tick: u64,
    fetch: Option<Fetch>,
}

struct Fetch {
    blob: StateBlob,
    queue: VecDeque<Digest>,
    in_flight: BTreeMap<u64, Pending>,
    /// Peers that sent bad or no data in this transfer; asked again only if all did.
    avoid: BTreeSet<ReplicaId>,
    /// Peers that said they do not have a chunk: when all have said so, they moved on
    /// (garbage-collected it) and we fetch their newer checkpoint instead.
    absent: BTreeMap<Digest, BTreeSet<ReplicaId>>,
    next_peer: u32,
    total_chunks: usize,
    fetched_chunks: usize,
    fetched_bytes: u64,
    last_log: Instant,
}

struct Pending {
    peer: ReplicaId,
    hashes: Vec<Digest>,
    tick: u64,
}

/// Figures of the last completed transfer (for `ReplicaStats` and the logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    pub transfers: u64,
    pub last_n: SeqNum,
    pub last_bytes: u64,
    pub last_chunks: u64,
    pub last_millis: u64,
    /// Chunks or manifests from peers that failed verification, over all transfers.
    pub bad_replies: u64,
}

impl Node {
    /// The core's `FetchState`. The core repeats it while a transfer takes long; a
    /// transfer already under way for that checkpoint (or a later one) goes on (its own
    /// retries in `transfer_tick` deal with silent peers) instead of starting over.
    pub(super) fn on_fetch_state(&mut self, cert: CheckpointCert) {
        if self.transfer.as_ref().is_some_and(|t| t.cert.n >= cert.n) {
            return;
        }
        self.start_transfer(cert);
    }

    fn start_transfer(&mut self, cert: CheckpointCert) {
        self.begin_transfer(cert);
        self.ask_state();
    }

    /// A transfer whose first request for the manifest waits for the manifest phase's
    /// retry timeout (`transfer_tick`).
    fn begin_transfer(&mut self, cert: CheckpointCert) {
        info!(
            id = self.id,
            n = cert.n,
            "state transfer: fetching the certified checkpoint"
        );
        self.app().set_transfer(true);
        self.transfer = Some(Transfer {
            cert,
            started: Instant::now(),
            tried: BTreeSet::new(),
            asked_tick: self.ticks,
            fetch: None,
        });
    }

    /// Asks the next peer for its stable checkpoint's manifest.
    pub(super) fn ask_state(&mut self) {
        let n_rep = self.n;
        let me = self.id;
        let ticks = self.ticks;
        let Some(t) = self.transfer.as_mut() else {
            return;
        };
        if t.tried.len() + 1 >= n_rep as usize {
            t.tried.clear();
        }
        let Some(j) = (0..n_rep).find(|j| *j != me && !t.tried.contains(j)) else {
            return;
        };
        t.tried.insert(j);
        t.asked_tick = ticks;
        let n = t.cert.n;
        self.send_peer(j, Arc::new(Outgoing::new(LinkMsg::StateRequest { n })));
    }

    pub(super) fn on_state_request(
        &mut self,
        from: ReplicaId,
        n: SeqNum,
    ) -> Result<(), ReplicaError> {
        let stable = self.log.durable.stable.clone();
        let state = if stable.n >= n && stable.n > 0 {
            self.snaps.load(stable.n)?.map(|s| {
                Box::new(StateBlob {
                    cert: stable,
                    core_state: s.core_state,
                    app: s.app,
                })
            })
        } else {
            None
        };
        self.send_peer(
            from,
            Arc::new(Outgoing::new(LinkMsg::StateReply { n, state })),
        );
        Ok(())
    }

    fn count_bad(&mut self, from: ReplicaId, what: &str) {
        warn!(
            id = self.id,
            from, "state transfer: {what}; asking another replica"
        );
        self.stats.count(DropReason::Garbage);
        self.transfer_stats.bad_replies += 1;
    }

    pub(super) fn on_state_reply(
        &mut self,
        from: ReplicaId,
        n: SeqNum,
        state: Option<Box<StateBlob>>,
    ) -> Result<(), ReplicaError> {
        let Some(t) = self.transfer.as_ref() else {
            return Ok(());
        };
        if t.cert.n != n || t.fetch.is_some() {
            return Ok(());
        }
        let wanted = t.cert.clone();
        let Some(blob) = state else {
            // That peer has nothing recent enough; ask the next one now.
            self.ask_state();
            return Ok(());
        };
        let config = self.core.config().clone();
        // The certificate travels on to the core with the state (`StateInstalled`), which
        // refuses (panics on) one that is not certified: check it whole, also when it
        // names the checkpoint asked for (a faulty peer can copy its n and digest).
        let cert_ok = if blob.cert.n == wanted.n {
            blob.cert.state_digest == wanted.state_digest
        } else {
            blob.cert.n > wanted.n
        } && validate::checkpoint_cert(&config, &self.crypto, &blob.cert).is_ok();
        if !cert_ok {
            self.count_bad(from, "uncertified state offered");
            self.ask_state();
            return Ok(());
        }
        let verified = self
            .app()
            .manifest_digest(&blob.app)
            .map(|d| checkpoint_digest(&d, &blob.core_state) == blob.cert.state_digest);
        if !matches!(verified, Ok(true)) {
            self.count_bad(from, "manifest does not match its certificate");
            self.ask_state();
            return Ok(());
        }
        let (missing, content_bytes) = self.app().missing_chunks(&blob.app)?;
        info!(
            id = self.id,
            n = blob.cert.n,
            from,
            manifest_bytes = blob.app.len(),
            content_bytes,
            chunks_missing = missing.len(),
            "state transfer: manifest verified"
        );
        self.write_progress(blob.cert.n, 0, missing.len(), 0);
        let t = self.transfer.as_mut().expect("checked above");
        t.cert = blob.cert.clone();
        t.fetch = Some(Fetch {
            total_chunks: missing.len(),
            queue: missing.into(),
            blob: *blob,
            in_flight: BTreeMap::new(),
            avoid: BTreeSet::new(),
            absent: BTreeMap::new(),
            next_peer: from,
            fetched_chunks: 0,
            fetched_bytes: 0,
            last_log: Instant::now(),
        });
        self.pump_chunks()
    }

    /// Sends chunk requests up to the in-flight limit; installs when all are here.
    fn pump_chunks(&mut self) -> Result<(), ReplicaError> {
        let n_rep = self.n;
        let me = self.id;
        let ticks = self.ticks;
        let mut sends = Vec::new();
        let done = {
            let Some(f) = self.transfer.as_mut().and_then(|t| t.fetch.as_mut()) else {
                return Ok(());
            };
            while f.in_flight.len() < CHUNK_REQUESTS_IN_FLIGHT_MAX && !f.queue.is_empty() {
                if (0..n_rep).all(|j| j == me || f.avoid.contains(&j)) {
                    f.avoid.clear();
                }
                let mut j = f.next_peer;
                for _ in 0..n_rep {
                    j = (j + 1) % n_rep;
                    if j != me && !f.avoid.contains(&j) {
                        break;
                    }
                }
                f.next_peer = j;
                let k = f.queue.len().min(CHUNKS_PER_REQUEST_MAX);
                let hashes: Vec<Digest> = f.queue.drain(..k).collect();
                self.chunk_req_seq += 1;
                let id = self.chunk_req_seq;
                f.in_flight.insert(
                    id,
                    Pending {
                        peer: j,
                        hashes: hashes.clone(),
                        tick: ticks,
                    },
                );
                sends.push((j, LinkMsg::ChunkRequest { id, hashes }));
            }
            f.queue.is_empty() && f.in_flight.is_empty()
        };
        for (j, msg) in sends {
            self.send_peer(j, Arc::new(Outgoing::new(msg)));
        }
        if done {
            self.finish_transfer()?;
        }
        Ok(())
    }

    pub(super) fn on_chunk_request(
        &mut self,
        from: ReplicaId,
        id: u64,
        hashes: Vec<Digest>,
    ) -> Result<(), ReplicaError> {
        let mut chunks = Vec::new();
        for hash in hashes.into_iter().take(CHUNKS_PER_REQUEST_MAX) {
            if let Some(mut data) = self.app().get_chunk(&hash)? {
                if self.serve_corrupt_chunks
                    && let Some(b) = data.first_mut()
                {
                    *b ^= 0xff;
                }
                chunks.push(ChunkData { hash, data });
            }
        }
        self.send_peer(
            from,
            Arc::new(Outgoing::new(LinkMsg::ChunkReply { id, chunks })),
        );
        Ok(())
    }

    pub(super) fn on_chunk_reply(
        &mut self,
        from: ReplicaId,
        id: u64,
        chunks: Vec<ChunkData>,
    ) -> Result<(), ReplicaError> {
        let Some(pending) = self
            .transfer
            .as_mut()
            .and_then(|t| t.fetch.as_mut())
            .and_then(|f| f.in_flight.remove(&id))
        else {
            return Ok(());
        };
        if pending.peer != from {
            // Not the peer we asked: put the request back and ignore the reply.
            if let Some(f) = self.transfer.as_mut().and_then(|t| t.fetch.as_mut()) {
                f.in_flight.insert(id, pending);
            }
            return Ok(());
        }
        let mut got: BTreeMap<Digest, Vec<u8>> = BTreeMap::new();
        let mut bad = chunks.len() > pending.hashes.len();
        for c in chunks {
            if pending.hashes.contains(&c.hash) {
                got.insert(c.hash, c.data);
            } else {
                bad = true;
            }
        }
        let mut requeue = Vec::new();
        let mut bytes = 0;
        let mut stored = 0;
        for h in pending.hashes {
            match got.remove(&h) {
                Some(data) => {
                    if self.app().put_chunk(&h, &data)? {
                        bytes += data.len() as u64;
                        stored += 1;
                    } else {
                        bad = true;
                        requeue.push(h);
                    }
                }
                None => requeue.push(h),
            }
        }
        if bad {
            self.count_bad(from, "chunk does not match its hash");
        }
        let me = self.id;
        let peers = self.n as usize - 1;
        let Some(t) = self.transfer.as_mut() else {
            return Ok(());
        };
        let started = t.started;
        let n = t.cert.n;
        let f = t.fetch.as_mut().expect("pending came from it");
        f.fetched_chunks += stored;
        f.fetched_bytes += bytes;
        let mut moved_on = false;
        for h in &requeue {
            if !bad {
                let who = f.absent.entry(*h).or_default();
                who.insert(from);
                moved_on |= who.len() >= peers;
            }
        }
        if moved_on {
            info!(
                id = me,
                n, "state transfer: the peers moved past this checkpoint; fetching their newer one"
            );
            t.fetch = None;
            t.tried.clear();
            self.ask_state();
            return Ok(());
        }
        if bad || !requeue.is_empty() {
            // Bad data, or this peer lacks chunks: the others serve them.
            f.avoid.insert(from);
            f.queue.extend(requeue);
        }
        let progress = (f.fetched_chunks, f.total_chunks, f.fetched_bytes);
        if f.last_log.elapsed().as_secs() >= PROGRESS_LOG_SECS {
            f.last_log = Instant::now();
            info!(
                id = me,
                n,
                chunks = f.fetched_chunks,
                of = f.total_chunks,
                bytes = f.fetched_bytes,
                secs = started.elapsed().as_secs_f64(),
                "state transfer: progress"
            );
        }
        self.write_progress(n, progress.0, progress.1, progress.2);
        self.pump_chunks()
    }

    /// Rewrites `PROGRESS_FILE` (best effort: progress reporting must not stop a
    /// transfer). A temporary file and a rename, so readers never see half a line.
    fn write_progress(&self, n: SeqNum, chunks: usize, of: usize, bytes: u64) {
        let millis = self
            .transfer
            .as_ref()
            .map_or(0, |t| t.started.elapsed().as_millis());
        let tmp = self.data_dir.join(format!("{PROGRESS_FILE}.tmp"));
        let line = format!("n {n} chunks {chunks} of {of} bytes {bytes} millis {millis}\n");
        if let Err(e) = std::fs::write(&tmp, line)
            .and_then(|()| std::fs::rename(&tmp, self.data_dir.join(PROGRESS_FILE)))
        {
            warn!(id = self.id, "state transfer: writing {PROGRESS_FILE}: {e}");
        }
    }

    fn finish_transfer(&mut self) -> Result<(), ReplicaError> {
        if self.transfer.is_none() {
            return Ok(());
        }
        // An install rewrites the file state and its journal: the last checkpoint's
        // flush first, and the cleanup of a checkpoint it made stable, while the fetch
        // is still listed (that cleanup collects chunks and must keep the fetched ones,
        // which an install that fails to verify fetches again only where damaged).
        self.settle_checkpoint()?;
        self.clean_up_stable()?;
        let Some(mut t) = self.transfer.take() else {
            return Ok(());
        };
        let f = t.fetch.take().expect("finish after fetching");
        let StateBlob {
            cert,
            core_state,
            app,
        } = f.blob;
        let installed = self
            .app()
            .restore(&app)
            .map(|d| checkpoint_digest(&d, &core_state) == cert.state_digest);
        match installed {
            Ok(true) => {}
            other => {
                // Our store lost a chunk between fetch and install (disk fault or
                // tampering): fetch again, after the manifest phase's retry timeout,
                // not at once: a fault that lasts would otherwise rewrite the export
                // in a tight loop (one such, in the install itself, did every 6 ms).
                warn!(id = self.id, result = ?other.err().map(|e| e.to_string()),
                    "state transfer: installed state does not verify; fetching again shortly");
                self.begin_transfer(cert);
                return Ok(());
            }
        }
        self.snaps.save(&Snapshot {
            n: cert.n,
            core_state: core_state.clone(),
            app,
        })?;
        self.app().set_transfer(false);
        let elapsed = t.started.elapsed();
        self.transfer_stats.transfers += 1;
        self.transfer_stats.last_n = cert.n;
        self.transfer_stats.last_bytes = f.fetched_bytes;
        self.transfer_stats.last_chunks = f.fetched_chunks as u64;
        self.transfer_stats.last_millis = elapsed.as_millis() as u64;
        info!(
            id = self.id,
            n = cert.n,
            chunks = f.fetched_chunks,
            bytes = f.fetched_bytes,
            millis = elapsed.as_millis() as u64,
            bad_replies = self.transfer_stats.bad_replies,
            "state transfer: installed"
        );
        let _ = std::fs::remove_file(self.data_dir.join(PROGRESS_FILE));
        let _ = std::fs::write(
            self.data_dir.join("transfer"),
            format!(
                "n {} chunks {} bytes {} millis {}\n",
                cert.n,
                f.fetched_chunks,
                f.fetched_bytes,
                elapsed.as_millis()
            ),
        );
        self.feed(Input::StateInstalled { cert, core_state })
    }

    /// Retries: the manifest phase asks the next peer; a chunk request that got no
    /// answer in time goes to another peer.
    pub(super) fn transfer_tick(&mut self) -> Result<(), ReplicaError> {
        let retry = self.config.consensus.fetch_timeout_ticks.max(1) * 4;
        let ticks = self.ticks;
        let Some(t) = self.transfer.as_mut() else {
            return Ok(());
        };
        match t.fetch.as_mut() {
            None => {
                if ticks - t.asked_tick >= retry {
                    self.ask_state();
                }
                Ok(())
            }
            Some(f) => {
                let late: Vec<u64> = f
                    .in_flight
                    .iter()
                    .filter(|(_, p)| ticks - p.tick >= retry)
                    .map(|(id, _)| *id)
                    .collect();
                if late.is_empty() {
                    return Ok(());
                }
                for id in late {
                    let p = f.in_flight.remove(&id).expect("listed");
                    f.avoid.insert(p.peer);
                    f.queue.extend(p.hashes);
                }
                self.pump_chunks()
            }
        }
    }

    /// `on_stable` for the newest checkpoint that became stable since the last call, if
    /// any: run at the end of a burst, after its sync and its sends.
    pub(super) fn clean_up_stable(&mut self) -> Result<(), ReplicaError> {
        match self.stable_cleanup.take() {
            Some(n) => self.on_stable(n),
            None => Ok(()),
        }
    }

    /// Checkpoint `n` became stable: keep its manifest and the one before it (so that a
    /// peer fetching the previous stable checkpoint still finds its chunks), drop older
    /// ones, and garbage-collect chunks.
    pub(super) fn on_stable(&mut self, n: SeqNum) -> Result<(), ReplicaError> {
        // The `Stable` record the core emitted before must be durable before anything
        // below it is deleted: until then a restart starts from the previous stable
        // checkpoint, whose manifest (and chunks) this may collect. After the burst's
        // sync it usually is, and this costs nothing; a record handed over during that
        // sync (a checkpoint flush settled in it) is synced here.
        self.log.sync()?;
        let keep_from = self
            .snaps
            .list()?
            .into_iter()
            .filter(|k| *k < n)
            .max()
            .unwrap_or(n);
        self.snaps.drop_below(keep_from)?;
        self.pending_snapshots = self.pending_snapshots.split_off(&n);
        self.collect_chunks()
    }

    /// Deletes chunks that no retained checkpoint (stable, pending, being fetched)
    /// references.
    fn collect_chunks(&mut self) -> Result<(), ReplicaError> {
        let mut keep: Vec<Vec<u8>> = Vec::new();
        let stable = self.log.durable.stable.n;
        for n in self.snaps.list()? {
            match self.snaps.load(n) {
                Ok(Some(s)) => keep.push(s.app),
                Ok(None) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::InvalidData
                        && SnapshotStore::is_expendable(n, stable) =>
                {
                    warn!(
                        id = self.id,
                        "{e}: not the stable checkpoint {stable}; deleted"
                    );
                    self.snaps.remove(n)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        keep.extend(self.pending_snapshots.values().cloned());
        if let Some(f) = self.transfer.as_ref().and_then(|t| t.fetch.as_ref()) {
            keep.push(f.blob.app.clone());
        }
        let refs: Vec<&[u8]> = keep.iter().map(Vec::as_slice).collect();
        match self.app().retain_chunks(&refs) {
            Ok(_) => Ok(()),
            Err(e) => {
                warn!(id = self.id, "chunk garbage collection skipped: {e}");
                Ok(())
            }
        }
    }
}
