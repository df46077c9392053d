//! Request bundling end to end: a BFT client with fewer sessions than concurrent callers
//! sends what queues up as bundled requests; every caller gets its own correct result,
//! the replicas apply each bundled operation exactly once, in order, and end identical.
//! Bounded in time.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use fs_state::{AuthUnix, CreateHow, FileHandle, Filename3, FsConfig, FsOp, FsReply, ReplyBody};
use nfs_frontend::op::encode_op;
use nfs_frontend::{ClusterOptions, LocalCluster};

const CALLERS: usize = 48;
const ROUNDS: usize = 3;

#[test]
fn concurrent_callers_share_bundled_requests_and_replicas_agree() {
    common::bounded(Duration::from_secs(120), run);
}

fn run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(ClusterOptions {
        dir: tmp.path().join("c"),
        // Two sessions for 48 callers: most operations must travel bundled.
        sessions: 2,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let client = cluster.client();
    let root = FileHandle::root(FsConfig::default().generation);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let mut created = BTreeSet::new();
    rt.block_on(async {
        for round in 0..ROUNDS {
            let mut calls = Vec::new();
            for i in 0..CALLERS {
                let name = format!("r{round}-f{i}");
                let op = FsOp::Create {
                    dir: root.clone(),
                    name: Filename3::from(name.as_str()),
                    how: CreateHow::Exclusive((i as u64 + 1).to_be_bytes()),
                };
                let client = client.clone();
                calls.push(async move {
                    let out = client
                        .try_invoke(encode_op(&AuthUnix::root(), &op), false)
                        .await
                        .expect("engine running");
                    (
                        name,
                        FsReply::decode(&out).expect("an NFS reply, not garbage"),
                    )
                });
            }
            for (name, reply) in futures_join_all(calls).await {
                let FsReply(Ok(ReplyBody::Create { obj: Some(_), .. })) = reply else {
                    panic!("CREATE {name}: {reply:?}")
                };
                created.insert(name);
            }
            // And read-only bundles: LOOKUPs of what this round created.
            let mut lookups = Vec::new();
            for i in 0..CALLERS {
                let name = format!("r{round}-f{i}");
                let op = FsOp::Lookup {
                    dir: root.clone(),
                    name: Filename3::from(name.as_str()),
                };
                let client = client.clone();
                lookups.push(async move {
                    let out = client
                        .try_invoke(encode_op(&AuthUnix::root(), &op), true)
                        .await
                        .expect("engine running");
                    (
                        name,
                        FsReply::decode(&out).expect("an NFS reply, not garbage"),
                    )
                });
            }
            for (name, reply) in futures_join_all(lookups).await {
                let FsReply(Ok(ReplyBody::Lookup { .. })) = reply else {
                    panic!("LOOKUP {name}: {reply:?}")
                };
            }
        }
    });
    assert_eq!(created.len(), CALLERS * ROUNDS);
    let bundled = client.bundled_ops();
    assert!(
        bundled >= (CALLERS * ROUNDS) as u64,
        "only {bundled} of {} operations travelled bundled",
        CALLERS * ROUNDS
    );
    std::thread::sleep(Duration::from_millis(500));
    let exports: Vec<_> = (0..3).map(|i| cluster.export_dir(i)).collect();
    cluster.stop().expect("stop");
    let listing = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("read export")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let first = listing(&exports[0]);
    assert_eq!(first, created, "replica 0 holds exactly the created files");
    for e in &exports[1..] {
        assert_eq!(listing(e), first, "replicas agree");
    }
}

/// `join_all` without another dependency: polls every future on this task.
async fn futures_join_all<F>(futs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let local = tokio::task::LocalSet::new();
    let handles: Vec<_> = futs.into_iter().map(|f| local.spawn_local(f)).collect();
    local
        .run_until(async move {
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(h.await.expect("caller task"));
            }
            out
        })
        .await
}

/// Nagle's rule for bundles (`ClusterConfig::bundles_in_flight`, 1 by default): calls
/// that arrive one by one while a bundle is out wait for it and leave together, even
/// though idle sessions are free; without the rule each would leave at once, alone. The
/// client's engine runs on this test's thread, so each call reaches it, and is sent or
/// held, before the next call is made: no timing is involved. Read-only and ordered
/// bundles are counted apart: a read does not wait for a write.
#[test]
fn calls_arriving_while_a_bundle_is_out_wait_and_leave_together() {
    common::bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = LocalCluster::start(ClusterOptions {
            dir: tmp.path().join("c"),
            sessions: 8,
            client_engine_on_caller: true,
            ..ClusterOptions::default()
        })
        .expect("cluster");
        let client = cluster.client();
        let engine = cluster.take_client_engine().expect("the engine, once");
        let root = FileHandle::root(FsConfig::default().generation);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let engine = rt.spawn(engine);
        let create = |name: String| FsOp::Create {
            dir: root.clone(),
            name: Filename3::from(name.as_str()),
            how: CreateHow::Unchecked(Default::default()),
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            // Connections up and a first request done.
            client
                .try_invoke(encode_op(&AuthUnix::root(), &create("warm".into())), false)
                .await
                .expect("engine running");
            // The late calls must all be made while the first one is out. Each takes
            // a few yields, but the replicas run on threads of their own: on a busy
            // host (the whole suite at once) the first reply can come back in the
            // middle. A round where it did proves nothing either way and is run again.
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(rounds <= 20, "the first call never stayed out long enough");
                let before = client.requests_sent();
                let mut calls = Vec::new();
                for i in 0..=LATE_CALLERS {
                    let caller = client.clone();
                    let name = format!("late-{rounds}-{i}");
                    let op = encode_op(&AuthUnix::root(), &create(name));
                    calls.push(tokio::task::spawn_local(async move {
                        let out = caller.try_invoke(op, false).await.expect("engine");
                        FsReply::decode(&out).expect("an NFS reply")
                    }));
                    // The call queues its operation, then the engine sends or holds it.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                    if i == 0 {
                        assert_eq!(client.requests_sent() - before, 1, "the first call left");
                    }
                }
                let sent_while_out = client.requests_sent() - before;
                // A reply the engine took before that count has woken its caller by
                // the end of these yields.
                for _ in 0..16 {
                    tokio::task::yield_now().await;
                }
                let first_still_out = !calls[0].is_finished();
                for call in calls {
                    let reply = call.await.expect("caller task");
                    assert!(
                        matches!(reply, FsReply(Ok(ReplyBody::Create { obj: Some(_), .. }))),
                        "{reply:?}"
                    );
                }
                if !first_still_out {
                    continue;
                }
                let requests = client.requests_sent() - before;
                assert_eq!(
                    (sent_while_out, requests),
                    (1, 2),
                    "{} calls made while the first was out: requests sent meanwhile, in all",
                    LATE_CALLERS + 1
                );
                break;
            }
            // Read-only and ordered bundles are counted apart: a read made while a
            // write is out leaves at once.
            let before = client.requests_sent();
            let writer = client.clone();
            let write = encode_op(&AuthUnix::root(), &create("after".into()));
            let write = tokio::task::spawn_local(async move {
                writer.try_invoke(write, false).await.expect("engine")
            });
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let lookup = FsOp::Lookup {
                dir: root.clone(),
                name: Filename3::from("warm"),
            };
            let reader = client.clone();
            let lookup = encode_op(&AuthUnix::root(), &lookup);
            let read = tokio::task::spawn_local(async move {
                reader.try_invoke(lookup, true).await.expect("engine")
            });
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            assert_eq!(
                client.requests_sent() - before,
                2,
                "the read left while the write was out"
            );
            let read = read.await.expect("reader task");
            assert!(
                matches!(
                    FsReply::decode(&read),
                    Ok(FsReply(Ok(ReplyBody::Lookup { .. })))
                ),
                "LOOKUP"
            );
            write.await.expect("writer task");
        });
        engine.abort();
        let _ = rt.block_on(engine);
        cluster.stop().expect("stop");
    });
}

const LATE_CALLERS: usize = 6;
