//! The seeded simulator over hundreds of seeds with faults on: network loss,
//! duplication, reordering and partitions, crash and restart of the faulty replicas, and
//! each Byzantine behaviour. Every run is checked for agreement after every execution,
//! for client-accepted results, and for liveness once the faults heal. Each behaviour's
//! test also checks that the behaviour really happened (it was detected and counted).

use std::collections::BTreeMap;

use consensus::sim::{self, Byzantine, SimOptions, SimReport};

const SEEDS_PER_BEHAVIOUR: u64 = 36;

fn run_seeds(f: u32, mode: Option<Byzantine>, seeds: std::ops::Range<u64>) -> Vec<SimReport> {
    seeds
        .map(|seed| {
            let mut o = SimOptions::new(seed, f);
            o.byzantine = mode;
            if mode == Some(Byzantine::BadNewView) {
                o.isolate_primary_at = vec![50];
            }
            sim::run(&o).unwrap_or_else(|e| {
                panic!("{e}\nreplay: bftnfs-sim --seed {seed} --f {f} --byzantine <mode>")
            })
        })
        .collect()
}

fn total(reports: &[SimReport], reason: &str) -> u64 {
    reports
        .iter()
        .map(|r| r.dropped.get(reason).copied().unwrap_or(0))
        .sum()
}

fn view_changes(reports: &[SimReport]) -> u64 {
    reports.iter().map(|r| r.view_changes_seen).sum()
}

#[test]
fn crash_and_network_faults_f1() {
    let r = run_seeds(1, None, 0..SEEDS_PER_BEHAVIOUR);
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().any(|x| x.state_transfers > 0),
        "no seed exercised state transfer"
    );
}

#[test]
fn equivocating_primary_is_detected_and_replaced() {
    let r = run_seeds(
        1,
        Some(Byzantine::EquivocatingPrimary),
        100..100 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(
        total(&r, "prepare_equivocation") > 0,
        "equivocation never detected"
    );
    assert!(view_changes(&r) > 0);
}

#[test]
fn silent_primary_is_replaced() {
    let r = run_seeds(
        1,
        Some(Byzantine::SilentPrimary),
        200..200 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(
        r.iter().all(|x| x.final_view > 0),
        "a silent primary stayed in power"
    );
}

#[test]
fn slow_primary_is_replaced() {
    let r = run_seeds(
        1,
        Some(Byzantine::SlowPrimary),
        300..300 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(
        r.iter().all(|x| x.final_view > 0),
        "a primary delaying every PREPARE stayed"
    );
}

#[test]
fn bad_new_view_is_rejected() {
    let r = run_seeds(
        1,
        Some(Byzantine::BadNewView),
        400..400 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(
        total(&r, "bad_new_view") > 0,
        "no bad NEW-VIEW was ever rejected"
    );
}

#[test]
fn forged_and_replayed_uis_are_dropped() {
    let r = run_seeds(
        1,
        Some(Byzantine::ForgeAndReplay),
        500..500 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(total(&r, "bad_ui") > 0, "forged UIs were not counted");
    assert!(total(&r, "duplicate_ui") > 0, "replays were not counted");
}

#[test]
fn commits_for_unprepared_batches_are_dropped() {
    let r = run_seeds(
        1,
        Some(Byzantine::CommitUnprepared),
        600..600 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(total(&r, "bad_ui") > 0);
}

#[test]
fn lying_replies_are_outvoted() {
    // The oracle fails the run if a client accepts a result no correct replica produced.
    let r = run_seeds(
        1,
        Some(Byzantine::LyingReplies),
        700..700 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(r.iter().all(|x| x.completed_requests == 80));
}

#[test]
fn bad_state_transfer_data_is_detected() {
    let r = run_seeds(
        1,
        Some(Byzantine::BadStateTransfer),
        800..800 + SEEDS_PER_BEHAVIOUR,
    );
    assert!(r.iter().all(|x| x.completed_requests == 80));
}

#[test]
fn mixed_faults_f2() {
    let r: Vec<SimReport> = (0..24u64)
        .flat_map(|seed| run_seeds(2, Some(Byzantine::ALL[(seed % 8) as usize]), seed..seed + 1))
        .collect();
    assert_eq!(r.len(), 24);
}

#[test]
fn mixed_faults_f3() {
    let r: Vec<SimReport> = (0..8u64)
        .flat_map(|seed| run_seeds(3, Some(Byzantine::ALL[(seed % 8) as usize]), seed..seed + 1))
        .collect();
    assert_eq!(r.len(), 8);
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let a = run_seeds(1, Some(Byzantine::EquivocatingPrimary), 42..43);
    let b = run_seeds(1, Some(Byzantine::EquivocatingPrimary), 42..43);
    let c = run_seeds(1, Some(Byzantine::EquivocatingPrimary), 43..44);
    assert_eq!(a[0].trace_hash, b[0].trace_hash);
    assert_ne!(a[0].trace_hash, c[0].trace_hash);
}

#[test]
fn bftnfs_sim_seed_prints_a_stable_trace() {
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bftnfs-sim"))
            .args(["--seed", "42", "--f", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();

        text.lines()
            .find(|l| l.contains("trace"))
            .expect("a trace line")
            .to_string()
    };
    assert_eq!(run(), run());
}

#[test]
fn bftnfs_sim_reports_passed_and_failed() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bftnfs-sim"))
        .args(["--seeds", "5", "--f", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().last(), Some("5 passed, 0 failed"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_bftnfs-sim"))
        .args(["--f", "zero"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn core_depends_on_no_runtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "tree",
            "-p",
            "consensus",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: BTreeMap<&str, ()> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|c| (c, ()))
        .collect();
    for banned in ["tokio", "mio", "rand", "async-std", "parking_lot"] {
        assert!(
            !crates.contains_key(banned),
            "consensus depends on {banned}:\n{tree}"
        );
    }
    assert!(crates.contains_key("consensus"));
}
