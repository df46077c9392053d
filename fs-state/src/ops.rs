//! The operations a replica applies and the replies it produces (RFC 1813 names).
//!
//! These types are the boundary between the NFSv3 adapter (which decodes the wire
//! protocol) and the replicated file state machine. An `FsOp` is what the BFT client
//! orders; an `FsReply` is what every correct replica must produce byte for byte, so
//! every field here is computed from replicated state only (see `state.rs`). The one
//! canonical encoding of both is `encode`/`decode` below (bincode 2, serde, standard
//! config); byte payloads go through `serde_bytes` because a plain `Vec<u8>` through
//! serde is an order of magnitude slower.

use serde::{Deserialize, Serialize};

/// Largest file handle NFSv3 allows (RFC 1813 `NFS3_FHSIZE`).
pub const NFS3_FHSIZE: usize = 64;
/// Size of the handles this state machine issues: fileid (8, big-endian) + generation (8).
pub const FH_LEN: usize = 16;
/// The fileid of the root directory of the export.
pub const ROOT_FILEID: u64 = 1;

/// `nfs_fh3`: opaque to the client. Ours are `fileid || generation`, both big-endian,
/// assigned by the replicated counter, never derived from host inode numbers. The bytes
/// are kept as received so that a forged or truncated handle can be answered with
/// `NFS3ERR_BADHANDLE` instead of being silently reinterpreted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileHandle(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl FileHandle {
    pub fn new(fileid: u64, generation: u64) -> Self {
        let mut v = Vec::with_capacity(FH_LEN);
        v.extend_from_slice(&fileid.to_be_bytes());
        v.extend_from_slice(&generation.to_be_bytes());
        FileHandle(v)
    }

    /// The root handle of an export whose handles carry `generation`
    /// (`FsConfig::generation`).
    pub fn root(generation: u64) -> Self {
        Self::new(ROOT_FILEID, generation)
    }

    /// `(fileid, generation)`, or `None` if the bytes are not one of our handles.
    pub fn parse(&self) -> Option<(u64, u64)> {
        if self.0.len() != FH_LEN {
            return None;
        }
        let fileid = u64::from_be_bytes(self.0[0..8].try_into().ok()?);
        let generation = u64::from_be_bytes(self.0[8..16].try_into().ok()?);
        if fileid == 0 {
            return None;
        }
        Some((fileid, generation))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `filename3`: a single path component, opaque bytes on the wire.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Filename3(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// `nfspath3`: a symbolic link's target, opaque bytes, never interpreted by the server.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NfsPath3(#[serde(with = "serde_bytes")] pub Vec<u8>);

macro_rules! bytes_newtype_from {
    ($t:ident) => {
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                $t(s.as_bytes().to_vec())
            }
        }
        impl From<&[u8]> for $t {
            fn from(s: &[u8]) -> Self {
                $t(s.to_vec())
            }
        }
        impl From<Vec<u8>> for $t {
            fn from(v: Vec<u8>) -> Self {
                $t(v)
            }
        }
        impl $t {
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }
    };
}
bytes_newtype_from!(Filename3);
bytes_newtype_from!(NfsPath3);

/// Caller credentials from AUTH_UNIX (RFC 1057 `authunix_parms`, the parts that matter).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthUnix {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
}

impl AuthUnix {
    pub fn root() -> Self {
        AuthUnix {
            uid: 0,
            gid: 0,
            gids: Vec::new(),
        }
    }

    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }
}

/// Everything about an operation that is not in the operation itself but must be the
/// same on every replica: the ordered batch's timestamp (from the primary's PREPARE)
/// and the caller's credentials (from the signed request).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OpContext {
    /// Nanoseconds since the Unix epoch, the ordered batch's primary timestamp.
    pub timestamp_ns: u64,
    pub cred: AuthUnix,
}

/// `nfstime3`.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash,
)]
pub struct NfsTime {
    pub seconds: u32,
    pub nseconds: u32,
}

impl NfsTime {
    pub fn from_ns(ns: u64) -> Self {
        NfsTime {
            seconds: (ns / 1_000_000_000) as u32,
            nseconds: (ns % 1_000_000_000) as u32,
        }
    }
}

/// `ftype3`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FType3 {
    Reg,
    Dir,
    Blk,
    Chr,
    Lnk,
    Sock,
    Fifo,
}

/// `specdata3`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SpecData3 {
    pub specdata1: u32,
    pub specdata2: u32,
}

/// `fattr3`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fattr3 {
    pub ftype: FType3,
    /// Permission bits only (`0o7777`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub used: u64,
    pub rdev: SpecData3,
    pub fsid: u64,
    pub fileid: u64,
    pub atime: NfsTime,
    pub mtime: NfsTime,
    pub ctime: NfsTime,
}

/// `set_atime` / `set_mtime`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SetTime {
    #[default]
    DontChange,
    /// `SET_TO_SERVER_TIME`: the ordered batch's timestamp.
    ServerTime,
    ClientTime(NfsTime),
}

/// `sattr3`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Sattr3 {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: SetTime,
    pub mtime: SetTime,
}

/// `wcc_attr`: the pre-operation attributes of weak cache consistency data.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WccAttr {
    pub size: u64,
    pub mtime: NfsTime,
    pub ctime: NfsTime,
}

/// `wcc_data`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct WccData {
    pub before: Option<WccAttr>,
    pub after: Option<Fattr3>,
}

/// `stable_how`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StableHow {
    Unstable,
    DataSync,
    FileSync,
}

/// `createhow3`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum CreateHow {
    Unchecked(Sattr3),
    Guarded(Sattr3),
    /// `createverf3`: a retry with the same verifier finds the file it created.
    Exclusive([u8; 8]),
}

/// `mknoddata3`: the node type and its attributes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum MknodData3 {
    Chr {
        attrs: Sattr3,
        spec: SpecData3,
    },
    Blk {
        attrs: Sattr3,
        spec: SpecData3,
    },
    Sock {
        attrs: Sattr3,
    },
    Fifo {
        attrs: Sattr3,
    },
    /// `NF3REG`, `NF3DIR`, `NF3LNK`: answered with `NFS3ERR_BADTYPE`.
    Other(FType3),
}

/// ACCESS bits (RFC 1813 3.3.4).
pub const ACCESS3_READ: u32 = 0x0001;
pub const ACCESS3_LOOKUP: u32 = 0x0002;
pub const ACCESS3_MODIFY: u32 = 0x0004;
pub const ACCESS3_EXTEND: u32 = 0x0008;
pub const ACCESS3_DELETE: u32 = 0x0010;
pub const ACCESS3_EXECUTE: u32 = 0x0020;

/// FSINFO properties (RFC 1813 3.3.19).
pub const FSF3_LINK: u32 = 0x0001;
pub const FSF3_SYMLINK: u32 = 0x0002;
pub const FSF3_HOMOGENEOUS: u32 = 0x0008;
pub const FSF3_CANSETTIME: u32 = 0x0010;

/// One NFSv3 procedure with its arguments (NULL is answered by the adapter).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum FsOp {
    Getattr {
        fh: FileHandle,
    },
    Setattr {
        fh: FileHandle,
        attrs: Sattr3,
        /// `sattrguard3`: apply only if the object's ctime equals this.
        guard_ctime: Option<NfsTime>,
    },
    Lookup {
        dir: FileHandle,
        name: Filename3,
    },
    Access {
        fh: FileHandle,
        mask: u32,
    },
    Readlink {
        fh: FileHandle,
    },
    Read {
        fh: FileHandle,
        offset: u64,
        count: u32,
    },
    Write {
        fh: FileHandle,
        offset: u64,
        stable: StableHow,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Create {
        dir: FileHandle,
        name: Filename3,
        how: CreateHow,
    },
    Mkdir {
        dir: FileHandle,
        name: Filename3,
        attrs: Sattr3,
    },
    Symlink {
        dir: FileHandle,
        name: Filename3,
        target: NfsPath3,
        attrs: Sattr3,
    },
    Mknod {
        dir: FileHandle,
        name: Filename3,
        what: MknodData3,
    },
    Remove {
        dir: FileHandle,
        name: Filename3,
    },
    Rmdir {
        dir: FileHandle,
        name: Filename3,
    },
    Rename {
        from_dir: FileHandle,
        from_name: Filename3,
        to_dir: FileHandle,
        to_name: Filename3,
    },
    Link {
        fh: FileHandle,
        dir: FileHandle,
        name: Filename3,
    },
    Readdir {
        dir: FileHandle,
        cookie: u64,
        cookieverf: [u8; 8],
        count: u32,
    },
    Readdirplus {
        dir: FileHandle,
        cookie: u64,
        cookieverf: [u8; 8],
        dircount: u32,
        maxcount: u32,
    },
    Fsstat {
        fh: FileHandle,
    },
    Fsinfo {
        fh: FileHandle,
    },
    Pathconf {
        fh: FileHandle,
    },
    Commit {
        fh: FileHandle,
        offset: u64,
        count: u32,
    },
}

/// Procedures that change nothing and may take the read-only path (sent to all
/// replicas, accepted on 2f+1 matching replies, otherwise ordered like a write).
/// READ does not update atime for exactly this reason.
pub fn is_read_only(op: &FsOp) -> bool {
    match op {
        FsOp::Getattr { .. }
        | FsOp::Lookup { .. }
        | FsOp::Access { .. }
        | FsOp::Readlink { .. }
        | FsOp::Read { .. }
        | FsOp::Readdir { .. }
        | FsOp::Readdirplus { .. }
        | FsOp::Fsstat { .. }
        | FsOp::Fsinfo { .. }
        | FsOp::Pathconf { .. } => true,
        FsOp::Setattr { .. }
        | FsOp::Write { .. }
        | FsOp::Create { .. }
        | FsOp::Mkdir { .. }
        | FsOp::Symlink { .. }
        | FsOp::Mknod { .. }
        | FsOp::Remove { .. }
        | FsOp::Rmdir { .. }
        | FsOp::Rename { .. }
        | FsOp::Link { .. }
        | FsOp::Commit { .. } => false,
    }
}

impl FsOp {
    pub fn is_read_only(&self) -> bool {
        is_read_only(self)
    }

    /// RFC 1813 procedure number.
    pub fn procedure(&self) -> u32 {
        match self {
            FsOp::Getattr { .. } => 1,
            FsOp::Setattr { .. } => 2,
            FsOp::Lookup { .. } => 3,
            FsOp::Access { .. } => 4,
            FsOp::Readlink { .. } => 5,
            FsOp::Read { .. } => 6,
            FsOp::Write { .. } => 7,
            FsOp::Create { .. } => 8,
            FsOp::Mkdir { .. } => 9,
            FsOp::Symlink { .. } => 10,
            FsOp::Mknod { .. } => 11,
            FsOp::Remove { .. } => 12,
            FsOp::Rmdir { .. } => 13,
            FsOp::Rename { .. } => 14,
            FsOp::Link { .. } => 15,
            FsOp::Readdir { .. } => 16,
            FsOp::Readdirplus { .. } => 17,
            FsOp::Fsstat { .. } => 18,
            FsOp::Fsinfo { .. } => 19,
            FsOp::Pathconf { .. } => 20,
            FsOp::Commit { .. } => 21,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }
}

/// `nfsstat3` (RFC 1813 2.6), error codes only: success is `FsReply(Ok(..))`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum NfsStat3 {
    Perm = 1,
    Noent = 2,
    Io = 5,
    Nxio = 6,
    Acces = 13,
    Exist = 17,
    Xdev = 18,
    Nodev = 19,
    Notdir = 20,
    Isdir = 21,
    Inval = 22,
    Fbig = 27,
    Nospc = 28,
    Rofs = 30,
    Mlink = 31,
    Nametoolong = 63,
    Notempty = 66,
    Dquot = 69,
    Stale = 70,
    Remote = 71,
    Badhandle = 10001,
    NotSync = 10002,
    BadCookie = 10003,
    Notsupp = 10004,
    Toosmall = 10005,
    Serverfault = 10006,
    Badtype = 10007,
    Jukebox = 10008,
}

impl NfsStat3 {
    /// The wire value of `nfsstat3`.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// `entry3` of READDIR.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry3 {
    pub fileid: u64,
    pub name: Filename3,
    pub cookie: u64,
}

/// `entryplus3` of READDIRPLUS.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entryplus3 {
    pub fileid: u64,
    pub name: Filename3,
    pub cookie: u64,
    pub name_attributes: Option<Fattr3>,
    pub name_handle: Option<FileHandle>,
}

/// The `resok` arm of each procedure's result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplyBody {
    Getattr {
        obj_attributes: Fattr3,
    },
    Setattr {
        obj_wcc: WccData,
    },
    Lookup {
        object: FileHandle,
        obj_attributes: Option<Fattr3>,
        dir_attributes: Option<Fattr3>,
    },
    Access {
        obj_attributes: Option<Fattr3>,
        access: u32,
    },
    Readlink {
        symlink_attributes: Option<Fattr3>,
        data: NfsPath3,
    },
    Read {
        file_attributes: Option<Fattr3>,
        count: u32,
        eof: bool,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Write {
        file_wcc: WccData,
        count: u32,
        committed: StableHow,
        verf: [u8; 8],
    },
    /// CREATE, MKDIR, SYMLINK and MKNOD share `diropres3`-like results.
    Create {
        obj: Option<FileHandle>,
        obj_attributes: Option<Fattr3>,
        dir_wcc: WccData,
    },
    Remove {
        dir_wcc: WccData,
    },
    Rmdir {
        dir_wcc: WccData,
    },
    Rename {
        fromdir_wcc: WccData,
        todir_wcc: WccData,
    },
    Link {
        file_attributes: Option<Fattr3>,
        linkdir_wcc: WccData,
    },
    Readdir {
        dir_attributes: Option<Fattr3>,
        cookieverf: [u8; 8],
        entries: Vec<Entry3>,
        eof: bool,
    },
    Readdirplus {
        dir_attributes: Option<Fattr3>,
        cookieverf: [u8; 8],
        entries: Vec<Entryplus3>,
        eof: bool,
    },
    Fsstat {
        obj_attributes: Option<Fattr3>,
        tbytes: u64,
        fbytes: u64,
        abytes: u64,
        tfiles: u64,
        ffiles: u64,
        afiles: u64,
        invarsec: u32,
    },
    Fsinfo {
        obj_attributes: Option<Fattr3>,
        rtmax: u32,
        rtpref: u32,
        rtmult: u32,
        wtmax: u32,
        wtpref: u32,
        wtmult: u32,
        dtpref: u32,
        maxfilesize: u64,
        time_delta: NfsTime,
        properties: u32,
    },
    Pathconf {
        obj_attributes: Option<Fattr3>,
        linkmax: u32,
        name_max: u32,
        no_trunc: bool,
        chown_restricted: bool,
        case_insensitive: bool,
        case_preserving: bool,
    },
    Commit {
        file_wcc: WccData,
        verf: [u8; 8],
    },
}

/// The `resfail` arm: what RFC 1813 returns beside the status for each procedure.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum FailAttrs {
    /// GETATTR (and any procedure whose handle could not be decoded at all).
    None,
    /// `post_op_attr`: LOOKUP (dir), ACCESS, READLINK, READ, READDIR(PLUS), FSSTAT,
    /// FSINFO, PATHCONF.
    PostOp(Option<Fattr3>),
    /// `wcc_data`: SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, COMMIT.
    Wcc(WccData),
    Rename {
        fromdir_wcc: WccData,
        todir_wcc: WccData,
    },
    Link {
        file_attributes: Option<Fattr3>,
        linkdir_wcc: WccData,
    },
}

/// A failed procedure: `nfsstat3` plus its `resfail` attributes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct NfsFailure {
    pub status: NfsStat3,
    pub attrs: FailAttrs,
}

/// The reply to one `FsOp`: `Ok(resok)` or `Err(status + resfail)`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct FsReply(pub Result<ReplyBody, NfsFailure>);

impl FsReply {
    pub fn ok(body: ReplyBody) -> Self {
        FsReply(Ok(body))
    }

    pub fn fail(status: NfsStat3, attrs: FailAttrs) -> Self {
        FsReply(Err(NfsFailure { status, attrs }))
    }

    /// `None` for NFS3_OK.
    pub fn status(&self) -> Option<NfsStat3> {
        match &self.0 {
            Ok(_) => None,
            Err(f) => Some(f.status),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.0.is_ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes)
    }
}

/// Bytes that do not decode into the expected type (Byzantine or corrupt input).
#[derive(Debug, thiserror::Error)]
#[error("decode failed: {0}")]
pub struct DecodeError(String);

/// Bound on a decoded value (a WRITE of `wtmax` plus headroom): a forged length prefix
/// must not make the decoder allocate gigabytes.
pub const DECODE_BYTES_MAX: usize = 64 << 20;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// The one canonical encoding of ops, replies and replicated metadata.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding these types into a Vec cannot fail (no unsupported serde features, sizes
    // bounded by the caller); a failure is a programmer error.
    bincode::serde::encode_to_vec(value, bincode_config()).expect("bincode encode of fs-state type")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Decode this replica's own files (metadata snapshot, journal): no size limit, and a
/// failure means local corruption, not Byzantine input.
pub(crate) fn decode_local<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_and_reply_round_trip() {
        let op = FsOp::Write {
            fh: FileHandle::new(7, 1),
            offset: 4096,
            stable: StableHow::FileSync,
            data: vec![0xab; 4096],
        };
        let bytes = op.encode();
        assert!(bytes.len() < 4096 + 64);
        assert_eq!(FsOp::decode(&bytes).unwrap(), op);
        let reply = FsReply::fail(NfsStat3::Stale, FailAttrs::Wcc(WccData::default()));
        assert_eq!(FsReply::decode(&reply.encode()).unwrap(), reply);
        assert!(FsOp::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(FileHandle::new(7, 1).parse(), Some((7, 1)));
        assert_eq!(FileHandle(vec![1, 2, 3]).parse(), None);
    }
}
