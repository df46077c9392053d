//! Every NFSv3 procedure, success and the RFC 1813 errors, on one state machine.

mod common;

use common::*;
use fs_state::*;

#[test]
fn getattr_root_is_deterministic() {
    let mut n = Node::new();
    let root = n.root();
    let a = n.getattr(&root);
    assert_eq!(a.ftype, FType3::Dir);
    assert_eq!(a.fileid, ROOT_FILEID);
    assert_eq!(a.mode, 0o755);
    assert_eq!(a.nlink, 2);
    assert_eq!(a.mtime, NfsTime::default());
    assert_eq!(a.fsid, FsConfig::default().fsid);
    assert_eq!(root, FileHandle::root(FsConfig::default().generation));
}

#[test]
fn create_write_read_setattr() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "a.txt");
    let attrs = n.getattr(&f);
    assert_eq!(attrs.ftype, FType3::Reg);
    assert_eq!(attrs.size, 0);
    assert_eq!(attrs.mode, 0o644);
    assert_eq!(attrs.nlink, 1);
    assert_eq!(attrs.fileid, 2, "fileids come from the replicated counter");
    assert_eq!(
        attrs.mtime,
        NfsTime::from_ns(T0 + 1_000_000),
        "time of the CREATE"
    );

    match n.write(&f, 0, b"hello world") {
        ReplyBody::Write {
            file_wcc,
            count,
            committed,
            verf,
        } => {
            assert_eq!(count, 11);
            assert_eq!(committed, StableHow::FileSync);
            assert_eq!(verf, FsConfig::default().write_verifier);
            assert_eq!(file_wcc.before.unwrap().size, 0);
            assert_eq!(file_wcc.after.unwrap().size, 11);
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(n.read(&f, 0, 100), (b"hello world".to_vec(), true));
    assert_eq!(n.read(&f, 6, 3), (b"wor".to_vec(), false));
    assert_eq!(n.read(&f, 100, 3), (Vec::new(), true));
    // A sparse write far out, then truncate via SETATTR.
    n.write(&f, 200_000, b"x");
    assert_eq!(n.getattr(&f).size, 200_001);
    assert_eq!(n.getattr(&f).used, 200_704);
    let (d, _) = n.read(&f, 199_998, 10);
    assert_eq!(d, vec![0, 0, b'x']);
    match n.ok(FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3 {
            size: Some(5),
            mode: Some(0o600),
            mtime: SetTime::ClientTime(NfsTime {
                seconds: 7,
                nseconds: 8,
            }),
            ..Default::default()
        },
        guard_ctime: None,
    }) {
        ReplyBody::Setattr { obj_wcc } => {
            let after = obj_wcc.after.unwrap();
            assert_eq!(after.size, 5);
            assert_eq!(after.mode, 0o600);
            assert_eq!(
                after.mtime,
                NfsTime {
                    seconds: 7,
                    nseconds: 8
                }
            );
            assert_eq!(obj_wcc.before.unwrap().size, 200_001);
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(n.read(&f, 0, 100).0, b"hello");
    assert_eq!(std::fs::read(n.export().join("a.txt")).unwrap(), b"hello");
    // Guarded SETATTR with a stale ctime.
    let e = n.err(FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3::default(),
        guard_ctime: Some(NfsTime::default()),
    });
    assert_eq!(e, NfsStat3::NotSync);
    let ctime = n.getattr(&f).ctime;
    n.ok(FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3::default(),
        guard_ctime: Some(ctime),
    });
    // Size on a directory.
    let e = n.err(FsOp::Setattr {
        fh: root.clone(),
        attrs: Sattr3 {
            size: Some(0),
            ..Default::default()
        },
        guard_ctime: None,
    });
    assert_eq!(e, NfsStat3::Isdir);
}

#[test]
fn create_modes() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, b"abc");
    // UNCHECKED on an existing file opens it (and truncates when asked).
    let again = n.create(&root, "f");
    assert_eq!(again, f);
    assert_eq!(n.getattr(&f).size, 3);
    n.ok(FsOp::Create {
        dir: root.clone(),
        name: name("f"),
        how: CreateHow::Unchecked(Sattr3 {
            size: Some(0),
            ..Default::default()
        }),
    });
    assert_eq!(n.getattr(&f).size, 0);
    // GUARDED fails on an existing name.
    let e = n.err(FsOp::Create {
        dir: root.clone(),
        name: name("f"),
        how: CreateHow::Guarded(Sattr3::default()),
    });
    assert_eq!(e, NfsStat3::Exist);
    // EXCLUSIVE: a retry with the same verifier succeeds with the same file.
    let excl = |v: [u8; 8]| FsOp::Create {
        dir: root.clone(),
        name: name("x"),
        how: CreateHow::Exclusive(v),
    };
    let first = match n.ok(excl(*b"verifier")) {
        ReplyBody::Create { obj, .. } => obj.unwrap(),
        b => panic!("{b:?}"),
    };
    let retry = match n.ok(excl(*b"verifier")) {
        ReplyBody::Create { obj, .. } => obj.unwrap(),
        b => panic!("{b:?}"),
    };
    assert_eq!(first, retry);
    assert_eq!(n.err(excl(*b"other-vf")), NfsStat3::Exist);
    // UNCHECKED on a directory name.
    n.mkdir(&root, "d");
    let e = n.err(FsOp::Create {
        dir: root.clone(),
        name: name("d"),
        how: CreateHow::Unchecked(Sattr3::default()),
    });
    assert_eq!(e, NfsStat3::Exist);
    // CREATE in a file.
    let e = n.err(FsOp::Create {
        dir: f.clone(),
        name: name("y"),
        how: CreateHow::Unchecked(Sattr3::default()),
    });
    assert_eq!(e, NfsStat3::Notdir);
}

#[test]
fn mkdir_lookup_rmdir_nlink() {
    let mut n = Node::new();
    let root = n.root();
    let d = n.mkdir(&root, "d");
    let sub = n.mkdir(&d, "sub");
    assert_eq!(n.getattr(&root).nlink, 3);
    assert_eq!(n.getattr(&d).nlink, 3);
    assert_eq!(n.getattr(&sub).nlink, 2);
    assert_eq!(n.lookup(&root, "d"), Ok(d.clone()));
    assert_eq!(n.lookup(&d, ".."), Ok(root.clone()));
    assert_eq!(n.lookup(&d, "."), Ok(d.clone()));
    assert_eq!(n.lookup(&root, ".."), Ok(root.clone()));
    assert_eq!(n.lookup(&root, "nope"), Err(NfsStat3::Noent));
    match n
        .run(FsOp::Lookup {
            dir: root.clone(),
            name: name("nope"),
        })
        .0
    {
        Err(NfsFailure {
            attrs: FailAttrs::PostOp(Some(a)),
            ..
        }) => assert_eq!(a.fileid, ROOT_FILEID),
        r => panic!("{r:?}"),
    }
    assert_eq!(
        n.err(FsOp::Mkdir {
            dir: root.clone(),
            name: name("d"),
            attrs: Sattr3::default()
        }),
        NfsStat3::Exist
    );
    assert_eq!(
        n.err(FsOp::Rmdir {
            dir: root.clone(),
            name: name("d")
        }),
        NfsStat3::Notempty
    );
    let f = n.create(&d, "file");
    assert_eq!(
        n.err(FsOp::Rmdir {
            dir: d.clone(),
            name: name("file")
        }),
        NfsStat3::Notdir
    );
    assert_eq!(
        n.err(FsOp::Remove {
            dir: d.clone(),
            name: name("sub")
        }),
        NfsStat3::Isdir
    );
    n.ok(FsOp::Remove {
        dir: d.clone(),
        name: name("file"),
    });
    assert_eq!(n.err(FsOp::Getattr { fh: f }), NfsStat3::Stale);
    n.ok(FsOp::Rmdir {
        dir: d.clone(),
        name: name("sub"),
    });
    n.ok(FsOp::Rmdir {
        dir: root.clone(),
        name: name("d"),
    });
    assert_eq!(n.err(FsOp::Getattr { fh: d }), NfsStat3::Stale);
    assert_eq!(n.getattr(&root).nlink, 2);
    assert!(std::fs::read_dir(n.export()).unwrap().next().is_none());
}

#[test]
fn symlink_and_readlink() {
    let mut n = Node::new();
    let root = n.root();
    let s = match n.ok(FsOp::Symlink {
        dir: root.clone(),
        name: name("link"),
        target: NfsPath3::from("../../etc/passwd"),
        attrs: Sattr3::default(),
    }) {
        ReplyBody::Create {
            obj: Some(fh),
            obj_attributes: Some(a),
            ..
        } => {
            assert_eq!(a.ftype, FType3::Lnk);
            assert_eq!(a.size, 16);
            assert_eq!(a.mode, 0o777);
            fh
        }
        b => panic!("{b:?}"),
    };
    match n.ok(FsOp::Readlink { fh: s.clone() }) {
        ReplyBody::Readlink { data, .. } => assert_eq!(data.0, b"../../etc/passwd"),
        b => panic!("{b:?}"),
    }
    assert_eq!(
        std::fs::read_link(n.export().join("link")).unwrap(),
        std::path::PathBuf::from("../../etc/passwd")
    );
    assert_eq!(n.err(FsOp::Readlink { fh: root.clone() }), NfsStat3::Inval);
    for target in ["", "a\0b"] {
        assert_eq!(
            n.err(FsOp::Symlink {
                dir: root.clone(),
                name: name("bad"),
                target: NfsPath3::from(target),
                attrs: Sattr3::default(),
            }),
            NfsStat3::Inval
        );
    }
    assert_eq!(
        n.err(FsOp::Symlink {
            dir: root.clone(),
            name: name("long"),
            target: NfsPath3(vec![b'a'; 5000]),
            attrs: Sattr3::default(),
        }),
        NfsStat3::Nametoolong
    );
    // Reading or writing through a symlink is refused, never followed.
    assert_eq!(
        n.err(FsOp::Read {
            fh: s.clone(),
            offset: 0,
            count: 10
        }),
        NfsStat3::Inval
    );
    assert_eq!(
        n.err(FsOp::Write {
            fh: s.clone(),
            offset: 0,
            stable: StableHow::FileSync,
            data: b"x".to_vec()
        }),
        NfsStat3::Inval
    );
    n.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("link"),
    });
}

#[test]
fn mknod_not_supported() {
    let mut n = Node::new();
    let root = n.root();
    let op = |what| FsOp::Mknod {
        dir: root.clone(),
        name: name("dev"),
        what,
    };
    assert_eq!(
        n.err(op(MknodData3::Fifo {
            attrs: Sattr3::default()
        })),
        NfsStat3::Notsupp
    );
    assert_eq!(
        n.err(op(MknodData3::Chr {
            attrs: Sattr3::default(),
            spec: SpecData3::default()
        })),
        NfsStat3::Notsupp
    );
    assert_eq!(n.err(op(MknodData3::Other(FType3::Reg))), NfsStat3::Badtype);
}

#[test]
fn rename_cases() {
    let mut n = Node::new();
    let root = n.root();
    let a = n.mkdir(&root, "a");
    let b = n.mkdir(&root, "b");
    let f = n.create(&a, "f");
    n.write(&f, 0, b"data");
    // Move across directories.
    match n.ok(FsOp::Rename {
        from_dir: a.clone(),
        from_name: name("f"),
        to_dir: b.clone(),
        to_name: name("g"),
    }) {
        ReplyBody::Rename {
            fromdir_wcc,
            todir_wcc,
        } => {
            assert!(fromdir_wcc.before.is_some() && todir_wcc.after.is_some());
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(n.lookup(&b, "g"), Ok(f.clone()));
    assert_eq!(n.lookup(&a, "f"), Err(NfsStat3::Noent));
    assert_eq!(n.read(&f, 0, 10).0, b"data", "descriptor survives rename");
    // Over an existing file: the old target goes away.
    let h = n.create(&b, "h");
    n.ok(FsOp::Rename {
        from_dir: b.clone(),
        from_name: name("g"),
        to_dir: b.clone(),
        to_name: name("h"),
    });
    assert_eq!(n.err(FsOp::Getattr { fh: h }), NfsStat3::Stale);
    assert_eq!(n.lookup(&b, "h"), Ok(f.clone()));
    // Directory into its own subtree.
    let sub = n.mkdir(&a, "sub");
    assert_eq!(
        n.err(FsOp::Rename {
            from_dir: root.clone(),
            from_name: name("a"),
            to_dir: sub.clone(),
            to_name: name("x"),
        }),
        NfsStat3::Inval
    );
    // Directory over a file and file over a directory.
    assert_eq!(
        n.err(FsOp::Rename {
            from_dir: a.clone(),
            from_name: name("sub"),
            to_dir: b.clone(),
            to_name: name("h"),
        }),
        NfsStat3::Notdir
    );
    assert_eq!(
        n.err(FsOp::Rename {
            from_dir: b.clone(),
            from_name: name("h"),
            to_dir: a.clone(),
            to_name: name("sub"),
        }),
        NfsStat3::Isdir
    );
    // Directory over a non-empty directory.
    n.create(&sub, "inner");
    assert_eq!(
        n.err(FsOp::Rename {
            from_dir: root.clone(),
            from_name: name("b"),
            to_dir: root.clone(),
            to_name: name("a"),
        }),
        NfsStat3::Notempty
    );
    // Move a directory: link counts follow.
    n.ok(FsOp::Rename {
        from_dir: a.clone(),
        from_name: name("sub"),
        to_dir: b.clone(),
        to_name: name("sub2"),
    });
    assert_eq!(n.getattr(&a).nlink, 2);
    assert_eq!(n.getattr(&b).nlink, 3);
    assert_eq!(n.lookup(&sub, ".."), Ok(b.clone()));
    assert!(n.export().join("b/sub2/inner").exists());
    // Missing source, same name.
    assert_eq!(
        n.err(FsOp::Rename {
            from_dir: a.clone(),
            from_name: name("none"),
            to_dir: b.clone(),
            to_name: name("x"),
        }),
        NfsStat3::Noent
    );
    n.ok(FsOp::Rename {
        from_dir: b.clone(),
        from_name: name("h"),
        to_dir: b.clone(),
        to_name: name("h"),
    });
}

#[test]
fn hard_links() {
    let mut n = Node::new();
    let root = n.root();
    let d = n.mkdir(&root, "d");
    let f = n.create(&root, "f");
    n.write(&f, 0, b"shared");
    match n.ok(FsOp::Link {
        fh: f.clone(),
        dir: d.clone(),
        name: name("f2"),
    }) {
        ReplyBody::Link {
            file_attributes: Some(a),
            ..
        } => assert_eq!(a.nlink, 2),
        b => panic!("{b:?}"),
    }
    assert_eq!(n.lookup(&d, "f2"), Ok(f.clone()));
    assert_eq!(std::fs::read(n.export().join("d/f2")).unwrap(), b"shared");
    assert_eq!(
        n.err(FsOp::Link {
            fh: d.clone(),
            dir: root.clone(),
            name: name("dlink")
        }),
        NfsStat3::Isdir
    );
    assert_eq!(
        n.err(FsOp::Link {
            fh: f.clone(),
            dir: d.clone(),
            name: name("f2")
        }),
        NfsStat3::Exist
    );
    // Renaming one name onto another of the same file does nothing.
    n.ok(FsOp::Rename {
        from_dir: root.clone(),
        from_name: name("f"),
        to_dir: d.clone(),
        to_name: name("f2"),
    });
    assert_eq!(n.getattr(&f).nlink, 2);
    // Remove the first name; the file lives on under the second.
    n.ok(FsOp::Remove {
        dir: root.clone(),
        name: name("f"),
    });
    assert_eq!(n.getattr(&f).nlink, 1);
    n.write(&f, 6, b"!");
    assert_eq!(n.read(&f, 0, 100).0, b"shared!");
    n.ok(FsOp::Remove {
        dir: d.clone(),
        name: name("f2"),
    });
    assert_eq!(n.err(FsOp::Getattr { fh: f }), NfsStat3::Stale);
}

#[test]
fn link_max_is_enforced() {
    let mut n = Node::with_config(FsConfig {
        link_max: 3,
        ..FsConfig::default()
    });
    let root = n.root();
    let f = n.create(&root, "f");
    for i in 0..2 {
        n.ok(FsOp::Link {
            fh: f.clone(),
            dir: root.clone(),
            name: name(&format!("l{i}")),
        });
    }
    assert_eq!(
        n.err(FsOp::Link {
            fh: f.clone(),
            dir: root.clone(),
            name: name("l9")
        }),
        NfsStat3::Mlink
    );
}

#[test]
fn fsstat_fsinfo_pathconf_from_config() {
    let config = FsConfig {
        bytes_total: 1 << 20,
        files_total: 100,
        name_max: 100,
        ..FsConfig::default()
    };
    let mut n = Node::with_config(config.clone());
    let root = n.root();
    let f = n.create(&root, "f");
    n.write(&f, 0, &[1; 5000]);
    match n.ok(FsOp::Fsstat { fh: root.clone() }) {
        ReplyBody::Fsstat {
            tbytes,
            fbytes,
            tfiles,
            ffiles,
            ..
        } => {
            assert_eq!(tbytes, 1 << 20);
            assert_eq!(fbytes, (1 << 20) - 4096 - 8192);
            assert_eq!(tfiles, 100);
            assert_eq!(ffiles, 98);
        }
        b => panic!("{b:?}"),
    }
    match n.ok(FsOp::Fsinfo { fh: root.clone() }) {
        ReplyBody::Fsinfo {
            rtmax,
            wtmax,
            maxfilesize,
            properties,
            ..
        } => {
            assert_eq!(rtmax, config.rtmax);
            assert_eq!(wtmax, config.wtmax);
            assert_eq!(maxfilesize, config.maxfilesize);
            assert_eq!(properties & FSF3_SYMLINK, FSF3_SYMLINK);
        }
        b => panic!("{b:?}"),
    }
    match n.ok(FsOp::Pathconf { fh: f.clone() }) {
        ReplyBody::Pathconf {
            name_max, no_trunc, ..
        } => {
            assert_eq!(name_max, 100);
            assert!(no_trunc);
        }
        b => panic!("{b:?}"),
    }
    // The deterministic quota.
    assert_eq!(
        n.err(FsOp::Write {
            fh: f.clone(),
            offset: 1 << 20,
            stable: StableHow::FileSync,
            data: vec![1]
        }),
        NfsStat3::Nospc
    );
    assert_eq!(
        n.err(FsOp::Write {
            fh: f.clone(),
            offset: config.maxfilesize,
            stable: StableHow::FileSync,
            data: vec![1]
        }),
        NfsStat3::Fbig
    );
}

#[test]
fn files_quota() {
    let mut n = Node::with_config(FsConfig {
        files_total: 3,
        ..FsConfig::default()
    });
    let root = n.root();
    n.create(&root, "a");
    n.mkdir(&root, "b");
    assert_eq!(
        n.err(FsOp::Create {
            dir: root.clone(),
            name: name("c"),
            how: CreateHow::Guarded(Sattr3::default())
        }),
        NfsStat3::Nospc
    );
}

#[test]
fn commit_and_unstable_policies() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    match n.ok(FsOp::Write {
        fh: f.clone(),
        offset: 0,
        stable: StableHow::Unstable,
        data: b"abc".to_vec(),
    }) {
        ReplyBody::Write { committed, .. } => assert_eq!(committed, StableHow::FileSync),
        b => panic!("{b:?}"),
    }
    match n.ok(FsOp::Commit {
        fh: f.clone(),
        offset: 0,
        count: 0,
    }) {
        ReplyBody::Commit { verf, file_wcc } => {
            assert_eq!(verf, FsConfig::default().write_verifier);
            assert_eq!(file_wcc.after.unwrap().size, 3);
        }
        b => panic!("{b:?}"),
    }
    assert_eq!(
        n.err(FsOp::Commit {
            fh: root.clone(),
            offset: 0,
            count: 0
        }),
        NfsStat3::Isdir
    );
    n.sm.sync().unwrap();

    let mut d = Node::with_config(FsConfig {
        unstable_writes: UnstableWrites::DeferToCommit,
        ..FsConfig::default()
    });
    let root = d.root();
    let f = d.create(&root, "f");
    d.sm.sync().unwrap();
    match d.ok(FsOp::Write {
        fh: f.clone(),
        offset: 0,
        stable: StableHow::Unstable,
        data: b"abc".to_vec(),
    }) {
        ReplyBody::Write { committed, .. } => assert_eq!(committed, StableHow::Unstable),
        b => panic!("{b:?}"),
    }
    d.sm.sync().unwrap();
    assert_eq!(
        d.sm.last_sync_stats().files_synced,
        0,
        "unstable data waits for COMMIT"
    );
    d.ok(FsOp::Commit {
        fh: f.clone(),
        offset: 0,
        count: 0,
    });
    d.sm.sync().unwrap();
    assert_eq!(d.sm.last_sync_stats().files_synced, 1);
}

#[test]
fn access_and_permissions() {
    let mut n = Node::new();
    let root = n.root();
    // A world-writable sticky directory like /tmp.
    let tmp = n.mkdir(&root, "tmp");
    n.ok(FsOp::Setattr {
        fh: tmp.clone(),
        attrs: Sattr3 {
            mode: Some(0o1777),
            ..Default::default()
        },
        guard_ctime: None,
    });
    let alice = user(1000, 1000);
    let bob = user(1001, 1001);
    let f = match n.run_as(
        alice.clone(),
        FsOp::Create {
            dir: tmp.clone(),
            name: name("a"),
            how: CreateHow::Guarded(Sattr3 {
                mode: Some(0o640),
                ..Default::default()
            }),
        },
    ) {
        FsReply(Ok(ReplyBody::Create {
            obj: Some(fh),
            obj_attributes: Some(a),
            ..
        })) => {
            assert_eq!((a.uid, a.gid, a.mode), (1000, 1000, 0o640));
            fh
        }
        r => panic!("{r:?}"),
    };
    // Bob can neither read nor write nor delete Alice's file.
    let read = FsOp::Read {
        fh: f.clone(),
        offset: 0,
        count: 1,
    };
    assert_eq!(
        n.run_as(bob.clone(), read.clone()).status(),
        Some(NfsStat3::Acces)
    );
    let remove = FsOp::Remove {
        dir: tmp.clone(),
        name: name("a"),
    };
    assert_eq!(
        n.run_as(bob.clone(), remove.clone()).status(),
        Some(NfsStat3::Acces)
    );
    let chmod = FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3 {
            mode: Some(0o777),
            ..Default::default()
        },
        guard_ctime: None,
    };
    assert_eq!(
        n.run_as(bob.clone(), chmod.clone()).status(),
        Some(NfsStat3::Perm)
    );
    let chown = FsOp::Setattr {
        fh: f.clone(),
        attrs: Sattr3 {
            uid: Some(1001),
            ..Default::default()
        },
        guard_ctime: None,
    };
    assert_eq!(
        n.run_as(alice.clone(), chown).status(),
        Some(NfsStat3::Perm)
    );
    match n
        .run_as(
            bob.clone(),
            FsOp::Access {
                fh: f.clone(),
                mask: 0x3f,
            },
        )
        .0
    {
        Ok(ReplyBody::Access { access, .. }) => assert_eq!(access, 0),
        r => panic!("{r:?}"),
    }
    match n
        .run_as(
            alice.clone(),
            FsOp::Access {
                fh: f.clone(),
                mask: 0x3f,
            },
        )
        .0
    {
        Ok(ReplyBody::Access { access, .. }) => {
            assert_eq!(access, ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND)
        }
        r => panic!("{r:?}"),
    }
    assert!(n.run_as(alice.clone(), chmod).is_ok());
    assert!(n.run_as(bob.clone(), read).is_ok());
    assert!(n.run_as(alice.clone(), remove).is_ok());
    // No search permission on a directory blocks LOOKUP.
    let private = n.mkdir(&root, "private");
    n.ok(FsOp::Setattr {
        fh: private.clone(),
        attrs: Sattr3 {
            mode: Some(0o700),
            ..Default::default()
        },
        guard_ctime: None,
    });
    n.create(&private, "secret");
    let lookup = FsOp::Lookup {
        dir: private.clone(),
        name: name("secret"),
    };
    assert_eq!(
        n.run_as(bob.clone(), lookup.clone()).status(),
        Some(NfsStat3::Acces)
    );
    assert!(n.run_as(root_cred(), lookup).is_ok());
    let readdir = FsOp::Readdir {
        dir: private.clone(),
        cookie: 0,
        cookieverf: [0; 8],
        count: 4096,
    };
    assert_eq!(n.run_as(bob, readdir).status(), Some(NfsStat3::Acces));
}

#[test]
fn setgid_directory_group_inheritance() {
    let mut n = Node::new();
    let root = n.root();
    let shared = n.mkdir(&root, "shared");
    n.ok(FsOp::Setattr {
        fh: shared.clone(),
        attrs: Sattr3 {
            mode: Some(0o2777),
            gid: Some(500),
            ..Default::default()
        },
        guard_ctime: None,
    });
    match n
        .run_as(
            user(1000, 1000),
            FsOp::Mkdir {
                dir: shared.clone(),
                name: name("sub"),
                attrs: Sattr3::default(),
            },
        )
        .0
    {
        Ok(ReplyBody::Create {
            obj_attributes: Some(a),
            ..
        }) => {
            assert_eq!(a.gid, 500);
            assert_eq!(a.mode, 0o2755);
            assert_eq!(a.uid, 1000);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn wcc_on_failure_carries_attributes() {
    let mut n = Node::new();
    let root = n.root();
    match n
        .run(FsOp::Remove {
            dir: root.clone(),
            name: name("missing"),
        })
        .0
    {
        Err(NfsFailure {
            status: NfsStat3::Noent,
            attrs: FailAttrs::Wcc(w),
        }) => {
            assert_eq!(w.after.unwrap().fileid, ROOT_FILEID);
            assert!(w.before.is_some());
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn replies_round_trip_through_encoding() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    let ops = vec![
        FsOp::Getattr { fh: f.clone() },
        FsOp::Read {
            fh: f.clone(),
            offset: 0,
            count: 10,
        },
        FsOp::Readdirplus {
            dir: root.clone(),
            cookie: 0,
            cookieverf: [0; 8],
            dircount: 1000,
            maxcount: 10000,
        },
        FsOp::Lookup {
            dir: root.clone(),
            name: name("zz"),
        },
    ];
    for op in ops {
        assert_eq!(FsOp::decode(&op.encode()).unwrap(), op);
        let r = n.run(op);
        assert_eq!(FsReply::decode(&r.encode()).unwrap(), r);
    }
}

#[test]
fn times_strictly_increase_within_a_batch() {
    let mut n = Node::new();
    let root = n.root();
    let f = n.create(&root, "f");
    // Every operation of one ordered batch carries the same primary timestamp.
    let ctx = OpContext {
        timestamp_ns: T0 + 10_000_000,
        cred: root_cred(),
    };
    let mut last = NfsTime::default();
    for i in 0..3u8 {
        let op = FsOp::Write {
            fh: f.clone(),
            offset: 0,
            stable: StableHow::FileSync,
            data: vec![i],
        };
        match n.sm.apply(&ctx, &op).unwrap().0 {
            Ok(ReplyBody::Write { file_wcc, .. }) => {
                let ctime = file_wcc.after.unwrap().ctime;
                assert!(ctime > last);
                last = ctime;
            }
            r => panic!("{r:?}"),
        }
    }
    assert_eq!(last, NfsTime::from_ns(T0 + 10_000_002));
}

#[test]
fn open_file_cache_is_bounded_and_transparent() {
    let mut n = Node::with_config(FsConfig {
        open_files_max: 4,
        ..FsConfig::default()
    });
    let root = n.root();
    let mut dir = root.clone();
    let mut files = Vec::new();
    for i in 0..20 {
        if i % 5 == 0 {
            dir = n.mkdir(&dir, &format!("d{i}"));
        }
        let f = n.create(&dir, &format!("f{i}"));
        n.write(&f, 0, format!("file {i}").as_bytes());
        files.push(f);
    }
    n.sm.sync().unwrap();
    for (i, f) in files.iter().enumerate().rev() {
        assert_eq!(n.read(f, 0, 100).0, format!("file {i}").as_bytes());
    }
    assert!(n.export().join("d0/d5/d10/d15/f19").exists());
}

#[test]
fn state_machine_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<FileStateMachine>();
    assert_send::<FsOp>();
    assert_send::<FsReply>();
}
