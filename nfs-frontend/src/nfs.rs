//! NFS program 100003 version 3: each procedure decoded, turned into exactly one `FsOp`,
//! executed by the backend, and its `FsReply` encoded as the RFC 1813 result.
//!
//! This replaces the handlers of `nfs3_server`, whose file-system trait answers one NFS
//! call with several backend calls (GETATTR before and after for WCC data, a LOOKUP
//! before a GUARDED CREATE), passes no credentials, and answers ACCESS, PATHCONF and
//! FSSTAT itself, LINK and MKNOD not at all, and RMDIR as REMOVE. Here all 21
//! procedures reach the backend, once each, with the caller's AUTH_UNIX credentials.

use std::io::Cursor;

use fs_state::{AuthUnix, CreateHow, FType3, FsOp, FsReply, MknodData3, ReplyBody};
use nfs3_types::nfs3::{
    self as wire, ACCESS3args, ACCESS3res, ACCESS3resfail, ACCESS3resok, COMMIT3args, COMMIT3res,
    COMMIT3resfail, COMMIT3resok, CREATE3args, CREATE3resfail, CREATE3resok, FSINFO3args,
    FSINFO3res, FSINFO3resfail, FSINFO3resok, FSSTAT3args, FSSTAT3res, FSSTAT3resfail,
    FSSTAT3resok, GETATTR3args, GETATTR3res, GETATTR3resok, LINK3args, LINK3res, LINK3resfail,
    LINK3resok, LOOKUP3args, LOOKUP3res, LOOKUP3resfail, LOOKUP3resok, MKDIR3args, MKDIR3resfail,
    MKDIR3resok, MKNOD3resfail, MKNOD3resok, NFS_PROGRAM, Nfs3Result, PATHCONF3args, PATHCONF3res,
    PATHCONF3resfail, PATHCONF3resok, READ3args, READ3res, READ3resfail, READ3resok, READDIR3args,
    READDIR3res, READDIR3resfail, READDIR3resok, READDIRPLUS3args, READDIRPLUS3res,
    READDIRPLUS3resfail, READDIRPLUS3resok, READLINK3args, READLINK3res, READLINK3resfail,
    READLINK3resok, REMOVE3args, REMOVE3res, REMOVE3resfail, REMOVE3resok, RENAME3args, RENAME3res,
    RENAME3resfail, RENAME3resok, RMDIR3args, RMDIR3res, RMDIR3resfail, RMDIR3resok, SETATTR3args,
    SETATTR3res, SETATTR3resfail, SETATTR3resok, SYMLINK3args, SYMLINK3resfail, SYMLINK3resok,
    WRITE3args, WRITE3res, WRITE3resfail, WRITE3resok, cookieverf3, createhow3, devicedata3,
    dirlist3, dirlistplus3, diropargs3, entry3, entryplus3, filename3, nfs_fh3, nfspath3, nfsstat3,
    post_op_attr, sattr3, wcc_data, writeverf3,
};
use nfs3_types::xdr_codec::{List, Opaque, Pack, Unpack, Void};
use tracing::error;

use crate::backend::FsBackend;
use crate::rpc::Xdr;
use crate::wire::{
    fail_post_op, fail_wcc, fattr_out, fh_in, fh_out, name_in, post_op, post_op_fh, sattr_in,
    spec_in, stable_in, stable_out, stat_out, time_in, wcc_out,
};

/// Why a call got no procedure result (RFC 5531 `accept_stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallError {
    ProcUnavail,
    GarbageArgs,
}

/// Decode `T` from all of `args`; trailing bytes are garbage too.
pub(crate) fn decode<T: Unpack>(args: &[u8]) -> Result<T, CallError> {
    let mut cur = Cursor::new(args);
    let (value, used) = T::unpack(&mut cur).map_err(|_| CallError::GarbageArgs)?;
    if used != args.len() {
        return Err(CallError::GarbageArgs);
    }
    Ok(value)
}

/// What `opaques_fit` steps over on its way to each variable-length opaque.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    U32,
    U64,
    /// `opaque<max>` (or a string): length, bytes, padding.
    Opaque(usize),
    Sattr3,
}

const FH: Field = Field::Opaque(wire::NFS3_FHSIZE);
const NAME: Field = Field::Opaque(usize::MAX);

/// Check that every variable-length opaque among the leading `fields` of `args` is
/// within its bound and within the bytes actually received. `nfs3_types`' `Opaque`
/// decoder allocates the length the wire claims before it reads a byte, so without this
/// a 4-byte length field makes the server allocate up to 4 GiB (and abort where the
/// allocation cannot be had). Fields after the last opaque need no check.
pub(crate) fn opaques_fit(args: &[u8], fields: &[Field]) -> Result<(), CallError> {
    let mut x = Xdr::new(args);
    fields
        .iter()
        .try_for_each(|f| skip_field(&mut x, *f))
        .ok_or(CallError::GarbageArgs)
}

/// Steps over one field; `None` if it is malformed or runs past the arguments.
fn skip_field(x: &mut Xdr<'_>, field: Field) -> Option<()> {
    match field {
        Field::U32 => {
            x.u32()?;
        }
        Field::U64 => {
            x.u32()?;
            x.u32()?;
        }
        Field::Opaque(max) => {
            x.opaque(max)?;
        }
        Field::Sattr3 => {
            // mode, uid, gid: optional u32; size: optional u64.
            for words in [1, 1, 1, 2] {
                match x.u32()? {
                    0 => {}
                    1 => {
                        for _ in 0..words {
                            x.u32()?;
                        }
                    }
                    _ => return None,
                }
            }
            // atime, mtime: DONT_CHANGE, SET_TO_SERVER_TIME or a client nfstime3.
            for _ in 0..2 {
                match x.u32()? {
                    0 | 1 => {}
                    2 => {
                        x.u32()?;
                        x.u32()?;
                    }
                    _ => return None,
                }
            }
        }
    }
    Some(())
}

/// The leading fields of each NFSv3 procedure's arguments up to its last opaque.
fn arg_fields(proc: NFS_PROGRAM) -> &'static [Field] {
    use NFS_PROGRAM::*;
    match proc {
        NFSPROC3_NULL => &[],
        NFSPROC3_GETATTR | NFSPROC3_SETATTR | NFSPROC3_ACCESS | NFSPROC3_READLINK
        | NFSPROC3_READ | NFSPROC3_READDIR | NFSPROC3_READDIRPLUS | NFSPROC3_FSSTAT
        | NFSPROC3_FSINFO | NFSPROC3_PATHCONF | NFSPROC3_COMMIT => &[FH],
        NFSPROC3_LOOKUP | NFSPROC3_CREATE | NFSPROC3_MKDIR | NFSPROC3_MKNOD | NFSPROC3_REMOVE
        | NFSPROC3_RMDIR => &[FH, NAME],
        NFSPROC3_WRITE => &[FH, Field::U64, Field::U32, Field::U32, NAME],
        NFSPROC3_SYMLINK => &[FH, NAME, Field::Sattr3, NAME],
        NFSPROC3_RENAME => &[FH, NAME, FH, NAME],
        NFSPROC3_LINK => &[FH, FH, NAME],
    }
}

/// Append the XDR encoding of `value` to `out`.
pub(crate) fn encode<T: Pack>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec fails only for an opaque over 4 GiB, which no reply can hold.
    value.pack(out).expect("XDR encoding into a Vec");
}

/// `nfs_fh3` is `opaque<NFS3_FHSIZE>`: a longer one is malformed XDR, not a bad handle.
fn fh(h: nfs_fh3) -> Result<fs_state::FileHandle, CallError> {
    if h.data.len() > wire::NFS3_FHSIZE {
        return Err(CallError::GarbageArgs);
    }
    Ok(fh_in(h))
}

fn dirop(d: diropargs3<'_>) -> Result<(fs_state::FileHandle, fs_state::Filename3), CallError> {
    Ok((fh(d.dir)?, name_in(d.name)))
}

/// A backend that answered with the wrong procedure's result has a bug (or, behind a
/// BFT client, f+1 replicas agreed on nonsense); the client gets SERVERFAULT.
fn mismatch(proc: NFS_PROGRAM, body: &ReplyBody) -> nfsstat3 {
    error!(%proc, ?body, "backend answered with the result of another procedure");
    nfsstat3::NFS3ERR_SERVERFAULT
}

/// Serve one NFSv3 call: decode `args`, execute, append the encoded result to `out`.
pub(crate) async fn call<B: FsBackend>(
    backend: &B,
    cred: AuthUnix,
    proc: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    use NFS_PROGRAM::*;
    let proc = NFS_PROGRAM::try_from(proc).map_err(|_| CallError::ProcUnavail)?;
    opaques_fit(args, arg_fields(proc))?;
    match proc {
        NFSPROC3_NULL => {
            decode::<Void>(args)?;
            encode(out, &Void);
        }
        NFSPROC3_GETATTR => {
            let a: GETATTR3args = decode(args)?;
            let op = FsOp::Getattr { fh: fh(a.object)? };
            encode(out, &getattr_res(backend.execute(cred, op).await));
        }
        NFSPROC3_SETATTR => {
            let a: SETATTR3args = decode(args)?;
            let op = FsOp::Setattr {
                fh: fh(a.object)?,
                attrs: sattr_in(a.new_attributes),
                guard_ctime: match a.guard {
                    wire::Nfs3Option::Some(t) => Some(time_in(t)),
                    wire::Nfs3Option::None => None,
                },
            };
            encode(out, &setattr_res(backend.execute(cred, op).await));
        }
        NFSPROC3_LOOKUP => {
            let a: LOOKUP3args = decode(args)?;
            let (dir, name) = dirop(a.what)?;
            let op = FsOp::Lookup { dir, name };
            encode(out, &lookup_res(backend.execute(cred, op).await));
        }
        NFSPROC3_ACCESS => {
            let a: ACCESS3args = decode(args)?;
            let op = FsOp::Access {
                fh: fh(a.object)?,
                mask: a.access,
            };
            encode(out, &access_res(backend.execute(cred, op).await));
        }
        NFSPROC3_READLINK => {
            let a: READLINK3args = decode(args)?;
            let op = FsOp::Readlink { fh: fh(a.symlink)? };
            encode(out, &readlink_res(backend.execute(cred, op).await));
        }
        NFSPROC3_READ => {
            let a: READ3args = decode(args)?;
            let op = FsOp::Read {
                fh: fh(a.file)?,
                offset: a.offset,
                count: a.count,
            };
            encode(out, &read_res(backend.execute(cred, op).await));
        }
        NFSPROC3_WRITE => {
            let a: WRITE3args = decode(args)?;
            if a.count as usize != a.data.len() {
                // RFC 1813: `count` is the size of `data`; a client that disagrees with
                // itself gets INVAL rather than a guess.
                encode(
                    out,
                    &WRITE3res::Err((nfsstat3::NFS3ERR_INVAL, WRITE3resfail::default())),
                );
                return Ok(());
            }
            let op = FsOp::Write {
                fh: fh(a.file)?,
                offset: a.offset,
                stable: stable_in(a.stable),
                data: a.data.into_owned(),
            };
            encode(out, &write_res(backend.execute(cred, op).await));
        }
        NFSPROC3_CREATE => {
            let a: CREATE3args = decode(args)?;
            let (dir, name) = dirop(a.where_)?;
            let how = match a.how {
                createhow3::UNCHECKED(s) => CreateHow::Unchecked(sattr_in(s)),
                createhow3::GUARDED(s) => CreateHow::Guarded(sattr_in(s)),
                createhow3::EXCLUSIVE(v) => CreateHow::Exclusive(v.0),
            };
            let op = FsOp::Create { dir, name, how };
            let res = create_like(proc, backend.execute(cred, op).await);
            encode(out, &res.map(CREATE3resok::from, CREATE3resfail::from));
        }
        NFSPROC3_MKDIR => {
            let a: MKDIR3args = decode(args)?;
            let (dir, name) = dirop(a.where_)?;
            let op = FsOp::Mkdir {
                dir,
                name,
                attrs: sattr_in(a.attributes),
            };
            let res = create_like(proc, backend.execute(cred, op).await);
            encode(out, &res.map(MKDIR3resok::from, MKDIR3resfail::from));
        }
        NFSPROC3_SYMLINK => {
            let a: SYMLINK3args = decode(args)?;
            let (dir, name) = dirop(a.where_)?;
            let op = FsOp::Symlink {
                dir,
                name,
                target: fs_state::NfsPath3(a.symlink.symlink_data.0.into_owned()),
                attrs: sattr_in(a.symlink.symlink_attributes),
            };
            let res = create_like(proc, backend.execute(cred, op).await);
            encode(out, &res.map(SYMLINK3resok::from, SYMLINK3resfail::from));
        }
        NFSPROC3_MKNOD => {
            let (dir, name, what) = decode_mknod(args)?;
            let op = FsOp::Mknod { dir, name, what };
            let res = create_like(proc, backend.execute(cred, op).await);
            encode(out, &res.map(MKNOD3resok::from, MKNOD3resfail::from));
        }
        NFSPROC3_REMOVE => {
            let a: REMOVE3args = decode(args)?;
            let (dir, name) = dirop(a.object)?;
            let op = FsOp::Remove { dir, name };
            encode(out, &remove_res(backend.execute(cred, op).await));
        }
        NFSPROC3_RMDIR => {
            let a: RMDIR3args = decode(args)?;
            let (dir, name) = dirop(a.object)?;
            let op = FsOp::Rmdir { dir, name };
            encode(out, &rmdir_res(backend.execute(cred, op).await));
        }
        NFSPROC3_RENAME => {
            let a: RENAME3args = decode(args)?;
            let (from_dir, from_name) = dirop(a.from)?;
            let (to_dir, to_name) = dirop(a.to)?;
            let op = FsOp::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
            };
            encode(out, &rename_res(backend.execute(cred, op).await));
        }
        NFSPROC3_LINK => {
            let a: LINK3args = decode(args)?;
            let file = fh(a.file)?;
            let (dir, name) = dirop(a.link)?;
            let op = FsOp::Link {
                fh: file,
                dir,
                name,
            };
            encode(out, &link_res(backend.execute(cred, op).await));
        }
        NFSPROC3_READDIR => {
            let a: READDIR3args = decode(args)?;
            let op = FsOp::Readdir {
                dir: fh(a.dir)?,
                cookie: a.cookie,
                cookieverf: a.cookieverf.0,
                count: a.count,
            };
            encode(out, &readdir_res(backend.execute(cred, op).await));
        }
        NFSPROC3_READDIRPLUS => {
            let a: READDIRPLUS3args = decode(args)?;
            let op = FsOp::Readdirplus {
                dir: fh(a.dir)?,
                cookie: a.cookie,
                cookieverf: a.cookieverf.0,
                dircount: a.dircount,
                maxcount: a.maxcount,
            };
            encode(out, &readdirplus_res(backend.execute(cred, op).await));
        }
        NFSPROC3_FSSTAT => {
            let a: FSSTAT3args = decode(args)?;
            let op = FsOp::Fsstat { fh: fh(a.fsroot)? };
            encode(out, &fsstat_res(backend.execute(cred, op).await));
        }
        NFSPROC3_FSINFO => {
            let a: FSINFO3args = decode(args)?;
            let op = FsOp::Fsinfo { fh: fh(a.fsroot)? };
            encode(out, &fsinfo_res(backend.execute(cred, op).await));
        }
        NFSPROC3_PATHCONF => {
            let a: PATHCONF3args = decode(args)?;
            let op = FsOp::Pathconf { fh: fh(a.object)? };
            encode(out, &pathconf_res(backend.execute(cred, op).await));
        }
        NFSPROC3_COMMIT => {
            let a: COMMIT3args = decode(args)?;
            let op = FsOp::Commit {
                fh: fh(a.file)?,
                offset: a.offset,
                count: a.count,
            };
            encode(out, &commit_res(backend.execute(cred, op).await));
        }
    }
    Ok(())
}

/// MKNOD by hand: `nfs3_types` folds every unknown `ftype3` of `mknoddata3` into one
/// value, but NF3REG/NF3DIR/NF3LNK must reach the backend (it answers BADTYPE) while a
/// number that is no `ftype3` at all is malformed XDR.
fn decode_mknod(
    args: &[u8],
) -> Result<(fs_state::FileHandle, fs_state::Filename3, MknodData3), CallError> {
    let mut cur = Cursor::new(args);
    let garbage = |_| CallError::GarbageArgs;
    let (where_, _) = diropargs3::unpack(&mut cur).map_err(garbage)?;
    let (ftype, _) = u32::unpack(&mut cur).map_err(garbage)?;
    let what = match ftype {
        3 | 4 => {
            let (d, _) = devicedata3::unpack(&mut cur).map_err(garbage)?;
            let attrs = sattr_in(d.dev_attributes);
            let spec = spec_in(d.spec);
            if ftype == 3 {
                MknodData3::Blk { attrs, spec }
            } else {
                MknodData3::Chr { attrs, spec }
            }
        }
        6 | 7 => {
            let (s, _) = sattr3::unpack(&mut cur).map_err(garbage)?;
            let attrs = sattr_in(s);
            if ftype == 6 {
                MknodData3::Sock { attrs }
            } else {
                MknodData3::Fifo { attrs }
            }
        }
        1 => MknodData3::Other(FType3::Reg),
        2 => MknodData3::Other(FType3::Dir),
        5 => MknodData3::Other(FType3::Lnk),
        _ => return Err(CallError::GarbageArgs),
    };
    if cur.position() != args.len() as u64 {
        return Err(CallError::GarbageArgs);
    }
    let (dir, name) = dirop(where_)?;
    Ok((dir, name, what))
}

fn getattr_res(r: FsReply) -> GETATTR3res {
    match r.0 {
        Ok(ReplyBody::Getattr { obj_attributes }) => Nfs3Result::Ok(GETATTR3resok {
            obj_attributes: fattr_out(obj_attributes),
        }),
        Ok(other) => Nfs3Result::Err((mismatch(NFS_PROGRAM::NFSPROC3_GETATTR, &other), Void)),
        Err(f) => Nfs3Result::Err((stat_out(f.status), Void)),
    }
}

fn setattr_res(r: FsReply) -> SETATTR3res {
    match r.0 {
        Ok(ReplyBody::Setattr { obj_wcc }) => Nfs3Result::Ok(SETATTR3resok {
            obj_wcc: wcc_out(obj_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_SETATTR, &other),
            SETATTR3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            SETATTR3resfail {
                obj_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

fn lookup_res(r: FsReply) -> LOOKUP3res {
    match r.0 {
        Ok(ReplyBody::Lookup {
            object,
            obj_attributes,
            dir_attributes,
        }) => Nfs3Result::Ok(LOOKUP3resok {
            object: fh_out(object),
            obj_attributes: post_op(obj_attributes),
            dir_attributes: post_op(dir_attributes),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_LOOKUP, &other),
            LOOKUP3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            LOOKUP3resfail {
                dir_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn access_res(r: FsReply) -> ACCESS3res {
    match r.0 {
        Ok(ReplyBody::Access {
            obj_attributes,
            access,
        }) => Nfs3Result::Ok(ACCESS3resok {
            obj_attributes: post_op(obj_attributes),
            access,
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_ACCESS, &other),
            ACCESS3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            ACCESS3resfail {
                obj_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn readlink_res(r: FsReply) -> READLINK3res<'static> {
    match r.0 {
        Ok(ReplyBody::Readlink {
            symlink_attributes,
            data,
        }) => Nfs3Result::Ok(READLINK3resok {
            symlink_attributes: post_op(symlink_attributes),
            data: nfspath3(Opaque::owned(data.0)),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_READLINK, &other),
            READLINK3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            READLINK3resfail {
                symlink_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn read_res(r: FsReply) -> READ3res<'static> {
    match r.0 {
        Ok(ReplyBody::Read {
            file_attributes,
            count,
            eof,
            data,
        }) => Nfs3Result::Ok(READ3resok {
            file_attributes: post_op(file_attributes),
            count,
            eof,
            data: Opaque::owned(data),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_READ, &other),
            READ3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            READ3resfail {
                file_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn write_res(r: FsReply) -> WRITE3res {
    match r.0 {
        Ok(ReplyBody::Write {
            file_wcc,
            count,
            committed,
            verf,
        }) => Nfs3Result::Ok(WRITE3resok {
            file_wcc: wcc_out(file_wcc),
            count,
            committed: stable_out(committed),
            verf: writeverf3(verf),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_WRITE, &other),
            WRITE3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            WRITE3resfail {
                file_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

/// CREATE, MKDIR, SYMLINK and MKNOD results are the same shape (`diropres3`-like) under
/// four names; this is that shape, converted once.
struct Created {
    obj: wire::post_op_fh3,
    obj_attributes: post_op_attr,
    dir_wcc: wcc_data,
}

struct CreateFail {
    dir_wcc: wcc_data,
}

fn create_like(proc: NFS_PROGRAM, r: FsReply) -> Nfs3Result<Created, CreateFail> {
    match r.0 {
        Ok(ReplyBody::Create {
            obj,
            obj_attributes,
            dir_wcc,
        }) => Nfs3Result::Ok(Created {
            obj: post_op_fh(obj),
            obj_attributes: post_op(obj_attributes),
            dir_wcc: wcc_out(dir_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(proc, &other),
            CreateFail {
                dir_wcc: wcc_data::default(),
            },
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            CreateFail {
                dir_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

trait MapResult<T, E> {
    fn map<T2, E2>(self, ok: impl FnOnce(T) -> T2, err: impl FnOnce(E) -> E2)
    -> Nfs3Result<T2, E2>;
}

impl<T, E> MapResult<T, E> for Nfs3Result<T, E> {
    fn map<T2, E2>(
        self,
        ok: impl FnOnce(T) -> T2,
        err: impl FnOnce(E) -> E2,
    ) -> Nfs3Result<T2, E2> {
        match self {
            Nfs3Result::Ok(v) => Nfs3Result::Ok(ok(v)),
            Nfs3Result::Err((s, e)) => Nfs3Result::Err((s, err(e))),
        }
    }
}

macro_rules! created_into {
    ($ok:ident, $fail:ident) => {
        impl From<Created> for $ok {
            fn from(c: Created) -> Self {
                $ok {
                    obj: c.obj,
                    obj_attributes: c.obj_attributes,
                    dir_wcc: c.dir_wcc,
                }
            }
        }
        impl From<CreateFail> for $fail {
            fn from(c: CreateFail) -> Self {
                $fail { dir_wcc: c.dir_wcc }
            }
        }
    };
}
created_into!(CREATE3resok, CREATE3resfail);
created_into!(MKDIR3resok, MKDIR3resfail);
created_into!(SYMLINK3resok, SYMLINK3resfail);
created_into!(MKNOD3resok, MKNOD3resfail);

fn remove_res(r: FsReply) -> REMOVE3res {
    match r.0 {
        Ok(ReplyBody::Remove { dir_wcc }) => Nfs3Result::Ok(REMOVE3resok {
            dir_wcc: wcc_out(dir_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_REMOVE, &other),
            REMOVE3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            REMOVE3resfail {
                dir_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

fn rmdir_res(r: FsReply) -> RMDIR3res {
    match r.0 {
        Ok(ReplyBody::Rmdir { dir_wcc }) => Nfs3Result::Ok(RMDIR3resok {
            dir_wcc: wcc_out(dir_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_RMDIR, &other),
            RMDIR3resfail {
                dir_wcc: wcc_data::default(),
            },
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            RMDIR3resfail {
                dir_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

fn rename_res(r: FsReply) -> RENAME3res {
    match r.0 {
        Ok(ReplyBody::Rename {
            fromdir_wcc,
            todir_wcc,
        }) => Nfs3Result::Ok(RENAME3resok {
            fromdir_wcc: wcc_out(fromdir_wcc),
            todir_wcc: wcc_out(todir_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_RENAME, &other),
            RENAME3resfail::default(),
        )),
        Err(f) => {
            let fail = match f.attrs {
                fs_state::FailAttrs::Rename {
                    fromdir_wcc,
                    todir_wcc,
                } => RENAME3resfail {
                    fromdir_wcc: wcc_out(fromdir_wcc),
                    todir_wcc: wcc_out(todir_wcc),
                },
                _ => RENAME3resfail::default(),
            };
            Nfs3Result::Err((stat_out(f.status), fail))
        }
    }
}

fn link_res(r: FsReply) -> LINK3res {
    match r.0 {
        Ok(ReplyBody::Link {
            file_attributes,
            linkdir_wcc,
        }) => Nfs3Result::Ok(LINK3resok {
            file_attributes: post_op(file_attributes),
            linkdir_wcc: wcc_out(linkdir_wcc),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_LINK, &other),
            LINK3resfail {
                file_attributes: post_op_attr::None,
                linkdir_wcc: wcc_data::default(),
            },
        )),
        Err(f) => {
            let fail = match f.attrs {
                fs_state::FailAttrs::Link {
                    file_attributes,
                    linkdir_wcc,
                } => LINK3resfail {
                    file_attributes: post_op(file_attributes),
                    linkdir_wcc: wcc_out(linkdir_wcc),
                },
                other => LINK3resfail {
                    file_attributes: post_op_attr::None,
                    linkdir_wcc: fail_wcc(other),
                },
            };
            Nfs3Result::Err((stat_out(f.status), fail))
        }
    }
}

fn readdir_res(r: FsReply) -> READDIR3res<'static> {
    match r.0 {
        Ok(ReplyBody::Readdir {
            dir_attributes,
            cookieverf,
            entries,
            eof,
        }) => Nfs3Result::Ok(READDIR3resok {
            dir_attributes: post_op(dir_attributes),
            cookieverf: cookieverf3(cookieverf),
            reply: dirlist3 {
                entries: List(
                    entries
                        .into_iter()
                        .map(|e| entry3 {
                            fileid: e.fileid,
                            name: filename3(Opaque::owned(e.name.0)),
                            cookie: e.cookie,
                        })
                        .collect(),
                ),
                eof,
            },
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_READDIR, &other),
            READDIR3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            READDIR3resfail {
                dir_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn readdirplus_res(r: FsReply) -> READDIRPLUS3res<'static> {
    match r.0 {
        Ok(ReplyBody::Readdirplus {
            dir_attributes,
            cookieverf,
            entries,
            eof,
        }) => Nfs3Result::Ok(READDIRPLUS3resok {
            dir_attributes: post_op(dir_attributes),
            cookieverf: cookieverf3(cookieverf),
            reply: dirlistplus3 {
                entries: List(
                    entries
                        .into_iter()
                        .map(|e| entryplus3 {
                            fileid: e.fileid,
                            name: filename3(Opaque::owned(e.name.0)),
                            cookie: e.cookie,
                            name_attributes: post_op(e.name_attributes),
                            name_handle: post_op_fh(e.name_handle),
                        })
                        .collect(),
                ),
                eof,
            },
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_READDIRPLUS, &other),
            READDIRPLUS3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            READDIRPLUS3resfail {
                dir_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn fsstat_res(r: FsReply) -> FSSTAT3res {
    match r.0 {
        Ok(ReplyBody::Fsstat {
            obj_attributes,
            tbytes,
            fbytes,
            abytes,
            tfiles,
            ffiles,
            afiles,
            invarsec,
        }) => Nfs3Result::Ok(FSSTAT3resok {
            obj_attributes: post_op(obj_attributes),
            tbytes,
            fbytes,
            abytes,
            tfiles,
            ffiles,
            afiles,
            invarsec,
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_FSSTAT, &other),
            FSSTAT3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            FSSTAT3resfail {
                obj_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn fsinfo_res(r: FsReply) -> FSINFO3res {
    match r.0 {
        Ok(ReplyBody::Fsinfo {
            obj_attributes,
            rtmax,
            rtpref,
            rtmult,
            wtmax,
            wtpref,
            wtmult,
            dtpref,
            maxfilesize,
            time_delta,
            properties,
        }) => Nfs3Result::Ok(FSINFO3resok {
            obj_attributes: post_op(obj_attributes),
            rtmax,
            rtpref,
            rtmult,
            wtmax,
            wtpref,
            wtmult,
            dtpref,
            maxfilesize,
            time_delta: crate::wire::time_out(time_delta),
            properties,
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_FSINFO, &other),
            FSINFO3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            FSINFO3resfail {
                obj_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn pathconf_res(r: FsReply) -> PATHCONF3res {
    match r.0 {
        Ok(ReplyBody::Pathconf {
            obj_attributes,
            linkmax,
            name_max,
            no_trunc,
            chown_restricted,
            case_insensitive,
            case_preserving,
        }) => Nfs3Result::Ok(PATHCONF3resok {
            obj_attributes: post_op(obj_attributes),
            linkmax,
            name_max,
            no_trunc,
            chown_restricted,
            case_insensitive,
            case_preserving,
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_PATHCONF, &other),
            PATHCONF3resfail::default(),
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            PATHCONF3resfail {
                obj_attributes: fail_post_op(f.attrs),
            },
        )),
    }
}

fn commit_res(r: FsReply) -> COMMIT3res {
    match r.0 {
        Ok(ReplyBody::Commit { file_wcc, verf }) => Nfs3Result::Ok(COMMIT3resok {
            file_wcc: wcc_out(file_wcc),
            verf: writeverf3(verf),
        }),
        Ok(other) => Nfs3Result::Err((
            mismatch(NFS_PROGRAM::NFSPROC3_COMMIT, &other),
            COMMIT3resfail {
                file_wcc: wcc_data::default(),
            },
        )),
        Err(f) => Nfs3Result::Err((
            stat_out(f.status),
            COMMIT3resfail {
                file_wcc: fail_wcc(f.attrs),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_types::nfs3::{Nfs3Option, set_atime, set_mtime, symlinkdata3};

    fn symlink_args(attrs: sattr3) -> Vec<u8> {
        let args = SYMLINK3args {
            where_: diropargs3 {
                dir: nfs_fh3 {
                    data: Opaque::owned(vec![7; 16]),
                },
                name: filename3(Opaque::owned(b"link".to_vec())),
            },
            symlink: symlinkdata3 {
                symlink_attributes: attrs,
                symlink_data: nfspath3(Opaque::owned(b"../target".to_vec())),
            },
        };
        let mut out = Vec::new();
        encode(&mut out, &args);
        out
    }

    #[test]
    fn opaques_fit_walks_real_arguments_and_refuses_forged_lengths() {
        let fields = arg_fields(NFS_PROGRAM::NFSPROC3_SYMLINK);
        for attrs in [
            sattr3::default(),
            sattr3 {
                mode: Nfs3Option::Some(0o644),
                uid: Nfs3Option::Some(1),
                gid: Nfs3Option::Some(2),
                size: Nfs3Option::Some(3),
                atime: set_atime::SET_TO_CLIENT_TIME(wire::nfstime3 {
                    seconds: 4,
                    nseconds: 5,
                }),
                mtime: set_mtime::SET_TO_SERVER_TIME,
            },
        ] {
            let args = symlink_args(attrs);
            assert_eq!(opaques_fit(&args, fields), Ok(()));
            assert!(decode::<SYMLINK3args>(&args).is_ok());
            // The target's length (the last opaque) forged to ~4 GiB.
            let mut forged = args.clone();
            let at = forged.len() - 16;
            forged[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
            assert_eq!(opaques_fit(&forged, fields), Err(CallError::GarbageArgs));
            // A truncated argument is garbage too.
            assert_eq!(
                opaques_fit(&args[..args.len() - 4], fields),
                Err(CallError::GarbageArgs)
            );
        }
        // A handle over NFS3_FHSIZE is refused before its bytes are looked at.
        let mut big = 65u32.to_be_bytes().to_vec();
        big.extend([0; 68]);
        assert_eq!(
            opaques_fit(&big, arg_fields(NFS_PROGRAM::NFSPROC3_GETATTR)),
            Err(CallError::GarbageArgs)
        );
    }
}
