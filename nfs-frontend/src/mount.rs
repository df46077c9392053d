//! MOUNT v3 (RFC 1813 appendix I) and a minimal portmapper (RFC 1833 v2), on the NFS port.
//!
//! There is no system portmapper on these machines and no privileged port to bind, so
//! all three programs share one TCP port; clients that are told both ports (libnfs's
//! `nfsport`/`mountport`, nfs3_client's `mount_port`/`nfs3_port`) never ask the
//! portmapper, and those that do get this port back. MNT resolves a path by LOOKUPs
//! through the backend, so mounting a subdirectory is ordered and permission-checked like
//! any other access. The server keeps no mount list: NFSv3 is stateless, and a list that
//! differed between frontends would be a reply that differs.

use fs_state::{AuthUnix, FType3, FileHandle, Filename3, FsOp, NfsStat3, ReplyBody};
use nfs3_types::mount::{
    MNTPATHLEN, MOUNT_PROGRAM, dirpath, export_node, exports, fhandle3, mountlist, mountres3,
    mountres3_ok, mountstat3,
};
use nfs3_types::portmap::{IPPROTO_TCP, PMAP_PROG, mapping};
use nfs3_types::xdr_codec::{List, Opaque, Void};

use crate::backend::FsBackend;
use crate::nfs::{CallError, Field, decode, encode, opaques_fit};

/// AUTH_UNIX, the only flavor MNT advertises (AUTH_NULL calls are served as nobody).
const AUTH_UNIX: u32 = 1;

/// Serve one MOUNT v3 call.
pub(crate) async fn call<B: FsBackend>(
    backend: &B,
    cred: AuthUnix,
    proc: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    let proc = MOUNT_PROGRAM::try_from(proc).map_err(|_| CallError::ProcUnavail)?;
    if matches!(
        proc,
        MOUNT_PROGRAM::MOUNTPROC3_MNT | MOUNT_PROGRAM::MOUNTPROC3_UMNT
    ) {
        // `dirpath` is decoded by `nfs3_types`, which allocates its claimed length.
        opaques_fit(args, &[Field::Opaque(MNTPATHLEN)])?;
    }
    match proc {
        MOUNT_PROGRAM::MOUNTPROC3_NULL
        | MOUNT_PROGRAM::MOUNTPROC3_UMNTALL
        | MOUNT_PROGRAM::MOUNTPROC3_UMNT => {
            // UMNT carries a path; nothing is tracked, so it is only validated.
            if matches!(proc, MOUNT_PROGRAM::MOUNTPROC3_UMNT) {
                let path: dirpath = decode(args)?;
                if path.0.len() > MNTPATHLEN {
                    return Err(CallError::GarbageArgs);
                }
            } else {
                decode::<Void>(args)?;
            }
            encode(out, &Void);
        }
        MOUNT_PROGRAM::MOUNTPROC3_MNT => {
            let path: dirpath = decode(args)?;
            if path.0.len() > MNTPATHLEN {
                return Err(CallError::GarbageArgs);
            }
            let res = match mnt(backend, cred, &path.0).await {
                Ok(fh) => mountres3::Ok(mountres3_ok {
                    fhandle: fhandle3(Opaque::owned(fh.0)),
                    auth_flavors: vec![AUTH_UNIX],
                }),
                Err(stat) => mountres3::Err(stat),
            };
            encode(out, &res);
        }
        MOUNT_PROGRAM::MOUNTPROC3_DUMP => {
            decode::<Void>(args)?;
            encode(out, &mountlist::default());
        }
        MOUNT_PROGRAM::MOUNTPROC3_EXPORT => {
            decode::<Void>(args)?;
            let list: exports = List(vec![export_node {
                ex_dir: dirpath(Opaque::borrowed(b"/")),
                ex_groups: List(Vec::new()),
            }]);
            encode(out, &list);
        }
    }
    Ok(())
}

/// Resolve an export path ("/" or a directory below it) to a handle.
async fn mnt<B: FsBackend>(
    backend: &B,
    cred: AuthUnix,
    path: &[u8],
) -> Result<FileHandle, mountstat3> {
    let mut fh = backend.root_handle();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            // The export's root is the top: nothing above it can be mounted.
            b".." => return Err(mountstat3::MNT3ERR_ACCES),
            name => {
                let op = FsOp::Lookup {
                    dir: fh,
                    name: Filename3(name.to_vec()),
                };
                fh = match backend.execute(cred.clone(), op).await.0 {
                    Ok(ReplyBody::Lookup {
                        object,
                        obj_attributes,
                        ..
                    }) => {
                        if obj_attributes.is_some_and(|a| a.ftype != FType3::Dir) {
                            return Err(mountstat3::MNT3ERR_NOTDIR);
                        }
                        object
                    }
                    Ok(_) => return Err(mountstat3::MNT3ERR_SERVERFAULT),
                    Err(f) => return Err(mount_stat(f.status)),
                };
            }
        }
    }
    Ok(fh)
}

fn mount_stat(s: NfsStat3) -> mountstat3 {
    match s {
        NfsStat3::Perm => mountstat3::MNT3ERR_PERM,
        NfsStat3::Noent | NfsStat3::Stale | NfsStat3::Badhandle => mountstat3::MNT3ERR_NOENT,
        NfsStat3::Io => mountstat3::MNT3ERR_IO,
        NfsStat3::Acces => mountstat3::MNT3ERR_ACCES,
        NfsStat3::Notdir => mountstat3::MNT3ERR_NOTDIR,
        NfsStat3::Inval => mountstat3::MNT3ERR_INVAL,
        NfsStat3::Nametoolong => mountstat3::MNT3ERR_NAMETOOLONG,
        NfsStat3::Notsupp => mountstat3::MNT3ERR_NOTSUPP,
        _ => mountstat3::MNT3ERR_SERVERFAULT,
    }
}

/// Serve one portmapper v2 call: every program here lives on `port`.
pub(crate) fn portmap_call(
    port: u16,
    proc: u32,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    let proc = PMAP_PROG::try_from(proc).map_err(|_| CallError::ProcUnavail)?;
    let served = [
        (nfs3_types::nfs3::PROGRAM, nfs3_types::nfs3::VERSION),
        (nfs3_types::mount::PROGRAM, nfs3_types::mount::VERSION),
        (nfs3_types::portmap::PROGRAM, nfs3_types::portmap::VERSION),
    ];
    match proc {
        PMAP_PROG::PMAPPROC_NULL => {
            decode::<Void>(args)?;
            encode(out, &Void);
        }
        PMAP_PROG::PMAPPROC_SET | PMAP_PROG::PMAPPROC_UNSET => {
            decode::<mapping>(args)?;
            encode(out, &false);
        }
        PMAP_PROG::PMAPPROC_GETPORT => {
            let m: mapping = decode(args)?;
            let found = m.prot == IPPROTO_TCP && served.contains(&(m.prog, m.vers));
            encode(out, &if found { u32::from(port) } else { 0 });
        }
        PMAP_PROG::PMAPPROC_DUMP => {
            decode::<Void>(args)?;
            let list = List(
                served
                    .iter()
                    .map(|&(prog, vers)| mapping {
                        prog,
                        vers,
                        prot: IPPROTO_TCP,
                        port: u32::from(port),
                    })
                    .collect(),
            );
            encode(out, &list);
        }
        PMAP_PROG::PMAPPROC_CALLIT => return Err(CallError::ProcUnavail),
    }
    Ok(())
}
