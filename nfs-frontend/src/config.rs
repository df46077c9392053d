//! The cluster configuration (`cluster.toml`) and its key files, written by
//! `bftnfs keygen` and read by every replica and frontend.
//!
//! MinBFT (section 5) assumes every party knows every public key, that replicas talk on
//! authenticated channels, and that replies carry MACs with a key shared by one replica
//! and one client. So the public file holds addresses, the consensus parameters and the
//! public keys; each party's secrets live in their own file (mode 0600) that only it
//! reads: a replica's USIG key (an ECDSA P-256 key pair as PKCS#8, or the key all the
//! replicas' USIGs share: `usig::SigningKey`), its link keys (one per replica pair) and its
//! reply-MAC keys (one per client); a client's signing key and its reply-MAC keys (one per
//! replica). Key-file paths in `cluster.toml` are relative to the file's directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use consensus::{ClientId, Config, ReplicaId};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// BFT client sessions are numbered `client_index * SESSION_STRIDE + session`: one
/// frontend (one key) runs many sessions, each with at most one request outstanding.
pub const SESSION_STRIDE: u64 = 1 << 16;

/// Default largest frame on any connection; a frame must hold a whole VIEW-CHANGE or a
/// state-transfer manifest (all metadata of the export; contents travel as 1 MiB chunk
/// replies), hence the generous default.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("key generation failed")]
    KeyGen,
    #[error(transparent)]
    Usig(#[from] usig::UsigError),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub id: ReplicaId,
    pub addr: SocketAddr,
    /// SEC1 uncompressed P-256 point, hex (empty for a shared USIG key).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub usig_public_key: String,
    /// The id of the HMAC key all the replicas' USIGs share (`UsigKeyKind::Shared`),
    /// hex; absent for a key pair per replica. A field of its own rather than a new
    /// meaning of `usig_public_key`: a build before the sixteenth session, which needs
    /// that field, then refuses the file instead of reading it (and perhaps saving it
    /// back, as `usig-provision` does) as something else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usig_shared_key: Option<String>,
    /// Secrets of this replica (link and reply-MAC keys), relative to cluster.toml.
    pub key_file: PathBuf,
    /// The USIG's key (`usig::SigningKey`'s file), relative to cluster.toml.
    pub usig_key_file: PathBuf,
    /// Where this replica's USIG lives: `{ kind = "software" }` (default, in-process) or
    /// `{ kind = "process", socket = "/path/usig.sock" }` (a `bftnfs usig-server`).
    #[serde(default, skip_serializing_if = "UsigConfig::is_default")]
    pub usig: UsigConfig,
    /// The TPM USIG's public identity, written by `bftnfs usig-provision` (then
    /// `usig_public_key` is the TPM key's point and `usig_key_file` is unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usig_tpm: Option<TpmIdentityEntry>,
}

/// The TPM-specific part of a replica's USIG identity (`usig::UsigIdentity::Tpm`), hex.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmIdentityEntry {
    /// Marshalled TPMT_PUBLIC of the restricted signing key.
    pub key_public: String,
    pub key_name: String,
    pub qualified_signer: String,
    /// Name of the NV counter index.
    pub counter_name: String,
    /// TPM counter value at provisioning; UI counter k is TPM counter value base + k.
    pub base_counter: u64,
}

impl TpmIdentityEntry {
    /// The entry for a `UsigIdentity::Tpm` (`None` for other identities).
    pub fn from_identity(identity: &usig::UsigIdentity) -> Option<(String, Self)> {
        match identity {
            usig::UsigIdentity::Tpm {
                public_key,
                key_public,
                key_name,
                qualified_signer,
                counter_name,
                base_counter,
            } => Some((
                hex(public_key),
                TpmIdentityEntry {
                    key_public: hex(key_public),
                    key_name: hex(key_name),
                    qualified_signer: hex(qualified_signer),
                    counter_name: hex(counter_name),
                    base_counter: *base_counter,
                },
            )),
            usig::UsigIdentity::EcdsaP256 { .. } | usig::UsigIdentity::HmacSha256 { .. } => None,
        }
    }
}

/// The request digest of a cluster (`consensus::Crypto::request_digest`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RequestDigestKind {
    /// SHA-256 over the header and the whole operation (`Request::digest`).
    #[default]
    Sha256,
    /// SHA-256 over the header and the operation's BLAKE3 hash
    /// (`Request::digest_blake3_op`): new clusters. A 1 MiB WRITE hashes about 4x
    /// faster; 64 MiB written in 1 MiB WRITEs went 71 → 85 MiB/s.
    Blake3Op,
}

/// What kind of key certifies a replica's UIs (usig::SigningKey).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UsigKeyKind {
    /// An ECDSA P-256 key pair per replica: anyone can check a UI with the public key;
    /// the separate-process and TPM backends need it.
    EcdsaP256,
    /// One HMAC-SHA256 key all the replicas' in-process USIGs share: a UI costs about a
    /// microsecond to make and to check instead of 20 and 40–70 µs, and only a key
    /// holder can check it (usig/README.md, "Shared-key certificates").
    Shared,
}

/// The USIG backend of one replica (DESIGN.md, "USIG").
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum UsigConfig {
    #[default]
    Software,
    Process {
        socket: PathBuf,
    },
    /// A TPM 2.0 provisioned by `bftnfs usig-provision` (needs the `tpm` build feature):
    /// `tcti` is e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`; the
    /// counter index and key handle default to usig::tpm's defaults.
    Tpm {
        tcti: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nv_index: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_handle: Option<u32>,
    },
}

impl UsigConfig {
    fn is_default(&self) -> bool {
        *self == UsigConfig::Software
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientEntry {
    /// Client index; its sessions are `id * SESSION_STRIDE + s`.
    pub id: u64,
    /// SEC1 uncompressed P-256 point, hex: verifies this client's request signatures.
    pub public_key: String,
    pub key_file: PathBuf,
}

/// `cluster.toml`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterConfig {
    pub f: u32,
    /// BFT client sessions a frontend runs (requests in flight at once).
    pub sessions: u64,
    /// A frontend with more operations waiting than idle sessions sends several as one
    /// signed request (`bundle`). On unless the configuration says otherwise.
    #[serde(default = "default_true")]
    pub bundling: bool,
    /// With bundling: bundles one frontend has in flight at once, unless more than a
    /// full bundle waits. Operations that arrive while they are in flight wait and
    /// travel together in the next one: on a host where replicas and clients share the
    /// cores, requests in flight at once only contend for them, and fewer, fuller
    /// requests spend less CPU per operation (see `benchmark/README.md`). Raise it where
    /// each replica has cores of its own.
    #[serde(default = "default_bundles_in_flight")]
    pub bundles_in_flight: u64,
    pub frame_bytes_max: usize,
    /// What the export may hold. Replicated: every replica must run with the same
    /// limits (they decide which operations fail with `NFS3ERR_NOSPC`). Files without
    /// the table get the defaults (1 TiB, 2^24 objects).
    #[serde(default)]
    pub export: ExportLimits,
    /// How clients and replicas digest a request (what its signature covers). Files
    /// without it are from before the sixteenth session: `sha256`.
    #[serde(default)]
    pub request_digest: RequestDigestKind,
    pub consensus: Config,
    pub replicas: Vec<ReplicaEntry>,
    pub clients: Vec<ClientEntry>,
    /// Directory of cluster.toml, filled in when loaded (key paths are relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct KeyEntry {
    peer: u64,
    key: String,
}

/// A replica's secrets file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReplicaSecretsFile {
    replica: ReplicaId,
    link: Vec<KeyEntry>,
    reply: Vec<KeyEntry>,
}

/// A client's secrets file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClientSecretsFile {
    client: u64,
    signing_key: String,
    reply: Vec<KeyEntry>,
}

/// What one replica knows privately.
pub struct ReplicaSecrets {
    pub id: ReplicaId,
    /// The USIG signing key file (read only by the in-process software USIG; with a
    /// separate `usig-server` the replica never opens it).
    pub usig_key_file: std::path::PathBuf,
    /// Link key shared with each other replica, by replica id.
    pub link_keys: Vec<Option<[u8; 32]>>,
    /// Reply-MAC key shared with each client, by client index.
    pub reply_keys: std::collections::BTreeMap<u64, [u8; 32]>,
}

/// What one client (frontend) knows privately.
pub struct ClientSecrets {
    pub id: u64,
    pub signing_pkcs8: Vec<u8>,
    /// Reply-MAC key shared with each replica, by replica id.
    pub reply_keys: std::collections::BTreeMap<ReplicaId, [u8; 32]>,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn key32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// Maps an I/O error to `ConfigError::Io` naming `path`.
fn io_at(path: &Path) -> impl Fn(std::io::Error) -> ConfigError + Copy + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(io_at(path))
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    toml::from_str(&read_text(path)?).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Writes a new file with `mode` and syncs it; refuses to overwrite.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let io = io_at(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut c: ClusterConfig = parse(path)?;
        c.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let n = 2 * self.f + 1;
        if self.consensus.f != self.f {
            return Err(ConfigError::Invalid("consensus.f differs from f".into()));
        }
        if self.replicas.len() != n as usize
            || self
                .replicas
                .iter()
                .enumerate()
                .any(|(i, r)| r.id as usize != i)
        {
            return Err(ConfigError::Invalid(format!(
                "need replicas 0..{n} in order, one entry each"
            )));
        }
        if self.sessions == 0 || self.sessions >= SESSION_STRIDE {
            return Err(ConfigError::Invalid("sessions out of range".into()));
        }
        if self.bundles_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "bundles_in_flight is 0: no bundle could ever leave".into(),
            ));
        }
        if self.consensus.tick_ns == 0 {
            return Err(ConfigError::Invalid("tick_ns is 0".into()));
        }
        if self.export.bytes == 0 || self.export.files == 0 {
            return Err(ConfigError::Invalid(
                "export.bytes and export.files must be above 0".into(),
            ));
        }
        self.check_usig_keys()
    }

    /// Refuses a cluster whose USIGs share one key, for `what` (a TPM or a usig-server
    /// backend), which needs a key of its own per replica.
    pub fn require_own_usig_keys(&self, what: &str) -> Result<(), ConfigError> {
        if self.replicas.iter().any(|r| r.usig_shared_key.is_some()) {
            return Err(ConfigError::Invalid(format!(
                "this cluster's USIGs share one HMAC key, which {what} cannot use: a \
                 TPM or a usig-server needs a key pair per replica, and a replica's data \
                 is bound to its key, so make a new cluster (`bftnfs keygen --usig-key \
                 ecdsa-p256`, or `bftnfs up` with a new --dir)"
            )));
        }
        Ok(())
    }

    /// A shared USIG key is checked with the key itself, which only in-process
    /// software USIGs hold: every replica must have one (a TPM or `usig-server` replica
    /// could neither make nor check such UIs), and the same one (one key id).
    fn check_usig_keys(&self) -> Result<(), ConfigError> {
        let shared: Vec<&ReplicaEntry> = self
            .replicas
            .iter()
            .filter(|r| r.usig_shared_key.is_some())
            .collect();
        let Some(first) = shared.first() else {
            return Ok(());
        };
        if shared.len() != self.replicas.len() {
            return Err(ConfigError::Invalid(
                "some replicas have a shared USIG key and some do not: a cluster uses one \
                 kind (generate it again with `bftnfs keygen --usig-key ecdsa-p256` to mix \
                 backends)"
                    .into(),
            ));
        }
        if let Some(r) = shared
            .iter()
            .find(|r| r.usig != UsigConfig::Software || r.usig_tpm.is_some())
        {
            return Err(ConfigError::Invalid(format!(
                "replica {}: a shared USIG key works with the in-process software USIG \
                 only, not a TPM or a usig-server (generate the cluster with `bftnfs keygen \
                 --usig-key ecdsa-p256` for those)",
                r.id
            )));
        }
        if shared
            .iter()
            .any(|r| r.usig_shared_key != first.usig_shared_key || !r.usig_public_key.is_empty())
        {
            return Err(ConfigError::Invalid(
                "the replicas must name one shared USIG key (usig_shared_key) and no \
                 usig_public_key"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn n(&self) -> u32 {
        2 * self.f + 1
    }

    pub fn path_of(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    pub fn replica_addr(&self, id: ReplicaId) -> SocketAddr {
        self.replicas[id as usize].addr
    }

    pub fn client_index(session: ClientId) -> u64 {
        session / SESSION_STRIDE
    }

    pub fn replica_secrets(&self, id: ReplicaId) -> Result<ReplicaSecrets, ConfigError> {
        let entry = self
            .replicas
            .get(id as usize)
            .ok_or_else(|| ConfigError::Invalid(format!("no replica {id}")))?;
        let path = self.path_of(&entry.key_file);
        let file: ReplicaSecretsFile = parse(&path)?;
        let bad = |what: &str| ConfigError::Parse {
            path: path.clone(),
            msg: what.to_string(),
        };
        if file.replica != id {
            return Err(bad("secrets of another replica"));
        }
        let mut link_keys = vec![None; self.n() as usize];
        for e in &file.link {
            let slot = link_keys
                .get_mut(e.peer as usize)
                .ok_or_else(|| bad("link key for an unknown replica"))?;
            *slot = Some(key32(&e.key).ok_or_else(|| bad("bad link key"))?);
        }
        let mut reply_keys = std::collections::BTreeMap::new();
        for e in &file.reply {
            reply_keys.insert(e.peer, key32(&e.key).ok_or_else(|| bad("bad reply key"))?);
        }
        Ok(ReplicaSecrets {
            id,
            usig_key_file: self.path_of(&entry.usig_key_file),
            link_keys,
            reply_keys,
        })
    }

    /// The USIG identity the configuration publishes for replica `id`.
    pub fn usig_identity(&self, id: ReplicaId) -> Result<usig::UsigIdentity, ConfigError> {
        let entry = self
            .replicas
            .get(id as usize)
            .ok_or_else(|| ConfigError::Invalid(format!("no replica {id}")))?;
        if let Some(key_id) = &entry.usig_shared_key {
            let key_id = unhex(key_id).filter(|k| k.len() == 32).ok_or_else(|| {
                ConfigError::Invalid(format!("replica {id}: bad usig_shared_key"))
            })?;
            return Ok(usig::UsigIdentity::HmacSha256 { key_id });
        }
        let public_key = unhex(&entry.usig_public_key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ConfigError::Invalid(format!("replica {id}: bad usig_public_key")))?;
        let Some(tpm) = &entry.usig_tpm else {
            return Ok(usig::UsigIdentity::EcdsaP256 { public_key });
        };
        let field = |name: &str, value: &str| {
            unhex(value).ok_or_else(|| {
                ConfigError::Invalid(format!("replica {id}: bad usig_tpm.{name} (not hex)"))
            })
        };
        Ok(usig::UsigIdentity::Tpm {
            public_key,
            key_public: field("key_public", &tpm.key_public)?,
            key_name: field("key_name", &tpm.key_name)?,
            qualified_signer: field("qualified_signer", &tpm.qualified_signer)?,
            counter_name: field("counter_name", &tpm.counter_name)?,
            base_counter: tpm.base_counter,
        })
    }

    /// Rewrite the cluster.toml this configuration was loaded from (`path`), atomically
    /// (`replace_file`); used by `bftnfs usig-provision`.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        replace_file(path, text.as_bytes(), 0o644)
    }

    pub fn client_secrets(&self, client: u64) -> Result<ClientSecrets, ConfigError> {
        let entry = self
            .clients
            .iter()
            .find(|c| c.id == client)
            .ok_or_else(|| ConfigError::Invalid(format!("no client {client}")))?;
        let path = self.path_of(&entry.key_file);
        let file: ClientSecretsFile = parse(&path)?;
        let bad = |what: &str| ConfigError::Parse {
            path: path.clone(),
            msg: what.to_string(),
        };
        if file.client != client {
            return Err(bad("secrets of another client"));
        }
        let mut reply_keys = std::collections::BTreeMap::new();
        for e in &file.reply {
            let r = ReplicaId::try_from(e.peer).map_err(|_| bad("replica id"))?;
            reply_keys.insert(r, key32(&e.key).ok_or_else(|| bad("bad reply key"))?);
        }
        Ok(ClientSecrets {
            id: client,
            signing_pkcs8: unhex(&file.signing_key).ok_or_else(|| bad("bad signing key"))?,
            reply_keys,
        })
    }
}

fn default_true() -> bool {
    true
}

fn default_bundles_in_flight() -> u64 {
    1
}

/// The export's deterministic quota (`[export]` in cluster.toml): FSSTAT reports it, and
/// an operation that would go beyond it is `NFS3ERR_NOSPC` on every replica alike. The
/// host's own disk must hold more: a replica that meets a full disk stops (carrying on
/// would make it differ from the others), so with every replica on one disk a full disk
/// stops the file system (`ExportLimits::fitting`, `disk_room_warning`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportLimits {
    /// Bytes the export's files, directories and symbolic links may take in all.
    pub bytes: u64,
    /// Files, directories and symbolic links the export may hold.
    pub files: u64,
}

impl Default for ExportLimits {
    fn default() -> Self {
        let fs = fs_state::FsConfig::default();
        ExportLimits {
            bytes: fs.bytes_total,
            files: fs.files_total,
        }
    }
}

/// Disk space a replica may need per byte of export: the export itself, and the
/// checkpoint chunk store, which holds a copy of every chunk a retained checkpoint
/// refers to (all of them, right after a state transfer).
pub const DISK_BYTES_PER_EXPORT_BYTE: u64 = 2;

impl ExportLimits {
    /// The default limits, with the byte quota lowered so that `replicas` replicas whose
    /// data directories share a file system with `available` free bytes cannot fill it
    /// (with a tenth of it to spare for their protocol logs and everything else),
    /// rounded down to a MiB.
    pub fn fitting(available: u64, replicas: u32) -> Self {
        let share = available / 10 * 9
            / u64::from(replicas.max(1)).saturating_mul(DISK_BYTES_PER_EXPORT_BYTE);
        let defaults = ExportLimits::default();
        ExportLimits {
            bytes: defaults.bytes.min(share >> 20 << 20),
            ..defaults
        }
    }

    /// `fitting` for `replicas` replicas whose data directories are all under `dir`
    /// (which must exist), as `bftnfs up` and the embedded clusters keep them.
    pub fn fitting_disk_of(dir: &Path, replicas: u32) -> std::io::Result<Self> {
        let available = available_bytes(dir)?;
        let limits = ExportLimits::fitting(available, replicas);
        if limits.bytes == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "{} MiB free: too little for the exports of {replicas} replicas",
                    available >> 20
                ),
            ));
        }
        Ok(limits)
    }
}

/// Free bytes (for an unprivileged user) on the file system holding `path`.
pub fn available_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Why an export of `quota` bytes could outgrow the disk holding `data_dir` (a replica
/// may need `DISK_BYTES_PER_EXPORT_BYTE` times the quota), or `None` when the quota
/// fits, or the free space cannot be read. A warning only: the export may already hold
/// much of it.
pub fn disk_room_warning(data_dir: &Path, quota: u64) -> Option<String> {
    let available = available_bytes(data_dir).ok()?;
    let need = quota.saturating_mul(DISK_BYTES_PER_EXPORT_BYTE);
    (need > available).then(|| {
        format!(
            "the export quota ({} MiB) may need up to {} MiB on the disk of {}, which has \
             {} MiB free: if it fills, this replica stops; lower [export] bytes in \
             cluster.toml on every replica (bftnfs keygen --quota)",
            quota >> 20,
            need >> 20,
            data_dir.display(),
            available >> 20
        )
    })
}

/// What `keygen` should produce.
#[derive(Clone, Debug)]
pub struct KeygenOptions {
    pub f: u32,
    pub clients: u64,
    /// Replica addresses; `None` picks free loopback ports now.
    pub addrs: Option<Vec<SocketAddr>>,
    pub consensus: Config,
    pub sessions: u64,
    /// `ClusterConfig::bundles_in_flight`.
    pub bundles_in_flight: u64,
    /// `ClusterConfig::export`; `None`: a quota that the 2f+1 replicas, with their data
    /// under the keygen directory (as `bftnfs up` and the embedded clusters keep it),
    /// cannot outgrow on its disk (`ExportLimits::fitting_disk_of`).
    pub export: Option<ExportLimits>,
    /// What certifies the replicas' UIs.
    pub usig_key: UsigKeyKind,
}

impl KeygenOptions {
    pub fn new(f: u32, clients: u64) -> Self {
        KeygenOptions {
            f,
            clients,
            addrs: None,
            consensus: default_consensus(f),
            sessions: 16,
            bundles_in_flight: default_bundles_in_flight(),
            export: None,
            usig_key: UsigKeyKind::Shared,
        }
    }
}

/// Consensus parameters for a real cluster on one host: 10 ms ticks, so a dead primary
/// is suspected after 1 s and a lost message is fetched again after 50 ms.
pub fn default_consensus(f: u32) -> Config {
    let mut c = Config::new(f);
    c.tick_ns = 10_000_000;
    c.request_timeout_ticks = 100;
    c.view_change_timeout_ticks = 200;
    c.fetch_timeout_ticks = 5;
    c.status_interval_ticks = 10;
    c.state_transfer_timeout_ticks = 50;
    // Also how soon peers skip a hole a crash left in a replica's counter sequence.
    // Chosen by measurement (docs/recovery.md): a checkpoint costs a roughly fixed
    // 12-70 ms with 2000 files (scrub, digest, chunk capture), 0.2-0.6 ms per batch
    // amortised at 128 against 0.3-0.8 at 64; catch-up times were within noise.
    c.checkpoint_interval = 128;
    c
}

/// Free loopback ports, found by binding port 0 (another process may take one before
/// the replicas bind it; keygen is run once, before starting the cluster).
pub fn free_ports(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let listeners: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners.iter().map(|l| l.local_addr()).collect()
}

fn random32(rng: &SystemRandom) -> Result<[u8; 32], ConfigError> {
    let mut k = [0u8; 32];
    rng.fill(&mut k).map_err(|_| ConfigError::KeyGen)?;
    Ok(k)
}

/// Generates every key and writes `dir/cluster.toml` plus `dir/keys/*`. Refuses to
/// overwrite existing key files. Returns the path of cluster.toml.
pub fn keygen(dir: &Path, opts: &KeygenOptions) -> Result<PathBuf, ConfigError> {
    let n = 2 * opts.f + 1;
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(io_at(&keys))?;
    let addrs = match &opts.addrs {
        Some(a) if a.len() == n as usize => a.clone(),
        Some(_) => return Err(ConfigError::Invalid("need one address per replica".into())),
        None => free_ports(n as usize).map_err(io_at(dir))?,
    };
    let rng = SystemRandom::new();
    // link[i][j] == link[j][i]; reply[i][c].
    let mut link = vec![vec![[0u8; 32]; n as usize]; n as usize];
    for (i, j) in (0..n as usize).flat_map(|i| (i + 1..n as usize).map(move |j| (i, j))) {
        let k = random32(&rng)?;
        link[i][j] = k;
        link[j][i] = k;
    }
    let mut reply = vec![vec![[0u8; 32]; opts.clients as usize]; n as usize];
    for row in reply.iter_mut() {
        for k in row.iter_mut() {
            *k = random32(&rng)?;
        }
    }
    let shared_usig_key = match opts.usig_key {
        UsigKeyKind::Shared => Some(usig::SigningKey::generate_shared()?),
        UsigKeyKind::EcdsaP256 => None,
    };
    let mut replicas = Vec::new();
    for i in 0..n {
        // A shared key gets one file per replica all the same, so that each replica's
        // directory of secrets stays its own.
        let (usig_key, usig_rel) = match &shared_usig_key {
            Some(key) => (
                usig::SigningKey::from_bytes(key.key_bytes())?,
                PathBuf::from(format!("keys/replica-{i}.usig.key")),
            ),
            None => (
                usig::SigningKey::generate()?,
                PathBuf::from(format!("keys/replica-{i}.usig.pk8")),
            ),
        };
        usig_key.write_file(&dir.join(&usig_rel))?;
        let (public_key, shared_key) = match usig_key.identity() {
            usig::UsigIdentity::EcdsaP256 { public_key } => (hex(&public_key), None),
            usig::UsigIdentity::HmacSha256 { key_id } => (String::new(), Some(hex(&key_id))),
            usig::UsigIdentity::Tpm { .. } => unreachable!("a software key is not a TPM's"),
        };
        let secrets = ReplicaSecretsFile {
            replica: i,
            link: (0..n)
                .filter(|&j| j != i)
                .map(|j| KeyEntry {
                    peer: u64::from(j),
                    key: hex(&link[i as usize][j as usize]),
                })
                .collect(),
            reply: (0..opts.clients)
                .map(|c| KeyEntry {
                    peer: c,
                    key: hex(&reply[i as usize][c as usize]),
                })
                .collect(),
        };
        let rel = PathBuf::from(format!("keys/replica-{i}.toml"));
        let text = toml::to_string(&secrets).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        write_new(&dir.join(&rel), text.as_bytes(), 0o600)?;
        replicas.push(ReplicaEntry {
            id: i,
            addr: addrs[i as usize],
            usig_public_key: public_key,
            usig_shared_key: shared_key,
            key_file: rel,
            usig_key_file: usig_rel,
            usig: UsigConfig::default(),
            usig_tpm: None,
        });
    }
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| ConfigError::KeyGen)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng)
            .map_err(|_| ConfigError::KeyGen)?;
        let secrets = ClientSecretsFile {
            client: c,
            signing_key: hex(doc.as_ref()),
            reply: (0..n)
                .map(|i| KeyEntry {
                    peer: u64::from(i),
                    key: hex(&reply[i as usize][c as usize]),
                })
                .collect(),
        };
        let rel = PathBuf::from(format!("keys/client-{c}.toml"));
        let text = toml::to_string(&secrets).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        write_new(&dir.join(&rel), text.as_bytes(), 0o600)?;
        clients.push(ClientEntry {
            id: c,
            public_key: hex(pair.public_key().as_ref()),
            key_file: rel,
        });
    }
    let export = match opts.export {
        Some(limits) => limits,
        None => ExportLimits::fitting_disk_of(dir, n).map_err(io_at(dir))?,
    };
    let mut consensus = opts.consensus.clone();
    consensus.f = opts.f;
    let config = ClusterConfig {
        f: opts.f,
        sessions: opts.sessions,
        bundling: true,
        bundles_in_flight: opts.bundles_in_flight,
        frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
        export,
        request_digest: RequestDigestKind::Blake3Op,
        consensus,
        replicas,
        clients,
        base_dir: dir.to_path_buf(),
    };
    let text = toml::to_string(&config).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let path = dir.join("cluster.toml");
    write_new(&path, text.as_bytes(), 0o644)?;
    Ok(path)
}

/// Writes one directory per party of the cluster whose cluster.toml is `cluster_toml`:
/// `out/replica-<i>/` and `out/client-<c>/`, each holding a copy of cluster.toml and,
/// under the same relative paths, only that party's own secret files (a replica's link
/// and reply keys and its USIG key; a client's signing and reply keys). Mounting a
/// party's directory alone keeps the other parties' secrets out of its reach, which
/// matters most for a shared USIG key: each replica's copy forges every replica's UIs,
/// and a frontend then holds none of it.
///
/// Files are replaced whole (written beside, synced, renamed), so running it again after
/// cluster.toml changed brings every copy up to date. Returns the directories written.
pub fn write_party_dirs(cluster_toml: &Path, out: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let config = ClusterConfig::load(cluster_toml)?;
    // `bftnfs up` keeps replica i's data in <cluster dir>/replica-<i>.
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(out, &config.base_dir) {
        return Err(ConfigError::Invalid(format!(
            "{} is the cluster's own directory, whose replica-<i>/ are the replicas' data \
             directories under `bftnfs up`: give the per-party directories another place",
            out.display()
        )));
    }
    let toml_bytes = std::fs::read(cluster_toml).map_err(io_at(cluster_toml))?;
    let mut parties: Vec<(String, Vec<&Path>)> = Vec::new();
    for r in &config.replicas {
        let mut files = vec![r.key_file.as_path()];
        // A TPM-provisioned replica has no software key file to carry.
        if r.usig_tpm.is_none() || config.path_of(&r.usig_key_file).exists() {
            files.push(r.usig_key_file.as_path());
        }
        parties.push((format!("replica-{}", r.id), files));
    }
    for c in &config.clients {
        parties.push((format!("client-{}", c.id), vec![c.key_file.as_path()]));
    }
    let mut written = Vec::new();
    for (name, files) in parties {
        let party = out.join(&name);
        create_private_dir(&party)?;
        replace_file(&party.join("cluster.toml"), &toml_bytes, 0o644)?;
        for rel in files {
            if !is_plain_relative(rel) {
                return Err(ConfigError::Invalid(format!(
                    "{name}'s key file {} is not a path inside the cluster directory; \
                     per-party directories copy keys under their relative paths",
                    rel.display()
                )));
            }
            let from = config.path_of(rel);
            let bytes = std::fs::read(&from).map_err(io_at(&from))?;
            let to = party.join(rel);
            if let Some(parent) = to.parent() {
                create_private_dir(parent)?;
            }
            replace_file(&to, &bytes, 0o600)?;
        }
        written.push(party);
    }
    Ok(written)
}

/// A relative path without `..`, `.` or a root: it names the same file under any base.
fn is_plain_relative(p: &Path) -> bool {
    use std::path::Component;
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn create_private_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))
}

/// Replaces `path` with `bytes` whole: written to a file beside it (`<name>.new`),
/// synced, renamed over it, and the directory synced.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    write_new(&temp, bytes, mode)?;
    std::fs::rename(&temp, path).map_err(io_at(path))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::replica::log::sync_dir(dir).map_err(io_at(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_round_trips_and_keeps_secrets_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 2)).expect("keygen");
        let c = ClusterConfig::load(&path).expect("load");
        assert_eq!(c.n(), 3);
        let r1 = c.replica_secrets(1).expect("replica secrets");
        let r2 = c.replica_secrets(2).expect("replica secrets");
        assert_eq!(r1.link_keys[2], r2.link_keys[1]);
        assert!(r1.link_keys[1].is_none());
        let c1 = c.client_secrets(1).expect("client secrets");
        assert_eq!(c1.reply_keys[&2], r2.reply_keys[&1]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/replica-0.toml"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            keygen(dir.path(), &KeygenOptions::new(1, 2)).is_err(),
            "no overwrite"
        );
    }

    #[test]
    fn party_dirs_hold_each_party_its_own_keys_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = dir.path().join("cluster");
        let path = keygen(&cluster, &KeygenOptions::new(1, 2)).expect("keygen");
        let out = dir.path().join("parties");
        let written = write_party_dirs(&path, &out).expect("party dirs");
        assert_eq!(written.len(), 3 + 2);
        let whole = ClusterConfig::load(&path).expect("load");
        for i in 0..3u32 {
            let party = out.join(format!("replica-{i}"));
            let c = ClusterConfig::load(&party.join("cluster.toml")).expect("load copy");
            let own = c.replica_secrets(i).expect("own secrets");
            assert_eq!(
                own.link_keys,
                whole.replica_secrets(i).expect("whole").link_keys
            );
            crate::crypto::own_usig_key(&c, &own).expect("own USIG key");
            for j in (0..3u32).filter(|&j| j != i) {
                assert!(
                    c.replica_secrets(j).is_err(),
                    "replica {i} holds {j}'s keys"
                );
            }
            assert!(
                c.client_secrets(0).is_err(),
                "replica {i} holds a client's key"
            );
            let names: Vec<_> = std::fs::read_dir(party.join("keys"))
                .expect("keys")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(names.len(), 2, "{names:?}");
        }
        for client in 0..2u64 {
            let c = ClusterConfig::load(&out.join(format!("client-{client}/cluster.toml")))
                .expect("load copy");
            c.client_secrets(client).expect("own client secrets");
            assert!(c.client_secrets(1 - client).is_err());
            assert!((0..3).all(|i| c.replica_secrets(i).is_err()));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&out.join("replica-1/keys/replica-1.toml")), 0o600);
        assert_eq!(mode(&out.join("replica-1")), 0o700);
        // Again, after cluster.toml changed: every copy follows.
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.replace("sessions = 16", "sessions = 8")).expect("edit");
        write_party_dirs(&path, &out).expect("again");
        let copy = ClusterConfig::load(&out.join("client-1/cluster.toml")).expect("load");
        assert_eq!(copy.sessions, 8);
    }

    #[test]
    fn party_dirs_refuse_the_cluster_directory_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 1)).expect("keygen");
        let err = write_party_dirs(&path, &dir.path().join(".")).unwrap_err();
        assert!(err.to_string().contains("cluster's own directory"), "{err}");
        assert!(!dir.path().join("replica-0").exists());
    }

    #[test]
    fn party_dirs_refuse_a_key_path_outside_the_cluster_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 1)).expect("keygen");
        let text = std::fs::read_to_string(&path).expect("read");
        let edited = text.replacen("\"keys/client-0.toml\"", "\"../client-0.toml\"", 1);
        assert_ne!(edited, text);
        std::fs::write(&path, edited).expect("edit");
        let err = write_party_dirs(&path, &dir.path().join("parties")).unwrap_err();
        assert!(err.to_string().contains("not a path inside"), "{err}");
    }

    #[test]
    fn export_limits_are_written_read_and_default_for_older_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = KeygenOptions::new(1, 1);
        let limits = ExportLimits {
            bytes: 5 << 20,
            files: 99,
        };
        opts.export = Some(limits);
        let path = keygen(dir.path(), &opts).expect("keygen");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("[export]"), "{text}");
        assert_eq!(ClusterConfig::load(&path).expect("load").export, limits);
        // A cluster.toml written before the table existed reads with the defaults.
        let mut skipping = false;
        let older: String = text
            .lines()
            .filter(|l| {
                if l.starts_with('[') {
                    skipping = *l == "[export]";
                }
                !skipping
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!older.contains("[export]"));
        std::fs::write(&path, &older).expect("write");
        let c = ClusterConfig::load(&path).expect("load older");
        assert_eq!(c.export, ExportLimits::default());
        assert_eq!(c.export.bytes, 1 << 40);
        // Zero limits are refused.
        std::fs::write(&path, format!("{older}\n[export]\nbytes = 0\nfiles = 10\n"))
            .expect("write");
        assert!(ClusterConfig::load(&path).is_err());
    }

    #[test]
    fn a_fitting_quota_leaves_each_replica_twice_its_export_on_a_shared_disk() {
        // 60 GiB free, 3 replicas: 90% of it over 3 × 2.
        let l = ExportLimits::fitting(60 << 30, 3);
        assert_eq!(l.bytes, 9 << 30);
        assert_eq!(l.files, ExportLimits::default().files);
        // Never above the default, and rounded down to a MiB.
        assert_eq!(ExportLimits::fitting(u64::MAX, 3).bytes, 1 << 40);
        assert_eq!(
            ExportLimits::fitting((100 << 20) + 12345, 1).bytes % (1 << 20),
            0
        );
        // Too little disk: nothing (the callers refuse it).
        assert_eq!(ExportLimits::fitting(5 << 20, 3).bytes, 0);
    }

    #[test]
    fn bundles_in_flight_defaults_to_one_and_zero_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = KeygenOptions::new(1, 1);
        opts.bundles_in_flight = 3;
        let path = keygen(dir.path(), &opts).expect("keygen");
        assert_eq!(
            ClusterConfig::load(&path).expect("load").bundles_in_flight,
            3
        );
        // A cluster.toml written before the setting existed reads as 1.
        let text = super::test_support::drop_setting(&path, "bundles_in_flight");
        assert_eq!(
            ClusterConfig::load(&path).expect("load").bundles_in_flight,
            1
        );
        let zero = text.replace("bundles_in_flight = 3", "bundles_in_flight = 0");
        assert_ne!(zero, text, "the setting is a top-level key");
        std::fs::write(&path, zero).expect("write");
        let err = ClusterConfig::load(&path).expect_err("0 is refused");
        assert!(err.to_string().contains("bundles_in_flight"), "{err}");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xfe])).as_deref(),
            Some(&[0u8, 1, 0xfe][..])
        );
        assert!(unhex("0g").is_none());
        assert!(unhex("abc").is_none());
    }
}

#[cfg(test)]
mod usig_config_tests {
    use super::UsigConfig;

    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        usig: UsigConfig,
    }

    #[test]
    fn tpm_usig_reads_from_toml() {
        let e: Entry =
            toml::from_str("usig = { kind = \"tpm\", tcti = \"swtpm:host=127.0.0.1,port=2321\" }")
                .unwrap();
        assert_eq!(
            e.usig,
            UsigConfig::Tpm {
                tcti: "swtpm:host=127.0.0.1,port=2321".into(),
                nv_index: None,
                key_handle: None,
            }
        );
    }

    #[test]
    fn usig_backend_reads_from_toml() {
        let e: Entry =
            toml::from_str("usig = { kind = \"process\", socket = \"/run/u.sock\" }").unwrap();
        assert_eq!(
            e.usig,
            UsigConfig::Process {
                socket: "/run/u.sock".into()
            }
        );
        let e: Entry = toml::from_str("usig = { kind = \"software\" }").unwrap();
        assert_eq!(e.usig, UsigConfig::Software);
        let e: Entry = toml::from_str("").unwrap();
        assert_eq!(e.usig, UsigConfig::Software);
        assert!(toml::from_str::<Entry>("usig = { kind = \"tpm\" }").is_err());
    }

    #[test]
    fn a_shared_usig_key_is_one_key_for_in_process_usigs_only() {
        use super::{ClusterConfig, KeygenOptions, UsigKeyKind, keygen};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = keygen(dir.path(), &KeygenOptions::new(1, 1)).expect("keygen");
        let config = ClusterConfig::load(&path).expect("load");
        let key_of = |id| {
            let secrets = config.replica_secrets(id).expect("secrets");
            usig::SigningKey::read_file(&secrets.usig_key_file).expect("key")
        };
        assert!(key_of(0).is_shared(), "new clusters share one key");
        assert_eq!(key_of(0).identity(), key_of(2).identity());
        assert_eq!(
            config.usig_identity(1).expect("identity"),
            key_of(1).identity()
        );
        assert!(config.require_own_usig_keys("a TPM USIG").is_err());

        let reject = |change: &dyn Fn(&mut ClusterConfig)| {
            let mut c = config.clone();
            change(&mut c);
            c.check().expect_err("refused")
        };
        reject(&|c| {
            c.replicas[1].usig_shared_key = None;
            c.replicas[1].usig_public_key = "04".repeat(65);
        });
        reject(&|c| c.replicas[0].usig_public_key = "04".repeat(65));
        reject(&|c| {
            c.replicas[1].usig_tpm = Some(super::TpmIdentityEntry {
                key_public: String::new(),
                key_name: String::new(),
                qualified_signer: String::new(),
                counter_name: String::new(),
                base_counter: 0,
            })
        });
        reject(&|c| {
            c.replicas[2].usig = UsigConfig::Process {
                socket: "/run/u.sock".into(),
            }
        });
        reject(&|c| c.replicas[0].usig_shared_key = Some("00".repeat(32)));

        let dir = tempfile::tempdir().expect("tempdir");
        let config = super::test_support::cluster(dir.path(), 1, UsigKeyKind::EcdsaP256);
        assert!(matches!(
            config.usig_identity(0).expect("identity"),
            usig::UsigIdentity::EcdsaP256 { .. }
        ));
        config
            .require_own_usig_keys("a TPM USIG")
            .expect("own keys");
        let text = std::fs::read_to_string(dir.path().join("cluster.toml")).expect("read");
        assert!(
            !text.contains("usig_shared_key"),
            "older builds read what ECDSA writes"
        );
    }
}

/// Fixtures shared by this crate's unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::{ClusterConfig, KeygenOptions, UsigKeyKind, keygen};

    /// A new f = 1 cluster with `clients` client keys and USIG keys of `usig_key` in `dir`.
    pub(crate) fn cluster(dir: &Path, clients: u64, usig_key: UsigKeyKind) -> ClusterConfig {
        let mut opts = KeygenOptions::new(1, clients);
        opts.usig_key = usig_key;
        ClusterConfig::load(&keygen(dir, &opts).expect("keygen")).expect("load")
    }

    /// Rewrites the cluster.toml at `path` without its `key = …` lines, as a file
    /// written before that setting existed; returns the text it had.
    pub(crate) fn drop_setting(path: &Path, key: &str) -> String {
        let text = std::fs::read_to_string(path).expect("read");
        let older: String = text
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(path, older).expect("write");
        text
    }
}
