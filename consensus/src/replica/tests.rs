//! Unit and property tests of the replica core: the NEW-VIEW decision against a naive
//! oracle, and hostile input that must be dropped and counted, never panic.

use proptest::prelude::*;

use super::view_change::decide_new_view;
use super::*;
use crate::crypto::SimCrypto;
use crate::message::{Batch, CheckpointCert, Commit, PrepareHeader, Rebase, ViewChange};
use crate::validate;

fn crypto() -> SimCrypto {
    SimCrypto::new([3; 32])
}

fn prepare(
    c: &SimCrypto,
    config: &Config,
    view: View,
    n: SeqNum,
    tag: u8,
    counter: u64,
) -> Prepare {
    let mut req = Request {
        client: u64::from(tag),
        seq: n,
        read_only: false,
        op: vec![tag].into(),
        sig: vec![],
    };
    req.sig = c.sign_request(req.client, &req.digest());
    let batch = Batch {
        requests: vec![req],
        rebases: Vec::new(),
    };
    let header = PrepareHeader {
        view,
        n,
        timestamp_ns: n,
        batch_digest: batch.digest(),
    };
    let primary = config.primary(view);
    let mut p = Prepare {
        header,
        primary,
        batch,
        ui: Ui {
            counter,
            cert: vec![],
        },
    };
    p.ui.cert = c.ui_cert(
        primary,
        counter,
        &UiMessage::Prepare(p.clone()).certified_digest(),
    );
    p
}

proptest! {
    /// The decision equals a naive recomputation: base = highest certificate; for each n
    /// above it, the entry of the highest view (lowest counter within a view); gaps empty.
    #[test]
    fn new_view_decision_matches_oracle(
        entries in proptest::collection::vec((0u64..3, 1u64..8, 0u8..3, 1u64..50, 0usize..3), 0..20)
    ) {
        let c = crypto();
        let config = Config::new(1);
        let mut vcs: Vec<ViewChange> = (0..3).map(|s| ViewChange {
            new_view: 5, sender: s, cert: CheckpointCert::default(), accepted: vec![],
            view_certs: vec![], ui: Ui { counter: 1, cert: vec![] },
        }).collect();
        for (view, n, tag, counter, who) in &entries {
            // A USIG never gives one counter to two messages: make counters unique.
            let p = prepare(&c, &config, *view, *n, *tag, *counter * 4 + u64::from(*tag));
            if !vcs[*who].accepted.iter().any(|q| q.header.view == *view && q.header.n == *n) {
                vcs[*who].accepted.push(p);
            }
        }
        let d = decide_new_view(&vcs);
        prop_assert_eq!(d.base, 0);
        let all: Vec<&Prepare> = vcs.iter().flat_map(|v| v.accepted.iter()).collect();
        let top = all.iter().map(|p| p.header.n).max().unwrap_or(0);
        prop_assert_eq!(d.reproposals.len() as u64, top);
        for r in &d.reproposals {
            let best = all.iter().filter(|p| p.header.n == r.n)
                .max_by(|a, b| a.header.view.cmp(&b.header.view).then(b.ui.counter.cmp(&a.ui.counter)));
            match best {
                Some(p) => prop_assert_eq!(r.batch_digest, p.header.batch_digest),
                None => prop_assert_eq!(r.batch_digest, Batch::default().digest()),
            }
        }
    }

    /// Arbitrary corruption of a valid PREPARE is rejected by validation or, if it still
    /// validates (only the unsigned parts changed), handled by the core without panicking.
    #[test]
    fn corrupted_messages_never_panic(byte in 0usize..200, flip in 1u8..=255, field in 0u8..4) {
        let c = crypto();
        let config = Config::new(1);
        let mut p = prepare(&c, &config, 0, 1, 1, 1);
        match field {
            0 => { if let Some(b) = p.ui.cert.get_mut(byte % 32) { *b ^= flip; } }
            1 => p.header.n = p.header.n.wrapping_add(u64::from(flip)),
            2 => { if let Some(r) = p.batch.requests.get_mut(0) { let mut op = r.op.to_vec(); op.push(flip); r.op = op.into(); } }
            _ => p.ui.counter = p.ui.counter.wrapping_add(u64::from(flip)),
        }
        let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
        match validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p))) {
            Ok(v) => { r.step(Input::Peer { from: 0, msg: v }); }
            Err(e) => r.record_rejected(e),
        }
        prop_assert!(r.dropped().values().sum::<u64>() <= 1);
    }
}

#[test]
fn valid_prepare_from_a_backup_is_rejected_as_not_primary() {
    let c = crypto();
    let config = Config::new(1);
    let mut p = prepare(&c, &config, 0, 1, 1, 1);
    p.primary = 2;
    p.ui.cert = c.ui_cert(2, 1, &UiMessage::Prepare(p.clone()).certified_digest());
    let err =
        validate::peer_message(&config, &c, 2, PeerMessage::Ui(UiMessage::Prepare(p))).unwrap_err();
    assert_eq!(err, validate::Reject::NotPrimary);
}

#[test]
fn oversized_request_is_rejected() {
    let c = crypto();
    let mut config = Config::new(1);
    config.request_bytes_max = 4;
    let mut req = Request {
        client: 1,
        seq: 1,
        read_only: false,
        op: vec![0; 5].into(),
        sig: vec![],
    };
    req.sig = c.sign_request(1, &req.digest());
    assert_eq!(
        validate::request(&config, &c, req).unwrap_err(),
        validate::Reject::RequestTooLarge
    );
}

/// A primary proposes a request larger than `batch_bytes_max` alone (it may be up to
/// `request_bytes_max`); backups must accept that batch, or a 1 MiB NFS WRITE would
/// cost a view change. Two requests together over the bound are still refused.
#[test]
fn a_batch_of_one_request_is_bounded_by_the_request_limit() {
    let c = crypto();
    let mut config = Config::new(1);
    config.batch_bytes_max = 8;
    config.request_bytes_max = 16;
    let request = |client: u64, len: usize| {
        let mut req = Request {
            client,
            seq: 1,
            read_only: false,
            op: vec![7; len].into(),
            sig: vec![],
        };
        req.sig = c.sign_request(client, &req.digest());
        req
    };
    let certified = |requests: Vec<Request>| {
        let mut p = prepare(&c, &config, 0, 1, 1, 1);
        p.batch.requests = requests;
        p.header.batch_digest = p.batch.digest();
        p.ui.cert = c.ui_cert(0, 1, &UiMessage::Prepare(p.clone()).certified_digest());
        PeerMessage::Ui(UiMessage::Prepare(p))
    };
    assert!(validate::peer_message(&config, &c, 0, certified(vec![request(1, 16)])).is_ok());
    assert_eq!(
        validate::peer_message(&config, &c, 0, certified(vec![request(1, 17)])).unwrap_err(),
        validate::Reject::RequestTooLarge
    );
    assert_eq!(
        validate::peer_message(
            &config,
            &c,
            0,
            certified(vec![request(1, 5), request(2, 5)])
        )
        .unwrap_err(),
        validate::Reject::BatchTooLarge
    );
}

#[test]
fn holdback_is_bounded() {
    let c = crypto();
    let mut config = Config::new(1);
    config.holdback_max = 4;
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    // Counters 10.. leave a gap at 1..9: everything is held back, up to the bound.
    for counter in 10..20 {
        let p = prepare(&c, &config, 0, counter, 1, counter);
        let v =
            validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p))).unwrap();
        r.step(Input::Peer { from: 0, msg: v });
    }
    assert_eq!(r.dropped().get("holdback_full"), Some(&6));
    assert_eq!(r.executed_n(), 0);
}

fn rebase(c: &SimCrypto, sender: ReplicaId, last_logged: u64, counter: u64) -> Rebase {
    let mut r = Rebase {
        sender,
        last_logged,
        ui: Ui {
            counter,
            cert: vec![],
        },
    };
    r.ui.cert = c.ui_cert(
        sender,
        counter,
        &UiMessage::Rebase(r.clone()).certified_digest(),
    );
    r
}

/// A PREPARE of view 0 ordering these REBASEs at n = 1, certified by primary 0.
fn prepare_with_rebases(c: &SimCrypto, rebases: Vec<Rebase>) -> Prepare {
    let batch = Batch {
        requests: vec![],
        rebases,
    };
    let header = PrepareHeader {
        view: 0,
        n: 1,
        timestamp_ns: 1,
        batch_digest: batch.digest(),
    };
    let mut p = Prepare {
        header,
        primary: 0,
        batch,
        ui: Ui {
            counter: 1,
            cert: vec![],
        },
    };
    p.ui.cert = c.ui_cert(0, 1, &UiMessage::Prepare(p.clone()).certified_digest());
    p
}

#[test]
fn rebase_validation_refuses_what_could_be_abused() {
    let c = crypto();
    let config = Config::new(1);
    let check = |m: UiMessage| validate::peer_message(&config, &c, 1, PeerMessage::Ui(m));
    // A REBASE must come after everything its sender still logs.
    assert!(check(UiMessage::Rebase(rebase(&c, 1, 4, 5))).is_ok());
    assert_eq!(
        check(UiMessage::Rebase(rebase(&c, 1, 5, 5))).err(),
        Some(Reject::Malformed)
    );
    // A changed REBASE no longer matches its UI.
    let mut forged = rebase(&c, 1, 4, 5);
    forged.last_logged = 3;
    assert_eq!(
        check(UiMessage::Rebase(forged.clone())).err(),
        Some(Reject::BadUi)
    );
    // The primary orders other replicas' REBASEs, each valid, one per sender.
    let ok = prepare_with_rebases(&c, vec![rebase(&c, 1, 0, 9), rebase(&c, 2, 3, 7)]);
    assert!(check(UiMessage::Prepare(ok)).is_ok());
    let own = prepare_with_rebases(&c, vec![rebase(&c, 0, 0, 9)]);
    assert_eq!(
        check(UiMessage::Prepare(own)).err(),
        Some(Reject::Malformed)
    );
    let twice = prepare_with_rebases(&c, vec![rebase(&c, 1, 0, 9), rebase(&c, 1, 0, 10)]);
    assert_eq!(
        check(UiMessage::Prepare(twice)).err(),
        Some(Reject::Malformed)
    );
    let bad = prepare_with_rebases(&c, vec![forged]);
    assert_eq!(check(UiMessage::Prepare(bad)).err(), Some(Reject::BadUi));
}

#[test]
fn recover_with_the_usig_ahead_of_the_log_rebases_first() {
    let c = crypto();
    let config = Config::new(1);
    let recovered = Recovered {
        usig_counter: 7,
        ..Recovered::default()
    };
    assert!(recovered.usig_ahead_of_log());
    let mut r = Replica::recover(2, config, Box::new(c), recovered);
    assert!(r.is_rebasing());
    // The first thing it certifies is its REBASE, with the next counter.
    let digest = ui_asked(&r.step(Input::Tick { now_ns: 1 })).expect("a CreateUi");
    let want = UiMessage::Rebase(Rebase {
        sender: 2,
        last_logged: 0,
        ui: Ui {
            counter: 0,
            cert: vec![],
        },
    });
    assert_eq!(digest, want.certified_digest());
    let outs = r.step(Input::UiCreated(Ui {
        counter: 8,
        cert: vec![],
    }));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Broadcast(PeerMessage::Ui(UiMessage::Rebase(x))) if x.ui.counter == 8
    )));
    // Then silence: a view change it follows does not make it certify a VIEW-CHANGE.
    let config = r.config().clone();
    for from in [0, 1] {
        let msg = PeerMessage::ReqViewChange {
            view: 0,
            new_view: 1,
        };
        let msg = validate::peer_message(&config, &crypto(), from, msg).unwrap();
        let outs = r.step(Input::Peer { from, msg });
        assert!(
            !outs.iter().any(|o| matches!(o, Output::CreateUi { .. })),
            "{outs:?}"
        );
    }
    assert_eq!(r.view(), 1);
    assert!(r.in_view_change());
    assert!(r.is_rebasing());
}

/// The digest of the UI the replica asked its USIG for, if it did.
fn ui_asked(outs: &[Output]) -> Option<Digest> {
    outs.iter().find_map(|o| match o {
        Output::CreateUi { digest } => Some(*digest),
        _ => None,
    })
}

fn read_request(c: &SimCrypto, config: &Config, client: ClientId) -> Input {
    sized_read_request(c, config, client, 1)
}

fn sized_read_request(c: &SimCrypto, config: &Config, client: ClientId, bytes: usize) -> Input {
    let mut req = Request {
        client,
        seq: 1,
        read_only: true,
        op: vec![9; bytes].into(),
        sig: vec![],
    };
    req.sig = c.sign_request(client, &req.digest());
    Input::Request(validate::request(config, c, req).expect("valid read"))
}

fn reads_answered(outs: &[Output]) -> Vec<ClientId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::ExecuteReadOnly { request } => Some(request.client),
            _ => None,
        })
        .collect()
}

/// A read-only request that reaches a backup which accepted a batch but has not executed
/// it yet waits for that execution (so it reads what the write's repliers read); one
/// that finds nothing pending is answered at once; a held read is answered after
/// `READ_HOLD_TICKS` ticks even if execution stalls.
#[test]
fn reads_wait_for_accepted_batches_then_for_at_most_a_few_ticks() {
    let c = crypto();
    let config = Config::new(1);
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: 1 }); // a clock reading, to judge timestamps by
    assert_eq!(reads_answered(&r.step(read_request(&c, &config, 50))), [50]);

    let p = prepare(&c, &config, 0, 1, 1, 1);
    let msg = validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p)))
        .expect("valid prepare");
    let outs = r.step(Input::Peer { from: 0, msg });
    assert!(
        outs.iter().any(|o| matches!(o, Output::CreateUi { .. })),
        "{outs:?} {:?}",
        r.dropped()
    );
    // Accepted (its COMMIT is being certified), not executed: the read waits.
    assert!(reads_answered(&r.step(read_request(&c, &config, 51))).is_empty());
    let outs = r.step(Input::UiCreated(Ui {
        counter: 1,
        cert: c.ui_cert(1, 1, &[0; 32]),
    }));
    assert!(reads_answered(&outs).is_empty());
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Execute { n: 1, .. })),
        "{outs:?}"
    );
    let outs = r.step(Input::Executed {
        n: 1,
        results: vec![vec![]],
        app_digest: None,
    });
    assert_eq!(reads_answered(&outs), [51]);

    // A second batch accepted and never executed: the read goes after the hold.
    let p = prepare(&c, &config, 0, 2, 2, 2);
    let msg = validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p)))
        .expect("valid prepare");
    r.step(Input::Peer { from: 0, msg });
    assert!(reads_answered(&r.step(read_request(&c, &config, 52))).is_empty());
    let mut answered = Vec::new();
    for tick in 1..=READ_HOLD_TICKS {
        answered.extend(reads_answered(&r.step(Input::Tick { now_ns: 1 + tick })));
    }
    assert_eq!(answered, [52]);
}

fn commit(c: &SimCrypto, p: &Prepare, header: PrepareHeader, sender: ReplicaId) -> Commit {
    let mut m = Commit {
        header,
        primary: p.primary,
        primary_ui: p.ui.clone(),
        sender,
        ui: Ui {
            counter: 1,
            cert: vec![],
        },
    };
    m.ui.cert = c.ui_cert(sender, 1, &UiMessage::Commit(m.clone()).certified_digest());
    m
}

fn accepted(outs: &[Output]) -> bool {
    outs.iter()
        .any(|o| matches!(o, Output::Persist(PersistRecord::Accepted(_))))
}

/// A PREPARE older than the timestamp skew (a replica catching up on batches the others
/// decided while it was away) waits for the others' COMMITs instead of being refused:
/// refusing it left the replica behind until the next checkpoint, forever in an idle
/// cluster. Without a matching commit quorum it is never accepted.
#[test]
fn stale_prepare_is_accepted_only_once_the_others_committed_it() {
    let c = crypto();
    let config = Config::new(1);
    let step_ui = |r: &mut Replica, from: ReplicaId, m: UiMessage| {
        let v = validate::peer_message(&config, &c, from, PeerMessage::Ui(m)).unwrap();
        r.step(Input::Peer { from, msg: v })
    };
    let now = 100 * config.timestamp_skew_ns;
    let p = prepare(&c, &config, 0, 1, 1, 1); // timestamp 1 ns: stale at `now`

    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: now });
    assert!(!accepted(&step_ui(
        &mut r,
        0,
        UiMessage::Prepare(p.clone())
    )));
    // A COMMIT for another PREPARE of the same number (an equivocating primary's, with
    // another timestamp) proves nothing about this one.
    let mut q = prepare(&c, &config, 0, 1, 1, 2);
    q.header.timestamp_ns = 2;
    q.ui.cert = c.ui_cert(0, 2, &UiMessage::Prepare(q.clone()).certified_digest());
    let outs = step_ui(&mut r, 2, UiMessage::Commit(commit(&c, &q, q.header, 2)));
    assert!(!accepted(&outs));
    assert!(
        r.dropped().get("bad_timestamp").is_none(),
        "{:?}",
        r.dropped()
    );
    // Replica 2 has voted already (its first message); a fresh replica 1 gets the real one.
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: now });
    assert!(!accepted(&step_ui(
        &mut r,
        0,
        UiMessage::Prepare(p.clone())
    )));
    let outs = step_ui(&mut r, 2, UiMessage::Commit(commit(&c, &p, p.header, 2)));
    assert!(accepted(&outs), "{outs:?}");
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Execute { n: 1, .. }))
    );

    // A timestamp in the future is still refused at once (and the primary suspected).
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: 1 });
    let mut q = prepare(&c, &config, 0, 1, 1, 1);
    q.header.timestamp_ns = 2 * config.timestamp_skew_ns;
    q.ui.cert = c.ui_cert(0, 1, &UiMessage::Prepare(q.clone()).certified_digest());
    assert!(!accepted(&step_ui(&mut r, 0, UiMessage::Prepare(q))));
    assert_eq!(r.dropped().get("bad_timestamp"), Some(&1));
}

/// Held reads are bounded in bytes (and count): a flood of large reads while a batch is
/// pending is answered at once beyond the bound instead of piling up in memory.
#[test]
fn held_reads_are_bounded_in_bytes() {
    let c = crypto();
    let config = Config::new(1);
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: 1 });
    let p = prepare(&c, &config, 0, 1, 1, 1);
    let msg = validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p)))
        .expect("valid prepare");
    r.step(Input::Peer { from: 0, msg });
    let size = 512 << 10;
    let fit = HELD_READ_BYTES_MAX / size;
    let mut at_once = Vec::new();
    for client in 0..fit as u64 + 3 {
        at_once.extend(reads_answered(&r.step(sized_read_request(
            &c,
            &config,
            100 + client,
            size,
        ))));
    }
    assert_eq!(
        at_once,
        (100 + fit as u64..100 + fit as u64 + 3).collect::<Vec<_>>()
    );
    // The held ones go after the hold.
    let mut later = Vec::new();
    for tick in 1..=READ_HOLD_TICKS {
        later.extend(reads_answered(&r.step(Input::Tick { now_ns: 1 + tick })));
    }
    assert_eq!(later.len(), fit);
}

/// A request that reaches the primary before its first clock reading (a cluster's very
/// first request can) is proposed at the first tick, stamped with that tick's time.
/// Proposed at once, its PREPARE carried a timestamp every backup found stale: the
/// batch waited for votes that never came until the request timers changed the view.
#[test]
fn a_request_before_the_first_tick_is_proposed_with_the_first_clock_reading() {
    let c = crypto();
    let config = Config::new(1);
    let mut r = Replica::new(0, config.clone(), Box::new(c.clone()));
    let mut req = Request {
        client: 7,
        seq: 1,
        read_only: false,
        op: vec![1].into(),
        sig: vec![],
    };
    req.sig = c.sign_request(req.client, &req.digest());
    let req = validate::request(&config, &c, req).expect("valid request");
    let outs = r.step(Input::Request(req));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::CreateUi { .. })),
        "nothing is certified without a clock reading: {outs:?}"
    );
    let now = 5_000_000_000;
    let outs = r.step(Input::Tick { now_ns: now });
    assert!(
        outs.iter().any(|o| matches!(o, Output::CreateUi { .. })),
        "proposed at the first tick: {outs:?}"
    );
    let ui = Ui {
        counter: 1,
        cert: vec![],
    };
    let outs = r.step(Input::UiCreated(ui));
    let stamped = outs.iter().find_map(|o| match o {
        Output::Broadcast(PeerMessage::Ui(UiMessage::Prepare(p))) => Some(p.header.timestamp_ns),
        _ => None,
    });
    assert_eq!(stamped, Some(now), "{outs:?}");
}

/// A client record is stamped with the batch its request executed in, never with the
/// checkpoint that happened to snapshot it. The checkpoint stamp made the core state
/// depend on which checkpoints a replica took (a view-top checkpoint is taken only by
/// the replicas that reach the top in the new view), so replicas that executed the same
/// batches once voted different checkpoint digests and no certificate could form (the
/// simulator's seed 1615 with f = 2 and clients that reach only the primary first).
#[test]
fn client_records_carry_the_batch_they_executed_in() {
    let c = crypto();
    let mut config = Config::new(1);
    config.checkpoint_interval = 4;
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick { now_ns: 1 });
    let mut snapshot = None;
    for n in 1..=4 {
        // Clients 1..=4 one each; client 7 in batches 1 and 3.
        let mut p = prepare(&c, &config, 0, n, n as u8, n);
        if n == 1 || n == 3 {
            let mut req = p.batch.requests[0].clone();
            req.client = 7;
            req.sig = c.sign_request(req.client, &req.digest());
            p.batch.requests.push(req);
            p.header.batch_digest = p.batch.digest();
            p.ui.cert = c.ui_cert(0, n, &UiMessage::Prepare(p.clone()).certified_digest());
        }
        let v =
            validate::peer_message(&config, &c, 0, PeerMessage::Ui(UiMessage::Prepare(p))).unwrap();
        let digest = ui_asked(&r.step(Input::Peer { from: 0, msg: v })).expect("COMMIT to certify");
        let outs = r.step(Input::UiCreated(Ui {
            counter: n,
            cert: c.ui_cert(1, n, &digest),
        }));
        let requests = outs
            .iter()
            .find_map(|o| match o {
                Output::Execute { n: m, requests, .. } if *m == n => Some(requests.len()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("batch {n} not executed: {outs:?}"));
        let outs = r.step(Input::Executed {
            n,
            results: vec![Vec::new(); requests],
            app_digest: config.is_checkpoint(n).then_some([0; 32]),
        });
        snapshot = snapshot.or_else(|| {
            outs.iter().find_map(|o| match o {
                Output::TakeSnapshot { n: 4, core_state } => Some(core_state.clone()),
                _ => None,
            })
        });
    }
    let core = snapshot.expect("checkpoint 4 taken");
    let last_n: Vec<(ClientId, SeqNum)> =
        core.clients.iter().map(|(&c, r)| (c, r.last_n)).collect();
    assert_eq!(last_n, [(1, 1), (2, 2), (3, 3), (4, 4), (7, 3)]);
}

/// Validates `m` as coming from `from` and feeds it (or counts the rejection).
fn step_peer(c: &SimCrypto, r: &mut Replica, from: ReplicaId, m: PeerMessage) -> Vec<Output> {
    let config = r.config().clone();
    match validate::peer_message(&config, c, from, m) {
        Ok(msg) => r.step(Input::Peer { from, msg }),
        Err(e) => {
            r.record_rejected(e);
            Vec::new()
        }
    }
}

fn signed_view_change(c: &SimCrypto, mut vc: ViewChange) -> UiMessage {
    vc.ui.cert = c.ui_cert(
        vc.sender,
        vc.ui.counter,
        &UiMessage::ViewChange(vc.clone()).certified_digest(),
    );
    UiMessage::ViewChange(vc)
}

/// Replica 1 (primary of view 1) moved to view 1 and certified its own VIEW-CHANGE.
fn replica_1_in_view_change_to_1(c: &SimCrypto) -> Replica {
    let config = Config::new(1);
    let mut r = Replica::new(1, config, Box::new(c.clone()));
    r.step(Input::Tick { now_ns: 1 });
    for from in [0, 2] {
        let m = PeerMessage::ReqViewChange {
            view: 0,
            new_view: 1,
        };
        step_peer(c, &mut r, from, m);
    }
    assert_eq!(r.view(), 1);
    r.step(Input::UiCreated(Ui {
        counter: 1,
        cert: vec![],
    }));
    r
}

/// A faulty replica that was primary of an old view certifies a PREPARE of that view for
/// a batch number near u64::MAX (correct replicas drop it as old-view, without marking
/// it refused) and reports it in its VIEW-CHANGE. The NEW-VIEW decision then spans every
/// number from the base to that one: the new primary (and every replica recomputing a
/// NEW-VIEW with it) allocates a re-proposal per number. With u64::MAX that is a
/// capacity-overflow panic; with 2^32 it is ~200 GB. Such a VIEW-CHANGE must be refused.
#[test]
fn a_view_change_reporting_a_batch_far_above_its_checkpoint_is_refused() {
    let c = crypto();
    let mut r = replica_1_in_view_change_to_1(&c);
    let config = r.config().clone();
    let p = prepare(&c, &config, 0, u64::MAX, 9, 1);
    step_peer(
        &c,
        &mut r,
        0,
        PeerMessage::Ui(UiMessage::Prepare(p.clone())),
    );
    let vc = ViewChange {
        new_view: 1,
        sender: 0,
        cert: CheckpointCert::default(),
        accepted: vec![p],
        view_certs: vec![],
        ui: Ui {
            counter: 2,
            cert: vec![],
        },
    };
    let outs = step_peer(&c, &mut r, 0, PeerMessage::Ui(signed_view_change(&c, vc)));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::CreateUi { .. })),
        "no NEW-VIEW from this VIEW-CHANGE"
    );
    assert!(r.dropped().values().sum::<u64>() >= 1, "{:?}", r.dropped());
}
/// A VIEW-CHANGE for view 0 (validation does not refuse it) reached `vc.new_view - 1`.
#[test]
fn a_view_change_for_view_0_is_dropped_without_panicking() {
    let c = crypto();
    let config = Config::new(1);
    let mut r = Replica::new(1, config, Box::new(c.clone()));
    let vc = ViewChange {
        new_view: 0,
        sender: 2,
        cert: CheckpointCert::default(),
        accepted: vec![],
        view_certs: vec![],
        ui: Ui {
            counter: 1,
            cert: vec![],
        },
    };
    step_peer(&c, &mut r, 2, PeerMessage::Ui(signed_view_change(&c, vc)));
    assert_eq!(r.view(), 0);
}

/// Replica 2's CHECKPOINT 4 of view 0, certified at `counter`.
fn checkpoint_from_2(c: &SimCrypto, view_top: Option<View>, counter: u64) -> PeerMessage {
    let mut cp = crate::message::Checkpoint {
        n: 4,
        state_digest: [1; 32],
        view: 0,
        view_top,
        sender: 2,
        ui: Ui {
            counter,
            cert: vec![],
        },
    };
    let digest = UiMessage::Checkpoint(cp.clone()).certified_digest();
    cp.ui.cert = c.ui_cert(2, counter, &digest);
    PeerMessage::Ui(UiMessage::Checkpoint(cp))
}

/// A faulty replica's view-top CHECKPOINT for view u64::MAX reached `v + n`.
#[test]
fn a_view_top_checkpoint_for_a_view_near_u64_max_is_dropped_without_panicking() {
    let c = crypto();
    let mut r = Replica::new(1, Config::new(1), Box::new(c.clone()));
    step_peer(&c, &mut r, 2, checkpoint_from_2(&c, Some(u64::MAX), 1));
    assert_eq!(r.view(), 0);
}
/// VIEW-CHANGEs for views far ahead are kept until that view comes, keyed by the view
/// the sender chose: a faulty replica sending one for each of many future views (each
/// may carry a full log of PREPAREs) grows the table without bound.
#[test]
fn view_changes_for_far_future_views_are_bounded() {
    let c = crypto();
    let config = Config::new(1);
    let mut r = Replica::new(1, config, Box::new(c.clone()));
    for k in 1..=200u64 {
        let vc = ViewChange {
            new_view: 1_000 * k,
            sender: 2,
            cert: CheckpointCert::default(),
            accepted: vec![],
            view_certs: vec![],
            ui: Ui {
                counter: k,
                cert: vec![],
            },
        };
        step_peer(&c, &mut r, 2, PeerMessage::Ui(signed_view_change(&c, vc)));
    }
    let held: usize = r.view_changes.values().map(BTreeMap::len).sum();
    assert!(
        held <= 2 * r.config().n() as usize,
        "{held} VIEW-CHANGEs held"
    );
}

/// A faulty former primary keeps certifying PREPAREs of its old view, each for another
/// batch number far above any checkpoint: correct replicas drop them as old-view, but
/// first record each one in `peer_accepted` (for the omission check), which only a stable
/// checkpoint at or above that number would prune: it grows by one entry per message.
#[test]
fn old_view_prepares_for_far_numbers_do_not_grow_the_omission_table() {
    let c = crypto();
    let mut r = replica_1_in_view_change_to_1(&c);
    let config = r.config().clone();
    for k in 1..=2_000u64 {
        let p = prepare(&c, &config, 0, 1_000_000_000 + k, 9, k);
        step_peer(&c, &mut r, 0, PeerMessage::Ui(UiMessage::Prepare(p)));
    }
    let held = r.peer_accepted[0].len();
    assert!(held <= config.holdback_max, "{held} entries for replica 0");
}

/// Answers what `outs` asks of the driver (UIs, execution, digests) until the replica
/// asks nothing more; returns every output, and the CHECKPOINTs it broadcast.
fn drive(c: &SimCrypto, r: &mut Replica, counter: &mut u64, outs: Vec<Output>) -> Vec<Output> {
    let mut all = Vec::new();
    let mut queue = outs;
    while !queue.is_empty() {
        let mut next = Vec::new();
        for o in &queue {
            match o {
                Output::CreateUi { digest } => {
                    *counter += 1;
                    let cert = c.ui_cert(r.id(), *counter, digest);
                    next.extend(r.step(Input::UiCreated(Ui {
                        counter: *counter,
                        cert,
                    })));
                }
                Output::Execute {
                    n,
                    requests,
                    want_digest,
                    ..
                } => {
                    next.extend(r.step(Input::Executed {
                        n: *n,
                        results: vec![Vec::new(); requests.len()],
                        app_digest: want_digest.then_some([0; 32]),
                    }));
                }
                _ => {}
            }
        }
        all.append(&mut queue);
        queue = next;
    }
    all
}

/// A correct backup prepares nothing more than `Config::log_window` above its stable
/// checkpoint (the bound that lets a VIEW-CHANGE reporting more be refused), and takes
/// the PREPARE it held back as soon as a checkpoint becomes stable.
#[test]
fn a_backup_prepares_within_its_log_window_and_resumes_at_the_next_stable_checkpoint() {
    let c = crypto();
    let mut config = Config::new(1);
    config.checkpoint_interval = 4;
    let window = config.log_window();
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    let mut counter = 0;
    let outs = r.step(Input::Tick { now_ns: 1 });
    drive(&c, &mut r, &mut counter, outs);
    let mut own_checkpoint = None;
    for n in 1..=window + 1 {
        let p = prepare(&c, &config, 0, n, n as u8, n);
        let outs = step_peer(&c, &mut r, 0, PeerMessage::Ui(UiMessage::Prepare(p)));
        let was_accepted = accepted(&outs);
        let all = drive(&c, &mut r, &mut counter, outs);
        assert_eq!(was_accepted, n <= window, "PREPARE {n} (window {window})");
        own_checkpoint = own_checkpoint.or_else(|| {
            all.iter().find_map(|o| match o {
                Output::Broadcast(PeerMessage::Ui(UiMessage::Checkpoint(cp))) if cp.n == 4 => {
                    Some(cp.clone())
                }
                _ => None,
            })
        });
    }
    assert_eq!(r.stable_checkpoint().n, 0, "nobody else sent a CHECKPOINT");
    // Replica 2's CHECKPOINT 4 makes it stable (with ours): PREPARE 17 goes through.
    let mut cp = own_checkpoint.expect("checkpoint 4 certified");
    cp.sender = 2;
    cp.ui = Ui {
        counter: 1,
        cert: vec![],
    };
    cp.ui.cert = c.ui_cert(2, 1, &UiMessage::Checkpoint(cp.clone()).certified_digest());
    let outs = step_peer(&c, &mut r, 2, PeerMessage::Ui(UiMessage::Checkpoint(cp)));
    assert_eq!(r.stable_checkpoint().n, 4);
    assert!(accepted(&outs), "the held PREPARE is taken: {outs:?}");
}

/// A UI at `u64::MAX` (only a forged or broken USIG issues one) is refused by
/// validation: the receiver's stream would next expect `counter + 1`.
#[test]
fn a_ui_at_the_last_counter_value_is_refused() {
    let c = crypto();
    let mut r = Replica::new(1, Config::new(1), Box::new(c.clone()));
    step_peer(&c, &mut r, 2, checkpoint_from_2(&c, None, u64::MAX));
    assert_eq!(r.dropped().get("bad_ui"), Some(&1), "{:?}", r.dropped());
}

/// A primary proposes the requests that wait in the order they arrived. It went by
/// client id: with full batches (here one request each) and low ids that kept sending,
/// the highest ids waited until the backups' request timers replaced a correct primary
/// (the micro-benchmark without batching changed view about once a second at 64
/// clients).
#[test]
fn a_primary_proposes_waiting_requests_oldest_first() {
    let c = crypto();
    let mut config = Config::new(1);
    config.batch_requests_max = 1;
    let mut r = Replica::new(0, config.clone(), Box::new(c.clone()));
    r.step(Input::Tick {
        now_ns: 5_000_000_000,
    });
    let request = |client: ClientId| {
        let mut req = Request {
            client,
            seq: 1,
            read_only: false,
            op: vec![1].into(),
            sig: vec![],
        };
        req.sig = c.sign_request(client, &req.digest());
        Input::Request(validate::request(&config, &c, req).expect("valid request"))
    };
    let proposed = |outs: &[Output]| -> Vec<ClientId> {
        outs.iter()
            .filter_map(|o| match o {
                Output::Broadcast(PeerMessage::Ui(UiMessage::Prepare(p))) => Some(p),
                _ => None,
            })
            .flat_map(|p| p.batch.requests.iter().map(|q| q.client))
            .collect()
    };
    // Client 9 is proposed at once; 7, 3 and 1 arrive while its UI is being made.
    let outs = r.step(request(9));
    assert!(ui_asked(&outs).is_some(), "{outs:?}");
    for client in [7, 3, 1] {
        r.step(request(client));
    }
    let mut order = Vec::new();
    for counter in 1..=4 {
        let outs = r.step(Input::UiCreated(Ui {
            counter,
            cert: vec![],
        }));
        order.extend(proposed(&outs));
    }
    assert_eq!(order, vec![9, 7, 3, 1]);
}

/// Backup 1 executes batches 1..=4 (a checkpoint at 4) with its loop blocked for
/// `stall_ns` after batch 4 (the capture: no ticks arrive meanwhile), while a client's
/// request waits. Returns how many ticks after the stall it suspects the primary, with
/// the primary's CHECKPOINT for 4 arriving `primary_checkpoint_after` ticks after it.
fn ticks_until_suspicion(stall_ns: u64, primary_checkpoint_after: Option<u64>) -> u64 {
    backup_suspecting_after_a_checkpoint(stall_ns, primary_checkpoint_after).0
}

/// `ticks_until_suspicion`, and the replica then.
fn backup_suspecting_after_a_checkpoint(
    stall_ns: u64,
    primary_checkpoint_after: Option<u64>,
) -> (u64, Replica) {
    let c = crypto();
    let mut config = Config::new(1);
    config.checkpoint_interval = 4;
    let tick_ns = config.tick_ns;
    let mut r = Replica::new(1, config.clone(), Box::new(c.clone()));
    let mut now = 1_000_000_000;
    r.step(Input::Tick { now_ns: now });
    for n in 1..=4 {
        let p = prepare(&c, &config, 0, n, n as u8, n);
        let digest = ui_asked(&step_peer(
            &c,
            &mut r,
            0,
            PeerMessage::Ui(UiMessage::Prepare(p)),
        ))
        .expect("COMMIT to certify");
        r.step(Input::UiCreated(Ui {
            counter: n,
            cert: c.ui_cert(1, n, &digest),
        }));
        let outs = r.step(Input::Executed {
            n,
            results: vec![Vec::new()],
            app_digest: config.is_checkpoint(n).then_some([0; 32]),
        });
        if let Some(digest) = ui_asked(&outs) {
            // Our CHECKPOINT for 4.
            r.step(Input::UiCreated(Ui {
                counter: 5,
                cert: c.ui_cert(1, 5, &digest),
            }));
        }
    }
    let mut req = Request {
        client: 50,
        seq: 1,
        read_only: false,
        op: vec![1].into(),
        sig: vec![],
    };
    req.sig = c.sign_request(req.client, &req.digest());
    r.step(Input::Request(
        validate::request(&config, &c, req).expect("valid request"),
    ));
    now += stall_ns;
    for tick in 1..=5000 {
        now += tick_ns;
        let outs = r.step(Input::Tick { now_ns: now });
        if outs
            .iter()
            .any(|o| matches!(o, Output::Broadcast(PeerMessage::ReqViewChange { .. })))
        {
            return (tick, r);
        }
        if primary_checkpoint_after == Some(tick) {
            let mut cp = crate::message::Checkpoint {
                n: 4,
                state_digest: [1; 32],
                view: 0,
                view_top: None,
                sender: 0,
                ui: Ui {
                    counter: 5,
                    cert: vec![],
                },
            };
            cp.ui.cert = c.ui_cert(0, 5, &UiMessage::Checkpoint(cp.clone()).certified_digest());
            step_peer(&c, &mut r, 0, PeerMessage::Ui(UiMessage::Checkpoint(cp)));
        }
    }
    panic!("never suspected the primary");
}

/// A backup that finished a long checkpoint capture gives the primary twice that stall
/// to finish its own before its waiting requests age (the cluster changed view after
/// large copies when the primary's capture ended a second after the backups'), ends the
/// grace as soon as the primary's CHECKPOINT arrives, gives none for a capture of a
/// few milliseconds, and none again in a view whose primary let a grace run out.
#[test]
fn a_backup_waits_for_the_primarys_checkpoint_capture() {
    let timeout = Config::new(1).request_timeout_ticks;
    let plain = ticks_until_suspicion(0, None);
    assert!((timeout..timeout + 3).contains(&plain), "{plain}");
    // A 2 s stall (200 ticks) gives 400 ticks of grace.
    let stalled = ticks_until_suspicion(2_000_000_000, None);
    assert!(
        (plain + 395..plain + 402).contains(&stalled),
        "{stalled} against {plain}"
    );
    // The primary's CHECKPOINT after 50 ticks ends the grace there.
    let answered = ticks_until_suspicion(2_000_000_000, Some(50));
    assert!(
        (plain + 45..plain + 52).contains(&answered),
        "{answered} against {plain}"
    );
    // A few milliseconds of jitter buy nothing.
    assert_eq!(ticks_until_suspicion(4_000_000, None), plain);
    // A primary that let the grace run out gets none at the next checkpoint.
    let (_, mut r) = backup_suspecting_after_a_checkpoint(2_000_000_000, None);
    assert_eq!(r.checkpoint_grace.forfeited_in, Some(0));
    let c = crypto();
    let config = r.config().clone();
    // Our UIs so far: COMMITs 1..=4 and the CHECKPOINT for 4.
    let mut counter = 6;
    let now = 100_000_000_000;
    let mut outs = r.step(Input::Tick { now_ns: now });
    for n in 5..=8 {
        let mut p = prepare(&c, &config, 0, n, n as u8, n);
        p.header.timestamp_ns = now + n;
        p.ui.cert = c.ui_cert(0, n, &UiMessage::Prepare(p.clone()).certified_digest());
        outs.extend(step_peer(
            &c,
            &mut r,
            0,
            PeerMessage::Ui(UiMessage::Prepare(p)),
        ));
        // Answer every UI asked for, and complete every batch handed over.
        while let Some(i) = outs
            .iter()
            .position(|o| matches!(o, Output::CreateUi { .. } | Output::Execute { .. }))
        {
            let more = match outs.remove(i) {
                Output::CreateUi { digest } => {
                    let ui = Ui {
                        counter,
                        cert: c.ui_cert(1, counter, &digest),
                    };
                    counter += 1;
                    r.step(Input::UiCreated(ui))
                }
                Output::Execute { n, requests, .. } => r.step(Input::Executed {
                    n,
                    results: vec![Vec::new(); requests.len()],
                    app_digest: config.is_checkpoint(n).then_some([0; 32]),
                }),
                _ => unreachable!(),
            };
            outs.extend(more);
        }
    }
    assert_eq!(r.checkpoint_grace.n, 8, "{:?}", r.checkpoint_grace);
    assert_eq!(r.checkpoint_grace.capture_from_ns, None);
}
