//! Unix permission checks from AUTH_UNIX credentials against replicated metadata.
//!
//! The host cannot do these checks (every backing file is owned by the replica's own
//! user with fixed host modes), and they must come out the same on every replica, so
//! they are computed here from the owner, group and mode the state machine keeps.
//! uid 0 is not squashed. Like knfsd, the owner of a regular file may read and write
//! it whatever its mode (an open file stays usable after a chmod on a stateless
//! protocol).

use crate::meta::Inode;
use crate::ops::{
    ACCESS3_DELETE, ACCESS3_EXECUTE, ACCESS3_EXTEND, ACCESS3_LOOKUP, ACCESS3_MODIFY, ACCESS3_READ,
    AuthUnix, FType3,
};

pub const R: u32 = 4;
pub const W: u32 = 2;
pub const X: u32 = 1;

/// Whether `cred` has all of `want` (a mask of `R`, `W`, `X`) on `inode`.
pub fn may(cred: &AuthUnix, inode: &Inode, want: u32) -> bool {
    if cred.uid == 0 {
        // Root may do anything except execute a non-directory that no one may.
        return want & X == 0 || inode.ftype == FType3::Dir || inode.mode & 0o111 != 0;
    }
    let bits = if cred.uid == inode.uid {
        inode.mode >> 6
    } else if cred.in_group(inode.gid) {
        inode.mode >> 3
    } else {
        inode.mode
    } & 7;
    bits & want == want
}

/// READ/WRITE data access with the owner override.
pub fn may_data(cred: &AuthUnix, inode: &Inode, want: u32) -> bool {
    (inode.ftype == FType3::Reg && cred.uid == inode.uid) || may(cred, inode, want)
}

pub fn is_owner_or_root(cred: &AuthUnix, inode: &Inode) -> bool {
    cred.uid == 0 || cred.uid == inode.uid
}

/// Sticky directories: only the owner of the entry, of the directory, or root may
/// remove or rename it away.
pub fn may_delete_in_sticky(cred: &AuthUnix, dir: &Inode, victim: &Inode) -> bool {
    dir.mode & 0o1000 == 0 || cred.uid == 0 || cred.uid == victim.uid || cred.uid == dir.uid
}

/// The ACCESS procedure (RFC 1813 3.3.4): which of the requested bits are granted.
pub fn access_bits(cred: &AuthUnix, inode: &Inode, mask: u32) -> u32 {
    let mut granted = 0;
    if may_data(cred, inode, R) {
        granted |= ACCESS3_READ;
    }
    if may_data(cred, inode, W) {
        granted |= ACCESS3_MODIFY | ACCESS3_EXTEND;
    }
    match inode.ftype {
        FType3::Dir => {
            if may(cred, inode, X) {
                granted |= ACCESS3_LOOKUP;
            }
            if may(cred, inode, W | X) {
                granted |= ACCESS3_DELETE;
            }
            // For a directory "modify/extend" means adding and removing entries,
            // which needs search permission too.
            if !may(cred, inode, W | X) {
                granted &= !(ACCESS3_MODIFY | ACCESS3_EXTEND);
            }
        }
        _ => {
            if may(cred, inode, X) {
                granted |= ACCESS3_EXECUTE;
            }
        }
    }
    granted & mask
}
