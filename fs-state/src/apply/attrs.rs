//! Attributes and data of one object: GETATTR, SETATTR, ACCESS, READ, WRITE, COMMIT
//! (RFC 1813 3.3.1-3.3.7, 3.3.21), plus the owner/mode rules for new objects and the
//! deterministic quota. WRITE honours `stable_how` through the batch sync (see
//! `UnstableWrites`); its verifier comes from the configuration, so it is the same on
//! every replica and across restarts.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use super::{OpError, OpResult, ensure, not_dir_status};
use crate::error::{Ctx, LocalFault};
use crate::meta::{DIR_SIZE, Inode};
use crate::ops::*;
use crate::perm::{self, R, W};
use crate::state::FileStateMachine;

impl FileStateMachine {
    /// Owner, group and mode of a new object (knfsd-like: the caller owns it, the
    /// group is inherited from a setgid directory), with the request's `sattr3`.
    pub(crate) fn initial_owner(
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

    pub(crate) fn new_inode(
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
    pub(crate) fn check_sattr(
        &self,
        ctx: &OpContext,
        id: u64,
        attrs: &Sattr3,
    ) -> Result<(), OpError> {
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
    pub(crate) fn check_quota(&self, old: u64, new: u64) -> Result<(), OpError> {
        let blocks = |s: u64| s.div_ceil(crate::meta::BLOCK_BYTES) * crate::meta::BLOCK_BYTES;
        let grow = blocks(new).saturating_sub(blocks(old));
        ensure(
            self.meta.bytes_used.saturating_add(grow) <= self.config.bytes_total,
            NfsStat3::Nospc,
        )
    }

    pub(crate) fn check_files_quota(&self) -> Result<(), OpError> {
        ensure(
            (self.meta.inodes.len() as u64) < self.config.files_total,
            NfsStat3::Nospc,
        )
    }

    /// Apply checked `attrs` to `id`.
    pub(crate) fn apply_sattr(
        &mut self,
        id: u64,
        attrs: &Sattr3,
        now: NfsTime,
    ) -> Result<(), LocalFault> {
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

    pub(crate) fn data_dirty(&mut self, id: u64, stable: StableHow) {
        if self.write_policy_unstable() && stable == StableHow::Unstable {
            if !self.dirty.data_sync.contains(&id) {
                self.dirty.data_unstable.insert(id);
            }
        } else {
            self.dirty.data_unstable.remove(&id);
            self.dirty.data_sync.insert(id);
        }
    }

    pub(crate) fn getattr(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        Ok(ReplyBody::Getattr {
            obj_attributes: self.fattr(id),
        })
    }

    pub(crate) fn setattr(
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

    pub(crate) fn access(&mut self, ctx: &OpContext, fh: &FileHandle, mask: u32) -> OpResult {
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

    pub(crate) fn read(
        &mut self,
        ctx: &OpContext,
        fh: &FileHandle,
        offset: u64,
        count: u32,
    ) -> OpResult {
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
            let read = f.read_exact_at(&mut data, offset);
            if read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof)
            {
                // What is there is answered: the other replicas outvote it.
                self.found_cut_short(id);
            } else {
                read.ctx("read")?;
            }
        }
        Ok(ReplyBody::Read {
            file_attributes: Some(self.fattr(id)),
            count: n as u32,
            eof: offset.saturating_add(n) >= size,
            data,
        })
    }

    pub(crate) fn write(
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

    /// Under `SyncAtBatch` everything is already durable by the batch's sync; under
    /// `DeferToCommit` the file's UNSTABLE data joins this batch's sync.
    pub(crate) fn commit(&mut self, fh: &FileHandle) -> OpResult {
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
