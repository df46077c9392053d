//! Helpers shared by the integration tests: a state machine in a temp dir, a clock
//! that advances per operation, and shorthands for the common procedures.
#![allow(dead_code)]

use std::path::Path;

use fs_state::*;

pub const T0: u64 = 1_700_000_000_000_000_000;

pub fn root_cred() -> AuthUnix {
    AuthUnix::root()
}

pub fn user(uid: u32, gid: u32) -> AuthUnix {
    AuthUnix {
        uid,
        gid,
        gids: vec![gid],
    }
}

pub fn name(s: &str) -> Filename3 {
    Filename3::from(s)
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub sm: FileStateMachine,
    pub now: u64,
    pub cred: AuthUnix,
}

impl Node {
    pub fn new() -> Self {
        Self::with_config(FsConfig::default())
    }

    pub fn with_config(config: FsConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sm = FileStateMachine::open(dir.path(), config).unwrap();
        Node {
            dir,
            sm,
            now: T0,
            cred: root_cred(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn export(&self) -> std::path::PathBuf {
        self.sm.export_dir()
    }

    pub fn ctx(&mut self) -> OpContext {
        self.now += 1_000_000;
        OpContext {
            timestamp_ns: self.now,
            cred: self.cred.clone(),
        }
    }

    pub fn run(&mut self, op: FsOp) -> FsReply {
        let ctx = self.ctx();
        let reply = self.sm.apply(&ctx, &op).expect("no local fault");
        // O(objects): only while small, so that 1000-entry tests stay fast.
        if self.sm.object_count() < 200 {
            self.sm.check_invariants().expect("metadata invariants");
        }
        reply
    }

    pub fn run_as(&mut self, cred: AuthUnix, op: FsOp) -> FsReply {
        let saved = std::mem::replace(&mut self.cred, cred);
        let r = self.run(op);
        self.cred = saved;
        r
    }

    pub fn root(&self) -> FileHandle {
        self.sm.root_handle()
    }

    pub fn ok(&mut self, op: FsOp) -> ReplyBody {
        let r = self.run(op.clone());
        match r.0 {
            Ok(b) => b,
            Err(e) => panic!("{op:?} failed: {e:?}"),
        }
    }

    pub fn err(&mut self, op: FsOp) -> NfsStat3 {
        let r = self.run(op.clone());
        match r.0 {
            Ok(b) => panic!("{op:?} succeeded: {b:?}"),
            Err(e) => e.status,
        }
    }

    pub fn create(&mut self, dir: &FileHandle, n: &str) -> FileHandle {
        match self.ok(FsOp::Create {
            dir: dir.clone(),
            name: name(n),
            how: CreateHow::Unchecked(Sattr3 {
                mode: Some(0o644),
                ..Default::default()
            }),
        }) {
            ReplyBody::Create { obj: Some(fh), .. } => fh,
            b => panic!("{b:?}"),
        }
    }

    pub fn mkdir(&mut self, dir: &FileHandle, n: &str) -> FileHandle {
        match self.ok(FsOp::Mkdir {
            dir: dir.clone(),
            name: name(n),
            attrs: Sattr3 {
                mode: Some(0o755),
                ..Default::default()
            },
        }) {
            ReplyBody::Create { obj: Some(fh), .. } => fh,
            b => panic!("{b:?}"),
        }
    }

    pub fn remove(&mut self, dir: &FileHandle, n: &str) {
        self.ok(FsOp::Remove {
            dir: dir.clone(),
            name: name(n),
        });
    }

    pub fn rmdir(&mut self, dir: &FileHandle, n: &str) {
        self.ok(FsOp::Rmdir {
            dir: dir.clone(),
            name: name(n),
        });
    }

    pub fn write(&mut self, fh: &FileHandle, offset: u64, data: &[u8]) -> ReplyBody {
        self.ok(FsOp::Write {
            fh: fh.clone(),
            offset,
            stable: StableHow::FileSync,
            data: data.to_vec(),
        })
    }

    pub fn read(&mut self, fh: &FileHandle, offset: u64, count: u32) -> (Vec<u8>, bool) {
        match self.ok(FsOp::Read {
            fh: fh.clone(),
            offset,
            count,
        }) {
            ReplyBody::Read { data, eof, .. } => (data, eof),
            b => panic!("{b:?}"),
        }
    }

    pub fn getattr(&mut self, fh: &FileHandle) -> Fattr3 {
        match self.ok(FsOp::Getattr { fh: fh.clone() }) {
            ReplyBody::Getattr { obj_attributes } => obj_attributes,
            b => panic!("{b:?}"),
        }
    }

    pub fn lookup(&mut self, dir: &FileHandle, n: &str) -> Result<FileHandle, NfsStat3> {
        match self
            .run(FsOp::Lookup {
                dir: dir.clone(),
                name: name(n),
            })
            .0
        {
            Ok(ReplyBody::Lookup { object, .. }) => Ok(object),
            Ok(b) => panic!("{b:?}"),
            Err(e) => Err(e.status),
        }
    }

    /// Reopen the same data directory (as after a crash: no clean close).
    pub fn reopen(&mut self) {
        let config = self.sm.config().clone();
        let placeholder = tempfile::tempdir().unwrap();
        let old = std::mem::replace(
            &mut self.sm,
            FileStateMachine::open(placeholder.path(), config.clone()).unwrap(),
        );
        drop(old);
        self.sm = FileStateMachine::open(self.dir.path(), config).unwrap();
    }

    /// All names in a directory via READDIR with a generous count.
    pub fn list(&mut self, dir: &FileHandle) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut cookie = 0;
        let mut verf = [0; 8];
        loop {
            match self.ok(FsOp::Readdir {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count: 64 << 10,
            }) {
                ReplyBody::Readdir {
                    cookieverf,
                    entries,
                    eof,
                    ..
                } => {
                    verf = cookieverf;
                    for e in entries {
                        cookie = e.cookie;
                        out.push((String::from_utf8_lossy(&e.name.0).into_owned(), e.fileid));
                    }
                    if eof {
                        return out;
                    }
                }
                b => panic!("{b:?}"),
            }
        }
    }
}

/// `diff -r --no-dereference` of two trees: Ok if identical.
pub fn diff_trees(a: &Path, b: &Path) -> Result<(), String> {
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
