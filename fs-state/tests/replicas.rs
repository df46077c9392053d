//! Determinism across replicas: two state machines in two directories applying the
//! same random operation sequence produce identical replies, `diff -r`-equal backing
//! trees and identical digests; a third one restored from a snapshot, and one of them
//! reopened after a crash, agree too.

mod common;

use common::*;
use fs_state::*;
use proptest::prelude::*;

const NAMES: [&str; 6] = ["a", "b", "c", "dir", "e.txt", "f"];

/// An operation over indices into the names and the handles seen so far, so that the
/// same script can be resolved against the state reached.
#[derive(Debug, Clone)]
enum Sym {
    Create(usize, usize, u8),
    Mkdir(usize, usize),
    Symlink(usize, usize, usize),
    Link(usize, usize, usize),
    Write(usize, u64, usize, u8, bool),
    Read(usize, u64, u32),
    Setattr(usize, Option<u64>, Option<u32>),
    Remove(usize, usize),
    Rmdir(usize, usize),
    Rename(usize, usize, usize, usize),
    Readdir(usize, u32),
    Readdirplus(usize, u32),
    Lookup(usize, usize),
    Getattr(usize),
    Access(usize),
    Commit(usize),
    Fsstat,
    /// Batch boundary: sync both and compare digests.
    Sync,
}

fn sym() -> impl Strategy<Value = Sym> {
    let h = 0..64usize;
    let nm = 0..NAMES.len();
    prop_oneof![
        4 => (h.clone(), nm.clone(), 0..4u8).prop_map(|(d, n, m)| Sym::Create(d, n, m)),
        2 => (h.clone(), nm.clone()).prop_map(|(d, n)| Sym::Mkdir(d, n)),
        1 => (h.clone(), nm.clone(), 0..3usize).prop_map(|(d, n, t)| Sym::Symlink(d, n, t)),
        1 => (h.clone(), h.clone(), nm.clone()).prop_map(|(f, d, n)| Sym::Link(f, d, n)),
        5 => (h.clone(), prop_oneof![0..5000u64, 60_000..140_000u64], 0..9000usize, any::<u8>(), any::<bool>())
            .prop_map(|(f, o, l, b, s)| Sym::Write(f, o, l, b, s)),
        2 => (h.clone(), 0..150_000u64, 0..70_000u32).prop_map(|(f, o, c)| Sym::Read(f, o, c)),
        2 => (h.clone(), proptest::option::of(0..100_000u64), proptest::option::of(0..0o1000u32))
            .prop_map(|(f, s, m)| Sym::Setattr(f, s, m)),
        2 => (h.clone(), nm.clone()).prop_map(|(d, n)| Sym::Remove(d, n)),
        1 => (h.clone(), nm.clone()).prop_map(|(d, n)| Sym::Rmdir(d, n)),
        2 => (h.clone(), nm.clone(), h.clone(), nm.clone()).prop_map(|(a, b, c, d)| Sym::Rename(a, b, c, d)),
        1 => (h.clone(), 100..2000u32).prop_map(|(d, c)| Sym::Readdir(d, c)),
        1 => (h.clone(), 200..4000u32).prop_map(|(d, c)| Sym::Readdirplus(d, c)),
        1 => (h.clone(), nm.clone()).prop_map(|(d, n)| Sym::Lookup(d, n)),
        1 => h.clone().prop_map(Sym::Getattr),
        1 => h.clone().prop_map(Sym::Access),
        1 => h.clone().prop_map(Sym::Commit),
        1 => Just(Sym::Fsstat),
        1 => Just(Sym::Sync),
    ]
}

fn pick(handles: &[FileHandle], i: usize) -> FileHandle {
    handles[i % handles.len()].clone()
}

fn resolve(s: &Sym, handles: &[FileHandle]) -> Option<FsOp> {
    let n = |i: usize| name(NAMES[i]);
    Some(match *s {
        Sym::Create(d, nm, m) => FsOp::Create {
            dir: pick(handles, d),
            name: n(nm),
            how: match m {
                0 => CreateHow::Unchecked(Sattr3 {
                    mode: Some(0o644),
                    ..Default::default()
                }),
                1 => CreateHow::Guarded(Sattr3 {
                    mode: Some(0o600),
                    size: Some(10),
                    ..Default::default()
                }),
                2 => CreateHow::Exclusive(*b"verf-one"),
                _ => CreateHow::Exclusive(*b"verf-two"),
            },
        },
        Sym::Mkdir(d, nm) => FsOp::Mkdir {
            dir: pick(handles, d),
            name: n(nm),
            attrs: Sattr3::default(),
        },
        Sym::Symlink(d, nm, t) => FsOp::Symlink {
            dir: pick(handles, d),
            name: n(nm),
            target: NfsPath3::from(["/etc/passwd", "../a", "dir/e.txt"][t]),
            attrs: Sattr3::default(),
        },
        Sym::Link(f, d, nm) => FsOp::Link {
            fh: pick(handles, f),
            dir: pick(handles, d),
            name: n(nm),
        },
        Sym::Write(f, offset, len, byte, unstable) => FsOp::Write {
            fh: pick(handles, f),
            offset,
            stable: if unstable {
                StableHow::Unstable
            } else {
                StableHow::FileSync
            },
            data: (0..len).map(|i| byte.wrapping_add(i as u8)).collect(),
        },
        Sym::Read(f, offset, count) => FsOp::Read {
            fh: pick(handles, f),
            offset,
            count,
        },
        Sym::Setattr(f, size, mode) => FsOp::Setattr {
            fh: pick(handles, f),
            attrs: Sattr3 {
                size,
                mode,
                ..Default::default()
            },
            guard_ctime: None,
        },
        Sym::Remove(d, nm) => FsOp::Remove {
            dir: pick(handles, d),
            name: n(nm),
        },
        Sym::Rmdir(d, nm) => FsOp::Rmdir {
            dir: pick(handles, d),
            name: n(nm),
        },
        Sym::Rename(a, b, c, d) => FsOp::Rename {
            from_dir: pick(handles, a),
            from_name: n(b),
            to_dir: pick(handles, c),
            to_name: n(d),
        },
        Sym::Readdir(d, count) => FsOp::Readdir {
            dir: pick(handles, d),
            cookie: 0,
            cookieverf: [0; 8],
            count,
        },
        Sym::Readdirplus(d, maxcount) => FsOp::Readdirplus {
            dir: pick(handles, d),
            cookie: 0,
            cookieverf: [0; 8],
            dircount: maxcount / 2,
            maxcount,
        },
        Sym::Lookup(d, nm) => FsOp::Lookup {
            dir: pick(handles, d),
            name: n(nm),
        },
        Sym::Getattr(f) => FsOp::Getattr {
            fh: pick(handles, f),
        },
        Sym::Access(f) => FsOp::Access {
            fh: pick(handles, f),
            mask: 0x3f,
        },
        Sym::Commit(f) => FsOp::Commit {
            fh: pick(handles, f),
            offset: 0,
            count: 0,
        },
        Sym::Fsstat => FsOp::Fsstat {
            fh: pick(handles, 0),
        },
        Sym::Sync => return None,
    })
}

/// Handles that appear in a reply, to be used by later operations (removed objects'
/// handles stay in the pool, so stale handles get exercised too).
fn harvest(reply: &FsReply, handles: &mut Vec<FileHandle>) {
    let mut add = |fh: &FileHandle| {
        if !handles.contains(fh) {
            handles.push(fh.clone());
        }
    };
    match &reply.0 {
        Ok(ReplyBody::Create { obj: Some(fh), .. }) => add(fh),
        Ok(ReplyBody::Lookup { object, .. }) => add(object),
        Ok(ReplyBody::Readdirplus { entries, .. }) => {
            for e in entries {
                if let Some(fh) = &e.name_handle {
                    add(fh);
                }
            }
        }
        _ => {}
    }
}

fn config() -> FsConfig {
    FsConfig {
        // Small enough that NOSPC and compaction happen in some runs.
        bytes_total: 600_000,
        journal_bytes_max: 16 << 10,
        ..FsConfig::default()
    }
}

fn run_script(script: &[(Sym, bool)]) -> Result<(), TestCaseError> {
    let mut a = Node::with_config(config());
    let mut b = Node::with_config(config());
    let mut handles = vec![a.root()];
    let alice = user(1000, 1000);
    for (s, as_alice) in script {
        let Some(op) = resolve(s, &handles) else {
            a.sm.sync().unwrap();
            b.sm.sync().unwrap();
            prop_assert_eq!(a.sm.state_digest().unwrap(), b.sm.state_digest().unwrap());
            continue;
        };
        let cred = if *as_alice {
            alice.clone()
        } else {
            root_cred()
        };
        // Replicas see the same ordered timestamps, not their own clocks.
        let ra = a.run_as(cred.clone(), op.clone());
        let rb = b.run_as(cred, op.clone());
        prop_assert_eq!(ra.encode(), rb.encode(), "replies differ for {:?}", op);
        if std::env::var("SHOW").is_ok() {
            eprintln!("{:?} -> {:?}", s, ra.status());
        }
        harvest(&ra, &mut handles);
    }
    a.sm.sync().unwrap();
    b.sm.sync().unwrap();
    let da = a.sm.state_digest().unwrap();
    prop_assert_eq!(da, b.sm.state_digest().unwrap());
    a.sm.check_invariants().unwrap();
    if let Err(d) = diff_trees(&a.export(), &b.export()) {
        return Err(TestCaseError::fail(format!("trees differ:\n{d}")));
    }
    // A crash-restart of one replica keeps the digest.
    b.reopen();
    prop_assert!(b.sm.damaged().is_empty());
    prop_assert_eq!(b.sm.state_digest().unwrap(), da);
    // A third replica restored from a snapshot agrees on everything.
    let snap = FsSnapshot::decode(&a.sm.snapshot().unwrap().encode()).unwrap();
    let mut c = Node::with_config(config());
    c.create(&c.root(), "junk-to-be-replaced");
    prop_assert_eq!(c.sm.restore(&snap).unwrap(), da);
    if let Err(d) = diff_trees(&a.export(), &c.export()) {
        return Err(TestCaseError::fail(format!("restored tree differs:\n{d}")));
    }
    // And all three answer the next operations identically.
    for n in [&mut b, &mut c] {
        n.now = a.now;
    }
    let probe = FsOp::Readdirplus {
        dir: a.root(),
        cookie: 0,
        cookieverf: [0; 8],
        dircount: 1 << 16,
        maxcount: 1 << 20,
    };
    let ra = a.run(probe.clone());
    prop_assert_eq!(&ra, &b.run(probe.clone()));
    prop_assert_eq!(&ra, &c.run(probe));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replicas_agree(script in proptest::collection::vec((sym(), proptest::bool::weighted(0.2)), 1..80)) {
        run_script(&script)?;
    }
}

#[test]
fn replicas_agree_on_a_fixed_busy_script() {
    // A hand-written script that certainly reaches the interesting cases.
    let script: Vec<(Sym, bool)> = vec![
        Sym::Mkdir(0, 3),
        Sym::Lookup(0, 3),
        Sym::Create(1, 4, 0),
        Sym::Create(0, 0, 1),
        Sym::Write(2, 0, 5000, 1, false),
        Sym::Write(3, 70_000, 3000, 2, true),
        Sym::Sync,
        Sym::Link(2, 0, 5),
        Sym::Symlink(0, 1, 0),
        Sym::Rename(0, 0, 1, 2),
        Sym::Setattr(2, Some(100), Some(0o600)),
        Sym::Readdirplus(0, 4000),
        Sym::Readdirplus(1, 4000),
        Sym::Remove(0, 5),
        Sym::Create(1, 0, 2),
        Sym::Create(1, 0, 2),
        Sym::Create(1, 0, 3),
        Sym::Sync,
        Sym::Rmdir(0, 3),
        Sym::Read(3, 69_000, 10_000),
        Sym::Commit(3),
        Sym::Fsstat,
    ]
    .into_iter()
    .map(|s| (s, false))
    .collect();
    run_script(&script).unwrap();
}
