//! Issue 6 end to end with real processes, as a user would run them: `bftnfs up --dir D`,
//! kill -9 of replica 2, 600 file writes through the NFS frontend (well past 5
//! checkpoints), restart with `bftnfs replica --config D/cluster.toml --id 2 --data
//! D/replica-2`, and D/replica-2/export becomes byte-identical to D/replica-0/export
//! within 60 s (chunked state transfer); then a file overwritten behind replica 1's back
//! is restored within 60 s while clients keep writing (self-repair). And, in-process, a
//! lagging replica whose peer serves corrupt chunks still completes its transfer from
//! the other peer. A replica restarted after the clients stopped catches up on the
//! batches above the checkpoint it installs with no new client traffic (idle cluster).
//! And a replica killed (-9) in the middle of a state transfer restarts and converges
//! while the cluster keeps serving. A primary restarted after a (simulated) machine
//! restart spends its USIG lease, re-bases and rejoins. Every test is bounded in time.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Up, bounded, connect, trees_equal, write_file};
use nfs_frontend::config::{ClusterConfig, UsigKeyKind};
use nfs_frontend::{ClusterOptions, LocalCluster};

/// Deterministic content of file `i`: mostly 3 KiB, every 40th 200 KiB (4 chunks).
fn content(tag: &str, i: usize) -> Vec<u8> {
    let len = if i % 40 == 7 { 200 << 10 } else { 3 << 10 };
    content_of_len(tag, i, len)
}

/// Deterministic content of file `i` of `len` bytes, different for every tag and index
/// (so no chunk deduplicates against another).
fn content_of_len(tag: &str, i: usize, len: usize) -> Vec<u8> {
    let seed = tag
        .bytes()
        .fold(i as u32, |a, b| a.wrapping_mul(31) ^ u32::from(b));
    (0..len as u32)
        .map(|k| (k.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 15) as u8)
        .collect()
}

/// Creates and writes `count` files named `{tag}{i}` in the root (32 KiB per WRITE).
async fn write_files(addr: std::net::SocketAddr, tag: &str, count: usize) {
    let mut c = connect(addr, 0, 0).await;
    let root = c.root_nfs_fh3();
    for i in 0..count {
        write_file(&mut c, &root, &format!("{tag}{i}"), &content(tag, i)).await;
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt")
        .block_on(f)
}

/// Starts an embedded cluster in `dir` after writing its `cluster.toml` (keys and
/// addresses as `bftnfs up` makes them) with this checkpoint interval and timestamp
/// skew, so that a test passes several checkpoints with few writes and reaches a stale
/// log tail in little time.
fn start_small_cluster(
    dir: &std::path::Path,
    checkpoint_interval: u64,
    skew_ns: u64,
) -> LocalCluster {
    start_small_cluster_with(dir, checkpoint_interval, skew_ns, UsigKeyKind::Shared)
}

/// The same, with USIG keys of the kind `usig_key`.
fn start_small_cluster_with(
    dir: &std::path::Path,
    checkpoint_interval: u64,
    skew_ns: u64,
    usig_key: UsigKeyKind,
) -> LocalCluster {
    let mut keygen = nfs_frontend::config::KeygenOptions::new(1, 2);
    keygen.usig_key = usig_key;
    let path = nfs_frontend::cluster::ensure_keys(dir, &keygen).expect("keys");
    let toml = std::fs::read_to_string(&path).expect("toml");
    let mut replaced = 0;
    let toml: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.starts_with("checkpoint_interval =") {
                replaced += 1;
                format!("checkpoint_interval = {checkpoint_interval}")
            } else if l.starts_with("timestamp_skew_ns =") {
                replaced += 1;
                format!("timestamp_skew_ns = {skew_ns}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 2, "cluster.toml has both settings");
    std::fs::write(&path, toml.join("\n") + "\n").expect("toml");
    start_cluster(dir)
}

/// An embedded cluster with the default options in `dir` (kept if it exists).
fn start_cluster(dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start(ClusterOptions {
        dir: dir.to_path_buf(),
        ..ClusterOptions::default()
    })
    .expect("cluster")
}

/// Waits up to `limit` for `cond`; returns how long it took.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn killed_replica_catches_up_by_state_transfer_and_tampered_replica_repairs_itself() {
    bounded(Duration::from_secs(400), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        block_on(write_files(addr, "warm", 5));
        up.kill9(2);
        let t = Instant::now();
        block_on(write_files(addr, "f", 600));
        eprintln!("600 file writes with replica 2 down: {:?}", t.elapsed());
        up.restart(2);
        let took = wait_for(Duration::from_secs(60), "replica 2 converges", || {
            trees_equal(&up.export(0), &up.export(2))
        });
        let transfer = std::fs::read_to_string(up.replica_dir(2).join("transfer"))
            .expect("replica 2 caught up by state transfer (D/replica-2/transfer)");
        eprintln!("replica 2 equal to replica 0 after {took:?}; transfer: {transfer}");
        for i in [0, 99, 407, 599] {
            assert_eq!(
                std::fs::read(up.export(2).join(format!("f{i}"))).expect("file"),
                content("f", i)
            );
        }

        // Self-repair: overwrite files behind replica 1's back (same size, and shorter).
        let victim = up.export(1).join("f10");
        let victim2 = up.export(1).join("f47");
        std::fs::write(&victim, vec![0xee; 3 << 10]).expect("tamper");
        std::fs::write(&victim2, b"short").expect("tamper");
        // The scrub checks a rolling 64 files' stamps per checkpoint
        // (`SCRUB_STAMP_FILES`), so the tampering shows in a checkpoint digest within
        // about 700 / 64 checkpoints of writes: write in rounds until it is repaired.
        let restored = || {
            std::fs::read(&victim).is_ok_and(|b| b == content("f", 10))
                && std::fs::read(&victim2).is_ok_and(|b| b == content("f", 47))
        };
        let t = Instant::now();
        let mut writes = 0;
        while !restored() && writes < 1_500 {
            block_on(write_files(addr, &format!("g{writes}-"), 100));
            writes += 100;
            std::thread::sleep(Duration::from_millis(300));
        }
        let took = wait_for(Duration::from_secs(60), "tampered files restored", restored);
        eprintln!(
            "tampered files restored {took:?} after {writes} writes ({:?} in all)",
            t.elapsed()
        );
        wait_for(Duration::from_secs(60), "all replicas equal", || {
            trees_equal(&up.export(0), &up.export(1)) && trees_equal(&up.export(0), &up.export(2))
        });
    });
}

/// A lagging replica fetches its chunks from two peers, one of which flips a byte in
/// every chunk it serves: each bad chunk is detected, counted, and fetched from the
/// other peer; the transfer completes with the right state.
#[test]
fn transfer_completes_when_a_peer_serves_corrupt_chunks() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("nfs_frontend::replica=info")
        .try_init();
    bounded(Duration::from_secs(300), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = start_cluster(&tmp.path().join("c"));
        let addr = cluster.nfs_addr();
        block_on(write_files(addr, "warm", 3));
        cluster.stop_replica(2).expect("stop 2");
        block_on(write_files(addr, "f", 250));
        // Replica 1 turns Byzantine for state transfer (restart from its own disk).
        cluster.stop_replica(1).expect("stop 1");
        cluster
            .restart_replica_with(1, |o| o.serve_corrupt_chunks = true)
            .expect("start 1");
        block_on(write_files(addr, "h", 10));
        cluster.restart_replica(2).expect("start 2");
        // Clients keep working while replica 2 catches up (and the checkpoints these
        // writes make let it catch up again if it installed an older one).
        block_on(write_files(addr, "late", 150));
        let e0 = cluster.export_dir(0);
        let e2 = cluster.export_dir(2);
        wait_for(Duration::from_secs(90), "replica 2 converges", || {
            trees_equal(&e0, &e2)
        });
        let stats = cluster.stop().expect("stop");
        let (s1, s2) = (&stats[1], &stats[2]);
        assert!(s2.transfer.transfers >= 1, "{:?}", s2.transfer);
        assert!(
            s2.transfer.bad_replies >= 1,
            "replica 1's corrupt chunks were detected: {:?}",
            s2.transfer
        );
        eprintln!(
            "replica 2 transfer: {:?}; replica 1: {:?}",
            s2.transfer, s1.transfer
        );
    });
}

/// A replica that lost its disk but kept its USIG (`usig/`): its USIG counter is far
/// ahead of an empty log, so peers would wait forever for counters nobody can send. It
/// re-bases (consensus I8: one ordered REBASE, readmission at the next stable checkpoint)
/// and catches up by state transfer while clients keep writing; then it is a full member
/// again: with another replica killed, the cluster still makes progress with it.
#[test]
fn replica_that_lost_its_disk_but_kept_its_usig_rejoins_by_rebase() {
    bounded(Duration::from_secs(400), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        block_on(write_files(addr, "a", 40));
        up.kill9(2);
        // Lose everything but the USIG state.
        let dir = up.replica_dir(2);
        for entry in std::fs::read_dir(&dir).expect("replica dir") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n == "usig") {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
        up.restart(2);
        // Writes go on (2 of 3 replicas suffice) and carry the cluster past the REBASE's
        // batch and the checkpoint that readmits replica 2.
        block_on(write_files(addr, "b", 300));
        let took = wait_for(Duration::from_secs(90), "replica 2 converges", || {
            trees_equal(&up.export(0), &up.export(2))
        });
        eprintln!("replica 2 rejoined after losing its disk: equal after {took:?}");
        // Readmitted: with replica 1 gone, replicas 0 and 2 alone must order writes.
        up.kill9(1);
        let t = Instant::now();
        block_on(write_files(addr, "c", 20));
        eprintln!(
            "20 writes with replica 1 down, replica 2 re-based: {:?}",
            t.elapsed()
        );
        wait_for(
            Duration::from_secs(60),
            "replica 2 holds the new writes",
            || std::fs::read(up.export(2).join("c19")).is_ok_and(|b| b == content("c", 19)),
        );
    });
}

/// The counter lease (`replica::Lease`): the primary's PREPAREs leave while its log
/// syncs. A restart in the same boot finds every released PREPARE in the log (written
/// to the page cache before it left) and goes on with its counter; a restart after the
/// machine went down finds a lease written in another boot, spends the USIG up to it
/// and re-bases (consensus I8), and is readmitted: with replica 1 stopped, replicas 0
/// and 2 alone order the last writes.
#[test]
fn primary_restarted_after_a_machine_restart_skips_its_lease_and_rejoins() {
    machine_restart_skips_the_lease(UsigKeyKind::Shared);
}

/// The same with a USIG key pair per replica (clusters made before the sixteenth
/// session, and every TPM or usig-server cluster): the USIG's `advance_to` and
/// `skip_to` check and make ECDSA signatures there.
#[test]
fn with_ecdsa_usig_keys_a_primary_restarted_after_a_machine_restart_rejoins() {
    machine_restart_skips_the_lease(UsigKeyKind::EcdsaP256);
}

fn machine_restart_skips_the_lease(usig_key: UsigKeyKind) {
    use consensus::{PersistRecord, UsigLease};
    use nfs_frontend::replica::log::ProtocolLog;
    bounded(Duration::from_secs(300), move || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        let mut cluster = start_small_cluster_with(&dir, 16, 5_000_000_000, usig_key);
        let addr = cluster.nfs_addr();
        let last_sent = |dir: &std::path::Path| {
            let log = ProtocolLog::open(&dir.join("replica-0")).expect("log of replica 0");
            (log.durable.last_sent_counter(), log.durable.lease.clone())
        };
        block_on(write_files(addr, "a", 10));
        let s0 = cluster.stop_replica(0).expect("stop 0");
        assert!(
            s0.prepares_early > 0,
            "the primary sent no PREPARE early: {s0:?}"
        );
        let (before, lease) = last_sent(&dir);
        // A clean stop leaves the lease at the last UI.
        assert_eq!(lease.map(|l| l.counter), Some(before));

        // Restart in the same boot: no skip, no re-base.
        cluster.restart_replica(0).expect("restart 0");
        block_on(write_files(addr, "b", 10));
        let s0 = cluster.stop_replica(0).expect("stop 0");
        assert!(!s0.started_rebasing, "a same-boot restart re-based: {s0:?}");

        // As if the machine had gone down while replica 0 led with a lease 40 values
        // above its last logged UI.
        let (before, _) = last_sent(&dir);
        {
            let mut log = ProtocolLog::open(&dir.join("replica-0")).expect("log");
            log.append(PersistRecord::Lease(UsigLease {
                counter: before + 40,
                boot: "a boot before the power cut".into(),
            }));
            log.sync().expect("sync");
        }
        cluster
            .restart_replica(0)
            .expect("restart 0 after the reboot");
        // The others change view (the re-basing primary proposes nothing) and order the
        // REBASE; the writes carry the cluster to the checkpoint that readmits it.
        block_on(write_files(addr, "c", 60));
        let e0 = cluster.export_dir(0);
        let e1 = cluster.export_dir(1);
        let took = wait_for(Duration::from_secs(90), "replica 0 converges", || {
            trees_equal(&e1, &e0)
        });
        eprintln!("replica 0 re-based over its lease and converged after {took:?}");
        cluster.stop_replica(1).expect("stop 1");
        block_on(write_files(addr, "d", 10));
        wait_for(
            Duration::from_secs(60),
            "replica 0 holds the writes made without replica 1",
            || std::fs::read(e0.join("d9")).is_ok_and(|b| b == content("d", 9)),
        );
        let s0 = cluster.stop_replica(0).expect("stop 0");
        assert!(s0.started_rebasing, "no re-base after the reboot: {s0:?}");
        let (after, _) = last_sent(&dir);
        assert!(
            after > before + 40,
            "the USIG did not skip the lease: last UI {after}, lease {}",
            before + 40
        );
        let _ = cluster.stop();
    });
}

/// The lease's same-boot half, deterministically: replica 0 (the primary) aborts right
/// after its 30th early PREPARE reached the sockets and before its log sync (fault
/// injection, `replica::ABORT_AFTER_EARLY_ENV`). That PREPARE's `Sent` record must be in
/// its log (written to the page cache before it left) and its counter in the USIG's own
/// file, so the restart goes on with its counter instead of issuing that value again
/// (even if the log were lost); the cluster then converges.
#[test]
fn a_primary_killed_right_after_an_early_prepare_has_it_in_its_log() {
    use nfs_frontend::replica::{ABORT_AFTER_EARLY_ENV, log::ProtocolLog};
    use usig::Usig as _;
    bounded(Duration::from_secs(300), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start_with_env(
            &tmp.path().join("D"),
            &[],
            &[(ABORT_AFTER_EARLY_ENV, "0:30")],
        );
        let addr = up.addr();
        let writer = std::thread::spawn(move || block_on(write_files(addr, "a", 60)));
        let note = up.replica_dir(0).join("early-abort");
        wait_for(Duration::from_secs(60), "replica 0 aborts", || {
            note.exists()
        });
        std::thread::sleep(Duration::from_millis(300));
        let counter: u64 = std::fs::read_to_string(&note)
            .expect("note")
            .trim()
            .parse()
            .expect("counter");
        let log = ProtocolLog::open(&up.replica_dir(0)).expect("log of replica 0");
        let sent = log.durable.sent.get(&counter);
        assert!(
            matches!(sent, Some(consensus::UiMessage::Prepare(_))),
            "PREPARE {counter} left replica 0 but is not in its log (last: {})",
            log.durable.last_sent_counter()
        );
        drop(log);
        // And the USIG's own file holds its counter: a replica that now lost its log
        // but kept usig/ re-bases above it instead of issuing it again.
        let config = ClusterConfig::load(&up.dir.join("cluster.toml")).expect("config");
        let key_file = config.replica_secrets(0).expect("secrets").usig_key_file;
        let key = usig::SigningKey::read_file(&key_file).expect("USIG key");
        // The aborted process may still hold the USIG's lock for a moment on a loaded
        // machine (seen once while simulator runs shared the cores): wait for it to go.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut usig = loop {
            match usig::SoftwareUsig::open(&up.replica_dir(0).join("usig"), 0, key.key_bytes()) {
                Err(usig::UsigError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r.expect("USIG state of replica 0"),
            }
        };
        let spent = usig.spent_counter().expect("counter");
        drop(usig);
        assert!(
            spent >= counter,
            "USIG file at {spent}, PREPARE {counter} left"
        );
        let _ = std::fs::remove_file(up.replica_dir(0).join("pid"));
        up.restart(0);
        writer.join().expect("the writer finishes");
        block_on(write_files(addr, "b", 10));
        let (e0, e1, e2) = (up.export(0), up.export(1), up.export(2));
        wait_for(Duration::from_secs(60), "the exports converge", || {
            trees_equal(&e0, &e1) && trees_equal(&e0, &e2)
        });
        up.terminate();
    });
}

/// A primary killed while it led leaves a lease above its last UI; `bftnfs up` seals it
/// as soon as the replica exits (`replica::seal_lease`), so a machine restart before the
/// replica's own restart would need no re-base. Sealing refuses while a replica runs.
#[test]
fn up_seals_the_lease_of_a_replica_killed_while_it_led() {
    use nfs_frontend::replica::{log::ProtocolLog, seal_lease};
    bounded(Duration::from_secs(180), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        block_on(write_files(addr, "a", 20));
        assert!(
            seal_lease(&up.replica_dir(1)).is_err(),
            "sealed the log of a running replica"
        );
        up.kill9(0);
        // `up` seals it as soon as the replica exits (kill9 waited 200 ms); sealing again
        // finds nothing (it may still hold the USIG's lock for a moment).
        let mut again = seal_lease(&up.replica_dir(0));
        for _ in 0..50 {
            if again.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            again = seal_lease(&up.replica_dir(0));
        }
        assert_eq!(
            again.expect("seal a stopped replica"),
            None,
            "up did not seal it"
        );
        let log = ProtocolLog::open(&up.replica_dir(0)).expect("log of replica 0");
        let last = log.durable.last_sent_counter();
        let lease = log.durable.lease.as_ref().map(|l| l.counter);
        assert!(
            last > 0 && lease == Some(last),
            "lease {lease:?}, last UI {last}"
        );
        drop(log);
        up.restart(0);
        block_on(write_files(addr, "b", 20));
        let (e0, e1) = (up.export(0), up.export(1));
        wait_for(Duration::from_secs(60), "replica 0 converges", || {
            trees_equal(&e0, &e1)
        });
        up.terminate();
    });
}

/// The same with kill -9 of all three replicas at once while a client writes, four times
/// (whoever leads after each restart): every PREPARE a replica accepted is in its
/// primary's own log, and the whole cluster restarts and goes on. A kill rarely lands in
/// the microseconds between an early PREPARE and the sync, so this checks the invariant
/// and whole-cluster recovery; the test above is the one that fails without the
/// page-cache write.
#[test]
fn every_prepare_a_killed_primary_sent_early_is_in_its_log() {
    use nfs_frontend::replica::log::ProtocolLog;
    bounded(Duration::from_secs(300), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        let e1 = up.export(1);
        let files = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
        // Each round kills at another moment of the primary's burst cycle.
        let mut checked = 0;
        for round in 0..4 {
            let tag = format!("r{round}-");
            let writer = std::thread::spawn(move || block_on(write_files(addr, &tag, 100)));
            let start = files(&e1);
            wait_for(Duration::from_secs(60), "20 more files written", || {
                files(&e1) >= start + 20
            });
            up.kill9_all(&[0, 1, 2]);
            std::thread::sleep(Duration::from_millis(100));
            // Whoever led (a restart may have changed the view): every PREPARE a
            // replica accepted from it is in its own log.
            let logs: Vec<ProtocolLog> = (0..3)
                .map(|i| ProtocolLog::open(&up.replica_dir(i)).expect("protocol log"))
                .collect();
            for (p, own) in logs.iter().enumerate() {
                let own_last = own.durable.last_sent_counter();
                let seen = (logs.iter().flat_map(|l| l.durable.accepted.values()))
                    .filter(|prep| prep.primary as usize == p)
                    .map(|prep| prep.ui.counter)
                    .max()
                    .unwrap_or(0);
                if seen == 0 {
                    continue;
                }
                checked += 1;
                eprintln!(
                    "round {round}: replica {p}'s last logged UI {own_last}; last PREPARE \
                     accepted from it {seen}"
                );
                assert!(
                    seen <= own_last,
                    "a backup accepted PREPARE {seen} that the killed replica {p} has no \
                     record of (its log ends at {own_last})"
                );
            }
            drop(logs);
            for i in 0..3 {
                up.restart(i);
            }
            writer
                .join()
                .expect("the writer finishes once the cluster is back");
        }
        // A round can find every log pruned at a checkpoint, not all four.
        assert!(checked > 0, "no PREPARE accepted above a stable checkpoint");
        block_on(write_files(addr, "b", 10));
        let (e0, e2) = (up.export(0), up.export(2));
        wait_for(Duration::from_secs(60), "the exports converge", || {
            trees_equal(&e0, &e1) && trees_equal(&e0, &e2)
        });
        up.terminate();
    });
}

/// The idle-cluster catch-up hole (docs/recovery.md): replica 2 is down while the others
/// pass several checkpoints (interval 16); the clients stop; replica 2 restarts after the
/// batches above the others' last checkpoint are older than the timestamp skew (1 s
/// here, 5 s by default). It installs that checkpoint by state transfer and must then
/// execute the batches above it with no client traffic at all. It used to refuse their
/// PREPAREs as `bad_timestamp` and stay behind until the next checkpoint (forever in an
/// idle cluster); now it accepts a stale PREPARE once the others' COMMITs show it was
/// decided (consensus `normal::on_prepare`).
#[test]
fn restarted_replica_catches_up_with_no_client_traffic() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("nfs_frontend::replica=info")
        .try_init();
    bounded(Duration::from_secs(240), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        const K: u64 = 16;
        let mut cluster = start_small_cluster(&dir, K, 1_000_000_000);
        let addr = cluster.nfs_addr();
        block_on(write_files(addr, "warm", 3));
        cluster.stop_replica(2).expect("stop 2");
        // One client, one request per batch: a CREATE and its WRITEs per file (7 WRITEs
        // for the 200 KiB ones). 67 files leave the last batches above a checkpoint
        // boundary (152 against 144; checked below).
        block_on(write_files(addr, "f", 67));
        // The clients stop here. Let the batches above the last checkpoint go stale.
        std::thread::sleep(Duration::from_millis(2_500));
        cluster.restart_replica(2).expect("start 2");
        let e0 = cluster.export_dir(0);
        let e2 = cluster.export_dir(2);
        let took = wait_for(
            Duration::from_secs(30),
            "replica 2 converges with no client traffic",
            || trees_equal(&e0, &e2),
        );
        let s2 = cluster.stop_replica(2).expect("replica 2 ran");
        let s0 = cluster.stop_replica(0).expect("stop 0");
        eprintln!(
            "replica 2 equal to replica 0 after {took:?} with no client traffic; replica 0 \
             executed {}, replica 2 executed {} (installed {}), transfer {:?}, dropped {:?}",
            s0.executed_n, s2.executed_n, s2.transfer.last_n, s2.transfer, s2.dropped_core
        );
        assert!(s2.transfer.transfers >= 1, "{:?}", s2.transfer);
        assert_eq!(s2.executed_n, s0.executed_n);
        // The case under test: there was a log tail above the installed checkpoint.
        assert!(
            s0.executed_n > s2.transfer.last_n,
            "no batches above checkpoint {}: change the file count",
            s2.transfer.last_n
        );
        assert!(
            !s2.dropped_core.contains_key("bad_timestamp"),
            "{:?}",
            s2.dropped_core
        );
        let _ = cluster.stop();
    });
}

/// The whole cluster stops and starts again on its data, with batches above the last
/// stable checkpoint in every log, and the next writes go on in the same view. A
/// restarted replica did not know the counter of its own CHECKPOINT at the stable
/// checkpoint, so a peer whose certificate lacked that CHECKPOINT could not resume its
/// stream until the next one: the first request after a restart timed out into a view
/// change (1.5 s by hand with `bftnfs up`; once 36 s and four views).
#[test]
fn a_whole_cluster_restarted_on_its_data_stays_in_its_view() {
    bounded(Duration::from_secs(240), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        const K: u64 = 16;
        let cluster = start_small_cluster(&dir, K, 5_000_000_000);
        block_on(write_files(cluster.nfs_addr(), "f", 22));
        let before = cluster.stop().expect("stop");
        let executed = before[0].executed_n;
        assert!(
            !executed.is_multiple_of(K) && executed > K,
            "no batches above a checkpoint ({executed}): change the file count"
        );
        assert!(before.iter().all(|s| s.view == 0), "{before:?}");
        for round in 0..2 {
            let cluster = start_small_cluster(&dir, K, 5_000_000_000);
            block_on(write_files(cluster.nfs_addr(), &format!("r{round}-"), 2));
            let after = cluster.stop().expect("stop");
            for s in &after {
                assert_eq!(
                    s.view, 0,
                    "round {round}: a view change after the restart: {:?}",
                    s.dropped_core
                );
            }
            // The writes completed on f+1 matching replies: those replicas executed
            // them. The third may still be re-executing what its log held when the
            // cluster stops right after (seen once in a loaded full suite run).
            let ahead = after.iter().filter(|s| s.executed_n > executed).count();
            assert!(ahead >= 2, "round {round}: {after:?}");
        }
    });
}

/// Size of each big file of the interrupted-transfer test, and how many there are:
/// 24 MiB in 384 chunks of 64 KiB, enough for a transfer that lasts long enough to be
/// interrupted by a test polling its progress file.
const BIG_FILE_BYTES: usize = 1 << 20;
const BIG_FILES: usize = 24;

/// `D/replica-i/transfer-progress` as (fetched chunks, of chunks), if it is there.
fn transfer_progress(replica_dir: &std::path::Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(replica_dir.join("transfer-progress")).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    // "n N chunks A of B bytes C millis D"
    match words.as_slice() {
        ["n", _, "chunks", a, "of", b, ..] => Some((a.parse().ok()?, b.parse().ok()?)),
        _ => None,
    }
}

/// A crash in the middle of a state transfer, with real processes: replica 2 is down
/// while 24 MiB of new files are written; it restarts, starts fetching the checkpoint's
/// chunks, and is kill -9'ed half-way (watched through D/replica-2/transfer-progress).
/// Restarted again, it completes a transfer and its export becomes byte-identical to
/// replica 0's, with every file's content intact; a client writes all along (the
/// cluster never stops serving) and none of its writes is lost.
#[test]
fn replica_killed_in_the_middle_of_a_state_transfer_restarts_and_converges() {
    bounded(Duration::from_secs(150), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        block_on(write_files(addr, "warm", 3));
        up.kill9(2);
        let t = Instant::now();
        block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let root = c.root_nfs_fh3();
            for i in 0..BIG_FILES {
                let data = content_of_len("big", i, BIG_FILE_BYTES);
                write_file(&mut c, &root, &format!("big{i}"), &data).await;
            }
        });
        eprintln!(
            "{} MiB written with replica 2 down: {:?}",
            (BIG_FILES * BIG_FILE_BYTES) >> 20,
            t.elapsed()
        );

        // A client keeps writing small files from here to the end of the transfer.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut c = connect(addr, 0, 0).await;
                    let root = c.root_nfs_fh3();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        write_file(&mut c, &root, &format!("live{i}"), &content("live", i)).await;
                        i += 1;
                    }
                    i
                })
            })
        };

        let dir2 = up.replica_dir(2);
        let _ = std::fs::remove_file(dir2.join("transfer"));
        up.restart(2);
        // Kill it once it has fetched at least a quarter but not all of the chunks.
        let start = Instant::now();
        let (fetched, of) = loop {
            assert!(
                !dir2.join("transfer").exists(),
                "the transfer completed before it could be interrupted (make it bigger)"
            );
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "replica 2 did not start a state transfer within 60 s"
            );
            if let Some((a, b)) = transfer_progress(&dir2)
                && a * 4 >= b
                && a < b
            {
                break (a, b);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        up.kill9(2);
        eprintln!(
            "replica 2 killed -9 {:?} after its restart, {fetched} of {of} chunks fetched",
            start.elapsed()
        );
        assert!(
            transfer_progress(&dir2).is_some(),
            "an interrupted transfer leaves its progress file"
        );
        assert!(!dir2.join("transfer").exists());

        up.restart(2);
        let t = Instant::now();
        wait_for(
            Duration::from_secs(60),
            "replica 2 completes a transfer after the crash",
            || dir2.join("transfer").exists(),
        );
        let transfer = std::fs::read_to_string(dir2.join("transfer")).expect("transfer");
        eprintln!(
            "replica 2 restarted: transfer done after {:?}: {transfer}",
            t.elapsed()
        );
        // "n N chunks A bytes B millis C"
        let chunks_after: u64 = transfer
            .split_whitespace()
            .nth(3)
            .and_then(|w| w.parse().ok())
            .expect("chunk count in the transfer file");
        assert!(
            !dir2.join("transfer-progress").exists(),
            "the progress file goes when the state is installed"
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let live = writer.join().expect("the client's writes all succeeded");
        let took = wait_for(Duration::from_secs(60), "replica 2 converges", || {
            trees_equal(&up.export(0), &up.export(2))
        });
        eprintln!(
            "replica 2 equal to replica 0 {took:?} after the client stopped ({live} files \
             written during the transfers, {:?} since the second restart)",
            t.elapsed()
        );
        // The chunks fetched before the crash stayed in the store: the second transfer
        // fetched at most the rest, plus the chunks of the files written meanwhile.
        let live_chunks: u64 = (0..live)
            .map(|i| content("live", i).len().div_ceil(64 << 10) as u64)
            .sum();
        assert!(
            chunks_after <= of - fetched + live_chunks,
            "second transfer fetched {chunks_after} chunks; {fetched} of {of} were fetched \
             before the crash, {live_chunks} written since"
        );
        for i in 0..BIG_FILES {
            assert_eq!(
                std::fs::read(up.export(2).join(format!("big{i}"))).expect("big file"),
                content_of_len("big", i, BIG_FILE_BYTES),
                "big{i}"
            );
        }
        for i in 0..live {
            assert_eq!(
                std::fs::read(up.export(2).join(format!("live{i}"))).expect("live file"),
                content("live", i),
                "live{i}"
            );
        }
    });
}

/// With f = 1 a backup holds its COMMITs for the other backup (`Node::may_hold`: that
/// backup executes without them) and sends them with its next message to it or at the
/// next tick. Both backups held some and the primary none; every replica executed
/// every batch, and the backups' streams to each other stayed complete through two
/// checkpoints (which need the held COMMITs delivered first, in order).
#[test]
fn backups_hold_commits_for_each_other_and_stay_in_step() {
    bounded(Duration::from_secs(120), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("c");
        let mut cluster = start_small_cluster(&dir, 16, 5_000_000_000);
        block_on(write_files(cluster.nfs_addr(), "h", 40));
        // The slowest replica finishes the last batch; held COMMITs leave at a tick.
        std::thread::sleep(Duration::from_millis(300));
        let stats: Vec<_> = (0..3)
            .map(|i| cluster.stop_replica(i).expect("stop"))
            .collect();
        assert_eq!(stats[0].commits_held, 0, "the primary sends no COMMIT");
        for s in &stats[1..] {
            assert!(s.commits_held >= 40, "a backup held few COMMITs: {s:?}");
        }
        let executed: Vec<_> = stats.iter().map(|s| s.executed_n).collect();
        assert!(executed.iter().all(|&n| n == executed[0]), "{executed:?}");
        assert!(executed[0] >= 32, "two checkpoints passed: {executed:?}");
        // Every held COMMIT left (with a later message to that peer or at a tick).
        for s in &stats[1..] {
            assert_eq!(
                s.commits_held_sent, s.commits_held,
                "held COMMITs stayed: {s:?}"
            );
        }
        // And in time: a backup that had to fetch them from the primary (a gap) gets the
        // late original as a duplicate. Held and never sent, that is about one duplicate
        // per batch (95 in 86 batches); on 2 cores kept busy by other work a few still
        // come from other delays (3-30 seen), so the bound is half the batches, not none.
        for s in &stats {
            let duplicates = s.dropped_core.get("duplicate_ui").copied().unwrap_or(0);
            assert!(
                duplicates * 2 <= s.executed_n,
                "a backup's stream had gaps or came out of order: {s:?}"
            );
        }
    });
}

/// A directory chain far deeper than the host's PATH_MAX (400 levels of 250-byte names,
/// paths of 100 KB) with a file at the bottom, written while replica 2 is down: every
/// replica serves it, checkpoints it, and replica 2 gets it by state transfer when it
/// restarts; replica 1 is killed and restarts from its own checkpoint and log; then the
/// chain is removed from the bottom up everywhere. A replica that walks or rebuilds its
/// export by path would stop here with ENAMETOOLONG. (5000 levels, paths of 1.25 MB,
/// passed too, in 52 s: too long for the suite.)
#[test]
fn a_tree_deeper_than_path_max_is_served_transferred_and_removed() {
    use nfs3_client::nfs3_types::nfs3::{MKDIR3args, READ3args, RMDIR3args, sattr3};
    const DEPTH: usize = 400;
    bounded(Duration::from_secs(300), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut up = Up::start(&tmp.path().join("D"));
        let addr = up.addr();
        block_on(write_files(addr, "warm", 3));
        up.kill9(2);
        let name = |i: usize| format!("{i:04}{}", "d".repeat(246));
        let bottom = content_of_len("deep", 0, 70_000);
        let chain = block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let mut chain = vec![c.root_nfs_fh3()];
            for i in 0..DEPTH {
                let dir = chain.last().expect("parent").clone();
                let made = c
                    .mkdir(&MKDIR3args {
                        where_: common::dirop(&dir, &name(i)),
                        attributes: sattr3::default(),
                    })
                    .await
                    .expect("rpc")
                    .unwrap();
                chain.push(made.obj.unwrap());
            }
            let deepest = chain.last().expect("deepest").clone();
            let f = write_file(&mut c, &deepest, "bottom", &bottom).await;
            let read = c
                .read(&READ3args {
                    file: f,
                    offset: 0,
                    count: 100_000,
                })
                .await
                .expect("rpc")
                .unwrap();
            assert_eq!(read.data.as_ref(), &bottom[..]);
            chain
        });
        up.restart(2);
        // `diff -r` stops at PATH_MAX: compare by walking with directory descriptors.
        let same = |i: u32, j: u32| deep_listing(&up.export(i)) == deep_listing(&up.export(j));
        wait_for(Duration::from_secs(90), "replica 2 converges", || {
            same(0, 2)
        });
        let listing = deep_listing(&up.export(2));
        assert!(listing.len() > DEPTH, "{} entries", listing.len());
        assert!(
            listing
                .iter()
                .any(|(_, data)| data.as_deref() == Some(&bottom[..])),
            "the file at the bottom reached replica 2"
        );
        assert!(
            std::fs::read_to_string(up.replica_dir(2).join("transfer")).is_ok(),
            "replica 2 caught up by state transfer"
        );
        // Replica 1 restarts from its own checkpoint and log with the chain in them.
        up.kill9(1);
        up.restart(1);
        // Remove it all, from the bottom up, then all three exports hold only the rest.
        block_on(async {
            let mut c = connect(addr, 0, 0).await;
            let deepest = chain.last().expect("deepest").clone();
            c.remove(&nfs3_client::nfs3_types::nfs3::REMOVE3args {
                object: common::dirop(&deepest, "bottom"),
            })
            .await
            .expect("rpc")
            .unwrap();
            for i in (0..DEPTH).rev() {
                c.rmdir(&RMDIR3args {
                    object: common::dirop(&chain[i], &name(i)),
                })
                .await
                .expect("rpc")
                .unwrap();
            }
        });
        wait_for(Duration::from_secs(60), "all replicas equal", || {
            trees_equal(&up.export(0), &up.export(1)) && trees_equal(&up.export(0), &up.export(2))
        });
        assert!(!up.export(2).join(name(0)).exists());
    });
}

/// Every entry under `root` (its path relative to `root`, and a file's bytes), sorted,
/// walked with `openat` from directory descriptors so that no path is ever longer than
/// one name.
fn deep_listing(root: &std::path::Path) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    use rustix::fs::{CWD, Dir, FileType, Mode, OFlags, openat};
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut out = Vec::new();
    let Ok(top) = openat(CWD, root, dir_flags, Mode::empty()) else {
        return out;
    };
    let mut stack = vec![(top, Vec::new())];
    while let Some((fd, prefix)) = stack.pop() {
        let Ok(dir) = Dir::read_from(&fd) else {
            continue;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." {
                continue;
            }
            let mut path = prefix.clone();
            path.push(b'/');
            path.extend_from_slice(&name);
            if entry.file_type() == FileType::Directory {
                if let Ok(sub) = openat(&fd, entry.file_name(), dir_flags, Mode::empty()) {
                    stack.push((sub, path.clone()));
                }
                out.push((path, None));
            } else {
                let data = openat(&fd, entry.file_name(), OFlags::RDONLY, Mode::empty())
                    .ok()
                    .and_then(|f| {
                        let mut bytes = Vec::new();
                        std::io::Read::read_to_end(&mut std::fs::File::from(f), &mut bytes)
                            .ok()
                            .map(|_| bytes)
                    });
                out.push((path, data));
            }
        }
    }
    out.sort();
    out
}

/// Writes `data` into a new file `name` in the root with FILE_SYNC WRITEs of 1 MiB, large
/// enough that their PREPAREs leave the operations out (`replica::slim`).
async fn write_large_file(addr: std::net::SocketAddr, name: &str, data: &[u8]) {
    let mut c = connect(addr, 0, 0).await;
    let root = c.root_nfs_fh3();
    common::write_file_in(&mut c, &root, name, data, 1 << 20).await;
}

/// Slim PREPAREs when a backup lacks the clients' copies: replica 2 drops every large
/// request the frontend sends it straight, so each slim PREPARE it gets waits for a copy
/// that never comes and is then asked of the primary whole. The cluster goes on, replica
/// 2 ends with the same files, and the counters show which path each replica took.
#[test]
fn a_backup_without_the_clients_copies_asks_the_primary_for_whole_prepares() {
    bounded(Duration::from_secs(180), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = start_cluster(&tmp.path().join("c"));
        cluster.stop_replica(2).expect("stop 2");
        cluster
            .restart_replica_with(2, |o| o.drop_large_client_copies = true)
            .expect("start 2");
        let data = content_of_len("big", 1, (3 << 20) + 12_345);
        block_on(write_large_file(cluster.nfs_addr(), "big", &data));
        let e0 = cluster.export_dir(0);
        let e2 = cluster.export_dir(2);
        wait_for(Duration::from_secs(60), "replica 2 converges", || {
            trees_equal(&e0, &e2)
        });
        assert_eq!(std::fs::read(e2.join("big")).expect("read"), data);
        let stats = cluster.stop().expect("stop");
        let (s0, s1, s2) = (&stats[0], &stats[1], &stats[2]);
        eprintln!("slim: 0 {:?}, 1 {:?}, 2 {:?}", s0.slim, s1.slim, s2.slim);
        // Three WRITEs of 1 MiB leave their PREPAREs slim; the last 12 KiB do not.
        assert_eq!(s0.slim.sent, 3, "{:?}", s0.slim);
        // Replica 1 fills them from its copies (unless a copy came more than a tick
        // after its PREPARE, on a loaded host); replica 2 never can.
        assert_eq!(s1.slim.filled + s1.slim.asked, 3, "{:?}", s1.slim);
        assert_eq!(s2.slim.filled, 0, "replica 2 had no copy: {:?}", s2.slim);
        assert_eq!(s2.slim.asked, 3, "{:?}", s2.slim);
        assert_eq!(s0.slim.answered, s1.slim.asked + 3, "{:?}", s0.slim);
    });
}

/// After a view change the new primary re-proposes every batch above the stable
/// checkpoint, and the backups may have executed those requests long ago: such
/// re-proposals go whole, not slim (which once had a backup ask for each one whose
/// copy it had forgotten, and under load cost further view changes). 40 WRITEs of 1 MiB
/// (more than the 32 requests the digest memo keeps), the primary stops, one more WRITE:
/// the new primary sends the 40 re-proposals whole and everything converges.
#[test]
fn a_new_primary_re_proposes_large_requests_whole() {
    bounded(Duration::from_secs(240), || {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cluster = start_cluster(&tmp.path().join("c"));
        let data = content_of_len("many", 2, 40 << 20);
        block_on(write_large_file(cluster.nfs_addr(), "many", &data));
        cluster.stop_replica(0).expect("stop the primary");
        let more = content_of_len("more", 3, 1 << 20);
        block_on(write_large_file(cluster.nfs_addr(), "more", &more));
        let (e1, e2) = (cluster.export_dir(1), cluster.export_dir(2));
        wait_for(Duration::from_secs(60), "replicas 1 and 2 agree", || {
            trees_equal(&e1, &e2)
        });
        assert_eq!(std::fs::read(e2.join("many")).expect("read"), data);
        assert_eq!(std::fs::read(e1.join("more")).expect("read"), more);
        let stats = cluster.stop().expect("stop");
        eprintln!(
            "slim: {:?}",
            stats.iter().map(|s| s.slim).collect::<Vec<_>>()
        );
        let new_primary = stats
            .iter()
            .find(|s| s.view > 0 && s.slim.reproposed_whole > 0)
            .expect("a new primary re-proposed large requests");
        assert!(
            new_primary.slim.reproposed_whole >= 40,
            "{:?}",
            new_primary.slim
        );
        // Sent slim, the re-proposals whose copies a backup had forgotten were asked for
        // whole (8 or more of the 40); a fresh request's copy rarely comes a tick late.
        let asked: u64 = stats.iter().map(|s| s.slim.asked).sum();
        assert!(asked <= 2, "{asked} whole PREPAREs asked for");
    });
}
