//! The macro-benchmark's five phases (paper section 8.3, Table 2), each a short script of
//! NFSv3 calls that a shell tool would make, timed at the client from the first call to
//! the last reply. Every run works in a directory of its own, made before the clock
//! starts, so no run sees another's leftovers; the setup a phase needs (the tree P3
//! examines, the file P4 reads) is made in that directory untimed.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use nfs3_client::nfs3_types::nfs3::nfs_fh3;

use crate::nfs::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    P1,
    P2,
    P3,
    P4,
    P5,
}

pub const PHASES: [Phase; 5] = [Phase::P1, Phase::P2, Phase::P3, Phase::P4, Phase::P5];

/// Depth of P1's chain of directories.
const NESTED_DIRS: usize = 6;
/// A run that takes longer has hung (a server that stopped answering): fail, not wait.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the file P4 reads and P5 creates.
const FILE_BYTES: usize = 4096;

/// The source tree of P2 and P3: 2 directories and 7 files of up to 4 KB, shaped like a
/// small C project. (directory, name, bytes); directory "" is the tree's root.
const SOURCE_TREE: [(&str, &str, usize); 7] = [
    ("", "Makefile", 1200),
    ("", "main.c", 4096),
    ("", "util.c", 3100),
    ("", "util.h", 600),
    ("lib", "lib.c", 4000),
    ("lib", "lib.h", 350),
    ("lib", "README", 2048),
];
const TREE_ROOT: &[u8] = b"tree";
const TREE_SUBDIR: &[u8] = b"lib";
/// Objects `ls -lR` examines in the tree: its root, the subdirectory and the 7 files.
const TREE_OBJECTS: usize = 2 + SOURCE_TREE.len();

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::P1 => "P1",
            Phase::P2 => "P2",
            Phase::P3 => "P3",
            Phase::P4 => "P4",
            Phase::P5 => "P5",
        }
    }

    /// The paper's wording, shortened.
    pub fn title(self) -> &'static str {
        match self {
            Phase::P1 => "create/delete 6 nested dirs",
            Phase::P2 => "copy/remove tree (2 dirs, 7 files)",
            Phase::P3 => "stat every file of the tree",
            Phase::P4 => "read every byte of a 4 KB file",
            Phase::P5 => "create a 4 KB file",
        }
    }

    /// The NFSv3 calls of one run.
    pub fn calls(self) -> &'static str {
        match self {
            Phase::P1 => "6 MKDIR; LOOKUP, 6 READDIRPLUS, 6 RMDIR",
            Phase::P2 => {
                "2 MKDIR, 7 CREATE+WRITE(+COMMIT); LOOKUP, 2 READDIRPLUS, 7 REMOVE, 2 RMDIR"
            }
            Phase::P3 => "LOOKUP, GETATTR, 2 READDIRPLUS, 8 GETATTR",
            Phase::P4 => "LOOKUP, READ",
            Phase::P5 => "CREATE, WRITE (+COMMIT if unstable)",
        }
    }
}

/// Deterministic contents for a file of the source tree.
fn contents(name: &str, bytes: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(17u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..bytes)
        .map(|i| b' ' + ((i as u8).wrapping_add(seed)) % 95)
        .collect()
}

/// `cp -r` of the source tree into `dir/tree`. Returns the COMMITs sent.
async fn copy_tree(c: &mut Client, dir: &nfs_fh3, files: &[Vec<u8>]) -> Result<u64> {
    let root = c.mkdir(dir, TREE_ROOT).await?;
    let mut commits = 0;
    let mut sub = None;
    for ((subdir, name, _), data) in SOURCE_TREE.iter().zip(files) {
        let parent = if subdir.is_empty() {
            &root
        } else {
            if sub.is_none() {
                sub = Some(c.mkdir(&root, TREE_SUBDIR).await?);
            }
            sub.as_ref().expect("made above")
        };
        commits += u64::from(c.write_file(parent, name.as_bytes(), data).await?);
    }
    Ok(commits)
}

/// One phase's samples.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    pub phase: Phase,
    pub samples: Vec<Duration>,
}

/// How many runs, and where the workload lives.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadConfig {
    pub runs: usize,
    pub warmup: usize,
}

/// One deployment under measurement: its name, a connected client and what it measured.
pub struct ModeRun<'a> {
    pub mode: &'a str,
    pub client: &'a mut Client,
    pub phases: Vec<PhaseRun>,
    pub commits: u64,
}

/// Run every phase `warmup + runs` times on every deployment, in a new directory `top`
/// under each export's root. The deployments take turns run by run (the first to go
/// rotates), so a burst of load from elsewhere on this shared machine falls on all of
/// them alike and the ratios between them stay meaningful.
pub async fn run_all(modes: &mut [ModeRun<'_>], top: &[u8], config: WorkloadConfig) -> Result<()> {
    let files: Vec<Vec<u8>> = SOURCE_TREE
        .iter()
        .map(|(_, name, bytes)| contents(name, *bytes))
        .collect();
    let file4k = contents("file4k", FILE_BYTES);
    let mut tops = Vec::with_capacity(modes.len());
    for m in modes.iter_mut() {
        let root = m.client.root();
        let top_fh = m
            .client
            .mkdir(&root, top)
            .await
            .with_context(|| format!("{}: making the benchmark's directory", m.mode))?;
        tops.push(top_fh);
    }
    let names: Vec<&str> = modes.iter().map(|m| m.mode).collect();
    let label = names.join(" + ");
    for phase in PHASES {
        let mut phase_dirs = Vec::with_capacity(modes.len());
        for (m, top_fh) in modes.iter_mut().zip(&tops) {
            phase_dirs.push(m.client.mkdir(top_fh, phase.name().as_bytes()).await?);
        }
        let bar = progress(&label, phase, config.warmup + config.runs);
        let mut samples = vec![Vec::with_capacity(config.runs); modes.len()];
        for i in 0..config.warmup + config.runs {
            let warm = i < config.warmup;
            let run_name = if warm {
                format!("w{i}")
            } else {
                format!("r{}", i - config.warmup)
            };
            for turn in 0..modes.len() {
                let k = (i + turn) % modes.len();
                let m = &mut modes[k];
                let run_dir = m.client.mkdir(&phase_dirs[k], run_name.as_bytes()).await?;
                let run = run_once(m.client, phase, &run_dir, &files, &file4k, !warm);
                let (elapsed, run_commits) = tokio::time::timeout(RUN_TIMEOUT, run)
                    .await
                    .map_err(|_| anyhow::anyhow!("no progress in {RUN_TIMEOUT:?}"))
                    .and_then(|r| r)
                    .with_context(|| format!("{}: {} run {run_name}", m.mode, phase.name()))?;
                m.commits += run_commits;
                if !warm {
                    samples[k].push(elapsed);
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        for (m, samples) in modes.iter_mut().zip(samples) {
            m.phases.push(PhaseRun { phase, samples });
        }
    }
    Ok(())
}

fn progress(mode: &str, phase: Phase, total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} runs  {elapsed}")
            .expect("valid template"),
    );
    bar.set_prefix(format!("{mode} {}", phase.name()));
    bar
}

/// One run of `phase` in the empty directory `dir`: untimed setup, then the timed calls,
/// each call's latency recorded in `c.calls` if `record_calls`.
async fn run_once(
    c: &mut Client,
    phase: Phase,
    dir: &nfs_fh3,
    files: &[Vec<u8>],
    file4k: &[u8],
    record_calls: bool,
) -> Result<(Duration, u64)> {
    match phase {
        Phase::P1 => {
            let start = c.calls.start_timing(record_calls);
            let mut parent = dir.clone();
            for depth in 1..=NESTED_DIRS {
                parent = c.mkdir(&parent, format!("d{depth}").as_bytes()).await?;
            }
            c.remove_tree(dir, b"d1").await?;
            Ok((c.calls.stop_timing(start), 0))
        }
        Phase::P2 => {
            let start = c.calls.start_timing(record_calls);
            let commits = copy_tree(c, dir, files).await?;
            c.remove_tree(dir, TREE_ROOT).await?;
            Ok((c.calls.stop_timing(start), commits))
        }
        Phase::P3 => {
            let commits = copy_tree(c, dir, files).await?;
            let start = c.calls.start_timing(record_calls);
            let tree = c.lookup(dir, TREE_ROOT).await?;
            c.getattr(&tree).await?;
            let examined = 1 + c.stat_tree(&tree).await?;
            let elapsed = c.calls.stop_timing(start);
            ensure!(
                examined == TREE_OBJECTS,
                "P3 examined {examined} objects, the tree has {TREE_OBJECTS}"
            );
            Ok((elapsed, commits))
        }
        Phase::P4 => {
            let commits = u64::from(c.write_file(dir, b"file4k", file4k).await?);
            let start = c.calls.start_timing(record_calls);
            let fh = c.lookup(dir, b"file4k").await?;
            let read = c.read_all(&fh).await?;
            let elapsed = c.calls.stop_timing(start);
            ensure!(
                read == FILE_BYTES as u64,
                "P4 read {read} bytes of {FILE_BYTES}"
            );
            Ok((elapsed, commits))
        }
        Phase::P5 => {
            let start = c.calls.start_timing(record_calls);
            let commits = u64::from(c.write_file(dir, b"new4k", file4k).await?);
            Ok((c.calls.stop_timing(start), commits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_tree_matches_the_paper() {
        assert_eq!(SOURCE_TREE.len(), 7);
        assert!(SOURCE_TREE.iter().all(|(_, _, b)| *b <= 4096));
        let dirs: std::collections::BTreeSet<_> = SOURCE_TREE.iter().map(|(d, ..)| *d).collect();
        assert_eq!(dirs.len(), 2, "two directories");
    }

    #[test]
    fn contents_are_deterministic_and_sized() {
        assert_eq!(contents("a", 100), contents("a", 100));
        assert_ne!(contents("a", 100), contents("b", 100));
        assert_eq!(contents("x", 4096).len(), 4096);
    }
}
