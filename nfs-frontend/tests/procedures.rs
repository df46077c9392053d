//! Every NFSv3 procedure over the wire, through nfs3_client, against the unreplicated
//! server: results, error statuses, credentials reaching the state machine, and paging
//! a 1,000-entry directory with READDIR and READDIRPLUS.

mod common;

use std::collections::BTreeSet;

use common::{Conn, TestServer, connect, dirop, fh};
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;

fn mode(m: u32) -> sattr3 {
    sattr3 {
        mode: Nfs3Option::Some(m),
        ..Default::default()
    }
}

fn status<T, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((s, _)) => s,
    }
}

async fn create(c: &mut Conn, dir: &nfs_fh3, n: &str, m: u32) -> (nfs_fh3, fattr3) {
    let r = c
        .create(&CREATE3args {
            where_: dirop(dir, n),
            how: createhow3::UNCHECKED(mode(m)),
        })
        .await
        .expect("rpc")
        .unwrap();
    (r.obj.unwrap(), r.obj_attributes.unwrap())
}

async fn lookup(c: &mut Conn, dir: &nfs_fh3, n: &str) -> Nfs3Result<LOOKUP3resok, LOOKUP3resfail> {
    c.lookup(&LOOKUP3args {
        what: dirop(dir, n),
    })
    .await
    .expect("rpc")
}

async fn getattr(c: &mut Conn, f: &nfs_fh3) -> fattr3 {
    c.getattr(&GETATTR3args { object: f.clone() })
        .await
        .expect("rpc")
        .unwrap()
        .obj_attributes
}

#[tokio::test]
async fn every_procedure_round_trips() {
    every_procedure(&TestServer::start()).await;
}

/// The same calls through a MinPBFT f=1 cluster: replies agreed by f+1 replicas must be
/// exactly what the unreplicated server answers.
#[tokio::test]
async fn replicated_every_procedure_round_trips() {
    every_procedure(&TestServer::start_replicated()).await;
}

async fn every_procedure(server: &TestServer) {
    let mut c = connect(server.addr(), 0, 0).await;
    let root = c.root_nfs_fh3();
    // The root handle is the state machine's (fileid 1, generation 1), not a server
    // start time: every replica and every restart hands out the same bytes.
    assert_eq!(root.data.as_ref(), fs_state::FileHandle::root(1).as_bytes());

    c.null().await.expect("NULL");

    // FSINFO, FSSTAT, PATHCONF: configured values, not the host's.
    let info = c
        .fsinfo(&FSINFO3args {
            fsroot: root.clone(),
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!((info.rtmax, info.wtmax), (1 << 20, 1 << 20));
    assert_ne!(info.properties & FSF3_SYMLINK, 0);
    assert!(info.obj_attributes.is_some());
    let stat = c
        .fsstat(&FSSTAT3args {
            fsroot: root.clone(),
        })
        .await
        .expect("rpc")
        .unwrap();
    assert!(stat.tbytes > 0 && stat.tbytes <= 1 << 40, "{}", stat.tbytes);
    let pc = c
        .pathconf(&PATHCONF3args {
            object: root.clone(),
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(pc.name_max, 255);
    assert!(pc.no_trunc);

    // GETATTR and ACCESS on the root.
    let ra = getattr(&mut c, &root).await;
    assert_eq!((ra.type_, ra.fileid), (ftype3::NF3DIR, 1));
    let acc = c
        .access(&ACCESS3args {
            object: root.clone(),
            access: ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(
        acc.access,
        ACCESS3_READ | ACCESS3_LOOKUP | ACCESS3_MODIFY,
        "root may do anything to its directory"
    );

    // CREATE in all three modes.
    let (a, a_attr) = create(&mut c, &root, "a.txt", 0o644).await;
    assert_eq!(
        (a_attr.type_, a_attr.mode, a_attr.size),
        (ftype3::NF3REG, 0o644, 0)
    );
    let guarded = c
        .create(&CREATE3args {
            where_: dirop(&root, "a.txt"),
            how: createhow3::GUARDED(mode(0o600)),
        })
        .await
        .expect("rpc");
    assert_eq!(status(guarded), nfsstat3::NFS3ERR_EXIST);
    let excl = |v: u8| CREATE3args {
        where_: dirop(&root, "ex"),
        how: createhow3::EXCLUSIVE(createverf3([v; 8])),
    };
    let e1 = c.create(&excl(7)).await.expect("rpc").unwrap().obj.unwrap();
    let e2 = c.create(&excl(7)).await.expect("rpc").unwrap().obj.unwrap();
    assert_eq!(
        e1, e2,
        "an EXCLUSIVE retry with the same verifier finds its file"
    );
    assert_eq!(
        status(c.create(&excl(8)).await.expect("rpc")),
        nfsstat3::NFS3ERR_EXIST
    );

    // WRITE (stable_how passes through), READ, COMMIT.
    let w = c
        .write(&WRITE3args {
            file: a.clone(),
            offset: 0,
            count: 11,
            stable: stable_how::FILE_SYNC,
            data: Opaque::owned(b"hello world".to_vec()),
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!((w.count, w.committed), (11, stable_how::FILE_SYNC));
    assert_eq!(&w.verf.0, b"bftnfs01");
    assert!(w.file_wcc.before.is_some() && w.file_wcc.after.is_some());
    let w2 = c
        .write(&WRITE3args {
            file: a.clone(),
            offset: 11,
            count: 1,
            stable: stable_how::UNSTABLE,
            data: Opaque::owned(b"!".to_vec()),
        })
        .await
        .expect("rpc")
        .unwrap();
    // The default policy syncs every batch, so even UNSTABLE is reported FILE_SYNC.
    assert_eq!(w2.committed, stable_how::FILE_SYNC);
    let mismatched = c
        .write(&WRITE3args {
            file: a.clone(),
            offset: 0,
            count: 5,
            stable: stable_how::FILE_SYNC,
            data: Opaque::owned(b"abc".to_vec()),
        })
        .await
        .expect("rpc");
    assert_eq!(status(mismatched), nfsstat3::NFS3ERR_INVAL);
    let commit = c
        .commit(&COMMIT3args {
            file: a.clone(),
            offset: 0,
            count: 0,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(commit.verf, w.verf);
    let r = c
        .read(&READ3args {
            file: a.clone(),
            offset: 0,
            count: 100,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(
        (r.data.as_ref(), r.count, r.eof),
        (&b"hello world!"[..], 12, true)
    );
    let r = c
        .read(&READ3args {
            file: a.clone(),
            offset: 6,
            count: 3,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!((r.data.as_ref(), r.eof), (&b"wor"[..], false));

    // SETATTR, with and without a matching guard.
    let before = getattr(&mut c, &a).await;
    let set = c
        .setattr(&SETATTR3args {
            object: a.clone(),
            new_attributes: sattr3 {
                size: Nfs3Option::Some(5),
                mode: Nfs3Option::Some(0o640),
                ..Default::default()
            },
            guard: Nfs3Option::Some(before.ctime),
        })
        .await
        .expect("rpc")
        .unwrap();
    let after = set.obj_wcc.after.unwrap();
    assert_eq!((after.size, after.mode), (5, 0o640));
    let stale_guard = c
        .setattr(&SETATTR3args {
            object: a.clone(),
            new_attributes: mode(0o600),
            guard: Nfs3Option::Some(before.ctime),
        })
        .await
        .expect("rpc");
    assert_eq!(status(stale_guard), nfsstat3::NFS3ERR_NOT_SYNC);

    // LOOKUP.
    let l = lookup(&mut c, &root, "a.txt").await.unwrap();
    assert_eq!(l.object, a);
    assert!(l.dir_attributes.is_some());
    match lookup(&mut c, &root, "missing").await {
        Nfs3Result::Err((s, fail)) => {
            assert_eq!(s, nfsstat3::NFS3ERR_NOENT);
            assert!(
                fail.dir_attributes.is_some(),
                "resfail carries the directory"
            );
        }
        Nfs3Result::Ok(_) => panic!("found a missing name"),
    }

    // MKDIR, SYMLINK, READLINK, MKNOD.
    let d = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, "d"),
            attributes: mode(0o750),
        })
        .await
        .expect("rpc")
        .unwrap();
    let d_attr = d.obj_attributes.unwrap();
    assert_eq!((d_attr.type_, d_attr.mode), (ftype3::NF3DIR, 0o750));
    let d = d.obj.unwrap();
    let s = c
        .symlink(&SYMLINK3args {
            where_: dirop(&root, "s"),
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(b"d/target".to_vec())),
            },
        })
        .await
        .expect("rpc")
        .unwrap()
        .obj
        .unwrap();
    let rl = c
        .readlink(&READLINK3args { symlink: s.clone() })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(rl.data.0.as_ref(), b"d/target");
    // MKNOD reaches the state machine (not PROC_UNAVAIL), which stores no special files.
    let fifo = c
        .mknod(&MKNOD3args {
            where_: dirop(&root, "fifo"),
            what: mknoddata3::NF3FIFO(mode(0o600)),
        })
        .await
        .expect("rpc");
    match fifo {
        Nfs3Result::Err((s, fail)) => {
            assert_eq!(s, nfsstat3::NFS3ERR_NOTSUPP);
            assert!(
                fail.dir_wcc.after.is_some(),
                "resfail carries the directory's wcc"
            );
        }
        Nfs3Result::Ok(_) => panic!("special files are not stored"),
    }

    // LINK and RENAME.
    let link = c
        .link(&LINK3args {
            file: a.clone(),
            link: dirop(&d, "b.txt"),
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(link.file_attributes.unwrap().nlink, 2);
    c.rename(&RENAME3args {
        from: dirop(&root, "a.txt"),
        to: dirop(&d, "c.txt"),
    })
    .await
    .expect("rpc")
    .unwrap();
    assert_eq!(lookup(&mut c, &d, "c.txt").await.unwrap().object, a);
    assert_eq!(
        status(lookup(&mut c, &root, "a.txt").await),
        nfsstat3::NFS3ERR_NOENT
    );

    // REMOVE and RMDIR are different procedures with different rules.
    let rmdir = |n: &str| RMDIR3args {
        object: dirop(&d, n),
    };
    assert_eq!(
        status(c.rmdir(&rmdir("c.txt")).await.expect("rpc")),
        nfsstat3::NFS3ERR_NOTDIR
    );
    let not_empty = c
        .rmdir(&RMDIR3args {
            object: dirop(&root, "d"),
        })
        .await
        .expect("rpc");
    assert_eq!(status(not_empty), nfsstat3::NFS3ERR_NOTEMPTY);
    let rm_dir_as_file = c
        .remove(&REMOVE3args {
            object: dirop(&root, "d"),
        })
        .await
        .expect("rpc");
    assert_ne!(status(rm_dir_as_file), nfsstat3::NFS3_OK);
    for n in ["b.txt", "c.txt"] {
        c.remove(&REMOVE3args {
            object: dirop(&d, n),
        })
        .await
        .expect("rpc")
        .unwrap();
    }
    // The last name of a file is gone: its handle is stale now.
    let gone = c
        .getattr(&GETATTR3args { object: a.clone() })
        .await
        .expect("rpc");
    assert_eq!(status(gone), nfsstat3::NFS3ERR_STALE);
    c.rmdir(&RMDIR3args {
        object: dirop(&root, "d"),
    })
    .await
    .expect("rpc")
    .unwrap();
}

#[tokio::test]
async fn credentials_reach_the_state_machine() {
    let server = TestServer::start();
    let mut root_c = connect(server.addr(), 0, 0).await;
    let root = root_c.root_nfs_fh3();
    let (shared, _) = create(&mut root_c, &root, "shared", 0o644).await;
    let pub_dir = root_c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, "pub"),
            attributes: mode(0o777),
        })
        .await
        .expect("rpc")
        .unwrap()
        .obj
        .unwrap();

    let mut user = connect(server.addr(), 1000, 1000).await;
    // A file created by uid 1000 belongs to uid 1000.
    let (mine, attr) = create(&mut user, &pub_dir, "mine", 0o600).await;
    assert_eq!((attr.uid, attr.gid), (1000, 1000));
    // uid 1000 may not write root's 0644 file, nor create in root's 0755 directory.
    let denied = user
        .write(&WRITE3args {
            file: shared.clone(),
            offset: 0,
            count: 1,
            stable: stable_how::FILE_SYNC,
            data: Opaque::owned(vec![1]),
        })
        .await
        .expect("rpc");
    assert_eq!(status(denied), nfsstat3::NFS3ERR_ACCES);
    let denied = user
        .create(&CREATE3args {
            where_: dirop(&root, "nope"),
            how: createhow3::UNCHECKED(mode(0o644)),
        })
        .await
        .expect("rpc");
    assert_eq!(status(denied), nfsstat3::NFS3ERR_ACCES);
    // ACCESS answers for the caller: the owner may modify, another user may not.
    let other = connect(server.addr(), 2000, 2000).await;
    let mut other = other;
    let acc = other
        .access(&ACCESS3args {
            object: mine.clone(),
            access: ACCESS3_READ | ACCESS3_MODIFY,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(acc.access, 0);
    let acc = user
        .access(&ACCESS3args {
            object: mine,
            access: ACCESS3_READ | ACCESS3_MODIFY,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(acc.access, ACCESS3_READ | ACCESS3_MODIFY);
}

const BIG: usize = 1000;

#[tokio::test]
async fn readdir_and_readdirplus_page_through_1000_entries() {
    paging_1000_entries(&TestServer::start()).await;
}

#[tokio::test]
async fn replicated_readdir_and_readdirplus_page_through_1000_entries() {
    paging_1000_entries(&TestServer::start_replicated()).await;
}

async fn paging_1000_entries(server: &TestServer) {
    let mut c = connect(server.addr(), 0, 0).await;
    let root = c.root_nfs_fh3();
    let big = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, "big"),
            attributes: mode(0o755),
        })
        .await
        .expect("rpc")
        .unwrap()
        .obj
        .unwrap();
    // Several connections, so that creations share syncs.
    let mut handles = Vec::new();
    for part in 0..4 {
        let addr = server.addr();
        let big = big.clone();
        handles.push(tokio::spawn(async move {
            let mut c = connect(addr, 0, 0).await;
            for i in (part..BIG).step_by(4) {
                create(&mut c, &big, &format!("file-{i:04}"), 0o644).await;
            }
        }));
    }
    for h in handles {
        h.await.expect("creator task");
    }
    let expected: BTreeSet<String> = (0..BIG).map(|i| format!("file-{i:04}")).collect();

    // READDIR with a small count: many pages, cookies and verifier from the server.
    let mut names = Vec::new();
    let (mut cookie, mut verf, mut pages) = (0, cookieverf3::default(), 0);
    loop {
        let page = c
            .readdir(&READDIR3args {
                dir: big.clone(),
                cookie,
                cookieverf: verf,
                count: 2048,
            })
            .await
            .expect("rpc")
            .unwrap();
        pages += 1;
        verf = page.cookieverf;
        for e in &page.reply.entries.0 {
            names.push(String::from_utf8(e.name.0.to_vec()).expect("utf8"));
            cookie = e.cookie;
        }
        if page.reply.eof {
            break;
        }
        assert!(
            !page.reply.entries.0.is_empty(),
            "a page that is not the last is not empty"
        );
        assert!(pages < 1000, "READDIR does not terminate");
    }
    assert!(
        pages > 5,
        "count 2048 must take several pages, took {pages}"
    );
    assert_eq!(names.len(), BIG, "each entry exactly once");
    assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), expected);

    // READDIRPLUS: the same entries, each with attributes and the LOOKUP handle.
    let mut plus = Vec::new();
    let (mut cookie, mut verf, mut pages) = (0, cookieverf3::default(), 0);
    loop {
        let page = c
            .readdirplus(&READDIRPLUS3args {
                dir: big.clone(),
                cookie,
                cookieverf: verf,
                dircount: 1024,
                maxcount: 8192,
            })
            .await
            .expect("rpc")
            .unwrap();
        pages += 1;
        verf = page.cookieverf;
        let eof = page.reply.eof;
        for e in page.reply.entries.0 {
            cookie = e.cookie;
            let attr = e.name_attributes.unwrap();
            assert_eq!(attr.fileid, e.fileid);
            plus.push((
                String::from_utf8(e.name.0.to_vec()).expect("utf8"),
                e.name_handle.unwrap(),
            ));
        }
        if eof {
            break;
        }
        assert!(pages < 1000, "READDIRPLUS does not terminate");
    }
    assert!(pages > 5, "took {pages} pages");
    assert_eq!(plus.len(), BIG);
    assert_eq!(
        plus.iter().map(|(n, _)| n.clone()).collect::<BTreeSet<_>>(),
        expected
    );
    for (n, h) in plus.iter().step_by(97) {
        assert_eq!(&lookup(&mut c, &big, n).await.unwrap().object, h);
    }

    // A cookie past the end, or with another directory's verifier, is refused.
    let bad = c
        .readdir(&READDIR3args {
            dir: big.clone(),
            cookie: 1 << 40,
            cookieverf: verf,
            count: 2048,
        })
        .await
        .expect("rpc");
    assert_eq!(status(bad), nfsstat3::NFS3ERR_BAD_COOKIE);
    let too_small = c
        .readdirplus(&READDIRPLUS3args {
            dir: big.clone(),
            cookie: 0,
            cookieverf: cookieverf3::default(),
            dircount: 10,
            maxcount: 10,
        })
        .await
        .expect("rpc");
    assert_eq!(status(too_small), nfsstat3::NFS3ERR_TOOSMALL);
}

#[tokio::test]
async fn handles_and_data_survive_a_restart() {
    let mut server = TestServer::start();
    let data = server.data_dir();
    let (f, root) = {
        let mut c = connect(server.addr(), 0, 0).await;
        let root = c.root_nfs_fh3();
        let (f, _) = create(&mut c, &root, "kept", 0o644).await;
        c.write(&WRITE3args {
            file: f.clone(),
            offset: 0,
            count: 4,
            stable: stable_how::FILE_SYNC,
            data: Opaque::owned(b"keep".to_vec()),
        })
        .await
        .expect("rpc")
        .unwrap();
        (f, root)
    };
    server.stop();
    let again = common::start_on(&data);
    let mut c = connect(again.addr(), 0, 0).await;
    assert_eq!(c.root_nfs_fh3(), root);
    // The old handle still works after the restart: no start-time generation.
    let r = c
        .read(&READ3args {
            file: f,
            offset: 0,
            count: 10,
        })
        .await
        .expect("rpc")
        .unwrap();
    assert_eq!(r.data.as_ref(), b"keep");
    assert_eq!(getattr(&mut c, &fh(root.data.as_ref())).await.fileid, 1);
    again.stop().expect("stop");
}

#[tokio::test]
async fn mount_resolves_subdirectories_through_the_backend() {
    let server = TestServer::start();
    let mut c = connect(server.addr(), 0, 0).await;
    let root = c.root_nfs_fh3();
    let sub = c
        .mkdir(&MKDIR3args {
            where_: dirop(&root, "sub"),
            attributes: mode(0o755),
        })
        .await
        .expect("rpc")
        .unwrap()
        .obj
        .unwrap();
    create(&mut c, &root, "plain", 0o644).await;
    let mounted = common::connect_with(server.addr(), common::cred(0, 0, &[]), "/sub/").await;
    assert_eq!(mounted.root_nfs_fh3(), sub);
    for bad in ["/missing", "/plain", "/.."] {
        let r = nfs3_client::Nfs3ConnectionBuilder::new(
            nfs3_client::tokio::TokioConnector,
            "127.0.0.1",
            bad,
        )
        .mount_port(server.addr().port())
        .nfs3_port(server.addr().port())
        .connect_from_privileged_port(false)
        .credential(common::cred(0, 0, &[]))
        .mount()
        .await;
        assert!(r.is_err(), "mounting {bad} must fail");
    }
}
