//! The TPM USIG's UI format and its verification (MinBFT section 3 `verifyUI` for the
//! TPM backend of section 7), after `notes/tpm-usig.md`: no TPM and no TPM library, only
//! SHA-256 and ECDSA P-256 through ring, like the other backends. Always compiled, so
//! every replica verifies TPM UIs whether or not it was built with the `tpm` feature.
//!
//! A TPM UI certifies one audited session of four commands, all in one HMAC session with
//! the audit attribute (the first with `auditReset`):
//!
//! 1. `NV_Read(ctr)` → `c - 1`
//! 2. `NV_Increment(ctr)`
//! 3. `NV_Read(ctr)` → `c`
//! 4. `StirRandom(SHA-256(certified_bytes(replica, c - base, digest)))`
//!
//! then `GetSessionAuditDigest` signed by the replica's restricted TPM key. The cert is
//! `attest_len (u16) ‖ TPMS_ATTEST ‖ r (32) ‖ s (32)`. The verifier rebuilds the session
//! audit digest those four commands must produce for the claimed counter and message and
//! compares it to the signed one: the log shows this session's own increment taking the
//! counter from `c - 1` to `c`, and a counter only grows, so no other session can ever
//! show the same (c - 1 → c) step; the message is inside the signed log, so re-signing
//! repeats the same (c, message) only. The UI counter is `c - base`, `base` being the TPM
//! counter value at provisioning (published in the identity), so UIs count 1, 2, ...

use sha2::{Digest as _, Sha256};

use crate::{Digest, ReplicaId, certified_bytes};

/// `TPM_GENERATED_VALUE`, the first field of every `TPMS_ATTEST`.
pub const ATTEST_MAGIC: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_SESSION_AUDIT`.
pub const ST_ATTEST_SESSION_AUDIT: u16 = 0x8016;
pub const CC_NV_READ: u32 = 0x0000_014E;
pub const CC_NV_INCREMENT: u32 = 0x0000_0134;
pub const CC_STIR_RANDOM: u32 = 0x0000_0146;
pub const ALG_SHA256: u16 = 0x000B;
pub const ALG_ECC: u16 = 0x0023;
pub const ALG_ECDSA: u16 = 0x0018;
pub const ALG_NULL: u16 = 0x0010;
pub const ECC_NIST_P256: u16 = 0x0003;

/// `TPMA_OBJECT` bits.
pub const OBJECT_FIXED_TPM: u32 = 0x0000_0002;
pub const OBJECT_FIXED_PARENT: u32 = 0x0000_0010;
pub const OBJECT_SENSITIVE_DATA_ORIGIN: u32 = 0x0000_0020;
pub const OBJECT_USER_WITH_AUTH: u32 = 0x0000_0040;
pub const OBJECT_NO_DA: u32 = 0x0000_0400;
pub const OBJECT_RESTRICTED: u32 = 0x0001_0000;
pub const OBJECT_DECRYPT: u32 = 0x0002_0000;
pub const OBJECT_SIGN: u32 = 0x0004_0000;
/// What the signing key's public area must show: a restricted signing key that never
/// leaves its TPM (so it signs only attestation structures the TPM built itself).
pub const OBJECT_REQUIRED: u32 = OBJECT_FIXED_TPM
    | OBJECT_FIXED_PARENT
    | OBJECT_SENSITIVE_DATA_ORIGIN
    | OBJECT_RESTRICTED
    | OBJECT_SIGN;

/// A SHA-256 TPM Name: algorithm id then the digest.
pub const NAME_LEN: usize = 34;
/// Largest attest accepted in a cert (a session-audit attest with SHA-256 names is ~110).
pub const ATTEST_LEN_MAX: usize = 512;

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The 32 bytes the TPM stirs into its log for (replica, UI counter, digest).
pub fn message_hash(replica: ReplicaId, ui_counter: u64, digest: &Digest) -> [u8; 32] {
    sha256(&[&certified_bytes(replica, ui_counter, digest)])
}

/// The session audit digest of the four-command sequence that takes the counter with
/// Name `counter_name` from `before` to `before + 1` and stirs `stirred` in.
pub fn expected_audit_digest(counter_name: &[u8], before: u64, stirred: &[u8; 32]) -> [u8; 32] {
    let after = before.wrapping_add(1);
    let read_cp = sha256(&[
        &CC_NV_READ.to_be_bytes(),
        counter_name,
        counter_name,
        &[0, 8, 0, 0],
    ]);
    let read_rp = |value: u64| {
        sha256(&[
            &0u32.to_be_bytes(),
            &CC_NV_READ.to_be_bytes(),
            &[0, 8],
            &value.to_be_bytes(),
        ])
    };
    let increment_cp = sha256(&[&CC_NV_INCREMENT.to_be_bytes(), counter_name, counter_name]);
    let increment_rp = sha256(&[&0u32.to_be_bytes(), &CC_NV_INCREMENT.to_be_bytes()]);
    let stir_cp = sha256(&[&CC_STIR_RANDOM.to_be_bytes(), &[0, 32], stirred]);
    let stir_rp = sha256(&[&0u32.to_be_bytes(), &CC_STIR_RANDOM.to_be_bytes()]);
    let mut digest = [0u8; 32];
    for (cp, rp) in [
        (read_cp, read_rp(before)),
        (increment_cp, increment_rp),
        (read_cp, read_rp(after)),
        (stir_cp, stir_rp),
    ] {
        digest = sha256(&[&digest, &cp, &rp]);
    }
    digest
}

/// A strict big-endian reader over TPM marshalled bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn sized(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn done(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The fields of a session-audit `TPMS_ATTEST` that verification checks.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionAuditAttest<'a> {
    pub qualified_signer: &'a [u8],
    pub extra_data: &'a [u8],
    pub session_digest: &'a [u8],
}

/// Parse a session-audit `TPMS_ATTEST` strictly: magic, type, every field's length, and
/// no trailing bytes.
pub fn parse_session_audit(bytes: &[u8]) -> Option<SessionAuditAttest<'_>> {
    let mut r = Reader { bytes };
    if r.u32()? != ATTEST_MAGIC || r.u16()? != ST_ATTEST_SESSION_AUDIT {
        return None;
    }
    let qualified_signer = r.sized()?;
    let extra_data = r.sized()?;
    // TPMS_CLOCK_INFO (clock, resetCount, restartCount, safe) and firmwareVersion.
    r.take(8 + 4 + 4 + 1)?;
    r.take(8)?;
    let exclusive = r.u8()?;
    if exclusive > 1 {
        return None;
    }
    let session_digest = r.sized()?;
    if !r.done() {
        return None;
    }
    Some(SessionAuditAttest {
        qualified_signer,
        extra_data,
        session_digest,
    })
}

/// Split a TPM UI cert into (attest, r ‖ s).
pub fn split_cert(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut r = Reader { bytes: cert };
    let attest = r.sized()?;
    if attest.len() > ATTEST_LEN_MAX {
        return None;
    }
    let signature = r.take(64)?;
    r.done().then_some((attest, signature))
}

/// Encode a TPM UI cert from the attest and the 64-byte r ‖ s.
pub fn encode_cert(attest: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + attest.len() + 64);
    out.extend_from_slice(&(attest.len() as u16).to_be_bytes());
    out.extend_from_slice(attest);
    out.extend_from_slice(signature);
    out
}

/// The SEC1 point of an ECC P-256 ECDSA/SHA-256 key from its marshalled `TPMT_PUBLIC`,
/// if the area shows a restricted signing key fixed to its TPM; `None` otherwise.
pub fn parse_signing_key_public(area: &[u8]) -> Option<[u8; 65]> {
    let mut r = Reader { bytes: area };
    if r.u16()? != ALG_ECC || r.u16()? != ALG_SHA256 {
        return None;
    }
    let attributes = r.u32()?;
    if attributes & OBJECT_REQUIRED != OBJECT_REQUIRED || attributes & OBJECT_DECRYPT != 0 {
        return None;
    }
    let _auth_policy = r.sized()?;
    // symmetric NULL; scheme ECDSA with SHA-256; curve P-256; kdf NULL.
    if r.u16()? != ALG_NULL
        || r.u16()? != ALG_ECDSA
        || r.u16()? != ALG_SHA256
        || r.u16()? != ECC_NIST_P256
        || r.u16()? != ALG_NULL
    {
        return None;
    }
    let x = r.sized()?;
    let y = r.sized()?;
    if x.len() != 32 || y.len() != 32 || !r.done() {
        return None;
    }
    let mut point = [0u8; 65];
    point[0] = 0x04;
    point[1..33].copy_from_slice(x);
    point[33..].copy_from_slice(y);
    Some(point)
}

/// The SHA-256 Name of a marshalled public area.
pub fn name_of(public_area: &[u8]) -> [u8; NAME_LEN] {
    let mut name = [0u8; NAME_LEN];
    name[..2].copy_from_slice(&ALG_SHA256.to_be_bytes());
    name[2..].copy_from_slice(&sha256(&[public_area]));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(signer: &[u8], extra: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&ATTEST_MAGIC.to_be_bytes());
        a.extend_from_slice(&ST_ATTEST_SESSION_AUDIT.to_be_bytes());
        a.extend_from_slice(&(signer.len() as u16).to_be_bytes());
        a.extend_from_slice(signer);
        a.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        a.extend_from_slice(extra);
        a.extend_from_slice(&[0; 17 + 8]);
        a.push(1);
        a.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        a.extend_from_slice(digest);
        a
    }

    #[test]
    fn session_audit_parses_strictly() {
        let good = attest(&[1; NAME_LEN], &[], &[7; 32]);
        let parsed = parse_session_audit(&good).unwrap();
        assert_eq!(parsed.session_digest, &[7; 32]);
        assert_eq!(parsed.qualified_signer, &[1; NAME_LEN]);
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_session_audit(&trailing).is_none());
        for len in 0..good.len() {
            assert!(
                parse_session_audit(&good[..len]).is_none(),
                "truncated {len}"
            );
        }
        let mut other_type = good.clone();
        other_type[5] = 0x17;
        assert!(parse_session_audit(&other_type).is_none());
    }

    #[test]
    fn audit_digest_depends_on_every_input() {
        let name = [3u8; NAME_LEN];
        let base = expected_audit_digest(&name, 5, &[1; 32]);
        assert_ne!(base, expected_audit_digest(&name, 6, &[1; 32]));
        assert_ne!(base, expected_audit_digest(&name, 5, &[2; 32]));
        assert_ne!(base, expected_audit_digest(&[4u8; NAME_LEN], 5, &[1; 32]));
    }

    #[test]
    fn cert_round_trips_and_rejects_extra_bytes() {
        let cert = encode_cert(&[9; 100], &[5; 64]);
        let (a, s) = split_cert(&cert).unwrap();
        assert_eq!((a.len(), s.len()), (100, 64));
        let mut longer = cert.clone();
        longer.push(0);
        assert!(split_cert(&longer).is_none());
        assert!(split_cert(&cert[..cert.len() - 1]).is_none());
    }
}
