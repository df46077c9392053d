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

/// A fresh key of the kind under test.
fn fresh_key(shared: bool) -> SigningKey {
    if shared {
        SigningKey::generate_shared().expect("generate shared key")
    } else {
        SigningKey::generate().expect("generate key")
    }
}

/// Fresh state directory and key per instance; the directories live as long as the
/// factory, that is, the test.
fn software_factory(shared: bool) -> impl FnMut(ReplicaId) -> Box<dyn Usig> {
    let mut dirs: Vec<TempDir> = Vec::new();
    move |replica| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = fresh_key(shared);
        let usig = SoftwareUsig::open(dir.path(), replica, key.key_bytes()).expect("open");
        dirs.push(dir);
        Box::new(usig)
    }
}

fn run(shared: bool, check: fn(Factory<'_>)) {
    let mut factory = software_factory(shared);
    check(&mut factory);
}

// Each check with both kinds of key: `key_pair::…` and `shared_key::…`.
usig::conformance_tests_for_both_key_kinds!(run);

#[test]
fn software_verify_rejects_other_domain_tag() {
    let key = SigningKey::generate().expect("generate key");
    let rng = SystemRandom::new();
    let key_pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.key_bytes(), &rng)
            .expect("parse key");
    let verifier = key.verifier_for(&key.identity()).expect("verifier");
    conformance::verify_rejects_other_domain_tag(&verifier, 3, &mut |bytes| {
        key_pair.sign(&rng, bytes).expect("sign").as_ref().to_vec()
    });
}

#[test]
fn shared_key_verify_rejects_other_domain_tag() {
    let key = SigningKey::generate_shared().expect("generate shared key");
    let secret = &key.key_bytes()[usig::SHARED_KEY_MAGIC.len()..];
    let mac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let verifier = key.verifier_for(&key.identity()).expect("verifier");
    conformance::verify_rejects_other_domain_tag(&verifier, 3, &mut |bytes| {
        ring::hmac::sign(&mac_key, bytes).as_ref().to_vec()
    });
}

fn open_child_state(dir: &Path) -> SoftwareUsig {
    let key = SigningKey::read_file(&dir.join(KEY_FILE)).expect("read key");
    SoftwareUsig::open(dir, 2, key.key_bytes()).expect("open state")
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
    counter_survives_sigkill(false);
}

#[test]
fn shared_key_counter_survives_sigkill() {
    counter_survives_sigkill(true);
}

/// The child reads whichever kind of key the parent wrote.
fn counter_survives_sigkill(shared: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = fresh_key(shared);
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
