//! `bftnfs-sim`: runs the seeded whole-cluster simulator over many seeds.
//!
//! Each seed picks its faults (network loss/duplication/reordering/partitions, crashes
//! with restart, lost log tails and lost disks that make a replica re-base, long
//! crashes, corrupted state, one Byzantine behaviour for the f faulty replicas)
//! deterministically;
//! a failing seed is printed and replays exactly with `--seed N`.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use consensus::sim::{self, Byzantine, SimOptions};

/// Prints to stdout, ignoring a closed pipe (`bftnfs-sim ... | head`).
macro_rules! out {
    ($($t:tt)*) => {{ let _ = writeln!(std::io::stdout(), $($t)*); }};
}

const USAGE: &str = "\
bftnfs-sim: deterministic MinPBFT cluster simulator with Byzantine faults

USAGE:
    bftnfs-sim [--seeds N] [--first S] [--f F] [--seed S] [--byzantine MODE|none|mixed]
               [--no-faults] [--no-recovery-faults] [--requests R] [--clients C]

OPTIONS:
    --seeds N        run seeds first..first+N (default 100)
    --first S        first seed of the range (default 0)
    --seed S         run exactly one seed and print its trace hash
    --f F            tolerated faults; the cluster has 2F+1 replicas (default 1)
    --byzantine M    behaviour of the f faulty replicas: one of equivocating-primary,
                     silent-primary, slow-primary, bad-new-view, forge-and-replay,
                     commit-unprepared, lying-replies, bad-state-transfer,
                     rebase-over-sent, split-view-change, view-change-bait; 'none'
                     for crash faults only; 'mixed' (default) picks one per seed (of
                     all but the last two)
    --no-faults      no network faults and no crashes
    --no-recovery-faults
                     crashes never lose the log's tail or the disk (no re-basing), no
                     long crash, no corrupted state (by default each seed picks some)
    --requests R     requests per client (default 20)
    --clients C      clients (default 4)

ENVIRONMENT:
    BFTNFS_SIM_DEBUG=1   print every delivery and the replicas' state on failure (stderr)
";

fn parse_mode(s: &str) -> Option<Option<Byzantine>> {
    Some(Some(match s {
        "none" => return Some(None),
        "equivocating-primary" => Byzantine::EquivocatingPrimary,
        "silent-primary" => Byzantine::SilentPrimary,
        "slow-primary" => Byzantine::SlowPrimary,
        "bad-new-view" => Byzantine::BadNewView,
        "forge-and-replay" => Byzantine::ForgeAndReplay,
        "commit-unprepared" => Byzantine::CommitUnprepared,
        "lying-replies" => Byzantine::LyingReplies,
        "bad-state-transfer" => Byzantine::BadStateTransfer,
        "rebase-over-sent" => Byzantine::RebaseOverSent,
        "split-view-change" => Byzantine::SplitViewChange,
        "view-change-bait" => Byzantine::ViewChangeBait,
        _ => return None,
    }))
}

/// The options one seed runs with: the mode either fixed or picked from the seed.
pub fn options_for(seed: u64, f: u32, mode: Option<Option<Byzantine>>) -> SimOptions {
    let mut o = SimOptions::new(seed, f);
    o.byzantine = match mode {
        Some(m) => m,
        None => match (seed % (Byzantine::ALL.len() as u64 + 1)) as usize {
            k if k == Byzantine::ALL.len() => None,
            k => Some(Byzantine::ALL[k]),
        },
    };
    // Recovery faults, picked from the seed independently of the behaviour.
    o.usig_gaps = seed.is_multiple_of(2);
    o.disk_loss = seed.is_multiple_of(3);
    o.long_crash = seed % 7 == 3;
    // A crash-faulty long-crash victim also restarts only after the cluster went idle.
    o.idle_catch_up = o.long_crash;
    o.corrupt_state_at = (seed % 5 == 1).then_some(100);
    if o.byzantine == Some(Byzantine::BadNewView) {
        o.isolate_primary_at = vec![50];
    }
    o
}

/// The options besides the seed range and f that a failing seed's replay needs too.
fn replay_options(args: &[String]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" | "--first" | "--seed" | "--f" => {
                it.next();
            }
            "--byzantine" | "--requests" | "--clients" => {
                if let Some(v) = it.next() {
                    out.push_str(&format!(" {a} {v}"));
                }
            }
            _ => out.push_str(&format!(" {a}")),
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = 100u64;
    let mut first = 0u64;
    let mut single: Option<u64> = None;
    let mut f = 1u32;
    let mut mode: Option<Option<Byzantine>> = None;
    let mut faults = true;
    let mut recovery_faults = true;
    let mut requests: Option<usize> = None;
    let mut clients: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| -> Result<String, ExitCode> {
            it.next().cloned().ok_or_else(|| {
                eprintln!("error: {name} needs a value\n\n{USAGE}");
                ExitCode::from(2)
            })
        };
        let parsed: Result<(), String> = (|| {
            match a.as_str() {
                "--seeds" => {
                    seeds = val("--seeds")
                        .map_err(|_| "")?
                        .parse()
                        .map_err(|e| format!("--seeds: {e}"))?
                }
                "--first" => {
                    first = val("--first")
                        .map_err(|_| "")?
                        .parse()
                        .map_err(|e| format!("--first: {e}"))?
                }
                "--seed" => {
                    single = Some(
                        val("--seed")
                            .map_err(|_| "")?
                            .parse()
                            .map_err(|e| format!("--seed: {e}"))?,
                    )
                }
                "--f" => {
                    f = val("--f")
                        .map_err(|_| "")?
                        .parse()
                        .map_err(|e| format!("--f: {e}"))?
                }
                "--byzantine" => {
                    let v = val("--byzantine").map_err(|_| "")?;
                    mode = if v == "mixed" {
                        None
                    } else {
                        Some(parse_mode(&v).ok_or(format!("unknown --byzantine {v}"))?)
                    };
                }
                "--no-faults" => faults = false,
                "--no-recovery-faults" => recovery_faults = false,
                "--requests" => {
                    requests = Some(
                        val("--requests")
                            .map_err(|_| "")?
                            .parse()
                            .map_err(|e| format!("--requests: {e}"))?,
                    )
                }
                "--clients" => {
                    clients = Some(
                        val("--clients")
                            .map_err(|_| "")?
                            .parse()
                            .map_err(|e| format!("--clients: {e}"))?,
                    )
                }
                "-h" | "--help" => {
                    let _ = write!(std::io::stdout(), "{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}")),
            }
            Ok(())
        })();
        if let Err(e) = parsed {
            if !e.is_empty() {
                eprintln!("error: {e}\n\n{USAGE}");
            }
            return ExitCode::from(2);
        }
    }
    if f == 0 || f > 10 {
        eprintln!("error: --f must be between 1 and 10");
        return ExitCode::from(2);
    }
    let configure = |seed: u64| {
        let mut o = options_for(seed, f, mode);
        if !faults {
            o.network_faults = false;
            o.crashes = false;
        }
        if !faults || !recovery_faults {
            o.usig_gaps = false;
            o.disk_loss = false;
            o.long_crash = false;
            o.corrupt_state_at = None;
        }
        if let Some(r) = requests {
            o.requests_per_client = r;
        }
        if let Some(c) = clients {
            o.clients = c;
        }
        o.debug = std::env::var_os("BFTNFS_SIM_DEBUG").is_some();
        o
    };
    if let Some(seed) = single {
        let o = configure(seed);
        return match sim::run(&o) {
            Ok(r) => {
                out!(
                    "seed {seed} f={f} byzantine={:?}: ok, trace {} ({} ticks, {} batches, {} \
                     requests, final view {}, {} view changes, {} state transfers, {} lost \
                     logs, {} REBASEs, {} still re-basing, restart lag {} checkpoints, corruption repaired \
                     {:?})",
                    o.byzantine,
                    r.trace_hash,
                    r.ticks,
                    r.executed_max,
                    r.completed_requests,
                    r.final_view,
                    r.view_changes_seen,
                    r.state_transfers,
                    r.lost_logs,
                    r.rebases,
                    r.rebasing_at_end,
                    r.restart_lag_checkpoints_max,
                    r.corruption_repaired
                );
                out!("dropped: {:?}", r.dropped);
                ExitCode::SUCCESS
            }
            Err(e) => {
                out!(
                    "{e}\nreplay: bftnfs-sim --seed {seed} --f {f}{}",
                    replay_options(&args)
                );
                ExitCode::FAILURE
            }
        };
    }
    let start = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    for seed in first..first + seeds {
        match sim::run(&configure(seed)) {
            Ok(_) => passed += 1,
            Err(e) => {
                failed += 1;
                out!(
                    "FAIL {e}\n     replay: bftnfs-sim --seed {seed} --f {f}{}",
                    replay_options(&args)
                );
            }
        }
    }
    eprintln!("{:.1} s", start.elapsed().as_secs_f64());
    out!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
