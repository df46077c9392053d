//! The conformance suite run against `SoftwareUsig`, including the crash test that
//! SIGKILLs a child process (this test binary, re-executed) while it issues UIs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tempfile::TempDir;
use usig::conformance::{self, Factory};
use usig::{ReplicaId, SigningKey, SoftwareUsig, Usig};

const CRASH_CHILD_ENV: &str = "USIG_CONFORMANCE_CRASH_CHILD_DIR";
const KEY_FILE: &str = "usig.key";

/// Fresh state directory and key per instance; the directories live as long as the
/// factory, that is, the test.
fn software_factory() -> impl FnMut(ReplicaId) -> Box<dyn Usig> {
    let mut dirs: Vec<TempDir> = Vec::new();
    move |replica| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate().expect("generate key");
        let usig = SoftwareUsig::open(dir.path(), replica, key.pkcs8()).expect("open");
        dirs.push(dir);
        Box::new(usig)
    }
}

fn run(check: fn(Factory<'_>)) {
    let mut factory = software_factory();
    check(&mut factory);
}

#[test]
fn software_counters_start_at_one_and_increase() {
    run(conformance::counters_start_at_one_and_increase);
}

#[test]
fn software_no_two_uis_share_a_counter() {
    run(conformance::no_two_uis_share_a_counter);
}

#[test]
fn software_issued_uis_verify() {
    run(conformance::issued_uis_verify);
}

#[test]
fn software_last_issued_is_the_latest_ui() {
    run(conformance::last_issued_is_the_latest_ui);
}

#[test]
fn software_verify_rejects_changed_digest() {
    run(conformance::verify_rejects_changed_digest);
}

#[test]
fn software_verify_rejects_changed_counter() {
    run(conformance::verify_rejects_changed_counter);
}

#[test]
fn software_verify_rejects_changed_replica() {
    run(conformance::verify_rejects_changed_replica);
}

#[test]
fn software_verify_rejects_changed_cert() {
    run(conformance::verify_rejects_changed_cert);
}

#[test]
fn software_verify_rejects_other_replicas_key() {
    run(conformance::verify_rejects_other_replicas_key);
}

#[test]
fn software_verify_rejects_other_domain_tag() {
    let key = SigningKey::generate().expect("generate key");
    let rng = SystemRandom::new();
    let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.pkcs8(), &rng)
        .expect("parse key");
    conformance::verify_rejects_other_domain_tag(&key.identity(), 3, &mut |bytes| {
        key_pair.sign(&rng, bytes).expect("sign").as_ref().to_vec()
    });
}

fn open_child_state(dir: &Path) -> SoftwareUsig {
    let key = SigningKey::read_file(&dir.join(KEY_FILE)).expect("read key");
    SoftwareUsig::open(dir, 2, key.pkcs8()).expect("open state")
}

/// The child half of `software_counter_survives_sigkill`; a no-op when run by itself.
#[test]
#[ignore = "child process of software_counter_survives_sigkill"]
fn software_crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let mut usig = open_child_state(Path::new(&dir));
    conformance::run_crash_child(&mut usig, Duration::from_secs(60));
}

#[test]
fn software_counter_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("generate key");
    key.write_file(&dir.path().join(KEY_FILE))
        .expect("write key");
    let mut floor = 0;
    for _round in 0..3 {
        let mut child = Command::new(std::env::current_exe().expect("test binary path"));
        child
            .args([
                "software_crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads=1", "-q"])
            .env(CRASH_CHILD_ENV, dir.path());
        floor = conformance::counter_survives_sigkill(child, floor, &mut || {
            Box::new(open_child_state(dir.path()))
        });
    }
}
