//! READDIR, READDIRPLUS (RFC 1813 3.3.16-17) with the deterministic cookies of
//! `dir.rs`, and the file-system-wide FSSTAT, FSINFO, PATHCONF (3.3.18-20), which report
//! configured and replicated values, never the host's.

use super::{OpError, OpResult};
use crate::dir;
use crate::ops::*;
use crate::perm::R;
use crate::state::FileStateMachine;

impl FileStateMachine {
    pub(crate) fn readdir_common(
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

    pub(crate) fn readdir(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        cookie: u64,
        verf: [u8; 8],
        count: u32,
    ) -> OpResult {
        let d = self.readdir_common(ctx, dir, cookie, verf)?;
        // Like READ's count: the client's size, at most the server's transfer size.
        let count = count.min(self.config.rtmax);
        let mut used = dir::READDIR_HEADER_XDR;
        let (page, eof) = dir::page(&self.meta.dirs[&d], cookie, |name| {
            let size = dir::entry3_xdr(name);
            if used.saturating_add(size) > count {
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
                .map(|e| Entry3 {
                    fileid: e.fileid,
                    name: e.name,
                    cookie: e.cookie,
                })
                .collect(),
            eof,
        })
    }

    pub(crate) fn readdirplus(
        &mut self,
        ctx: &OpContext,
        dir: &FileHandle,
        cookie: u64,
        verf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    ) -> OpResult {
        let d = self.readdir_common(ctx, dir, cookie, verf)?;
        let dircount = dircount.min(self.config.rtmax);
        let maxcount = maxcount.min(self.config.rtmax);
        let mut dir_used = 0u32;
        let mut used = dir::READDIR_HEADER_XDR;
        let (page, eof) = dir::page(&self.meta.dirs[&d], cookie, |name| {
            let e = dir::entry3_xdr(name);
            if dir_used.saturating_add(e) > dircount
                || used.saturating_add(e + dir::ENTRYPLUS3_EXTRA_XDR) > maxcount
            {
                return false;
            }
            dir_used += e;
            used += e + dir::ENTRYPLUS3_EXTRA_XDR;
            true
        })?;
        let entries = page
            .into_iter()
            .map(|e| Entryplus3 {
                name_attributes: Some(self.fattr(e.fileid)),
                name_handle: Some(self.ino(e.fileid).handle(e.fileid)),
                fileid: e.fileid,
                name: e.name,
                cookie: e.cookie,
            })
            .collect();
        Ok(ReplyBody::Readdirplus {
            dir_attributes: Some(self.fattr(d)),
            cookieverf: dir::cookieverf(d),
            entries,
            eof,
        })
    }

    pub(crate) fn fsstat(&mut self, fh: &FileHandle) -> OpResult {
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

    pub(crate) fn fsinfo(&mut self, fh: &FileHandle) -> OpResult {
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

    pub(crate) fn pathconf(&mut self, fh: &FileHandle) -> OpResult {
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
}
