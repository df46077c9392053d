//! The conformance suite run against `TpmUsig` on swtpm (feature `tpm`), plus what only a
//! TPM USIG has to withstand: a hostile host with full access to the TPM (certify one
//! counter value twice, re-sign an old audit digest, replay a saved session, forge an
//! attest), restarts of the holder and of swtpm, and gaps.
//!
//! Every USIG gets its own swtpm on free loopback ports with a temporary state directory,
//! killed when the test's `Tpm` guard drops. Tests are skipped (pass with a note) when
//! swtpm is not installed; `scripts/test` installs it.
#![cfg(feature = "tpm")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use usig::conformance::{self, Factory};
use usig::swtpm::{self, Swtpm};
use usig::tpm::{self, Step};
use usig::tpm_attest;
use usig::{ReplicaId, TpmLocation, TpmUsig, Ui, Usig, UsigIdentity, verify_ui};

const CRASH_CHILD_ENV: &str = "USIG_TPM_CRASH_CHILD";

/// One swtpm with a provisioned USIG; the swtpm dies with it.
struct Tpm {
    // Field order: the swtpm is killed before its directory is removed.
    swtpm: Swtpm,
    location: TpmLocation,
    identity: UsigIdentity,
    dir: TempDir,
}

impl Tpm {
    fn start() -> Tpm {
        let dir = tempfile::tempdir().expect("tempdir");
        let swtpm = Swtpm::start(&dir.path().join("swtpm")).expect("start swtpm");
        let location = TpmLocation::new(swtpm.tcti());
        let identity = tpm::provision(&location).expect("provision");
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        Tpm {
            swtpm,
            location,
            identity,
            dir,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn open(&self, replica: ReplicaId) -> TpmUsig {
        TpmUsig::open(&self.location, replica, &self.identity, &self.state_dir()).expect("open")
    }
}

fn have_swtpm() -> bool {
    let ok = swtpm::available();
    if !ok {
        eprintln!("swtpm is not installed: skipping (scripts/test installs it)");
    }
    ok
}

fn tpm_factory() -> impl FnMut(ReplicaId) -> Box<dyn Usig> {
    let mut keep: Vec<Tpm> = Vec::new();
    move |replica| {
        let tpm = Tpm::start();
        let usig = tpm.open(replica);
        keep.push(tpm);
        Box::new(usig)
    }
}

fn run(check: fn(Factory<'_>)) {
    if !have_swtpm() {
        return;
    }
    let mut factory = tpm_factory();
    check(&mut factory);
}

#[test]
fn tpm_counters_start_at_one_and_increase() {
    run(conformance::counters_start_at_one_and_increase);
}

#[test]
fn tpm_no_two_uis_share_a_counter() {
    run(conformance::no_two_uis_share_a_counter);
}

#[test]
fn tpm_issued_uis_verify() {
    run(conformance::issued_uis_verify);
}

#[test]
fn tpm_last_issued_is_the_latest_ui() {
    run(conformance::last_issued_is_the_latest_ui);
}

#[test]
fn tpm_verify_rejects_changed_digest() {
    run(conformance::verify_rejects_changed_digest);
}

#[test]
fn tpm_verify_rejects_changed_counter() {
    run(conformance::verify_rejects_changed_counter);
}

#[test]
fn tpm_verify_rejects_changed_replica() {
    run(conformance::verify_rejects_changed_replica);
}

#[test]
fn tpm_verify_rejects_changed_cert() {
    run(conformance::verify_rejects_changed_cert);
}

#[test]
fn tpm_verify_rejects_other_replicas_key() {
    run(conformance::verify_rejects_other_replicas_key);
}

/// A UI claiming counter `counter` for `digest` from a TPM-signed (attest, signature).
fn claimed(counter: u64, signed: &(Vec<u8>, [u8; 64])) -> Ui {
    Ui {
        counter,
        cert: tpm_attest::encode_cert(&signed.0, &signed.1),
    }
}

#[test]
fn tpm_hostile_host_cannot_certify_one_counter_value_twice() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(1);
    let (m1, m2) = (conformance::test_digest(1), conformance::test_digest(2));
    let ui = usig.create_ui(&m1).unwrap();
    verify_ui(&tpm.identity, 1, &m1, &ui).unwrap();
    let k = ui.counter;
    let h2 = tpm_attest::message_hash(1, k, &m2);
    // Read the counter at its current value (c) and stir m2 in; read twice; read before
    // and after without incrementing; increment and claim the value before.
    let attempts: Vec<(u64, Vec<Step>)> = vec![
        (k, vec![Step::Read, Step::Stir(h2)]),
        (k, vec![Step::Read, Step::Read, Step::Stir(h2)]),
        (k, vec![Step::Read, Step::Read, Step::Read, Step::Stir(h2)]),
        (k, vec![Step::Stir(h2)]),
        (
            k,
            vec![Step::Read, Step::Increment, Step::Read, Step::Stir(h2)],
        ),
        (
            k + 1,
            vec![
                Step::Read,
                Step::Increment,
                Step::Increment,
                Step::Read,
                Step::Stir(tpm_attest::message_hash(1, k + 1, &m2)),
            ],
        ),
        (
            k,
            vec![Step::Increment, Step::Read, Step::Read, Step::Stir(h2)],
        ),
    ];
    for (counter, steps) in attempts {
        let signed = usig
            .hostile_sequence(&steps)
            .expect("the TPM runs the commands");
        let forged = claimed(counter, &signed);
        assert!(
            verify_ui(&tpm.identity, 1, &m2, &forged).is_err(),
            "a second UI for counter {counter} via {steps:?} verified"
        );
    }
    // The genuine UI still verifies, and the USIG goes on above every value used.
    verify_ui(&tpm.identity, 1, &m1, &ui).unwrap();
    let next = usig.create_ui(&m2).unwrap();
    assert!(next.counter > k + 2);
    verify_ui(&tpm.identity, 1, &m2, &next).unwrap();
}

#[test]
fn tpm_hostile_host_cannot_re_sign_an_old_audit_digest() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(0);
    let (m1, m2) = (conformance::test_digest(1), conformance::test_digest(2));
    let ui = usig.create_ui(&m1).unwrap();
    let k = ui.counter;
    // Re-sign the session as it is: the same (counter, m1) again, never anything else.
    let again = usig.hostile_extend_session(&[]).unwrap();
    let resigned = claimed(k, &again);
    verify_ui(&tpm.identity, 0, &m1, &resigned).expect("re-signing repeats the same UI");
    assert!(verify_ui(&tpm.identity, 0, &m2, &resigned).is_err());
    assert!(verify_ui(&tpm.identity, 0, &m1, &claimed(k + 1, &again)).is_err());
    // Extend the old session with m2 and re-sign: neither message verifies.
    let extended = usig
        .hostile_extend_session(&[Step::Stir(tpm_attest::message_hash(0, k, &m2))])
        .unwrap();
    for m in [&m1, &m2] {
        assert!(verify_ui(&tpm.identity, 0, m, &claimed(k, &extended)).is_err());
    }
    // The old attest with the digest swapped for the one m2 needs: the signature fails.
    let (attest, signature) = tpm_attest::split_cert(&ui.cert).unwrap();
    let mut attest = attest.to_vec();
    let expected = tpm_attest::expected_audit_digest(
        &counter_name(&tpm.identity),
        base(&tpm.identity) + k - 1,
        &tpm_attest::message_hash(0, k, &m2),
    );
    let at = attest.len() - 32;
    attest[at..].copy_from_slice(&expected);
    let swapped = Ui {
        counter: k,
        cert: tpm_attest::encode_cert(&attest, signature.try_into().unwrap()),
    };
    assert_eq!(
        verify_ui(&tpm.identity, 0, &m2, &swapped),
        Err(usig::VerifyError::BadSignature)
    );
}

#[test]
fn tpm_hostile_host_cannot_replay_a_saved_session() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(2);
    let (m1, m2) = (conformance::test_digest(1), conformance::test_digest(2));
    let first = usig.create_ui(&conformance::test_digest(0)).unwrap();
    let k = first.counter + 1;
    let (tpm_counter, genuine, replay) = usig
        .hostile_replay_saved_session(
            &tpm_attest::message_hash(2, k, &m1),
            &tpm_attest::message_hash(2, k, &m2),
        )
        .unwrap();
    assert_eq!(tpm_counter, base(&tpm.identity) + k);
    verify_ui(&tpm.identity, 2, &m1, &claimed(k, &genuine))
        .expect("the session finished once is a genuine UI");
    match replay {
        Err(e) => eprintln!("the TPM refused the replayed session: {e}"),
        Ok(signed) => assert!(
            verify_ui(&tpm.identity, 2, &m2, &claimed(k, &signed)).is_err(),
            "a replayed session certified counter {k} a second time"
        ),
    }
}

#[test]
fn tpm_hostile_host_cannot_forge_an_attest() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(0);
    let m = conformance::test_digest(7);
    let genuine = usig.create_ui(&conformance::test_digest(1)).unwrap();
    let (attest, _) = tpm_attest::split_cert(&genuine.cert).unwrap();
    // The attest a UI for the next counter and `m` would need, built by the host.
    let k = genuine.counter + 1;
    let mut forged = attest.to_vec();
    let at = forged.len() - 32;
    forged[at..].copy_from_slice(&tpm_attest::expected_audit_digest(
        &counter_name(&tpm.identity),
        base(&tpm.identity) + k - 1,
        &tpm_attest::message_hash(0, k, &m),
    ));
    let forged_digest: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&forged).into()
    };
    // The restricted key refuses to sign it (no hash-check ticket: the TPM did not hash it).
    assert!(
        usig.hostile_sign_digest(&forged_digest).is_err(),
        "the restricted key signed a host-made digest"
    );
    // Signed by another key (a software key, or another TPM's): fails.
    let other = Tpm::start();
    let mut other_usig = other.open(0);
    let other_signed = other_usig.hostile_sequence(&[Step::Read]).unwrap();
    let ui = Ui {
        counter: k,
        cert: tpm_attest::encode_cert(&forged, &other_signed.1),
    };
    assert!(verify_ui(&tpm.identity, 0, &m, &ui).is_err());
    let key = usig::SigningKey::generate().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        key.key_bytes(),
        &rng,
    )
    .unwrap();
    let sig = pair.sign(&rng, &forged).unwrap();
    let ui = Ui {
        counter: k,
        cert: tpm_attest::encode_cert(&forged, sig.as_ref().try_into().unwrap()),
    };
    assert!(verify_ui(&tpm.identity, 0, &m, &ui).is_err());
    // That software key's UIs verify under an identity claiming it, which shows the
    // forged attest is well formed: only the key stops it.
    let mut fake = tpm.identity.clone();
    if let UsigIdentity::Tpm { public_key, .. } = &mut fake {
        let UsigIdentity::EcdsaP256 {
            public_key: software,
        } = key.identity()
        else {
            unreachable!()
        };
        *public_key = software;
    }
    assert!(
        usig::Verifier::new(&fake).is_err(),
        "key must match the public area"
    );
}

#[test]
fn tpm_counter_survives_restart_of_holder_and_swtpm() {
    if !have_swtpm() {
        return;
    }
    let mut tpm = Tpm::start();
    let mut issued = Vec::new();
    for round in 0..3u64 {
        let mut usig = tpm.open(1);
        if let Some(last) = issued.last() {
            assert_eq!(usig.last_issued().as_ref(), Some(last), "round {round}");
        }
        for i in 0..3 {
            let digest = conformance::test_digest(round * 10 + i);
            let ui = usig.create_ui(&digest).unwrap();
            issued.push(usig::IssuedUi { digest, ui });
        }
        drop(usig);
        if round == 1 {
            tpm.swtpm.restart().expect("restart swtpm");
        }
    }
    let counters: Vec<u64> = issued.iter().map(|i| i.ui.counter).collect();
    assert_eq!(counters, (1..=9).collect::<Vec<_>>());
    for i in &issued {
        verify_ui(&tpm.identity, 1, &i.digest, &i.ui).unwrap();
    }
}

#[test]
fn tpm_gap_is_liveness_only() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(0);
    let a = usig.create_ui(&conformance::test_digest(1)).unwrap();
    usig.waste_counter_value().unwrap();
    let b = usig.create_ui(&conformance::test_digest(2)).unwrap();
    assert_eq!(b.counter, a.counter + 2, "the wasted value is skipped");
    verify_ui(&tpm.identity, 0, &conformance::test_digest(2), &b).unwrap();
    // Nothing can certify the wasted value afterwards.
    let gap = a.counter + 1;
    let h = tpm_attest::message_hash(0, gap, &conformance::test_digest(3));
    for steps in [vec![Step::Read, Step::Stir(h)], vec![Step::Stir(h)]] {
        let signed = usig.hostile_sequence(&steps).unwrap();
        assert!(
            verify_ui(
                &tpm.identity,
                0,
                &conformance::test_digest(3),
                &claimed(gap, &signed)
            )
            .is_err()
        );
    }
}

#[test]
fn tpm_open_refuses_another_identity_and_a_rolled_back_cache() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let other = Tpm::start();
    assert!(TpmUsig::open(&tpm.location, 0, &other.identity, &tpm.state_dir()).is_err());
    let mut usig = tpm.open(0);
    usig.create_ui(&conformance::test_digest(1)).unwrap();
    drop(usig);
    // A cache from another replica id is refused.
    assert!(TpmUsig::open(&tpm.location, 1, &tpm.identity, &tpm.state_dir()).is_err());
    // A corrupted cache is refused, never silently reset: the only record (UI 1, in
    // slot 1) with a flipped certificate byte, or with a byte in its padding set.
    let path = tpm.state_dir().join(tpm::LAST_FILE_NAME);
    let good = std::fs::read(&path).unwrap();
    assert_eq!(good.len(), 2 * SLOT);
    for at in [SLOT + 80, 2 * SLOT - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            TpmUsig::open(&tpm.location, 0, &tpm.identity, &tpm.state_dir()).is_err(),
            "flipped byte {at}"
        );
    }
    std::fs::write(&path, &good).unwrap();
    assert!(TpmUsig::open(&tpm.location, 0, &tpm.identity, &tpm.state_dir()).is_ok());
}

/// The last-UI cache's slot size (two slots, UI k in slot k mod 2).
const SLOT: usize = 512;

#[test]
fn tpm_cache_survives_a_torn_slot_and_advance_to_catches_up() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(0);
    let issued: Vec<usig::IssuedUi> = (1..=3)
        .map(|i| {
            let digest = conformance::test_digest(i);
            let ui = usig.create_ui(&digest).unwrap();
            usig::IssuedUi { digest, ui }
        })
        .collect();
    drop(usig);
    let path = tpm.state_dir().join(tpm::LAST_FILE_NAME);
    let good = std::fs::read(&path).unwrap();
    // A power cut tore the write of UI 3 (slot 1): the cache falls back to UI 2, as if
    // that write was lost.
    let mut torn = good.clone();
    torn[SLOT + 100] ^= 0xFF;
    std::fs::write(&path, &torn).unwrap();
    let mut usig = tpm.open(0);
    assert_eq!(usig.last_issued().as_ref(), Some(&issued[1]));
    // The caller's synced log holds UI 3: advance_to brings the cache up, durably for the
    // next open; an older UI leaves it; a UI that does not verify is refused.
    usig.advance_to(&issued[2]).unwrap();
    assert_eq!(usig.last_issued().as_ref(), Some(&issued[2]));
    usig.advance_to(&issued[0]).unwrap();
    assert_eq!(usig.last_issued().as_ref(), Some(&issued[2]));
    let mut forged = issued[2].clone();
    forged.ui.counter += 1;
    assert!(usig.advance_to(&forged).is_err());
    let mut other_digest = issued[2].clone();
    other_digest.digest[0] ^= 1;
    assert!(usig.advance_to(&other_digest).is_err());
    drop(usig);
    assert_eq!(std::fs::read(&path).unwrap(), good);
    let mut usig = tpm.open(0);
    assert_eq!(usig.last_issued().as_ref(), Some(&issued[2]));
    assert_eq!(
        usig.create_ui(&conformance::test_digest(4))
            .unwrap()
            .counter,
        4
    );
    drop(usig);
    // Both slots spoiled: refused, never reset.
    let mut both = std::fs::read(&path).unwrap();
    both[100] ^= 0xFF;
    both[SLOT + 100] ^= 0xFF;
    std::fs::write(&path, &both).unwrap();
    assert!(TpmUsig::open(&tpm.location, 0, &tpm.identity, &tpm.state_dir()).is_err());
}

#[test]
fn tpm_cache_in_the_one_record_layout_is_read_and_converted() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(2);
    let digest = conformance::test_digest(1);
    let ui = usig.create_ui(&digest).unwrap();
    drop(usig);
    // magic ‖ replica ‖ digest ‖ counter ‖ cert_len ‖ cert, the whole file.
    let mut legacy = b"bftnfs/tpm-last1".to_vec();
    legacy.extend_from_slice(&2u32.to_be_bytes());
    legacy.extend_from_slice(&digest);
    legacy.extend_from_slice(&ui.counter.to_be_bytes());
    legacy.extend_from_slice(&(ui.cert.len() as u16).to_be_bytes());
    legacy.extend_from_slice(&ui.cert);
    let path = tpm.state_dir().join(tpm::LAST_FILE_NAME);
    std::fs::write(&path, &legacy).unwrap();
    let mut usig = tpm.open(2);
    let expected = usig::IssuedUi { digest, ui };
    assert_eq!(usig.last_issued().as_ref(), Some(&expected));
    assert_eq!(std::fs::read(&path).unwrap().len(), 2 * SLOT);
    assert_eq!(
        usig.create_ui(&conformance::test_digest(2))
            .unwrap()
            .counter,
        2
    );
    drop(usig);
    assert_eq!(tpm.open(2).last_issued().unwrap().ui.counter, 2);
}

fn counter_name(identity: &UsigIdentity) -> Vec<u8> {
    match identity {
        UsigIdentity::Tpm { counter_name, .. } => counter_name.clone(),
        _ => unreachable!(),
    }
}

fn base(identity: &UsigIdentity) -> u64 {
    match identity {
        UsigIdentity::Tpm { base_counter, .. } => *base_counter,
        _ => unreachable!(),
    }
}

/// The child half of `tpm_counter_survives_sigkill`: opens the USIG whose TCTI and
/// directory the parent passes, and issues UIs until SIGKILLed. A no-op by itself.
#[test]
#[ignore = "child process of tpm_counter_survives_sigkill"]
fn tpm_crash_child() {
    let Some(arg) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(arg);
    let (location, identity) = read_child_setup(&dir);
    let mut usig = TpmUsig::open(&location, 2, &identity, &dir.join("state")).unwrap();
    conformance::run_crash_child(&mut usig, Duration::from_secs(60));
}

fn write_child_setup(tpm: &Tpm) {
    let bytes = bincode::serde::encode_to_vec(&tpm.identity, bincode::config::standard()).unwrap();
    std::fs::write(tpm.dir.path().join("identity"), bytes).unwrap();
    std::fs::write(tpm.dir.path().join("tcti"), &tpm.location.tcti).unwrap();
}

fn read_child_setup(dir: &Path) -> (TpmLocation, UsigIdentity) {
    let bytes = std::fs::read(dir.join("identity")).unwrap();
    let (identity, _) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    let tcti = std::fs::read_to_string(dir.join("tcti")).unwrap();
    (TpmLocation::new(tcti), identity)
}

#[test]
fn tpm_counter_survives_sigkill() {
    if !have_swtpm() {
        return;
    }
    let mut tpm = Tpm::start();
    write_child_setup(&tpm);
    let mut floor = 0;
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["tpm_crash_child", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1", "-q"])
            .env(CRASH_CHILD_ENV, tpm.dir.path());
        floor = conformance::counter_survives_sigkill_allowing_gap(child, floor, &mut || {
            Box::new(tpm.open(2))
        });
        if round == 1 {
            // A power cut of the TPM as well: the counter is in its NV state.
            tpm.swtpm.restart().expect("restart swtpm");
            write_child_setup(&tpm);
        }
    }
}

/// The benchmark's ESYS path makes the same UIs: interleaved with the raw path, the
/// counters stay consecutive and every UI verifies.
#[test]
fn tpm_esys_path_interleaves_with_the_raw_path() {
    if !have_swtpm() {
        return;
    }
    let tpm = Tpm::start();
    let mut usig = tpm.open(1);
    for i in 1..=6u64 {
        let digest = conformance::test_digest(i);
        let ui = if i % 2 == 0 {
            usig.create_ui_through_esys(&digest).unwrap()
        } else {
            usig.create_ui(&digest).unwrap()
        };
        assert_eq!(ui.counter, i);
        verify_ui(&tpm.identity, 1, &digest, &ui).unwrap();
        assert_eq!(usig.last_issued().unwrap().ui, ui);
    }
}

/// swtpm restarts under an open holder (its audit session is gone): the next UI starts a
/// new session and follows on without a gap or an error.
#[test]
fn tpm_holder_follows_a_swtpm_restart_without_reopening() {
    if !have_swtpm() {
        return;
    }
    let mut tpm = Tpm::start();
    let mut usig = tpm.open(1);
    let first = usig.create_ui(&conformance::test_digest(1)).unwrap();
    tpm.swtpm.restart().expect("restart swtpm");
    let digest = conformance::test_digest(2);
    let second = usig.create_ui(&digest).unwrap();
    assert_eq!(second.counter, first.counter + 1);
    verify_ui(&tpm.identity, 1, &digest, &second).unwrap();
}
