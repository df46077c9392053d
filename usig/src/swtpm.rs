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
///
/// Chosen below the kernel's ephemeral port range, not with `bind(0)`: the swtpm TCTI
/// opens a new TCP connection for every TPM command, so each UI leaves ~5 client sockets
/// in TIME_WAIT on ephemeral ports for a minute, and Linux refuses to bind a listener to
/// a port held by a TIME_WAIT socket that was not itself SO_REUSEADDR. At a few hundred
/// UIs per second that filled the ephemeral range (43 000 TIME_WAIT sockets) and a
/// benchmark could not find two adjacent free ports for its next cluster's swtpms.
fn free_port_pair() -> Result<u16, UsigError> {
    let (ephemeral_low, _) = ephemeral_port_range().unwrap_or((32768, 60999));
    let low = PRIVATE_PORT_FLOOR;
    let high = ephemeral_low.saturating_sub(2);
    if high <= low + 64 {
        return free_port_pair_ephemeral();
    }
    let span = u32::from(high - low);
    let mut seed = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| UsigError::Tpm("no randomness to pick a port".into()))?;
    let start = u32::from_be_bytes(seed) % span;
    for i in 0..512u32 {
        let port = low + ((start + i * 2) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok()
        {
            return Ok(port);
        }
    }
    free_port_pair_ephemeral()
}

/// Lowest port `free_port_pair` picks (above the registered services most hosts run).
const PRIVATE_PORT_FLOOR: u16 = 20000;

/// `net.ipv4.ip_local_port_range`, if readable.
fn ephemeral_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The fallback: a kernel-chosen ephemeral port P with P + 1 free.
fn free_port_pair_ephemeral() -> Result<u16, UsigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_pairs_are_free_and_outside_the_ephemeral_range() {
        let (ephemeral_low, _) = ephemeral_port_range().expect("Linux has the sysctl");
        for _ in 0..20 {
            let port = free_port_pair().unwrap();
            assert!(
                port >= PRIVATE_PORT_FLOOR && port + 1 < ephemeral_low,
                "{port} vs the ephemeral range from {ephemeral_low}"
            );
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
            TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).unwrap();
        }
    }
}
