//! The replicated mode end to end: a real NFS client against `bftnfs up` (real
//! processes), replicas that end with identical backing trees and digests after a mixed
//! workload, and kill -9 of a backup and then of the primary during writes (no NFS error,
//! no acknowledged write lost, a view change, the restarted replicas catch up).
//! Every test is bounded in time.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Up, bounded, cluster_with, connect, create_file, dirop, file_cluster, have, run_tool,
    trees_become_equal, trees_equal,
};
use fs_state::{FileStateMachine, FsConfig};
use nfs_frontend::ClusterOptions;
use nfs_frontend::config::UsigKeyKind;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

#[test]
fn libnfs_tools_round_trip_through_bftnfs_up() {
    if !(have("nfs-cp") && have("nfs-ls") && have("nfs-cat")) {
        eprintln!("SKIPPED: libnfs-utils missing (apt-get install libnfs-utils)");
        return;
    }
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        // More than two WRITEs of the largest size (libnfs writes FSINFO's wtmax at a
        // time): a 1 MiB WRITE once made a request over the cluster's request limit,
        // which every replica dropped, and nfs-cp hung.
        let content: Vec<u8> = (0..2_700_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let src = tmp.path().join("in.bin");
        std::fs::write(&src, &content).expect("source");
        let up = Up::start(&tmp.path().join("cluster"));
        run_tool(Command::new("nfs-cp").arg(&src).arg(up.url("//copied.bin")));
        let listing =
            String::from_utf8(run_tool(Command::new("nfs-ls").arg(up.url("/")))).expect("utf8");
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(" copied.bin") && l.contains("2700000")),
            "{listing}"
        );
        let back = run_tool(Command::new("nfs-cat").arg(up.url("//copied.bin")));
        assert!(back == content, "nfs-cat returns what nfs-cp wrote");
        let dirs: Vec<PathBuf> = (0..3).map(|i| up.replica_dir(i).join("export")).collect();
        up.terminate();
        for d in &dirs {
            assert_eq!(
                std::fs::read(d.join("copied.bin")).expect("backing"),
                content
            );
        }
    });
}

/// The same round trip with every replica's USIG in a separate `bftnfs usig-server`
/// process: the replicas never open their USIG key files.
#[test]
fn libnfs_round_trip_with_separate_process_usigs() {
    if !(have("nfs-cp") && have("nfs-cat")) {
        eprintln!("SKIPPED: libnfs-utils missing (apt-get install libnfs-utils)");
        return;
    }
    bounded(Duration::from_secs(60), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("in.txt");
        std::fs::write(&src, b"ordered by process USIGs\n").expect("source");
        let up = Up::start_with(&tmp.path().join("cluster"), &["--usig", "process"]);
        run_tool(Command::new("nfs-cp").arg(&src).arg(up.url("//p.txt")));
        let back = run_tool(Command::new("nfs-cat").arg(up.url("//p.txt")));
        assert_eq!(back, b"ordered by process USIGs\n");
        for i in 0..3 {
            let dir = up.replica_dir(i);
            assert!(
                dir.join("usig.sock").exists(),
                "replica {i} has a USIG socket"
            );
            assert!(
                !dir.join("usig").exists(),
                "replica {i} kept no in-process USIG state"
            );
        }
        let dirs: Vec<PathBuf> = (0..3).map(|i| up.replica_dir(i).join("export")).collect();
        up.terminate();
        for d in &dirs {
            assert_eq!(
                std::fs::read(d.join("p.txt")).expect("backing"),
                b"ordered by process USIGs\n"
            );
        }
    });
}

/// After a mixed workload every replica's backing tree and state digest are equal.
#[test]
fn replicas_agree_after_a_mixed_workload() {
    mixed_workload_leaves_replicas_equal(UsigKeyKind::Shared);
}

/// The same with an ECDSA P-256 USIG key per replica (new clusters share one HMAC key).
#[test]
fn replicas_with_ecdsa_usig_keys_agree_after_a_mixed_workload() {
    mixed_workload_leaves_replicas_equal(UsigKeyKind::EcdsaP256);
}

fn mixed_workload_leaves_replicas_equal(usig_key: UsigKeyKind) {
    bounded(Duration::from_secs(90), move || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = cluster_with(ClusterOptions {
            dir: tmp.path().join("c"),
            usig_key,
            ..ClusterOptions::default()
        });
        let addr = cluster.nfs_addr();
        rt.block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let root = c.root_nfs_fh3();
            let d = c
                .mkdir(&MKDIR3args {
                    where_: dirop(&root, "d"),
                    attributes: sattr3::default(),
                })
                .await
                .expect("rpc")
                .unwrap()
                .obj
                .unwrap();
            for i in 0..20u8 {
                let dir = if i % 2 == 0 { &root } else { &d };
                let f = create_file(&mut c, dir, &format!("f{i}")).await;
                c.write(&WRITE3args {
                    file: f,
                    offset: u64::from(i) * 100,
                    count: 4096,
                    stable: stable_how::FILE_SYNC,
                    data: Opaque::owned(vec![i; 4096]),
                })
                .await
                .expect("rpc")
                .unwrap();
            }
            c.rename(&RENAME3args {
                from: dirop(&root, "f0"),
                to: dirop(&d, "moved"),
            })
            .await
            .expect("rpc")
            .unwrap();
            c.remove(&REMOVE3args {
                object: dirop(&root, "f2"),
            })
            .await
            .expect("rpc")
            .unwrap();
            c.symlink(&SYMLINK3args {
                where_: dirop(&d, "link"),
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: nfspath3(Opaque::owned(b"../f4".to_vec())),
                },
            })
            .await
            .expect("rpc")
            .unwrap();
            let _ = c
                .readdirplus(&READDIRPLUS3args {
                    dir: d.clone(),
                    cookie: 0,
                    cookieverf: cookieverf3::default(),
                    dircount: 4096,
                    maxcount: 8192,
                })
                .await
                .expect("rpc")
                .unwrap();
        });
        // A read the replicas answer at once (read-only path) must leave time for the
        // last batch's COMMITs to reach every replica before stopping.
        std::thread::sleep(Duration::from_millis(500));
        let exports: Vec<PathBuf> = (0..3).map(|i| cluster.export_dir(i)).collect();
        let dir = cluster.dir().to_path_buf();
        cluster.stop().expect("stop");
        assert!(
            trees_equal(&exports[0], &exports[1]),
            "replica 0 and 1 differ"
        );
        assert!(
            trees_equal(&exports[0], &exports[2]),
            "replica 0 and 2 differ"
        );
        let digests: Vec<_> = (0..3)
            .map(|i| {
                let mut sm =
                    FileStateMachine::open(&dir.join(format!("replica-{i}")), FsConfig::default())
                        .expect("open");
                sm.state_digest().expect("digest")
            })
            .collect();
        assert_eq!(digests[0], digests[1]);
        assert_eq!(digests[0], digests[2]);
    });
}

/// A client that ignores FSINFO and sends a WRITE larger than `wtmax` (the RPC layer
/// takes records up to 4 MiB) gets a short write of `wtmax` bytes, on every replica
/// alike, and may write the rest; it used to make a request over the cluster's limit,
/// which the replicas dropped and the frontend re-sent forever.
#[test]
fn a_write_beyond_wtmax_is_a_short_write() {
    bounded(Duration::from_secs(90), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cluster, rt) = file_cluster(&tmp.path().join("c"));
        let addr = cluster.nfs_addr();
        let content: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let wtmax = rt.block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let root = c.root_nfs_fh3();
            let info = c
                .fsinfo(&FSINFO3args {
                    fsroot: root.clone(),
                })
                .await
                .expect("rpc")
                .unwrap();
            let f = create_file(&mut c, &root, "big").await;
            let mut offset = 0usize;
            while offset < content.len() {
                let data = content[offset..].to_vec();
                let written = c
                    .write(&WRITE3args {
                        file: f.clone(),
                        offset: offset as u64,
                        count: data.len() as u32,
                        stable: stable_how::FILE_SYNC,
                        data: Opaque::owned(data),
                    })
                    .await
                    .expect("rpc")
                    .unwrap()
                    .count as usize;
                assert!(written > 0, "no progress at {offset}");
                assert!(written <= info.wtmax as usize, "{written} > wtmax");
                offset += written;
            }
            info.wtmax as usize
        });
        assert!(wtmax < content.len(), "the test must exceed wtmax");
        let exports: Vec<PathBuf> = (0..3).map(|i| cluster.export_dir(i)).collect();
        assert!(
            trees_become_equal(&exports, Duration::from_secs(30)),
            "replicas differ"
        );
        cluster.stop().expect("stop");
        assert!(std::fs::read(exports[0].join("big")).expect("backing") == content);
    });
}

/// Acknowledged writes: file name and contents.
type Acked = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// Writes files `w<i>` with distinct contents until `stop`; returns the acknowledged
/// ones. Any NFS error fails the test.
async fn write_until(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: Acked,
) {
    let mut c = connect(addr, 0, 0).await;
    let root = c.root_nfs_fh3();
    let mut i = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let name = format!("w{i}");
        let data: Vec<u8> = (0..4096u32)
            .map(|k| (k ^ i.wrapping_mul(31)) as u8)
            .collect();
        let f = match c
            .create(&CREATE3args {
                where_: dirop(&root, &name),
                how: createhow3::UNCHECKED(sattr3::default()),
            })
            .await
            .expect("create rpc")
        {
            Nfs3Result::Ok(r) => r.obj.unwrap(),
            Nfs3Result::Err((s, _)) => panic!("CREATE {name}: NFS error {s:?}"),
        };
        match c
            .write(&WRITE3args {
                file: f,
                offset: 0,
                count: 4096,
                stable: stable_how::FILE_SYNC,
                data: Opaque::owned(data.clone()),
            })
            .await
            .expect("write rpc")
        {
            Nfs3Result::Ok(_) => acked.lock().expect("lock").push((name, data)),
            Nfs3Result::Err((s, _)) => panic!("WRITE {name}: NFS error {s:?}"),
        }
        i += 1;
    }
}

fn view_of(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| l.strip_prefix("view "))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .max()
}

/// kill -9 of a backup, restart; then of the primary, restart — all while a client
/// writes: no NFS error, nothing acknowledged lost, a view change, catch-up.
#[test]
fn kill_9_backup_then_primary_during_writes() {
    bounded(Duration::from_secs(150), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("cluster"));
        let addr = up.addr();
        let workload_start = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                rt.block_on(write_until(addr, stop, acked));
            })
        };
        let count = || acked.lock().expect("lock").len();
        std::thread::sleep(Duration::from_secs(2));
        let before_backup = count();
        up.kill9(2); // a backup of view 0
        std::thread::sleep(Duration::from_secs(3));
        assert!(count() > before_backup, "writes go on with a backup dead");
        up.restart(2);
        // Let replica 2 catch up and a checkpoint pass (a crash between its USIG and its
        // log is completed on restart from the logged intent and the USIG's last UI).
        let target = count() + 150;
        let deadline = Instant::now() + Duration::from_secs(30);
        while count() < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let before_primary = count();
        up.kill9(0); // the primary of view 0
        let deadline = Instant::now() + Duration::from_secs(20);
        while count() <= before_primary + 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            count() > before_primary + 10,
            "writes resume after the primary died"
        );
        up.restart(0);
        std::thread::sleep(Duration::from_secs(3));
        // The workload runs for at least 30 seconds in all.
        while workload_start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer saw no NFS error");
        let acked = acked.lock().expect("lock").clone();
        assert!(acked.len() > 20, "only {} writes", acked.len());

        // Nothing acknowledged is lost: read every file back through NFS.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let root = c.root_nfs_fh3();
            for (name, data) in &acked {
                let fh = c
                    .lookup(&LOOKUP3args {
                        what: dirop(&root, name),
                    })
                    .await
                    .expect("rpc")
                    .unwrap()
                    .object;
                let r = c
                    .read(&READ3args {
                        file: fh,
                        offset: 0,
                        count: 8192,
                    })
                    .await
                    .expect("rpc")
                    .unwrap();
                assert!(r.data.as_ref() == &data[..], "{name} reads back");
            }
        });

        // The restarted replicas catch up: all three trees become equal.
        let exports: Vec<PathBuf> = (0..3).map(|i| up.replica_dir(i).join("export")).collect();
        assert!(
            trees_become_equal(&exports, Duration::from_secs(30)),
            "restarted replicas did not catch up"
        );
        let view = view_of(&up.replica_dir(1).join("status"));
        up.terminate();
        assert!(
            view.is_some_and(|v| v >= 1),
            "a view change happened (view {view:?})"
        );
    });
}

/// `bftnfs up --quota`: FSSTAT reports the quota as the export's size, a write beyond it
/// is NFS3ERR_NOSPC on every replica alike (they keep ordering and stay identical), and
/// space a REMOVE frees can be written again. Without `--quota`, `up` picks one its
/// replicas cannot outgrow on their shared disk.
#[test]
fn the_export_quota_answers_nospc_and_the_cluster_carries_on() {
    bounded(Duration::from_secs(90), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cluster");
        let up = Up::start_with(&dir, &["--quota", "1M"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let piece = vec![0x5a_u8; 64 << 10];
        let (written, refused) = rt.block_on(async {
            let mut c = connect(up.addr(), 0, 0).await;
            let root = c.root_nfs_fh3();
            let st = c
                .fsstat(&FSSTAT3args {
                    fsroot: root.clone(),
                })
                .await
                .expect("rpc")
                .unwrap();
            assert_eq!(st.tbytes, 1 << 20, "FSSTAT reports the quota");
            assert!(st.fbytes < 1 << 20 && st.fbytes > 1 << 19, "{}", st.fbytes);
            let mut written = 0u64;
            let mut refused = None;
            'files: for i in 0..32 {
                let f = create_file(&mut c, &root, &format!("f{i}")).await;
                for k in 0..4u64 {
                    let w = c
                        .write(&WRITE3args {
                            file: f.clone(),
                            offset: k * piece.len() as u64,
                            count: piece.len() as u32,
                            stable: stable_how::FILE_SYNC,
                            data: Opaque::borrowed(&piece),
                        })
                        .await
                        .expect("rpc");
                    match w {
                        Nfs3Result::Ok(ok) => written += u64::from(ok.count),
                        Nfs3Result::Err((status, _)) => {
                            refused = Some(status);
                            break 'files;
                        }
                    }
                }
            }
            // Freed space is usable again, and the cluster still orders operations.
            c.remove(&REMOVE3args {
                object: dirop(&root, "f0"),
            })
            .await
            .expect("rpc")
            .unwrap();
            let again = create_file(&mut c, &root, "again").await;
            c.write(&WRITE3args {
                file: again,
                offset: 0,
                count: piece.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(&piece),
            })
            .await
            .expect("rpc")
            .unwrap();
            (written, refused)
        });
        assert_eq!(refused, Some(nfsstat3::NFS3ERR_NOSPC));
        assert!(
            (3 << 18..1 << 20).contains(&written),
            "{written} bytes written before NOSPC"
        );
        // The third replica may still be executing the last write: wait for it.
        let exports: Vec<PathBuf> = (0..3).map(|i| up.export(i)).collect();
        assert!(
            trees_become_equal(&exports, Duration::from_secs(30)),
            "replicas differ"
        );
        up.terminate();
        let config =
            nfs_frontend::config::ClusterConfig::load(&dir.join("cluster.toml")).expect("config");
        assert_eq!(config.export.bytes, 1 << 20);

        // A new cluster without --quota: the three exports fit the disk of its dir.
        let fitted = tmp.path().join("fitted");
        let up = Up::start(&fitted);
        let config = nfs_frontend::config::ClusterConfig::load(&fitted.join("cluster.toml"))
            .expect("config");
        let free = nfs_frontend::config::available_bytes(&fitted).expect("statvfs");
        assert!(config.export.bytes > 0);
        assert!(
            config.export.bytes.saturating_mul(3 * 2) <= free + (64 << 20),
            "quota {} against {free} bytes free",
            config.export.bytes
        );
        up.terminate();
    });
}
