//! A real NFS client (libnfs-utils: `nfs-cp`, `nfs-ls`, `nfs-cat`) against the real
//! `bftnfs serve --unreplicated` process, including a SIGTERM and a restart in between:
//! what was copied in comes back byte-identical from the restarted server.
//!
//! libnfs-utils is a Debian package; if `nfs-cp` is missing the test installs it (as
//! root, with apt-get) and skips, loudly, only if that is impossible.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

use common::{have, port_from_stdout};

/// Make sure libnfs-utils is installed; `false` (after saying why) if it cannot be.
fn ensure_libnfs_utils() -> bool {
    if have("nfs-cp") && have("nfs-ls") && have("nfs-cat") {
        return true;
    }
    eprintln!("nfs-cp not found: installing libnfs-utils with apt-get");
    let installed = Command::new("sh")
        .arg("-c")
        .arg("(apt-get install -y libnfs-utils || (apt-get update && apt-get install -y libnfs-utils)) >/dev/null 2>&1")
        .status()
        .is_ok_and(|s| s.success());
    if installed && have("nfs-cp") {
        return true;
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!!! SKIPPED: libnfs-utils (nfs-cp, nfs-ls, nfs-cat) is not installed and    !!!");
    eprintln!("!!! `apt-get install -y libnfs-utils` failed; the real-client test did not  !!!");
    eprintln!("!!! run.                                                                     !!!");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    false
}

struct Served {
    child: Child,
    port: u16,
}

impl Served {
    /// Start `bftnfs serve --unreplicated` on a free port and read the port from the
    /// libnfs URL it prints.
    fn start(data: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args([
                "serve",
                "--unreplicated",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bftnfs");
        let port = port_from_stdout(&mut child).expect("bftnfs printed its libnfs URL");
        Served { child, port }
    }

    fn url(&self, path: &str) -> String {
        common::url(self.port, path)
    }

    /// SIGTERM by pid, then the exit status must be success (a clean shutdown).
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "bftnfs exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("bftnfs did not stop within 5 s of SIGTERM");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Only if a test failed before `terminate`: never leave the server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run libnfs tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn nfs_cp_ls_cat_round_trip_across_restart() {
    if !ensure_libnfs_utils() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    // 1.5 MB of varied bytes: several 1 MiB-bounded WRITEs and READs.
    let content: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = tmp.path().join("in.bin");
    std::fs::File::create(&src)
        .and_then(|mut f| f.write_all(&content))
        .expect("write source");

    let served = Served::start(&data);
    run(Command::new("nfs-cp")
        .arg(&src)
        .arg(served.url("//copied.bin")));
    let listing =
        String::from_utf8(run(Command::new("nfs-ls").arg(served.url("/")))).expect("utf8");
    assert!(
        listing
            .lines()
            .any(|l| l.ends_with(" copied.bin") && l.contains("1500000")),
        "nfs-ls shows the file and its size:\n{listing}"
    );
    let back = run(Command::new("nfs-cat").arg(served.url("//copied.bin")));
    assert!(back == content, "nfs-cat returns the bytes nfs-cp wrote");
    served.terminate();

    // The backing tree holds the file under its real name, inside the data directory.
    let backing = std::fs::read(data.join("export").join("copied.bin")).expect("backing file");
    assert!(backing == content);

    let served = Served::start(&data);
    let back = run(Command::new("nfs-cat").arg(served.url("//copied.bin")));
    assert!(
        back == content,
        "the restarted server returns the same bytes"
    );
    served.terminate();
}
