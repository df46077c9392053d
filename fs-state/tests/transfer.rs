//! Chunked checkpoints, fine-grained state transfer and self-repair at the state
//! machine level: a lagging replica fetches only the chunks it lacks, a corrupt chunk is
//! refused, a tampered backing file is detected by `scrub` and repaired by `install`.

mod common;

use common::*;
use fs_state::*;

/// Moves the chunks `to` lacks from `from`'s store; returns how many.
fn fetch(from: &mut Node, to: &mut Node, m: &FsManifest) -> usize {
    let missing = to.sm.missing_chunks(m);
    for h in &missing {
        let data = from.sm.get_chunk(h).unwrap().expect("peer has the chunk");
        assert!(to.sm.put_chunk(h, &data).unwrap());
    }
    missing.len()
}

#[test]
fn lagging_replica_fetches_only_what_differs() {
    let mut a = Node::new();
    let mut b = Node::new();
    let root = a.root();
    // Same history on both: a big file (5 chunks) and ten small ones.
    let mut files = Vec::new();
    for node in [&mut a, &mut b] {
        node.now = T0;
        let big = node.create(&root, "big");
        node.write(&big, 0, &vec![7u8; 5 * 65536]);
        for i in 0..10 {
            let f = node.create(&root, &format!("f{i}"));
            node.write(&f, 0, format!("file {i}").as_bytes());
        }
        node.sm.sync().unwrap();
        files.push(big);
    }
    let (_, _) = b.sm.checkpoint().unwrap();
    // a goes on: one chunk of the big file, one new file, one removed.
    let big = files[0].clone();
    a.write(&big, 2 * 65536 + 10, b"changed");
    let g = a.create(&root, "g");
    a.write(&g, 0, b"new");
    a.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("f3"),
    });
    a.sm.sync().unwrap();
    let want = a.sm.state_digest().unwrap();
    let (m, stats) = a.sm.checkpoint().unwrap();
    assert!(stats.chunks_stored >= 12, "{stats:?}");
    assert_eq!(m.verify(&FsConfig::default()).unwrap(), want);
    let moved = fetch(&mut a, &mut b, &m);
    assert_eq!(moved, 2, "only the changed chunk and the new file's");
    let (d, st) = b.sm.install(&m).unwrap();
    assert_eq!(d, want);
    assert_eq!(st.files_written, 2, "{st:?}");
    diff_trees(&a.export(), &b.export()).unwrap();
    b.sm.check_invariants().unwrap();
    // Garbage collection keeps what the retained manifest needs.
    let before = b.sm.chunk_count();
    b.sm.retain_chunks([&m]).unwrap();
    assert!(b.sm.chunk_count() < before);
    assert!(b.sm.missing_chunks(&m).is_empty());
}

#[test]
fn corrupt_chunk_is_refused_and_manifest_checked() {
    let mut a = Node::new();
    let root = a.root();
    let f = a.create(&root, "f");
    a.write(&f, 0, b"hello");
    a.sm.sync().unwrap();
    a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    let mut b = Node::new();
    let missing = b.sm.missing_chunks(&m);
    assert_eq!(missing.len(), 1);
    assert!(!b.sm.put_chunk(&missing[0], b"hellO").unwrap());
    assert!(b.sm.install(&m).is_err(), "a chunk is missing");
    // A manifest with a changed hash describes another digest.
    let mut bad = m.clone();
    bad.meta.content[0].1.chunks[0] = [1; 32];
    assert_ne!(
        bad.verify(&FsConfig::default()).unwrap(),
        m.verify(&FsConfig::default()).unwrap()
    );
}

#[test]
fn tampered_file_is_found_by_scrub_and_repaired() {
    let mut a = Node::new();
    let root = a.root();
    let mut fhs = Vec::new();
    for i in 0..5 {
        let f = a.create(&root, &format!("f{i}"));
        a.write(&f, 0, &vec![i as u8; 1000]);
        fhs.push(f);
    }
    a.sm.sync().unwrap();
    let good = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    assert!(a.sm.scrub(16).unwrap().found.is_empty());
    // Overwrite a file behind the state machine's back, same size.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(a.export().join("f2"), vec![9u8; 1000]).unwrap();
    let s = a.sm.scrub(0).unwrap();
    assert_eq!(s.found.len(), 1, "{s:?}");
    assert_ne!(a.sm.state_digest().unwrap(), good);
    // Clients keep working on it meanwhile.
    a.write(&fhs[2], 0, b"x");
    a.sm.sync().unwrap();
    let (d, st) = a.sm.install(&m).unwrap();
    assert_eq!(d, good);
    assert_eq!(st.files_written, 1, "{st:?}");
    assert_eq!(
        std::fs::read(a.export().join("f2")).unwrap(),
        vec![2u8; 1000]
    );
    assert!(a.sm.suspect().is_empty());
    // Same-stamp corruption is found by the rolling rehash within a round.
    let p = a.export().join("f4");
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    let meta = f.metadata().unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"Z", 5).unwrap();
    let times = std::fs::FileTimes::new().set_modified(meta.modified().unwrap());
    f.set_times(times).unwrap();
    drop(f);
    let mut found = false;
    for _ in 0..10 {
        found |= !a.sm.scrub(2).unwrap().found.is_empty();
    }
    assert!(found);
}

/// A bounded scrub checks the stamps of a few files per call, in rolling order, and so
/// finds a tampered file within a round of calls, wherever the round starts.
#[test]
fn a_bounded_scrub_finds_a_tampered_file_within_a_round() {
    for (victim, calls_before) in [(7, 1), (0, 1), (9, 2), (4, 3)] {
        let mut a = Node::new();
        let root = a.root();
        let mut fhs = Vec::new();
        for i in 0..10 {
            let f = a.create(&root, &format!("f{i}"));
            a.write(&f, 0, &[i as u8; 100]);
            fhs.push(f);
        }
        a.sm.sync().unwrap();
        a.sm.state_digest().unwrap();
        assert!(a.sm.scrub(0).unwrap().found.is_empty());
        // Written again through the state machine: the digest records its stamp from
        // the open file, and the scrub's stamp by name must equal it.
        a.write(&fhs[3], 0, &[3u8; 100]);
        a.sm.sync().unwrap();
        let good = a.sm.state_digest().unwrap();
        let s = a.sm.scrub(0).unwrap();
        assert_eq!((s.files_checked, s.files_rehashed), (10, 0), "{s:?}");
        assert!(s.found.is_empty());
        for _ in 0..calls_before {
            let s = a.sm.scrub_within(3, 0).unwrap();
            assert_eq!(s.files_checked, 3, "{s:?}");
            assert_eq!(s.files_rehashed, 0, "{s:?}");
            assert!(s.found.is_empty(), "{s:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(a.export().join(format!("f{victim}")), vec![99u8; 100]).unwrap();
        let mut found = Vec::new();
        for _ in 0..4 {
            let s = a.sm.scrub_within(3, 0).unwrap();
            assert_eq!(s.files_checked, 3, "{s:?}");
            found.extend(s.found);
        }
        assert_eq!(found.len(), 1, "f{victim} found once in a round of 4 calls");
        assert_ne!(a.sm.state_digest().unwrap(), good);
    }
}

/// A file renamed over a backing file on the host is found by the stamp check even
/// while the state machine still holds a descriptor of the one it replaced: the rehash
/// reads what the name now serves.
#[test]
fn a_file_renamed_over_a_cached_one_is_found() {
    let mut a = Node::new();
    let root = a.root();
    let f = a.create(&root, "f");
    a.write(&f, 0, &[1u8; 100]);
    a.sm.sync().unwrap();
    a.sm.state_digest().unwrap();
    assert!(a.sm.scrub(0).unwrap().found.is_empty());
    // The state machine's descriptor of `f` is open (in its cache) now.
    assert_eq!(a.read(&f, 0, 100).0, vec![1u8; 100]);
    let other = a.export().join("other");
    std::fs::write(&other, [9u8; 100]).unwrap();
    std::fs::rename(&other, a.export().join("f")).unwrap();
    let s = a.sm.scrub(0).unwrap();
    assert_eq!(s.found.len(), 1, "{s:?}");
}

/// A crash in the middle of an install (export half cleared, staging left behind, files
/// changed after the checkpoint, the metadata still the old one): reopening and
/// installing the stable checkpoint from the local store gives exactly that checkpoint.
#[test]
fn crash_during_install_restarts_cleanly_from_the_local_store() {
    let mut a = Node::new();
    let root = a.root();
    let d = a.mkdir(&root, "d");
    for i in 0..6 {
        let dir = if i % 2 == 0 { &root } else { &d };
        let f = a.create(dir, &format!("f{i}"));
        a.write(&f, 0, &vec![i as u8; 70_000]);
    }
    a.sm.sync().unwrap();
    let good = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    let snapshot_copy = tempfile::tempdir().unwrap();
    let copy = snapshot_copy.path().join("export");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(a.export())
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    // Work after the checkpoint, then the mess a crash mid-install would leave.
    let g = a.create(&root, "g");
    a.write(&g, 0, b"after the checkpoint");
    a.sm.sync().unwrap();
    std::fs::remove_file(a.export().join("f0")).unwrap();
    std::fs::remove_dir_all(a.export().join("d")).unwrap();
    let staging = a.path().join("fsmeta").join("install");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("3"), b"half written").unwrap();
    a.reopen();
    assert!(!a.sm.damaged().is_empty());
    let (dg, _) = a.sm.install(&m).unwrap();
    assert_eq!(dg, good);
    diff_trees(&copy, &a.export()).unwrap();
    a.sm.check_invariants().unwrap();
    assert!(!staging.exists());
}

/// A peer's manifest is checked before its digest is compared, so hostile sizes reach
/// the checks: they are refused, never a panic (arithmetic overflow in `used`).
#[test]
fn a_manifest_with_huge_file_sizes_is_refused_without_panicking() {
    let mut a = Node::new();
    let root = a.root();
    let f = a.create(&root, "f");
    let g = a.create(&root, "g");
    a.write(&f, 0, b"hello");
    a.write(&g, 0, b"world");
    a.sm.sync().unwrap();
    a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    let config = FsConfig::default();
    for sizes in [
        [u64::MAX, 5],
        [1 << 63, 1 << 63],
        [u64::MAX - 100, u64::MAX - 100],
    ] {
        let mut bad = m.clone();
        let mut regs = bad
            .meta
            .inodes
            .iter_mut()
            .filter(|(_, i)| i.ftype == FType3::Reg);
        for size in sizes {
            regs.next().expect("two files").1.size = size;
        }
        let bytes = bad.encode();
        let decoded = FsManifest::decode(&bytes).expect("well-formed");
        let r = std::panic::catch_unwind(|| decoded.verify(&config).is_err());
        assert_eq!(r.ok(), Some(true), "sizes {sizes:?}: refused, not a panic");
    }
}

/// `install`'s commit point is the new metadata snapshot; the journal records synced
/// before it describe the state being replaced. A crash after the snapshot was renamed
/// into place but before the journal's truncation was durable (kill -9 between the two,
/// or a power cut before the journal's fsync) must not replay those records over the
/// installed metadata: the state is the installed one, and the data directory opens.
#[test]
fn crash_between_installed_snapshot_and_journal_truncation_keeps_the_install() {
    let mut a = Node::new();
    let mut b = Node::new();
    let root = a.root();
    // b's own batches since its last compaction, in its journal.
    let x = b.create(&root, "x");
    b.write(&x, 0, b"only on b");
    b.sm.sync().unwrap();
    // a went another way: the certified state b installs.
    let y = a.create(&root, "y");
    a.write(&y, 0, b"on a");
    a.mkdir(&root, "d");
    a.sm.sync().unwrap();
    let want = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    fetch(&mut a, &mut b, &m);
    let journal = b.path().join("fsmeta").join("journal");
    let before = std::fs::read(&journal).unwrap();
    assert!(!before.is_empty(), "b's batches are in its journal");
    assert_eq!(b.sm.install(&m).unwrap().0, want);
    // The crash: the installed snapshot is in place, the journal's truncation is not.
    std::fs::write(&journal, &before).unwrap();
    let config = b.sm.config().clone();
    b.sm = FileStateMachine::open(tempfile::tempdir().unwrap().path(), config.clone()).unwrap();
    let reopened = FileStateMachine::open(b.path(), config);
    let mut sm = reopened.expect("the data directory opens after the crash");
    assert_eq!(
        sm.state_digest().unwrap(),
        want,
        "the install was undone or mixed"
    );
    sm.check_invariants().unwrap();
    diff_trees(&a.export(), &sm.export_dir()).unwrap();
}

/// A checkpoint appends each new chunk to a pack file and makes them durable with one
/// `syncfs` after the last: a power cut before it can leave the pack's length with none
/// of its data (blocks allocated, not written back). The next checkpoint after the
/// restart must not count such a chunk as stored, or the store cannot give back the
/// checkpoint it claims to hold (to an install, or to a peer).
#[test]
fn a_chunk_emptied_by_a_power_cut_is_stored_again_by_the_next_checkpoint() {
    let mut a = Node::new();
    let root = a.root();
    let f = a.create(&root, "f");
    a.write(&f, 0, &vec![9u8; 100_000]);
    a.sm.sync().unwrap();
    a.sm.state_digest().unwrap();
    let (m0, _) = a.sm.checkpoint().unwrap();
    // The power cut came before the store's syncfs: lengths durable, contents not.
    let mut packs = 0;
    for entry in std::fs::read_dir(a.path().join("chunks")).unwrap() {
        let path = entry.unwrap().path();
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::write(&path, vec![0u8; len as usize]).unwrap();
        packs += 1;
    }
    assert!(packs > 0, "the checkpoint stored its chunks");
    a.reopen();
    a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    assert_eq!(m, m0);
    // Later work, then the return to that checkpoint (what a restart does).
    a.write(&f, 0, b"changed after the checkpoint");
    a.sm.sync().unwrap();
    let want = m.verify(&FsConfig::default()).unwrap();
    let installed = a.sm.install(&m).map(|(d, _)| d);
    assert_eq!(installed.ok(), Some(want), "the store lost the checkpoint");
    assert!(a.sm.missing_chunks(&m).is_empty());
}

/// With `store_chunks_when_hashing` (a replica's setting), the digest stores each
/// changed chunk as it hashes it; the checkpoint then reads nothing back, still counts
/// and syncs those chunks, and its manifest installs elsewhere. Off (an unreplicated
/// server's default), the digest stores nothing.
#[test]
fn chunks_hashed_by_the_digest_are_stored_for_the_checkpoint() {
    for on in [false, true] {
        let mut a = Node::new();
        a.sm.store_chunks_when_hashing(on);
        let root = a.root();
        let f = a.create(&root, "f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
        a.write(&f, 0, &data);
        a.sm.sync().unwrap();
        let want = a.sm.state_digest().unwrap();
        assert_eq!(a.sm.chunk_count() > 0, on, "stored while hashing: {on}");
        let (m, stats) = a.sm.checkpoint().unwrap();
        assert_eq!(stats.chunks_stored, 5, "{stats:?}");
        assert!(a.sm.missing_chunks(&m).is_empty());
        let mut b = Node::new();
        fetch(&mut a, &mut b, &m);
        assert_eq!(b.sm.install(&m).unwrap().0, want);
        diff_trees(&a.export(), &b.export()).unwrap();
    }
}

/// An object that was in the last digest and is removed before a state transfer whose
/// snapshot never had it: its leaf must not outlive the install. (The install marked
/// only the old and the new objects for rehashing, and dropped what was already marked,
/// so the removed object's leaf stayed in the tree: every install of such a replica
/// failed as "installed state has another digest", for ever. Found by the FUSE
/// differential test with crashing replicas: a restarted replica replays its log past
/// its checkpoint, removing files, before it learns it must transfer.)
#[test]
fn an_object_removed_since_the_last_digest_leaves_no_leaf_behind_an_install() {
    let mut a = Node::new();
    let mut b = Node::new();
    let root = a.root();
    for node in [&mut a, &mut b] {
        node.now = T0;
        let f = node.create(&root, "common");
        node.write(&f, 0, b"both");
        node.sm.sync().unwrap();
    }
    // b alone: a file that enters its digest, then goes.
    let x = b.create(&root, "x");
    b.write(&x, 0, b"only b had it");
    b.sm.sync().unwrap();
    b.sm.state_digest().unwrap();
    b.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("x"),
    });
    b.sm.sync().unwrap();
    // a goes on in its own way, making no object (which would take x's fileid); b
    // installs a's checkpoint.
    let common = a.lookup(&root, "common").expect("common");
    a.write(&common, 0, b"a's");
    a.sm.sync().unwrap();
    let want = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    fetch(&mut a, &mut b, &m);
    let (d, _) = b.sm.install(&m).expect("installs");
    assert_eq!(d, want);
    diff_trees(&a.export(), &b.export()).unwrap();
}

/// A backing file cut short behind the state machine's back, then written to through
/// it: hashing the written chunk meets the end of the file early. That is damage to
/// repair (the file is suspect, the digest disagrees, an install restores it), not a
/// fault of the disk that stops the replica, which it was (found by the FUSE nemesis
/// test overwriting files in a replica's export).
#[test]
fn a_file_cut_short_behind_our_back_is_repaired_not_a_fault() {
    let mut a = Node::new();
    let root = a.root();
    let f = a.create(&root, "f");
    a.write(&f, 0, &vec![3u8; 3 * 65536]);
    a.sm.sync().unwrap();
    let good = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();
    std::fs::write(a.export().join("f"), b"short").unwrap();
    // A read past what is left on disk answers (wrongly: the other replicas outvote it)
    // instead of stopping the replica.
    let (data, _) = a.read(&f, 65536, 100);
    assert_eq!(data.len(), 100);
    assert_eq!(a.sm.suspect().len(), 1, "the file is suspect");
    // A write into the last chunk, which is no longer there on disk.
    a.write(&f, 2 * 65536 + 5, b"x");
    a.sm.sync().unwrap();
    let damaged = a.sm.state_digest().expect("damage, not a fault");
    assert_ne!(damaged, good);
    assert_eq!(a.sm.suspect().len(), 1, "the file is suspect");
    let (d, _) = a.sm.install(&m).unwrap();
    assert_eq!(d, good);
    assert_eq!(
        std::fs::read(a.export().join("f")).unwrap(),
        vec![3u8; 3 * 65536]
    );
}
