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

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use crate::confine::{self, NameKind, NameUse, check_name};
use crate::dir;
use crate::error::{Ctx, LocalFault};
use crate::meta::{DIR_SIZE, DirEntry, Inode};
use crate::ops::*;
use crate::perm::{self, R, W, X};
use crate::state::FileStateMachine;

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
            let t = ctx.timestamp_ns.max(self.meta.last_time_ns + 1);
            self.meta.last_time_ns = t;
            self.dirty.globals = true;
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
            Ok(body) => Ok(FsReply::ok(body)),
            Err(OpError::Nfs(status)) => Ok(FsReply::fail(status, self.fail_attrs(op))),
            Err(OpError::Local(fault)) => Err(fault),
        }
    }

    // ---- handles, attributes, failure bodies -------------------------------------

    /// fileid of a handle: `BADHANDLE` if it is not one of ours, `STALE` if the object
    /// is gone (fileids are never reused) or from another export generation.
    fn resolve(&self, fh: &FileHandle) -> Result<u64, OpError> {
        let (id, generation) = fh.parse().ok_or(NfsStat3::Badhandle)?;
        let inode = self.meta.inodes.get(&id).ok_or(NfsStat3::Stale)?;
        ensure(inode.generation == generation, NfsStat3::Stale)?;
        if self.damaged.contains(&id) {
            return Err(LocalFault::inconsistent(format!("object {id} is damaged")).into());
        }
        Ok(id)
    }

    fn resolve_dir(&self, fh: &FileHandle) -> Result<u64, OpError> {
        let id = self.resolve(fh)?;
        ensure(self.ino(id).ftype == FType3::Dir, NfsStat3::Notdir)?;
        Ok(id)
    }

    fn ino(&self, id: u64) -> &Inode {
        &self.meta.inodes[&id]
    }

    fn fattr(&self, id: u64) -> Fattr3 {
        self.ino(id).fattr(id, &self.config)
    }

    fn wcc_before(&self, id: u64) -> WccAttr {
        self.ino(id).wcc()
    }

    fn wcc(&self, before: WccAttr, id: u64) -> WccData {
        WccData {
            before: Some(before),
            after: Some(self.fattr(id)),
        }
    }

    /// Attributes of a handle for a failure body, from metadata only.
    fn post_op(&self, fh: &FileHandle) -> Option<Fattr3> {
        let (id, generation) = fh.parse()?;
        let inode = self.meta.inodes.get(&id)?;
        (inode.generation == generation).then(|| inode.fattr(id, &self.config))
    }

    fn wcc_unchanged(&self, fh: &FileHandle) -> WccData {
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
    fn fail_attrs(&self, op: &FsOp) -> FailAttrs {
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

    fn may(&self, ctx: &OpContext, id: u64, want: u32) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions || perm::may(&ctx.cred, self.ino(id), want),
            NfsStat3::Acces,
        )
    }

    fn may_data(&self, ctx: &OpContext, id: u64, want: u32) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions || perm::may_data(&ctx.cred, self.ino(id), want),
            NfsStat3::Acces,
        )
    }

    fn may_delete(&self, ctx: &OpContext, dir: u64, victim: u64) -> Result<(), OpError> {
        ensure(
            !self.config.check_permissions
                || perm::may_delete_in_sticky(&ctx.cred, self.ino(dir), self.ino(victim)),
            NfsStat3::Acces,
        )
    }

    fn entry(&self, dir: u64, name: &Filename3) -> Option<DirEntry> {
        self.meta.dirs[&dir].get(name)
    }

    // ---- metadata mutations (after all checks) --------------------------------

    fn mark_inode(&mut self, id: u64) {
        self.dirty.inodes.insert(id);
        self.stale_leaves.insert(id);
    }

    fn touch_dir(&mut self, dir: u64, now: NfsTime) {
        self.meta.update_inode(dir, |d| {
            d.mtime = now;
            d.ctime = now;
        });
        self.mark_inode(dir);
        self.dirty.dirs_sync.insert(dir);
    }

    fn add_entry(&mut self, dir: u64, name: &Filename3, fileid: u64) {
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

    fn del_entry(&mut self, dir: u64, name: &Filename3) {
        self.meta
            .dirs
            .get_mut(&dir)
            .expect("directory table")
            .remove(name);
        self.dirty.entries.insert((dir, name.clone()));
        self.mark_inode(dir);
        self.dirty.dirs_sync.insert(dir);
    }

    fn alloc_fileid(&mut self) -> u64 {
        let id = self.meta.next_fileid;
        self.meta.next_fileid += 1;
        self.dirty.globals = true;
        id
    }

    fn delete_inode(&mut self, id: u64) {
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
    fn drop_name(&mut self, dir: u64, name: &Filename3, id: u64, now: NfsTime) {
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

    // ---- attributes on creation and SETATTR --------------------------------------

    /// Owner, group and mode of a new object (knfsd-like: the caller owns it, the
    /// group is inherited from a setgid directory), with the request's `sattr3`.
    fn initial_owner(
        &self,
        ctx: &OpContext,
        parent: u64,
        ftype: FType3,
        attrs: &Sattr3,
    ) -> Result<(u32, u32, u32), OpError> {
        let p = self.ino(parent);
        let cred = &ctx.cred;
        let setgid_dir = p.mode & 0o2000 != 0;
        let default_gid = if setgid_dir { p.gid } else { cred.gid };
        let checking = self.config.check_permissions && cred.uid != 0;
        let uid = match attrs.uid {
            Some(u) => {
                ensure(!checking || u == cred.uid, NfsStat3::Perm)?;
                u
            }
            None => cred.uid,
        };
        let gid = match attrs.gid {
            Some(g) => {
                ensure(
                    !checking || g == default_gid || cred.in_group(g),
                    NfsStat3::Perm,
                )?;
                g
            }
            None => default_gid,
        };
        let mut mode = match ftype {
            FType3::Lnk => 0o777,
            FType3::Dir => attrs.mode.unwrap_or(0o755),
            _ => attrs.mode.unwrap_or(0o644),
        } & 0o7777;
        if ftype == FType3::Dir && setgid_dir {
            mode |= 0o2000;
        }
        Ok((mode, uid, gid))
    }

    fn new_inode(
        &self,
        ftype: FType3,
        owner: (u32, u32, u32),
        attrs: &Sattr3,
        now: NfsTime,
    ) -> Inode {
        let t = |s: SetTime| match s {
            SetTime::ClientTime(t) => t,
            SetTime::DontChange | SetTime::ServerTime => now,
        };
        Inode {
            ftype,
            mode: owner.0,
            uid: owner.1,
            gid: owner.2,
            size: if ftype == FType3::Dir { DIR_SIZE } else { 0 },
            atime: t(attrs.atime),
            mtime: t(attrs.mtime),
            ctime: now,
            generation: self.config.generation,
            links: BTreeSet::new(),
            target: None,
            create_verf: None,
            next_seq: 1,
            subdirs: 0,
        }
    }

    /// Check that `cred` may apply `attrs` to `id` (RFC 1813 SETATTR, POSIX rules).
    fn check_sattr(&self, ctx: &OpContext, id: u64, attrs: &Sattr3) -> Result<(), OpError> {
        let ino = self.ino(id);
        let cred = &ctx.cred;
        let checking = self.config.check_permissions;
        let owner = !checking || perm::is_owner_or_root(cred, ino);
        if attrs.mode.is_some() {
            ensure(owner, NfsStat3::Perm)?;
        }
        if let Some(u) = attrs.uid {
            ensure(!checking || cred.uid == 0 || u == ino.uid, NfsStat3::Perm)?;
        }
        if let Some(g) = attrs.gid {
            ensure(
                !checking || cred.uid == 0 || g == ino.gid || (owner && cred.in_group(g)),
                NfsStat3::Perm,
            )?;
        }
        if let Some(size) = attrs.size {
            ensure(ino.ftype == FType3::Reg, not_dir_status(ino.ftype))?;
            ensure(size <= self.config.maxfilesize, NfsStat3::Fbig)?;
            self.may_data(ctx, id, W)?;
            self.check_quota(ino.size, size)?;
        }
        for t in [attrs.atime, attrs.mtime] {
            match t {
                SetTime::DontChange => {}
                SetTime::ClientTime(_) => ensure(owner, NfsStat3::Perm)?,
                SetTime::ServerTime => ensure(owner || perm::may(cred, ino, W), NfsStat3::Acces)?,
            }
        }
        Ok(())
    }

    /// Growing a file from `old` to `new` bytes must stay within `bytes_total`.
    fn check_quota(&self, old: u64, new: u64) -> Result<(), OpError> {
        let blocks = |s: u64| s.div_ceil(crate::meta::BLOCK_BYTES) * crate::meta::BLOCK_BYTES;
        let grow = blocks(new).saturating_sub(blocks(old));
        ensure(
            self.meta.bytes_used.saturating_add(grow) <= self.config.bytes_total,
            NfsStat3::Nospc,
        )
    }

    fn check_files_quota(&self) -> Result<(), OpError> {
        ensure(
            (self.meta.inodes.len() as u64) < self.config.files_total,
            NfsStat3::Nospc,
        )
    }

    /// Apply checked `attrs` to `id`.
    fn apply_sattr(&mut self, id: u64, attrs: &Sattr3, now: NfsTime) -> Result<(), LocalFault> {
        let ino = self.ino(id).clone();
        let mut mtime_now = false;
        if let Some(size) = attrs.size {
            if size != ino.size {
                let f = self.fd(id)?;
                rustix::fs::ftruncate(&*f, size).ctx("ftruncate")?;
                self.note_content_change(id, ino.size, size, None);
                self.data_dirty(id, StableHow::FileSync);
            }
            mtime_now = true;
        }
        self.meta.update_inode(id, |i| {
            if let Some(size) = attrs.size {
                i.size = size;
            }
            if let Some(m) = attrs.mode {
                i.mode = m & 0o7777;
            }
            if let Some(u) = attrs.uid {
                i.uid = u;
            }
            if let Some(g) = attrs.gid {
                i.gid = g;
            }
            if mtime_now {
                i.mtime = now;
            }
            match attrs.atime {
                SetTime::DontChange => {}
                SetTime::ServerTime => i.atime = now,
                SetTime::ClientTime(t) => i.atime = t,
            }
            match attrs.mtime {
                SetTime::DontChange => {}
                SetTime::ServerTime => i.mtime = now,
                SetTime::ClientTime(t) => i.mtime = t,
            }
            i.ctime = now;
        });
        self.mark_inode(id);
        Ok(())
    }

    fn data_dirty(&mut self, id: u64, stable: StableHow) {
        if self.write_policy_unstable() && stable == StableHow::Unstable {
            if !self.dirty.data_sync.contains(&id) {
                self.dirty.data_unstable.insert(id);
            }
        } else {
            self.dirty.data_unstable.remove(&id);
            self.dirty.data_sync.insert(id);
        }
    }

    // ---- procedures --------------------------------------------------------------

    fn getattr(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        Ok(ReplyBody::Getattr {
            obj_attributes: self.fattr(id),
        })
    }

    fn setattr(
        &mut self,
        ctx: &OpContext,
        fh: &FileHandle,
        attrs: &Sattr3,
        guard_ctime: Option<NfsTime>,
    ) -> OpResult {
        let id = self.resolve(fh)?;
        if let Some(g) = guard_ctime {
            ensure(self.ino(id).ctime == g, NfsStat3::NotSync)?;
        }
        self.check_sattr(ctx, id, attrs)?;
        let before = self.wcc_before(id);
        self.apply_sattr(id, attrs, NfsTime::from_ns(ctx.timestamp_ns))?;
        Ok(ReplyBody::Setattr {
            obj_wcc: self.wcc(before, id),
        })
    }

    fn lookup(&mut self, ctx: &OpContext, dir: &FileHandle, name: &Filename3) -> OpResult {
        let d = self.resolve_dir(dir)?;
        let kind = check_name(name, self.config.name_max, NameUse::Lookup)?;
        self.may(ctx, d, X)?;
        let id = match kind {
            NameKind::Dot => d,
            NameKind::DotDot => self.ino(d).primary_link().map_or(ROOT_FILEID, |(p, _)| *p),
            NameKind::Normal => self.entry(d, name).ok_or(NfsStat3::Noent)?.fileid,
        };
        Ok(ReplyBody::Lookup {
            object: self.ino(id).handle(id),
            obj_attributes: Some(self.fattr(id)),
            dir_attributes: Some(self.fattr(d)),
        })
    }

    fn access(&mut self, ctx: &OpContext, fh: &FileHandle, mask: u32) -> OpResult {
        let id = self.resolve(fh)?;
        let access = if self.config.check_permissions {
            perm::access_bits(&ctx.cred, self.ino(id), mask)
        } else {
            mask & 0x3f
        };
        Ok(ReplyBody::Access {
            obj_attributes: Some(self.fattr(id)),
            access,
        })
    }

    fn readlink(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        let ino = self.ino(id);
        ensure(ino.ftype == FType3::Lnk, NfsStat3::Inval)?;
        Ok(ReplyBody::Readlink {
            symlink_attributes: Some(self.fattr(id)),
            data: ino.target.clone().expect("symlink has a target"),
        })
    }

    fn read(&mut self, ctx: &OpContext, fh: &FileHandle, offset: u64, count: u32) -> OpResult {
        let id = self.resolve(fh)?;
        let ftype = self.ino(id).ftype;
        ensure(ftype == FType3::Reg, not_dir_status(ftype))?;
        self.may_data(ctx, id, R)?;
        let size = self.ino(id).size;
        let count = count.min(self.config.rtmax) as u64;
        let n = if offset >= size {
            0
        } else {
            count.min(size - offset)
        };
        let mut data = vec![0u8; n as usize];
        if n > 0 {
            let f = self.fd(id)?;
            f.read_exact_at(&mut data, offset).ctx("read")?;
        }
        Ok(ReplyBody::Read {
            file_attributes: Some(self.fattr(id)),
            count: n as u32,
            eof: offset.saturating_add(n) >= size,
            data,
        })
    }

    fn write(
        &mut self,
        ctx: &OpContext,
        fh: &FileHandle,
        offset: u64,
        stable: StableHow,
        data: &[u8],
    ) -> OpResult {
        let id = self.resolve(fh)?;
        let ftype = self.ino(id).ftype;
        ensure(ftype == FType3::Reg, not_dir_status(ftype))?;
        self.may_data(ctx, id, W)?;
        let data = &data[..data.len().min(self.config.wtmax as usize)];
        let len = data.len() as u64;
        let end = offset.checked_add(len).ok_or(NfsStat3::Fbig)?;
        ensure(end <= self.config.maxfilesize, NfsStat3::Fbig)?;
        let old_size = self.ino(id).size;
        let new_size = old_size.max(end);
        self.check_quota(old_size, new_size)?;
        let before = self.wcc_before(id);
        if len > 0 {
            let now = NfsTime::from_ns(ctx.timestamp_ns);
            let f = self.fd(id)?;
            f.write_all_at(data, offset).ctx("write")?;
            self.note_content_change(id, old_size, new_size, Some((offset, len)));
            self.meta.update_inode(id, |i| {
                i.size = new_size;
                i.mtime = now;
                i.ctime = now;
            });
            self.mark_inode(id);
            self.data_dirty(id, stable);
        }
        let committed = if self.write_policy_unstable() {
            stable
        } else {
            StableHow::FileSync
        };
        Ok(ReplyBody::Write {
            file_wcc: self.wcc(before, id),
            count: len as u32,
            committed,
            verf: self.config.write_verifier,
        })
    }

    /// The common tail of CREATE, MKDIR and SYMLINK: enter the new object.
    fn enter_new(&mut self, d: u64, name: &Filename3, mut inode: Inode, now: NfsTime) -> u64 {
        let id = self.alloc_fileid();
        inode.links.insert((d, name.clone()));
        let is_dir = inode.ftype == FType3::Dir;
        self.meta.put_inode(id, inode);
        self.mark_inode(id);
        self.add_entry(d, name, id);
        if is_dir {
            self.meta.update_inode(d, |p| p.subdirs += 1);
        }
        self.touch_dir(d, now);
        id
    }

    fn created(&self, id: u64, dir_before: WccAttr, d: u64) -> ReplyBody {
        ReplyBody::Create {
            obj: Some(self.ino(id).handle(id)),
            obj_attributes: Some(self.fattr(id)),
            dir_wcc: self.wcc(dir_before, d),
        }
    }

    fn create(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
        how: &CreateHow,
    ) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Create)?;
        self.may(ctx, d, W | X)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        if let Some(e) = self.entry(d, name) {
            let existing = self.ino(e.fileid);
            return match how {
                CreateHow::Guarded(_) => Err(NfsStat3::Exist.into()),
                CreateHow::Exclusive(verf) => {
                    ensure(
                        existing.ftype == FType3::Reg && existing.create_verf == Some(*verf),
                        NfsStat3::Exist,
                    )?;
                    Ok(self.created(e.fileid, dir_before, d))
                }
                CreateHow::Unchecked(attrs) => {
                    // An existing regular file is opened, truncated if asked to.
                    ensure(existing.ftype == FType3::Reg, NfsStat3::Exist)?;
                    let only_size = Sattr3 {
                        size: attrs.size,
                        ..Sattr3::default()
                    };
                    if only_size.size.is_some() {
                        self.check_sattr(ctx, e.fileid, &only_size)?;
                        self.apply_sattr(e.fileid, &only_size, now)?;
                    }
                    Ok(self.created(e.fileid, dir_before, d))
                }
            };
        }
        self.check_files_quota()?;
        let (attrs, verf) = match how {
            CreateHow::Unchecked(a) | CreateHow::Guarded(a) => (a.clone(), None),
            CreateHow::Exclusive(v) => (Sattr3::default(), Some(*v)),
        };
        let owner = self.initial_owner(ctx, d, FType3::Reg, &attrs)?;
        if let Some(size) = attrs.size {
            ensure(size <= self.config.maxfilesize, NfsStat3::Fbig)?;
            self.check_quota(0, size)?;
        }
        let dfd = self.fd(d)?;
        let f = confine::create_file(&dfd, &name.0).ctx("create file")?;
        let size = attrs.size.unwrap_or(0);
        if size > 0 {
            rustix::fs::ftruncate(&f, size).ctx("ftruncate new file")?;
        }
        let mut inode = self.new_inode(FType3::Reg, owner, &attrs, now);
        inode.create_verf = verf;
        let id = self.enter_new(d, name, inode, now);
        self.fds.insert(id, std::rc::Rc::new(f));
        self.dirty.data_sync.insert(id);
        if size > 0 {
            self.meta.update_inode(id, |i| i.size = size);
            self.note_content_change(id, 0, size, None);
        }
        Ok(self.created(id, dir_before, d))
    }

    fn mkdir(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
        attrs: &Sattr3,
    ) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Create)?;
        self.may(ctx, d, W | X)?;
        ensure(self.entry(d, name).is_none(), NfsStat3::Exist)?;
        self.check_files_quota()?;
        ensure(
            self.ino(d).subdirs + 2 < self.config.link_max,
            NfsStat3::Mlink,
        )?;
        let owner = self.initial_owner(ctx, d, FType3::Dir, attrs)?;
        self.check_quota(0, DIR_SIZE)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let dfd = self.fd(d)?;
        confine::mkdir(&dfd, &name.0).ctx("mkdir")?;
        let inode = self.new_inode(FType3::Dir, owner, attrs, now);
        let id = self.enter_new(d, name, inode, now);
        Ok(self.created(id, dir_before, d))
    }

    fn symlink(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
        target: &NfsPath3,
        attrs: &Sattr3,
    ) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Create)?;
        let t = target.as_bytes();
        ensure(
            t.len() <= self.config.path_max as usize,
            NfsStat3::Nametoolong,
        )?;
        ensure(!t.is_empty() && !t.contains(&0), NfsStat3::Inval)?;
        self.may(ctx, d, W | X)?;
        ensure(self.entry(d, name).is_none(), NfsStat3::Exist)?;
        self.check_files_quota()?;
        let owner = self.initial_owner(ctx, d, FType3::Lnk, attrs)?;
        self.check_quota(0, crate::meta::BLOCK_BYTES)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let dfd = self.fd(d)?;
        confine::symlink(&dfd, &name.0, t).ctx("symlink")?;
        let mut inode = self.new_inode(FType3::Lnk, owner, attrs, now);
        inode.size = t.len() as u64;
        inode.target = Some(target.clone());
        let id = self.enter_new(d, name, inode, now);
        Ok(self.created(id, dir_before, d))
    }

    /// Device nodes, sockets and FIFOs are not stored (a replicated export has no use
    /// for them and the host may not allow them): `NFS3ERR_NOTSUPP`.
    fn mknod(&mut self, dir: &FileHandle, name: &Filename3, what: &MknodData3) -> OpResult {
        self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Create)?;
        match what {
            MknodData3::Other(_) => Err(NfsStat3::Badtype.into()),
            MknodData3::Chr { .. }
            | MknodData3::Blk { .. }
            | MknodData3::Sock { .. }
            | MknodData3::Fifo { .. } => Err(NfsStat3::Notsupp.into()),
        }
    }

    fn remove(&mut self, ctx: &OpContext, dir: &FileHandle, name: &Filename3) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Remove)?;
        self.may(ctx, d, W | X)?;
        let e = self.entry(d, name).ok_or(NfsStat3::Noent)?;
        ensure(self.ino(e.fileid).ftype != FType3::Dir, NfsStat3::Isdir)?;
        self.may_delete(ctx, d, e.fileid)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let dfd = self.fd(d)?;
        confine::unlink(&dfd, &name.0).ctx("unlink")?;
        self.drop_name(d, name, e.fileid, now);
        self.touch_dir(d, now);
        Ok(ReplyBody::Remove {
            dir_wcc: self.wcc(dir_before, d),
        })
    }

    fn rmdir(&mut self, ctx: &OpContext, dir: &FileHandle, name: &Filename3) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Remove)?;
        self.may(ctx, d, W | X)?;
        let e = self.entry(d, name).ok_or(NfsStat3::Noent)?;
        ensure(self.ino(e.fileid).ftype == FType3::Dir, NfsStat3::Notdir)?;
        ensure(self.meta.dirs[&e.fileid].is_empty(), NfsStat3::Notempty)?;
        self.may_delete(ctx, d, e.fileid)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let dfd = self.fd(d)?;
        confine::rmdir(&dfd, &name.0).ctx("rmdir")?;
        self.drop_name(d, name, e.fileid, now);
        self.touch_dir(d, now);
        Ok(ReplyBody::Rmdir {
            dir_wcc: self.wcc(dir_before, d),
        })
    }

    /// Whether `ancestor` is `id` or one of its ancestors (directories only).
    fn is_ancestor(&self, ancestor: u64, mut id: u64) -> bool {
        loop {
            if id == ancestor {
                return true;
            }
            match self.ino(id).primary_link() {
                Some((p, _)) => id = *p,
                None => return false,
            }
        }
    }

    fn rename(
        &mut self,
        ctx: &OpContext,
        from_dir: &FileHandle,
        from_name: &Filename3,
        to_dir: &FileHandle,
        to_name: &Filename3,
    ) -> OpResult {
        let fd = self.resolve_dir(from_dir)?;
        let td = self.resolve_dir(to_dir)?;
        check_name(from_name, self.config.name_max, NameUse::Remove)?;
        check_name(to_name, self.config.name_max, NameUse::Remove)?;
        self.may(ctx, fd, W | X)?;
        self.may(ctx, td, W | X)?;
        let src = self.entry(fd, from_name).ok_or(NfsStat3::Noent)?;
        self.may_delete(ctx, fd, src.fileid)?;
        let from_before = self.wcc_before(fd);
        let to_before = self.wcc_before(td);
        let unchanged = |sm: &Self| ReplyBody::Rename {
            fromdir_wcc: sm.wcc(from_before, fd),
            todir_wcc: sm.wcc(to_before, td),
        };
        if fd == td && from_name == to_name {
            return Ok(unchanged(self));
        }
        let src_is_dir = self.ino(src.fileid).ftype == FType3::Dir;
        if src_is_dir {
            ensure(!self.is_ancestor(src.fileid, td), NfsStat3::Inval)?;
        }
        let dst = self.entry(td, to_name);
        if let Some(dst) = dst {
            if dst.fileid == src.fileid {
                // Two names of one file: POSIX says do nothing.
                return Ok(unchanged(self));
            }
            let dst_ino = self.ino(dst.fileid);
            let dst_is_dir = dst_ino.ftype == FType3::Dir;
            ensure(!src_is_dir || dst_is_dir, NfsStat3::Notdir)?;
            ensure(src_is_dir || !dst_is_dir, NfsStat3::Isdir)?;
            if dst_is_dir {
                ensure(self.meta.dirs[&dst.fileid].is_empty(), NfsStat3::Notempty)?;
            }
            self.may_delete(ctx, td, dst.fileid)?;
        } else if src_is_dir && fd != td {
            ensure(
                self.ino(td).subdirs + 2 < self.config.link_max,
                NfsStat3::Mlink,
            )?;
        }
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let from_fd = self.fd(fd)?;
        let to_fd = self.fd(td)?;
        confine::rename(&from_fd, &from_name.0, &to_fd, &to_name.0).ctx("rename")?;
        if let Some(dst) = dst {
            self.drop_name(td, to_name, dst.fileid, now);
        }
        self.del_entry(fd, from_name);
        self.add_entry(td, to_name, src.fileid);
        self.meta.update_inode(src.fileid, |i| {
            i.links.remove(&(fd, from_name.clone()));
            i.links.insert((td, to_name.clone()));
            i.ctime = now;
        });
        self.mark_inode(src.fileid);
        if src_is_dir && fd != td {
            self.meta.update_inode(fd, |d| d.subdirs -= 1);
            self.meta.update_inode(td, |d| d.subdirs += 1);
        }
        self.touch_dir(fd, now);
        self.touch_dir(td, now);
        Ok(unchanged(self))
    }

    fn link(
        &mut self,
        ctx: &OpContext,
        fh: &FileHandle,
        dir: &FileHandle,
        name: &Filename3,
    ) -> OpResult {
        let id = self.resolve(fh)?;
        let d = self.resolve_dir(dir)?;
        ensure(self.ino(id).ftype != FType3::Dir, NfsStat3::Isdir)?;
        check_name(name, self.config.name_max, NameUse::Create)?;
        self.may(ctx, d, W | X)?;
        ensure(self.entry(d, name).is_none(), NfsStat3::Exist)?;
        ensure(self.ino(id).nlink() < self.config.link_max, NfsStat3::Mlink)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let (src_dir, src_name) = self
            .ino(id)
            .primary_link()
            .cloned()
            .expect("non-root object has a name");
        let sfd = self.fd(src_dir)?;
        let dfd = self.fd(d)?;
        confine::link(&sfd, &src_name.0, &dfd, &name.0).ctx("link")?;
        self.meta.update_inode(id, |i| {
            i.links.insert((d, name.clone()));
            i.ctime = now;
        });
        self.mark_inode(id);
        self.add_entry(d, name, id);
        self.touch_dir(d, now);
        Ok(ReplyBody::Link {
            file_attributes: Some(self.fattr(id)),
            linkdir_wcc: self.wcc(dir_before, d),
        })
    }

    fn readdir_common(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        cookie: u64,
        cookieverf: [u8; 8],
    ) -> Result<u64, OpError> {
        let d = self.resolve_dir(dir)?;
        self.may(ctx, d, R)?;
        dir::check_cookie(d, self.ino(d).next_seq, cookie, cookieverf)?;
        Ok(d)
    }

    fn readdir(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        cookie: u64,
        verf: [u8; 8],
        count: u32,
    ) -> OpResult {
        let d = self.readdir_common(ctx, dir, cookie, verf)?;
        let mut used = dir::READDIR_HEADER_XDR;
        let (page, eof) = dir::page(&self.meta.dirs[&d], cookie, |name| {
            let size = dir::entry3_xdr(name);
            if used + size > count {
                return false;
            }
            used += size;
            true
        })?;
        Ok(ReplyBody::Readdir {
            dir_attributes: Some(self.fattr(d)),
            cookieverf: dir::cookieverf(d),
            entries: page
                .into_iter()
                .map(|(cookie, name, fileid)| Entry3 {
                    fileid,
                    name,
                    cookie,
                })
                .collect(),
            eof,
        })
    }

    fn readdirplus(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    ) -> OpResult {
        let d = self.readdir_common(ctx, dir, cookie, verf)?;
        let mut dir_used = 0u32;
        let mut used = dir::READDIR_HEADER_XDR;
        let (page, eof) = dir::page(&self.meta.dirs[&d], cookie, |name| {
            let e = dir::entry3_xdr(name);
            if dir_used + e > dircount || used + e + dir::ENTRYPLUS3_EXTRA_XDR > maxcount {
                return false;
            }
            dir_used += e;
            used += e + dir::ENTRYPLUS3_EXTRA_XDR;
            true
        })?;
        let entries = page
            .into_iter()
            .map(|(cookie, name, fileid)| Entryplus3 {
                fileid,
                name,
                cookie,
                name_attributes: Some(self.fattr(fileid)),
                name_handle: Some(self.ino(fileid).handle(fileid)),
            })
            .collect();
        Ok(ReplyBody::Readdirplus {
            dir_attributes: Some(self.fattr(d)),
            cookieverf: dir::cookieverf(d),
            entries,
            eof,
        })
    }

    fn fsstat(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        let free = self.config.bytes_total.saturating_sub(self.meta.bytes_used);
        let ffree = self
            .config
            .files_total
            .saturating_sub(self.meta.inodes.len() as u64);
        Ok(ReplyBody::Fsstat {
            obj_attributes: Some(self.fattr(id)),
            tbytes: self.config.bytes_total,
            fbytes: free,
            abytes: free,
            tfiles: self.config.files_total,
            ffiles: ffree,
            afiles: ffree,
            invarsec: 0,
        })
    }

    fn fsinfo(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        let c = &self.config;
        Ok(ReplyBody::Fsinfo {
            obj_attributes: Some(self.fattr(id)),
            rtmax: c.rtmax,
            rtpref: c.rtpref,
            rtmult: 4096,
            wtmax: c.wtmax,
            wtpref: c.wtpref,
            wtmult: 4096,
            dtpref: c.dtpref,
            maxfilesize: c.maxfilesize,
            time_delta: NfsTime {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }

    fn pathconf(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        Ok(ReplyBody::Pathconf {
            obj_attributes: Some(self.fattr(id)),
            linkmax: self.config.link_max,
            name_max: self.config.name_max,
            no_trunc: true,
            chown_restricted: true,
            case_insensitive: false,
            case_preserving: true,
        })
    }

    /// Under `SyncAtBatch` everything is already durable by the batch's sync; under
    /// `DeferToCommit` the file's UNSTABLE data joins this batch's sync.
    fn commit(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        let ftype = self.ino(id).ftype;
        ensure(ftype == FType3::Reg, not_dir_status(ftype))?;
        if self.dirty.data_unstable.remove(&id) {
            self.dirty.data_sync.insert(id);
        }
        let before = self.wcc_before(id);
        Ok(ReplyBody::Commit {
            file_wcc: self.wcc(before, id),
            verf: self.config.write_verifier,
        })
    }
}
