//! The separate-process USIG against a hostile or unlucky client: a peer that never reads
//! its answers must not wedge the server, and an honest client must survive the server
//! dropping its connection (idle timeout) without losing a counter it was given.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use usig::process::{self, ServerStats};
use usig::{ProcessUsig, SigningKey, SoftwareUsig, Usig};

fn my_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

struct Server {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServerStats>>,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let key = SigningKey::generate().unwrap();
        let socket = dir.join("usig.sock");
        let listener = process::bind(&socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let thread = std::thread::spawn(move || {
            let mut usig = SoftwareUsig::open(&state, 3, key.pkcs8()).unwrap();
            process::serve(&listener, &mut usig, my_uid(), &flag).unwrap()
        });
        Server {
            socket,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets `stop` and waits at most `limit` for the server to return.
    fn stop_within(&mut self, limit: Duration) -> Option<ServerStats> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().unwrap();
        let (tx, rx) = mpsc::channel();
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

/// A client pipelines CREATE requests and never reads an answer. Once the server's
/// answers fill the socket buffer its `write_all` blocks; with no write timeout it then
/// never checks `stop` again and serves no other connection while the peer stays.
#[test]
fn process_server_is_not_wedged_by_a_client_that_never_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
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
    let server = Server::start(dir.path());
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
    let server = Server::start(dir.path());
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
