//! The separate-process USIG (MinBFT section 7, the "user-level process" variant): the
//! signing key and the counter live in `bftnfs usig-server`, reached over a Unix socket,
//! so a compromised replica process can ask for UIs but can never read the key, reset the
//! counter or sign anything else.
//!
//! The server keeps the software backend's guarantee — the counter is durable before a
//! UI leaves — because it *is* a [`SoftwareUsig`](crate::SoftwareUsig) behind a socket.
//! Only the configured peer may connect: the socket file is mode 0600 and every
//! connection's peer credentials (`SO_PEERCRED`) must carry the allowed uid. Requests are
//! tiny fixed-size frames; anything else gets an error answer and the connection is
//! closed, without harming the server.
//!
//! Wire format (big-endian): a request is a 1-byte tag (`HELLO`, `CREATE` + 32-byte
//! digest, `LAST`); an answer is a u32 length then a body whose first byte is `OK` or
//! `ERR`. The client re-verifies every UI it receives against the server's identity.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{Digest, IssuedUi, ReplicaId, Ui, Usig, UsigError, UsigIdentity, Verifier};

const TAG_HELLO: u8 = 1;
const TAG_CREATE: u8 = 2;
const TAG_LAST: u8 = 3;
const OK: u8 = 0;
const ERR: u8 = 1;
/// Largest answer body: a UI cert is 64 bytes (ECDSA) or ~180 (TPM attest + signature).
const ANSWER_BYTES_MAX: usize = 4096;
/// A client that sends nothing for this long is dropped (the server serves one at a time).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that does not take its answer for this long is dropped: a blocked write would
/// keep the server from every other connection and from `stop`.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

fn io(context: &str, e: std::io::Error) -> UsigError {
    UsigError::Io {
        context: context.to_string(),
        source: e,
    }
}

/// Binds the server socket: removes a stale socket file, binds, and restricts the file
/// to its owner (mode 0600).
pub fn bind(socket: &Path) -> Result<UnixListener, UsigError> {
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|e| io("remove stale USIG socket", e))?;
    }
    let listener = UnixListener::bind(socket).map_err(|e| io("bind USIG socket", e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod USIG socket", e))?;
    Ok(listener)
}

/// What the server counted while it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub uis_created: u64,
    pub refused_peers: u64,
    pub malformed_requests: u64,
}

/// Serves `usig` on `listener`, one connection at a time, until `stop` is set (checked
/// between connections and every 200 ms while idle). Only peers whose uid is
/// `allowed_uid` are served.
pub fn serve(
    listener: &UnixListener,
    usig: &mut dyn Usig,
    allowed_uid: u32,
    stop: &AtomicBool,
) -> Result<ServerStats, UsigError> {
    let mut stats = ServerStats::default();
    listener
        .set_nonblocking(true)
        .map_err(|e| io("USIG socket nonblocking", e))?;
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io("accept on USIG socket", e)),
        };
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(cred) if cred.uid.as_raw() == allowed_uid => {}
            _ => {
                stats.refused_peers += 1;
                continue;
            }
        }
        serve_connection(stream, usig, &mut stats, stop);
    }
    Ok(stats)
}

fn serve_connection(
    mut stream: UnixStream,
    usig: &mut dyn Usig,
    stats: &mut ServerStats,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let mut idle = Duration::ZERO;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut tag = [0u8; 1];
        match stream.read_exact(&mut tag) {
            Ok(()) => idle = Duration::ZERO,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                idle += Duration::from_millis(200);
                if idle >= IDLE_TIMEOUT {
                    return;
                }
                continue;
            }
            Err(_) => return, // peer closed
        }
        let answer = match tag[0] {
            TAG_HELLO => hello_answer(usig),
            TAG_CREATE => {
                let mut digest = [0u8; 32];
                if stream.read_exact(&mut digest).is_err() {
                    stats.malformed_requests += 1;
                    return;
                }
                match usig.create_ui(&digest) {
                    Ok(ui) => {
                        stats.uis_created += 1;
                        let mut body = vec![OK];
                        put_ui(&mut body, &ui);
                        body
                    }
                    Err(e) => error_answer(&e.to_string()),
                }
            }
            TAG_LAST => {
                let mut body = vec![OK];
                match usig.last_issued() {
                    Some(last) => {
                        body.push(1);
                        body.extend_from_slice(&last.digest);
                        put_ui(&mut body, &last.ui);
                    }
                    None => body.push(0),
                }
                body
            }
            _ => {
                stats.malformed_requests += 1;
                let _ = write_answer(&mut stream, &error_answer("unknown request"));
                return;
            }
        };
        if write_answer(&mut stream, &answer).is_err() {
            return;
        }
    }
}

fn hello_answer(usig: &dyn Usig) -> Vec<u8> {
    let UsigIdentity::EcdsaP256 { public_key } = usig.identity() else {
        return error_answer(
            "this server holds a TPM or shared-key identity; it serves ECDSA P-256 keys only",
        );
    };
    let mut body = vec![OK];
    body.extend_from_slice(&usig.replica().to_be_bytes());
    body.extend_from_slice(&(public_key.len() as u16).to_be_bytes());
    body.extend_from_slice(&public_key);
    body
}

fn error_answer(msg: &str) -> Vec<u8> {
    let mut body = vec![ERR];
    body.extend_from_slice(msg.as_bytes());
    body
}

fn put_ui(body: &mut Vec<u8>, ui: &Ui) {
    body.extend_from_slice(&ui.counter.to_be_bytes());
    body.extend_from_slice(&(ui.cert.len() as u16).to_be_bytes());
    body.extend_from_slice(&ui.cert);
}

fn write_answer(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

/// A cursor over an answer body that fails instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], UsigError> {
        if self.0.len() < n {
            return Err(malformed("short answer"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, UsigError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, UsigError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, UsigError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn ui(&mut self) -> Result<Ui, UsigError> {
        let counter = self.u64()?;
        let len = self.u16()? as usize;
        Ok(Ui {
            counter,
            cert: self.take(len)?.to_vec(),
        })
    }
}

fn malformed(why: &str) -> UsigError {
    UsigError::Io {
        context: "USIG server answer".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
    }
}

/// A replica's handle on a USIG held by a separate `usig-server` process.
pub struct ProcessUsig {
    socket: PathBuf,
    stream: UnixStream,
    replica: ReplicaId,
    identity: UsigIdentity,
    verifier: Verifier,
    last: Option<IssuedUi>,
}

impl ProcessUsig {
    /// Connects and learns the server's replica id and public identity. If `expected`
    /// is given (from the cluster configuration), a server holding another key is refused.
    pub fn connect(socket: &Path, expected: Option<&UsigIdentity>) -> Result<Self, UsigError> {
        let mut stream =
            UnixStream::connect(socket).map_err(|e| io("connect to USIG server", e))?;
        let body = Self::call(&mut stream, &[TAG_HELLO])?;
        let mut r = Reader(&body);
        let replica = r.u32()?;
        let len = r.u16()? as usize;
        let identity = UsigIdentity::EcdsaP256 {
            public_key: r.take(len)?.to_vec(),
        };
        if expected.is_some_and(|e| *e != identity) {
            return Err(UsigError::KeyMismatch {
                path: socket.to_path_buf(),
            });
        }
        let verifier = Verifier::new(&identity).map_err(|_| malformed("bad identity"))?;
        let mut usig = ProcessUsig {
            socket: socket.to_path_buf(),
            stream,
            replica,
            identity,
            verifier,
            last: None,
        };
        usig.last = usig.fetch_last()?;
        Ok(usig)
    }

    fn call(stream: &mut UnixStream, request: &[u8]) -> Result<Vec<u8>, UsigError> {
        Self::exchange(stream, request).map_err(|e| io("talking to the USIG server", e))?
    }

    /// One request and its answer. The outer error means the connection failed, at a
    /// point of the exchange nobody knows; the inner one is about the answer itself.
    fn exchange(
        stream: &mut UnixStream,
        request: &[u8],
    ) -> std::io::Result<Result<Vec<u8>, UsigError>> {
        stream.write_all(request)?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > ANSWER_BYTES_MAX {
            return Ok(Err(malformed("answer length out of range")));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        Ok(Self::answer(body))
    }

    fn answer(body: Vec<u8>) -> Result<Vec<u8>, UsigError> {
        match body[0] {
            OK => Ok(body[1..].to_vec()),
            ERR => Err(UsigError::Io {
                context: "USIG server".into(),
                source: std::io::Error::other(String::from_utf8_lossy(&body[1..]).to_string()),
            }),
            _ => Err(malformed("unknown answer")),
        }
    }

    /// A new connection to the same server (it drops idle ones, or was restarted). Its
    /// last UI must verify and not be behind ours; returns it.
    fn reconnect(&mut self) -> Result<Option<IssuedUi>, UsigError> {
        let fresh = Self::connect(&self.socket, Some(&self.identity))?;
        if fresh.replica != self.replica {
            return Err(malformed("USIG server changed its replica id"));
        }
        let counter = |l: &Option<IssuedUi>| l.as_ref().map_or(0, |l| l.ui.counter);
        if counter(&fresh.last) < counter(&self.last) {
            return Err(malformed("USIG server counter went backwards"));
        }
        self.stream = fresh.stream;
        if counter(&fresh.last) > counter(&self.last) {
            self.last = fresh.last.clone();
        }
        Ok(fresh.last)
    }

    fn fetch_last(&mut self) -> Result<Option<IssuedUi>, UsigError> {
        let body = Self::call(&mut self.stream, &[TAG_LAST])?;
        let mut r = Reader(&body);
        match r.take(1)?[0] {
            0 => Ok(None),
            _ => {
                let digest: Digest = r.take(32)?.try_into().expect("32 bytes");
                let ui = r.ui()?;
                self.verifier
                    .verify(self.replica, &digest, &ui)
                    .map_err(|_| malformed("last UI does not verify"))?;
                Ok(Some(IssuedUi { digest, ui }))
            }
        }
    }
}

impl Usig for ProcessUsig {
    fn replica(&self) -> ReplicaId {
        self.replica
    }

    fn identity(&self) -> UsigIdentity {
        self.identity.clone()
    }

    fn create_ui(&mut self, digest: &Digest) -> Result<Ui, UsigError> {
        let mut request = vec![TAG_CREATE];
        request.extend_from_slice(digest);
        let known = self.last.as_ref().map_or(0, |l| l.ui.counter);
        let body = match Self::exchange(&mut self.stream, &request) {
            Ok(answer) => answer?,
            Err(_) => {
                // The connection is gone (the server drops idle ones). The server records
                // a UI before it answers, so its last UI tells whether this request was
                // served: if so that is our UI, else nothing was spent and we ask again.
                let last = self.reconnect()?;
                if let Some(last) = last.filter(|l| l.digest == *digest && l.ui.counter > known) {
                    return Ok(last.ui);
                }
                Self::call(&mut self.stream, &request)?
            }
        };
        let ui = Reader(&body).ui()?;
        // Trust nothing from the socket: the UI must verify and move the counter forward.
        self.verifier
            .verify(self.replica, digest, &ui)
            .map_err(|_| malformed("UI from server does not verify"))?;
        if self
            .last
            .as_ref()
            .is_some_and(|l| ui.counter <= l.ui.counter)
        {
            return Err(malformed("USIG server counter went backwards"));
        }
        self.last = Some(IssuedUi {
            digest: *digest,
            ui: ui.clone(),
        });
        Ok(ui)
    }

    fn last_issued(&self) -> Option<IssuedUi> {
        self.last.clone()
    }
}
