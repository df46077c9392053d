//! A software TPM (`swtpm socket --tpm2`) on free loopback ports, for tests, benchmarks
//! and `bftnfs up --usig tpm`: started in the foreground as a child process (never
//! `--daemon`, so it cannot outlive its owner unnoticed) and killed on drop. swtpm is a
//! test device, never a security boundary: whoever can copy its state directory can roll
//! the counter back.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::UsigError;

/// How long swtpm gets to open its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running swtpm; killed (SIGKILL, then reaped) on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    state_dir: PathBuf,
    port: u16,
    ctrl_port: u16,
}

/// Whether the `swtpm` binary is on PATH.
pub fn available() -> bool {
    Command::new("swtpm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free loopback port P with P + 1 free as well: the swtpm TCTI reaches the control
/// channel at the command port plus one.
fn free_port_pair() -> Result<u16, UsigError> {
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| UsigError::io("finding a free loopback port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| UsigError::io("finding a free loopback port", e))?
            .port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(UsigError::Tpm("no two adjacent free loopback ports".into()))
}

impl Swtpm {
    /// Start swtpm with its state in `state_dir` (created if missing) on two free
    /// loopback ports, and wait until it accepts connections.
    pub fn start(state_dir: &Path) -> Result<Swtpm, UsigError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| UsigError::io(format!("creating {}", state_dir.display()), e))?;
        let mut last_error = None;
        // Another process may take a port between probing and binding: retry.
        for _ in 0..5 {
            let port = free_port_pair()?;
            let mut tpm = Swtpm {
                child: None,
                state_dir: state_dir.to_path_buf(),
                port,
                ctrl_port: port + 1,
            };
            match tpm.spawn() {
                Ok(()) => return Ok(tpm),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| UsigError::Tpm("no free loopback ports".into())))
    }

    fn spawn(&mut self) -> Result<(), UsigError> {
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.ctrl_port
            ))
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state_dir.display()))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| UsigError::io("starting swtpm (apt-get install swtpm swtpm-tools)", e))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(UsigError::Tpm(format!("swtpm exited at start: {status}")));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(UsigError::Tpm("swtpm did not open its port in time".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI configuration string that reaches this swtpm.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// SIGKILL swtpm (a power cut for the TPM) and start it again on the same state and
    /// ports.
    pub fn restart(&mut self) -> Result<(), UsigError> {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The old listener's port may take a moment to be free again.
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// SIGKILL and reap swtpm; idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}
