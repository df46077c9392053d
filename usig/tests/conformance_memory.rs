//! The conformance suite run against `MemoryUsig` (everything but the crash test: it
//! keeps nothing across a restart by design).

use usig::conformance::{self, Factory};
use usig::{MemoryUsig, ReplicaId, SigningKey, Usig};

fn memory_factory(replica: ReplicaId) -> Box<dyn Usig> {
    let key = SigningKey::generate().expect("generate key");
    Box::new(MemoryUsig::new(replica, key.pkcs8()).expect("memory usig"))
}

fn run(check: fn(Factory<'_>)) {
    check(&mut memory_factory);
}

#[test]
fn memory_counters_start_at_one_and_increase() {
    run(conformance::counters_start_at_one_and_increase);
}

#[test]
fn memory_no_two_uis_share_a_counter() {
    run(conformance::no_two_uis_share_a_counter);
}

#[test]
fn memory_issued_uis_verify() {
    run(conformance::issued_uis_verify);
}

#[test]
fn memory_last_issued_is_the_latest_ui() {
    run(conformance::last_issued_is_the_latest_ui);
}

#[test]
fn memory_verify_rejects_changed_digest() {
    run(conformance::verify_rejects_changed_digest);
}

#[test]
fn memory_verify_rejects_changed_counter() {
    run(conformance::verify_rejects_changed_counter);
}

#[test]
fn memory_verify_rejects_changed_replica() {
    run(conformance::verify_rejects_changed_replica);
}

#[test]
fn memory_verify_rejects_changed_cert() {
    run(conformance::verify_rejects_changed_cert);
}

#[test]
fn memory_verify_rejects_other_replicas_key() {
    run(conformance::verify_rejects_other_replicas_key);
}
