//! Unit and property tests of the replica core: the NEW-VIEW decision against a naive
//! oracle, and hostile input that must be dropped and counted, never panic.

use proptest::prelude::*;

use super::view_change::decide_new_view;
use super::*;
use crate::crypto::SimCrypto;
use crate::message::{Batch, CheckpointCert, PrepareHeader, ViewChange};
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
        op: vec![tag],
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
            2 => { if let Some(r) = p.batch.requests.get_mut(0) { r.op.push(flip); } }
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
        op: vec![0; 5],
        sig: vec![],
    };
    req.sig = c.sign_request(1, &req.digest());
    assert_eq!(
        validate::request(&config, &c, req).unwrap_err(),
        validate::Reject::RequestTooLarge
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
