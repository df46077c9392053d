//! State transfer from a Byzantine peer: a replica behind a stable checkpoint asks its
//! peers for that checkpoint's state. One faulty peer answers with the right manifest
//! and client table (they verify against the certified digest) but a certificate whose
//! CHECKPOINTs are stripped: it must be refused and counted, never handed to the core
//! (which panics on installed state that is not certified). Bounded in time.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, null_cluster};
use consensus::PeerMessage;
use nfs_frontend::net::{
    Challenge, Hello, LinkMsg, StateBlob, decode, encode, open_link, read_frame, seal_link,
    write_frame,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Accepts the links other replicas open to `me` and forwards what they send.
async fn serve_links(
    listener: TcpListener,
    keys: Vec<Option<[u8; 32]>>,
    tx: mpsc::Sender<LinkMsg>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let keys = keys.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(frame) = read_frame(&mut s, 1 << 10).await else {
                return;
            };
            let Ok(Hello::Replica { from, .. }) = decode::<Hello>(&frame) else {
                return;
            };
            let Some(key) = keys[from as usize] else {
                return;
            };
            let nonce = [5u8; 32];
            if write_frame(&mut s, &encode(&Challenge { nonce }))
                .await
                .is_err()
                || s.flush().await.is_err()
            {
                return;
            }
            let mut counter = 0;
            loop {
                let Ok(frame) = read_frame(&mut s, 64 << 20).await else {
                    return;
                };
                let Ok(msg) = open_link(&key, &nonce, counter, &frame) else {
                    return;
                };
                counter += 1;
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// A link from `from` to `to` (dialled), and the next frame counter.
async fn dial_link(addr: std::net::SocketAddr, from: u32, to: u32) -> (TcpStream, [u8; 32]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let hello = encode(&Hello::Replica { from, to });
    write_frame(&mut s, &hello).await.expect("hello");
    s.flush().await.expect("flush");
    let challenge: Challenge =
        decode(&read_frame(&mut s, 1 << 10).await.expect("challenge")).expect("decode");
    (s, challenge.nonce)
}

#[test]
fn a_state_reply_with_an_uncertified_certificate_is_refused() {
    bounded(Duration::from_secs(120), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut cluster, rt) = null_cluster(&tmp.path().join("c"));
        let config = cluster.config().clone();
        let ci = config.consensus.checkpoint_interval;
        let keys = config.replica_secrets(1).expect("secrets").link_keys;
        let client = cluster.client();
        // Replica 2 falls behind a stable checkpoint of replicas 0 and 1.
        rt.block_on(async {
            for _ in 0..3 {
                client.invoke(Vec::new(), false).await;
            }
        });
        cluster.stop_replica(2).expect("stop 2");
        rt.block_on(async {
            for _ in 0..2 * ci + 2 {
                client.invoke(Vec::new(), false).await;
            }
        });
        // Replica 1 turns Byzantine: a process with its link keys (not its USIG).
        cluster.stop_replica(1).expect("stop 1");
        let blob: StateBlob = rt.block_on(async {
            let listener = TcpListener::bind(config.replica_addr(1)).await.expect("bind");
            let (tx, mut rx) = mpsc::channel(1024);
            tokio::spawn(serve_links(listener, keys.clone(), tx));
            let (mut s, nonce) = dial_link(config.replica_addr(0), 1, 0).await;
            let key = keys[0].expect("key");
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut counter = 0;
            loop {
                assert!(Instant::now() < deadline, "replica 0 sent no state");
                let ask = seal_link(&key, &nonce, counter, &LinkMsg::StateRequest { n: 1 });
                counter += 1;
                write_frame(&mut s, &ask).await.expect("ask");
                s.flush().await.expect("flush");
                let wait = tokio::time::sleep(Duration::from_millis(500));
                tokio::pin!(wait);
                loop {
                    tokio::select! {
                        m = rx.recv() => if let Some(LinkMsg::StateReply { state: Some(b), .. }) = m {
                            return *b;
                        },
                        _ = &mut wait => break,
                    }
                }
            }
        });
        assert!(blob.cert.n >= ci, "a stable checkpoint: {}", blob.cert.n);
        cluster.stop_replica(0).expect("stop 0");
        // Replica 2 restarts; "replica 1" hands it the (valid) certificate, then offers
        // that checkpoint's true state under a certificate without its CHECKPOINTs.
        cluster.restart_replica(2).expect("restart 2");
        let mut bad = blob.clone();
        bad.cert.checkpoints.clear();
        rt.block_on(async {
            let (mut s, nonce) = dial_link(config.replica_addr(2), 1, 2).await;
            let key = keys[2].expect("key");
            let mut counter = 0;
            for _ in 0..50 {
                for msg in [
                    LinkMsg::Peer(PeerMessage::Cert(blob.cert.clone())),
                    LinkMsg::StateReply {
                        n: blob.cert.n,
                        state: Some(Box::new(bad.clone())),
                    },
                ] {
                    if write_frame(&mut s, &seal_link(&key, &nonce, counter, &msg))
                        .await
                        .is_err()
                    {
                        return; // replica 2 is gone
                    }
                    counter += 1;
                }
                if s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let stats = cluster.stop_replica(2).expect("replica 2 is still running");
        assert!(
            stats.transfer.bad_replies >= 1,
            "the uncertified state was counted: {:?}",
            stats.transfer
        );
        drop(cluster);
    });
}
