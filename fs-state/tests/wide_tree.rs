//! Walks over the whole backing tree (the check after an unclean shutdown, installing a
//! checkpoint) hold a bounded number of descriptors, however wide or deep the tree a
//! client built: a directory with more subdirectories than the process may open files
//! must not stop a replica from restarting or from catching up.
//!
//! One test in this binary: it lowers the process's open-file limit.

mod common;

use common::*;
use fs_state::*;

const LIMIT: u64 = 400;

fn small_cache() -> FsConfig {
    FsConfig {
        open_files_max: 32,
        ..FsConfig::default()
    }
}

#[test]
fn walks_over_a_wide_and_deep_tree_stay_within_the_open_file_limit() {
    let mut a = Node::with_config(small_cache());
    let root = a.root();
    // Wider than the limit: 600 directories in one, each with a file, and a hard link
    // from the root to the last file of each hundred.
    let wide = a.mkdir(&root, "wide");
    for i in 0..600 {
        let d = a.mkdir(&wide, &format!("d{i:03}"));
        let f = a.create(&d, "f");
        a.write(&f, 0, format!("file {i}").as_bytes());
        if i % 100 == 99 {
            a.ok(FsOp::Link {
                fh: f.clone(),
                dir: root.clone(),
                name: name(&format!("link{i}")),
            });
        }
    }
    // Deeper than the limit, with a sibling directory at every level (a comb).
    let mut cur = a.mkdir(&root, "deep");
    for i in 0..500 {
        a.mkdir(&cur, "side");
        cur = a.mkdir(&cur, &format!("l{i}"));
    }
    a.create(&cur, "bottom");
    a.sm.sync().unwrap();
    let want = a.sm.state_digest().unwrap();
    let (m, _) = a.sm.checkpoint().unwrap();

    let limit = rustix::process::Rlimit {
        current: Some(LIMIT),
        maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();

    // A crash: the reopen walks the backing tree against the metadata.
    a.reopen();
    assert!(a.sm.damaged().is_empty(), "{:?}", a.sm.damaged());
    assert_eq!(a.sm.state_digest().unwrap(), want);

    // A replica that has nothing installs the checkpoint.
    let mut b = Node::with_config(small_cache());
    for h in b.sm.missing_chunks(&m) {
        let data = a.sm.get_chunk(&h).unwrap().expect("a has the chunk");
        assert!(b.sm.put_chunk(&h, &data).unwrap());
    }
    let (d, _) = b.sm.install(&m).unwrap();
    assert_eq!(d, want);
    diff_trees(&a.export(), &b.export()).unwrap();
    b.sm.check_invariants().unwrap();

    // And a replica goes back to a checkpoint of its own over newer work.
    let extra = a.mkdir(&wide, "after");
    a.create(&extra, "g");
    a.sm.sync().unwrap();
    let (d, _) = a.sm.install(&m).unwrap();
    assert_eq!(d, want);
    diff_trees(&a.export(), &b.export()).unwrap();
}
