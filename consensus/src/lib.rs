//! MinPBFT (Veronese et al., "Efficient Byzantine Fault-Tolerance", sections 4–5) as a
//! deterministic state machine, its client logic, an application interface and a
//! seeded Byzantine simulator.
//!
//! The core does no I/O: no sockets, clocks, threads, locks or randomness. The runtime
//! (`nfs-frontend`) and the simulator (`sim`) drive the very same [`Replica`].

pub mod app;
pub mod client;
pub mod crypto;
pub mod message;
pub mod replica;
pub mod sim;
pub mod types;
pub mod validate;

pub use app::{Application, KvApp, KvOp};
pub use client::{Client, ClientOutput};
pub use crypto::{Crypto, SimCrypto};
pub use message::{Message, PeerMessage, Reply, Request, UiMessage};
pub use replica::{Input, Output, PersistRecord, Recovered, Replica, UsigLease};
pub use types::{ClientId, Config, Digest, ReplicaId, SeqNum, View};
pub use validate::{Reject, Verified};
