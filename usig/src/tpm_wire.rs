//! The TPM USIG's hot path spoken directly on the TCTI (feature `tpm`): the audit
//! session and the five commands of `create_ui` marshalled here, the HMAC session kept
//! here, with ring's SHA-256/HMAC.
//!
//! Why not ESYS: tpm2-tss 3.2.1 (Debian 12) builds a fresh OpenSSL 3 library context
//! (`OSSL_LIB_CTX_new` + `EVP_MD_fetch`, which repopulates the context's name map from
//! every legacy algorithm name) for each hash and HMAC it computes, and an audited
//! command needs several (cpHash, rpHash, command and response HMAC, nonce). `perf`
//! put 50 % of a `create_ui` in `EVP_MD_fetch` alone and ~90 % of its CPU in the client:
//! 12–28 ms per UI against ~2 ms in swtpm. The bytes sent are exactly what ESYS sent
//! (same commands, handles, parameters and session attributes), so the TPM computes
//! the same audit digest and [`crate::tpm_attest`] is unchanged.
//!
//! Nothing here is trusted for the USIG property: the TPM enforces the counter and the
//! audit log, the verifier checks the signed result, and `TpmUsig::create_ui` verifies
//! every UI before it leaves. The session is unbound and unsalted and the counter's
//! authValue is empty, so the HMAC key is empty: the HMACs are bookkeeping the TPM
//! demands (and a check that both sides agree on the nonces), not a secret.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest as _, Sha256};

use crate::UsigError;
use crate::tpm_attest::{
    ALG_ECDSA, ALG_NULL, ALG_SHA256, CC_NV_INCREMENT, CC_NV_READ, CC_STIR_RANDOM,
};

const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const CC_START_AUTH_SESSION: u32 = 0x0000_0176;
const CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
const CC_GET_SESSION_AUDIT_DIGEST: u32 = 0x0000_014D;
const RH_NULL: u32 = 0x4000_0007;
const RH_ENDORSEMENT: u32 = 0x4000_000B;
const RS_PW: u32 = 0x4000_0009;
const SE_HMAC: u8 = 0x00;
const NONCE_LEN: usize = 32;
/// Largest response accepted (the TPM's own limit is 4096 on swtpm and most chips).
pub(crate) const RESPONSE_MAX: usize = 4096;

/// `TPMA_SESSION` bits.
pub(crate) const SESSION_CONTINUE: u8 = 0x01;
pub(crate) const SESSION_AUDIT_RESET: u8 = 0x04;
pub(crate) const SESSION_AUDIT: u8 = 0x80;

/// Warnings after which the TPM did not run the command and the same bytes may be sent
/// again (the session's nonces did not move): `TPM_RC_YIELDED`, `TPM_RC_TESTING`,
/// `TPM_RC_RETRY`. ESYS resends on these too.
const RC_RESEND: [u32; 3] = [0x908, 0x90A, 0x922];
const RESENDS_MAX: u32 = 16;

/// Something that carries one marshalled command to the TPM and brings its response back
/// (a TCTI; a fake in the unit tests).
pub(crate) trait Transport {
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, UsigError>;
}

/// A TPM response code other than success, for callers that react to particular codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TpmRc(pub u32);

fn rc_err(what: &str, rc: u32) -> UsigError {
    UsigError::Tpm(format!("{what} failed: TPM return code {rc:#x}"))
}

fn malformed(what: &str, why: &str) -> UsigError {
    UsigError::Tpm(format!("malformed TPM response to {what}: {why}"))
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac_empty_key(parts: &[&[u8]]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[]);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign()
}

/// Big-endian TPM marshalling into a byte vector.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A TPM2B: u16 size, then the bytes (callers pass at most a few dozen bytes).
    fn sized(&mut self, v: &[u8]) -> &mut Self {
        self.u16(v.len() as u16);
        self.0.extend_from_slice(v);
        self
    }
}

/// A strict big-endian reader over a response.
struct In<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UsigError> {
        if self.bytes.len() < n {
            return Err(malformed(self.what, "truncated"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, UsigError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, UsigError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, UsigError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn sized(&mut self) -> Result<&'a [u8], UsigError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn done(&self) -> Result<(), UsigError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, "trailing bytes"))
        }
    }
}

/// One session entry of a command's authorization area.
struct AuthCommand<'a> {
    handle: u32,
    nonce: &'a [u8],
    attributes: u8,
    hmac: &'a [u8],
}

const PASSWORD: AuthCommand<'static> = AuthCommand {
    handle: RS_PW,
    nonce: &[],
    attributes: 0,
    hmac: &[],
};

fn marshal_command(cc: u32, handles: &[u32], auths: &[AuthCommand<'_>], params: &[u8]) -> Vec<u8> {
    let mut body = Out::default();
    body.u32(cc);
    for h in handles {
        body.u32(*h);
    }
    if !auths.is_empty() {
        let mut area = Out::default();
        for a in auths {
            area.u32(a.handle)
                .sized(a.nonce)
                .u8(a.attributes)
                .sized(a.hmac);
        }
        body.u32(area.0.len() as u32);
        body.0.extend_from_slice(&area.0);
    }
    body.0.extend_from_slice(params);
    let tag = if auths.is_empty() {
        ST_NO_SESSIONS
    } else {
        ST_SESSIONS
    };
    // The size field counts the whole command: tag (2), size (4), then the body.
    let mut out = Out::default();
    out.u16(tag).u32(2 + 4 + body.0.len() as u32);
    out.0.extend_from_slice(&body.0);
    out.0
}

/// One session entry of a response's authorization area.
struct AuthResponse<'a> {
    nonce: &'a [u8],
    attributes: u8,
    hmac: &'a [u8],
}

/// A successful response split into its handles, parameters and authorization entries.
struct Response<'a> {
    handles: Vec<u32>,
    params: &'a [u8],
    auths: Vec<AuthResponse<'a>>,
}

/// Parse a response strictly; `Err(Ok(rc))` for a TPM error code, `Err(Err(_))` for
/// malformed bytes.
fn parse_response<'a>(
    what: &'static str,
    bytes: &'a [u8],
    out_handles: usize,
    sessions: usize,
) -> Result<Response<'a>, Result<TpmRc, UsigError>> {
    let mut r = In { bytes, what };
    let tag = r.u16().map_err(Err)?;
    let size = r.u32().map_err(Err)? as usize;
    let rc = r.u32().map_err(Err)?;
    if size != bytes.len() {
        return Err(Err(malformed(what, "size field differs from the length")));
    }
    if rc != 0 {
        return Err(Ok(TpmRc(rc)));
    }
    let mut handles = Vec::with_capacity(out_handles);
    for _ in 0..out_handles {
        handles.push(r.u32().map_err(Err)?);
    }
    let params = match (tag, sessions) {
        (ST_NO_SESSIONS, 0) => r.take(r.bytes.len()).map_err(Err)?,
        (ST_SESSIONS, n) if n > 0 => {
            let n = r.u32().map_err(Err)? as usize;
            r.take(n).map_err(Err)?
        }
        _ => return Err(Err(malformed(what, "unexpected tag"))),
    };
    let mut auths = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        auths.push(AuthResponse {
            nonce: r.sized().map_err(Err)?,
            attributes: r.u8().map_err(Err)?,
            hmac: r.sized().map_err(Err)?,
        });
    }
    r.done().map_err(Err)?;
    Ok(Response {
        handles,
        params,
        auths,
    })
}

/// Send `command`, resending on the warnings after which the TPM did not run it.
fn execute(t: &mut dyn Transport, command: &[u8]) -> Result<Vec<u8>, UsigError> {
    let mut resends = 0;
    loop {
        let response = t.execute(command)?;
        let rc = response
            .get(6..10)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4")));
        match rc {
            Some(rc) if RC_RESEND.contains(&rc) && resends < RESENDS_MAX => resends += 1,
            _ => return Ok(response),
        }
    }
}

/// An unbound, unsalted SHA-256 HMAC session used with the audit attribute, and the
/// TPM's last nonce for it.
pub(crate) struct AuditSession {
    handle: u32,
    nonce_tpm: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AuditSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditSession({:#010x})", self.handle)
    }
}

impl AuditSession {
    /// `TPM2_StartAuthSession`; a TPM error code comes back as `Err(Ok(rc))` so the
    /// caller can free session slots and try again.
    pub(crate) fn start(t: &mut dyn Transport) -> Result<Self, Result<TpmRc, UsigError>> {
        let rng = SystemRandom::new();
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)
            .map_err(|_| Err(UsigError::Tpm("no randomness for a session nonce".into())))?;
        let mut params = Out::default();
        params
            .sized(&nonce)
            .sized(&[])
            .u8(SE_HMAC)
            .u16(ALG_NULL)
            .u16(ALG_SHA256);
        let command = marshal_command(CC_START_AUTH_SESSION, &[RH_NULL, RH_NULL], &[], &params.0);
        let bytes = execute(t, &command).map_err(Err)?;
        let what = "StartAuthSession";
        let response = parse_response(what, &bytes, 1, 0)?;
        let mut r = In {
            bytes: response.params,
            what,
        };
        let nonce_tpm = r.sized().map_err(Err)?.to_vec();
        r.done().map_err(Err)?;
        let handle = response.handles[0];
        if handle >> 24 != 0x02 || nonce_tpm.len() < 16 {
            return Err(Err(malformed(what, "not an HMAC session")));
        }
        Ok(AuditSession {
            handle,
            nonce_tpm,
            rng,
        })
    }

    #[cfg(test)]
    fn handle(&self) -> u32 {
        self.handle
    }

    /// `TPM2_FlushContext` of the session; best effort (an error leaves a loaded session
    /// that the next start's recovery flushes).
    pub(crate) fn flush(self, t: &mut dyn Transport) {
        let mut params = Out::default();
        params.u32(self.handle);
        let command = marshal_command(CC_FLUSH_CONTEXT, &[], &[], &params.0);
        let _ = execute(t, &command);
    }

    /// Run one command with this session as its only session (authorising the
    /// `handles`, given with their Names, if any, and auditing), and return its response
    /// parameters after checking the response HMAC and taking the TPM's new nonce.
    fn run(
        &mut self,
        t: &mut dyn Transport,
        what: &'static str,
        cc: u32,
        handles: &[(u32, &[u8])],
        params: &[u8],
        attributes: u8,
    ) -> Result<Vec<u8>, UsigError> {
        let mut nonce_caller = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce_caller)
            .map_err(|_| UsigError::Tpm("no randomness for a session nonce".into()))?;
        let mut cp = Sha256::new();
        cp.update(cc.to_be_bytes());
        for (_, name) in handles {
            cp.update(name);
        }
        cp.update(params);
        let cp_hash: [u8; 32] = cp.finalize().into();
        // Key = sessionKey ‖ authValue, both empty (unbound, unsalted, empty auth).
        let command_hmac =
            hmac_empty_key(&[&cp_hash, &nonce_caller, &self.nonce_tpm, &[attributes]]);
        let auth = AuthCommand {
            handle: self.handle,
            nonce: &nonce_caller,
            attributes,
            hmac: command_hmac.as_ref(),
        };
        let handles: Vec<u32> = handles.iter().map(|(h, _)| *h).collect();
        let command = marshal_command(cc, &handles, &[auth], params);
        let bytes = execute(t, &command)?;
        let response = parse_response(what, &bytes, 0, 1).map_err(|e| match e {
            Ok(TpmRc(rc)) => rc_err(what, rc),
            Err(e) => e,
        })?;
        let auth = &response.auths[0];
        let rp_hash = sha256(&[&0u32.to_be_bytes(), &cc.to_be_bytes(), response.params]);
        let expected = hmac_empty_key(&[&rp_hash, auth.nonce, &nonce_caller, &[auth.attributes]]);
        if auth.hmac != expected.as_ref() || auth.nonce.len() < 16 {
            return Err(malformed(
                what,
                "the session HMAC does not match (nonces out of step?)",
            ));
        }
        self.nonce_tpm = auth.nonce.to_vec();
        Ok(response.params.to_vec())
    }

    fn attributes(reset: bool) -> u8 {
        SESSION_CONTINUE | SESSION_AUDIT | if reset { SESSION_AUDIT_RESET } else { 0 }
    }

    /// `TPM2_NV_Read` of the 8-byte counter at `nv` (Name `name`), authorised by this
    /// session with the counter's empty authValue and audited (`reset`: starting the
    /// session's audit digest afresh).
    pub(crate) fn read_counter(
        &mut self,
        t: &mut dyn Transport,
        nv: u32,
        name: &[u8],
        reset: bool,
    ) -> Result<u64, UsigError> {
        let what = "NV_Read of the counter";
        let params = [0, 8, 0, 0];
        let out = self.run(
            t,
            what,
            CC_NV_READ,
            &[(nv, name), (nv, name)],
            &params,
            Self::attributes(reset),
        )?;
        let mut r = In { bytes: &out, what };
        let data: [u8; 8] = r
            .sized()?
            .try_into()
            .map_err(|_| malformed(what, "not 8 bytes"))?;
        r.done()?;
        Ok(u64::from_be_bytes(data))
    }

    /// `TPM2_NV_Increment` of the counter, authorised by this session and audited.
    pub(crate) fn increment(
        &mut self,
        t: &mut dyn Transport,
        nv: u32,
        name: &[u8],
        reset: bool,
    ) -> Result<(), UsigError> {
        let what = "NV_Increment of the counter";
        let out = self.run(
            t,
            what,
            CC_NV_INCREMENT,
            &[(nv, name), (nv, name)],
            &[],
            Self::attributes(reset),
        )?;
        In { bytes: &out, what }.done()
    }

    /// `TPM2_StirRandom(data)` with this session in a slot without an authorisation role
    /// (it carries the audit attribute, as the TPM requires of such a session).
    pub(crate) fn stir(
        &mut self,
        t: &mut dyn Transport,
        data: &[u8; 32],
        reset: bool,
    ) -> Result<(), UsigError> {
        let what = "StirRandom";
        let mut params = Out::default();
        params.sized(data);
        let out = self.run(
            t,
            what,
            CC_STIR_RANDOM,
            &[],
            &params.0,
            Self::attributes(reset),
        )?;
        In { bytes: &out, what }.done()
    }

    /// `TPM2_GetSessionAuditDigest` of this session signed by the key at `key` (privacy
    /// admin: the endorsement hierarchy; both with empty passwords): (attest, r ‖ s).
    /// The session is a handle here, not an authorisation, so its nonces do not move.
    pub(crate) fn signed_audit_digest(
        &self,
        t: &mut dyn Transport,
        key: u32,
    ) -> Result<(Vec<u8>, [u8; 64]), UsigError> {
        let what = "GetSessionAuditDigest";
        let mut params = Out::default();
        params.sized(&[]).u16(ALG_NULL);
        let command = marshal_command(
            CC_GET_SESSION_AUDIT_DIGEST,
            &[RH_ENDORSEMENT, key, self.handle],
            &[PASSWORD, PASSWORD],
            &params.0,
        );
        let bytes = execute(t, &command)?;
        let response = parse_response(what, &bytes, 0, 2).map_err(|e| match e {
            Ok(TpmRc(rc)) => rc_err(what, rc),
            Err(e) => e,
        })?;
        let mut r = In {
            bytes: response.params,
            what,
        };
        let attest = r.sized()?.to_vec();
        if r.u16()? != ALG_ECDSA {
            return Err(malformed(what, "the key did not sign with ECDSA"));
        }
        if r.u16()? != ALG_SHA256 {
            return Err(malformed(what, "the signature's hash is not SHA-256"));
        }
        let mut signature = [0u8; 64];
        for i in 0..2 {
            let part = r.sized()?;
            if part.len() > 32 {
                return Err(malformed(what, "ECDSA signature part longer than 32 bytes"));
            }
            signature[i * 32 + 32 - part.len()..(i + 1) * 32].copy_from_slice(part);
        }
        r.done()?;
        Ok((attest, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake TPM that records commands and answers with canned responses.
    struct Fake {
        sent: Vec<Vec<u8>>,
        answers: Vec<Vec<u8>>,
    }

    impl Transport for Fake {
        fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, UsigError> {
            self.sent.push(command.to_vec());
            if self.answers.is_empty() {
                return Err(UsigError::Tpm("fake: no answer left".into()));
            }
            Ok(self.answers.remove(0))
        }
    }

    fn response(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Out::default();
        out.u16(tag).u32(10 + body.len() as u32).u32(rc);
        out.0.extend_from_slice(body);
        out.0
    }

    fn start_response(handle: u32, nonce: &[u8]) -> Vec<u8> {
        let mut body = Out::default();
        body.u32(handle).sized(nonce);
        response(ST_NO_SESSIONS, 0, &body.0)
    }

    /// The response a TPM gives to an audited NV_Read returning `value`, with a correct
    /// HMAC over `nonce_caller` (taken from the command) unless `break_hmac`.
    fn nv_read_response(command: &[u8], value: u64, nonce_tpm: &[u8], break_hmac: bool) -> Vec<u8> {
        // Command layout: header (10), two handles (8), auth size (4), session handle
        // (4), nonce size (2) + nonce.
        let nonce_caller = &command[28..28 + NONCE_LEN];
        let mut params = Out::default();
        params.sized(&value.to_be_bytes());
        let rp = sha256(&[&0u32.to_be_bytes(), &CC_NV_READ.to_be_bytes(), &params.0]);
        let attributes = SESSION_CONTINUE | SESSION_AUDIT;
        let mut tag = hmac_empty_key(&[&rp, nonce_tpm, nonce_caller, &[attributes]])
            .as_ref()
            .to_vec();
        if break_hmac {
            tag[0] ^= 1;
        }
        let mut body = Out::default();
        body.u32(params.0.len() as u32);
        body.0.extend_from_slice(&params.0);
        body.sized(nonce_tpm).u8(attributes).sized(&tag);
        response(ST_SESSIONS, 0, &body.0)
    }

    #[test]
    fn command_size_field_counts_the_whole_command() {
        let c = marshal_command(CC_FLUSH_CONTEXT, &[], &[], &[1, 2, 3, 4]);
        assert_eq!(c.len(), 14);
        assert_eq!(&c[..2], &ST_NO_SESSIONS.to_be_bytes());
        assert_eq!(u32::from_be_bytes(c[2..6].try_into().unwrap()), 14);
        assert_eq!(&c[6..10], &CC_FLUSH_CONTEXT.to_be_bytes());
    }

    #[test]
    fn session_read_checks_the_response_hmac_and_follows_nonces() {
        let name = [7u8; 34];
        let mut fake = Fake {
            sent: Vec::new(),
            answers: vec![start_response(0x0200_0000, &[1; 32])],
        };
        let mut session = AuditSession::start(&mut fake).map_err(|_| ()).unwrap();
        assert_eq!(session.handle(), 0x0200_0000);
        // The fake answers after seeing the command, so build answers lazily.
        struct Echo<'a> {
            value: u64,
            nonce_tpm: &'a [u8],
            break_hmac: bool,
            sent: Vec<Vec<u8>>,
        }
        impl Transport for Echo<'_> {
            fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, UsigError> {
                self.sent.push(command.to_vec());
                Ok(nv_read_response(
                    command,
                    self.value,
                    self.nonce_tpm,
                    self.break_hmac,
                ))
            }
        }
        let mut good = Echo {
            value: 41,
            nonce_tpm: &[2; 32],
            break_hmac: false,
            sent: Vec::new(),
        };
        assert_eq!(
            session
                .read_counter(&mut good, 0x0150_4246, &name, true)
                .unwrap(),
            41
        );
        // The command HMAC covered the TPM's first nonce; the next one covers the second.
        let sent = &good.sent[0];
        assert_eq!(
            sent[28 + NONCE_LEN],
            SESSION_CONTINUE | SESSION_AUDIT | SESSION_AUDIT_RESET
        );
        assert_eq!(session.nonce_tpm, vec![2; 32]);
        let mut bad = Echo {
            value: 42,
            nonce_tpm: &[3; 32],
            break_hmac: true,
            sent: Vec::new(),
        };
        let err = session
            .read_counter(&mut bad, 0x0150_4246, &name, false)
            .unwrap_err();
        assert!(err.to_string().contains("HMAC"), "{err}");
        assert_eq!(
            session.nonce_tpm,
            vec![2; 32],
            "a bad response must not move the nonce"
        );
    }

    #[test]
    fn responses_parse_strictly() {
        let good = start_response(0x0200_0001, &[5; 16]);
        assert!(parse_response("t", &good, 1, 0).is_ok());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(parse_response("t", &trailing, 1, 0).is_err());
        for len in 0..good.len() {
            assert!(
                parse_response("t", &good[..len], 1, 0).is_err(),
                "truncated {len}"
            );
        }
        let error = response(ST_NO_SESSIONS, 0x98E, &[]);
        assert!(matches!(
            parse_response("t", &error, 1, 0),
            Err(Ok(TpmRc(0x98E)))
        ));
    }

    #[test]
    fn warnings_are_resent_boundedly() {
        let retry = response(ST_NO_SESSIONS, 0x922, &[]);
        let mut fake = Fake {
            sent: Vec::new(),
            answers: vec![retry.clone(), retry, start_response(0x0200_0002, &[9; 32])],
        };
        let session = AuditSession::start(&mut fake).map_err(|_| ()).unwrap();
        assert_eq!(session.handle(), 0x0200_0002);
        assert_eq!(fake.sent.len(), 3);
        assert_eq!(
            fake.sent[0], fake.sent[2],
            "a resend repeats the same bytes"
        );
        let mut stuck = Fake {
            sent: Vec::new(),
            answers: vec![response(ST_NO_SESSIONS, 0x922, &[]); 64],
        };
        assert!(AuditSession::start(&mut stuck).is_err());
        assert_eq!(stuck.sent.len() as u32, RESENDS_MAX + 1);
    }
}
