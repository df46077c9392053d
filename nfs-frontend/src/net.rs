//! The wire between replicas and between clients and replicas: length-prefixed bincode-2
//! frames over TCP, and the authentication of replica links.
//!
//! The core trusts `from` on messages that carry no UI (REQ-VIEW-CHANGE, FETCH, STATUS;
//! MinBFT section 5 assumes authenticated channels), so a replica link must prove who
//! sends. Each replica dials every other one and uses that connection to send only; the
//! acceptor answers the dialler's `Hello` with a fresh random nonce, and every later frame
//! carries HMAC-SHA256(link key of the pair, nonce, frame counter, payload). A frame that
//! is replayed, reordered, forged or oversized closes the connection and is counted.
//! Clients need no channel authentication: requests are signed and replies MACed.
//!
//! Every frame is `u32` big-endian length, then the payload; lengths over the configured
//! limit are refused before any allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use consensus::message::CheckpointCert;
use consensus::replica::CoreState;
use consensus::{PeerMessage, ReplicaId, Reply, Request, SeqNum};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest `Hello` or `Challenge` frame.
pub const HELLO_BYTES_MAX: usize = 1024;

/// First frame on every connection, from the side that dialled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Hello {
    /// Replica `from` will send protocol messages to replica `to`.
    Replica { from: ReplicaId, to: ReplicaId },
    /// Client `client` (an index: its sessions are `client * SESSION_STRIDE + s`)
    /// will send requests and receive replies.
    Client { client: u64 },
}

/// The acceptor's answer to a replica's `Hello`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    pub nonce: [u8; 32],
}

/// A replica's stable checkpoint, for state transfer: the certificate, the core's client
/// table and the application's manifest (fs-state `FsManifest`: metadata and chunk
/// hashes, no file contents; those are fetched as chunks).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StateBlob {
    pub cert: CheckpointCert,
    pub core_state: CoreState,
    #[serde(with = "serde_bytes")]
    pub app: Vec<u8>,
}

/// Chunks asked for in one `ChunkRequest` (64 KiB each: 1 MiB per reply).
pub const CHUNKS_PER_REQUEST_MAX: usize = 16;

/// One content chunk in a `ChunkReply`; the receiver checks `hash` against the data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkData {
    pub hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// What travels on an authenticated replica link.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum LinkMsg {
    Peer(PeerMessage),
    /// "Send me your stable checkpoint state if it is at least `n`."
    StateRequest {
        n: SeqNum,
    },
    StateReply {
        n: SeqNum,
        state: Option<Box<StateBlob>>,
    },
    /// "Send me these content chunks" (at most `CHUNKS_PER_REQUEST_MAX`).
    ChunkRequest {
        id: u64,
        hashes: Vec<[u8; 32]>,
    },
    /// The requested chunks this replica has (absent ones are left out).
    ChunkReply {
        id: u64,
        chunks: Vec<ChunkData>,
    },
    /// A PREPARE without the operations of its large requests, which the receiver has
    /// from their clients (`replica::slim`).
    SlimPrepare {
        prepare: Box<consensus::message::Prepare>,
        omitted: Vec<crate::replica::slim::Omitted>,
    },
    /// "Send me your PREPARE with this USIG counter whole" (a slim one I cannot fill).
    PrepareWanted {
        counter: u64,
    },
}

/// Client to replica.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ClientMsg {
    Request(Request),
    /// The same request sent again after no f+1 matching replies came in time. The
    /// mark is a hint, not authenticated: a replica that executed the request answers
    /// a re-send from its cache, and drops a first copy (its reply left when the batch
    /// executed; the PREPARE overtook the copy). Flipped on the way, it costs at most
    /// one more re-send or one needless answer.
    Resend(Request),
}

/// Replica to client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ReplicaMsg {
    Reply(Reply),
}

/// Why input from the network was dropped; each is counted (STYLE principle 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    Oversize,
    Garbage,
    BadMac,
    BadHello,
    QueueFull,
    WrongClient,
}

/// Counters of dropped network input, shared by every connection of one process.
#[derive(Debug, Default)]
pub struct NetStats {
    counts: [AtomicU64; 6],
}

impl NetStats {
    pub fn count(&self, why: DropReason) {
        let prev = self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
        if prev == 0 {
            tracing::warn!(?why, "dropping bad network input (logged once per kind)");
        }
    }

    pub fn get(&self, why: DropReason) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes over the limit")]
    Oversize(usize),
    #[error("undecodable frame")]
    Garbage,
}

impl FrameError {
    /// The drop reason to count, if the peer (not the network) is to blame.
    pub fn drop_reason(&self) -> Option<DropReason> {
        match self {
            FrameError::Io(_) => None,
            FrameError::Oversize(_) => Some(DropReason::Oversize),
            FrameError::Garbage => Some(DropReason::Garbage),
        }
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .expect("bincode encodes every in-memory value")
}

/// Appends `value`'s encoding to `out` (no copy through a buffer of its own).
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, out, bincode_config())
        .expect("bincode encodes every in-memory value into a Vec");
}

/// Decodes a whole frame; trailing bytes are garbage too. The frame's length was checked
/// against the limit before it was read, which bounds what decoding can allocate.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, FrameError> {
    match bincode::serde::decode_from_slice(bytes, bincode_config()) {
        Ok((v, used)) if used == bytes.len() => Ok(v),
        _ => Err(FrameError::Garbage),
    }
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = r.read_u32().await? as usize;
    if len > max {
        return Err(FrameError::Oversize(len));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Appends one frame to a (buffered) writer; the caller flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("frame longer than 4 GiB"))?;
    w.write_u32(len).await?;
    w.write_all(payload).await
}

/// Appends one frame made of two parts to a (buffered) writer, without joining them.
pub async fn write_frame_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(head.len() + body.len())
        .map_err(|_| std::io::Error::other("frame longer than 4 GiB"))?;
    w.write_u32(len).await?;
    w.write_all(head).await?;
    w.write_all(body).await
}

/// A message for one or more replica links, encoded and hashed once however many links
/// it goes to (a PREPARE carrying a 1 MiB WRITE goes to 2f of them).
#[derive(Debug)]
pub struct Outgoing {
    pub msg: LinkMsg,
    encoded: std::sync::OnceLock<(Vec<u8>, [u8; 32])>,
}

impl Outgoing {
    pub fn new(msg: LinkMsg) -> Self {
        Outgoing {
            msg,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The encoded message and its BLAKE3 hash, computed on first use.
    fn encoded(&self) -> &(Vec<u8>, [u8; 32]) {
        self.encoded.get_or_init(|| {
            let body = encode(&self.msg);
            let hash = blake3::hash(&body).into();
            (body, hash)
        })
    }

    /// The frame on one link, in two parts: the MAC of the body's hash under the link's
    /// key, nonce and counter, then the body.
    pub fn seal(&self, key: &[u8; 32], nonce: &[u8; 32], counter: u64) -> ([u8; 32], &[u8]) {
        let (body, hash) = self.encoded();
        (crate::crypto::link_mac(key, nonce, counter, hash), body)
    }
}

/// A replica-link frame: the MAC, then the encoded `LinkMsg` (`Outgoing::seal`, joined).
pub fn seal_link(key: &[u8; 32], nonce: &[u8; 32], counter: u64, msg: &LinkMsg) -> Vec<u8> {
    let out = Outgoing::new(msg.clone());
    let (mac, body) = out.seal(key, nonce, counter);
    let mut frame = Vec::with_capacity(32 + body.len());
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(body);
    frame
}

/// Checks and decodes a replica-link frame.
pub fn open_link(
    key: &[u8; 32],
    nonce: &[u8; 32],
    counter: u64,
    frame: &[u8],
) -> Result<LinkMsg, DropReason> {
    if frame.len() < 32 {
        return Err(DropReason::Garbage);
    }
    let (mac, body) = frame.split_at(32);
    let want = crate::crypto::link_mac(key, nonce, counter, blake3::hash(body).as_bytes());
    if !consensus::crypto::constant_time_eq(mac, &want) {
        return Err(DropReason::BadMac);
    }
    decode(body).map_err(|_| DropReason::Garbage)
}

/// Exponential reconnect delay, from `min` doubling up to `max`.
pub struct Backoff {
    pub current: std::time::Duration,
    min: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    pub fn new(min: std::time::Duration, max: std::time::Duration) -> Self {
        Backoff {
            current: min,
            min,
            max,
        }
    }

    /// Sleeps the current delay, then doubles it (bounded by `max`).
    pub async fn wait_and_grow(&mut self) {
        tokio::time::sleep(self.current).await;
        self.current = (self.current * 2).min(self.max);
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Dials `addr` until it answers. While it does not, whatever queued up for it is dropped
/// (stale by the time the peer is back) and the dial waits with `backoff`. `None` once
/// the queue's senders are gone (the connection is no longer wanted).
/// How long sent data may stay unacknowledged before the kernel drops the connection
/// (TCP_USER_TIMEOUT). Without it, a peer cut off the network (no RST ever comes) holds
/// a link in retransmission backoff for many minutes, and it reconnects only when the
/// backoff happens to retry after the heal; with it, the dialer redials within seconds.
pub const UNACKED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// Sets TCP_USER_TIMEOUT on `stream` (Linux); a failure only costs the faster redial.
pub fn set_user_timeout(stream: &tokio::net::TcpStream, timeout: std::time::Duration) {
    let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(stream, ms) {
        tracing::debug!("TCP_USER_TIMEOUT: {e}");
    }
}

/// Refuses a TCP self-connection. Dialing a loopback port in the ephemeral range where
/// nothing listens (a replica that is down) can pick that very port as the source and
/// connect the socket to itself; kept, it would hold the port, and the replica, when it
/// restarts, could not listen there ("address already in use").
fn refuse_self_connect(s: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    if s.local_addr()? == s.peer_addr()? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connected to itself: nothing listens there",
        ));
    }
    Ok(s)
}

pub async fn dial<T>(
    addr: std::net::SocketAddr,
    queue: &mut tokio::sync::mpsc::Receiver<T>,
    backoff: &mut Backoff,
) -> Option<tokio::net::TcpStream> {
    loop {
        match tokio::net::TcpStream::connect(addr)
            .await
            .and_then(refuse_self_connect)
        {
            Ok(s) => {
                set_user_timeout(&s, UNACKED_TIMEOUT);
                return Some(s);
            }
            Err(e) => {
                tracing::debug!(%addr, "connect failed: {e}");
                while queue.try_recv().is_ok() {}
                if queue.is_closed() {
                    return None;
                }
                backoff.wait_and_grow().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_frames_reject_tampering_replay_and_other_keys() {
        let key = [1; 32];
        let nonce = [2; 32];
        let msg = LinkMsg::StateRequest { n: 7 };
        let f = seal_link(&key, &nonce, 5, &msg);
        assert_eq!(open_link(&key, &nonce, 5, &f), Ok(msg));
        assert_eq!(
            open_link(&key, &nonce, 6, &f),
            Err(DropReason::BadMac),
            "replayed"
        );
        assert_eq!(open_link(&[3; 32], &nonce, 5, &f), Err(DropReason::BadMac));
        assert_eq!(open_link(&key, &[0; 32], 5, &f), Err(DropReason::BadMac));
        let mut t = f.clone();
        *t.last_mut().expect("nonempty") ^= 1;
        assert_eq!(open_link(&key, &nonce, 5, &t), Err(DropReason::BadMac));
        assert_eq!(
            open_link(&key, &nonce, 5, &f[..10]),
            Err(DropReason::Garbage)
        );
    }

    #[test]
    fn garbage_and_oversize_frames_are_errors_not_panics() {
        assert!(decode::<Hello>(&[0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode(&Hello::Client { client: 3 });
        bytes.push(0);
        assert!(decode::<Hello>(&bytes).is_err(), "trailing bytes");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut input: &[u8] = &[0, 0, 1, 0, 1, 2];
            assert!(matches!(
                read_frame(&mut input, 16).await,
                Err(FrameError::Oversize(256))
            ));
        });
    }
}
