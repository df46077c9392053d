//! The conformance suite run against the separate-process backend (`ProcessUsig` talking
//! to a `usig::process::serve` loop over a Unix socket), plus what only a server has to
//! survive: foreign peers, malformed requests, a peer that never reads its answers, a
//! client whose connection the server dropped, and a SIGKILL of the process that holds
//! the counter.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use usig::conformance::{self, Factory};
use usig::process::{self, ServerStats};
use usig::{ProcessUsig, ReplicaId, SigningKey, SoftwareUsig, Usig};

const CRASH_CHILD_ENV: &str = "USIG_PROCESS_CRASH_CHILD_DIR";
const KEY_FILE: &str = "usig.key";

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// A server thread holding a software USIG in `dir`, stopped on drop.
struct Server {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServerStats>>,
}

impl Server {
    fn start(dir: &Path, replica: ReplicaId, allowed_uid: u32) -> Server {
        let key = match SigningKey::read_file(&dir.join(KEY_FILE)) {
            Ok(k) => k,
            Err(_) => {
                let k = SigningKey::generate().unwrap();
                k.write_file(&dir.join(KEY_FILE)).unwrap();
                k
            }
        };
        let socket = dir.join("usig.sock");
        let listener = process::bind(&socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let thread = std::thread::spawn(move || {
            let mut usig = SoftwareUsig::open(&state, replica, key.key_bytes()).unwrap();
            process::serve(&listener, &mut usig, allowed_uid, &flag).unwrap()
        });
        Server {
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> ServerStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }

    /// Sets `stop` and waits at most `limit` for the server to return.
    fn stop_within(&mut self, limit: Duration) -> Option<ServerStats> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(thread.join().unwrap());
        });
        rx.recv_timeout(limit).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn process_factory() -> impl FnMut(ReplicaId) -> Box<dyn Usig> {
    let mut keep: Vec<(TempDir, Server)> = Vec::new();
    move |replica| {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), replica, my_uid());
        let usig = ProcessUsig::connect(&server.socket, None).unwrap();
        keep.push((dir, server));
        Box::new(usig)
    }
}

fn run(check: fn(Factory<'_>)) {
    let mut factory = process_factory();
    check(&mut factory);
}

#[test]
fn process_counters_start_at_one_and_increase() {
    run(conformance::counters_start_at_one_and_increase);
}

#[test]
fn process_no_two_uis_share_a_counter() {
    run(conformance::no_two_uis_share_a_counter);
}

#[test]
fn process_issued_uis_verify() {
    run(conformance::issued_uis_verify);
}

#[test]
fn process_last_issued_is_the_latest_ui() {
    run(conformance::last_issued_is_the_latest_ui);
}

#[test]
fn process_verify_rejects_changed_digest() {
    run(conformance::verify_rejects_changed_digest);
}

#[test]
fn process_verify_rejects_changed_counter() {
    run(conformance::verify_rejects_changed_counter);
}

#[test]
fn process_verify_rejects_changed_replica() {
    run(conformance::verify_rejects_changed_replica);
}

#[test]
fn process_verify_rejects_changed_cert() {
    run(conformance::verify_rejects_changed_cert);
}

#[test]
fn process_verify_rejects_other_replicas_key() {
    run(conformance::verify_rejects_other_replicas_key);
}

#[test]
fn process_socket_is_private_and_refuses_other_uids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, my_uid().wrapping_add(1));
    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        ProcessUsig::connect(&server.socket, None).is_err(),
        "a foreign uid was served"
    );
    let stats = server.stop();
    assert_eq!(stats.refused_peers, 1);
    assert_eq!(stats.uis_created, 0);
}

#[test]
fn process_malformed_requests_do_not_harm_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, my_uid());
    {
        let mut s = UnixStream::connect(&server.socket).unwrap();
        s.write_all(&[0xEE, 1, 2, 3]).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        assert_eq!(body[0], 1, "an unknown request gets an error answer");
    }
    {
        // A truncated CREATE: the connection ends mid-request.
        let mut s = UnixStream::connect(&server.socket).unwrap();
        s.write_all(&[2, 0, 0]).unwrap();
    }
    let mut usig = ProcessUsig::connect(&server.socket, None).unwrap();
    let ui = usig.create_ui(&[9; 32]).unwrap();
    assert_eq!(ui.counter, 1);
    drop(usig);
    let stats = server.stop();
    assert_eq!(stats.malformed_requests, 2);
    assert_eq!(stats.uis_created, 1);
}

#[test]
fn process_refuses_a_server_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1, my_uid());
    let other = SigningKey::generate().unwrap().identity();
    assert!(ProcessUsig::connect(&server.socket, Some(&other)).is_err());
}

/// The child half of `process_counter_survives_sigkill`: a server and its client in one
/// process, issuing UIs until SIGKILLed. A no-op when run by itself.
#[test]
#[ignore = "child process of process_counter_survives_sigkill"]
fn process_crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let server = Server::start(Path::new(&dir), 2, my_uid());
    let mut usig = ProcessUsig::connect(&server.socket, None).unwrap();
    conformance::run_crash_child(&mut usig, Duration::from_secs(60));
}

#[test]
fn process_counter_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut floor = 0;
    let mut servers = Vec::new();
    for _round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["process_crash_child", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads=1", "-q"])
            .env(CRASH_CHILD_ENV, dir.path());
        floor = conformance::counter_survives_sigkill(child, floor, &mut || {
            let server = Server::start(dir.path(), 2, my_uid());
            let usig = ProcessUsig::connect(&server.socket, None).unwrap();
            servers.push(server);
            Box::new(usig)
        });
        for s in servers.drain(..) {
            s.stop();
        }
    }
}

/// A client pipelines CREATE requests and never reads an answer. Once the server's
/// answers fill the socket buffer its `write_all` blocks; with no write timeout it then
/// never checks `stop` again and serves no other connection while the peer stays.
#[test]
fn process_server_is_not_wedged_by_a_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 3, my_uid());
    let mut hostile = UnixStream::connect(&server.socket).unwrap();
    hostile
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut request = [0u8; 33];
    request[0] = 2; // CREATE
    let deadline = Instant::now() + Duration::from_secs(60);
    // Write until our own writes block: the server has stopped reading requests.
    while hostile.write_all(&request).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the server kept reading for 60 s"
        );
    }
    let stats = server.stop_within(Duration::from_secs(15));
    let wedged = stats.is_none();
    drop(hostile); // unblocks a wedged server (EPIPE), so the test process can end
    assert!(
        !wedged,
        "the server ignored stop for 15 s: blocked writing to a peer that does not read"
    );
}

/// The server drops a connection idle for 30 s (`IDLE_TIMEOUT`). An honest replica idle
/// that long (a quiet cluster) must still get its next UI: the client reconnects.
#[test]
fn process_client_survives_the_server_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 3, my_uid());
    let mut usig = ProcessUsig::connect(&server.socket, None).unwrap();
    assert_eq!(usig.create_ui(&[1; 32]).unwrap().counter, 1);
    std::thread::sleep(Duration::from_secs(31));
    let ui = usig
        .create_ui(&[2; 32])
        .expect("a UI after the server dropped an idle connection");
    assert_eq!(ui.counter, 2);
    assert_eq!(usig.last_issued().unwrap().ui, ui);
}

/// The server spends (durably) a counter for a CREATE whose connection is gone before the
/// answer: the value is never issued again, and the next client learns it from LAST.
#[test]
fn process_counter_spent_for_a_dropped_connection_is_not_reissued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 3, my_uid());
    {
        let mut s = UnixStream::connect(&server.socket).unwrap();
        let mut request = [7u8; 33];
        request[0] = 2;
        s.write_all(&request).unwrap();
        // Read the length prefix only, then hang up mid-answer.
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
    }
    let mut usig = ProcessUsig::connect(&server.socket, None).unwrap();
    let last = usig.last_issued().expect("the spent UI is reported");
    assert_eq!((last.ui.counter, last.digest), (1, [7; 32]));
    assert_eq!(usig.create_ui(&[8; 32]).unwrap().counter, 2);
}
