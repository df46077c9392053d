//! Directory listings: deterministic order, cookies and verifiers, and RFC 1813 sizes.
//!
//! The host lists a directory in hash order with a per-file-system seed, so listings
//! come from the metadata instead: entries in the order they were added, and an entry's
//! cookie is its sequence number in its directory, which never changes while the entry
//! exists and is never reused. Resuming after cookie `c` means "entries with a larger
//! sequence number", which stays correct across pages while the directory changes, so
//! the cookie verifier can be a constant of the directory. Page sizes are computed from
//! the XDR sizes of the reply, so every replica cuts a page at the same entry and the
//! adapter's encoding fits the client's `count`.

use crate::meta::Directory;
use crate::ops::{FH_LEN, Filename3, NfsStat3};

fn xdr_pad(len: usize) -> u32 {
    len.div_ceil(4) as u32 * 4
}

/// XDR size of `fattr3`.
const FATTR3_XDR: u32 = 84;
/// status + `post_op_attr` (dir) + cookieverf + end-of-list marker + eof.
pub const READDIR_HEADER_XDR: u32 = 4 + 4 + FATTR3_XDR + 8 + 4 + 4;

/// XDR size of one `entry3` (value-follows marker, fileid, name, cookie); READDIRPLUS
/// counts the same part of `entryplus3` against `dircount`.
pub fn entry3_xdr(name: &Filename3) -> u32 {
    4 + 8 + 4 + xdr_pad(name.0.len()) + 8
}

/// What `entryplus3` adds: `post_op_attr` and `post_op_fh3` with our handle.
pub const ENTRYPLUS3_EXTRA_XDR: u32 = 4 + FATTR3_XDR + 4 + 4 + FH_LEN as u32;

/// The cookie verifier of a directory: its fileid, constant for its lifetime.
pub fn cookieverf(dir_fileid: u64) -> [u8; 8] {
    dir_fileid.to_be_bytes()
}

/// Validate a (cookie, verifier) pair against a directory whose next sequence number
/// is `next_seq`. A zero verifier is accepted (clients that do not track it).
pub fn check_cookie(
    dir_fileid: u64,
    next_seq: u64,
    cookie: u64,
    verf: [u8; 8],
) -> Result<(), NfsStat3> {
    if cookie == 0 {
        return Ok(());
    }
    if cookie >= next_seq || (verf != [0; 8] && verf != cookieverf(dir_fileid)) {
        return Err(NfsStat3::BadCookie);
    }
    Ok(())
}

/// One entry of a page: its cookie, name and fileid.
pub struct PageEntry {
    pub cookie: u64,
    pub name: Filename3,
    pub fileid: u64,
}

/// One page of entries after `cookie`, as long as `fits` accepts each next entry, and
/// whether it reaches the end of the directory. `NFS3ERR_TOOSMALL` if not even one
/// remaining entry fits.
pub fn page(
    dir: &Directory,
    cookie: u64,
    mut fits: impl FnMut(&Filename3) -> bool,
) -> Result<(Vec<PageEntry>, bool), NfsStat3> {
    let mut out = Vec::new();
    for (seq, name) in dir.by_seq.range(cookie.saturating_add(1)..) {
        if !fits(name) {
            if out.is_empty() {
                return Err(NfsStat3::Toosmall);
            }
            return Ok((out, false));
        }
        out.push(PageEntry {
            cookie: *seq,
            name: name.clone(),
            fileid: dir.by_name[name].fileid,
        });
    }
    Ok((out, true))
}
