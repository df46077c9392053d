//! The replica's connections (see `crate::net` for the frame and link formats): one
//! dialling task per peer that sends this replica's messages to it and reconnects with
//! backoff, and one task per accepted connection that authenticates the peer or client
//! and forwards what it reads to the protocol loop.
//!
//! Everything a connection reads goes through one bounded queue into the protocol loop,
//! so a flood from one peer pushes back on TCP rather than growing memory.

use std::sync::Arc;
use std::time::Duration;

use consensus::{ReplicaId, Request};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::config::ClusterConfig;
use crate::net::{
    Challenge, ClientMsg, DropReason, HELLO_BYTES_MAX, Hello, LinkMsg, NetStats, Outgoing, decode,
    encode, open_link, read_frame, write_frame, write_frame_parts,
};

/// Messages queued for one peer while its link is down; older ones are dropped beyond
/// it (the protocol re-fetches what a peer misses).
pub const PEER_QUEUE_MAX: usize = 16_384;
/// Replies queued for one client connection.
pub const CLIENT_QUEUE_MAX: usize = 4_096;
/// Frames written before a flush.
const WRITE_BURST_MAX: usize = 256;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What connections (and the USIG's thread) hand the protocol loop.
pub enum Event {
    /// The USIG's thread finished the `createUI` it was asked for.
    UiCreated(Result<usig::Ui, usig::UsigError>),
    /// The idle-priority thread checked a message (`super::verifier`).
    Verified(super::verifier::Verdict),
    /// A checkpoint's file state is on the disk (`super::CheckpointFlush`): the
    /// `seq`-th flush this replica started.
    CheckpointFlushed {
        seq: u64,
    },
    Link {
        from: ReplicaId,
        msg: LinkMsg,
    },
    Request {
        req: Request,
        /// Sent as a re-send (`ClientMsg::Resend`).
        resend: bool,
    },
    ClientUp {
        client: u64,
        conn: u64,
        tx: mpsc::Sender<Vec<u8>>,
    },
    ClientDown {
        client: u64,
        conn: u64,
    },
}

/// Sends this replica's messages to peer `to`, reconnecting with backoff, until the
/// queue's senders are gone.
pub async fn dial_peer(
    config: Arc<ClusterConfig>,
    me: ReplicaId,
    to: ReplicaId,
    key: [u8; 32],
    mut rx: mpsc::Receiver<Arc<Outgoing>>,
) {
    let addr = config.replica_addr(to);
    let mut backoff = crate::net::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        // Keeps the queue from filling with stale messages while the peer is down.
        let Some(stream) = crate::net::dial(addr, &mut rx, &mut backoff).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (mut r, w) = stream.into_split();
        let mut w = BufWriter::with_capacity(256 << 10, w);
        let handshake = async {
            write_frame(&mut w, &encode(&Hello::Replica { from: me, to })).await?;
            w.flush().await?;
            let frame = read_frame(&mut r, HELLO_BYTES_MAX).await?;
            decode::<Challenge>(&frame)
        };
        let challenge = match tokio::time::timeout(HELLO_TIMEOUT, handshake).await {
            Ok(Ok(c)) => c,
            _ => {
                backoff.wait_and_grow().await;
                continue;
            }
        };
        info!(to, %addr, "link up");
        backoff.reset();
        let mut counter = 0u64;
        let result: std::io::Result<()> = async {
            loop {
                let Some(msg) = rx.recv().await else {
                    return Ok(());
                };
                let (mac, body) = msg.seal(&key, &challenge.nonce, counter);
                write_frame_parts(&mut w, &mac, body).await?;
                counter += 1;
                for _ in 0..WRITE_BURST_MAX {
                    let Ok(msg) = rx.try_recv() else { break };
                    let (mac, body) = msg.seal(&key, &challenge.nonce, counter);
                    write_frame_parts(&mut w, &mac, body).await?;
                    counter += 1;
                }
                w.flush().await?;
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => info!(to, "link down: {e}"),
        }
    }
}

/// Accepts connections until `stop` flips.
pub async fn accept_loop(
    listener: TcpListener,
    config: Arc<ClusterConfig>,
    me: ReplicaId,
    link_keys: Arc<Vec<Option<[u8; 32]>>>,
    events: mpsc::Sender<Event>,
    stats: Arc<NetStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn_ids = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        conn_ids += 1;
        tokio::spawn(serve_conn(
            stream,
            config.clone(),
            me,
            link_keys.clone(),
            events.clone(),
            stats.clone(),
            conn_ids,
            stop.clone(),
        ));
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_conn(
    stream: TcpStream,
    config: Arc<ClusterConfig>,
    me: ReplicaId,
    link_keys: Arc<Vec<Option<[u8; 32]>>>,
    events: mpsc::Sender<Event>,
    stats: Arc<NetStats>,
    conn: u64,
    mut stop: watch::Receiver<bool>,
) {
    let (r, mut w) = stream.into_split();
    // One read takes a frame's length and body (and any frames behind it).
    let mut r = BufReader::with_capacity(64 << 10, r);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut r, HELLO_BYTES_MAX)).await
    {
        Ok(Ok(frame)) => match decode::<Hello>(&frame) {
            Ok(h) => h,
            Err(_) => return stats.count(DropReason::BadHello),
        },
        Ok(Err(e)) => {
            if let Some(why) = e.drop_reason() {
                stats.count(why);
            }
            return;
        }
        Err(_) => return stats.count(DropReason::BadHello),
    };
    let max = config.frame_bytes_max;
    match hello {
        Hello::Replica { from, to } => {
            let key = link_keys.get(from as usize).copied().flatten();
            let (true, Some(key)) = (to == me && from != me, key) else {
                return stats.count(DropReason::BadHello);
            };
            let mut nonce = [0u8; 32];
            if SystemRandom::new().fill(&mut nonce).is_err() {
                return;
            }
            if write_frame(&mut w, &encode(&Challenge { nonce }))
                .await
                .is_err()
                || w.flush().await.is_err()
            {
                return;
            }
            let mut counter = 0u64;
            loop {
                let frame = tokio::select! {
                    f = read_frame(&mut r, max) => f,
                    _ = stop.changed() => return,
                };
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        if let Some(why) = e.drop_reason() {
                            stats.count(why);
                        }
                        return;
                    }
                };
                match open_link(&key, &nonce, counter, &frame) {
                    Ok(msg) => {
                        counter += 1;
                        if events.send(Event::Link { from, msg }).await.is_err() {
                            return;
                        }
                    }
                    // A forged or replayed frame: this connection cannot be trusted
                    // further; the peer reconnects.
                    Err(why) => return stats.count(why),
                }
            }
        }
        Hello::Client { client } => {
            if !config.clients.iter().any(|c| c.id == client) {
                return stats.count(DropReason::BadHello);
            }
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CLIENT_QUEUE_MAX);
            if events
                .send(Event::ClientUp { client, conn, tx })
                .await
                .is_err()
            {
                return;
            }
            let writer = tokio::spawn(async move {
                let mut w = BufWriter::with_capacity(64 << 10, w);
                while let Some(frame) = rx.recv().await {
                    if write_frame(&mut w, &frame).await.is_err() {
                        return;
                    }
                    while let Ok(frame) = rx.try_recv() {
                        if write_frame(&mut w, &frame).await.is_err() {
                            return;
                        }
                    }
                    if w.flush().await.is_err() {
                        return;
                    }
                }
            });
            loop {
                let frame = tokio::select! {
                    f = read_frame(&mut r, max) => f,
                    _ = stop.changed() => break,
                };
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        if let Some(why) = e.drop_reason() {
                            stats.count(why);
                        }
                        break;
                    }
                };
                let (req, resend) = match decode::<ClientMsg>(&frame) {
                    Ok(ClientMsg::Request(req)) => (req, false),
                    Ok(ClientMsg::Resend(req)) => (req, true),
                    Err(_) => {
                        stats.count(DropReason::Garbage);
                        break;
                    }
                };
                if ClusterConfig::client_index(req.client) != client {
                    stats.count(DropReason::WrongClient);
                    continue;
                }
                if events.send(Event::Request { req, resend }).await.is_err() {
                    break;
                }
            }
            writer.abort();
            let _ = events.send(Event::ClientDown { client, conn }).await;
        }
    }
}
