//! `bftnfs usig-provision`: set up a replica's TPM 2.0 USIG (MinBFT section 7) and
//! publish its identity in cluster.toml.

use std::path::PathBuf;

/// Provision the TPM of replica ID for its USIG and write the identity into FILE.
///
/// Creates (or reuses) the NV counter index (authread/authwrite, no-DA, incremented once
/// so its Name is fixed) and the restricted ECDSA P-256 signing key (fixedTPM, made
/// persistent), then writes into cluster.toml the key's public key, public area and
/// Name, the counter's Name and the base counter value, plus
/// `usig = { kind = "tpm", tcti = T }` for that replica. Every replica then verifies this
/// replica's UIs with that identity (no TPM needed to verify).
///
/// Provisioning again re-bases the replica (the counter only grows): UIs it issued before
/// no longer verify, so do it only for a new replica or one rejoining from scratch.
/// With swtpm this proves nothing about key residency and is for tests only; on real
/// hardware use `--tcti device:/dev/tpmrm0` and attest the key against the EK.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// cluster.toml to update.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Replica whose TPM this is.
    #[arg(long)]
    id: u32,
    /// TCTI of the TPM: `swtpm:host=127.0.0.1,port=2321` (swtpm; control on port+1) or
    /// `device:/dev/tpmrm0` (a TPM behind the kernel resource manager).
    #[arg(long, value_name = "T")]
    tcti: String,
    /// NV index of the counter (hex, 0x01xxxxxx); default 0x01504246.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    nv_index: Option<u32>,
    /// Persistent handle of the signing key (hex, 0x81xxxxxx); default 0x81014246.
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    key_handle: Option<u32>,
}

fn parse_hex(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u32::from_str_radix(digits, 16).map_err(|e| format!("{s:?} is not a hex handle: {e}"))
}

#[cfg(feature = "tpm")]
pub fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let identity = nfs_frontend::tpm::provision(
        &args.config,
        args.id,
        &args.tcti,
        args.nv_index,
        args.key_handle,
    )
    .with_context(|| format!("provisioning the TPM USIG of replica {}", args.id))?;
    if let usig::UsigIdentity::Tpm { base_counter, .. } = identity {
        println!(
            "replica {}: TPM USIG provisioned at {} (base counter {base_counter}); identity \
             written to {}",
            args.id,
            args.tcti,
            args.config.display()
        );
    }
    Ok(())
}

#[cfg(not(feature = "tpm"))]
pub fn run(args: Args) -> anyhow::Result<()> {
    let _ = (
        &args.config,
        args.id,
        &args.tcti,
        args.nv_index,
        args.key_handle,
    );
    anyhow::bail!(
        "this bftnfs was built without the `tpm` feature: rebuild with \
         `cargo build --features tpm` (needs libtss2-dev)"
    )
}
