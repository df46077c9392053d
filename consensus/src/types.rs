//! Identifiers, configuration and the limits every growing structure is held to
//! (STYLE principle 4).

use serde::{Deserialize, Serialize};

pub use usig::{Digest, ReplicaId, Ui};

/// A client of the replicated service (one BFT client session).
pub type ClientId = u64;
/// A view number; the primary of view `v` is replica `v mod n`.
pub type View = u64;
/// Execution order number of a batch (1, 2, …); 0 is the genesis state.
pub type SeqNum = u64;

/// Static cluster configuration shared by every replica and client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Number of tolerated faults; the cluster has `2f + 1` replicas (MinBFT, section 5).
    pub f: u32,
    /// Most requests one PREPARE may carry.
    pub batch_requests_max: usize,
    /// Most operation bytes one PREPARE may carry.
    pub batch_bytes_max: usize,
    /// Most batches prepared but not yet executed (pipelining depth).
    pub pipeline_max: u64,
    /// A checkpoint is taken every this many batches.
    pub checkpoint_interval: u64,
    /// Most early messages held back per sender while a gap is open.
    pub holdback_max: usize,
    /// Most messages retained per sender for retransmission.
    pub retain_max: usize,
    /// Most operation bytes in one request. A batch of one request may exceed
    /// `batch_bytes_max` up to this.
    pub request_bytes_max: usize,
    /// Most clients remembered in the exactly-once table.
    pub clients_max: usize,
    /// Ticks a backup waits for a pending request to execute before suspecting the primary.
    pub request_timeout_ticks: u64,
    /// Ticks to wait for a NEW-VIEW; doubles on each consecutive failed view change.
    pub view_change_timeout_ticks: u64,
    /// Ticks a FIFO gap may stay open before the missing messages are fetched again.
    pub fetch_timeout_ticks: u64,
    /// Ticks between status announcements (lets peers notice a lost tail of messages).
    pub status_interval_ticks: u64,
    /// Ticks a replica stays behind a stable checkpoint before it asks for state.
    pub state_transfer_timeout_ticks: u64,
    /// Largest accepted distance between the primary's timestamp and a backup's clock.
    pub timestamp_skew_ns: u64,
    /// Nanoseconds per tick, used to turn tick counts into clock readings.
    pub tick_ns: u64,
}

impl Config {
    pub fn new(f: u32) -> Self {
        Config {
            f,
            batch_requests_max: 256,
            batch_bytes_max: 1 << 20,
            pipeline_max: 8,
            checkpoint_interval: 128,
            holdback_max: 1024,
            retain_max: 8192,
            // A 1 MiB NFS WRITE plus its handle and credentials.
            request_bytes_max: (1 << 20) + (64 << 10),
            clients_max: 100_000,
            request_timeout_ticks: 100,
            view_change_timeout_ticks: 100,
            fetch_timeout_ticks: 5,
            status_interval_ticks: 10,
            state_transfer_timeout_ticks: 20,
            timestamp_skew_ns: 5_000_000_000,
            tick_ns: 10_000_000,
        }
    }

    /// Number of replicas, `2f + 1`.
    pub fn n(&self) -> u32 {
        2 * self.f + 1
    }

    /// Size of every quorum in MinPBFT: `f + 1`.
    pub fn quorum(&self) -> usize {
        self.f as usize + 1
    }

    pub fn primary(&self, view: View) -> ReplicaId {
        (view % u64::from(self.n())) as ReplicaId
    }

    pub fn is_checkpoint(&self, n: SeqNum) -> bool {
        n > 0 && n.is_multiple_of(self.checkpoint_interval)
    }

    /// How far above its stable checkpoint a correct replica prepares batches
    /// (`LOG_WINDOW_INTERVALS` checkpoint intervals): the primary proposes and a backup
    /// accepts nothing beyond it, so a VIEW-CHANGE reporting a batch further above its
    /// certificate is not a correct replica's (consensus/README, "The log window").
    pub fn log_window(&self) -> SeqNum {
        LOG_WINDOW_INTERVALS.saturating_mul(self.checkpoint_interval)
    }
}

/// Checkpoint intervals in `Config::log_window`: checkpoints become stable about one
/// interval after they are taken, so four leave the pipeline room.
pub const LOG_WINDOW_INTERVALS: u64 = 4;
