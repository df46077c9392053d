//! The replicated file system with every replica's USIG on its own TPM (swtpm), feature
//! `tpm`: an embedded cluster running an NFS workload through nfs3_client with every
//! result checked, and `bftnfs up --usig tpm` with the libnfs tools. Each swtpm is on
//! free loopback ports with its state under the test's temporary directory and is killed
//! when its cluster stops. Skipped (with a note) when swtpm is not installed.
#![cfg(feature = "tpm")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Up, bounded, connect, dirop, have, run_tool, trees_equal, write_file};
use nfs_frontend::config::{ClusterConfig, UsigConfig};
use nfs_frontend::{ClusterOptions, LocalCluster};
use nfs3_client::nfs3_types::nfs3::*;

fn have_swtpm() -> bool {
    let ok = usig::swtpm::available();
    if !ok {
        eprintln!("SKIPPED: swtpm missing (apt-get install swtpm swtpm-tools)");
    }
    ok
}

/// The TCTIs cluster.toml points the replicas at; all must be TPM USIGs.
fn tctis(dir: &Path) -> Vec<String> {
    let config = ClusterConfig::load(&dir.join("cluster.toml")).expect("cluster.toml");
    config
        .replicas
        .iter()
        .map(|r| match &r.usig {
            UsigConfig::Tpm { tcti, .. } => {
                assert!(r.usig_tpm.is_some(), "replica {} has a TPM identity", r.id);
                tcti.clone()
            }
            other => panic!("replica {} is not on a TPM: {other:?}", r.id),
        })
        .collect()
}

fn port_of(tcti: &str) -> u16 {
    tcti.rsplit("port=").next().unwrap().parse().unwrap()
}

/// Every replica ordered with its TPM: its last TPM UI is cached and verifies under the
/// identity cluster.toml publishes.
fn check_tpm_uis(dir: &Path) {
    let config = ClusterConfig::load(&dir.join("cluster.toml")).expect("cluster.toml");
    for id in 0..config.n() {
        let identity = config.usig_identity(id).expect("identity");
        assert!(matches!(identity, usig::UsigIdentity::Tpm { .. }));
        let last = dir
            .join(format!("replica-{id}"))
            .join("usig")
            .join(usig::tpm::LAST_FILE_NAME);
        let bytes = std::fs::read(&last).unwrap_or_else(|e| panic!("{}: {e}", last.display()));
        assert!(bytes.len() > 100, "replica {id} issued TPM UIs");
    }
}

#[test]
fn tpm_cluster_runs_an_nfs_workload_with_one_swtpm_per_replica() {
    if !have_swtpm() {
        return;
    }
    bounded(Duration::from_secs(240), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cluster = LocalCluster::start(ClusterOptions {
            dir: tmp.path().join("c"),
            tpm_usig: true,
            ..ClusterOptions::default()
        })
        .expect("TPM cluster starts");
        let dir = cluster.dir().to_path_buf();
        let ports: Vec<u16> = tctis(&dir).iter().map(|t| port_of(t)).collect();
        assert_eq!(ports.len(), 3);
        let addr = cluster.nfs_addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
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
            let mut files = Vec::new();
            for i in 0..12u8 {
                let name = format!("f{i}");
                let data = vec![i.wrapping_mul(7); 1000 + usize::from(i) * 100];
                let f = write_file(&mut c, &d, &name, &data).await;
                files.push((name, f, data));
            }
            for (name, f, data) in &files {
                let r = c
                    .read(&READ3args {
                        file: f.clone(),
                        offset: 0,
                        count: 1 << 16,
                    })
                    .await
                    .expect("rpc")
                    .unwrap();
                assert!(r.eof, "{name}");
                assert_eq!(r.data.as_ref(), data.as_slice(), "{name} reads back");
            }
            c.remove(&REMOVE3args {
                object: dirop(&d, "f0"),
            })
            .await
            .expect("rpc")
            .unwrap();
            let gone = c
                .lookup(&LOOKUP3args {
                    what: dirop(&d, "f0"),
                })
                .await
                .expect("rpc");
            assert!(matches!(gone, Nfs3Result::Err(_)), "removed file is gone");
            let listing = c
                .readdir(&READDIR3args {
                    dir: d.clone(),
                    cookie: 0,
                    cookieverf: cookieverf3::default(),
                    count: 8192,
                })
                .await
                .expect("rpc")
                .unwrap();
            let mut names: Vec<String> = listing
                .reply
                .entries
                .0
                .iter()
                .map(|e| String::from_utf8_lossy(e.name.0.as_ref()).into_owned())
                .filter(|n| n != "." && n != "..")
                .collect();
            names.sort();
            let mut expected: Vec<String> = (1..12).map(|i| format!("f{i}")).collect();
            expected.sort();
            assert_eq!(names, expected);
        });
        // Let the last batch's COMMITs reach every replica before stopping.
        std::thread::sleep(Duration::from_millis(500));
        let exports: Vec<PathBuf> = (0..3).map(|i| cluster.export_dir(i)).collect();
        cluster.stop().expect("stop");
        assert!(
            trees_equal(&exports[0], &exports[1]),
            "replica 0 and 1 differ"
        );
        assert!(
            trees_equal(&exports[0], &exports[2]),
            "replica 0 and 2 differ"
        );
        check_tpm_uis(&dir);
        for port in ports {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "swtpm on port {port} was stopped with the cluster"
            );
        }
    });
}

#[test]
fn tpm_bftnfs_up_round_trip_with_libnfs() {
    if !(have("nfs-cp") && have("nfs-cat")) {
        eprintln!("SKIPPED: libnfs-utils missing (apt-get install libnfs-utils)");
        return;
    }
    if !have_swtpm() {
        return;
    }
    bounded(Duration::from_secs(180), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cluster");
        let src = tmp.path().join("in.txt");
        std::fs::write(&src, b"ordered by TPM USIGs\n").expect("source");
        let up = Up::start_with(&dir, &["--usig", "tpm"]);
        run_tool(Command::new("nfs-cp").arg(&src).arg(up.url("//t.txt")));
        let back = run_tool(Command::new("nfs-cat").arg(up.url("//t.txt")));
        assert_eq!(back, b"ordered by TPM USIGs\n");
        let ports: Vec<u16> = tctis(&dir).iter().map(|t| port_of(t)).collect();
        up.terminate_within(Duration::from_secs(20));
        check_tpm_uis(&dir);
        for i in 0..3 {
            assert_eq!(
                std::fs::read(dir.join(format!("replica-{i}/export/t.txt"))).expect("backing"),
                b"ordered by TPM USIGs\n"
            );
        }
        for port in ports {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "swtpm on port {port} was stopped with bftnfs up"
            );
        }
    });
}

/// Creates `names` in the root through the NFS frontend at `addr`, each with one
/// FILE_SYNC write of a few hundred bytes.
async fn write_files(addr: std::net::SocketAddr, names: &[String]) {
    let mut c = connect(addr, 0, 0).await;
    let root = c.root_nfs_fh3();
    for name in names {
        write_file(&mut c, &root, name, &name.as_bytes().repeat(40)).await;
    }
}

/// A crash between a TPM increment and the write of the UI's cache leaves the TPM's
/// counter one above the last UI the replica knows (a gap). Restarted, the replica must
/// see the gap (`Usig::spent_counter`) and re-base over it (I8) — not number its next
/// message after the cached UI (which the core's I1 check refuses) or wait for a UI that
/// never existed — and then catch up with the others.
#[test]
fn tpm_replica_with_a_wasted_counter_value_rejoins_by_rebase() {
    if !have_swtpm() {
        return;
    }
    bounded(Duration::from_secs(240), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = LocalCluster::start(ClusterOptions {
            dir: tmp.path().join("c"),
            tpm_usig: true,
            ..ClusterOptions::default()
        })
        .expect("TPM cluster starts");
        let dir = cluster.dir().to_path_buf();
        let addr = cluster.nfs_addr();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let before: Vec<String> = (0..6).map(|i| format!("before{i}")).collect();
        rt.block_on(write_files(addr, &before));
        cluster.stop_replica(2).expect("replica 2 stops");
        {
            let config = ClusterConfig::load(&dir.join("cluster.toml")).expect("config");
            let UsigConfig::Tpm {
                tcti,
                nv_index,
                key_handle,
            } = &config.replicas[2].usig
            else {
                panic!("replica 2 is on a TPM");
            };
            let location = usig::TpmLocation {
                tcti: tcti.clone(),
                nv_index: nv_index.unwrap_or(usig::tpm::DEFAULT_NV_INDEX),
                key_handle: key_handle.unwrap_or(usig::tpm::DEFAULT_KEY_HANDLE),
            };
            let identity = config.usig_identity(2).expect("identity");
            let state = dir.join("replica-2").join("usig");
            let mut tpm = usig::TpmUsig::open(&location, 2, &identity, &state).expect("open");
            let issued = usig::Usig::last_issued(&tpm).expect("replica 2 issued UIs");
            tpm.waste_counter_value().expect("increment without a UI");
            assert_eq!(
                usig::Usig::spent_counter(&mut tpm).expect("counter"),
                issued.ui.counter + 1,
                "the gap shows in spent_counter"
            );
            assert_eq!(usig::Usig::last_issued(&tpm), Some(issued));
        }
        cluster.restart_replica(2).expect("replica 2 restarts");
        let after: Vec<String> = (0..6).map(|i| format!("after{i}")).collect();
        rt.block_on(write_files(addr, &after));
        let (e0, e2) = (cluster.export_dir(0), cluster.export_dir(2));
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while !(e2.join("after5").exists() && trees_equal(&e0, &e2)) {
            assert!(
                std::time::Instant::now() < deadline,
                "replica 2 did not catch up after re-basing over its USIG gap"
            );
            // Keep traffic flowing, as clients would.
            rt.block_on(write_files(addr, &["tick".to_string()]));
            std::thread::sleep(Duration::from_millis(300));
        }
        let stats = cluster.stop().expect("stop");
        assert!(stats.iter().all(|s| s.executed_n > 0));
        check_tpm_uis(&dir);
    });
}
