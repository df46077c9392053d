//! Shared-key (HMAC-SHA256) USIG keys: one key for the whole cluster, so one replica's
//! USIG checks another's UIs, a holder of another key checks none, and nobody checks
//! them from the published identity alone.

use usig::{
    MemoryUsig, SHARED_KEY_MAGIC, SigningKey, SoftwareUsig, Usig, UsigIdentity, VerifyError,
    conformance::test_digest, verify_ui,
};

#[test]
fn replicas_sharing_a_key_check_each_others_uis() {
    let key = SigningKey::generate_shared().unwrap();
    let mut replica_0 = MemoryUsig::new(0, key.key_bytes()).unwrap();
    let replica_1 = MemoryUsig::new(1, key.key_bytes()).unwrap();
    let ui = replica_0.create_ui(&test_digest(1)).unwrap();
    assert_eq!(ui.cert.len(), usig::HMAC_SHA256_CERT_LEN);
    assert_eq!(
        replica_0.identity(),
        replica_1.identity(),
        "one key, one id"
    );
    let checker = replica_1.verifier().unwrap();
    checker.verify(0, &test_digest(1), &ui).unwrap();
    // Bound to the replica it was made for, like any UI.
    assert_eq!(
        checker.verify(1, &test_digest(1), &ui),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn another_key_or_the_identity_alone_checks_nothing() {
    let key = SigningKey::generate_shared().unwrap();
    let other = SigningKey::generate_shared().unwrap();
    let ecdsa = SigningKey::generate().unwrap();
    let identity = key.identity();
    assert!(matches!(identity, UsigIdentity::HmacSha256 { .. }));
    assert_ne!(identity, other.identity());
    let mut usig = MemoryUsig::new(0, key.key_bytes()).unwrap();
    let ui = usig.create_ui(&test_digest(1)).unwrap();
    assert_eq!(
        verify_ui(&identity, 0, &test_digest(1), &ui),
        Err(VerifyError::SharedKeyNeeded)
    );
    assert_eq!(
        other.verifier_for(&identity).err(),
        Some(VerifyError::OtherSharedKey)
    );
    assert_eq!(
        ecdsa.verifier_for(&identity).err(),
        Some(VerifyError::SharedKeyNeeded)
    );
    // A shared-key holder still checks ECDSA identities from their public keys.
    let mut signed = MemoryUsig::new(2, ecdsa.key_bytes()).unwrap();
    let ecdsa_ui = signed.create_ui(&test_digest(2)).unwrap();
    key.verifier_for(&ecdsa.identity())
        .unwrap()
        .verify(2, &test_digest(2), &ecdsa_ui)
        .unwrap();
}

#[test]
fn key_file_round_trips_and_malformed_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usig.key");
    let key = SigningKey::generate_shared().unwrap();
    key.write_file(&path).unwrap();
    let read = SigningKey::read_file(&path).unwrap();
    assert!(read.is_shared());
    assert_eq!(read.identity(), key.identity());
    for len in [0, 31, 33] {
        let mut bytes = SHARED_KEY_MAGIC.to_vec();
        bytes.extend(std::iter::repeat_n(7u8, len));
        assert!(
            SigningKey::from_bytes(&bytes).is_err(),
            "{len} secret bytes"
        );
    }
    assert!(SigningKey::from_pkcs8(key.key_bytes()).is_err());
}

#[test]
fn a_state_file_keeps_its_key_kind() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate_shared().unwrap();
    let last = {
        let mut usig = SoftwareUsig::open(dir.path(), 4, key.key_bytes()).unwrap();
        usig.create_ui(&test_digest(1)).unwrap();
        usig.create_ui(&test_digest(2)).unwrap()
    };
    let mut reopened = SoftwareUsig::open(dir.path(), 4, key.key_bytes()).unwrap();
    assert_eq!(reopened.last_issued().unwrap().ui, last);
    assert_eq!(reopened.create_ui(&test_digest(3)).unwrap().counter, 3);
    drop(reopened);
    // And the other way round: an ECDSA state refuses a shared key.
    let ecdsa_dir = tempfile::tempdir().unwrap();
    let ecdsa = SigningKey::generate().unwrap();
    SoftwareUsig::open(ecdsa_dir.path(), 4, ecdsa.key_bytes()).unwrap();
    assert!(matches!(
        SoftwareUsig::open(ecdsa_dir.path(), 4, key.key_bytes()),
        Err(usig::UsigError::KeyMismatch { .. })
    ));
    for wrong in [
        SigningKey::generate_shared().unwrap(),
        SigningKey::generate().unwrap(),
    ] {
        assert!(matches!(
            SoftwareUsig::open(dir.path(), 4, wrong.key_bytes()),
            Err(usig::UsigError::KeyMismatch { .. })
        ));
    }
}

#[test]
fn advance_and_skip_keep_to_this_replicas_uis() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate_shared().unwrap();
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    let mut peer = MemoryUsig::new(1, key.key_bytes()).unwrap();
    let mut later = MemoryUsig::new(0, key.key_bytes()).unwrap();
    for i in 0..5 {
        peer.create_ui(&test_digest(i)).unwrap();
        later.create_ui(&test_digest(i)).unwrap();
    }
    // The same key made it, for replica 1: not a UI of replica 0's USIG.
    assert!(matches!(
        usig.advance_to(&peer.last_issued().unwrap()),
        Err(usig::UsigError::NotOurs(_))
    ));
    usig.advance_to(&later.last_issued().unwrap()).unwrap();
    assert_eq!(usig.last_issued(), later.last_issued());
    usig.skip_to(9).unwrap();
    let skipped = usig.last_issued().unwrap();
    assert_eq!(skipped.ui.counter, 9);
    assert_eq!(skipped.ui.cert.len(), usig::HMAC_SHA256_CERT_LEN);
    usig.verifier()
        .unwrap()
        .verify(0, &skipped.digest, &skipped.ui)
        .unwrap();
    drop(usig);
    let mut reopened = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    assert_eq!(reopened.last_issued(), Some(skipped));
    assert_eq!(reopened.create_ui(&test_digest(9)).unwrap().counter, 10);
}
