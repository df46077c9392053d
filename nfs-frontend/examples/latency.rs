//! Per-operation latency over the NFS wire, unreplicated or replicated (an embedded
//! f = 1 cluster, `--replicated`, which also times the null operation through the BFT
//! client): one nfs3_client connection, sequential calls (no pipelining), median and
//! 99th percentile per procedure.
//! `cargo run --release -p nfs-frontend --example latency [-- ITERATIONS] [--replicated]`.
//! The data directory is a temporary directory on the same disk as `TMPDIR`.

use std::time::{Duration, Instant};

use fs_state::FsConfig;
use nfs_frontend::{ServerConfig, UnreplicatedServer};
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "{what:<28} n={:<5} p50={:>8.1} µs  p90={:>8.1} µs  p99={:>8.1} µs",
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99)
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|s| s.parse().ok())
        .unwrap_or(2000);
    let replicated = std::env::args().any(|a| a == "--replicated");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, cluster) = if replicated {
        let c = nfs_frontend::LocalCluster::start(nfs_frontend::ClusterOptions {
            dir: dir.path().join("cluster"),
            ..Default::default()
        })
        .expect("cluster");
        (None, Some(c))
    } else {
        let s = UnreplicatedServer::start(
            "127.0.0.1:0".parse().expect("addr"),
            &dir.path().join("data"),
            FsConfig::default(),
            ServerConfig::default(),
        )
        .expect("server");
        (Some(s), None)
    };
    let addr = match (&server, &cluster) {
        (Some(s), _) => s.addr(),
        (_, Some(c)) => c.nfs_addr(),
        _ => unreachable!("one of them runs"),
    };
    let bench = cluster.as_ref().map(|c| c.client());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut c = Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), "/")
            .mount_port(addr.port())
            .nfs3_port(addr.port())
            .connect_from_privileged_port(false)
            .credential(opaque_auth::auth_unix(&auth_unix {
                stamp: 0,
                machinename: Opaque::owned(b"bench".to_vec()),
                uid: 0,
                gid: 0,
                gids: vec![],
            }))
            .mount()
            .await
            .expect("mount");
        if let Some(bench) = &bench {
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let _ = bench.invoke(Vec::new(), false).await;
                samples.push(t.elapsed());
            }
            report("null op (BFT client, ordered)", samples);
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let _ = bench.invoke(Vec::new(), true).await;
                samples.push(t.elapsed());
            }
            report("null op (BFT client, read-only)", samples);
        }
        let root = c.root_nfs_fh3();
        let file = c
            .create(&CREATE3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: filename3(Opaque::owned(b"f".to_vec())),
                },
                how: createhow3::UNCHECKED(sattr3::default()),
            })
            .await
            .expect("rpc")
            .unwrap()
            .obj
            .unwrap();

        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Instant::now();
            c.null().await.expect("rpc");
            t.push(s.elapsed());
        }
        report("NULL (no backend)", t);

        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Instant::now();
            c.getattr(&GETATTR3args {
                object: file.clone(),
            })
            .await
            .expect("rpc")
            .unwrap();
            t.push(s.elapsed());
        }
        report("GETATTR", t);

        for (label, stable, size) in [
            ("WRITE 4 KiB FILE_SYNC", stable_how::FILE_SYNC, 4096),
            ("WRITE 4 KiB UNSTABLE", stable_how::UNSTABLE, 4096),
            ("WRITE 64 B FILE_SYNC", stable_how::FILE_SYNC, 64),
        ] {
            let data = vec![0xa5u8; size];
            let mut t = Vec::with_capacity(n);
            for i in 0..n {
                let s = Instant::now();
                c.write(&WRITE3args {
                    file: file.clone(),
                    offset: (i % 16 * size) as u64,
                    count: size as u32,
                    stable,
                    data: Opaque::borrowed(&data),
                })
                .await
                .expect("rpc")
                .unwrap();
                t.push(s.elapsed());
            }
            report(label, t);
        }

        let mut t = Vec::with_capacity(n);
        for _ in 0..n {
            let s = Instant::now();
            c.read(&READ3args {
                file: file.clone(),
                offset: 0,
                count: 4096,
            })
            .await
            .expect("rpc")
            .unwrap();
            t.push(s.elapsed());
        }
        report("READ 4 KiB", t);

        let m = n.min(500);
        let (mut tc, mut tr) = (Vec::with_capacity(m), Vec::with_capacity(m));
        for i in 0..m {
            let name = filename3(Opaque::owned(format!("c{i}").into_bytes()));
            let s = Instant::now();
            c.create(&CREATE3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: name.clone(),
                },
                how: createhow3::UNCHECKED(sattr3::default()),
            })
            .await
            .expect("rpc")
            .unwrap();
            tc.push(s.elapsed());
            let s = Instant::now();
            c.remove(&REMOVE3args {
                object: diropargs3 {
                    dir: root.clone(),
                    name,
                },
            })
            .await
            .expect("rpc")
            .unwrap();
            tr.push(s.elapsed());
        }
        report("CREATE", tc);
        report("REMOVE", tr);

        // Concurrent FILE_SYNC writers: operations that arrive together share a sync.
        for clients in [1usize, 4, 16] {
            let per = n / clients;
            let start = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..clients {
                tasks.push(tokio::spawn(async move {
                    let mut c =
                        Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), "/")
                            .mount_port(addr.port())
                            .nfs3_port(addr.port())
                            .connect_from_privileged_port(false)
                            .credential(opaque_auth::auth_unix(&auth_unix::default()))
                            .mount()
                            .await
                            .expect("mount");
                    let root = c.root_nfs_fh3();
                    let f = c
                        .create(&CREATE3args {
                            where_: diropargs3 {
                                dir: root,
                                name: filename3(Opaque::owned(
                                    format!("w{clients}-{k}").into_bytes(),
                                )),
                            },
                            how: createhow3::UNCHECKED(sattr3::default()),
                        })
                        .await
                        .expect("rpc")
                        .unwrap()
                        .obj
                        .unwrap();
                    let data = vec![7u8; 4096];
                    for i in 0..per {
                        c.write(&WRITE3args {
                            file: f.clone(),
                            offset: (i % 16 * 4096) as u64,
                            count: 4096,
                            stable: stable_how::FILE_SYNC,
                            data: Opaque::borrowed(&data),
                        })
                        .await
                        .expect("rpc")
                        .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.expect("writer");
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{clients:>2} concurrent FILE_SYNC 4 KiB writers: {:>7.0} writes/s",
                (per * clients) as f64 / secs
            );
        }
    });
    if let Some(server) = server {
        let stats = server.stop().expect("stop");
        println!(
            "executor: {} operations in {} syncs ({:.2} per sync)",
            stats.ops,
            stats.batches,
            stats.ops as f64 / stats.batches as f64
        );
    }
    if let Some(cluster) = cluster {
        for s in cluster.stop().expect("stop") {
            println!(
                "replica: executed {} batches, view {}, dropped {:?} (network {})",
                s.executed_n, s.view, s.dropped_core, s.dropped_net
            );
        }
    }
}
