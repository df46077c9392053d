//! The TPM USIG in a cluster (DESIGN.md, "USIG"; `usig::tpm`): opening a replica's TPM
//! USIG from cluster.toml, `bftnfs usig-provision`, and one swtpm per replica for
//! `bftnfs up --usig tpm`, the LocalCluster and the benchmark. Everything that touches a
//! TPM needs the `tpm` feature; without it a replica configured with
//! `usig = { kind = "tpm", … }` refuses to start with an error that says so, and
//! verifying other replicas' TPM UIs works either way.

use std::path::Path;

use usig::{ReplicaId, Usig};

use crate::config::{ClusterConfig, ConfigError, UsigConfig};

/// Open replica `id`'s TPM USIG as cluster.toml configures it (`usig = { kind = "tpm",
/// tcti = … }` plus the identity `bftnfs usig-provision` wrote). `state_dir` holds the
/// lock and the last-issued-UI cache.
pub fn open_usig(
    config: &ClusterConfig,
    id: ReplicaId,
    state_dir: &Path,
) -> Result<Box<dyn Usig + Send>, ConfigError> {
    let entry = config
        .replicas
        .get(id as usize)
        .ok_or_else(|| ConfigError::Invalid(format!("no replica {id}")))?;
    let UsigConfig::Tpm {
        tcti,
        nv_index,
        key_handle,
    } = &entry.usig
    else {
        return Err(ConfigError::Invalid(format!(
            "replica {id} is not configured with a TPM USIG"
        )));
    };
    imp::open(config, id, tcti, *nv_index, *key_handle, state_dir)
}

#[cfg(not(feature = "tpm"))]
mod imp {
    use super::*;

    pub fn open(
        _config: &ClusterConfig,
        id: ReplicaId,
        _tcti: &str,
        _nv_index: Option<u32>,
        _key_handle: Option<u32>,
        _state_dir: &Path,
    ) -> Result<Box<dyn Usig + Send>, ConfigError> {
        Err(ConfigError::Invalid(format!(
            "replica {id} uses usig kind \"tpm\", but this bftnfs was built without the \
             `tpm` feature: rebuild with `cargo build --features tpm` (needs libtss2-dev)"
        )))
    }
}

#[cfg(feature = "tpm")]
pub use imp::{provision, start_swtpms};

#[cfg(feature = "tpm")]
mod imp {
    use usig::swtpm::Swtpm;
    use usig::tpm::{DEFAULT_KEY_HANDLE, DEFAULT_NV_INDEX};
    use usig::{TpmLocation, TpmUsig, UsigIdentity};

    use super::*;
    use crate::config::TpmIdentityEntry;

    /// Most batches in flight for a cluster on swtpm (`consensus::Config::pipeline_max`).
    pub const TPM_PIPELINE_MAX: u64 = 1;

    fn location(tcti: &str, nv_index: Option<u32>, key_handle: Option<u32>) -> TpmLocation {
        TpmLocation {
            tcti: tcti.to_string(),
            nv_index: nv_index.unwrap_or(DEFAULT_NV_INDEX),
            key_handle: key_handle.unwrap_or(DEFAULT_KEY_HANDLE),
        }
    }

    pub fn open(
        config: &ClusterConfig,
        id: ReplicaId,
        tcti: &str,
        nv_index: Option<u32>,
        key_handle: Option<u32>,
        state_dir: &Path,
    ) -> Result<Box<dyn Usig + Send>, ConfigError> {
        let identity = config.usig_identity(id)?;
        if !matches!(identity, UsigIdentity::Tpm { .. }) {
            return Err(ConfigError::Invalid(format!(
                "replica {id} uses usig kind \"tpm\" but cluster.toml has no usig_tpm identity \
                 for it: run `bftnfs usig-provision --config … --id {id} --tcti {tcti}`"
            )));
        }
        let usig = TpmUsig::open(
            &location(tcti, nv_index, key_handle),
            id,
            &identity,
            state_dir,
        )?;
        Ok(Box::new(usig))
    }

    /// Provision replica `id`'s TPM at `tcti` (usig::tpm::provision) and write its
    /// identity and `usig = { kind = "tpm", tcti = … }` into the cluster.toml at
    /// `config_path`. Returns the identity.
    pub fn provision(
        config_path: &Path,
        id: ReplicaId,
        tcti: &str,
        nv_index: Option<u32>,
        key_handle: Option<u32>,
    ) -> Result<UsigIdentity, ConfigError> {
        let mut config = ClusterConfig::load(config_path)?;
        config.require_own_usig_keys("a TPM USIG")?;
        if id >= config.n() {
            return Err(ConfigError::Invalid(format!(
                "replica id {id} out of range (n = {})",
                config.n()
            )));
        }
        let identity = usig::tpm::provision(&location(tcti, nv_index, key_handle))?;
        set_identity(&mut config, id, &identity, tcti, nv_index, key_handle);
        config.save(config_path)?;
        Ok(identity)
    }

    fn set_identity(
        config: &mut ClusterConfig,
        id: ReplicaId,
        identity: &UsigIdentity,
        tcti: &str,
        nv_index: Option<u32>,
        key_handle: Option<u32>,
    ) {
        let entry = &mut config.replicas[id as usize];
        if let Some((public_key, tpm)) = TpmIdentityEntry::from_identity(identity) {
            entry.usig_public_key = public_key;
            entry.usig_tpm = Some(tpm);
        }
        entry.usig = UsigConfig::Tpm {
            tcti: tcti.to_string(),
            nv_index,
            key_handle,
        };
    }

    /// Start one swtpm per replica of the cluster.toml at `config_path`, state in
    /// `dir/replica-<i>/swtpm` (kept, so a restarted cluster keeps its counters and
    /// keys), on free loopback ports; provision each one the configuration has no TPM
    /// identity for; point every replica's `usig` at its swtpm and save cluster.toml.
    /// The swtpms are killed when the returned guards drop.
    pub fn start_swtpms(config_path: &Path, dir: &Path) -> Result<Vec<Swtpm>, ConfigError> {
        let mut config = ClusterConfig::load(config_path)?;
        config.require_own_usig_keys("a TPM USIG")?;
        let mut swtpms = Vec::new();
        for id in 0..config.n() {
            let swtpm = Swtpm::start(&dir.join(format!("replica-{id}")).join("swtpm"))?;
            let tcti = swtpm.tcti();
            let identity = match config.replicas[id as usize].usig_tpm {
                Some(_) => config.usig_identity(id)?,
                None => usig::tpm::provision(&location(&tcti, None, None))?,
            };
            set_identity(&mut config, id, &identity, &tcti, None, None);
            swtpms.push(swtpm);
        }
        // A UI costs 2-3 ms on swtpm (50-600 ms on chips) against 0.02 ms in software,
        // and a replica makes one per batch: fewer batches in flight make each batch
        // carry more requests, which is what keeps throughput up. Re-measured with the
        // raw-TCTI create_ui (64 clients, batching): pipeline 1 2.7k ops/s, pipeline 8
        // 2.1-2.3k (README.md, figures).
        config.consensus.pipeline_max = config.consensus.pipeline_max.min(TPM_PIPELINE_MAX);
        config.save(config_path)?;
        Ok(swtpms)
    }
}
