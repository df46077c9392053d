//! READDIR and READDIRPLUS paging: deterministic order and cookies across pages, also
//! while the directory changes between pages.

mod common;

use std::collections::BTreeSet;

use common::*;
use fs_state::*;

fn fill(n: &mut Node, count: usize) -> FileHandle {
    let root = n.root();
    let d = n.mkdir(&root, "big");
    for i in 0..count {
        n.create(&d, &format!("entry-{i:04}-{}", "x".repeat(i % 13)));
    }
    d
}

fn readdir_all(n: &mut Node, d: &FileHandle, count: u32) -> (Vec<Entry3>, usize) {
    let (mut cookie, mut verf, mut out, mut pages) = (0, [0; 8], Vec::new(), 0);
    loop {
        pages += 1;
        match n.ok(FsOp::Readdir {
            dir: d.clone(),
            cookie,
            cookieverf: verf,
            count,
        }) {
            ReplyBody::Readdir {
                cookieverf,
                entries,
                eof,
                ..
            } => {
                verf = cookieverf;
                cookie = entries.last().map_or(cookie, |e| e.cookie);
                out.extend(entries);
                if eof {
                    return (out, pages);
                }
            }
            b => panic!("{b:?}"),
        }
    }
}

fn readdirplus_all(
    n: &mut Node,
    d: &FileHandle,
    dircount: u32,
    maxcount: u32,
) -> (Vec<Entryplus3>, usize) {
    let (mut cookie, mut verf, mut out, mut pages) = (0, [0; 8], Vec::new(), 0);
    loop {
        pages += 1;
        match n.ok(FsOp::Readdirplus {
            dir: d.clone(),
            cookie,
            cookieverf: verf,
            dircount,
            maxcount,
        }) {
            ReplyBody::Readdirplus {
                cookieverf,
                entries,
                eof,
                ..
            } => {
                verf = cookieverf;
                cookie = entries.last().map_or(cookie, |e| e.cookie);
                out.extend(entries);
                if eof {
                    return (out, pages);
                }
            }
            b => panic!("{b:?}"),
        }
    }
}

#[test]
fn readdir_pages_over_1000_entries() {
    let mut n = Node::new();
    let d = fill(&mut n, 1000);
    let (all, pages) = readdir_all(&mut n, &d, 512);
    assert_eq!(all.len(), 1000);
    assert!(pages > 50, "small count makes many pages: {pages}");
    let names: Vec<_> = all.iter().map(|e| e.name.clone()).collect();
    let expected: Vec<_> = (0..1000)
        .map(|i| name(&format!("entry-{i:04}-{}", "x".repeat(i % 13))))
        .collect();
    assert_eq!(names, expected, "insertion order");
    let cookies: Vec<_> = all.iter().map(|e| e.cookie).collect();
    assert!(cookies.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        all.iter().map(|e| e.fileid).collect::<BTreeSet<_>>().len(),
        1000
    );
    // One big page gives the same entries.
    let (big, pages) = readdir_all(&mut n, &d, 1 << 20);
    assert_eq!(pages, 1);
    assert_eq!(big, all);
}

#[test]
fn readdirplus_pages_over_1000_entries() {
    let mut n = Node::new();
    let d = fill(&mut n, 1000);
    let (plain, _) = readdir_all(&mut n, &d, 4096);
    for (dircount, maxcount) in [(300, 100_000), (100_000, 1200), (512, 4096)] {
        let (all, pages) = readdirplus_all(&mut n, &d, dircount, maxcount);
        assert!(pages > 10);
        assert_eq!(all.len(), 1000);
        for (p, e) in all.iter().zip(&plain) {
            assert_eq!((p.fileid, &p.name, p.cookie), (e.fileid, &e.name, e.cookie));
            let a = p.name_attributes.as_ref().unwrap();
            assert_eq!(a.fileid, p.fileid);
            assert_eq!(p.name_handle.as_ref().unwrap().parse().unwrap().0, p.fileid);
        }
    }
}

#[test]
fn paging_survives_changes_between_pages() {
    let mut n = Node::new();
    let d = fill(&mut n, 100);
    let first = match n.ok(FsOp::Readdir {
        dir: d.clone(),
        cookie: 0,
        cookieverf: [0; 8],
        count: 1024,
    }) {
        ReplyBody::Readdir {
            entries,
            cookieverf,
            eof,
            ..
        } => {
            assert!(!eof);
            (entries, cookieverf)
        }
        b => panic!("{b:?}"),
    };
    let (entries, verf) = first;
    let last = entries.last().unwrap().cookie;
    // Remove an entry already listed and one not yet listed; add a new one.
    n.ok(FsOp::Remove {
        dir: d.clone(),
        name: entries[0].name.clone(),
    });
    n.ok(FsOp::Remove {
        dir: d.clone(),
        name: name(&format!("entry-0099-{}", "x".repeat(99 % 13))),
    });
    n.create(&d, "late");
    let mut rest = Vec::new();
    let mut cookie = last;
    loop {
        match n.ok(FsOp::Readdir {
            dir: d.clone(),
            cookie,
            cookieverf: verf,
            count: 1024,
        }) {
            ReplyBody::Readdir { entries, eof, .. } => {
                cookie = entries.last().map_or(cookie, |e| e.cookie);
                rest.extend(entries);
                if eof {
                    break;
                }
            }
            b => panic!("{b:?}"),
        }
    }
    let total = entries.len() + rest.len();
    assert_eq!(
        total, 100,
        "99 old survivors seen once, the removed-unseen one not, plus late"
    );
    assert_eq!(rest.last().unwrap().name, name("late"));
    let names: BTreeSet<_> = entries
        .iter()
        .chain(&rest)
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names.len(), total, "no duplicates");
}

#[test]
fn bad_cookies_and_small_counts() {
    let mut n = Node::new();
    let d = fill(&mut n, 10);
    let verf = match n.ok(FsOp::Readdir {
        dir: d.clone(),
        cookie: 0,
        cookieverf: [0; 8],
        count: 4096,
    }) {
        ReplyBody::Readdir { cookieverf, .. } => cookieverf,
        b => panic!("{b:?}"),
    };
    assert_eq!(
        n.err(FsOp::Readdir {
            dir: d.clone(),
            cookie: 3,
            cookieverf: *b"wrongvrf",
            count: 4096
        }),
        NfsStat3::BadCookie
    );
    assert_eq!(
        n.err(FsOp::Readdir {
            dir: d.clone(),
            cookie: 1_000_000,
            cookieverf: verf,
            count: 4096
        }),
        NfsStat3::BadCookie
    );
    assert_eq!(
        n.err(FsOp::Readdir {
            dir: d.clone(),
            cookie: 0,
            cookieverf: verf,
            count: 100
        }),
        NfsStat3::Toosmall
    );
    assert_eq!(
        n.err(FsOp::Readdirplus {
            dir: d.clone(),
            cookie: 0,
            cookieverf: verf,
            dircount: 4096,
            maxcount: 200
        }),
        NfsStat3::Toosmall
    );
    let f = n.lookup(&d, "entry-0001-x").unwrap();
    assert_eq!(
        n.err(FsOp::Readdir {
            dir: f,
            cookie: 0,
            cookieverf: verf,
            count: 4096
        }),
        NfsStat3::Notdir
    );
    // The last cookie of a complete listing gives an empty, eof page.
    let last = match n.ok(FsOp::Readdir {
        dir: d.clone(),
        cookie: 0,
        cookieverf: verf,
        count: 1 << 16,
    }) {
        ReplyBody::Readdir { entries, .. } => entries.last().unwrap().cookie,
        b => panic!("{b:?}"),
    };
    match n.ok(FsOp::Readdir {
        dir: d.clone(),
        cookie: last,
        cookieverf: verf,
        count: 200,
    }) {
        ReplyBody::Readdir { entries, eof, .. } => assert!(entries.is_empty() && eof),
        b => panic!("{b:?}"),
    }
}
