//! The namespace: LOOKUP, READLINK, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR,
//! RENAME, LINK (RFC 1813 3.3.3-3.3.15). Names are checked by `confine::check_name`
//! before anything else; fileids come from the replicated counter; the host call is one
//! `*at` call on descriptors found by fileid, made only after every NFS error was ruled
//! out, so that the metadata and the tree change together or not at all.

use super::{OpResult, ensure};
use crate::confine::{self, NameKind, NameUse, check_name};
use crate::error::Ctx;
use crate::meta::{DIR_SIZE, Inode};
use crate::ops::*;
use crate::perm::{W, X};
use crate::state::FileStateMachine;

impl FileStateMachine {
    pub(crate) fn lookup(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
    ) -> OpResult {
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

    pub(crate) fn readlink(&mut self, fh: &FileHandle) -> OpResult {
        let id = self.resolve(fh)?;
        let ino = self.ino(id);
        ensure(ino.ftype == FType3::Lnk, NfsStat3::Inval)?;
        Ok(ReplyBody::Readlink {
            symlink_attributes: Some(self.fattr(id)),
            data: ino.target.clone().expect("symlink has a target"),
        })
    }

    /// The common tail of CREATE, MKDIR and SYMLINK: enter the new object.
    pub(crate) fn enter_new(
        &mut self,
        d: u64,
        name: &Filename3,
        mut inode: Inode,
        now: NfsTime,
    ) -> u64 {
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

    pub(crate) fn created(&self, id: u64, dir_before: WccAttr, d: u64) -> ReplyBody {
        ReplyBody::Create {
            obj: Some(self.ino(id).handle(id)),
            obj_attributes: Some(self.fattr(id)),
            dir_wcc: self.wcc(dir_before, d),
        }
    }

    pub(crate) fn create(
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
        let f = self.spares.create_file(&dfd, &name.0).ctx("create file")?;
        let size = attrs.size.unwrap_or(0);
        if size > 0 {
            rustix::fs::ftruncate(&f, size).ctx("ftruncate new file")?;
        }
        let mut inode = self.new_inode(FType3::Reg, owner, &attrs, now);
        inode.create_verf = verf;
        let id = self.enter_new(d, name, inode, now);
        self.fds.insert(id, std::sync::Arc::new(f));
        self.dirty.data_sync.insert(id);
        if size > 0 {
            self.meta.update_inode(id, |i| i.size = size);
            self.note_content_change(id, 0, size, None);
        }
        Ok(self.created(id, dir_before, d))
    }

    pub(crate) fn mkdir(
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
        self.spares.mkdir(&dfd, &name.0).ctx("mkdir")?;
        let inode = self.new_inode(FType3::Dir, owner, attrs, now);
        let id = self.enter_new(d, name, inode, now);
        Ok(self.created(id, dir_before, d))
    }

    pub(crate) fn symlink(
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
    pub(crate) fn mknod(
        &mut self,
        dir: &FileHandle,
        name: &Filename3,
        what: &MknodData3,
    ) -> OpResult {
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

    pub(crate) fn remove(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
    ) -> OpResult {
        let d = self.resolve_dir(dir)?;
        check_name(name, self.config.name_max, NameUse::Remove)?;
        self.may(ctx, d, W | X)?;
        let e = self.entry(d, name).ok_or(NfsStat3::Noent)?;
        ensure(self.ino(e.fileid).ftype != FType3::Dir, NfsStat3::Isdir)?;
        self.may_delete(ctx, d, e.fileid)?;
        let now = NfsTime::from_ns(ctx.timestamp_ns);
        let dir_before = self.wcc_before(d);
        let dfd = self.fd(d)?;
        if self.ino(e.fileid).links.len() == 1 {
            // Its last name: the host file may be kept for reuse (`spare.rs`).
            self.spares.unlink_file(&dfd, &name.0).ctx("unlink")?;
        } else {
            confine::unlink(&dfd, &name.0).ctx("unlink")?;
        }
        self.drop_name(d, name, e.fileid, now);
        self.touch_dir(d, now);
        Ok(ReplyBody::Remove {
            dir_wcc: self.wcc(dir_before, d),
        })
    }

    pub(crate) fn rmdir(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        name: &Filename3,
    ) -> OpResult {
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
        self.spares.rmdir(&dfd, &name.0).ctx("rmdir")?;
        self.drop_name(d, name, e.fileid, now);
        self.touch_dir(d, now);
        Ok(ReplyBody::Rmdir {
            dir_wcc: self.wcc(dir_before, d),
        })
    }

    /// Whether `ancestor` is `id` or one of its ancestors (directories only).
    pub(crate) fn is_ancestor(&self, ancestor: u64, mut id: u64) -> bool {
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

    pub(crate) fn rename(
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

    pub(crate) fn link(
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
}
