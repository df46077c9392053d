//! Persistence: reopening a data directory restores the same metadata and digest, after
//! a clean close or a crash; a crash's unsynced changes are discarded or detected; a
//! torn journal tail is cut off; snapshots restore into another directory.

mod common;

use common::*;
use fs_state::*;

fn populate(n: &mut Node) -> Vec<FileHandle> {
    let root = n.root();
    let d = n.mkdir(&root, "docs");
    let sub = n.mkdir(&d, "sub");
    let f = n.create(&d, "report.txt");
    n.write(&f, 0, &vec![42; 150_000]);
    n.write(&f, 70_000, b"middle");
    let g = n.create(&sub, "g");
    n.write(&g, 10, b"small");
    n.ok(FsOp::Link {
        fh: g.clone(),
        dir: root.clone(),
        name: name("g-link"),
    });
    n.ok(FsOp::Symlink {
        dir: root.clone(),
        name: name("s"),
        target: NfsPath3::from("docs/report.txt"),
        attrs: Sattr3::default(),
    });
    n.ok(FsOp::Rename {
        from_dir: d.clone(),
        from_name: name("sub"),
        to_dir: root.clone(),
        to_name: name("moved"),
    });
    for i in 0..30 {
        n.create(&d, &format!("n{i}"));
    }
    for i in (0..30).step_by(3) {
        n.ok(FsOp::Remove {
            dir: d.clone(),
            name: name(&format!("n{i}")),
        });
    }
    vec![root, d, sub, f, g]
}

#[test]
fn reopen_after_crash_gives_same_digest_and_answers() {
    let mut n = Node::new();
    let handles = populate(&mut n);
    n.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    let attrs: Vec<_> = handles.iter().map(|h| n.getattr(h)).collect();
    let listing = n.list(&handles[1]);
    n.reopen();
    assert!(n.sm.damaged().is_empty());
    assert_eq!(n.sm.state_digest().unwrap(), digest);
    n.sm.check_invariants().unwrap();
    let again: Vec<_> = handles.iter().map(|h| n.getattr(h)).collect();
    assert_eq!(again, attrs);
    assert_eq!(n.list(&handles[1]), listing);
    assert_eq!(n.read(&handles[3], 70_000, 6).0, b"middle");
    // New objects continue the fileid counter.
    let next = n.create(&handles[0], "after");
    assert_eq!(next.parse().unwrap().0, 2 + 5 + 30);
}

#[test]
fn reopen_after_clean_close() {
    let mut n = Node::new();
    populate(&mut n);
    let digest = n.sm.state_digest().unwrap();
    let config = n.sm.config().clone();
    let path = n.path().to_path_buf();
    let Node { dir, sm, .. } = n;
    sm.close().unwrap();
    let mut sm = FileStateMachine::open(&path, config).unwrap();
    assert_eq!(sm.state_digest().unwrap(), digest);
    drop(dir);
}

#[test]
fn unsynced_creations_are_discarded_on_reopen() {
    let mut n = Node::new();
    let handles = populate(&mut n);
    n.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    let before = std::fs::read_dir(n.export()).unwrap().count();
    // A batch that never got synced: only new objects.
    let nd = n.mkdir(&handles[0], "unsynced-dir");
    let nf = n.create(&nd, "unsynced-file");
    n.write(&nf, 0, b"lost");
    n.reopen();
    assert!(n.sm.damaged().is_empty());
    assert_eq!(n.sm.state_digest().unwrap(), digest);
    assert_eq!(std::fs::read_dir(n.export()).unwrap().count(), before);
    assert_eq!(n.err(FsOp::Getattr { fh: nd }), NfsStat3::Stale);
    // Replaying the lost batch works and gives the same fileids as the first time.
    let nd2 = n.mkdir(&handles[0], "unsynced-dir");
    assert_eq!(nd2.parse().unwrap().0, 2 + 5 + 30);
}

#[test]
fn unsynced_overwrite_is_detected_and_restored() {
    let mut healthy = Node::new();
    let mut n = Node::new();
    let handles = populate(&mut n);
    populate(&mut healthy);
    n.sm.sync().unwrap();
    healthy.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    assert_eq!(healthy.sm.state_digest().unwrap(), digest);
    // Unsynced changes that cannot be undone locally: overwrite, remove, rename.
    n.write(&handles[3], 0, b"overwritten");
    n.ok(FsOp::Remove {
        dir: handles[1].clone(),
        name: name("n1"),
    });
    n.ok(FsOp::Rename {
        from_dir: handles[1].clone(),
        from_name: name("n2"),
        to_dir: handles[0].clone(),
        to_name: name("n2-moved"),
    });
    n.reopen();
    assert_eq!(n.sm.damaged().len(), 3, "{:?}", n.sm.damaged());
    assert_ne!(n.sm.state_digest().unwrap(), digest);
    let r = n.sm.apply(
        &OpContext {
            timestamp_ns: T0,
            cred: root_cred(),
        },
        &FsOp::Read {
            fh: handles[3].clone(),
            offset: 0,
            count: 10,
        },
    );
    assert!(matches!(r, Err(FsError::LocalFault(_))));
    // State transfer from a healthy replica repairs it.
    let snap = healthy.sm.snapshot().unwrap();
    assert_eq!(n.sm.restore(&snap).unwrap(), digest);
    assert!(n.sm.damaged().is_empty());
    diff_trees(&healthy.export(), &n.export()).unwrap();
    assert_eq!(n.read(&handles[3], 0, 5).0, vec![42; 5]);
    n.reopen();
    assert_eq!(n.sm.state_digest().unwrap(), digest);
}

#[test]
fn torn_journal_tail_is_ignored() {
    let mut n = Node::new();
    populate(&mut n);
    n.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    let journal = n.path().join(META_DIR).join("journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]);
    std::fs::write(&journal, &bytes).unwrap();
    n.reopen();
    assert_eq!(n.sm.state_digest().unwrap(), digest);
    assert_eq!(std::fs::metadata(&journal).unwrap().len() as usize, len);
}

#[test]
fn compaction_keeps_state() {
    let mut n = Node::with_config(FsConfig {
        journal_bytes_max: 2048,
        ..FsConfig::default()
    });
    let root = n.root();
    for i in 0..50 {
        let f = n.create(&root, &format!("f{i}"));
        n.write(&f, 0, format!("content {i}").as_bytes());
        n.sm.sync().unwrap();
    }
    let journal = n.path().join(META_DIR).join("journal");
    assert!(std::fs::metadata(&journal).unwrap().len() <= 4096);
    let digest = n.sm.state_digest().unwrap();
    n.reopen();
    assert_eq!(n.sm.state_digest().unwrap(), digest);
}

#[test]
fn digest_tracks_changes_and_tree_exposes_leaves() {
    let mut n = Node::new();
    let root = n.root();
    let d0 = n.sm.state_digest().unwrap();
    let f = n.create(&root, "f");
    let d1 = n.sm.state_digest().unwrap();
    assert_ne!(d0, d1);
    let fid = f.parse().unwrap().0;
    let leaf = n.sm.leaf(fid).unwrap();
    n.write(&f, 0, b"x");
    let d2 = n.sm.state_digest().unwrap();
    assert_ne!(d1, d2);
    assert_ne!(n.sm.leaf(fid).unwrap(), leaf);
    // Reads change nothing.
    n.read(&f, 0, 1);
    n.list(&root);
    assert_eq!(n.sm.state_digest().unwrap(), d2);
    // The tree can be walked from the root's children down to the leaf.
    let tree = n.sm.digest_tree();
    let top = tree.children(digest::LEVELS + 1, 0);
    assert_eq!(top.len(), 1);
    let mut level = digest::LEVELS;
    let mut idx = top[0].0;
    while level > 0 {
        let kids = tree.children(level, idx);
        assert!(!kids.is_empty());
        idx = kids
            .iter()
            .map(|k| k.0)
            .find(|&k| (fid >> (8 * (level - 1))) == k)
            .unwrap();
        level -= 1;
    }
    assert_eq!(idx, fid);
    // An empty file and its removal.
    n.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("f"),
    });
    n.sm.state_digest().unwrap();
    assert_eq!(n.sm.leaf(fid), None);
}

#[test]
fn refuses_foreign_or_mismatched_directories() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(EXPORT_DIR)).unwrap();
    std::fs::write(dir.path().join(EXPORT_DIR).join("stray"), b"x").unwrap();
    assert!(matches!(
        FileStateMachine::open(dir.path(), FsConfig::default()),
        Err(FsError::Config(_))
    ));
    let n = Node::new();
    let other = FsConfig {
        generation: 99,
        ..FsConfig::default()
    };
    assert!(matches!(
        FileStateMachine::open(n.path(), other),
        Err(FsError::Config(_))
    ));
}

#[test]
fn failed_operations_change_no_state() {
    let mut n = Node::new();
    let root = n.root();
    n.create(&root, "f");
    n.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    n.err(FsOp::Create {
        dir: root.clone(),
        name: name("f"),
        how: CreateHow::Guarded(Sattr3::default()),
    });
    n.err(FsOp::Remove {
        dir: root.clone(),
        name: name("missing"),
    });
    n.sm.sync().unwrap();
    assert_eq!(
        n.sm.last_sync_stats(),
        SyncStats::default(),
        "nothing to sync"
    );
    assert_eq!(n.sm.state_digest().unwrap(), digest);
}
