//! Conversions between RFC 1813 wire types (`nfs3_types`) and the state machine's types
//! (`fs_state::ops`).
//!
//! The two sets mirror each other field by field, so every function here is a plain
//! rename with no policy: what a procedure means is decided by the backend, and the
//! adapter only changes representation. File handles and names pass through as the
//! client sent them, so that a forged handle or a hostile name reaches the state machine
//! unchanged and is answered there with the deterministic NFS error.

use fs_state::{
    FType3, FailAttrs, Fattr3, FileHandle, Filename3, NfsStat3, NfsTime, Sattr3, SetTime,
    SpecData3, StableHow, WccAttr, WccData,
};
use nfs3_types::nfs3::{
    fattr3, filename3, ftype3, nfs_fh3, nfsstat3, nfstime3, post_op_attr, post_op_fh3, pre_op_attr,
    sattr3, set_atime, set_mtime, specdata3, stable_how, wcc_attr, wcc_data,
};
use nfs3_types::xdr_codec::Opaque;

pub(crate) fn fh_in(fh: nfs_fh3) -> FileHandle {
    FileHandle(fh.data.into_owned())
}

pub(crate) fn fh_out(fh: FileHandle) -> nfs_fh3 {
    nfs_fh3 {
        data: Opaque::owned(fh.0),
    }
}

pub(crate) fn post_op_fh(fh: Option<FileHandle>) -> post_op_fh3 {
    fh.map_or(post_op_fh3::None, |fh| post_op_fh3::Some(fh_out(fh)))
}

pub(crate) fn name_in(name: filename3<'_>) -> Filename3 {
    Filename3(name.0.into_owned())
}

pub(crate) fn time_in(t: nfstime3) -> NfsTime {
    NfsTime {
        seconds: t.seconds,
        nseconds: t.nseconds,
    }
}

pub(crate) fn time_out(t: NfsTime) -> nfstime3 {
    nfstime3 {
        seconds: t.seconds,
        nseconds: t.nseconds,
    }
}

pub(crate) fn spec_in(s: specdata3) -> SpecData3 {
    SpecData3 {
        specdata1: s.specdata1,
        specdata2: s.specdata2,
    }
}

pub(crate) fn ftype_out(t: FType3) -> ftype3 {
    match t {
        FType3::Reg => ftype3::NF3REG,
        FType3::Dir => ftype3::NF3DIR,
        FType3::Blk => ftype3::NF3BLK,
        FType3::Chr => ftype3::NF3CHR,
        FType3::Lnk => ftype3::NF3LNK,
        FType3::Sock => ftype3::NF3SOCK,
        FType3::Fifo => ftype3::NF3FIFO,
    }
}

pub(crate) fn fattr_out(a: Fattr3) -> fattr3 {
    fattr3 {
        type_: ftype_out(a.ftype),
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        used: a.used,
        rdev: specdata3 {
            specdata1: a.rdev.specdata1,
            specdata2: a.rdev.specdata2,
        },
        fsid: a.fsid,
        fileid: a.fileid,
        atime: time_out(a.atime),
        mtime: time_out(a.mtime),
        ctime: time_out(a.ctime),
    }
}

pub(crate) fn post_op(a: Option<Fattr3>) -> post_op_attr {
    a.map_or(post_op_attr::None, |a| post_op_attr::Some(fattr_out(a)))
}

fn wcc_attr_out(a: WccAttr) -> wcc_attr {
    wcc_attr {
        size: a.size,
        mtime: time_out(a.mtime),
        ctime: time_out(a.ctime),
    }
}

pub(crate) fn wcc_out(w: WccData) -> wcc_data {
    wcc_data {
        before: w
            .before
            .map_or(pre_op_attr::None, |b| pre_op_attr::Some(wcc_attr_out(b))),
        after: post_op(w.after),
    }
}

pub(crate) fn sattr_in(s: sattr3) -> Sattr3 {
    use nfs3_types::nfs3::Nfs3Option;
    fn opt<T: nfs3_types::xdr_codec::Pack + nfs3_types::xdr_codec::Unpack>(
        o: Nfs3Option<T>,
    ) -> Option<T> {
        match o {
            Nfs3Option::Some(v) => Some(v),
            Nfs3Option::None => None,
        }
    }
    Sattr3 {
        mode: opt(s.mode),
        uid: opt(s.uid),
        gid: opt(s.gid),
        size: opt(s.size),
        atime: match s.atime {
            set_atime::DONT_CHANGE => SetTime::DontChange,
            set_atime::SET_TO_SERVER_TIME => SetTime::ServerTime,
            set_atime::SET_TO_CLIENT_TIME(t) => SetTime::ClientTime(time_in(t)),
        },
        mtime: match s.mtime {
            set_mtime::DONT_CHANGE => SetTime::DontChange,
            set_mtime::SET_TO_SERVER_TIME => SetTime::ServerTime,
            set_mtime::SET_TO_CLIENT_TIME(t) => SetTime::ClientTime(time_in(t)),
        },
    }
}

pub(crate) fn stable_in(s: stable_how) -> StableHow {
    match s {
        stable_how::UNSTABLE => StableHow::Unstable,
        stable_how::DATA_SYNC => StableHow::DataSync,
        stable_how::FILE_SYNC => StableHow::FileSync,
    }
}

pub(crate) fn stable_out(s: StableHow) -> stable_how {
    match s {
        StableHow::Unstable => stable_how::UNSTABLE,
        StableHow::DataSync => stable_how::DATA_SYNC,
        StableHow::FileSync => stable_how::FILE_SYNC,
    }
}

pub(crate) fn stat_out(s: NfsStat3) -> nfsstat3 {
    match s {
        NfsStat3::Perm => nfsstat3::NFS3ERR_PERM,
        NfsStat3::Noent => nfsstat3::NFS3ERR_NOENT,
        NfsStat3::Io => nfsstat3::NFS3ERR_IO,
        NfsStat3::Nxio => nfsstat3::NFS3ERR_NXIO,
        NfsStat3::Acces => nfsstat3::NFS3ERR_ACCES,
        NfsStat3::Exist => nfsstat3::NFS3ERR_EXIST,
        NfsStat3::Xdev => nfsstat3::NFS3ERR_XDEV,
        NfsStat3::Nodev => nfsstat3::NFS3ERR_NODEV,
        NfsStat3::Notdir => nfsstat3::NFS3ERR_NOTDIR,
        NfsStat3::Isdir => nfsstat3::NFS3ERR_ISDIR,
        NfsStat3::Inval => nfsstat3::NFS3ERR_INVAL,
        NfsStat3::Fbig => nfsstat3::NFS3ERR_FBIG,
        NfsStat3::Nospc => nfsstat3::NFS3ERR_NOSPC,
        NfsStat3::Rofs => nfsstat3::NFS3ERR_ROFS,
        NfsStat3::Mlink => nfsstat3::NFS3ERR_MLINK,
        NfsStat3::Nametoolong => nfsstat3::NFS3ERR_NAMETOOLONG,
        NfsStat3::Notempty => nfsstat3::NFS3ERR_NOTEMPTY,
        NfsStat3::Dquot => nfsstat3::NFS3ERR_DQUOT,
        NfsStat3::Stale => nfsstat3::NFS3ERR_STALE,
        NfsStat3::Remote => nfsstat3::NFS3ERR_REMOTE,
        NfsStat3::Badhandle => nfsstat3::NFS3ERR_BADHANDLE,
        NfsStat3::NotSync => nfsstat3::NFS3ERR_NOT_SYNC,
        NfsStat3::BadCookie => nfsstat3::NFS3ERR_BAD_COOKIE,
        NfsStat3::Notsupp => nfsstat3::NFS3ERR_NOTSUPP,
        NfsStat3::Toosmall => nfsstat3::NFS3ERR_TOOSMALL,
        NfsStat3::Serverfault => nfsstat3::NFS3ERR_SERVERFAULT,
        NfsStat3::Badtype => nfsstat3::NFS3ERR_BADTYPE,
        NfsStat3::Jukebox => nfsstat3::NFS3ERR_JUKEBOX,
    }
}

/// The `post_op_attr` of a `resfail` arm that carries one (LOOKUP, ACCESS, READ, ...).
pub(crate) fn fail_post_op(attrs: FailAttrs) -> post_op_attr {
    match attrs {
        FailAttrs::PostOp(a) => post_op(a),
        FailAttrs::Link {
            file_attributes, ..
        } => post_op(file_attributes),
        FailAttrs::None | FailAttrs::Wcc(_) | FailAttrs::Rename { .. } => post_op_attr::None,
    }
}

/// The `wcc_data` of a `resfail` arm that carries one (SETATTR, WRITE, CREATE, ...).
pub(crate) fn fail_wcc(attrs: FailAttrs) -> wcc_data {
    match attrs {
        FailAttrs::Wcc(w) => wcc_out(w),
        FailAttrs::Link { linkdir_wcc, .. } => wcc_out(linkdir_wcc),
        FailAttrs::None | FailAttrs::PostOp(_) | FailAttrs::Rename { .. } => wcc_data::default(),
    }
}
