//! Large sequential transfers, after the five phases: one file of `--bulk-mib` MiB
//! written from offset 0 in WRITEs of the server's preferred size (FSINFO's wtpref, as
//! `nfs-cp` and the kernel client do), then read back in READs of rtpref and compared
//! byte for byte. The paper measured small files only; this is what a user copying a
//! large file sees. Modes take turns round by round, like the phases.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::nfs::Client;

/// No mode's round (writing, reading and removing one file) may take longer.
const ROUND_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct BulkConfig {
    /// The file's size in MiB (at least 1).
    pub mib: u64,
    /// Timed rounds per mode.
    pub rounds: usize,
}

/// One mode's transfers: the median over the rounds of each direction's rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BulkResult {
    pub mib: u64,
    pub rounds: usize,
    /// The WRITE and READ sizes the server asked for (FSINFO wtpref, rtpref).
    pub write_bytes: usize,
    pub read_bytes: usize,
    /// WRITEs one file took (more than size / wtpref if the server wrote short).
    pub writes: u64,
    /// MiB/s from the first WRITE until the COMMIT's reply.
    pub write_mib_s: f64,
    /// MiB/s from the first READ until the one that reached EOF.
    pub read_mib_s: f64,
}

/// One mode taking part: its connected client and where its files go.
pub struct BulkRun<'a> {
    pub mode: &'a str,
    pub client: &'a mut Client,
}

/// The rounds on every mode in turn; one result per mode, in order. Each file is
/// `prefix` plus the round number, in the export's root, removed after its round.
pub async fn run_all(
    modes: &mut [BulkRun<'_>],
    prefix: &str,
    config: BulkConfig,
) -> Result<Vec<BulkResult>> {
    ensure!(config.mib >= 1 && config.rounds >= 1, "nothing to transfer");
    let bytes = usize::try_from(config.mib << 20).context("--bulk-mib is too large")?;
    let mut sizes = Vec::with_capacity(modes.len());
    for m in modes.iter_mut() {
        sizes.push(
            m.client
                .transfer_sizes()
                .await
                .with_context(|| format!("{}: FSINFO", m.mode))?,
        );
    }
    let mut times = vec![(Vec::new(), Vec::new()); modes.len()];
    let mut writes = vec![0; modes.len()];
    for round in 0..config.rounds {
        let data = pattern(bytes, round as u64);
        let name = format!("{prefix}{round}");
        for turn in 0..modes.len() {
            let k = (round + turn) % modes.len();
            let m = &mut modes[k];
            let (wsize, rsize) = sizes[k];
            let one = transfer(m.client, name.as_bytes(), &data, wsize, rsize);
            let (w, r, n) = tokio::time::timeout(ROUND_TIMEOUT, one)
                .await
                .map_err(|_| anyhow::anyhow!("not done in {ROUND_TIMEOUT:?}"))
                .and_then(|r| r)
                .with_context(|| format!("{}: {} MiB file, round {round}", m.mode, config.mib))?;
            times[k].0.push(w);
            times[k].1.push(r);
            writes[k] = n;
        }
    }
    let mib = config.mib as f64;
    Ok(times
        .into_iter()
        .zip(sizes)
        .zip(writes)
        .map(|(((w, r), (write_bytes, read_bytes)), writes)| BulkResult {
            mib: config.mib,
            rounds: config.rounds,
            write_bytes,
            read_bytes,
            writes,
            write_mib_s: mib / median_secs(w),
            read_mib_s: mib / median_secs(r),
        })
        .collect())
}

/// Creates `name` in the root, writes `data` into it, reads it back, removes it.
/// Returns the write and read times and the WRITEs sent.
async fn transfer(
    c: &mut Client,
    name: &[u8],
    data: &[u8],
    wsize: usize,
    rsize: usize,
) -> Result<(Duration, Duration, u64)> {
    let root = c.root();
    let fh = c.create(&root, name).await?;
    let start = Instant::now();
    let writes = c.write_sequential(&fh, data, wsize).await?;
    let written = start.elapsed();
    let start = Instant::now();
    c.read_and_compare(&fh, data, rsize).await?;
    let read = start.elapsed();
    c.remove(&root, name).await?;
    Ok((written, read, writes))
}

fn median_secs(mut d: Vec<Duration>) -> f64 {
    d.sort_unstable();
    d[d.len() / 2].as_secs_f64().max(1e-9)
}

/// `bytes` of incompressible-looking data, different for every `seed`, so that no
/// layer (a content-addressed chunk store among them) can take a round for a repeat.
pub fn pattern(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_by_seed_and_have_the_size() {
        assert_eq!(pattern(1000, 1).len(), 1000);
        assert_eq!(pattern(1000, 1), pattern(1000, 1));
        assert_ne!(pattern(1000, 1), pattern(1000, 2));
        // Not a short repeat: no 64 KiB chunk of a file equals another.
        let p = pattern(4 << 16, 0);
        let chunks: std::collections::BTreeSet<&[u8]> = p.chunks(1 << 16).collect();
        assert_eq!(chunks.len(), 4);
    }

    #[test]
    fn the_median_is_the_middle_round() {
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median_secs(vec![d(30), d(10), d(20)]), 0.02);
    }
}
