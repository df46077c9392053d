//! Hostile input: bad names, symlinks pointing out of the export, `..` chains, forged
//! and stale handles. Everything fails cleanly with an NFS error and nothing outside
//! the export is read or written.

mod common;

use common::*;
use fs_state::*;

/// A directory beside the export that must never be touched, with a canary file.
fn canary(n: &Node) -> std::path::PathBuf {
    let outside = n.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary"), b"untouched").unwrap();
    outside
}

fn assert_canary(outside: &std::path::Path) {
    let names: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("canary")]);
    assert_eq!(std::fs::read(outside.join("canary")).unwrap(), b"untouched");
}

#[test]
fn hostile_names_are_refused() {
    let mut n = Node::new();
    let outside = canary(&n);
    let root = n.root();
    let long = "a".repeat(256);
    let cases: Vec<(&[u8], NfsStat3, NfsStat3, NfsStat3)> = vec![
        // name, create-like, remove-like, lookup
        (b"", NfsStat3::Acces, NfsStat3::Acces, NfsStat3::Acces),
        (b"a/b", NfsStat3::Acces, NfsStat3::Acces, NfsStat3::Acces),
        (
            b"../outside",
            NfsStat3::Acces,
            NfsStat3::Acces,
            NfsStat3::Acces,
        ),
        (
            b"../../../../etc/passwd",
            NfsStat3::Acces,
            NfsStat3::Acces,
            NfsStat3::Acces,
        ),
        (b"/etc", NfsStat3::Acces, NfsStat3::Acces, NfsStat3::Acces),
        (
            b"nul\0byte",
            NfsStat3::Acces,
            NfsStat3::Acces,
            NfsStat3::Acces,
        ),
        (b".", NfsStat3::Exist, NfsStat3::Inval, NfsStat3::Noent),
        (b"..", NfsStat3::Exist, NfsStat3::Inval, NfsStat3::Noent),
        (
            long.as_bytes(),
            NfsStat3::Nametoolong,
            NfsStat3::Nametoolong,
            NfsStat3::Nametoolong,
        ),
    ];
    for (raw, create_err, remove_err, lookup_err) in cases {
        let nm = Filename3(raw.to_vec());
        let create = n.run(FsOp::Create {
            dir: root.clone(),
            name: nm.clone(),
            how: CreateHow::Unchecked(Sattr3::default()),
        });
        assert_eq!(create.status(), Some(create_err), "create {raw:?}");
        for op in [
            FsOp::Mkdir {
                dir: root.clone(),
                name: nm.clone(),
                attrs: Sattr3::default(),
            },
            FsOp::Symlink {
                dir: root.clone(),
                name: nm.clone(),
                target: NfsPath3::from("/etc/passwd"),
                attrs: Sattr3::default(),
            },
        ] {
            assert_eq!(n.run(op).status(), Some(create_err), "{raw:?}");
        }
        for op in [
            FsOp::Remove {
                dir: root.clone(),
                name: nm.clone(),
            },
            FsOp::Rmdir {
                dir: root.clone(),
                name: nm.clone(),
            },
        ] {
            assert_eq!(n.run(op).status(), Some(remove_err), "{raw:?}");
        }
        if lookup_err != NfsStat3::Noent {
            let r = n.run(FsOp::Lookup {
                dir: root.clone(),
                name: nm.clone(),
            });
            assert_eq!(r.status(), Some(lookup_err), "lookup {raw:?}");
        }
    }
    // Renames with hostile names on either side.
    n.create(&root, "ok");
    for bad in [&b"../x"[..], b"..", b"", b"a/b"] {
        let r = n.run(FsOp::Rename {
            from_dir: root.clone(),
            from_name: name("ok"),
            to_dir: root.clone(),
            to_name: Filename3(bad.to_vec()),
        });
        assert!(r.status().is_some(), "rename to {bad:?}");
        let ok = n.lookup(&root, "ok").unwrap();
        let r = n.run(FsOp::Link {
            fh: ok,
            dir: root.clone(),
            name: Filename3(bad.to_vec()),
        });
        assert!(r.status().is_some(), "link to {bad:?}");
    }
    assert_canary(&outside);
    let names: Vec<_> = std::fs::read_dir(n.export())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ok")]);
}

#[test]
fn dotdot_chains_stop_at_the_root() {
    let mut n = Node::new();
    let root = n.root();
    let a = n.mkdir(&root, "a");
    let b = n.mkdir(&a, "b");
    let mut cur = b;
    for _ in 0..10 {
        cur = n.lookup(&cur, "..").unwrap();
    }
    assert_eq!(cur, root);
}

#[test]
fn symlinks_are_never_followed() {
    let mut n = Node::new();
    let outside = canary(&n);
    let root = n.root();
    let targets = [
        "/etc".to_string(),
        "/etc/passwd".to_string(),
        outside.join("canary").display().to_string(),
        "../outside".to_string(),
        "../../../../../../etc/shadow".to_string(),
        outside.display().to_string(),
    ];
    for (i, t) in targets.iter().enumerate() {
        let lname = format!("l{i}");
        let l = match n.ok(FsOp::Symlink {
            dir: root.clone(),
            name: name(&lname),
            target: NfsPath3::from(t.as_str()),
            attrs: Sattr3::default(),
        }) {
            ReplyBody::Create { obj: Some(fh), .. } => fh,
            b => panic!("{b:?}"),
        };
        // Operations through the link are refused (it is not a directory or file).
        assert_eq!(
            n.err(FsOp::Create {
                dir: l.clone(),
                name: name("evil"),
                how: CreateHow::Unchecked(Sattr3::default())
            }),
            NfsStat3::Notdir
        );
        assert_eq!(
            n.err(FsOp::Lookup {
                dir: l.clone(),
                name: name("passwd")
            }),
            NfsStat3::Notdir
        );
        assert_eq!(
            n.err(FsOp::Write {
                fh: l.clone(),
                offset: 0,
                stable: StableHow::FileSync,
                data: b"pwned".to_vec()
            }),
            NfsStat3::Inval
        );
        assert_eq!(
            n.err(FsOp::Setattr {
                fh: l.clone(),
                attrs: Sattr3 {
                    size: Some(0),
                    ..Default::default()
                },
                guard_ctime: None
            }),
            NfsStat3::Inval
        );
        assert_eq!(
            n.err(FsOp::Readdir {
                dir: l.clone(),
                cookie: 0,
                cookieverf: [0; 8],
                count: 4096
            }),
            NfsStat3::Notdir
        );
        // Hard-linking and renaming the link moves the link, not its target.
        n.ok(FsOp::Link {
            fh: l.clone(),
            dir: root.clone(),
            name: name(&format!("{lname}-hard")),
        });
        n.ok(FsOp::Rename {
            from_dir: root.clone(),
            from_name: name(&format!("{lname}-hard")),
            to_dir: root.clone(),
            to_name: name(&format!("{lname}-moved")),
        });
        let link_path = n.export().join(format!("{lname}-moved"));
        assert!(
            std::fs::symlink_metadata(&link_path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        n.ok(FsOp::Remove {
            dir: root.clone(),
            name: name(&format!("{lname}-moved")),
        });
    }
    assert_canary(&outside);
    assert!(std::path::Path::new("/etc/passwd").exists());
}

#[test]
fn a_symlink_planted_in_the_backing_tree_is_not_followed() {
    // Even if someone replaces a directory of the backing tree by a symlink behind the
    // state machine's back, the walk by fileid refuses it (O_NOFOLLOW): a local fault,
    // never a write outside.
    let mut n = Node::new();
    let outside = canary(&n);
    let root = n.root();
    let d = n.mkdir(&root, "d");
    n.sm.sync().unwrap();
    let dpath = n.export().join("d");
    std::fs::remove_dir(&dpath).unwrap();
    std::os::unix::fs::symlink(&outside, &dpath).unwrap();
    let ctx = n.ctx();
    let r = n.sm.apply(
        &ctx,
        &FsOp::Create {
            dir: d,
            name: name("evil"),
            how: CreateHow::Unchecked(Sattr3::default()),
        },
    );
    assert!(matches!(r, Err(FsError::LocalFault(_))), "{r:?}");
    assert!(n.sm.is_poisoned());
    let ctx = n.ctx();
    assert!(matches!(
        n.sm.apply(&ctx, &FsOp::Getattr { fh: root }),
        Err(FsError::Poisoned(_))
    ));
    assert_canary(&outside);

    // After a restart the check of the tree finds the planted link: the directory is
    // damaged (the digest differs until a restore) and is never used.
    let mut n = Node::new();
    let outside = canary(&n);
    let root = n.root();
    let d = n.mkdir(&root, "d");
    n.create(&d, "inner");
    n.sm.sync().unwrap();
    let dpath = n.export().join("d");
    std::fs::remove_file(dpath.join("inner")).unwrap();
    std::fs::remove_dir(&dpath).unwrap();
    std::os::unix::fs::symlink(&outside, &dpath).unwrap();
    n.reopen();
    assert!(n.sm.damaged().contains(&d.parse().unwrap().0));
    let ctx = n.ctx();
    let r = n.sm.apply(&ctx, &FsOp::Getattr { fh: d });
    assert!(matches!(r, Err(FsError::LocalFault(_))), "{r:?}");
    assert_canary(&outside);
}

#[test]
fn forged_and_stale_handles() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    let (fileid, generation) = f.parse().unwrap();
    let forged = [
        (FileHandle(vec![]), NfsStat3::Badhandle),
        (FileHandle(vec![0; 3]), NfsStat3::Badhandle),
        (FileHandle(vec![0xff; 64]), NfsStat3::Badhandle),
        (FileHandle::new(0, generation), NfsStat3::Badhandle),
        (FileHandle::new(fileid, generation + 1), NfsStat3::Stale),
        (FileHandle::new(999_999, generation), NfsStat3::Stale),
        (FileHandle::new(u64::MAX, generation), NfsStat3::Stale),
    ];
    for (fh, status) in forged {
        for op in [
            FsOp::Getattr { fh: fh.clone() },
            FsOp::Read {
                fh: fh.clone(),
                offset: 0,
                count: 10,
            },
            FsOp::Write {
                fh: fh.clone(),
                offset: 0,
                stable: StableHow::FileSync,
                data: vec![1],
            },
            FsOp::Lookup {
                dir: fh.clone(),
                name: name("f"),
            },
            FsOp::Create {
                dir: fh.clone(),
                name: name("g"),
                how: CreateHow::Unchecked(Sattr3::default()),
            },
            FsOp::Rename {
                from_dir: root.clone(),
                from_name: name("f"),
                to_dir: fh.clone(),
                to_name: name("g"),
            },
            FsOp::Link {
                fh: f.clone(),
                dir: fh.clone(),
                name: name("g"),
            },
            FsOp::Fsstat { fh: fh.clone() },
            FsOp::Commit {
                fh: fh.clone(),
                offset: 0,
                count: 0,
            },
        ] {
            assert_eq!(n.run(op.clone()).status(), Some(status), "{op:?}");
        }
    }
    n.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("f"),
    });
    assert_eq!(n.err(FsOp::Getattr { fh: f.clone() }), NfsStat3::Stale);
    // A new object never reuses the fileid of a removed one.
    let g = n.create(&root, "f");
    assert_ne!(g, f);
}

#[test]
fn oversized_requests_are_bounded() {
    let mut n = Node::with_config(FsConfig {
        rtmax: 4096,
        wtmax: 4096,
        ..FsConfig::default()
    });
    let root = n.root();
    let f = n.create(&root, "f");
    match n.write(&f, 0, &vec![7; 10_000]) {
        ReplyBody::Write { count, .. } => assert_eq!(count, 4096),
        b => panic!("{b:?}"),
    }
    let (data, eof) = n.read(&f, 0, u32::MAX);
    assert_eq!((data.len(), eof), (4096, true));
    assert_eq!(
        n.err(FsOp::Write {
            fh: f.clone(),
            offset: u64::MAX - 1,
            stable: StableHow::FileSync,
            data: vec![1; 10]
        }),
        NfsStat3::Fbig
    );
    assert_eq!(n.read(&f, u64::MAX, 10), (Vec::new(), true));
    // Decoding garbage or a forged length prefix fails without allocating it.
    assert!(FsOp::decode(&[0xff; 16]).is_err());
    assert!(FsOp::decode(&[6, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
}
