//! A sync split in two (`begin_sync`, the `Flush` on another thread, `finish_sync`), as
//! a replica runs it at checkpoints, and a capture that leaves its chunks to that sync.

mod common;

use common::*;
use fs_state::*;

fn syncfs_node() -> Node {
    Node::with_config(FsConfig {
        sync_mode: SyncMode::Syncfs,
        ..FsConfig::default()
    })
}

#[test]
fn a_split_sync_commits_what_was_applied_before_it_began() {
    let mut n = syncfs_node();
    let root = n.root();
    let a = n.create(&root, "a");
    n.write(&a, 0, b"before the sync");
    n.mkdir(&root, "d");
    let (flush, pending) = n.sm.begin_sync().unwrap();
    let flushed = std::thread::spawn(move || flush.run());
    // Applied while the flush runs: not part of this sync.
    n.create(&root, "late");
    flushed.join().unwrap().unwrap();
    n.sm.finish_sync(pending).unwrap();
    // A crash now: the metadata is the sync's, and the later creation is discarded.
    n.reopen();
    let a = n.lookup(&root, "a").unwrap();
    assert_eq!(n.read(&a, 0, 100).0, b"before the sync");
    assert!(n.lookup(&root, "d").is_ok());
    assert_eq!(n.lookup(&root, "late"), Err(NfsStat3::Noent));
    n.sm.check_invariants().unwrap();
}

#[test]
fn a_deferred_capture_waits_for_the_next_sync() {
    let mut n = syncfs_node();
    n.sm.defer_capture_sync(true);
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, &[1u8; 100_000]);
    let (_, stats) = n.sm.checkpoint().unwrap();
    assert_eq!(stats.chunks_stored, 2);
    assert_eq!(stats.sync_us, 0, "no syncfs of its own");
    assert_eq!(n.sm.unsynced_chunks(), 2);

    let (flush, pending) = n.sm.begin_sync().unwrap();
    // Stored after the flush began: left for the next sync.
    let g = n.create(&root, "g");
    n.write(&g, 0, &[2u8; 10]);
    n.sm.checkpoint().unwrap();
    flush.run().unwrap();
    n.sm.finish_sync(pending).unwrap();
    assert_eq!(n.sm.unsynced_chunks(), 1);

    // A plain sync makes the rest durable too.
    n.sm.sync().unwrap();
    assert_eq!(n.sm.unsynced_chunks(), 0);
}

#[test]
fn only_syncfs_mode_splits_its_sync() {
    let mut n = Node::new();
    assert!(n.sm.begin_sync().is_err());
}

#[test]
fn a_split_sync_that_compacts_the_journal_writes_the_metadata_it_flushed() {
    let mut n = Node::with_config(FsConfig {
        sync_mode: SyncMode::Syncfs,
        journal_bytes_max: 1,
        ..FsConfig::default()
    });
    let root = n.root();
    n.create(&root, "a");
    let (flush, pending) = n.sm.begin_sync().unwrap();
    flush.run().unwrap();
    n.sm.finish_sync(pending).unwrap();
    // The journal is now over its bound: the next split sync compacts it.
    n.create(&root, "b");
    let (flush, pending) = n.sm.begin_sync().unwrap();
    n.create(&root, "late");
    flush.run().unwrap();
    n.sm.finish_sync(pending).unwrap();
    n.reopen();
    assert!(n.lookup(&root, "a").is_ok());
    assert!(n.lookup(&root, "b").is_ok());
    assert_eq!(n.lookup(&root, "late"), Err(NfsStat3::Noent));
    n.sm.check_invariants().unwrap();
}
