//! The conformance suite run against `MemoryUsig` (everything but the crash test: it
//! keeps nothing across a restart by design), with an ECDSA P-256 key (`key_pair::…`) and
//! with a shared HMAC-SHA256 key (`shared_key::…`).

use usig::conformance::Factory;
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

// Each check with both kinds of key: `key_pair::…` and `shared_key::…`.
usig::conformance_tests_for_both_key_kinds!(run);
