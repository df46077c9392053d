//! Hostile input over the wire: names with `/`, `..`, NUL and over-long names, forged,
//! truncated, oversized and stale handles, symlinks pointing out of the export, and
//! malformed RPC (oversized records, forged AUTH_UNIX lengths, garbage arguments).
//! Each must end in an NFS or RPC error (or a closed connection), the server must keep
//! serving, and nothing outside the data directory may change.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{Conn, TestServer, be, call, connect, fh, reply, root_cred, word};
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn bname(b: &[u8]) -> filename3<'static> {
    filename3(Opaque::owned(b.to_vec()))
}

fn status<T, E>(r: Nfs3Result<T, E>) -> nfsstat3 {
    match r {
        Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
        Nfs3Result::Err((s, _)) => s,
    }
}

async fn create_status(c: &mut Conn, dir: &nfs_fh3, name: &[u8]) -> nfsstat3 {
    status(
        c.create(&CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: bname(name),
            },
            how: createhow3::UNCHECKED(sattr3::default()),
        })
        .await
        .expect("rpc"),
    )
}

/// Every path under `dir`, relative, recursively (symlinks listed, not followed).
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            out.insert(p.strip_prefix(base).expect("prefix").display().to_string());
            if e.file_type().expect("type").is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[tokio::test]
async fn hostile_names_and_handles_get_nfs_errors_and_stay_inside() {
    let server = TestServer::start();
    let outside = server.dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir outside");
    std::fs::write(outside.join("secret"), b"untouched").expect("write secret");
    let before_outside = tree(server.dir.path());

    let mut c = connect(server.addr(), 0, 0).await;
    let root = c.root_nfs_fh3();

    // Names: a slash, a NUL, dot-dot, dot, empty, and one byte over the limit.
    let long = vec![b'x'; 256];
    for (name, want) in [
        (&b"a/b"[..], None),
        (b"../escape", None),
        (b"../../outside/secret", None),
        (b"x\0y", None),
        (b"..", None),
        (b".", None),
        (b"", None),
        (&long[..], Some(nfsstat3::NFS3ERR_NAMETOOLONG)),
    ] {
        let got = create_status(&mut c, &root, name).await;
        assert_ne!(got, nfsstat3::NFS3_OK, "CREATE {name:?} must fail");
        if let Some(want) = want {
            assert_eq!(got, want, "CREATE {name:?}");
        }
        let mk = c
            .mkdir(&MKDIR3args {
                where_: diropargs3 {
                    dir: root.clone(),
                    name: bname(name),
                },
                attributes: sattr3::default(),
            })
            .await
            .expect("rpc");
        assert_ne!(status(mk), nfsstat3::NFS3_OK, "MKDIR {name:?} must fail");
    }
    // LOOKUP ".." at the root stays at the root.
    if let Nfs3Result::Ok(ok) = c
        .lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: root.clone(),
                name: bname(b".."),
            },
        })
        .await
        .expect("rpc")
    {
        assert_eq!(ok.object, root, "the parent of the export root is the root");
    }
    // RENAME and LINK into names with a slash or dot-dot fail too.
    c.create(&CREATE3args {
        where_: diropargs3 {
            dir: root.clone(),
            name: bname(b"victim"),
        },
        how: createhow3::UNCHECKED(sattr3::default()),
    })
    .await
    .expect("rpc")
    .unwrap();
    for to in [&b"../moved"[..], b"sub/moved", b"..", b"a\0b"] {
        let r = c
            .rename(&RENAME3args {
                from: diropargs3 {
                    dir: root.clone(),
                    name: bname(b"victim"),
                },
                to: diropargs3 {
                    dir: root.clone(),
                    name: bname(to),
                },
            })
            .await
            .expect("rpc");
        assert_ne!(status(r), nfsstat3::NFS3_OK, "RENAME to {to:?} must fail");
    }

    // A symlink pointing out of the export is stored, never followed by the server.
    let link = c
        .symlink(&SYMLINK3args {
            where_: diropargs3 {
                dir: root.clone(),
                name: bname(b"out"),
            },
            symlink: symlinkdata3 {
                symlink_attributes: sattr3::default(),
                symlink_data: nfspath3(Opaque::owned(b"../../outside/secret".to_vec())),
            },
        })
        .await
        .expect("rpc")
        .unwrap()
        .obj
        .unwrap();
    let read = c
        .read(&READ3args {
            file: link.clone(),
            offset: 0,
            count: 100,
        })
        .await
        .expect("rpc");
    assert_ne!(status(read), nfsstat3::NFS3_OK, "READ of a symlink");
    let write = c
        .write(&WRITE3args {
            file: link.clone(),
            offset: 0,
            count: 3,
            stable: stable_how::FILE_SYNC,
            data: Opaque::owned(b"pwn".to_vec()),
        })
        .await
        .expect("rpc");
    assert_ne!(status(write), nfsstat3::NFS3_OK, "WRITE through a symlink");
    let through = c
        .create(&CREATE3args {
            where_: diropargs3 {
                dir: link.clone(),
                name: bname(b"x"),
            },
            how: createhow3::UNCHECKED(sattr3::default()),
        })
        .await
        .expect("rpc");
    assert_eq!(status(through), nfsstat3::NFS3ERR_NOTDIR);

    // Handles: forged, truncated, empty, another generation, a removed file's.
    let good = root.data.to_vec();
    let mut other_gen = good.clone();
    other_gen[15] ^= 0x55;
    let mut unknown = good.clone();
    unknown[..8].copy_from_slice(&9_999u64.to_be_bytes());
    let removed = common::create_file(&mut c, &root, "short-lived").await;
    c.remove(&REMOVE3args {
        object: diropargs3 {
            dir: root.clone(),
            name: bname(b"short-lived"),
        },
    })
    .await
    .expect("rpc")
    .unwrap();
    for (what, h, want) in [
        ("empty", vec![], nfsstat3::NFS3ERR_BADHANDLE),
        ("truncated", good[..3].to_vec(), nfsstat3::NFS3ERR_BADHANDLE),
        (
            "padded",
            [good.clone(), vec![0; 8]].concat(),
            nfsstat3::NFS3ERR_BADHANDLE,
        ),
        ("fileid 0", vec![0; 16], nfsstat3::NFS3ERR_BADHANDLE),
        ("other generation", other_gen, nfsstat3::NFS3ERR_STALE),
        ("unknown fileid", unknown, nfsstat3::NFS3ERR_STALE),
        (
            "removed file",
            removed.data.to_vec(),
            nfsstat3::NFS3ERR_STALE,
        ),
    ] {
        let r = c
            .getattr(&GETATTR3args { object: fh(&h) })
            .await
            .expect("rpc");
        assert_eq!(status(r), want, "GETATTR of a {what} handle");
        let w = c
            .write(&WRITE3args {
                file: fh(&h),
                offset: 0,
                count: 1,
                stable: stable_how::FILE_SYNC,
                data: Opaque::owned(vec![0]),
            })
            .await
            .expect("rpc");
        assert_eq!(status(w), want, "WRITE to a {what} handle");
        let cr = create_status(&mut c, &fh(&h), b"child").await;
        assert_eq!(cr, want, "CREATE under a {what} handle");
    }

    // The server still serves, and nothing outside the data directory changed.
    c.null().await.expect("still serving");
    let after = tree(server.dir.path());
    let outside_now: BTreeSet<_> = after.iter().filter(|p| !p.starts_with("data")).collect();
    let outside_before: BTreeSet<_> = before_outside
        .iter()
        .filter(|p| !p.starts_with("data"))
        .collect();
    assert_eq!(
        outside_now, outside_before,
        "files outside the data directory"
    );
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("secret"),
        b"untouched"
    );
    let export: BTreeSet<String> = tree(&server.data_dir().join("export"));
    let expected: BTreeSet<String> = ["out", "victim"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        export, expected,
        "only the legitimate names exist in the export"
    );
}

// ---- raw RPC -----------------------------------------------------------------------

/// (reply_stat, accept_stat or reject detail) of an RPC reply.
fn verdict(b: &[u8]) -> (u32, u32) {
    assert_eq!(word(b, 1), 1, "a REPLY");
    match word(b, 2) {
        0 => (0, word(b, 5)), // accepted: verf flavor, verf len 0, accept_stat
        1 => (1, word(b, 4)), // denied: reject_stat, then mismatch or auth_stat
        other => panic!("reply_stat {other}"),
    }
}

#[tokio::test]
async fn malformed_rpc_gets_rpc_errors_or_a_closed_connection() {
    let server = TestServer::start();
    let addr = server.addr();
    let mut s = TcpStream::connect(addr).await.expect("connect");

    // Unknown program, wrong versions, unknown procedure.
    s.write_all(&call(1, 100_099, 1, 0, &root_cred(), &[]))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (0, 1),
        "PROG_UNAVAIL"
    );
    s.write_all(&call(2, 100_003, 2, 0, &root_cred(), &[]))
        .await
        .expect("send");
    let r = reply(&mut s).await.expect("reply");
    assert_eq!(verdict(&r), (0, 2), "PROG_MISMATCH");
    assert_eq!((word(&r, 6), word(&r, 7)), (3, 3));
    s.write_all(&call(3, 100_003, 3, 22, &root_cred(), &[]))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (0, 3),
        "PROC_UNAVAIL"
    );
    // GETATTR with a truncated argument, and with a 65-byte handle.
    s.write_all(&call(4, 100_003, 3, 1, &root_cred(), &be(&[16, 0])))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (0, 4),
        "GARBAGE_ARGS"
    );
    let mut big_fh = be(&[65]);
    big_fh.extend([0u8; 68]);
    s.write_all(&call(5, 100_003, 3, 1, &root_cred(), &big_fh))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (0, 4),
        "GARBAGE_ARGS"
    );
    // MKNOD of a regular file reaches the state machine: BADTYPE, not garbage.
    let mut mknod = be(&[16]);
    mknod.extend(fs_state::FileHandle::root(1).as_bytes());
    mknod.extend(be(&[3]));
    mknod.extend(b"reg\0");
    mknod.extend(be(&[1])); // NF3REG
    s.write_all(&call(6, 100_003, 3, 11, &root_cred(), &mknod))
        .await
        .expect("send");
    let r = reply(&mut s).await.expect("reply");
    assert_eq!(verdict(&r), (0, 0));
    assert_eq!(word(&r, 6), 10007, "NFS3ERR_BADTYPE");
    // AUTH_UNIX claiming 2^32-1 groups, and 17 groups: AUTH_BADCRED, nothing allocated.
    s.write_all(&call(7, 100_003, 3, 0, &be(&[1, 0, 0, 0, u32::MAX]), &[]))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (1, 1),
        "AUTH_BADCRED"
    );
    let mut many = be(&[1, 0, 0, 0, 17]);
    many.extend(be(&[0; 17]));
    s.write_all(&call(8, 100_003, 3, 0, &many, &[]))
        .await
        .expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (1, 1),
        "AUTH_BADCRED"
    );
    // An unsupported flavor (AUTH_DES).
    let des = be(&[0x8000_0028, 9, 0, 2, 100_003, 3, 1, 3, 0, 0, 0]);
    s.write_all(&des).await.expect("send");
    assert_eq!(
        verdict(&reply(&mut s).await.expect("reply")),
        (1, 5),
        "AUTH_TOOWEAK"
    );

    // A 2 GiB record is refused before any of it arrives: the connection closes.
    s.write_all(&0xffff_ffffu32.to_be_bytes())
        .await
        .expect("send");
    assert!(reply(&mut s).await.is_none(), "connection closed");
    // So is a header that is not a call at all.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&[0x80, 0, 0, 4, 1, 2, 3, 4])
        .await
        .expect("send");
    assert!(reply(&mut s).await.is_none(), "connection closed");

    // Other clients are served throughout.
    let mut c = connect(addr, 0, 0).await;
    c.null().await.expect("still serving");
    let root = c.root_nfs_fh3();
    c.getattr(&GETATTR3args { object: root })
        .await
        .expect("rpc")
        .unwrap();
}

#[tokio::test]
async fn calls_sent_before_a_half_close_are_answered() {
    let server = TestServer::start();
    let mut s = TcpStream::connect(server.addr()).await.expect("connect");
    let mut calls = Vec::new();
    for xid in 100..104 {
        calls.extend(call(xid, 100_003, 3, 0, &root_cred(), &[]));
    }
    s.write_all(&calls).await.expect("send");
    s.shutdown().await.expect("half-close");
    let mut xids = BTreeSet::new();
    for _ in 0..4 {
        let r = reply(&mut s).await.expect("reply");
        assert_eq!(verdict(&r), (0, 0));
        xids.insert(word(&r, 0));
    }
    assert_eq!(xids, (100..104).collect());
    assert!(reply(&mut s).await.is_none(), "then the server closes");
}
