//! Operations of the null application (`bftnfs replica --null-app`, the micro-benchmarks
//! of MinBFT section 8.1): any bytes are a null operation, answered with an empty
//! result, except an operation that asks for a reply of a given size.
//!
//! Encoding of a sized operation: `MAGIC`, the reply size as a big-endian `u32`, then
//! any padding (which makes the request as large as the benchmark wants). Its result is
//! that many bytes of `REPLY_FILL`. A reply size over `REPLY_BYTES_MAX`, or a magic
//! without the four size bytes, is answered with `op::BAD_OP_RESULT`. Neither a bundle
//! (`bundle::MAGIC` starts with the same byte, then differs) nor the benchmark's padded
//! null operations (bytes 0xab) start with `MAGIC`.

use crate::op::BAD_OP_RESULT;

const MAGIC: &[u8; 4] = b"\xbbNUL";
/// The smallest request that asks for a reply size.
pub const SIZED_OP_BYTES: usize = MAGIC.len() + 4;
/// The largest reply the null application produces.
pub const REPLY_BYTES_MAX: usize = 64 * 1024;
/// The byte a sized reply is made of.
pub const REPLY_FILL: u8 = 0x5a;

/// A null operation of `request_bytes` bytes (at least `SIZED_OP_BYTES` when a reply is
/// asked for) whose result is `reply_bytes` bytes long.
pub fn encode(request_bytes: usize, reply_bytes: usize) -> Vec<u8> {
    if reply_bytes == 0 {
        return vec![0xab; request_bytes];
    }
    let mut op = Vec::with_capacity(request_bytes.max(SIZED_OP_BYTES));
    op.extend_from_slice(MAGIC);
    op.extend_from_slice(&u32::try_from(reply_bytes).unwrap_or(u32::MAX).to_be_bytes());
    op.resize(request_bytes.max(SIZED_OP_BYTES), 0xab);
    op
}

/// The null application's result for one (unbundled) operation.
pub fn result(op: &[u8]) -> Vec<u8> {
    let Some(rest) = op.strip_prefix(MAGIC) else {
        return Vec::new();
    };
    match rest
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b) as usize)
    {
        Some(n) if n <= REPLY_BYTES_MAX => vec![REPLY_FILL; n],
        _ => BAD_OP_RESULT.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sized_operation_gets_a_reply_of_its_size() {
        for (request, reply) in [(0, 0), (4096, 0), (0, 1), (0, 4096), (4096, 4096), (3, 7)] {
            let op = encode(request, reply);
            assert_eq!(
                op.len(),
                if reply == 0 {
                    request
                } else {
                    request.max(SIZED_OP_BYTES)
                }
            );
            let r = result(&op);
            assert_eq!(r.len(), reply, "{request}/{reply}");
            assert!(r.iter().all(|b| *b == REPLY_FILL));
        }
    }

    #[test]
    fn a_malformed_or_oversized_request_is_refused_not_honoured() {
        assert_eq!(result(&MAGIC[..]), BAD_OP_RESULT);
        assert_eq!(result(&encode(8, REPLY_BYTES_MAX + 1)), BAD_OP_RESULT);
        assert_eq!(result(&encode(8, usize::MAX)), BAD_OP_RESULT);
        assert_eq!(result(&encode(8, REPLY_BYTES_MAX)).len(), REPLY_BYTES_MAX);
        assert!(!crate::bundle::is_bundle(&encode(8, 1)));
    }
}
