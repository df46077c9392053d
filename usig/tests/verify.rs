//! Verification as a pure function: property tests that any single-field change to a
//! valid (identity, replica, digest, UI) fails, malformed identities, and the wire
//! encoding of the public types.

use std::sync::OnceLock;

use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use usig::{
    Digest, IssuedUi, MemoryUsig, ReplicaId, SigningKey, Ui, Usig, UsigIdentity, Verifier,
    VerifyError, certified_bytes, verify_ui,
};

struct Keys {
    key: SigningKey,
    key_pair: EcdsaKeyPair,
    other: UsigIdentity,
    rng: SystemRandom,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::generate().unwrap();
        let rng = SystemRandom::new();
        let key_pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.key_bytes(), &rng)
                .unwrap();
        let other = SigningKey::generate().unwrap().identity();
        Keys {
            key,
            key_pair,
            other,
            rng,
        }
    })
}

/// A valid UI for arbitrary fields (the backends only ever sign the next counter).
fn signed(replica: ReplicaId, counter: u64, digest: &Digest) -> Ui {
    let keys = keys();
    let cert = keys
        .key_pair
        .sign(&keys.rng, &certified_bytes(replica, counter, digest))
        .unwrap();
    Ui {
        counter,
        cert: cert.as_ref().to_vec(),
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Replica(ReplicaId),
    Counter(u64),
    DigestBit(usize),
    CertBit(usize),
    CertTruncate(usize),
    CertExtend(Vec<u8>),
    Identity,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<ReplicaId>().prop_map(Mutation::Replica),
        any::<u64>().prop_map(Mutation::Counter),
        (0..256usize).prop_map(Mutation::DigestBit),
        (0..512usize).prop_map(Mutation::CertBit),
        (0..64usize).prop_map(Mutation::CertTruncate),
        proptest::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::CertExtend),
        Just(Mutation::Identity),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn valid_ui_verifies(replica in any::<ReplicaId>(), counter in 1..=u64::MAX, digest in any::<Digest>()) {
        let ui = signed(replica, counter, &digest);
        prop_assert_eq!(verify_ui(&keys().key.identity(), replica, &digest, &ui), Ok(()));
    }

    #[test]
    fn any_single_field_mutation_fails_verification(
        replica in any::<ReplicaId>(),
        counter in 1..=u64::MAX,
        digest in any::<Digest>(),
        mutation in mutation(),
    ) {
        let mut ui = signed(replica, counter, &digest);
        let mut identity = keys().key.identity();
        let (mut replica_seen, mut digest_seen) = (replica, digest);
        match mutation {
            Mutation::Replica(other) => {
                prop_assume!(other != replica);
                replica_seen = other;
            }
            Mutation::Counter(other) => {
                prop_assume!(other != counter);
                ui.counter = other;
            }
            Mutation::DigestBit(bit) => digest_seen[bit / 8] ^= 1 << (bit % 8),
            Mutation::CertBit(bit) => ui.cert[bit / 8] ^= 1 << (bit % 8),
            Mutation::CertTruncate(len) => ui.cert.truncate(len),
            Mutation::CertExtend(extra) => ui.cert.extend(extra),
            Mutation::Identity => identity = keys().other.clone(),
        }
        prop_assert!(verify_ui(&identity, replica_seen, &digest_seen, &ui).is_err());
    }
}

#[test]
fn counter_zero_is_never_valid() {
    let digest = [5; 32];
    let ui = signed(0, 0, &digest);
    assert_eq!(
        verify_ui(&keys().key.identity(), 0, &digest, &ui),
        Err(VerifyError::ZeroCounter)
    );
}

#[test]
fn malformed_identities_are_refused() {
    let UsigIdentity::EcdsaP256 { public_key } = keys().key.identity() else {
        unreachable!("a software key has an ECDSA identity")
    };
    let mut wrong_tag = public_key.clone();
    wrong_tag[0] = 0x02;
    for bad in [
        Vec::new(),
        public_key[..33].to_vec(),
        [public_key.clone(), vec![0]].concat(),
        wrong_tag,
    ] {
        let identity = UsigIdentity::EcdsaP256 { public_key: bad };
        assert_eq!(
            Verifier::new(&identity).err(),
            Some(VerifyError::InvalidPublicKey)
        );
    }
    // A well-formed encoding of a point off the curve never verifies anything.
    let mut off_curve = public_key.clone();
    off_curve[64] ^= 1;
    let identity = UsigIdentity::EcdsaP256 {
        public_key: off_curve,
    };
    let digest = [1; 32];
    assert_eq!(
        verify_ui(&identity, 0, &digest, &signed(0, 1, &digest)),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn public_types_round_trip_through_bincode() {
    let config = bincode::config::standard();
    let key = SigningKey::generate().unwrap();
    let mut usig = MemoryUsig::new(4, key.key_bytes()).unwrap();
    let digest = [9; 32];
    let ui = usig.create_ui(&digest).unwrap();
    let issued = usig.last_issued().unwrap();
    let identity = usig.identity();

    let bytes = bincode::serde::encode_to_vec(&ui, config).unwrap();
    // varint counter (1) + length prefix (1) + 64 signature bytes, no per-byte overhead.
    assert_eq!(bytes.len(), 66);
    let (decoded, _): (Ui, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(decoded, ui);

    let bytes = bincode::serde::encode_to_vec(&identity, config).unwrap();
    let (decoded, _): (UsigIdentity, _) =
        bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(decoded, identity);

    let bytes = bincode::serde::encode_to_vec(&issued, config).unwrap();
    let (decoded, _): (IssuedUi, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(decoded, issued);
    verify_ui(&identity, 4, &digest, &decoded.ui).unwrap();
}
