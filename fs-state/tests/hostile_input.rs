//! Hostile input found in review: sizes and counts a client controls must not make one
//! operation cost work or memory out of proportion to the data it carries.

mod common;

use common::*;
use fs_state::*;

/// SETATTR of `fh`'s size.
fn set_size(n: &mut Node, fh: &FileHandle, size: u64) {
    n.ok(FsOp::Setattr {
        fh: fh.clone(),
        attrs: Sattr3 {
            size: Some(size),
            ..Sattr3::default()
        },
        guard_ctime: None,
    });
}

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
    set_size(&mut n, &f, size);
    n.sm.sync().unwrap();
    let stats = n.sm.last_sync_stats();
    eprintln!(
        "sync after SETATTR size={size}: {:?} in {:?}",
        stats,
        t.elapsed()
    );
    assert!(
        stats.chunks_hashed <= 2,
        "one SETATTR made the server read and hash {} chunks ({} MiB of zeros)",
        stats.chunks_hashed,
        stats.chunks_hashed * 64 / 1024
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
    let grow = |n: &mut Node, size: u64| set_size(n, &f, size);
    grow(&mut n, 5 * CHUNK + 100);
    n.write(&f, 9 * CHUNK + 5, b"abc");
    n.sm.sync().unwrap();
    // Shrink into a chunk and grow again within one batch.
    grow(&mut n, 2 * CHUNK + 7);
    grow(&mut n, 12 * CHUNK);
    n.write(&f, 2 * CHUNK + 1, b"x");
    n.sm.sync().unwrap();
    // A WRITE far past the end whose data spans whole chunks of the range it grows the
    // file over: those chunks hold the data, not zeros.
    n.write(&f, 15 * CHUNK, &vec![b'w'; 2 * CHUNK as usize + 9]);
    n.sm.sync().unwrap();
    let (data, _) = n.read(&f, 0, (12 * CHUNK) as u32);
    assert_eq!(data.len() as u64, 12 * CHUNK);
    let (data, _) = n.read(&f, 15 * CHUNK, (2 * CHUNK + 9) as u32);
    assert_eq!(data, vec![b'w'; 2 * CHUNK as usize + 9]);
    n.sm.checkpoint().unwrap();
    assert!(n.sm.suspect().is_empty(), "{:?}", n.sm.suspect());
}

/// READDIR `count` and READDIRPLUS `maxcount`/`dircount` are the client's; like READ's
/// `count` they are clamped to the server's transfer size, so a client cannot have a
/// whole directory of millions of entries put into one reply (over 2 GiB it does not
/// even fit an RPC record).
#[test]
fn readdir_counts_are_clamped_to_the_transfer_size() {
    let mut n = Node::with_config(FsConfig {
        rtmax: 4096,
        ..FsConfig::default()
    });
    let root = n.root();
    for i in 0..200 {
        n.create(&root, &format!("{i:040}"));
    }
    // entry3 of a 40-byte name is 64 bytes.
    let header = 4 + 4 + 84 + 8 + 4 + 4;
    match n.ok(FsOp::Readdir {
        dir: root.clone(),
        cookie: 0,
        cookieverf: [0; 8],
        count: u32::MAX,
    }) {
        ReplyBody::Readdir { entries, eof, .. } => {
            assert!(!eof, "all {} entries in one reply", entries.len());
            assert!(header + 64 * entries.len() <= 4096, "{}", entries.len());
        }
        b => panic!("{b:?}"),
    }
    match n.ok(FsOp::Readdirplus {
        dir: root.clone(),
        cookie: 0,
        cookieverf: [0; 8],
        dircount: u32::MAX,
        maxcount: u32::MAX,
    }) {
        ReplyBody::Readdirplus { entries, eof, .. } => {
            assert!(!eof, "all {} entries in one reply", entries.len());
            assert!(
                header + (64 + 112) * entries.len() <= 4096,
                "{}",
                entries.len()
            );
        }
        b => panic!("{b:?}"),
    }
}
