//! The NFSv3 procedures (RFC 1813 section 3.3), applied to replicated metadata and the
//! backing tree.
//!
//! Every handler reads as: resolve handles, validate names, check permissions and
//! every other condition that can fail with an NFS error, and only then change the
//! backing tree and the metadata. So an NFS error never leaves a half-applied change,
//! and the only failure after the first change is a `LocalFault` (this replica's disk
//! misbehaved), which poisons the state machine instead of becoming a reply. Times come
//! from `OpContext::timestamp_ns`, never from the host clock; READ does not touch atime
//! (it takes the read-only path and must not change state).

use crate::error::LocalFault;
use crate::meta::{DirEntry, Inode};
use crate::ops::*;
use crate::perm::{self};
use crate::state::FileStateMachine;

mod attrs;
mod listing;
mod namespace;

pub(crate) enum OpError {
    Nfs(NfsStat3),
    Local(LocalFault),
}

impl From<NfsStat3> for OpError {
    fn from(s: NfsStat3) -> Self {
        OpError::Nfs(s)
    }
}

impl From<LocalFault> for OpError {
    fn from(f: LocalFault) -> Self {
        OpError::Local(f)
    }
}

type OpResult = Result<ReplyBody, OpError>;

/// `Err(status)` unless `cond`.
fn ensure(cond: bool, status: NfsStat3) -> Result<(), OpError> {
    if cond {
        Ok(())
    } else {
        Err(OpError::Nfs(status))
    }
}

fn not_dir_status(ftype: FType3) -> NfsStat3 {
    match ftype {
        FType3::Dir => NfsStat3::Isdir,
        _ => NfsStat3::Inval,
    }
}

impl FileStateMachine {
    pub(crate) fn apply_op(&mut self, ctx: &OpContext, op: &FsOp) -> Result<FsReply, LocalFault> {
        let mutating;
        let ctx = if is_read_only(op) {
            ctx
        } else {
            // Strictly after the previous change, even within one batch (see
            // `Meta::last_time_ns`); recorded only if the operation succeeds, so a
            // failed one changes no state at all.
            let t = ctx.timestamp_ns.max(self.meta.last_time_ns + 1);
            mutating = OpContext {
                timestamp_ns: t,
                cred: ctx.cred.clone(),
            };
            &mutating
        };
        let result = match op {
            FsOp::Getattr { fh } => self.getattr(fh),
            FsOp::Setattr {
                fh,
                attrs,
                guard_ctime,
            } => self.setattr(ctx, fh, attrs, *guard_ctime),
            FsOp::Lookup { dir, name } => self.lookup(ctx, dir, name),
            FsOp::Access { fh, mask } => self.access(ctx, fh, *mask),
            FsOp::Readlink { fh } => self.readlink(fh),
            FsOp::Read { fh, offset, count } => self.read(ctx, fh, *offset, *count),
            FsOp::Write {
                fh,
                offset,
                stable,
                data,
            } => self.write(ctx, fh, *offset, *stable, data),
            FsOp::Create { dir, name, how } => self.create(ctx, dir, name, how),
            FsOp::Mkdir { dir, name, attrs } => self.mkdir(ctx, dir, name, attrs),
            FsOp::Symlink {
                dir,
                name,
                target,
                attrs,
            } => self.symlink(ctx, dir, name, target, attrs),
            FsOp::Mknod { dir, name, what } => self.mknod(dir, name, what),
            FsOp::Remove { dir, name } => self.remove(ctx, dir, name),
            FsOp::Rmdir { dir, name } => self.rmdir(ctx, dir, name),
            FsOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
            } => self.rename(ctx, from_dir, from_name, to_dir, to_name),
            FsOp::Link { fh, dir, name } => self.link(ctx, fh, dir, name),
            FsOp::Readdir {
                dir,
                cookie,
                cookieverf,
                count,
            } => self.readdir(ctx, dir, *cookie, *cookieverf, *count),
            FsOp::Readdirplus {
                dir,
                cookie,
                cookieverf,
                dircount,
                maxcount,
            } => self.readdirplus(ctx, dir, *cookie, *cookieverf, *dircount, *maxcount),
            FsOp::Fsstat { fh } => self.fsstat(fh),
            FsOp::Fsinfo { fh } => self.fsinfo(fh),
            FsOp::Pathconf { fh } => self.pathconf(fh),
            FsOp::Commit { fh, .. } => self.commit(fh),
        };
        match result {
            Ok(body) => {
                if !is_read_only(op) {
                    self.meta.last_time_ns = ctx.timestamp_ns;
                    self.dirty.globals = true;
                }
                Ok(FsReply::ok(body))
            }
            Err(OpError::Nfs(status)) => Ok(FsReply::fail(status, self.fail_attrs(op))),
            Err(OpError::Local(fault)) => Err(fault),
        }
    }

    /// fileid of a handle: `BADHANDLE` if it is not one of ours, `STALE` if the object
    /// is gone (fileids are never reused) or from another export generation.
    pub(crate) fn resolve(&self, fh: &FileHandle) -> Result<u64, OpError> {
        let (id, generation) = fh.parse().ok_or(NfsStat3::Badhandle)?;
        let inode = self.meta.inodes.get(&id).ok_or(NfsStat3::Stale)?;
        ensure(inode.generation == generation, NfsStat3::Stale)?;
        if self.damaged.contains(&id) {
            return Err(LocalFault::inconsistent(format!("object {id} is damaged")).into());
        }
        Ok(id)
    }

    pub(crate) fn resolve_dir(&self, fh: &FileHandle) -> Result<u64, OpError> {
        let id = self.resolve(fh)?;
        ensure(self.ino(id).ftype == FType3::Dir, NfsStat3::Notdir)?;
        Ok(id)
    }

    pub(crate) fn ino(&self, id: u64) -> &Inode {
        &self.meta.inodes[&id]
    }

    pub(crate) fn fattr(&self, id: u64) -> Fattr3 {
        self.ino(id).fattr(id, &self.config)
    }

    pub(crate) fn wcc_before(&self, id: u64) -> WccAttr {
        self.ino(id).wcc()
    }

    pub(crate) fn wcc(&self, before: WccAttr, id: u64) -> WccData {
        WccData {
            before: Some(before),
            after: Some(self.fattr(id)),
        }
    }

    /// Attributes of a handle for a failure body, from metadata only.
    pub(crate) fn post_op(&self, fh: &FileHandle) -> Option<Fattr3> {
        let (id, generation) = fh.parse()?;
        let inode = self.meta.inodes.get(&id)?;
        (inode.generation == generation).then(|| inode.fattr(id, &self.config))
    }

    pub(crate) fn wcc_unchanged(&self, fh: &FileHandle) -> WccData {
        match self.post_op(fh) {
            Some(after) => WccData {
                before: Some(WccAttr {
                    size: after.size,
                    mtime: after.mtime,
                    ctime: after.ctime,
                }),
                after: Some(after),
            },
            None => WccData::default(),
        }
    }

    /// The `resfail` body of `op`. Failures change nothing, so the attributes after are
    /// the attributes before.
    pub(crate) fn fail_attrs(&self, op: &FsOp) -> FailAttrs {
        match op {
            FsOp::Getattr { .. } => FailAttrs::None,
            FsOp::Setattr { fh, .. } | FsOp::Write { fh, .. } | FsOp::Commit { fh, .. } => {
                FailAttrs::Wcc(self.wcc_unchanged(fh))
            }
            FsOp::Lookup { dir, .. }
            | FsOp::Readdir { dir, .. }
            | FsOp::Readdirplus { dir, .. } => FailAttrs::PostOp(self.post_op(dir)),
            FsOp::Access { fh, .. }
            | FsOp::Readlink { fh }
            | FsOp::Read { fh, .. }
            | FsOp::Fsstat { fh }
            | FsOp::Fsinfo { fh }
            | FsOp::Pathconf { fh } => FailAttrs::PostOp(self.post_op(fh)),
            FsOp::Create { dir, .. }
            | FsOp::Mkdir { dir, .. }
            | FsOp::Symlink { dir, .. }
            | FsOp::Mknod { dir, .. }
            | FsOp::Remove { dir, .. }
            | FsOp::Rmdir { dir, .. } => FailAttrs::Wcc(self.wcc_unchanged(dir)),
            FsOp::Rename {
                from_dir, to_dir, ..
            } => FailAttrs::Rename {
                fromdir_wcc: self.wcc_unchanged(from_dir),
                todir_wcc: self.wcc_unchanged(to_dir),
            },
            FsOp::Link { fh, dir, .. } => FailAttrs::Link {
                file_attributes: self.post_op(fh),
                linkdir_wcc: self.wcc_unchanged(dir),
            },
        }
    }

    pub(crate) fn may(&self, ctx: &OpContext, id: u64, want: u32) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions || perm::may(&ctx.cred, self.ino(id), want),
            NfsStat3::Acces,
        )
    }

    pub(crate) fn may_data(&self, ctx: &OpContext, id: u64, want: u32) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions || perm::may_data(&ctx.cred, self.ino(id), want),
            NfsStat3::Acces,
        )
    }

    pub(crate) fn may_delete(&self, ctx: &OpContext, dir: u64, victim: u64) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions
                || perm::may_delete_in_sticky(&ctx.cred, self.ino(dir), self.ino(victim)),
            NfsStat3::Acces,
        )
    }

    pub(crate) fn entry(&self, dir: u64, name: &Filename3) -> Option<DirEntry> {
        self.meta.dirs[&dir].get(name)
    }

    pub(crate) fn mark_inode(&mut self, id: u64) {
        self.dirty.inodes.insert(id);
        self.stale_leaves.insert(id);
    }

    pub(crate) fn touch_dir(&mut self, dir: u64, now: NfsTime) {
        self.meta.update_inode(dir, |d| {
            d.mtime = now;
            d.ctime = now;
        });
        self.mark_inode(dir);
        self.dirty.dirs_sync.insert(dir);
    }

    pub(crate) fn add_entry(&mut self, dir: u64, name: &Filename3, fileid: u64) {
        let seq = self.meta.update_inode(dir, |d| {
            let s = d.next_seq;
            d.next_seq += 1;
            s
        });
        self.meta
            .dirs
            .get_mut(&dir)
            .expect("directory table")
            .insert(name.clone(), DirEntry { seq, fileid });
        self.dirty.entries.insert((dir, name.clone()));
        self.mark_inode(dir);
        self.dirty.dirs_sync.insert(dir);
    }

    pub(crate) fn del_entry(&mut self, dir: u64, name: &Filename3) {
        self.meta
            .dirs
            .get_mut(&dir)
            .expect("directory table")
            .remove(name);
        self.dirty.entries.insert((dir, name.clone()));
        self.mark_inode(dir);
        self.dirty.dirs_sync.insert(dir);
    }

    pub(crate) fn alloc_fileid(&mut self) -> u64 {
        let id = self.meta.next_fileid;
        self.meta.next_fileid += 1;
        self.dirty.globals = true;
        id
    }

    pub(crate) fn delete_inode(&mut self, id: u64) {
        self.meta.del_inode(id);
        self.fds.remove(id);
        self.mark_inode(id);
        self.stale_chunks.remove(&id);
        self.dirty.chunks_journal.remove(&id);
        self.dirty.data_sync.remove(&id);
        self.dirty.data_unstable.remove(&id);
        self.dirty.dirs_sync.remove(&id);
    }

    /// Drop the name (dir, name) of `id`; the object goes with its last name.
    pub(crate) fn drop_name(&mut self, dir: u64, name: &Filename3, id: u64, now: NfsTime) {
        self.del_entry(dir, name);
        let ftype = self.ino(id).ftype;
        if ftype == FType3::Dir {
            self.meta.update_inode(dir, |d| d.subdirs -= 1);
            self.delete_inode(id);
            return;
        }
        let gone = self.meta.update_inode(id, |i| {
            i.links.remove(&(dir, name.clone()));
            i.ctime = now;
            i.links.is_empty()
        });
        if gone {
            self.delete_inode(id);
        } else {
            self.mark_inode(id);
        }
    }
}
