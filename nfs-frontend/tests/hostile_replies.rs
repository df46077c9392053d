//! A faulty replica floods the BFT client with large replies to the request it has
//! outstanding (well framed, wrong MAC). Replies read in but not yet checked by the
//! client's engine must stay bounded in bytes per connection, or a busy engine lets the
//! client's memory grow with the flood. Here the engine is not polled at all while the
//! flood comes in (its connection tasks run): the worst case of a busy engine. Bounded
//! in time and in what is sent (at most 1.2 GiB over loopback).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::bounded;
use consensus::Reply;
use nfs_frontend::net::{ClientMsg, Hello, ReplicaMsg, decode, encode, read_frame, write_frame};
use nfs_frontend::{ClusterOptions, LocalCluster};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Resident memory of this process (the client engine runs on one of its threads).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64
}

const REPLY_BYTES: usize = 12 << 20;
const REPLIES: usize = 100;

#[test]
fn a_replica_flooding_large_replies_does_not_grow_the_client() {
    bounded(Duration::from_secs(120), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = LocalCluster::start(ClusterOptions {
            dir: tmp.path().join("c"),
            null_app: true,
            client_engine_on_caller: true,
            ..ClusterOptions::default()
        })
        .expect("cluster");
        // Replica 1 down and replica 2 played by this test: the primary alone orders
        // nothing, so the client's request stays outstanding.
        let addr2 = cluster.config().replica_addr(2);
        cluster.stop_replica(1).expect("stop 1");
        cluster.stop_replica(2).expect("stop 2");
        let client = cluster.client();
        let engine = cluster
            .take_client_engine()
            .expect("the engine, to run here");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (base, sent) = rt.block_on(async {
            let listener = TcpListener::bind(addr2)
                .await
                .expect("bind replica 2's address");
            // The engine runs until the request is found, then is held but not polled.
            let pause = Arc::new(tokio::sync::Notify::new());
            let paused = pause.clone();
            tokio::spawn(async move {
                let mut engine = engine;
                tokio::select! {
                    () = &mut engine => {}
                    () = paused.notified() => {}
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(engine);
            });
            tokio::spawn(async move {
                client.invoke(b"never ordered".to_vec(), false).await;
            });
            // Two clients dial replica 2 (the embedded NFS frontend's and the one the test
            // calls): flood the connection the outstanding request came on.
            let (found, mut requests) = tokio::sync::mpsc::channel(2);
            tokio::spawn(async move {
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        return;
                    };
                    let found = found.clone();
                    tokio::spawn(async move {
                        let Ok(hello) = read_frame(&mut s, 1 << 10).await else {
                            return;
                        };
                        assert!(matches!(decode::<Hello>(&hello), Ok(Hello::Client { .. })));
                        while let Ok(frame) = read_frame(&mut s, 16 << 20).await {
                            let (ClientMsg::Request(req) | ClientMsg::Resend(req)) =
                                decode::<ClientMsg>(&frame).expect("decode");
                            if !req.read_only {
                                let _ = found.send((s, req)).await;
                                return;
                            }
                        }
                    });
                }
            });
            let (mut s, req) = requests
                .recv()
                .await
                .expect("the request reaches replica 2");
            pause.notify_one();
            let base = rss_bytes();
            let sampler = {
                let (peak, done) = (peak.clone(), done.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            };
            let reply = encode(&ReplicaMsg::Reply(Reply {
                view: 0,
                replica: 2,
                client: req.client,
                seq: req.seq,
                read_only: false,
                result: vec![7; REPLY_BYTES],
                omitted: None,
                mac: [0; 32],
            }));
            // With the budget, the client stops reading and these writes stall.
            let mut sent = 0;
            for _ in 0..REPLIES {
                let write = async {
                    write_frame(&mut s, &reply).await?;
                    s.flush().await
                };
                match tokio::time::timeout(Duration::from_secs(2), write).await {
                    Ok(Ok(())) => sent += 1,
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::Relaxed);
            sampler.join().expect("sampler");
            (base, sent)
        });
        let grew = peak.load(Ordering::Relaxed).saturating_sub(base);
        eprintln!(
            "{sent} replies of {} MiB: the process grew by {} MiB at most",
            REPLY_BYTES >> 20,
            grew >> 20
        );
        // 64 MiB of queued replies per connection, plus the frames being read and
        // decoded, the test's own reply buffer and slack (about 200 MiB measured; 1.3 GiB
        // without the budget).
        assert!(
            grew < 400 << 20,
            "the client held {} MiB of a faulty replica's replies",
            grew >> 20
        );
        drop(rt);
        drop(cluster);
    });
}
