//! Chooses the checkpoint interval K by measurement (issue 6):
//!
//! 1. checkpoint cost in the file state machine alone: with 2 000 files of 4 KiB, K
//!    batches of (CREATE + WRITE 4 KiB + sync), then the checkpoint work (scrub, digest,
//!    chunk capture) — per checkpoint and per batch amortised;
//! 2. an embedded f = 1 cluster per K: steady sequential file-write latency and rate
//!    with all replicas up, then replica 2 stopped during 400 file writes and restarted:
//!    time until its export equals replica 0's, and the bytes its state transfer moved.
//!
//! `cargo run --release -p nfs-frontend --example checkpoint_interval [-- K ...]`

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs_state::*;
use nfs_frontend::cluster::{ensure_keys, start_replica_thread};
use nfs_frontend::config::ClusterConfig;
use nfs_frontend::replica::ReplicaOptions;
use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;

fn fs_checkpoint_cost(k: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = FileStateMachine::open(dir.path(), FsConfig::default()).expect("open");
    let root = sm.root_handle();
    let mut t = 1_000_000_000u64;
    let mut n = 0u64;
    let batch = |sm: &mut FileStateMachine, t: &mut u64, n: &mut u64| {
        *t += 1000;
        *n += 1;
        let ctx = OpContext {
            timestamp_ns: *t,
            cred: AuthUnix::root(),
        };
        let r = sm
            .apply(
                &ctx,
                &FsOp::Create {
                    dir: root.clone(),
                    name: Filename3::from(format!("f{n}").as_str()),
                    how: CreateHow::Unchecked(Sattr3::default()),
                },
            )
            .expect("create");
        let Ok(ReplyBody::Create { obj: Some(fh), .. }) = r.0 else {
            panic!("create")
        };
        sm.apply(
            &ctx,
            &FsOp::Write {
                fh,
                offset: 0,
                stable: StableHow::FileSync,
                data: vec![(*n % 251) as u8; 4096],
            },
        )
        .expect("write");
        sm.sync().expect("sync");
    };
    for _ in 0..2000 {
        batch(&mut sm, &mut t, &mut n);
    }
    sm.scrub(64).expect("scrub");
    sm.state_digest().expect("digest");
    sm.checkpoint().expect("checkpoint");
    let mut costs = Vec::new();
    for _ in 0..5 {
        for _ in 0..k {
            batch(&mut sm, &mut t, &mut n);
        }
        let start = Instant::now();
        sm.scrub(64).expect("scrub");
        sm.state_digest().expect("digest");
        sm.checkpoint().expect("checkpoint");
        costs.push(start.elapsed().as_secs_f64() * 1e3);
    }
    costs.sort_by(f64::total_cmp);
    let med = costs[costs.len() / 2];
    (med, med / k as f64)
}

async fn write_files(addr: SocketAddr, tag: &str, count: usize) -> Vec<Duration> {
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
    let root = c.root_nfs_fh3();
    let mut lat = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        let f = c
            .create(&CREATE3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: filename3(Opaque::owned(format!("{tag}{i}").into_bytes())),
                },
                how: createhow3::UNCHECKED(sattr3::default()),
            })
            .await
            .expect("rpc")
            .unwrap()
            .obj
            .unwrap();
        c.write(&WRITE3args {
            file: f,
            offset: 0,
            count: 4096,
            stable: stable_how::FILE_SYNC,
            // Unique per file, so the chunk store cannot share them between phases.
            data: Opaque::owned({
                let mut d = vec![i as u8; 4096];
                let id = format!("{tag}{i}");
                d[..id.len()].copy_from_slice(id.as_bytes());
                d
            }),
        })
        .await
        .expect("rpc")
        .unwrap();
        lat.push(start.elapsed());
    }
    lat
}

fn trees_equal(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cluster_run(k: u64) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let path = ensure_keys(&dir, &nfs_frontend::config::KeygenOptions::new(1, 2)).expect("keys");
    let toml = std::fs::read_to_string(&path).expect("toml");
    let toml: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.starts_with("checkpoint_interval =") {
                format!("checkpoint_interval = {k}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, toml.join("\n") + "\n").expect("toml");
    let config = Arc::new(ClusterConfig::load(&path).expect("config"));
    let mut cluster = nfs_frontend::LocalCluster::start(nfs_frontend::ClusterOptions {
        dir: dir.clone(),
        ..Default::default()
    })
    .expect("cluster");
    let addr = cluster.nfs_addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let start = Instant::now();
    let mut lat = rt.block_on(write_files(addr, "a", 400));
    let rate = 400.0 / start.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    let (p50, p99, max) = (q(0.5), q(0.99), q(1.0));
    cluster.stop_replica(2).expect("stop 2");
    rt.block_on(write_files(addr, "b", 400));
    let restart = Instant::now();
    let r2 = start_replica_thread(
        config.clone(),
        ReplicaOptions {
            id: 2,
            data_dir: dir.join("replica-2"),
            null_app: false,
            fs_config: nfs_frontend::replica::replica_fs_config(&config),
            usig_socket: None,
            serve_corrupt_chunks: false,
            drop_large_client_copies: false,
        },
    )
    .expect("start 2");
    // Clients keep working: a few more writes, then wait for convergence.
    rt.block_on(write_files(addr, "c", 20));
    let (e0, e2) = (cluster.export_dir(0), cluster.export_dir(2));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !trees_equal(&e0, &e2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let catch_up = restart.elapsed().as_secs_f64();
    let _ = r2.0.send(());
    let s2 = r2.1.join().expect("join").expect("replica 2");
    let _ = cluster.stop();
    format!(
        "| {k} | {p50:.2} | {p99:.2} | {max:.1} | {rate:.0} | {catch_up:.2} | {} | {} | {} |",
        s2.transfer.transfers, s2.transfer.last_bytes, s2.transfer.last_millis
    )
}

fn main() {
    let ks: Vec<u64> = {
        let v: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|s| s.parse().ok())
            .collect();
        if v.is_empty() {
            vec![16, 64, 128, 256]
        } else {
            v
        }
    };
    println!("## checkpoint cost in fs-state (2000 files + K new 4 KiB files per checkpoint)");
    println!("| K | checkpoint ms (p50 of 5) | per batch µs |");
    println!("|---|---|---|");
    for &k in &ks {
        let (ms, per) = fs_checkpoint_cost(k);
        println!("| {k} | {ms:.2} | {:.0} |", per * 1e3);
    }
    println!();
    println!("## f = 1 cluster: 400 file writes, then replica 2 down for 400 and restarted");
    println!(
        "| K | write p50 ms | p99 ms | max ms | files/s | catch-up s | transfers | bytes moved | transfer ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &k in &ks {
        println!("{}", cluster_run(k));
    }
}
