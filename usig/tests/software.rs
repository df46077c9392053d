//! Behaviour specific to `SoftwareUsig`'s state file: restart, refusal of foreign or
//! damaged state, torn-write recovery, locking; and the key file.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use usig::conformance::test_digest;
use usig::{STATE_FILE_NAME, SigningKey, SoftwareUsig, Usig, UsigError, verify_ui};

/// Layout of the state file (see the `software` module docs): header block, two slots.
const BLOCK_LEN: u64 = 512;
const FILE_LEN: u64 = 3 * BLOCK_LEN;

fn slot_offset(counter: u64) -> u64 {
    BLOCK_LEN * (1 + counter % 2)
}

fn issue(usig: &mut SoftwareUsig, count: u64) -> u64 {
    let mut last = 0;
    for _ in 0..count {
        last = usig
            .create_ui(&test_digest(last + 1))
            .expect("create_ui")
            .counter;
    }
    last
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read");
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).expect("write");
}

#[test]
fn software_restart_continues_after_last_issued() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    for round in 0..4u64 {
        let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
        let last = usig.last_issued();
        assert_eq!(last.as_ref().map_or(0, |l| l.ui.counter), round * 5);
        if let Some(last) = last {
            assert_eq!(last.digest, test_digest(last.ui.counter));
            verify_ui(&key.identity(), 1, &last.digest, &last.ui).unwrap();
        }
        for expected in round * 5 + 1..=round * 5 + 5 {
            let ui = usig.create_ui(&test_digest(expected)).unwrap();
            assert_eq!(ui.counter, expected);
        }
    }
    assert_eq!(
        fs::metadata(dir.path().join(STATE_FILE_NAME))
            .unwrap()
            .len(),
        FILE_LEN
    );
}

#[test]
fn software_refuses_state_of_another_replica() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    drop(SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap());
    let err = SoftwareUsig::open(dir.path(), 2, key.key_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            UsigError::ReplicaMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn software_refuses_state_of_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    issue(&mut usig, 3);
    drop(usig);
    let err = SoftwareUsig::open(dir.path(), 1, other.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::KeyMismatch { .. }), "{err}");
}

#[test]
fn software_refuses_truncated_or_extended_state() {
    let key = SigningKey::generate().unwrap();
    for len in [0, 1, BLOCK_LEN, FILE_LEN - 1, FILE_LEN + 1] {
        let dir = tempfile::tempdir().unwrap();
        let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
        issue(&mut usig, 3);
        drop(usig);
        let path = dir.path().join(STATE_FILE_NAME);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let err = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap_err();
        assert!(
            matches!(err, UsigError::CorruptState { .. }),
            "len {len}: {err}"
        );
    }
}

#[test]
fn software_refuses_corrupt_header() {
    let key = SigningKey::generate().unwrap();
    for offset in [0, 17, 30, 100, 200, BLOCK_LEN - 1] {
        let dir = tempfile::tempdir().unwrap();
        let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
        issue(&mut usig, 2);
        drop(usig);
        flip_byte(&dir.path().join(STATE_FILE_NAME), offset);
        let err = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap_err();
        assert!(
            matches!(err, UsigError::CorruptState { .. }),
            "offset {offset}: {err}"
        );
    }
}

#[test]
fn software_refuses_state_with_both_records_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    issue(&mut usig, 7);
    drop(usig);
    let path = dir.path().join(STATE_FILE_NAME);
    flip_byte(&path, slot_offset(7) + 9);
    flip_byte(&path, slot_offset(6) + 60);
    let err = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::CorruptState { .. }), "{err}");
}

#[test]
fn software_refuses_zeroed_state() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    drop(SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap());
    fs::write(
        dir.path().join(STATE_FILE_NAME),
        vec![0u8; FILE_LEN as usize],
    )
    .unwrap();
    let err = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::CorruptState { .. }), "{err}");
}

/// A crash tears the write of record c+1, whose fdatasync never returned, so that UI
/// was never released: the state continues from record c.
#[test]
fn software_recovers_from_a_torn_record_write() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    assert_eq!(issue(&mut usig, 5), 5);
    drop(usig);
    flip_byte(&dir.path().join(STATE_FILE_NAME), slot_offset(5) + 100);
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    let last = usig.last_issued().unwrap();
    assert_eq!(last.ui.counter, 4);
    verify_ui(&key.identity(), 0, &last.digest, &last.ui).unwrap();
    assert_eq!(usig.create_ui(&test_digest(50)).unwrap().counter, 5);
}

/// An old record spliced into the slot that does not hold the newest one (a partial
/// rollback of the file) changes nothing: the newest valid record is the last issued
/// value, and the next UI continues above it.
#[test]
fn software_ignores_an_old_record_beside_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let path = dir.path().join(STATE_FILE_NAME);
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    issue(&mut usig, 1);
    let old = fs::read(&path).unwrap();
    issue(&mut usig, 3);
    drop(usig);
    // Slot 1 back to counter 1 next to slot 0 at counter 4.
    let start = slot_offset(1) as usize;
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&old[start..start + BLOCK_LEN as usize], start as u64)
        .unwrap();
    let mut usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 4);
    assert_eq!(usig.create_ui(&test_digest(5)).unwrap().counter, 5);
}

/// Two slots holding the same counter cannot come from any sequence of writes.
#[test]
fn software_refuses_both_slots_at_one_counter() {
    let key = SigningKey::generate().unwrap();
    // Strictly: counter 1 into slot 1, counter 2 into slot 0.
    let strict = tempfile::tempdir().unwrap();
    let mut usig = SoftwareUsig::open(strict.path(), 0, key.key_bytes()).unwrap();
    issue(&mut usig, 2);
    drop(usig);
    // Deferred: counters 1 and 2, one sync, so counter 2 lands in slot 1.
    let deferred = tempfile::tempdir().unwrap();
    let mut usig = SoftwareUsig::open(deferred.path(), 0, key.key_bytes()).unwrap();
    usig.create_ui_deferred(&test_digest(1)).unwrap();
    usig.create_ui_deferred(&test_digest(2)).unwrap();
    usig.sync().unwrap();
    drop(usig);
    let slot1 = fs::read(deferred.path().join(STATE_FILE_NAME)).unwrap();
    let start = slot_offset(1) as usize;
    let file = OpenOptions::new()
        .write(true)
        .open(strict.path().join(STATE_FILE_NAME))
        .unwrap();
    file.write_all_at(&slot1[start..start + BLOCK_LEN as usize], start as u64)
        .unwrap();
    let err = SoftwareUsig::open(strict.path(), 0, key.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::CorruptState { .. }), "{err}");
}

/// The replica's group commit: deferred UIs anchored in the caller's synced log. Written
/// back (no sync), the last one survives a process crash; not written back, the file
/// stays at the last write and the caller's log moves it up with `advance_to`, by any
/// number of steps; a torn write of the scratch slot leaves the synced slot intact.
#[test]
fn software_write_back_survives_a_process_crash_and_advance_covers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let mut logged = None;
    {
        let mut usig = SoftwareUsig::open(dir.path(), 2, key.key_bytes()).unwrap();
        issue(&mut usig, 3);
        for c in 4..=10 {
            assert_eq!(usig.create_ui_deferred(&test_digest(c)).unwrap().counter, c);
        }
        usig.write_back().unwrap();
        assert!(usig.needs_sync(), "written back is not synced");
        for c in 11..=14 {
            let ui = usig.create_ui_deferred(&test_digest(c)).unwrap();
            logged = Some(usig::IssuedUi {
                digest: test_digest(c),
                ui,
            });
        }
        // Dropped: a SIGKILL after the caller's log sync, before the next write-back.
    }
    let mut usig = SoftwareUsig::open(dir.path(), 2, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 10);
    usig.advance_to(&logged.unwrap()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 14);
    // Synced at 14 by advance_to; write back 15..17 into the scratch slot, then tear it.
    for c in 15..=17 {
        usig.create_ui_deferred(&test_digest(c)).unwrap();
        usig.write_back().unwrap();
    }
    drop(usig);
    let path = dir.path().join(STATE_FILE_NAME);
    let bytes = fs::read(&path).unwrap();
    let (mut s0, mut s1) = (None, None);
    for (slot, out) in [(0u64, &mut s0), (1, &mut s1)] {
        let at = (BLOCK_LEN * (1 + slot)) as usize;
        *out = Some(u64::from_be_bytes(
            bytes[at + 8..at + 16].try_into().unwrap(),
        ));
    }
    let scratch = if s0 == Some(17) { 0 } else { 1 };
    assert_eq!([s0, s1][scratch as usize], Some(17));
    assert_eq!([s0, s1][1 - scratch as usize], Some(14));
    let usig = SoftwareUsig::open(dir.path(), 2, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 17);
    drop(usig);
    // Reopening synced 17 into place; a torn write of the next scratch slot (holding
    // 14 now) leaves 17.
    let reopened = fs::read(&path).unwrap();
    let other = 1 - scratch;
    let at = BLOCK_LEN * (1 + other);
    assert_eq!(
        u64::from_be_bytes(
            reopened[at as usize + 8..at as usize + 16]
                .try_into()
                .unwrap()
        ),
        14
    );
    flip_byte(&path, at + 30);
    let mut usig = SoftwareUsig::open(dir.path(), 2, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 17);
    assert_eq!(usig.create_ui(&test_digest(18)).unwrap().counter, 18);
}

#[test]
fn software_refuses_a_second_open_of_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let usig = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
    let err = SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::Locked { .. }), "{err}");
    drop(usig);
    SoftwareUsig::open(dir.path(), 0, key.key_bytes()).unwrap();
}

#[test]
fn software_refuses_a_missing_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let err = SoftwareUsig::open(&dir.path().join("absent"), 0, key.key_bytes()).unwrap_err();
    assert!(matches!(err, UsigError::Io { .. }), "{err}");
}

#[test]
fn software_refuses_an_invalid_key() {
    let dir = tempfile::tempdir().unwrap();
    let err = SoftwareUsig::open(dir.path(), 0, b"not a key").unwrap_err();
    assert!(matches!(err, UsigError::InvalidKey(_)), "{err}");
}

#[test]
fn key_file_round_trips_with_owner_only_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usig.key");
    let key = SigningKey::generate().unwrap();
    key.write_file(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let read = SigningKey::read_file(&path).unwrap();
    assert_eq!(read.identity(), key.identity());
    assert_eq!(read.key_bytes(), key.key_bytes());
    let err = key.write_file(&path).unwrap_err();
    assert!(matches!(err, UsigError::Io { .. }), "no overwrite: {err}");
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usig.key");
    SigningKey::generate().unwrap().write_file(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let err = SigningKey::read_file(&path).unwrap_err();
    assert!(
        matches!(err, UsigError::KeyFilePermissions { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn key_file_with_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usig.key");
    fs::write(&path, b"garbage").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    let err = SigningKey::read_file(&path).unwrap_err();
    assert!(matches!(err, UsigError::InvalidKey(_)), "{err}");
}

/// Group commit (`create_ui_deferred` + `sync`): nothing of an unsynced UI is on disk, so
/// a crash before `sync` leaves the counter where it was; after `sync` the last of the
/// deferred UIs is durable.
#[test]
fn software_deferred_ui_is_durable_only_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    {
        let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
        issue(&mut usig, 3);
        let ui = usig.create_ui_deferred(&test_digest(4)).unwrap();
        assert_eq!(ui.counter, 4);
        assert!(usig.needs_sync());
        // Dropped without `sync`: a crash before the group commit.
    }
    {
        let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
        assert_eq!(usig.last_issued().unwrap().ui.counter, 3);
        assert_eq!(usig.create_ui_deferred(&test_digest(4)).unwrap().counter, 4);
        assert_eq!(usig.create_ui_deferred(&test_digest(5)).unwrap().counter, 5);
        usig.sync().unwrap();
        assert!(!usig.needs_sync());
    }
    let usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    let last = usig.last_issued().unwrap();
    assert_eq!(last.ui.counter, 5);
    verify_ui(&key.identity(), 1, &test_digest(5), &last.ui).unwrap();
}

/// `advance_to`: a UI the caller logged but whose counter the USIG had not yet synced
/// (power loss between the two syncs) moves the counter up; a UI of another key or for
/// another digest is refused; an old one changes nothing.
#[test]
fn software_advances_only_to_its_own_next_ui() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let logged = {
        let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
        issue(&mut usig, 2);
        let ui = usig.create_ui_deferred(&test_digest(3)).unwrap();
        usig::IssuedUi {
            digest: test_digest(3),
            ui,
        }
    };
    let foreign = {
        let odir = tempfile::tempdir().unwrap();
        let mut o = SoftwareUsig::open(odir.path(), 1, other.key_bytes()).unwrap();
        issue(&mut o, 2);
        usig::IssuedUi {
            digest: test_digest(3),
            ui: o.create_ui(&test_digest(3)).unwrap(),
        }
    };
    let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 2);
    assert!(matches!(
        usig.advance_to(&foreign),
        Err(UsigError::NotOurs(_))
    ));
    let mut forged_digest = logged.clone();
    forged_digest.digest = test_digest(99);
    assert!(usig.advance_to(&forged_digest).is_err());
    usig.advance_to(&logged).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 3);
    // Idempotent, and never backwards.
    usig.advance_to(&logged).unwrap();
    assert_eq!(usig.create_ui(&test_digest(4)).unwrap().counter, 4);
    drop(usig);
    let usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    assert_eq!(usig.last_issued().unwrap().ui.counter, 4);
}

#[test]
fn software_skip_spends_every_value_up_to_the_lease_durably() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    {
        let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
        assert_eq!(issue(&mut usig, 3), 3);
        usig.skip_to(40).unwrap();
        // Never back: a lower target changes nothing.
        usig.skip_to(10).unwrap();
        assert_eq!(usig.spent_counter().unwrap(), 40);
    }
    let mut usig = SoftwareUsig::open(dir.path(), 1, key.key_bytes()).unwrap();
    let last = usig.last_issued().expect("the skip is the last UI");
    assert_eq!(last.ui.counter, 40);
    assert_eq!(last.digest, usig::SKIP_DIGEST);
    verify_ui(&key.identity(), 1, &last.digest, &last.ui).unwrap();
    let next = usig.create_ui(&test_digest(41)).unwrap();
    assert_eq!(next.counter, 41);
}
