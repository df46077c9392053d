//! Removed host files and directories are kept in `spare/` and reused by the next
//! CREATE or MKDIR (`spare.rs`): empty, under the new name, and never across a reopen.

mod common;

use common::*;
use fs_state::*;

fn spare_entries(n: &Node) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(n.path().join(SPARE_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn removed_objects_come_back_empty_under_their_new_names() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "a");
    n.write(&f, 0, &[7u8; 10_000]);
    let d = n.mkdir(&root, "d");
    n.create(&d, "inner");
    n.remove(&d, "inner");
    n.rmdir(&root, "d");
    n.remove(&root, "a");
    assert_eq!(n.sm.spare_stats().parked, 3);
    assert_eq!(spare_entries(&n).len(), 3);

    let g = n.create(&root, "b");
    assert_eq!(n.getattr(&g).size, 0);
    assert_eq!(n.read(&g, 0, 100), (Vec::new(), true));
    assert_eq!(std::fs::metadata(n.export().join("b")).unwrap().len(), 0);
    let e = n.mkdir(&root, "e");
    assert!(n.list(&e).iter().all(|(s, _)| s == "." || s == ".."));
    assert!(
        std::fs::read_dir(n.export().join("e"))
            .unwrap()
            .next()
            .is_none()
    );
    n.create(&e, "x");
    assert_eq!(n.sm.spare_stats().reused, 3);
    assert!(spare_entries(&n).is_empty());

    // Reused host objects behave like new ones.
    n.write(&g, 0, b"hello");
    assert_eq!(std::fs::read(n.export().join("b")).unwrap(), b"hello");
    assert!(n.export().join("e/x").is_file());
    n.sm.check_invariants().unwrap();
}

#[test]
fn a_pool_left_by_a_crash_is_emptied_on_reopen() {
    let mut n = Node::new();
    let root = n.root();
    for i in 0..4 {
        n.create(&root, &format!("f{i}"));
        n.mkdir(&root, &format!("d{i}"));
    }
    n.sm.sync().unwrap();
    for i in 0..4 {
        n.remove(&root, &format!("f{i}"));
        n.rmdir(&root, &format!("d{i}"));
    }
    n.sm.sync().unwrap();
    let digest = n.sm.state_digest().unwrap();
    assert_eq!(spare_entries(&n).len(), 8);
    n.reopen();
    assert!(spare_entries(&n).is_empty());
    assert_eq!(n.sm.state_digest().unwrap(), digest);
    // The pool refills from the reopened state machine's own removals.
    n.create(&root, "again");
    assert_eq!(n.sm.spare_stats().reused, 0);
    n.remove(&root, "again");
    assert_eq!(n.sm.spare_stats().parked, 1);
}

#[test]
fn a_file_is_kept_only_with_its_last_name() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, b"shared");
    n.ok(FsOp::Link {
        fh: f.clone(),
        dir: root.clone(),
        name: name("g"),
    });
    n.remove(&root, "f");
    assert_eq!(n.sm.spare_stats().parked, 0);
    // The other name still holds the bytes.
    assert_eq!(std::fs::read(n.export().join("g")).unwrap(), b"shared");
    n.remove(&root, "g");
    assert_eq!(n.sm.spare_stats().parked, 1);
}

#[test]
fn a_directory_holding_a_planted_host_entry_is_not_kept() {
    let mut n = Node::new();
    let root = n.root();
    n.mkdir(&root, "d");
    std::fs::write(n.export().join("d/planted"), b"x").unwrap();
    // As before the pool: the host refuses, which is a local fault, not a reply.
    let ctx = n.ctx();
    let r = n.sm.apply(
        &ctx,
        &FsOp::Rmdir {
            dir: root.clone(),
            name: name("d"),
        },
    );
    assert!(r.is_err(), "{r:?}");
    assert!(spare_entries(&n).is_empty());
    assert!(n.export().join("d/planted").exists());
}

#[test]
fn the_pool_is_bounded() {
    let mut n = Node::new();
    let root = n.root();
    let extra = 5;
    for i in 0..SPARES_MAX + extra {
        n.create(&root, &format!("f{i}"));
    }
    for i in 0..SPARES_MAX + extra {
        n.remove(&root, &format!("f{i}"));
    }
    assert_eq!(n.sm.spare_stats().parked, SPARES_MAX as u64);
    assert_eq!(spare_entries(&n).len(), SPARES_MAX);
    assert!(std::fs::read_dir(n.export()).unwrap().next().is_none());
}

#[test]
fn a_file_with_another_host_link_is_freed_not_emptied() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, b"keep me");
    // A host-side second link the metadata does not know.
    let outside = n.path().join("outside");
    std::fs::hard_link(n.export().join("f"), &outside).unwrap();
    n.remove(&root, "f");
    assert_eq!(n.sm.spare_stats().parked, 0);
    assert!(spare_entries(&n).is_empty());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
}

#[test]
fn a_parked_file_filled_on_the_host_comes_back_empty() {
    let mut n = Node::new();
    let root = n.root();
    n.create(&root, "f");
    n.remove(&root, "f");
    let parked = spare_entries(&n);
    assert_eq!(parked.len(), 1);
    std::fs::write(n.path().join(SPARE_DIR).join(&parked[0]), b"stale bytes").unwrap();
    let g = n.create(&root, "g");
    assert_eq!(n.sm.spare_stats().reused, 1);
    assert_eq!(std::fs::metadata(n.export().join("g")).unwrap().len(), 0);
    assert_eq!(n.read(&g, 0, 100), (Vec::new(), true));
}
