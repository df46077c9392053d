//! Request bundling: a frontend that has more operations waiting than idle BFT sessions
//! sends several of them as ONE signed request, and the replicas answer with one reply
//! carrying every result.
//!
//! Per-request authentication and per-request messages are what bound throughput once
//! batching has removed the USIG from the picture (notes/limits.md: at batch 128, client
//! signature checks take 61% of the CPU and per-request messages 25%). A bundle pays one
//! signature, one verification per replica, one request message per replica and one reply
//! per replica for all of its operations. Each operation inside is still executed on its
//! own, in bundle order, within the batch that orders the bundle, so the file system sees
//! exactly the same sequence as if they had been sent one by one; exactly-once holds per
//! bundle (the reply cache keeps the whole result bundle).
//!
//! Encoding: `MAGIC`, a `u32` count (2..=`BUNDLE_OPS_MAX`), then per item a `u32` length
//! and the bytes. An ordinary operation starts with the `u32` length of its credentials
//! (at most 512, so its first byte is 0) and the null operation is empty: neither can be
//! mistaken for a bundle. Results use the same framing.

/// Most operations one bundle carries.
pub const BUNDLE_OPS_MAX: usize = 64;
/// Most operation bytes one bundle carries (well under the core's request limit).
pub const BUNDLE_BYTES_MAX: usize = 256 << 10;

const MAGIC: &[u8; 4] = b"\xbbBND";

/// Whether `bytes` claim to be a bundle (they may still fail to decode).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Frames `items` as one bundle.
pub fn encode<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let len: usize = items.iter().map(|i| 4 + i.as_ref().len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(items.len() as u32).to_be_bytes());
    for item in items {
        let item = item.as_ref();
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// The items of a bundle; `None` unless `bytes` is exactly one well-formed bundle of
/// 2..=`BUNDLE_OPS_MAX` items (a faulty client may sign anything).
pub fn decode(bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (count, mut rest) = split_u32(rest)?;
    let count = count as usize;
    if !(2..=BUNDLE_OPS_MAX).contains(&count) {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = split_u32(rest)?;
        let len = len as usize;
        if tail.len() < len {
            return None;
        }
        let (item, tail) = tail.split_at(len);
        items.push(item);
        rest = tail;
    }
    rest.is_empty().then_some(items)
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, tail) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), tail))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let items: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![0; 10]];
        let bytes = encode(&items);
        assert!(is_bundle(&bytes));
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back, items.iter().map(Vec::as_slice).collect::<Vec<_>>());
        // One item, too many items, trailing bytes, truncation: all refused.
        assert_eq!(decode(&encode(&[vec![1u8]])), None);
        let many: Vec<Vec<u8>> = vec![vec![]; BUNDLE_OPS_MAX + 1];
        assert_eq!(decode(&encode(&many)), None);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), None);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        // Neither an ordinary operation nor the null operation looks like a bundle.
        let op = crate::op::encode_op(
            &fs_state::AuthUnix::root(),
            &fs_state::FsOp::Getattr {
                fh: fs_state::FileHandle::root(1),
            },
        );
        assert!(!is_bundle(&op) && !is_bundle(&[]));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
            let _ = decode(&bytes);
        }
    }
}
