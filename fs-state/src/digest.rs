//! The state digest: a Merkle tree keyed by fileid, maintained incrementally.
//!
//! Checkpoints (MinBFT section 4.3) carry a digest of the application state, and f+1
//! replicas must compute the same one, at every checkpoint, cheaply. A leaf is the hash
//! of one object's replicated metadata and its content hash (a regular file's chunk
//! hashes, a directory's entries in cookie order, a symlink's target is in its
//! metadata). Leaves are grouped by fileid prefix into levels of fanout 256, so an
//! operation dirties one leaf and `LEVELS` inner nodes, and state transfer can descend
//! from the root to the subtrees and leaves that differ and fetch only those objects.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::meta::{Content, Directory, Inode};

pub type Hash = [u8; 32];

/// log2 of the fanout of inner nodes.
pub const FANOUT_BITS: u32 = 8;
/// Inner levels above the leaves; level `k` node `i` covers fileids with
/// `fileid >> (FANOUT_BITS * k) == i`. The root combines the level-`LEVELS` nodes.
pub const LEVELS: usize = 4;

pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn chunk_hash(data: &[u8]) -> Hash {
    sha256(&[b"chunk", data])
}

/// `chunk_hash` of a whole chunk of zeros (a hole), computed once.
pub fn zero_chunk_hash() -> Hash {
    static ZEROS: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *ZEROS.get_or_init(|| chunk_hash(&[0; crate::meta::CHUNK_BYTES as usize]))
}

/// Content hash of a regular file.
pub fn file_content_hash(size: u64, content: &Content) -> Hash {
    let mut h = Sha256::new();
    h.update(b"file");
    h.update(size.to_be_bytes());
    for c in &content.chunks {
        h.update(c);
    }
    h.finalize().into()
}

/// Content hash of a directory: its entries by name, cookies included (they appear in
/// READDIR replies, so they are state).
pub fn dir_content_hash(dir: &Directory) -> Hash {
    let mut h = Sha256::new();
    h.update(b"dir");
    for (name, e) in &dir.by_name {
        h.update(e.seq.to_be_bytes());
        h.update((name.0.len() as u32).to_be_bytes());
        h.update(&name.0);
        h.update(e.fileid.to_be_bytes());
    }
    h.finalize().into()
}

pub fn leaf_hash(fileid: u64, inode: &Inode, content_hash: &Hash) -> Hash {
    let meta = crate::ops::encode(inode);
    sha256(&[b"leaf", &fileid.to_be_bytes(), &meta, content_hash])
}

/// The leaf of an object this replica knows to be damaged (found inconsistent after a
/// crash): never equal to a correct leaf, so the digest differs and state transfer
/// fetches it.
pub fn damaged_leaf_hash(fileid: u64) -> Hash {
    sha256(&[b"damaged", &fileid.to_be_bytes()])
}

#[derive(Debug, Clone)]
pub struct DigestTree {
    leaves: BTreeMap<u64, Hash>,
    /// `nodes[k - 1]` is level k.
    nodes: Vec<BTreeMap<u64, Hash>>,
    stale: BTreeSet<u64>,
    globals: Hash,
    root: Hash,
}

impl Default for DigestTree {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestTree {
    pub fn new() -> Self {
        DigestTree {
            leaves: BTreeMap::new(),
            nodes: vec![BTreeMap::new(); LEVELS],
            stale: BTreeSet::new(),
            globals: [0; 32],
            root: [0; 32],
        }
    }

    /// Set (`Some`) or remove (`None`) a leaf; inner nodes are recomputed lazily.
    pub fn set_leaf(&mut self, fileid: u64, hash: Option<Hash>) {
        match hash {
            Some(h) => {
                self.leaves.insert(fileid, h);
            }
            None => {
                self.leaves.remove(&fileid);
            }
        }
        self.stale.insert(fileid);
    }

    /// Recompute the inner nodes above the changed leaves and the root. `globals` is
    /// the replicated state that belongs to no object (the fileid counter).
    pub fn recompute(&mut self, globals: &[u8]) -> Hash {
        let mut changed: BTreeSet<u64> = std::mem::take(&mut self.stale);
        for level in 1..=LEVELS {
            let parents: BTreeSet<u64> = changed.iter().map(|id| id >> FANOUT_BITS).collect();
            for &p in &parents {
                let lo = p << FANOUT_BITS;
                let hi = lo | ((1u64 << FANOUT_BITS) - 1);
                let below = if level == 1 {
                    &self.leaves
                } else {
                    &self.nodes[level - 2]
                };
                let mut h = Sha256::new();
                h.update(b"node");
                h.update([level as u8]);
                h.update(p.to_be_bytes());
                let mut any = false;
                for (id, child) in below.range(lo..=hi) {
                    any = true;
                    h.update(id.to_be_bytes());
                    h.update(child);
                }
                if any {
                    self.nodes[level - 1].insert(p, h.finalize().into());
                } else {
                    self.nodes[level - 1].remove(&p);
                }
            }
            changed = parents;
        }
        self.globals = sha256(&[b"globals", globals]);
        let mut h = Sha256::new();
        h.update(b"bftnfs-fs-state-v1");
        h.update(self.globals);
        for (id, node) in &self.nodes[LEVELS - 1] {
            h.update(id.to_be_bytes());
            h.update(node);
        }
        self.root = h.finalize().into();
        self.root
    }

    /// The root as of the last `recompute`.
    pub fn root(&self) -> Hash {
        self.root
    }

    pub fn leaf(&self, fileid: u64) -> Option<Hash> {
        self.leaves.get(&fileid).copied()
    }

    /// Node `index` of `level` (0 = leaves, by fileid).
    pub fn node(&self, level: usize, index: u64) -> Option<Hash> {
        match level {
            0 => self.leaf(index),
            l if l <= LEVELS => self.nodes[l - 1].get(&index).copied(),
            _ => None,
        }
    }

    /// The children (at `level - 1`) of node `index` of `level`, with their hashes;
    /// for `level == LEVELS + 1` the children of the root.
    pub fn children(&self, level: usize, index: u64) -> Vec<(u64, Hash)> {
        if level == 0 || level > LEVELS + 1 {
            return Vec::new();
        }
        let below = if level == 1 {
            &self.leaves
        } else {
            &self.nodes[level - 2]
        };
        if level == LEVELS + 1 {
            return below.iter().map(|(k, v)| (*k, *v)).collect();
        }
        let lo = index << FANOUT_BITS;
        let hi = lo | ((1u64 << FANOUT_BITS) - 1);
        below.range(lo..=hi).map(|(k, v)| (*k, *v)).collect()
    }

    /// Hash of the replicated globals as of the last `recompute`.
    pub fn globals(&self) -> Hash {
        self.globals
    }

    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_equals_from_scratch() {
        let mut a = DigestTree::new();
        for i in 1..2000u64 {
            a.set_leaf(i, Some(sha256(&[&i.to_be_bytes()])));
        }
        a.recompute(b"g");
        for i in (1..2000u64).step_by(7) {
            a.set_leaf(i, None);
        }
        a.set_leaf(70_000, Some([9; 32]));
        let ra = a.recompute(b"g");

        let mut b = DigestTree::new();
        for i in 1..2000u64 {
            if (i - 1) % 7 != 0 {
                b.set_leaf(i, Some(sha256(&[&i.to_be_bytes()])));
            }
        }
        b.set_leaf(70_000, Some([9; 32]));
        assert_eq!(b.recompute(b"g"), ra);
        assert_ne!(b.recompute(b"h"), ra);
        assert_eq!(a.children(1, 0).len(), b.children(1, 0).len());
        assert_eq!(a.node(2, 1), b.node(2, 1));
    }
}
