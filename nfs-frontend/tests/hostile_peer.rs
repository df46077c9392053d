//! The idle-priority check path (`replica::verifier`) end to end. Forged messages on an
//! authenticated peer link (a link key proves which process sent a frame, not that its
//! USIG certified it) are dropped and counted on both paths, and the cluster goes on; a
//! request whose deferred check ends after its execution is not answered twice. Bounded
//! in time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bounded, null_cluster};
use consensus::message::{Commit, PrepareHeader};
use consensus::{PeerMessage, UiMessage};
use nfs_frontend::LocalCluster;
use nfs_frontend::net::{Challenge, Hello, LinkMsg, decode, encode, read_frame, seal_link};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn forged_commit(n: u64, counter: u64) -> LinkMsg {
    let header = PrepareHeader {
        view: 0,
        n,
        timestamp_ns: 1,
        batch_digest: [7; 32],
    };
    let ui = |counter| usig::Ui {
        counter,
        cert: vec![0x30; 64],
    };
    LinkMsg::Peer(PeerMessage::Ui(UiMessage::Commit(Commit {
        header,
        primary: 0,
        primary_ui: ui(n),
        sender: 2,
        ui: ui(counter),
    })))
}

/// `null_cluster` with a third client key, index 2, that no client of the cluster
/// uses (its own hold 0 and 1, and a second connection under one index takes the
/// replies' route from the first).
fn null_cluster_with_client_2(dir: &Path) -> (LocalCluster, tokio::runtime::Runtime) {
    let keys = nfs_frontend::config::KeygenOptions::new(1, 3);
    nfs_frontend::cluster::ensure_keys(dir, &keys).expect("keys");
    null_cluster(dir)
}

/// Connects to replica `i` as client 2.
async fn client_2_conn(config: &nfs_frontend::config::ClusterConfig, i: u32) -> TcpStream {
    let mut s = TcpStream::connect(config.replica_addr(i))
        .await
        .expect("connect");
    nfs_frontend::net::write_frame(&mut s, &encode(&Hello::Client { client: 2 }))
        .await
        .expect("hello");
    s.flush().await.expect("flush");
    s
}

/// Two processes with one client key take each other's replies; a replica counts (and
/// warns about) a connection that replaces one still open, and not a reconnect after
/// the old connection closed.
#[test]
fn a_second_open_connection_under_one_client_key_is_counted() {
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = null_cluster_with_client_2(&tmp.path().join("c"));
        let config = cluster.config().clone();
        rt.block_on(async {
            let first = client_2_conn(&config, 0).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(first);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _again = client_2_conn(&config, 0).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _second = client_2_conn(&config, 0).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let stats = cluster.stop().expect("stop");
        assert_eq!(stats[0].client_conns_replaced, 1, "{:?}", stats[0]);
        assert_eq!(stats[1].client_conns_replaced, 0, "{:?}", stats[1]);
    });
}

#[test]
fn forged_commits_are_dropped_and_counted_on_both_check_paths() {
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = null_cluster(&tmp.path().join("c"));
        let client = cluster.client();
        let config = cluster.config().clone();
        let key = config.replica_secrets(2).expect("secrets").link_keys[0].expect("link key");
        rt.block_on(async {
            for _ in 0..5 {
                client.invoke(Vec::new(), false).await;
            }
            // Replica 0, the primary, has executed batch 1 once it has a COMMIT for it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            // Replica 2's link key, but not its USIG.
            let mut s = TcpStream::connect(config.replica_addr(0))
                .await
                .expect("connect");
            let hello = encode(&Hello::Replica { from: 2, to: 0 });
            s.write_u32(hello.len() as u32).await.expect("hello");
            s.write_all(&hello).await.expect("hello");
            let challenge: Challenge =
                decode(&read_frame(&mut s, 1 << 10).await.expect("challenge")).expect("decode");
            // Batch 1 is executed: that check waits for the idle thread (and is past its
            // 200 ms bound before the next message from "replica 2" could take it back).
            // Batch 10⁶ is not: checked at once.
            for (i, msg) in [forged_commit(1, 1_000), forged_commit(1_000_000, 1_001)]
                .iter()
                .enumerate()
            {
                let frame = seal_link(&key, &challenge.nonce, i as u64, msg);
                s.write_u32(frame.len() as u32).await.expect("frame");
                s.write_all(&frame).await.expect("frame");
                s.flush().await.expect("flush");
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            for _ in 0..5 {
                client.invoke(Vec::new(), false).await;
            }
        });
        let stats = cluster.stop().expect("stop");
        assert_eq!(
            stats[0].dropped_core.get("bad_ui"),
            Some(&2),
            "{:?}",
            stats[0]
        );
        assert!(stats[0].checks_deferred >= 1, "{:?}", stats[0]);
        // The client had f + 1 = 2 matching replies for each of the 10 operations, so two
        // replicas executed them all (the primary proposed every one of them after the
        // forged COMMITs); the third may still be a batch or a few behind when the
        // cluster stops (a backup's deferred checks wait up to `JOB_AGE_MAX` on a loaded
        // host, the primary executes on a COMMIT it may not have yet). Nobody left view 0.
        let done = stats.iter().filter(|s| s.executed_n >= 10).count();
        assert!(done >= 2 && stats.iter().all(|s| s.view == 0), "{stats:?}");
    });
}

/// A backup's deferred check of a request often ends after the PREPARE carrying the
/// request was executed; that late copy must not be answered again from the reply cache
/// (it was, about once per request per backup, before `apply_deferred`).
#[test]
fn a_late_deferred_request_check_is_not_answered_twice() {
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = null_cluster(&tmp.path().join("c"));
        let client = cluster.client();
        const OPS: u64 = 300;
        rt.block_on(async {
            let callers: Vec<_> = (0..4)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        for _ in 0..OPS / 4 {
                            client.invoke(Vec::new(), false).await;
                        }
                    })
                })
                .collect();
            for c in callers {
                c.await.expect("caller");
            }
        });
        let stats = cluster.stop().expect("stop");
        let deferred: u64 = stats.iter().map(|s| s.checks_deferred).sum();
        let resent: u64 = stats.iter().map(|s| s.replies_from_cache).sum();
        assert!(
            deferred >= OPS,
            "the backups deferred their checks: {stats:?}"
        );
        // Only a client's own re-sends (after a lost or late reply) are answered from
        // the cache: neither a deferred check that ends late nor a first copy that its
        // PREPARE overtook (`late_request_copies`, dropped unchecked).
        assert!(resent < OPS / 10, "{resent} replies sent twice: {stats:?}");
    });
}

/// A client's first copy of a request that reaches a replica after the replica executed
/// it (its PREPARE overtook the copy) is dropped unchecked and counted: its reply left
/// at execution. The same request marked as a re-send is answered from the cache.
#[test]
fn a_late_first_copy_is_dropped_and_a_resend_is_answered() {
    use consensus::Request;
    use nfs_frontend::net::{ClientMsg, ReplicaMsg, write_frame};
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = null_cluster_with_client_2(&tmp.path().join("c"));
        let config = cluster.config().clone();
        let secrets = config.client_secrets(2).expect("client secrets");
        let signer =
            nfs_frontend::crypto::RequestSigner::new(&secrets.signing_pkcs8).expect("signer");
        let mut req = Request {
            client: 2 * nfs_frontend::config::SESSION_STRIDE,
            seq: 1,
            read_only: false,
            op: Default::default(),
            sig: Vec::new(),
        };
        let crypto = nfs_frontend::crypto::ClusterCrypto::for_client(&config, &secrets)
            .expect("client crypto");
        req.sig = signer.sign(&consensus::Crypto::request_digest(&crypto, &req));
        let replies_to = |msg: ClientMsg, wait: Duration| {
            let config = config.clone();
            async move {
                let mut conns = Vec::new();
                for i in 0..config.n() {
                    let mut s = client_2_conn(&config, i).await;
                    write_frame(&mut s, &encode(&msg)).await.expect("request");
                    s.flush().await.expect("flush");
                    conns.push(s);
                }
                let mut got = 0;
                for mut s in conns {
                    if let Ok(Ok(frame)) =
                        tokio::time::timeout(wait, read_frame(&mut s, 1 << 20)).await
                    {
                        assert!(matches!(
                            decode::<ReplicaMsg>(&frame),
                            Ok(ReplicaMsg::Reply(_))
                        ));
                        got += 1;
                    }
                }
                got
            }
        };
        rt.block_on(async {
            // Executed: every replica replies.
            let first = replies_to(ClientMsg::Request(req.clone()), Duration::from_secs(10));
            assert_eq!(first.await, 3);
            // The same first copy again, as one overtaken by its PREPARE: no answers.
            let late = replies_to(ClientMsg::Request(req.clone()), Duration::from_millis(300));
            assert_eq!(late.await, 0);
            // Marked as a re-send: answered from the cache.
            let again = replies_to(ClientMsg::Resend(req.clone()), Duration::from_secs(10));
            assert_eq!(again.await, 3);
        });
        let stats = cluster.stop().expect("stop");
        for s in &stats {
            assert_eq!(s.late_request_copies, 1, "{s:?}");
            assert_eq!(s.replies_from_cache, 1, "{s:?}");
        }
    });
}
