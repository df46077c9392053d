//! The one encoding of a replicated file operation: what a BFT request's `op` carries.
//!
//! An operation is the NFS procedure (`FsOp`, fs-state's canonical encoding) plus the
//! caller's AUTH_UNIX credentials, because permission checks and new owners must come out
//! the same on every replica. An empty `op` is the null operation (micro-benchmarks):
//! replicas order it and answer with an empty result without touching the file system.

use fs_state::{AuthUnix, FsOp};

/// Largest encoded credentials (AUTH_UNIX allows at most 16 extra groups).
const CRED_BYTES_MAX: usize = 512;

/// Bytes of an encoded WRITE besides its data, at most: the credentials' length and
/// bytes (`CRED_BYTES_MAX`), the `FsOp` tag, a file handle of at most 64 bytes (NFSv3),
/// the offset, the stability and the data's length. The test below checks the bound.
pub const WRITE_OVERHEAD_MAX: usize = 4 << 10;

/// The most data one WRITE may carry in a cluster whose requests carry at most
/// `request_bytes_max` operation bytes: whole 4 KiB pages, at most fs-state's 1 MiB.
/// FSINFO announces it (`wtmax`, `wtpref`), the replicas execute at most that much of a
/// WRITE (a short write, as RFC 1813 allows) and a frontend sends no more, so a WRITE
/// always fits in one request.
pub fn write_data_max(request_bytes_max: usize) -> u32 {
    let room = request_bytes_max.saturating_sub(WRITE_OVERHEAD_MAX);
    let max = room.min(fs_state::FsConfig::default().wtmax as usize);
    (max / 4096 * 4096).max(4096) as u32
}

/// `u32` length of the credentials, the credentials, the `FsOp`.
pub fn encode_op(cred: &AuthUnix, op: &FsOp) -> Vec<u8> {
    let cred = crate::net::encode(cred);
    let op = op.encode();
    let mut out = Vec::with_capacity(4 + cred.len() + op.len());
    out.extend_from_slice(&(cred.len() as u32).to_be_bytes());
    out.extend_from_slice(&cred);
    out.extend_from_slice(&op);
    out
}

/// `None` for bytes that are no operation (a faulty client signed garbage).
pub fn decode_op(bytes: &[u8]) -> Option<(AuthUnix, FsOp)> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > CRED_BYTES_MAX {
        return None;
    }
    let cred = crate::net::decode(bytes.get(4..4 + len)?).ok()?;
    let op = FsOp::decode(bytes.get(4 + len..)?).ok()?;
    Some((cred, op))
}

/// The deterministic result of an operation that does not decode, or of a mutating
/// operation sent down the read-only path. It is no valid `FsReply` encoding, so a
/// frontend maps it to NFS3ERR_IO.
pub const BAD_OP_RESULT: &[u8] = b"\xffbftnfs: not an operation";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let cred = AuthUnix {
            uid: 5,
            gid: 6,
            gids: vec![7],
        };
        let op = FsOp::Getattr {
            fh: fs_state::FileHandle::root(1),
        };
        let bytes = encode_op(&cred, &op);
        assert_eq!(decode_op(&bytes), Some((cred, op)));
        assert_eq!(decode_op(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_op(&[0xff; 9]), None);
        assert_eq!(decode_op(&[]), None);
    }

    #[test]
    fn the_largest_write_fits_in_one_request() {
        let cred = AuthUnix {
            uid: u32::MAX,
            gid: u32::MAX,
            gids: vec![u32::MAX; 16],
        };
        for request_bytes_max in [(1 << 20) + (64 << 10), 1 << 20, 300_000] {
            let data_max = write_data_max(request_bytes_max);
            let op = FsOp::Write {
                fh: fs_state::FileHandle(vec![0xff; 64]),
                offset: u64::MAX,
                stable: fs_state::StableHow::FileSync,
                data: vec![0; data_max as usize],
            };
            let bytes = encode_op(&cred, &op);
            assert!(
                bytes.len() <= request_bytes_max,
                "{} bytes for a {data_max}-byte WRITE over a limit of {request_bytes_max}",
                bytes.len()
            );
            assert!(bytes.len() - data_max as usize <= WRITE_OVERHEAD_MAX);
            assert_eq!(data_max % 4096, 0);
        }
        assert_eq!(
            write_data_max((1 << 20) + (64 << 10)),
            1 << 20,
            "the default"
        );
        assert_eq!(
            write_data_max(1 << 20),
            (1 << 20) - 4096,
            "older cluster files"
        );
    }
}
