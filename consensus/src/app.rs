//! The application interface the replicas run, and an in-memory key-value store used by
//! the simulator and tests. Execution must be deterministic: the same batches in the same
//! order, with the same timestamps, give the same results and the same digest.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::message::Request;
use crate::types::{Digest, SeqNum};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppError {
    #[error("snapshot is malformed")]
    BadSnapshot,
}

pub trait Application {
    /// Executes batch `n`'s requests in order; one result per request.
    fn execute(&mut self, n: SeqNum, timestamp_ns: u64, requests: &[Request]) -> Vec<Vec<u8>>;
    /// Answers a read-only operation without changing state.
    fn query(&mut self, op: &[u8]) -> Vec<u8>;
    fn state_digest(&mut self) -> Digest;
    fn snapshot(&mut self) -> Vec<u8>;
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError>;
}

/// Operations of [`KvApp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Appends and returns the whole new value: results reveal any ordering difference.
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Null,
}

impl KvOp {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, key, value): (u8, &[u8], &[u8]) = match self {
            KvOp::Put { key, value } => (1, key, value),
            KvOp::Append { key, value } => (2, key, value),
            KvOp::Get { key } => (3, key, &[]),
            KvOp::Null => return Vec::new(),
        };
        let mut out = vec![tag, key.len() as u8];
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    pub fn decode(op: &[u8]) -> Option<KvOp> {
        if op.is_empty() {
            return Some(KvOp::Null);
        }
        let klen = *op.get(1)? as usize;
        let key = op.get(2..2 + klen)?.to_vec();
        let value = op[2 + klen..].to_vec();
        match op[0] {
            1 => Some(KvOp::Put { key, value }),
            2 => Some(KvOp::Append { key, value }),
            3 => Some(KvOp::Get { key }),
            _ => None,
        }
    }
}

/// An in-memory key-value store; the last executed timestamp is part of its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvApp {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    last_n: SeqNum,
    last_timestamp_ns: u64,
}

impl KvApp {
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.data.get(key)
    }

    /// Simulator hook: changes the state behind the protocol's back (a corrupted or
    /// tampered backing store), so that self-repair has something to find.
    #[doc(hidden)]
    pub fn corrupt(&mut self, key: &[u8], value: &[u8]) {
        self.data.insert(key.to_vec(), value.to_vec());
    }

    fn apply(&mut self, op: &[u8]) -> Vec<u8> {
        match KvOp::decode(op) {
            Some(KvOp::Put { key, value }) => {
                self.data.insert(key, value);
                b"ok".to_vec()
            }
            Some(KvOp::Append { key, value }) => {
                let v = self.data.entry(key).or_default();
                v.extend_from_slice(&value);
                v.clone()
            }
            Some(KvOp::Get { key }) => self.data.get(&key).cloned().unwrap_or_default(),
            Some(KvOp::Null) => Vec::new(),
            None => b"error: malformed op".to_vec(),
        }
    }
}

impl Application for KvApp {
    fn execute(&mut self, n: SeqNum, timestamp_ns: u64, requests: &[Request]) -> Vec<Vec<u8>> {
        self.last_n = n;
        self.last_timestamp_ns = timestamp_ns;
        requests.iter().map(|r| self.apply(&r.op)).collect()
    }

    fn query(&mut self, op: &[u8]) -> Vec<u8> {
        match KvOp::decode(op) {
            Some(KvOp::Get { key }) => self.data.get(&key).cloned().unwrap_or_default(),
            Some(KvOp::Null) => Vec::new(),
            _ => b"error: not read-only".to_vec(),
        }
    }

    fn state_digest(&mut self) -> Digest {
        Sha256::digest(self.snapshot()).into()
    }

    fn snapshot(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.last_n.to_be_bytes());
        out.extend_from_slice(&self.last_timestamp_ns.to_be_bytes());
        out.extend_from_slice(&(self.data.len() as u64).to_be_bytes());
        for (k, v) in &self.data {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), AppError> {
        fn take<'a>(s: &mut &'a [u8], n: usize) -> Result<&'a [u8], AppError> {
            if s.len() < n {
                return Err(AppError::BadSnapshot);
            }
            let (a, b) = s.split_at(n);
            *s = b;
            Ok(a)
        }
        let mut s = snapshot;
        let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize;
        let last_n = u64_of(take(&mut s, 8)?);
        let last_ts = u64_of(take(&mut s, 8)?);
        let count = u64_of(take(&mut s, 8)?);
        let mut data = BTreeMap::new();
        for _ in 0..count {
            let kl = u32_of(take(&mut s, 4)?);
            let k = take(&mut s, kl)?.to_vec();
            let vl = u32_of(take(&mut s, 4)?);
            let v = take(&mut s, vl)?.to_vec();
            data.insert(k, v);
        }
        if !s.is_empty() {
            return Err(AppError::BadSnapshot);
        }
        *self = KvApp {
            data,
            last_n,
            last_timestamp_ns: last_ts,
        };
        Ok(())
    }
}
