//! ONC RPC v2 over TCP (RFC 5531): record marking, call headers, AUTH_UNIX, replies.
//!
//! Everything a client sends is hostile until parsed, so each length is bounded before
//! anything is allocated: a record (all its fragments) by `RECORD_BYTES_MAX`, an
//! authenticator by RFC 5531's 400 bytes, AUTH_UNIX's machine name by 255 bytes and its
//! group list by 16 entries. The call header is parsed here by hand rather than with
//! `nfs3_types`' generic decoders, which size a vector from the wire before checking it.

use fs_state::AuthUnix;
use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_stat, msg_body, opaque_auth, rejected_reply, reply_body,
    rpc_msg,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::nfs::encode;

/// Largest record (call) accepted: a 1 MiB WRITE (`wtmax`) plus headers, with room.
pub const RECORD_BYTES_MAX: usize = 4 << 20;
/// RFC 5531: the body of an `opaque_auth` is at most 400 bytes.
const AUTH_BYTES_MAX: usize = 400;
/// RFC 5531 `authsys_parms`: `machinename<255>`, `gids<16>`.
const MACHINENAME_BYTES_MAX: usize = 255;
const AUTH_GIDS_MAX: usize = 16;
const AUTH_NULL: u32 = 0;
const AUTH_UNIX: u32 = 1;
/// Bytes asked of the socket per read; a WRITE of 1 MiB takes a few reads.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("record of {0} bytes exceeds the limit of {RECORD_BYTES_MAX}")]
    RecordTooLarge(usize),
    #[error("call header malformed")]
    MalformedCall,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits the TCP byte stream into records. `fill` is cancel-safe (one `read`), so the
/// connection loop can wait on it and on finished calls at the same time.
#[derive(Debug, Default)]
pub(crate) struct RecordReader {
    buf: Vec<u8>,
}

impl RecordReader {
    /// Read more bytes; `Ok(0)` at end of stream.
    pub(crate) async fn fill(
        &mut self,
        io: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<usize> {
        self.buf.reserve(READ_CHUNK_BYTES);
        io.read_buf(&mut self.buf).await
    }

    /// Bytes received that are not yet part of a returned record.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete record with fragment headers removed, if all of it is here.
    pub(crate) fn next_record(&mut self) -> Result<Option<Vec<u8>>, ConnectionError> {
        let mut pos = 0;
        let mut total = 0;
        loop {
            let Some(header) = self.buf.get(pos..pos + 4) else {
                return Ok(None);
            };
            let header = u32::from_be_bytes(header.try_into().expect("4 bytes"));
            let last = header & 0x8000_0000 != 0;
            let len = (header & 0x7fff_ffff) as usize;
            total += len;
            pos += 4 + len;
            // The fragment headers count too: empty non-last fragments add nothing to
            // `total` but are buffered all the same.
            if pos > RECORD_BYTES_MAX {
                return Err(ConnectionError::RecordTooLarge(pos));
            }
            if self.buf.len() < pos {
                return Ok(None);
            }
            if last {
                break;
            }
        }
        let mut record = Vec::with_capacity(total);
        let mut at = 0;
        while at < pos {
            let header = u32::from_be_bytes(self.buf[at..at + 4].try_into().expect("4 bytes"));
            let len = (header & 0x7fff_ffff) as usize;
            record.extend_from_slice(&self.buf[at + 4..at + 4 + len]);
            at += 4 + len;
        }
        self.buf.drain(..pos);
        Ok(Some(record))
    }
}

/// Who is calling, as far as the RPC layer can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    Unix(AuthUnix),
    Null,
    /// A flavor this server does not accept (AUTH_SHORT, AUTH_DES, RPCSEC_GSS, ...).
    Unsupported(u32),
    /// AUTH_UNIX whose body breaks RFC 5531's bounds.
    Malformed,
}

/// A parsed call header; `args` is the offset of the procedure's arguments.
#[derive(Debug)]
pub(crate) struct CallHeader {
    pub xid: u32,
    pub rpcvers: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc: u32,
    pub cred: Credential,
    pub args: usize,
}

/// Big-endian XDR reader over a slice that never allocates from a wire length.
pub(crate) struct Xdr<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Xdr<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Xdr { buf, pos: 0 }
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes(b.try_into().ok()?))
    }

    /// `opaque<max>`, padded to 4 bytes.
    pub(crate) fn opaque(&mut self, max: usize) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        let padded = len.div_ceil(4) * 4;
        let b = self.buf.get(self.pos..self.pos + padded)?;
        self.pos += padded;
        Some(&b[..len])
    }
}

/// The xid of a record, if it has one (to answer even a malformed call).
pub(crate) fn xid_of(record: &[u8]) -> Option<u32> {
    Xdr::new(record).u32()
}

/// Parse the call header of `record`. `None` if it is not a well-formed CALL.
pub(crate) fn parse_call(record: &[u8]) -> Option<CallHeader> {
    let mut x = Xdr::new(record);
    let xid = x.u32()?;
    let msg_type = x.u32()?;
    if msg_type != 0 {
        return None;
    }
    let rpcvers = x.u32()?;
    let prog = x.u32()?;
    let vers = x.u32()?;
    let proc = x.u32()?;
    let cred_flavor = x.u32()?;
    let cred_body = x.opaque(AUTH_BYTES_MAX)?;
    let _verf_flavor = x.u32()?;
    let _verf_body = x.opaque(AUTH_BYTES_MAX)?;
    let cred = match cred_flavor {
        AUTH_NULL => Credential::Null,
        AUTH_UNIX => parse_auth_unix(cred_body).map_or(Credential::Malformed, Credential::Unix),
        other => Credential::Unsupported(other),
    };
    Some(CallHeader {
        xid,
        rpcvers,
        prog,
        vers,
        proc,
        cred,
        args: x.pos,
    })
}

fn parse_auth_unix(body: &[u8]) -> Option<AuthUnix> {
    let mut x = Xdr::new(body);
    let _stamp = x.u32()?;
    let _machinename = x.opaque(MACHINENAME_BYTES_MAX)?;
    let uid = x.u32()?;
    let gid = x.u32()?;
    let n = x.u32()? as usize;
    if n > AUTH_GIDS_MAX {
        return None;
    }
    let gids = (0..n).map(|_| x.u32()).collect::<Option<Vec<u32>>>()?;
    if x.pos != body.len() {
        return None;
    }
    Some(AuthUnix { uid, gid, gids })
}

/// A reply record under construction: the fragment header is reserved up front and
/// filled in by `finish`, so a reply leaves in one `write`.
pub(crate) struct Reply {
    buf: Vec<u8>,
}

impl Reply {
    /// An accepted reply with `stat`; for SUCCESS the caller appends the result.
    pub(crate) fn accepted(xid: u32, stat: accept_stat_data) -> Self {
        let msg = rpc_msg {
            xid,
            body: msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted_reply {
                verf: opaque_auth::default(),
                reply_data: stat,
            })),
        };
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; 4]);
        encode(&mut buf, &msg);
        Reply { buf }
    }

    pub(crate) fn denied(xid: u32, why: rejected_reply) -> Self {
        let msg = rpc_msg {
            xid,
            body: msg_body::REPLY(reply_body::MSG_DENIED(why)),
        };
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; 4]);
        encode(&mut buf, &msg);
        Reply { buf }
    }

    pub(crate) fn auth_error(xid: u32, stat: auth_stat) -> Self {
        Self::denied(xid, rejected_reply::AUTH_ERROR(stat))
    }

    /// The buffer the procedure result is appended to.
    pub(crate) fn body(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The complete record: one last fragment.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() - 4;
        assert!(
            len < 1 << 31,
            "reply of {len} bytes does not fit a fragment"
        );
        let header = 0x8000_0000 | len as u32;
        self.buf[..4].copy_from_slice(&header.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(payload: &[u8], last: bool) -> Vec<u8> {
        let mut v = ((payload.len() as u32) | if last { 0x8000_0000 } else { 0 })
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn records_reassemble_across_fragments_and_reads() {
        let mut r = RecordReader::default();
        let mut bytes = frag(b"abcd", false);
        bytes.extend(frag(b"ef", true));
        bytes.extend(frag(b"xyz0", true));
        r.buf.extend_from_slice(&bytes[..7]);
        assert_eq!(r.next_record().unwrap(), None);
        r.buf.extend_from_slice(&bytes[7..]);
        assert_eq!(r.next_record().unwrap().unwrap(), b"abcdef");
        assert_eq!(r.next_record().unwrap().unwrap(), b"xyz0");
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn oversized_record_is_refused_before_it_arrives() {
        let mut r = RecordReader::default();
        r.buf
            .extend_from_slice(&(0x8000_0000u32 | (RECORD_BYTES_MAX as u32 + 1)).to_be_bytes());
        assert!(matches!(
            r.next_record(),
            Err(ConnectionError::RecordTooLarge(_))
        ));
        // Many small non-last fragments add up too.
        let mut r = RecordReader::default();
        for _ in 0..5 {
            r.buf.extend_from_slice(&frag(&vec![0; 1 << 20], false));
        }
        assert!(matches!(
            r.next_record(),
            Err(ConnectionError::RecordTooLarge(_))
        ));
        // So do empty fragments that never end the record: their headers are buffered.
        let mut r = RecordReader::default();
        r.buf.resize(RECORD_BYTES_MAX + 4, 0);
        assert!(matches!(
            r.next_record(),
            Err(ConnectionError::RecordTooLarge(_))
        ));
    }

    fn call_with_cred(flavor: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [7u32, 0, 2, 100_003, 3, 1, flavor, body.len() as u32] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(body);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend_from_slice(&[0; 8]); // AUTH_NULL verifier
        v
    }

    fn auth_unix_body(uid: u32, gid: u32, gids: &[u32], claimed: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&1u32.to_be_bytes()); // stamp
        v.extend_from_slice(&3u32.to_be_bytes());
        v.extend_from_slice(b"box\0");
        v.extend_from_slice(&uid.to_be_bytes());
        v.extend_from_slice(&gid.to_be_bytes());
        v.extend_from_slice(&claimed.to_be_bytes());
        for g in gids {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    #[test]
    fn auth_unix_is_parsed_and_bounded() {
        let c = parse_call(&call_with_cred(1, &auth_unix_body(1000, 100, &[4, 5], 2))).unwrap();
        assert_eq!(c.xid, 7);
        assert_eq!((c.prog, c.vers, c.proc), (100_003, 3, 1));
        assert_eq!(
            c.cred,
            Credential::Unix(AuthUnix {
                uid: 1000,
                gid: 100,
                gids: vec![4, 5]
            })
        );
        // A forged group count is refused without allocating for it.
        let c = parse_call(&call_with_cred(1, &auth_unix_body(0, 0, &[], u32::MAX))).unwrap();
        assert_eq!(c.cred, Credential::Malformed);
        let many: Vec<u32> = (0..17).collect();
        let c = parse_call(&call_with_cred(1, &auth_unix_body(0, 0, &many, 17))).unwrap();
        assert_eq!(c.cred, Credential::Malformed);
        let c = parse_call(&call_with_cred(0, &[])).unwrap();
        assert_eq!(c.cred, Credential::Null);
        let c = parse_call(&call_with_cred(6, &[1, 2, 3, 4])).unwrap();
        assert_eq!(c.cred, Credential::Unsupported(6));
        // Authenticators over 400 bytes and truncated headers are not calls.
        assert!(parse_call(&call_with_cred(1, &[0; 404])).is_none());
        assert!(parse_call(&call_with_cred(1, &auth_unix_body(0, 0, &[], 0))[..20]).is_none());
    }
}
