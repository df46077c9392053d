//! The conformance suite run against `MemoryUsig` (everything but the crash test: it
//! keeps nothing across a restart by design), with an ECDSA P-256 key (`memory_…`) and
//! with a shared HMAC-SHA256 key (`shared_key::memory_…`).

use usig::conformance::{self, Factory};
use usig::{MemoryUsig, ReplicaId, SigningKey, Usig};

fn memory_factory(shared: bool) -> impl FnMut(ReplicaId) -> Box<dyn Usig> {
    move |replica| {
        let key = if shared {
            SigningKey::generate_shared().expect("generate shared key")
        } else {
            SigningKey::generate().expect("generate key")
        };
        Box::new(MemoryUsig::new(replica, key.key_bytes()).expect("memory usig"))
    }
}

fn run(shared: bool, check: fn(Factory<'_>)) {
    check(&mut memory_factory(shared));
}

macro_rules! conformance_tests {
    ($($name:ident => $check:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(false, conformance::$check);
            }
        )*
        mod shared_key {
            $(
                #[test]
                fn $name() {
                    super::run(true, usig::conformance::$check);
                }
            )*
        }
    };
}

conformance_tests! {
    memory_counters_start_at_one_and_increase => counters_start_at_one_and_increase,
    memory_no_two_uis_share_a_counter => no_two_uis_share_a_counter,
    memory_issued_uis_verify => issued_uis_verify,
    memory_last_issued_is_the_latest_ui => last_issued_is_the_latest_ui,
    memory_verify_rejects_changed_digest => verify_rejects_changed_digest,
    memory_verify_rejects_changed_counter => verify_rejects_changed_counter,
    memory_verify_rejects_changed_replica => verify_rejects_changed_replica,
    memory_verify_rejects_changed_cert => verify_rejects_changed_cert,
    memory_verify_rejects_other_replicas_key => verify_rejects_other_replicas_key,
}
