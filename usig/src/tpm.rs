//! The TPM 2.0 USIG (MinBFT section 7), feature `tpm`: the counter is a TPM NV counter
//! index and the certificate a restricted TPM key's signature over a session-audit
//! digest, the audited read–increment–read design of `notes/tpm-usig.md`
//! ([`crate::tpm_attest`] has the format and why it keeps the USIG property).
//!
//! Talks to the TPM over any TCTI of tpm2-tss (`swtpm:host=127.0.0.1,port=P` for swtpm,
//! `device:/dev/tpmrm0` for a chip behind the kernel's resource manager). Provisioning,
//! `open` and some test support go through ESYS (raw `tss-esapi` 7.7 bindings: the safe
//! wrapper has no `GetSessionAuditDigest`); `create_ui`'s audit session and its five
//! commands are marshalled by [`crate::tpm_wire`] and sent on the TCTI directly, because
//! ESYS in tpm2-tss 3.2.1 spent ~90 % of a UI's time setting up OpenSSL (see there).
//!
//! The TPM is the authority on the counter: a crash between the increment and the UI
//! leaving wastes that value (a gap, a liveness matter only), and nothing local can make
//! the counter go back. The last issued UI is cached in `state_dir/usig-tpm.last` (written
//! in place and fdatasynced before `create_ui` returns, verified when read) so
//! [`Usig::last_issued`] survives restarts of the holder and power cuts; the cache is
//! untrusted, a forged one fails verification. [`write_last`] says why it is synced.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use tss_esapi::tss2_esys as sys;

use crate::tpm_attest::{self, ALG_ECC, ALG_ECDSA, ALG_NULL, ALG_SHA256, ECC_NIST_P256};
use crate::tpm_wire::{
    self, AuditSession, SESSION_AUDIT, SESSION_AUDIT_RESET, SESSION_CONTINUE, Transport,
};
use crate::{Digest, IssuedUi, ReplicaId, Ui, Usig, UsigError, UsigIdentity, Verifier};

/// Default NV index of the counter ("BF" in the owner range of NV indices).
pub const DEFAULT_NV_INDEX: u32 = 0x0150_4246;
/// Default persistent handle of the signing key.
pub const DEFAULT_KEY_HANDLE: u32 = 0x8101_4246;
/// Name of the last-issued-UI cache file in the state directory.
pub const LAST_FILE_NAME: &str = "usig-tpm.last";

const LAST_MAGIC: &[u8; 16] = b"bftnfs/tpm-last1";
const LAST_FILE_BYTES_MAX: u64 = 4096;
/// The cache holds two slots of this size, written alternately in place (UI counter k
/// goes to slot k mod 2), so a write torn by a power cut leaves the other, older one.
const LAST_SLOT_LEN: usize = 512;
/// magic ‖ replica ‖ digest ‖ counter ‖ cert_len: what precedes the cert in a record.
const LAST_FIXED_LEN: usize = 16 + 4 + 32 + 8 + 2;

const SE_HMAC: u8 = 0x00;

const NV_AUTHWRITE: u32 = 0x0000_0004;
const NV_TYPE_COUNTER: u32 = 0x1 << 4;
const NV_AUTHREAD: u32 = 0x0004_0000;
const NV_NO_DA: u32 = 0x0200_0000;

/// `TPM_RC_NV_DEFINED` and `TPM_RC_NV_SPACE`-style "already there" answers.
const RC_NV_DEFINED: u32 = 0x14C;
/// How often `create_ui` retries when another TPM user incremented the counter between
/// this session's reads (each try wastes one value).
const CONCURRENT_INCREMENT_TRIES: u32 = 3;

fn tpm_err(what: &str, rc: u32) -> UsigError {
    UsigError::Tpm(format!("{what} failed: TSS return code {rc:#x}"))
}

/// One ESYS context over one TCTI connection.
struct Esys {
    ctx: *mut sys::ESYS_CONTEXT,
    tcti: *mut sys::TSS2_TCTI_CONTEXT,
}

// The context is used by one thread at a time (`&mut self`) and never shared.
unsafe impl Send for Esys {}

impl Esys {
    fn connect(tcti: &str) -> Result<Esys, UsigError> {
        let conf = CString::new(tcti)
            .map_err(|_| UsigError::Tpm(format!("TCTI {tcti:?} contains a NUL byte")))?;
        let mut esys = Esys {
            ctx: null_mut(),
            tcti: null_mut(),
        };
        // SAFETY: valid C string and out-pointers; freed in Drop.
        let rc = unsafe { sys::Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut esys.tcti) };
        if rc != 0 {
            return Err(UsigError::Tpm(format!(
                "cannot open TCTI {tcti:?} (is the TPM or swtpm there?): TSS return code {rc:#x}"
            )));
        }
        // SAFETY: tcti was initialised above.
        let rc = unsafe { sys::Esys_Initialize(&mut esys.ctx, esys.tcti, null_mut()) };
        if rc != 0 {
            return Err(tpm_err("Esys_Initialize", rc));
        }
        Ok(esys)
    }

    fn tr_from_public(&mut self, handle: u32) -> Result<sys::ESYS_TR, UsigError> {
        let mut tr = sys::ESYS_TR_NONE;
        // SAFETY: no sessions (tpm2-tss 3.2.1 crashes with a password session here).
        let rc = unsafe {
            sys::Esys_TR_FromTPMPublic(
                self.ctx,
                handle,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                &mut tr,
            )
        };
        if rc != 0 {
            return Err(UsigError::Tpm(format!(
                "TPM handle {handle:#010x} not found or unreadable (provisioned? run bftnfs \
                 usig-provision): TSS return code {rc:#x}"
            )));
        }
        Ok(tr)
    }

    fn name(&mut self, tr: sys::ESYS_TR) -> Result<Vec<u8>, UsigError> {
        let mut name: *mut sys::TPM2B_NAME = null_mut();
        // SAFETY: out-pointer freed with Esys_Free below.
        let rc = unsafe { sys::Esys_TR_GetName(self.ctx, tr, &mut name) };
        if rc != 0 {
            return Err(tpm_err("Esys_TR_GetName", rc));
        }
        // SAFETY: ESYS returned a valid TPM2B_NAME.
        let out = unsafe { (&(*name).name)[..(*name).size as usize].to_vec() };
        unsafe { sys::Esys_Free(name.cast()) };
        Ok(out)
    }

    /// (marshalled TPMT_PUBLIC, Name, qualified Name) of a loaded object.
    #[allow(clippy::type_complexity)]
    fn read_public(&mut self, tr: sys::ESYS_TR) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), UsigError> {
        let mut public: *mut sys::TPM2B_PUBLIC = null_mut();
        let mut name: *mut sys::TPM2B_NAME = null_mut();
        let mut qualified: *mut sys::TPM2B_NAME = null_mut();
        // SAFETY: out-pointers freed below.
        let rc = unsafe {
            sys::Esys_ReadPublic(
                self.ctx,
                tr,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                &mut public,
                &mut name,
                &mut qualified,
            )
        };
        if rc != 0 {
            return Err(tpm_err("ReadPublic", rc));
        }
        let mut area = vec![0u8; 1024];
        let mut offset = 0usize;
        // SAFETY: ESYS returned valid structures; buffer and size match.
        let mrc = unsafe {
            sys::Tss2_MU_TPMT_PUBLIC_Marshal(
                &(*public).publicArea,
                area.as_mut_ptr(),
                area.len() as _,
                &mut offset as *mut usize as *mut _,
            )
        };
        let out = unsafe {
            (
                (&(*name).name)[..(*name).size as usize].to_vec(),
                (&(*qualified).name)[..(*qualified).size as usize].to_vec(),
            )
        };
        unsafe {
            sys::Esys_Free(public.cast());
            sys::Esys_Free(name.cast());
            sys::Esys_Free(qualified.cast());
        }
        if mrc != 0 {
            return Err(tpm_err("marshalling the key's public area", mrc));
        }
        area.truncate(offset);
        Ok((area, out.0, out.1))
    }

    fn start_audit_session(&mut self) -> Result<sys::ESYS_TR, UsigError> {
        let symmetric = sys::TPMT_SYM_DEF {
            algorithm: ALG_NULL,
            // SAFETY: all-zero is a valid value of these plain unions.
            keyBits: unsafe { std::mem::zeroed() },
            mode: unsafe { std::mem::zeroed() },
        };
        let mut session = sys::ESYS_TR_NONE;
        // SAFETY: valid arguments; the session is flushed by the caller.
        let rc = unsafe {
            sys::Esys_StartAuthSession(
                self.ctx,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                null(),
                SE_HMAC,
                &symmetric,
                ALG_SHA256,
                &mut session,
            )
        };
        if rc != 0 {
            return Err(tpm_err("StartAuthSession", rc));
        }
        Ok(session)
    }

    /// Start an audit session; if the TPM has no session slot left (swtpm has no
    /// resource manager, and a holder killed mid-run leaves its session loaded), flush
    /// the loaded sessions and try once more. Flushing another user's session costs that
    /// user a retry, never safety.
    fn start_audit_session_recovering(&mut self) -> Result<sys::ESYS_TR, UsigError> {
        match self.start_audit_session() {
            Ok(s) => Ok(s),
            Err(first) => {
                if self.flush_loaded_sessions()? == 0 {
                    return Err(first);
                }
                self.start_audit_session()
            }
        }
    }

    /// Whether the TPM lists `handle` (a persistent or NV handle): probing with
    /// `TR_FromTPMPublic` instead would make tpm2-tss log errors for a missing one.
    fn handle_exists(&mut self, handle: u32) -> Result<bool, UsigError> {
        Ok(self.list_handles(handle & 0xFF00_0000)?.contains(&handle))
    }

    fn list_handles(&mut self, first: u32) -> Result<Vec<u32>, UsigError> {
        const CAP_HANDLES: u32 = 1;
        let mut more = 0u8;
        let mut data: *mut sys::TPMS_CAPABILITY_DATA = null_mut();
        // SAFETY: out-pointers freed below.
        let rc = unsafe {
            sys::Esys_GetCapability(
                self.ctx,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                CAP_HANDLES,
                first,
                254,
                &mut more,
                &mut data,
            )
        };
        if rc != 0 {
            return Err(tpm_err("GetCapability (handles)", rc));
        }
        // SAFETY: capability HANDLES selects the `handles` member.
        let handles = unsafe {
            let list = &(*data).data.handles;
            let n = (list.count as usize).min(list.handle.len());
            let v = list.handle[..n].to_vec();
            sys::Esys_Free(data.cast());
            v
        };
        Ok(handles
            .into_iter()
            .filter(|h| h >> 24 == first >> 24)
            .collect())
    }

    /// Flush every loaded session the TPM lists; returns how many.
    fn flush_loaded_sessions(&mut self) -> Result<usize, UsigError> {
        const LOADED_SESSION_FIRST: u32 = 0x0200_0000;
        let handles = self.list_handles(LOADED_SESSION_FIRST)?;
        let mut sys_ctx: *mut sys::TSS2_SYS_CONTEXT = null_mut();
        // SAFETY: the SYS context belongs to this ESYS context and is used in between
        // ESYS calls only.
        let rc = unsafe { sys::Esys_GetSysContext(self.ctx, &mut sys_ctx) };
        if rc != 0 {
            return Err(tpm_err("Esys_GetSysContext", rc));
        }
        let mut flushed = 0;
        for h in handles {
            // SAFETY: a handle the TPM listed; an error code only means not flushed.
            if unsafe { sys::Tss2_Sys_FlushContext(sys_ctx, h) } == 0 {
                flushed += 1;
            }
        }
        Ok(flushed)
    }

    fn flush(&mut self, tr: sys::ESYS_TR) {
        // SAFETY: best effort; an unknown handle only yields an error code.
        unsafe { sys::Esys_FlushContext(self.ctx, tr) };
    }

    fn set_session_attributes(
        &mut self,
        session: sys::ESYS_TR,
        flags: u8,
    ) -> Result<(), UsigError> {
        // SAFETY: plain call on a live session.
        let rc = unsafe { sys::Esys_TRSess_SetAttributes(self.ctx, session, flags, 0xFF) };
        if rc != 0 {
            return Err(tpm_err("TRSess_SetAttributes", rc));
        }
        Ok(())
    }

    /// NV_Read of the 8-byte counter, authorised (and audited) by `session`, or by the
    /// empty password if `session` is `ESYS_TR_PASSWORD`.
    fn read_counter(&mut self, nv: sys::ESYS_TR, session: sys::ESYS_TR) -> Result<u64, UsigError> {
        let mut data: *mut sys::TPM2B_MAX_NV_BUFFER = null_mut();
        // SAFETY: out-pointer freed below.
        let rc = unsafe {
            sys::Esys_NV_Read(
                self.ctx,
                nv,
                nv,
                session,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                8,
                0,
                &mut data,
            )
        };
        if rc != 0 {
            return Err(tpm_err("NV_Read of the counter", rc));
        }
        // SAFETY: ESYS returned a valid buffer.
        let bytes = unsafe { (&(*data).buffer)[..(*data).size as usize].to_vec() };
        unsafe { sys::Esys_Free(data.cast()) };
        let bytes: [u8; 8] = bytes
            .try_into()
            .map_err(|_| UsigError::Tpm("NV_Read returned other than 8 bytes".into()))?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn increment(&mut self, nv: sys::ESYS_TR, session: sys::ESYS_TR) -> Result<(), UsigError> {
        // SAFETY: plain call.
        let rc = unsafe {
            sys::Esys_NV_Increment(
                self.ctx,
                nv,
                nv,
                session,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
            )
        };
        if rc != 0 {
            return Err(tpm_err("NV_Increment of the counter", rc));
        }
        Ok(())
    }

    fn stir(&mut self, session: sys::ESYS_TR, data: &[u8; 32]) -> Result<(), UsigError> {
        // SAFETY: all-zero is a valid TPM2B.
        let mut input: sys::TPM2B_SENSITIVE_DATA = unsafe { std::mem::zeroed() };
        input.size = 32;
        input.buffer[..32].copy_from_slice(data);
        let rc = unsafe {
            sys::Esys_StirRandom(
                self.ctx,
                session,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                &input,
            )
        };
        if rc != 0 {
            return Err(tpm_err("StirRandom", rc));
        }
        Ok(())
    }

    /// GetSessionAuditDigest of `session`, signed by `key`: (attest bytes, r ‖ s).
    fn signed_audit_digest(
        &mut self,
        key: sys::ESYS_TR,
        session: sys::ESYS_TR,
    ) -> Result<(Vec<u8>, [u8; 64]), UsigError> {
        // SAFETY: all-zero is a valid empty TPM2B_DATA / NULL scheme after setting it.
        let qualifying: sys::TPM2B_DATA = unsafe { std::mem::zeroed() };
        let mut scheme: sys::TPMT_SIG_SCHEME = unsafe { std::mem::zeroed() };
        scheme.scheme = ALG_NULL;
        let mut attest: *mut sys::TPM2B_ATTEST = null_mut();
        let mut signature: *mut sys::TPMT_SIGNATURE = null_mut();
        let rc = unsafe {
            sys::Esys_GetSessionAuditDigest(
                self.ctx,
                sys::ESYS_TR_RH_ENDORSEMENT,
                key,
                session,
                sys::ESYS_TR_PASSWORD,
                sys::ESYS_TR_PASSWORD,
                sys::ESYS_TR_NONE,
                &qualifying,
                &scheme,
                &mut attest,
                &mut signature,
            )
        };
        if rc != 0 {
            return Err(tpm_err("GetSessionAuditDigest", rc));
        }
        // SAFETY: ESYS returned valid structures, freed right after copying.
        unsafe {
            let bytes = (&(*attest).attestationData)[..(*attest).size as usize].to_vec();
            let sig = ecdsa_signature(&*signature);
            sys::Esys_Free(attest.cast());
            sys::Esys_Free(signature.cast());
            sig.map(|s| (bytes, s))
        }
    }
}

/// r ‖ s, each left-padded to 32 bytes, of an ECDSA `TPMT_SIGNATURE`.
fn ecdsa_signature(signature: &sys::TPMT_SIGNATURE) -> Result<[u8; 64], UsigError> {
    if signature.sigAlg != ALG_ECDSA {
        return Err(UsigError::Tpm(format!(
            "the key signed with algorithm {:#x}, not ECDSA",
            signature.sigAlg
        )));
    }
    // SAFETY: sigAlg says which union member is valid.
    let ecdsa = unsafe { signature.signature.ecdsa };
    let mut out = [0u8; 64];
    for (i, part) in [ecdsa.signatureR, ecdsa.signatureS].iter().enumerate() {
        let len = part.size as usize;
        if len > 32 {
            return Err(UsigError::Tpm(
                "ECDSA signature part longer than 32 bytes".into(),
            ));
        }
        out[i * 32 + 32 - len..(i + 1) * 32].copy_from_slice(&part.buffer[..len]);
    }
    Ok(out)
}

impl Drop for Esys {
    fn drop(&mut self) {
        // SAFETY: pointers came from the initialisers (or are null, which both accept).
        unsafe {
            if !self.ctx.is_null() {
                sys::Esys_Finalize(&mut self.ctx);
            }
            if !self.tcti.is_null() {
                sys::Tss2_TctiLdr_Finalize(&mut self.tcti);
            }
        }
    }
}

/// The raw command path of [`tpm_wire`]: one command out and its response back on this
/// context's TCTI, between ESYS calls (ESYS keeps no TCTI state across its calls).
impl Transport for Esys {
    fn execute(&mut self, command: &[u8]) -> Result<Vec<u8>, UsigError> {
        let common = self.tcti as *const sys::TSS2_TCTI_CONTEXT_COMMON_V1;
        // SAFETY: every TCTI context starts with the common v1 header (what the
        // Tss2_Tcti_Transmit/Receive macros of tss2_tcti.h dereference); the buffers and
        // their sizes match.
        unsafe {
            if (*common).version < 1 {
                return Err(UsigError::Tpm(
                    "TCTI context has no transmit/receive".into(),
                ));
            }
            let (Some(transmit), Some(receive)) = ((*common).transmit, (*common).receive) else {
                return Err(UsigError::Tpm(
                    "TCTI context has no transmit/receive".into(),
                ));
            };
            let rc = transmit(self.tcti, command.len() as _, command.as_ptr());
            if rc != 0 {
                return Err(tpm_err("TCTI transmit", rc));
            }
            let mut response = vec![0u8; tpm_wire::RESPONSE_MAX];
            let mut size = response.len() as sys::size_t;
            let rc = receive(
                self.tcti,
                &mut size,
                response.as_mut_ptr(),
                sys::TSS2_TCTI_TIMEOUT_BLOCK,
            );
            if rc != 0 {
                return Err(tpm_err("TCTI receive", rc));
            }
            response.truncate(size as usize);
            Ok(response)
        }
    }
}

/// Where a replica's USIG lives in its TPM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmLocation {
    /// TCTI configuration string, e.g. `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// NV index of the counter (0x01xxxxxx).
    pub nv_index: u32,
    /// Persistent handle of the signing key (0x81xxxxxx).
    pub key_handle: u32,
}

impl TpmLocation {
    /// The default handles at `tcti`.
    pub fn new(tcti: impl Into<String>) -> Self {
        TpmLocation {
            tcti: tcti.into(),
            nv_index: DEFAULT_NV_INDEX,
            key_handle: DEFAULT_KEY_HANDLE,
        }
    }
}

/// Provision a TPM for one replica: define the NV counter (authread/authwrite, no-DA) and
/// increment it once so its Name is fixed; create the restricted P-256 ECDSA signing key
/// and make it persistent; return the identity to publish. An existing counter index or
/// key at the given handles is reused (the counter only grows, so the new base counter is
/// above every UI issued before: provisioning again re-bases the replica).
pub fn provision(location: &TpmLocation) -> Result<UsigIdentity, UsigError> {
    let mut esys = Esys::connect(&location.tcti)?;
    if location.nv_index >> 24 != 0x01 {
        return Err(UsigError::Tpm(format!(
            "NV index {:#010x} is not an NV index handle (0x01xxxxxx)",
            location.nv_index
        )));
    }
    if location.key_handle >> 24 != 0x81 {
        return Err(UsigError::Tpm(format!(
            "key handle {:#010x} is not a persistent handle (0x81xxxxxx)",
            location.key_handle
        )));
    }
    // The counter index.
    // SAFETY: all-zero TPM2B_AUTH is the empty auth; the public area is filled in.
    let auth: sys::TPM2B_AUTH = unsafe { std::mem::zeroed() };
    let mut public: sys::TPM2B_NV_PUBLIC = unsafe { std::mem::zeroed() };
    public.nvPublic.nvIndex = location.nv_index;
    public.nvPublic.nameAlg = ALG_SHA256;
    public.nvPublic.attributes = NV_AUTHWRITE | NV_AUTHREAD | NV_NO_DA | NV_TYPE_COUNTER;
    public.nvPublic.dataSize = 8;
    let mut nv = sys::ESYS_TR_NONE;
    let rc = if esys.handle_exists(location.nv_index)? {
        RC_NV_DEFINED
    } else {
        // SAFETY: valid structures; the handle object is released with the context.
        unsafe {
            sys::Esys_NV_DefineSpace(
                esys.ctx,
                sys::ESYS_TR_RH_OWNER,
                sys::ESYS_TR_PASSWORD,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                &auth,
                &public,
                &mut nv,
            )
        }
    };
    if rc & 0xFFF == RC_NV_DEFINED {
        nv = esys.tr_from_public(location.nv_index)?;
    } else if rc != 0 {
        return Err(tpm_err("NV_DefineSpace of the counter", rc));
    }
    esys.increment(nv, sys::ESYS_TR_PASSWORD)?;
    // A fresh handle object re-reads the public area, written bit set.
    esys.flush_tr(nv);
    let nv = esys.tr_from_public(location.nv_index)?;
    let counter_name = esys.name(nv)?;
    let base_counter = esys.read_counter(nv, sys::ESYS_TR_PASSWORD)?;

    // The signing key.
    let key = match esys.handle_exists(location.key_handle)? {
        true => esys.tr_from_public(location.key_handle)?,
        false => {
            let transient = create_signing_key(&mut esys)?;
            let mut persistent = sys::ESYS_TR_NONE;
            let rc = unsafe {
                sys::Esys_EvictControl(
                    esys.ctx,
                    sys::ESYS_TR_RH_OWNER,
                    transient,
                    sys::ESYS_TR_PASSWORD,
                    sys::ESYS_TR_NONE,
                    sys::ESYS_TR_NONE,
                    location.key_handle,
                    &mut persistent,
                )
            };
            esys.flush(transient);
            if rc != 0 {
                return Err(tpm_err("EvictControl (making the key persistent)", rc));
            }
            persistent
        }
    };
    let (key_public, key_name, qualified_signer) = esys.read_public(key)?;
    let public_key = tpm_attest::parse_signing_key_public(&key_public)
        .ok_or_else(|| {
            UsigError::Tpm(format!(
                "the key at {:#010x} is not a restricted fixedTPM P-256 ECDSA signing key",
                location.key_handle
            ))
        })?
        .to_vec();
    let identity = UsigIdentity::Tpm {
        public_key,
        key_public,
        key_name,
        qualified_signer,
        counter_name,
        base_counter,
    };
    Verifier::new(&identity)
        .map_err(|e| UsigError::Tpm(format!("provisioned identity is unusable: {e}")))?;
    Ok(identity)
}

impl Esys {
    /// Release an ESYS handle object without flushing anything in the TPM.
    fn flush_tr(&mut self, tr: sys::ESYS_TR) {
        // SAFETY: closes the ESYS-side object only.
        unsafe { sys::Esys_TR_Close(self.ctx, &mut { tr }) };
    }
}

/// A primary restricted ECDSA P-256 signing key under the owner hierarchy, with random
/// `unique` bytes so each provisioning makes a distinct key.
fn create_signing_key(esys: &mut Esys) -> Result<sys::ESYS_TR, UsigError> {
    // SAFETY: all-zero structures, then filled in field by field.
    let sensitive: sys::TPM2B_SENSITIVE_CREATE = unsafe { std::mem::zeroed() };
    let mut public: sys::TPM2B_PUBLIC = unsafe { std::mem::zeroed() };
    let area = &mut public.publicArea;
    area.type_ = ALG_ECC;
    area.nameAlg = ALG_SHA256;
    area.objectAttributes =
        tpm_attest::OBJECT_REQUIRED | tpm_attest::OBJECT_USER_WITH_AUTH | tpm_attest::OBJECT_NO_DA;
    unsafe {
        let ecc = &mut area.parameters.eccDetail;
        ecc.symmetric.algorithm = ALG_NULL;
        ecc.scheme.scheme = ALG_ECDSA;
        ecc.scheme.details.ecdsa.hashAlg = ALG_SHA256;
        ecc.curveID = ECC_NIST_P256;
        ecc.kdf.scheme = ALG_NULL;
        let mut unique = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut unique)
            .map_err(|_| UsigError::Tpm("no randomness for the key template".into()))?;
        area.unique.ecc.x.size = 32;
        area.unique.ecc.x.buffer[..32].copy_from_slice(&unique);
        area.unique.ecc.y.size = 0;
    }
    let outside: sys::TPM2B_DATA = unsafe { std::mem::zeroed() };
    let pcrs: sys::TPML_PCR_SELECTION = unsafe { std::mem::zeroed() };
    let mut handle = sys::ESYS_TR_NONE;
    let mut out_public: *mut sys::TPM2B_PUBLIC = null_mut();
    let mut creation_data: *mut sys::TPM2B_CREATION_DATA = null_mut();
    let mut creation_hash: *mut sys::TPM2B_DIGEST = null_mut();
    let mut ticket: *mut sys::TPMT_TK_CREATION = null_mut();
    let rc = unsafe {
        sys::Esys_CreatePrimary(
            esys.ctx,
            sys::ESYS_TR_RH_OWNER,
            sys::ESYS_TR_PASSWORD,
            sys::ESYS_TR_NONE,
            sys::ESYS_TR_NONE,
            &sensitive,
            &public,
            &outside,
            &pcrs,
            &mut handle,
            &mut out_public,
            &mut creation_data,
            &mut creation_hash,
            &mut ticket,
        )
    };
    unsafe {
        sys::Esys_Free(out_public.cast());
        sys::Esys_Free(creation_data.cast());
        sys::Esys_Free(creation_hash.cast());
        sys::Esys_Free(ticket.cast());
    }
    if rc != 0 {
        return Err(tpm_err("CreatePrimary of the signing key", rc));
    }
    Ok(handle)
}

/// One step of an audited command sequence, for [`TpmUsig::hostile_sequence`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// NV_Read of the counter (the first step of a sequence also resets the audit).
    Read,
    Increment,
    Stir([u8; 32]),
}

/// A replica's USIG in a TPM provisioned by [`provision`].
pub struct TpmUsig {
    esys: Esys,
    replica: ReplicaId,
    identity: UsigIdentity,
    verifier: Verifier,
    base_counter: u64,
    nv: sys::ESYS_TR,
    key: sys::ESYS_TR,
    /// TPM handles and the counter's Name, for the raw path ([`tpm_wire`]).
    nv_handle: u32,
    key_handle: u32,
    counter_name: Vec<u8>,
    /// The audit session, kept open across `create_ui` calls (started afresh after any
    /// error).
    session: Option<AuditSession>,
    /// The ESYS audit session of [`TpmUsig::create_ui_through_esys`] (benchmarks only).
    esys_session: Option<sys::ESYS_TR>,
    last_path: PathBuf,
    /// The cache file, open for writing in place.
    last_file: File,
    _lock: File,
    last: Option<IssuedUi>,
}

impl std::fmt::Debug for TpmUsig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmUsig")
            .field("replica", &self.replica)
            .field("base_counter", &self.base_counter)
            .finish_non_exhaustive()
    }
}

impl TpmUsig {
    /// Open the USIG of `replica` at `location`, checking that the TPM's counter and key
    /// are the ones `identity` publishes. `state_dir` (which must exist) holds the lock
    /// and the last-issued-UI cache.
    pub fn open(
        location: &TpmLocation,
        replica: ReplicaId,
        identity: &UsigIdentity,
        state_dir: &Path,
    ) -> Result<Self, UsigError> {
        let UsigIdentity::Tpm {
            key_name,
            qualified_signer,
            counter_name,
            base_counter,
            ..
        } = identity
        else {
            return Err(UsigError::Tpm(
                "the configured USIG identity is not a TPM identity (run bftnfs usig-provision)"
                    .into(),
            ));
        };
        let verifier = Verifier::new(identity)
            .map_err(|e| UsigError::Tpm(format!("configured TPM identity: {e}")))?;
        let lock = crate::software::lock_state_dir(state_dir)?;
        let mut esys = Esys::connect(&location.tcti)?;
        let nv = esys.tr_from_public(location.nv_index)?;
        if esys.name(nv)? != *counter_name {
            return Err(UsigError::Tpm(format!(
                "the NV index {:#010x} is not the configured counter (its Name differs)",
                location.nv_index
            )));
        }
        let key = esys.tr_from_public(location.key_handle)?;
        let (_, name, qualified) = esys.read_public(key)?;
        if name != *key_name || qualified != *qualified_signer {
            return Err(UsigError::Tpm(format!(
                "the key at {:#010x} is not the configured USIG key",
                location.key_handle
            )));
        }
        let last_path = state_dir.join(LAST_FILE_NAME);
        let last = read_last(&last_path, replica, &verifier)?;
        let last_file = open_last(&last_path, replica, last.as_ref())?;
        let tpm_counter = esys.read_counter(nv, sys::ESYS_TR_PASSWORD)?;
        let issued = last.as_ref().map_or(0, |l| l.ui.counter);
        if tpm_counter < base_counter.saturating_add(issued) || tpm_counter < *base_counter {
            return Err(UsigError::CorruptState {
                path: last_path,
                reason: format!(
                    "TPM counter {tpm_counter} is below the base {base_counter} plus the last \
                     issued UI {issued}: the TPM or its state was rolled back"
                ),
            });
        }
        Ok(TpmUsig {
            esys,
            replica,
            identity: identity.clone(),
            verifier,
            base_counter: *base_counter,
            nv,
            key,
            nv_handle: location.nv_index,
            key_handle: location.key_handle,
            counter_name: counter_name.clone(),
            session: None,
            esys_session: None,
            last_path,
            last_file,
            _lock: lock,
            last,
        })
    }

    /// The audit session, started on the raw path if there is none. If the TPM has no
    /// session slot left (swtpm has no resource manager, and a holder killed mid-run
    /// leaves its session loaded), flush the loaded sessions and try once more; flushing
    /// another user's session costs that user a retry, never safety.
    fn session(&mut self) -> Result<&mut AuditSession, UsigError> {
        if self.session.is_none() {
            let started = match AuditSession::start(&mut self.esys) {
                Ok(s) => s,
                Err(Err(e)) => return Err(e),
                Err(Ok(tpm_wire::TpmRc(rc))) => {
                    if self.esys.flush_loaded_sessions()? == 0 {
                        return Err(tpm_err("StartAuthSession", rc));
                    }
                    AuditSession::start(&mut self.esys).map_err(|e| match e {
                        Ok(tpm_wire::TpmRc(rc)) => tpm_err("StartAuthSession", rc),
                        Err(e) => e,
                    })?
                }
            };
            self.session = Some(started);
        }
        Ok(self.session.as_mut().expect("started above"))
    }

    fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            s.flush(&mut self.esys);
        }
    }

    /// One audited step in the current session.
    fn step(&mut self, step: &Step, reset: bool) -> Result<(), UsigError> {
        self.session()?;
        let session = self.session.as_mut().expect("started above");
        let (esys, nv, name) = (&mut self.esys, self.nv_handle, &self.counter_name);
        match step {
            Step::Read => session.read_counter(esys, nv, name, reset).map(drop),
            Step::Increment => session.increment(esys, nv, name, reset),
            Step::Stir(data) => session.stir(esys, data, reset),
        }
    }

    fn signed_audit_digest(&mut self) -> Result<(Vec<u8>, [u8; 64]), UsigError> {
        let key = self.key_handle;
        self.session()?;
        let session = self.session.as_ref().expect("started above");
        session.signed_audit_digest(&mut self.esys, key)
    }

    /// The first command of a UI: the audited read of c − 1 that resets the session's
    /// audit digest. Nothing is spent yet if it fails.
    fn audited_read(&mut self) -> Result<u64, UsigError> {
        self.session()?;
        let session = self.session.as_mut().expect("started above");
        session.read_counter(&mut self.esys, self.nv_handle, &self.counter_name, true)
    }

    /// The rest of a UI after [`Self::audited_read`] gave `before`: increment, read, stir
    /// and the signed digest; `None` if another TPM user incremented the counter in
    /// between (that value is lost: a gap).
    fn try_create(&mut self, before: u64, digest: &Digest) -> Result<Option<Ui>, UsigError> {
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| UsigError::Tpm("no session after the audited read".into()))?;
        let (esys, nv, name) = (&mut self.esys, self.nv_handle, &self.counter_name);
        session.increment(esys, nv, name, false)?;
        let after = session.read_counter(esys, nv, name, false)?;
        if before.checked_add(1) != Some(after) {
            return Ok(None);
        }
        let counter = after
            .checked_sub(self.base_counter)
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                UsigError::Tpm(format!(
                    "TPM counter {after} is not above the base {}",
                    self.base_counter
                ))
            })?;
        let stirred = tpm_attest::message_hash(self.replica, counter, digest);
        session.stir(esys, &stirred, false)?;
        let (attest, signature) = session.signed_audit_digest(esys, self.key_handle)?;
        Ok(Some(Ui {
            counter,
            cert: tpm_attest::encode_cert(&attest, &signature),
        }))
    }

    /// Check a UI the TPM made and cache it before it leaves.
    fn release(&mut self, digest: &Digest, ui: Ui) -> Result<Ui, UsigError> {
        // A UI that does not verify must never leave (and would mean a bug here).
        self.verifier
            .verify(self.replica, digest, &ui)
            .map_err(|e| UsigError::Tpm(format!("the TPM produced a UI that fails: {e}")))?;
        let issued = IssuedUi {
            digest: *digest,
            ui: ui.clone(),
        };
        write_last(&self.last_file, &self.last_path, self.replica, &issued)?;
        self.last = Some(issued);
        Ok(ui)
    }

    /// Benchmark support: `create_ui` as earlier versions ran it, every command through
    /// ESYS (in an ESYS audit session kept open across calls, like the raw one), to
    /// measure side by side what the raw path of [`tpm_wire`] saves. The same commands
    /// and the same checks, cache write and UI; an error (including another TPM user's
    /// increment in between) is returned, not retried.
    #[doc(hidden)]
    pub fn create_ui_through_esys(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        let session = match self.esys_session {
            Some(s) => s,
            None => {
                let s = self.esys.start_audit_session_recovering()?;
                self.esys_session = Some(s);
                s
            }
        };
        let (nv, key, base, replica) = (self.nv, self.key, self.base_counter, self.replica);
        let esys = &mut self.esys;
        let made = (|| {
            esys.set_session_attributes(
                session,
                SESSION_CONTINUE | SESSION_AUDIT | SESSION_AUDIT_RESET,
            )?;
            let before = esys.read_counter(nv, session)?;
            esys.set_session_attributes(session, SESSION_CONTINUE | SESSION_AUDIT)?;
            esys.increment(nv, session)?;
            let after = esys.read_counter(nv, session)?;
            let counter = after
                .checked_sub(base)
                .filter(|c| *c > 0 && before.checked_add(1) == Some(after))
                .ok_or_else(|| UsigError::Tpm(format!("counter went {before} -> {after}")))?;
            esys.stir(session, &tpm_attest::message_hash(replica, counter, digest))?;
            let (attest, signature) = esys.signed_audit_digest(key, session)?;
            Ok(Ui {
                counter,
                cert: tpm_attest::encode_cert(&attest, &signature),
            })
        })();
        match made {
            Ok(ui) => self.release(digest, ui),
            Err(e) => {
                self.esys.flush(session);
                self.esys_session = None;
                Err(e)
            }
        }
    }

    /// Test support for hostile-host checks: run `steps` in one fresh audit session and
    /// return the TPM-signed (attest, r ‖ s) of that session. A real host can do the
    /// same with any TSS; the point of the tests is that nothing it gets verifies.
    pub fn hostile_sequence(&mut self, steps: &[Step]) -> Result<(Vec<u8>, [u8; 64]), UsigError> {
        self.drop_session();
        let result = (|| {
            for (i, step) in steps.iter().enumerate() {
                self.step(step, i == 0)?;
            }
            self.signed_audit_digest()
        })();
        self.drop_session();
        result
    }

    /// Test support: extend the session the last `create_ui` used (without resetting its
    /// audit) by `steps` and have the TPM sign its digest again.
    pub fn hostile_extend_session(
        &mut self,
        steps: &[Step],
    ) -> Result<(Vec<u8>, [u8; 64]), UsigError> {
        if self.session.is_none() {
            return Err(UsigError::Tpm(
                "no live session (call create_ui first)".into(),
            ));
        }
        for step in steps {
            self.step(step, false)?;
        }
        self.signed_audit_digest()
    }

    /// Test support for the session replay attack: read–increment–read in a fresh audit
    /// session, save the session's context, finish it with `first` stirred in and signed,
    /// then load the saved context a second time and try to finish it with `second`.
    /// Returns the counter value read, the first signed digest, and what the replay gave.
    #[allow(clippy::type_complexity)]
    pub fn hostile_replay_saved_session(
        &mut self,
        first: &[u8; 32],
        second: &[u8; 32],
    ) -> Result<
        (
            u64,
            (Vec<u8>, [u8; 64]),
            Result<(Vec<u8>, [u8; 64]), UsigError>,
        ),
        UsigError,
    > {
        self.drop_session();
        let session = self.esys.start_audit_session_recovering()?;
        self.esys.set_session_attributes(
            session,
            SESSION_CONTINUE | SESSION_AUDIT | SESSION_AUDIT_RESET,
        )?;
        self.esys.read_counter(self.nv, session)?;
        self.esys
            .set_session_attributes(session, SESSION_CONTINUE | SESSION_AUDIT)?;
        self.esys.increment(self.nv, session)?;
        let counter = self.esys.read_counter(self.nv, session)?;
        let mut saved: *mut sys::TPMS_CONTEXT = null_mut();
        // SAFETY: out-pointer; the blob is copied and freed.
        let rc = unsafe { sys::Esys_ContextSave(self.esys.ctx, session, &mut saved) };
        if rc != 0 {
            self.esys.flush(session);
            return Err(tpm_err("ContextSave", rc));
        }
        let blob: sys::TPMS_CONTEXT = unsafe { *saved };
        unsafe { sys::Esys_Free(saved.cast()) };
        let load = |esys: &mut Esys| -> Result<sys::ESYS_TR, UsigError> {
            let mut tr = sys::ESYS_TR_NONE;
            let rc = unsafe { sys::Esys_ContextLoad(esys.ctx, &blob, &mut tr) };
            if rc != 0 {
                return Err(tpm_err("ContextLoad of the saved session", rc));
            }
            Ok(tr)
        };
        let s1 = load(&mut self.esys)?;
        let finish = |esys: &mut Esys, s: sys::ESYS_TR, data: &[u8; 32], key| {
            esys.set_session_attributes(s, SESSION_CONTINUE | SESSION_AUDIT)?;
            esys.stir(s, data)?;
            esys.signed_audit_digest(key, s)
        };
        let genuine = finish(&mut self.esys, s1, first, self.key);
        self.esys.flush(s1);
        let genuine = genuine?;
        let replay = load(&mut self.esys).and_then(|s2| {
            let r = finish(&mut self.esys, s2, second, self.key);
            self.esys.flush(s2);
            r
        });
        Ok((counter, genuine, replay))
    }

    /// Test support: ask the TPM key to sign an arbitrary SHA-256 digest (a restricted
    /// key must refuse anything that looks like an attest).
    pub fn hostile_sign_digest(&mut self, digest: &[u8; 32]) -> Result<[u8; 64], UsigError> {
        // SAFETY: zeroed structures filled in; out-pointer freed below.
        let mut input: sys::TPM2B_DIGEST = unsafe { std::mem::zeroed() };
        input.size = 32;
        input.buffer[..32].copy_from_slice(digest);
        let mut scheme: sys::TPMT_SIG_SCHEME = unsafe { std::mem::zeroed() };
        scheme.scheme = ALG_NULL;
        let mut ticket: sys::TPMT_TK_HASHCHECK = unsafe { std::mem::zeroed() };
        ticket.tag = 0x8024; // TPM_ST_HASHCHECK
        ticket.hierarchy = 0x4000_0007; // TPM_RH_NULL: no ticket
        let mut signature: *mut sys::TPMT_SIGNATURE = null_mut();
        let rc = unsafe {
            sys::Esys_Sign(
                self.esys.ctx,
                self.key,
                sys::ESYS_TR_PASSWORD,
                sys::ESYS_TR_NONE,
                sys::ESYS_TR_NONE,
                &input,
                &scheme,
                &ticket,
                &mut signature,
            )
        };
        if rc != 0 {
            return Err(tpm_err("Sign", rc));
        }
        let out = unsafe { ecdsa_signature(&*signature) };
        unsafe { sys::Esys_Free(signature.cast()) };
        out
    }

    /// The TPM's current counter value (not a UI counter: base + issued + gaps).
    pub fn tpm_counter(&mut self) -> Result<u64, UsigError> {
        self.esys.read_counter(self.nv, sys::ESYS_TR_PASSWORD)
    }

    /// Test support: waste one counter value, as a crash between increment and signing
    /// would.
    pub fn waste_counter_value(&mut self) -> Result<(), UsigError> {
        self.esys.increment(self.nv, sys::ESYS_TR_PASSWORD)
    }
}

impl Usig for TpmUsig {
    fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn identity(&self) -> UsigIdentity {
        self.identity.clone()
    }

    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        for _ in 0..CONCURRENT_INCREMENT_TRIES {
            let reused = self.session.is_some();
            let before = match self.audited_read() {
                Ok(before) => before,
                // Nothing is spent before the increment: a kept session the TPM lost
                // (swtpm or the chip restarted, another user flushed it) is started
                // afresh once, so a TPM restart costs the holder no error.
                Err(_) if reused => {
                    self.drop_session();
                    self.audited_read().inspect_err(|_| self.drop_session())?
                }
                Err(e) => {
                    self.drop_session();
                    return Err(e);
                }
            };
            let ui = match self.try_create(before, digest) {
                Ok(Some(ui)) => ui,
                Ok(None) => continue,
                Err(e) => {
                    // A broken session (or connection) is started afresh next time; the
                    // value incremented, if any, is a gap.
                    self.drop_session();
                    return Err(e);
                }
            };
            return self.release(digest, ui);
        }
        Err(UsigError::Tpm(format!(
            "another TPM user incremented the counter during each of \
             {CONCURRENT_INCREMENT_TRIES} tries"
        )))
    }

    fn last_issued(&self) -> Option<IssuedUi> {
        self.last.clone()
    }

    /// The TPM's counter above the base: it counts increments whose UI never came back
    /// (a crash between the increment and the cache write), which `last_issued` cannot.
    fn spent_counter(&mut self) -> Result<u64, UsigError> {
        let issued = self.last.as_ref().map_or(0, |l| l.ui.counter);
        Ok(self
            .tpm_counter()?
            .saturating_sub(self.base_counter)
            .max(issued))
    }

    /// Bring the cache up to `issued`, a UI of this USIG the caller logged (and synced)
    /// before it left the process: after a power cut the unsynced cache may be older
    /// than the log, and the log is the durable record of every released UI. Checks the
    /// UI's signature and that the TPM's counter is at or above it; never moves back.
    fn advance_to(&mut self, issued: &IssuedUi) -> Result<(), UsigError> {
        self.verifier
            .verify(self.replica, &issued.digest, &issued.ui)
            .map_err(|e| UsigError::Tpm(format!("advance_to a UI that does not verify: {e}")))?;
        let current = self.last.as_ref().map_or(0, |l| l.ui.counter);
        if issued.ui.counter <= current {
            return Ok(());
        }
        let tpm_counter = self.tpm_counter()?;
        if tpm_counter < self.base_counter.saturating_add(issued.ui.counter) {
            return Err(UsigError::Tpm(format!(
                "advance_to UI {} but the TPM counter is {tpm_counter} (base {}): the TPM \
                 or its state was rolled back",
                issued.ui.counter, self.base_counter
            )));
        }
        write_last(&self.last_file, &self.last_path, self.replica, issued)?;
        self.last = Some(issued.clone());
        Ok(())
    }
}

impl Drop for TpmUsig {
    fn drop(&mut self) {
        // swtpm has no resource manager: a session left behind takes one of its 3 slots.
        self.drop_session();
        if let Some(s) = self.esys_session.take() {
            self.esys.flush(s);
        }
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> UsigError {
    UsigError::io(format!("{what} {}", path.display()), e)
}

/// One cache record: `magic ‖ replica ‖ digest ‖ counter ‖ cert_len (u16) ‖ cert`.
fn last_record(replica: ReplicaId, issued: &IssuedUi) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LAST_SLOT_LEN);
    bytes.extend_from_slice(LAST_MAGIC);
    bytes.extend_from_slice(&replica.to_be_bytes());
    bytes.extend_from_slice(&issued.digest);
    bytes.extend_from_slice(&issued.ui.counter.to_be_bytes());
    bytes.extend_from_slice(&(issued.ui.cert.len() as u16).to_be_bytes());
    bytes.extend_from_slice(&issued.ui.cert);
    bytes
}

/// Open the cache for in-place writes. A cache in the one-record layout of earlier
/// versions (or none) is replaced by the two-slot layout holding `last`: temp file,
/// fsync, rename, fsync of the directory (once per state directory), so a crash leaves
/// one layout or the other, never an empty file, and later in-place writes go to blocks
/// already on disk.
fn open_last(path: &Path, replica: ReplicaId, last: Option<&IssuedUi>) -> Result<File, UsigError> {
    let len = match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path, "reading the metadata of", e)),
    };
    if len != Some(2 * LAST_SLOT_LEN as u64) {
        let mut slots = vec![0u8; 2 * LAST_SLOT_LEN];
        if let Some(issued) = last {
            let record = last_record(replica, issued);
            let at = slot_of(issued.ui.counter);
            slots[at..at + record.len()].copy_from_slice(&record);
        }
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, "creating", e))?;
        std::io::Write::write_all(&mut file, &slots).map_err(|e| io_err(&tmp, "writing", e))?;
        file.sync_all().map_err(|e| io_err(&tmp, "syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path, "renaming onto", e))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, "syncing", e))?;
        }
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, "opening", e))
}

fn slot_of(counter: u64) -> usize {
    (counter % 2) as usize * LAST_SLOT_LEN
}

/// Write the record of `issued` into its slot in place (one `pwrite` of a whole
/// zero-padded slot) and fdatasync it before the UI leaves.
///
/// The TPM, not this file, is the authority on the counter: a stale cache can never make
/// the TPM reissue a value, and `open` refuses a cache above the TPM's counter (a
/// rolled-back TPM). Earlier versions therefore skipped the sync, arguing that a cache
/// lost to a power cut costs a gap only. It costs more: the replica takes its next own
/// counter from `last_issued()` and asserts that the USIG's next UI follows it (the
/// core's I1), so a cache older than UIs that already left (they are in the replica's
/// synced log) makes every restart fail that assertion, unless the replica first calls
/// [`Usig::advance_to`] with its last logged message, which it does not do for the TPM
/// today. Synced, the cache can lag the TPM only by the one UI in flight, never sent.
/// The fdatasync measured 0.2–0.4 ms per UI here (1.3–1.5 ms → 1.5–1.7 ms on swtpm);
/// with a real chip (50–600 ms per UI) it is noise. A write torn by the power cut spoils
/// only its own slot, whose UI never left; `read_last` falls back to the other slot.
fn write_last(
    file: &File,
    path: &Path,
    replica: ReplicaId,
    issued: &IssuedUi,
) -> Result<(), UsigError> {
    use std::os::unix::fs::FileExt;
    let mut slot = last_record(replica, issued);
    if slot.len() > LAST_SLOT_LEN {
        return Err(UsigError::Tpm(format!(
            "UI certificate of {} bytes does not fit the last-UI cache slot",
            issued.ui.cert.len()
        )));
    }
    slot.resize(LAST_SLOT_LEN, 0);
    file.write_all_at(&slot, slot_of(issued.ui.counter) as u64)
        .map_err(|e| io_err(path, "writing", e))?;
    file.sync_data().map_err(|e| io_err(path, "syncing", e))
}

fn read_last(
    path: &Path,
    replica: ReplicaId,
    verifier: &Verifier,
) -> Result<Option<IssuedUi>, UsigError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(f) => f
            .take(LAST_FILE_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(|e| io_err(path, "reading", e))?,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, "opening", e)),
    };
    let corrupt = |reason: String| UsigError::CorruptState {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() != 2 * LAST_SLOT_LEN {
        // The one-record layout of earlier versions: exactly one record, no padding.
        return parse_last_record(path, &bytes, replica, verifier, false)
            .map(Some)
            .map_err(corrupt_or(corrupt));
    }
    let mut found: Option<IssuedUi> = None;
    let mut bad = Vec::new();
    for slot in bytes.chunks(LAST_SLOT_LEN) {
        if slot.iter().all(|b| *b == 0) {
            continue;
        }
        match parse_last_record(path, slot, replica, verifier, true) {
            Ok(issued) => {
                if found
                    .as_ref()
                    .is_none_or(|f| f.ui.counter < issued.ui.counter)
                {
                    found = Some(issued);
                }
            }
            Err(LastError::Other(e)) => return Err(e),
            Err(LastError::Corrupt(reason)) => bad.push(reason),
        }
    }
    // One bad slot next to a good one is the write a power cut tore: the good slot is
    // the UI before it. Nothing good at all is refused, never silently reset.
    match bad.first() {
        Some(reason) if found.is_none() || bad.len() > 1 => Err(corrupt(reason.clone())),
        _ => Ok(found),
    }
}

enum LastError {
    Corrupt(String),
    Other(UsigError),
}

fn corrupt_or(corrupt: impl Fn(String) -> UsigError) -> impl Fn(LastError) -> UsigError {
    move |e| match e {
        LastError::Corrupt(reason) => corrupt(reason),
        LastError::Other(e) => e,
    }
}

/// Parse and verify one record (`padded`: followed by zeros up to the slot's end).
fn parse_last_record(
    path: &Path,
    bytes: &[u8],
    replica: ReplicaId,
    verifier: &Verifier,
    padded: bool,
) -> Result<IssuedUi, LastError> {
    let corrupt = |reason: &str| LastError::Corrupt(reason.to_string());
    if bytes.len() < LAST_FIXED_LEN || &bytes[..16] != LAST_MAGIC {
        return Err(corrupt("not a TPM USIG last-UI file"));
    }
    let found = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if found != replica {
        return Err(LastError::Other(UsigError::ReplicaMismatch {
            path: path.to_path_buf(),
            expected: replica,
            found,
        }));
    }
    let digest: Digest = bytes[20..52].try_into().expect("32 bytes");
    let counter = u64::from_be_bytes(bytes[52..60].try_into().expect("8 bytes"));
    let cert_len = u16::from_be_bytes(bytes[60..62].try_into().expect("2 bytes")) as usize;
    let end = LAST_FIXED_LEN + cert_len;
    let fits = if padded {
        end <= bytes.len() && bytes[end..].iter().all(|b| *b == 0)
    } else {
        end == bytes.len()
    };
    if !fits {
        return Err(corrupt("length does not match its certificate length"));
    }
    let ui = Ui {
        counter,
        cert: bytes[LAST_FIXED_LEN..end].to_vec(),
    };
    verifier
        .verify(replica, &digest, &ui)
        .map_err(|e| LastError::Corrupt(format!("last issued UI does not verify: {e}")))?;
    Ok(IssuedUi { digest, ui })
}
