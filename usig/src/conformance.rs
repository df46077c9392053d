//! The conformance suite every USIG backend passes (software, memory, and later the
//! separate-process and TPM backends), after diem's one-suite-many-deployments model.
//!
//! It checks the properties MinBFT section 3 asks of the USIG and that the protocol's
//! safety with 2f+1 replicas rests on: counters start at 1 and grow by exactly one, no
//! two UIs of a replica share a counter, a UI verifies only for exactly the (replica,
//! counter, digest) it was made for and only under its replica's key, and the counter
//! survives a crash of the process that drives the USIG.
//!
//! Each check is a plain function that panics on failure; a backend's test file calls
//! each from a `#[test]` named after the backend (`software_counters_start_at_one`).
//! `factory(replica)` must return a USIG for `replica` with fresh state and its own key,
//! different from every other instance it returned.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::{
    DOMAIN_TAG, Digest, ReplicaId, Ui, Usig, UsigIdentity, Verifier, certified_bytes, verify_ui,
};

/// Generates one `#[test]` per check that needs no more than a factory, in two modules:
/// `key_pair` (USIGs with ECDSA P-256 keys) and `shared_key` (with shared HMAC-SHA256
/// keys). `$run(shared, check)` must run `check` with a factory of the backend under
/// test whose USIGs have keys of that kind.
#[macro_export]
macro_rules! conformance_tests_for_both_key_kinds {
    ($run:ident) => {
        $crate::conformance_tests_for_both_key_kinds!(@module key_pair, false, $run);
        $crate::conformance_tests_for_both_key_kinds!(@module shared_key, true, $run);
    };
    (@module $module:ident, $shared:expr, $run:ident) => {
        mod $module {
            $crate::conformance_tests_for_both_key_kinds!(
                @tests $shared, $run,
                counters_start_at_one_and_increase,
                no_two_uis_share_a_counter,
                issued_uis_verify,
                last_issued_is_the_latest_ui,
                verify_rejects_changed_digest,
                verify_rejects_changed_counter,
                verify_rejects_changed_replica,
                verify_rejects_changed_cert,
                verify_rejects_other_replicas_key
            );
        }
    };
    (@tests $shared:expr, $run:ident, $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                super::$run($shared, $crate::conformance::$check);
            }
        )*
    };
}

/// The factory every check takes; see the module documentation for its contract.
pub type Factory<'a> = &'a mut dyn FnMut(ReplicaId) -> Box<dyn Usig>;

/// Prefix of the lines a crash child prints for each UI it was given.
pub const CRASH_CHILD_LINE_PREFIX: &str = "usig-conformance-ui";

/// A distinct digest per index, so that UIs of one run never certify the same message.
pub fn test_digest(index: u64) -> Digest {
    Sha256::digest(index.to_be_bytes()).into()
}

fn verifies(verifier: &Verifier, replica: ReplicaId, digest: &Digest, ui: &Ui) -> bool {
    verifier.verify(replica, digest, ui).is_ok()
}

/// What checks `usig`'s UIs: its public identity, or for a shared key the key itself.
fn verifier_of(usig: &dyn Usig) -> Verifier {
    usig.verifier().expect("identity of a working USIG parses")
}

pub fn counters_start_at_one_and_increase(factory: Factory<'_>) {
    let mut usig = factory(0);
    for expected in 1..=64u64 {
        let ui = usig.create_ui(&test_digest(expected)).expect("create_ui");
        assert_eq!(ui.counter, expected, "counters start at 1 and grow by one");
    }
}

pub fn no_two_uis_share_a_counter(factory: Factory<'_>) {
    let mut usig = factory(0);
    let mut counters = BTreeSet::new();
    // The same digest repeatedly as well: a resent message still gets a new counter.
    for index in 0..256u64 {
        let digest = test_digest(index % 4);
        let ui = usig.create_ui(&digest).expect("create_ui");
        assert!(
            counters.insert(ui.counter),
            "counter {} issued twice",
            ui.counter
        );
    }
}

pub fn issued_uis_verify(factory: Factory<'_>) {
    for replica in [0, 1, 2, ReplicaId::MAX] {
        let mut usig = factory(replica);
        assert_eq!(usig.replica(), replica);
        let identity = usig.identity();
        let verifier = verifier_of(&*usig);
        for index in 1..=8 {
            let digest = test_digest(index);
            let ui = usig.create_ui(&digest).expect("create_ui");
            if matches!(identity, UsigIdentity::HmacSha256 { .. }) {
                assert_eq!(
                    verify_ui(&identity, replica, &digest, &ui),
                    Err(crate::VerifyError::SharedKeyNeeded),
                    "a shared key's id alone checks nothing"
                );
            } else {
                verify_ui(&identity, replica, &digest, &ui).expect("fresh UI verifies");
            }
            verifier
                .verify(replica, &digest, &ui)
                .expect("fresh UI verifies");
        }
        assert_eq!(usig.identity(), identity, "identity is stable");
    }
}

pub fn last_issued_is_the_latest_ui(factory: Factory<'_>) {
    let mut usig = factory(0);
    assert_eq!(usig.last_issued(), None, "a fresh USIG has issued nothing");
    for index in 1..=8 {
        let digest = test_digest(index);
        let ui = usig.create_ui(&digest).expect("create_ui");
        let last = usig.last_issued().expect("a UI was issued");
        assert_eq!((last.digest, &last.ui), (digest, &ui));
    }
}

pub fn verify_rejects_changed_digest(factory: Factory<'_>) {
    let mut usig = factory(0);
    let verifier = verifier_of(&*usig);
    let digest = test_digest(1);
    let ui = usig.create_ui(&digest).expect("create_ui");
    for bit in 0..256 {
        let mut changed = digest;
        changed[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !verifies(&verifier, 0, &changed, &ui),
            "digest bit {bit} flipped"
        );
    }
    assert!(!verifies(&verifier, 0, &test_digest(2), &ui));
}

pub fn verify_rejects_changed_counter(factory: Factory<'_>) {
    let mut usig = factory(0);
    let verifier = verifier_of(&*usig);
    let digest = test_digest(1);
    usig.create_ui(&test_digest(0)).expect("create_ui");
    let ui = usig.create_ui(&digest).expect("create_ui");
    assert_eq!(ui.counter, 2);
    for counter in [0, 1, 3, 4, 2 | 1 << 32, 2 << 56, u64::MAX] {
        let changed = Ui {
            counter,
            cert: ui.cert.clone(),
        };
        assert!(
            !verifies(&verifier, 0, &digest, &changed),
            "counter 2 changed to {counter}"
        );
    }
}

pub fn verify_rejects_changed_replica(factory: Factory<'_>) {
    let mut usig = factory(1);
    let verifier = verifier_of(&*usig);
    let digest = test_digest(1);
    let ui = usig.create_ui(&digest).expect("create_ui");
    for replica in [0, 2, 3, 1 | 1 << 16, ReplicaId::MAX] {
        assert!(
            !verifies(&verifier, replica, &digest, &ui),
            "replica 1 changed to {replica}"
        );
    }
}

pub fn verify_rejects_changed_cert(factory: Factory<'_>) {
    let mut usig = factory(0);
    let verifier = verifier_of(&*usig);
    let digest = test_digest(1);
    let ui = usig.create_ui(&digest).expect("create_ui");
    let with_cert = |cert: Vec<u8>| Ui {
        counter: ui.counter,
        cert,
    };
    for bit in 0..ui.cert.len() * 8 {
        let mut cert = ui.cert.clone();
        cert[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !verifies(&verifier, 0, &digest, &with_cert(cert)),
            "cert bit {bit} flipped"
        );
    }
    for len in [0, 1, ui.cert.len() / 2, ui.cert.len() - 1] {
        let cert = ui.cert[..len].to_vec();
        assert!(
            !verifies(&verifier, 0, &digest, &with_cert(cert)),
            "cert truncated to {len}"
        );
    }
    let mut longer = ui.cert.clone();
    longer.push(0);
    assert!(!verifies(&verifier, 0, &digest, &with_cert(longer)));
    let zeros = vec![0; ui.cert.len()];
    assert!(!verifies(&verifier, 0, &digest, &with_cert(zeros)));
}

pub fn verify_rejects_other_replicas_key(factory: Factory<'_>) {
    let mut replica_0 = factory(0);
    let mut replica_1 = factory(1);
    let mut replica_0_again = factory(0);
    let digest = test_digest(1);
    let ui_0 = replica_0.create_ui(&digest).expect("create_ui");
    let ui_1 = replica_1.create_ui(&digest).expect("create_ui");
    let ui_0_again = replica_0_again.create_ui(&digest).expect("create_ui");
    assert_ne!(replica_0.identity(), replica_1.identity());
    assert_ne!(replica_0.identity(), replica_0_again.identity());
    let (v_0, v_1, v_0_again) = (
        verifier_of(&*replica_0),
        verifier_of(&*replica_1),
        verifier_of(&*replica_0_again),
    );
    // Replica 1's UI, claimed to be replica 0's, under replica 0's key, and vice versa.
    assert!(!verifies(&v_0, 0, &digest, &ui_1));
    assert!(!verifies(&v_0, 1, &digest, &ui_1));
    assert!(!verifies(&v_1, 1, &digest, &ui_0));
    // Same replica id, another key: the key, not the id, is what authenticates.
    assert!(!verifies(&v_0, 0, &digest, &ui_0_again));
    assert!(!verifies(&v_0_again, 0, &digest, &ui_0));
}

/// The domain tag is part of what is certified: a signature by the same key over the
/// same fields under another tag (or none) is not a UI. `sign_raw` signs arbitrary bytes
/// with the key behind `verifier`, producing a `cert` in that key's format.
pub fn verify_rejects_other_domain_tag(
    verifier: &Verifier,
    replica: ReplicaId,
    sign_raw: &mut dyn FnMut(&[u8]) -> Vec<u8>,
) {
    let digest = test_digest(1);
    let counter = 1;
    let canonical = certified_bytes(replica, counter, &digest);
    let genuine = Ui {
        counter,
        cert: sign_raw(&canonical),
    };
    assert!(
        verifies(verifier, replica, &digest, &genuine),
        "sign_raw over the canonical bytes must verify, or this check proves nothing"
    );
    let mut other_tags: Vec<[u8; 16]> =
        vec![*b"bftnfs/usig/v2\0\0", *b"bftnfs/client\0\0\0", [0; 16]];
    for bit in 0..DOMAIN_TAG.len() * 8 {
        let mut tag = *DOMAIN_TAG;
        tag[bit / 8] ^= 1 << (bit % 8);
        other_tags.push(tag);
    }
    for tag in other_tags {
        let mut bytes = canonical;
        bytes[..16].copy_from_slice(&tag);
        let ui = Ui {
            counter,
            cert: sign_raw(&bytes),
        };
        assert!(!verifies(verifier, replica, &digest, &ui), "tag {tag:?}");
    }
    let untagged = Ui {
        counter,
        cert: sign_raw(&canonical[16..]),
    };
    assert!(!verifies(verifier, replica, &digest, &untagged), "no tag");
}

/// Body of the crash child that [`counter_survives_sigkill`] spawns: create UIs in a
/// loop, printing one line per UI after `create_ui` returned, until killed (or, as a
/// guard against an orphaned child, until `run_time_max` has passed).
pub fn run_crash_child(usig: &mut dyn Usig, run_time_max: Duration) {
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut index = 0u64;
    while start.elapsed() < run_time_max {
        index += 1;
        let digest = test_digest(index);
        let ui = usig.create_ui(&digest).expect("create_ui in crash child");
        writeln!(
            out,
            "{CRASH_CHILD_LINE_PREFIX} {} {}",
            ui.counter,
            hex(&digest)
        )
        .and_then(|()| out.flush())
        .expect("crash child writes stdout");
    }
}

/// Spawn `child` (a process running [`run_crash_child`] on the backend's durable state),
/// read the UIs it reports, SIGKILL it mid-stream, then `reopen` the state and check
/// that it continues strictly above every counter the child released, that
/// `last_issued()` verifies, and that at most the one UI in flight went unreported.
/// Every counter the child reports must exceed `counter_floor`. Returns the counter of
/// the UI created after reopening, the floor for a further round.
pub fn counter_survives_sigkill(
    child: Command,
    counter_floor: u64,
    reopen: &mut dyn FnMut() -> Box<dyn Usig>,
) -> u64 {
    sigkill_round(child, counter_floor, reopen, false)
}

/// [`counter_survives_sigkill`] for backends whose counter lives outside the process
/// (the TPM): a value the child reserved but never certified is lost, so the counter
/// after reopening may skip one value (a gap: a liveness matter, never a safety one), but
/// it is still strictly above every counter the child released.
pub fn counter_survives_sigkill_allowing_gap(
    child: Command,
    counter_floor: u64,
    reopen: &mut dyn FnMut() -> Box<dyn Usig>,
) -> u64 {
    sigkill_round(child, counter_floor, reopen, true)
}

fn sigkill_round(
    mut child: Command,
    counter_floor: u64,
    reopen: &mut dyn FnMut() -> Box<dyn Usig>,
    gap_allowed: bool,
) -> u64 {
    const REPORTED_BEFORE_KILL: usize = 25;
    child.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut process = KillOnDrop(child.spawn().expect("spawn crash child"));
    let stdout = process.0.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut reported: Vec<(u64, Digest)> = Vec::new();
    while reported.len() < REPORTED_BEFORE_KILL {
        match lines.next() {
            Some(line) => reported.extend(parse_child_line(&line.expect("read child stdout"))),
            None => panic!(
                "crash child ended ({:?}) after reporting {} UIs",
                process.0.wait(),
                reported.len()
            ),
        }
    }
    process.0.kill().expect("SIGKILL the crash child");
    // What it wrote before dying is still in the pipe.
    for line in lines {
        reported.extend(parse_child_line(&line.expect("read child stdout")));
    }
    let status = process.0.wait().expect("wait for crash child");
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die by SIGKILL while issuing UIs, not exit: {status:?}"
    );

    let (counter_first, _) = reported[0];
    assert!(
        counter_first > counter_floor,
        "child reported counter {counter_first}, not above {counter_floor} issued before"
    );
    for pair in reported.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "reported counters grow by one");
    }
    let (counter_max, digest_max) = *reported.last().expect("reported UIs");

    let mut usig = reopen();
    let last = usig
        .last_issued()
        .expect("a reopened USIG knows the last UI it issued");
    assert!(
        last.ui.counter >= counter_max,
        "last issued counter {} below the reported {counter_max}: a released UI was lost",
        last.ui.counter
    );
    assert!(
        last.ui.counter <= counter_max + 1,
        "last issued counter {} skips past the one UI in flight after {counter_max}",
        last.ui.counter
    );
    if last.ui.counter == counter_max {
        assert_eq!(
            last.digest, digest_max,
            "last issued UI certifies what was reported"
        );
    }
    verifier_of(&*usig)
        .verify(usig.replica(), &last.digest, &last.ui)
        .expect("last issued UI verifies after the crash");
    let next = usig
        .create_ui(&test_digest(u64::MAX))
        .expect("create_ui after reopen");
    if gap_allowed {
        assert!(
            next.counter == last.ui.counter + 1 || next.counter == last.ui.counter + 2,
            "continues after the last issued, skipping at most the value in flight: {} after {}",
            next.counter,
            last.ui.counter
        );
    } else {
        assert_eq!(
            next.counter,
            last.ui.counter + 1,
            "continues right after the last issued"
        );
    }
    verifier_of(&*usig)
        .verify(usig.replica(), &test_digest(u64::MAX), &next)
        .expect("UI after reopen verifies");
    next.counter
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn parse_child_line(line: &str) -> Option<(u64, Digest)> {
    let rest = line.strip_prefix(CRASH_CHILD_LINE_PREFIX)?;
    let mut fields = rest.split_whitespace();
    let counter = fields.next()?.parse().ok()?;
    let digest_hex = fields.next()?;
    let mut digest = [0u8; 32];
    if digest_hex.len() != 64 {
        return None;
    }
    for (byte, pair) in digest.iter_mut().zip(digest_hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some((counter, digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
