//! Hostile input found in review: sizes and counts a client controls must not make one
//! operation cost work or memory out of proportion to the data it carries.

mod common;

use common::*;
use fs_state::*;

/// SETATTR of a regular file to a huge size creates a hole of zeros; the state machine
/// must not read and hash every chunk of that hole from disk.
#[test]
fn growing_a_file_by_setattr_does_not_rehash_the_hole() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    n.sm.sync().unwrap();
    let size = 4u64 << 30; // 4 GiB: 65536 chunks of 64 KiB
    let t = std::time::Instant::now();
    n.ok(FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3 {
            size: Some(size),
            ..Sattr3::default()
        },
        guard_ctime: None,
    });
    n.sm.sync().unwrap();
    let stats = n.sm.last_sync_stats();
    eprintln!("sync after SETATTR size={size}: {:?} in {:?}", stats, t.elapsed());
    assert!(
        stats.chunks_hashed <= 2,
        "one SETATTR made the server read and hash {} chunks ({} MiB of zeros)",
        stats.chunks_hashed,
        stats.chunks_hashed * 64 / 1024 * 1024 / 1024
    );
}

/// The hashes assigned to a hole without reading it are the hashes of what is on disk:
/// a checkpoint, which reads and verifies every chunk it stores, finds nothing suspect.
#[test]
fn hole_chunk_hashes_match_the_backing_file() {
    const CHUNK: u64 = 64 << 10;
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, b"0123456789");
    let grow = |n: &mut Node, size: u64| {
        n.ok(FsOp::Setattr {
            fh: f.clone(),
            attrs: Sattr3 {
                size: Some(size),
                ..Sattr3::default()
            },
            guard_ctime: None,
        });
    };
    grow(&mut n, 5 * CHUNK + 100);
    n.write(&f, 9 * CHUNK + 5, b"abc");
    n.sm.sync().unwrap();
    // Shrink into a chunk and grow again within one batch.
    grow(&mut n, 2 * CHUNK + 7);
    grow(&mut n, 12 * CHUNK);
    n.write(&f, 2 * CHUNK + 1, b"x");
    n.sm.sync().unwrap();
    let (data, _) = n.read(&f, 0, (12 * CHUNK) as u32);
    assert_eq!(data.len() as u64, 12 * CHUNK);
    n.sm.checkpoint().unwrap();
    assert!(n.sm.suspect().is_empty(), "{:?}", n.sm.suspect());
}
