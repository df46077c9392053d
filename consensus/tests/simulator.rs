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

// ----- crash recovery, re-basing (I8), self-repair --------------------------------------

fn run_with(f: u32, seeds: std::ops::Range<u64>, set: impl Fn(&mut SimOptions)) -> Vec<SimReport> {
    seeds.map(|seed| run_one(seed, f, &set)).collect()
}

fn run_one(seed: u64, f: u32, set: impl Fn(&mut SimOptions)) -> SimReport {
    let mut o = SimOptions::new(seed, f);
    set(&mut o);
    sim::run(&o).unwrap_or_else(|e| panic!("{e}\n(options: {o:?})"))
}

#[test]
fn crash_leaving_the_usig_ahead_of_the_log_rebases_and_rejoins() {
    let r = run_with(1, 1000..1000 + SEEDS_PER_BEHAVIOUR, |o| o.usig_gaps = true);
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().map(|x| x.lost_logs).sum::<u64>() > 0,
        "no log tail lost"
    );
    assert!(
        r.iter().map(|x| x.rebases).sum::<u64>() > 0,
        "nobody re-based"
    );
    // The run only ends once every crash-faulty replica is a full member again.
    assert!(r.iter().all(|x| x.rebasing_at_end == 0));
}

#[test]
fn lost_disk_with_the_usig_kept_rebases_by_state_transfer() {
    let r = run_with(1, 1100..1100 + SEEDS_PER_BEHAVIOUR, |o| o.disk_loss = true);
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().map(|x| x.lost_logs).sum::<u64>() > 0,
        "no disk lost"
    );
    assert!(
        r.iter().map(|x| x.rebases).sum::<u64>() > 0,
        "nobody re-based"
    );
    assert!(r.iter().any(|x| x.lost_logs > 0 && x.state_transfers > 0));
    assert!(r.iter().all(|x| x.rebasing_at_end == 0));
}

#[test]
fn f_replicas_rebasing_at_once_f2() {
    let r = run_with(2, 1200..1224, |o| {
        o.usig_gaps = true;
        o.disk_loss = true;
    });
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().any(|x| x.lost_logs >= 2),
        "never two lost logs in one run"
    );
    assert!(r.iter().all(|x| x.rebasing_at_end == 0));
}

#[test]
fn long_crash_falls_behind_several_checkpoints_and_catches_up() {
    let r = run_with(1, 1300..1300 + SEEDS_PER_BEHAVIOUR, |o| o.long_crash = true);
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().any(|x| x.restart_lag_checkpoints_max >= 3),
        "no restart behind several checkpoints: {:?}",
        r.iter()
            .map(|x| x.restart_lag_checkpoints_max)
            .collect::<Vec<_>>()
    );
    assert!(r.iter().map(|x| x.state_transfers).sum::<u64>() > 0);
}

/// The idle-cluster catch-up hole: the long-crashed replica restarts only after every
/// client finished and the cluster sat idle for longer than the timestamp skew; the run
/// ends only once it executed everything the others did. Before the fix it refused the
/// stale PREPAREs above the checkpoint it installed and never caught up (liveness
/// failure).
#[test]
fn long_crash_then_idle_cluster_catches_up_without_client_traffic() {
    for f in [1, 2] {
        let r = run_with(f, 1600..1600 + SEEDS_PER_BEHAVIOUR / 2, |o| {
            o.long_crash = true;
            o.idle_catch_up = true;
        });
        assert!(r.iter().all(|x| x.completed_requests == 80));
        let idle: Vec<(u64, u64)> = r.iter().filter_map(|x| x.idle_catch_up).collect();
        assert!(
            idle.len() * 2 > r.len(),
            "f={f}: few idle restarts: {idle:?}"
        );
        assert!(
            idle.iter().any(|&(tail, _)| tail > 0),
            "f={f}: never a log tail above the checkpoint: {idle:?}"
        );
        assert!(r.iter().map(|x| x.state_transfers).sum::<u64>() > 0);
    }
}

#[test]
fn corrupted_state_is_detected_and_repaired() {
    let r = run_with(1, 1400..1400 + SEEDS_PER_BEHAVIOUR, |o| {
        o.crashes = false;
        o.corrupt_state_at = Some(100);
    });
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        total(&r, "own_state_diverged") > 0,
        "corruption never detected"
    );
    let outcomes: Vec<Option<bool>> = r.iter().map(|x| x.corruption_repaired).collect();
    assert!(outcomes.iter().flatten().count() > 0, "nothing corrupted");
    assert!(
        outcomes.iter().flatten().all(|&repaired| repaired),
        "a corrupted replica ended unrepaired: {outcomes:?}"
    );
}

#[test]
fn byzantine_rebase_over_sent_messages_gains_nothing() {
    // Safety (agreement, client results) is checked after every step of every run.
    let r = run_seeds(
        1,
        Some(Byzantine::RebaseOverSent),
        1500..1500 + 2 * SEEDS_PER_BEHAVIOUR,
    );
    assert!(r.iter().all(|x| x.completed_requests == 80));
    assert!(
        r.iter().map(|x| x.rebases).sum::<u64>() > 0,
        "never re-based"
    );
    assert!(
        total(&r, "rebase_voided_messages") > 0,
        "no receiver ever voided a hidden message"
    );
    // While re-basing it sometimes keeps certifying VIEW-CHANGEs: they must not count.
    assert!(
        total(&r, "view_change_below_rebase") > 0,
        "no VIEW-CHANGE after a REBASE was ever refused"
    );
    let r2 = run_seeds(2, Some(Byzantine::RebaseOverSent), 1600..1612);
    assert!(r2.iter().all(|x| x.completed_requests == 80));
}

/// Replicas that executed the same batches vote the same checkpoint digests: without a
/// corrupted replica, nobody ever finds its own state diverged from a certificate, and
/// nobody skips its own checkpoint because a later batch went ahead of it. Two things
/// once made it happen under view changes and catch-up: client records stamped with the
/// checkpoint that snapshot them, and a batch handed over before the checkpoint batch
/// before it completed (its records leaked into that checkpoint).
#[test]
fn correct_replicas_vote_the_same_checkpoint_digests() {
    for f in [1, 2] {
        let r = run_with(f, 1700..1700 + 2 * SEEDS_PER_BEHAVIOUR, |o| {
            o.crashes = true;
            o.long_crash = f == 1;
        });
        assert!(view_changes(&r) > 0, "f={f}: no view change exercised");
        let diverged: Vec<u64> = r
            .iter()
            .filter(|x| x.dropped.contains_key("own_state_diverged"))
            .map(|x| x.seed)
            .collect();
        assert!(diverged.is_empty(), "f={f}: seeds {diverged:?}");
        // Nor does one miss its own checkpoint because a later batch went ahead of it.
        assert_eq!(total(&r, "digest_after_later_batch"), 0, "f={f}");
    }
}

/// With nothing failing, reads complete on the read-only path: every replica answers
/// (one with the result, the others with its digest) and the answers match. A read
/// sent while a write to its key is still being executed may see replicas disagree
/// and be ordered instead; that stays the exception.
#[test]
fn reads_complete_unordered_when_nothing_fails() {
    let mut unordered = 0;
    let mut ordered = 0;
    for seed in 0..20 {
        let r = run_one(seed, 1, |o| {
            o.byzantine = None;
            o.network_faults = false;
            o.crashes = false;
        });
        assert_eq!(r.completed_requests, 80);
        unordered += r.reads.0;
        ordered += r.reads.1;
    }
    assert!(
        unordered > 0 && ordered * 4 < unordered,
        "reads unordered {unordered}, sent to be ordered {ordered}"
    );
}

#[test]
fn a_replica_cut_off_from_every_peer_keeps_its_gaps_open() {
    // Replicas 0 and 2 (correct) are isolated for about 130 ticks while the others
    // change view. Before the gap clock stopped during such silence, replica 2 gave its
    // gaps up as unfillable, resumed its peers' streams past view 1's NEW-VIEW, stayed
    // in view 0 behind PREPAREs of view 1, and without it (replica 4 corrupted, 3
    // re-basing) no view could complete.
    let r = run_one(90186, 2, |o| {
        o.byzantine = Some(Byzantine::BadStateTransfer);
        o.usig_gaps = true;
        o.disk_loss = true;
        o.corrupt_state_at = Some(100);
    });
    assert_eq!(r.completed_requests, 80);
    assert!(
        r.dropped.contains_key("gaps_held_while_cut_off"),
        "{:?}",
        r.dropped
    );
}

/// With f replicas lying in their replies, clients need every correct replica, so one
/// correct replica left behind stops them. Ways it once stayed behind for good (the
/// seeds' own options; the simulator's liveness check fails each on the code before):
/// - f = 2, seed 10186 (lying replies, a USIG gap, a corrupted state): it refused the
///   NEW-VIEW the others adopted, because it had skipped (as void, after a REBASE) one of
///   its VIEW-CHANGEs; it now joins that view by the view-top certificate once its
///   stable checkpoint reaches the top, and then takes the primary's fresh PREPAREs
///   (it starts over from its stable state: no batch of the old view above it, no old
///   clock reference, so none looks like equivocation or a timestamp going back);
/// - f = 3, seed 586 (same options): its stream of the primary resumed at the view-top
///   CHECKPOINT past re-proposals it still lacked, and it refused the fresh PREPAREs
///   after the top as out of order; it now defers them until it stands at the top
///   (installed by state transfer);
/// - f = 2, seed 30053 (a replica re-basing over messages it sent): a replica that entered
///   the new view by state transfer judged the primary's first fresh timestamp against
///   its own proposals of the old view and refused it;
/// - f = 2, seed 60215 (re-basing over sent messages): a replica still in the old view,
///   not in a view change, refused the NEW-VIEW as void and never joined by certificate.
#[test]
fn a_correct_replica_left_behind_in_a_new_view_rejoins_it() {
    let lying = |o: &mut SimOptions| {
        o.byzantine = Some(Byzantine::LyingReplies);
        o.usig_gaps = true;
        o.corrupt_state_at = Some(100);
    };
    // Lying replicas run the protocol like correct ones, so no replica may refuse a
    // correct primary's PREPARE.
    let refused = [
        "prepare_equivocation",
        "bad_timestamp",
        "prepare_out_of_order",
    ];

    // Seed 10186 found it; since state transfers also broadcast their certificate
    // (seed 115008) its run goes another way, and 606 shows the same join.
    let joined = run_one(606, 2, lying);
    assert_eq!(joined.completed_requests, 80);
    assert!(
        joined
            .dropped
            .contains_key("new_view_with_void_view_change")
    );
    assert!(
        joined.dropped.contains_key("joined_view_by_certificate"),
        "{:?}",
        joined.dropped
    );
    for r in refused {
        assert!(!joined.dropped.contains_key(r), "{r}: {:?}", joined.dropped);
    }

    // Seed 586 found it; 278 shows it since state transfers broadcast their certificate.
    let deferred = run_one(278, 3, lying);
    assert_eq!(deferred.completed_requests, 80);
    assert!(
        deferred
            .dropped
            .contains_key("prepare_deferred_until_caught_up")
    );

    let transferred = run_one(30053, 2, |o| o.byzantine = Some(Byzantine::RebaseOverSent));
    assert_eq!(transferred.completed_requests, 80);
    assert!(!transferred.dropped.contains_key("bad_timestamp"));

    // A backup that adopted a NEW-VIEW whose base lay below its stable checkpoint kept
    // expecting the batch after the base, so the fresh PREPAREs above the top waited for
    // a gap that never closes (seed 7845, lying replies and a lost disk).
    let below_stable = run_one(7845, 2, |o| {
        o.byzantine = Some(Byzantine::LyingReplies);
        o.disk_loss = true;
    });
    assert_eq!(below_stable.completed_requests, 80);

    // A replica cut off during the change to view 1 stayed in view 0 for good: the
    // others' VIEW-CHANGEs were void for it through their REBASEs, so it never gathered
    // the requests to change view, refused the NEW-VIEW as resting on them, and joined
    // by certificate only from inside a view change (seed 60215, f = 2; the clients
    // stalled, as the new view lacked its COMMITs).
    let behind = run_one(60215, 2, |o| o.byzantine = Some(Byzantine::RebaseOverSent));
    assert_eq!(behind.completed_requests, 80);
    assert!(
        behind.dropped.contains_key("joined_view_by_certificate"),
        "{:?}",
        behind.dropped
    );
}

/// A replica that lost its place in the primary's stream (a restart or a state transfer)
/// resumes it at the primary's CHECKPOINT at its stable checkpoint; a primary that
/// installed that state instead of executing it never certified one, and an idle cluster
/// never reaches the next. The replica asks (`FetchFromCheckpoint`) and the primary now
/// fills up to the next boundary with empty batches. With f replicas lying, clients
/// stalled without it (seeds 238, 2254 and 3994 with f = 2 fail liveness on the code
/// before).
#[test]
fn a_replica_that_lost_its_place_in_an_idle_cluster_gets_a_checkpoint() {
    let reports: Vec<SimReport> = [238, 2254, 3994]
        .into_iter()
        .map(|seed| {
            run_one(seed, 2, |o| {
                o.byzantine = Some(Byzantine::LyingReplies);
                o.usig_gaps = true;
            })
        })
        .collect();
    assert!(reports.iter().all(|r| r.completed_requests == 80));
    assert!(total(&reports, "filled_to_checkpoint_for_a_cut") > 0);
}

/// f faulty replicas echo a correct replica's REQ-VIEW-CHANGE to one other correct
/// backup only: with the first one's request it counts f+1 and leaves the view, while
/// the others, asked by one replica, stay. The faulty replicas lie in their replies, so
/// the clients need that backup. Its VIEW-CHANGE plus a client re-sending, for a whole
/// request timeout, a request the others executed now makes them follow it
/// (`followed_a_replica_out_of_the_view_for_a_client`); before, clients stalled (f = 3:
/// seeds 0 and 2; f = 2: seeds 5 and 56; 2% of f = 2 seeds and 17% of f = 3 seeds in
/// `bftnfs-sim`).
#[test]
fn a_replica_pulled_out_of_a_view_by_faulty_replicas_is_followed() {
    let mut reports = run_seeds(3, Some(Byzantine::SplitViewChange), 0..4);
    for seed in [5, 56] {
        reports.extend(run_seeds(
            2,
            Some(Byzantine::SplitViewChange),
            seed..seed + 1,
        ));
    }
    assert!(reports.iter().all(|r| r.completed_requests == 80));
    assert!(total(&reports, "followed_a_replica_out_of_the_view_for_a_client") > 0);
}

/// The other side of the rule above: a faulty replica that leaves the view on its own
/// every 20 ticks (a genuine VIEW-CHANGE each time) and lies in its replies must not make
/// the correct replicas follow it whenever a client re-sends. They follow only a client
/// that kept asking for a whole request timeout after they executed its request. 200
/// seeds each: 33 follows with f = 1 and 107 with f = 2 (view changes +7% and +11%
/// against no rule at all); a first version that followed on the second copy of a
/// request did 250 and 589 (+53% and +79%).
#[test]
fn a_replica_leaving_the_view_on_its_own_is_seldom_followed() {
    let mut reports = run_seeds(1, Some(Byzantine::ViewChangeBait), 0..40);
    reports.extend(run_seeds(2, Some(Byzantine::ViewChangeBait), 0..40));
    assert!(reports.iter().all(|r| r.completed_requests == 80));
    let follows = total(&reports, "followed_a_replica_out_of_the_view_for_a_client");
    assert!(follows < 40, "followed {follows} times in 80 runs");
}

/// A replica that needs the state at a certified checkpoint gets it even when the peers
/// that hold that state never made it stable themselves (a sender's CHECKPOINT became
/// void for them through its REBASE, so they saw only f of them). Peers serve only
/// their stable checkpoint, and two replicas asked for state at 16 for good while the
/// two that held it kept 8 as stable: the view change lacked them all (seed 115008,
/// f = 2, re-basing over sent messages with USIG gaps and a lost disk). A replica now
/// broadcasts the certificate with each state transfer, and the peers make it stable.
#[test]
fn peers_holding_the_state_of_a_certificate_learn_it_is_stable() {
    let r = run_one(115008, 2, |o| {
        o.byzantine = Some(Byzantine::RebaseOverSent);
        o.usig_gaps = true;
        o.disk_loss = true;
    });
    assert_eq!(r.completed_requests, 80);
}
