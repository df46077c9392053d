//! Fault tests across real container networks (issue 7): the compose cluster of
//! `docker/compose.f1.yml` (three replicas and a frontend, each container on its own
//! address of a private bridge network) built from this test's own `bftnfs` binary, an
//! NFS client on the host writing and reading back files through the frontend's published
//! port, and one fault per test: a backup stopped and started, the primary frozen
//! (`docker pause`) until a view change, the primary disconnected from the network and
//! reconnected, one backup isolated (the majority goes on), a partition with no quorum
//! (nothing is acknowledged until it heals), the whole cluster down and up again, and
//! with f = 2 (`docker/compose.f2.yml`) the primary frozen and a backup cut off at once.
//! After each: the workload saw no error (only latency), every acknowledged write reads
//! back, and all replicas' backing directories are identical. Each test prints how long
//! its view change and catch-up took.
//!
//! The tests need a Docker engine and compose (`docker compose` or `docker-compose`);
//! without them each prints a loud SKIPPED line and passes. They run one at a time (a
//! lock file, and nextest's `docker` test group), use a unique compose project each, and
//! remove every container, network and volume they made (a Drop guard, and a watchdog
//! that cleans up and aborts a test that overruns its bound).

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nfs3_client::Nfs3ConnectionBuilder;
use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::TokioConnector;

/// Image the tests build from `CARGO_BIN_EXE_bftnfs` (rebuilt when the binary changes).
const TEST_IMAGE: &str = "bftnfs:test";
/// One NFS call that takes longer than this is a client-visible failure.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// A whole test (after it holds the lock) that takes longer is cleaned up and aborted.
const TEST_BOUND: Duration = Duration::from_secs(240);
/// How long a healed replica may take to hold the last acknowledged write.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);
/// How long the replicas' backing trees may take to become identical once writes stop.
const CONVERGE_BOUND: Duration = Duration::from_secs(60);

/// One NFS call with a deadline; any error or timeout returns `Err(description)`.
macro_rules! call {
    ($what:expr, $fut:expr) => {
        match tokio::time::timeout(OP_TIMEOUT, $fut).await {
            Err(_) => return Err(format!("{}: no reply within {:?}", $what, OP_TIMEOUT)),
            Ok(Err(e)) => return Err(format!("{}: RPC error {e:?}", $what)),
            Ok(Ok(Nfs3Result::Err((s, _)))) => return Err(format!("{}: NFS error {s:?}", $what)),
            Ok(Ok(Nfs3Result::Ok(r))) => r,
        }
    };
}

// ---------------------------------------------------------------------------------------
// Docker and compose

#[derive(Clone, Copy, Debug)]
enum ComposeCli {
    /// `docker compose` (v2 plugin).
    Plugin,
    /// `docker-compose` (v1).
    Standalone,
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The compose CLI when a Docker engine answers; otherwise prints SKIPPED and `None`.
fn docker_or_skip(test: &str) -> Option<ComposeCli> {
    if !quiet_ok(Command::new("docker").arg("info")) {
        eprintln!(
            "\n!!!!!!!! SKIPPED docker::{test}: no Docker engine answers `docker info` !!!!!!!!\n"
        );
        return None;
    }
    if quiet_ok(Command::new("docker").args(["compose", "version"])) {
        return Some(ComposeCli::Plugin);
    }
    if quiet_ok(Command::new("docker-compose").arg("version")) {
        return Some(ComposeCli::Standalone);
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED docker::{test}: Docker answers but neither `docker compose` nor \
         `docker-compose` exists !!!!!!!!\n"
    );
    None
}

/// Runs `docker ARGS`; panics with its stderr if it fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Holds the lock that runs docker tests one at a time (also across nextest processes).
struct SerialLock {
    _file: std::fs::File,
}

fn serial_lock() -> SerialLock {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("bftnfs-docker-tests.lock"))
        .expect("lock file");
    // SAFETY: flock(2) on a descriptor we own; released when the file is closed.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    SerialLock { _file: f }
}

/// Builds TEST_IMAGE from this test's binary unless it already holds that binary.
fn ensure_test_image() {
    let binary = env!("CARGO_BIN_EXE_bftnfs");
    let meta = std::fs::metadata(binary).expect("bftnfs binary");
    let mtime = meta
        .modified()
        .expect("mtime")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("mtime after epoch")
        .as_nanos();
    let identity = format!("{}-{mtime}", meta.len());
    let current = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{index .Config.Labels \"bftnfs.binary\"}}",
            TEST_IMAGE,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if current.as_deref() == Some(identity.as_str()) {
        return;
    }
    let old_id = docker_lines(&["image", "ls", "-q", TEST_IMAGE]);
    let started = Instant::now();
    let status = Command::new(repo_root().join("docker/build"))
        .args(["--binary", binary, "--tag", TEST_IMAGE, "--label"])
        .arg(format!("bftnfs.binary={identity}"))
        .status()
        .expect("run docker/build");
    assert!(status.success(), "docker/build failed");
    eprintln!(
        "docker: built {TEST_IMAGE} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The previous test image is now untagged: remove it rather than leave it dangling.
    for id in old_id {
        let _ = Command::new("docker")
            .args(["image", "rm", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Everything needed to tear a compose project down, also from the watchdog thread.
#[derive(Clone)]
struct Project {
    name: String,
    cli: ComposeCli,
    file: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = match self.cli {
            ComposeCli::Plugin => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            ComposeCli::Standalone => Command::new("docker-compose"),
        };
        c.arg("-p").arg(&self.name).arg("-f").arg(&self.file);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn label(&self) -> String {
        format!("label=com.docker.compose.project={}", self.name)
    }

    /// Removes every container, network and volume of the project; never panics.
    fn clean_up(&self) {
        let label = self.label();
        let containers = docker_lines(&["ps", "-aq", "--filter", &label]);
        for id in &containers {
            let _ = Command::new("docker")
                .args(["unpause", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Whatever `down` left (a failed `up`, a container it no longer knows).
        let quiet = |args: Vec<String>| {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for id in docker_lines(&["ps", "-aq", "--filter", &label]) {
            quiet(vec!["rm".into(), "-f".into(), "-v".into(), id]);
        }
        for id in docker_lines(&["network", "ls", "-q", "--filter", &label]) {
            quiet(vec!["network".into(), "rm".into(), id]);
        }
        for id in docker_lines(&["volume", "ls", "-q", "--filter", &label]) {
            quiet(vec!["volume".into(), "rm".into(), "-f".into(), id]);
        }
    }
}

/// A running compose cluster; removed with everything it made when dropped.
struct Cluster {
    project: Project,
    /// First three octets of the private /24; replica i is at .(11+i), the frontend .10.
    net_prefix: String,
    network: String,
    /// Each replica's `/data` volume as seen from the host, when it is readable here
    /// (root, the engine on this host): read directly, without the engine's latency.
    volumes: Vec<Option<PathBuf>>,
    port: u16,
    n: u32,
    tmp: tempfile::TempDir,
    done: Arc<AtomicBool>,
    _lock: SerialLock,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if std::env::var_os("BFTNFS_DOCKER_LOGS").is_some() {
            for id in docker_lines(&["ps", "-aq", "--filter", &self.project.label()]) {
                let out = Command::new("docker").args(["logs", "-t", &id]).output();
                if let Ok(out) = out {
                    eprintln!(
                        "---- docker logs {id}\n{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        self.project.clean_up();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Cluster {
    /// Brings up `docker/compose.f<f>.yml` as a fresh project, or `None` (SKIPPED) when
    /// Docker is not there.
    fn up(test: &str, f: u32) -> Option<Cluster> {
        let cli = docker_or_skip(test)?;
        let lock = serial_lock();
        ensure_test_image();
        let file = repo_root().join(format!("docker/compose.f{f}.yml"));
        let started = Instant::now();
        // A /24 nobody else uses: the first free one from a per-process start.
        for attempt in 0..8u32 {
            let octet = (std::process::id() + attempt * 37) % 200 + 20;
            let net_prefix = format!("10.213.{octet}");
            let port = free_port();
            let project = Project {
                name: format!("bftnfstest-{test}-{}-{attempt}", std::process::id())
                    .replace('_', "-"),
                cli,
                file: file.clone(),
                env: vec![
                    ("BFTNFS_IMAGE", TEST_IMAGE.to_string()),
                    ("BFTNFS_NET", net_prefix.clone()),
                    ("BFTNFS_NFS_PORT", port.to_string()),
                    ("RUST_LOG", "info".to_string()),
                ],
            };
            let out = project
                .compose()
                .args(["up", "-d"])
                .output()
                .expect("run compose up");
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                project.clean_up();
                if err.contains("overlap") || err.contains("address already in use") {
                    continue;
                }
                panic!("compose up failed: {err}");
            }
            let done = Arc::new(AtomicBool::new(false));
            spawn_watchdog(project.clone(), done.clone());
            let network = docker_lines(&["network", "ls", "-q", "--filter", &project.label()])
                .into_iter()
                .next()
                .expect("the project's network");
            let volumes = (0..2 * f + 1)
                .map(|i| {
                    let filter = format!("label=com.docker.compose.volume=data{i}");
                    let name = docker_lines(&[
                        "volume",
                        "ls",
                        "-q",
                        "--filter",
                        &project.label(),
                        "--filter",
                        &filter,
                    ])
                    .into_iter()
                    .next()?;
                    let mount = docker(&["volume", "inspect", "-f", "{{.Mountpoint}}", &name]);
                    let mount = PathBuf::from(mount.trim());
                    std::fs::read_dir(&mount).is_ok().then_some(mount)
                })
                .collect();
            let cluster = Cluster {
                project,
                net_prefix,
                network,
                volumes,
                port,
                n: 2 * f + 1,
                tmp: tempfile::tempdir().expect("tempdir"),
                done,
                _lock: lock,
            };
            eprintln!(
                "docker[{test}]: compose up {} replicas + frontend in {:.1} s (NFS on 127.0.0.1:{port})",
                cluster.n,
                started.elapsed().as_secs_f64()
            );
            return Some(cluster);
        }
        panic!("no free private subnet for the test network");
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Container id of a compose service.
    fn id(&self, service: &str) -> String {
        let out = self
            .project
            .compose()
            .args(["ps", "-q", service])
            .output()
            .expect("compose ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no container for {service}"))
            .trim()
            .to_string()
    }

    fn replica(&self, i: u32) -> String {
        self.id(&format!("replica{i}"))
    }

    fn ip(&self, i: u32) -> String {
        format!("{}.{}", self.net_prefix, 11 + i)
    }

    fn disconnect(&self, i: u32) {
        docker(&["network", "disconnect", &self.network, &self.replica(i)]);
    }

    fn reconnect(&self, i: u32) {
        docker(&[
            "network",
            "connect",
            "--ip",
            &self.ip(i),
            &self.network,
            &self.replica(i),
        ]);
    }

    /// One file of a container (running, paused or stopped), through `docker cp … -`
    /// (a tar stream holding that one file).
    fn read_file(&self, i: u32, path: &str) -> Option<Vec<u8>> {
        if let (Some(Some(mount)), Some(rest)) =
            (self.volumes.get(i as usize), path.strip_prefix("/data/"))
        {
            return std::fs::read(mount.join(rest)).ok();
        }
        let container = self.replica(i);
        let out = Command::new("docker")
            .args(["cp", &format!("{container}:{path}"), "-"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() || out.stdout.len() < 512 {
            return None;
        }
        let header = &out.stdout[..512];
        let size_field = std::str::from_utf8(&header[124..136]).ok()?;
        let size =
            usize::from_str_radix(size_field.trim_matches(|c| c == '\0' || c == ' '), 8).ok()?;
        out.stdout.get(512..512 + size).map(<[u8]>::to_vec)
    }

    /// The view replica `i` last entered (its `status` file; 0 before any view change).
    fn view_of(&self, i: u32) -> u64 {
        self.read_file(i, "/data/status")
            .and_then(|b| {
                String::from_utf8_lossy(&b)
                    .strip_prefix("view ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// Waits until replica `observer` logs that it entered a view above `from`; returns
    /// that view and the time from `since` (a wall-clock instant taken at the fault) to the
    /// log line's own timestamp, so polling adds nothing to the figure.
    fn wait_view_change(&self, observer: u32, from: u64, since: SystemTime) -> (u64, Duration) {
        let container = self.replica(observer);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("docker")
                .args(["logs", &container])
                .output()
                .expect("docker logs");
            // The replica logs on stderr; docker logs replays it there.
            let text = String::from_utf8_lossy(&out.stderr);
            for line in text.lines() {
                let Some(rest) = line.split("entered view ").nth(1) else {
                    continue;
                };
                let Some(v) = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                else {
                    continue;
                };
                if v > from {
                    let at = log_time(line).expect("timestamped log line");
                    return (v, day_diff(since, at));
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {observer} entered no view above {from} a minute after the fault"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until replica `i` holds `target` (the last write acknowledged when the fault
    /// healed: it holds everything before it too, as it executes in order); the time
    /// since `since`, as seen by polling with `docker cp`.
    fn wait_caught_up(&self, i: u32, target: &(String, Vec<u8>), since: Instant) -> Duration {
        let (name, data) = target;
        let path = format!("/data/export/{name}");
        let deadline = Instant::now() + CATCH_UP_BOUND;
        loop {
            if self.read_file(i, &path).as_deref() == Some(&data[..]) {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} does not hold {name} {CATCH_UP_BOUND:?} after healing"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Copies every replica's backing directory out and waits until they are identical;
    /// returns the time that took and the copy of replica 0.
    fn wait_converged(&self) -> (Duration, PathBuf) {
        let started = Instant::now();
        let deadline = started + CONVERGE_BOUND;
        // Cheap polling on the volumes themselves when the host can read them; the
        // verdict below always comes from copies taken through the engine.
        let exports: Option<Vec<PathBuf>> = self
            .volumes
            .iter()
            .map(|v| v.as_ref().map(|m| m.join("export")))
            .collect();
        if let Some(exports) = exports {
            while Instant::now() < deadline
                && !(1..exports.len()).all(|i| trees_equal(&exports[0], &exports[i]))
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let converged = started.elapsed();
        for round in 0.. {
            let dirs: Vec<PathBuf> = (0..self.n)
                .map(|i| {
                    let d = self.tmp.path().join(format!("round{round}-replica{i}"));
                    docker(&[
                        "cp",
                        &format!("{}:/data/export", self.replica(i)),
                        d.to_str().expect("utf8 path"),
                    ]);
                    d
                })
                .collect();
            let differing: Vec<u32> = (1..self.n)
                .filter(|&i| !trees_equal(&dirs[0], &dirs[i as usize]))
                .collect();
            if differing.is_empty() {
                let took = if round == 0 {
                    converged
                } else {
                    started.elapsed()
                };
                return (took, dirs[0].clone());
            }
            assert!(
                Instant::now() < deadline,
                "backing directories of replicas {differing:?} still differ from replica 0's \
                 {CONVERGE_BOUND:?} after the writes stopped"
            );
            for d in dirs {
                let _ = std::fs::remove_dir_all(d);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        unreachable!()
    }

    /// Stops the workload (it must have seen no error), reads every acknowledged write
    /// back through NFS, and checks that all backing directories become identical and
    /// hold every acknowledged write. Returns a report line.
    fn finish(&self, w: Workload) -> String {
        let acked = w.stop();
        self.verify(&acked)
    }

    /// [`Self::finish`] for writes already stopped.
    fn verify(&self, acked: &[Ack]) -> String {
        assert!(
            acked.len() >= 20,
            "only {} writes acknowledged",
            acked.len()
        );
        let addr = self.addr();
        let rt = runtime();
        let check = acked.to_vec();
        rt.block_on(async move {
            let mut c = connect(addr, Duration::from_secs(30)).await?;
            let root = c.root_nfs_fh3();
            for a in &check {
                let fh = call!(
                    format!("LOOKUP {}", a.name),
                    c.lookup(&LOOKUP3args {
                        what: dirop(&root, &a.name)
                    })
                )
                .object;
                let r = call!(
                    format!("READ {}", a.name),
                    c.read(&READ3args {
                        file: fh,
                        offset: 0,
                        count: 8192,
                    })
                );
                if r.data.as_ref() != &a.data[..] {
                    return Err(format!(
                        "{} does not read back what was acknowledged",
                        a.name
                    ));
                }
            }
            Ok::<(), String>(())
        })
        .unwrap_or_else(|e| panic!("acknowledged writes after the fault: {e}"));
        let (took, tree) = self.wait_converged();
        for a in acked {
            assert!(
                std::fs::read(tree.join(&a.name)).ok().as_deref() == Some(&a.data[..]),
                "{} is missing or wrong in the replicas' backing directories",
                a.name
            );
        }
        format!(
            "{} writes acknowledged, all read back; {} backing directories identical \
             {:.1} s after the writes stopped",
            acked.len(),
            self.n,
            took.as_secs_f64()
        )
    }
}

/// Seconds since midnight UTC of a tracing log line ("2026-11-23T19:01:22.116004Z ...").
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.strip_suffix('Z')?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// From `since` to `at` (seconds since midnight UTC, within half a day of `since`; the
/// container's clock is the host's); zero if `at` came first.
fn day_diff(since: SystemTime, at: f64) -> Duration {
    let since = since
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs_f64()
        % 86_400.0;
    let d = (at - since).rem_euclid(86_400.0);
    if d > 43_200.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(d)
    }
}

/// After TEST_BOUND, removes the project and aborts the test process (a hung test must
/// not leave containers behind, and its Drop guard would never run).
fn spawn_watchdog(project: Project, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let deadline = Instant::now() + TEST_BOUND;
        while Instant::now() < deadline {
            if done.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "docker: test exceeded {TEST_BOUND:?}: removing project {} and aborting",
            project.name
        );
        project.clean_up();
        std::process::abort();
    });
}

// ---------------------------------------------------------------------------------------
// The workload: an NFS client on the host, checking every result

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

use common::{dirop, trees_equal};

type Conn = common::Conn;

/// Mounts the export, retrying while the frontend starts (connection refused, or the
/// replicas not yet up).
async fn connect(addr: SocketAddr, within: Duration) -> Result<Conn, String> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), "/")
            .mount_port(addr.port())
            .nfs3_port(addr.port())
            .connect_from_privileged_port(false)
            .credential(common::cred(0, 0, &[]))
            .mount();
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(format!("mount {addr}: {e:?}"));
            }
            Err(_) if Instant::now() >= deadline => return Err(format!("mount {addr}: timeout")),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[derive(Clone)]
struct Ack {
    name: String,
    data: Vec<u8>,
    /// When the WRITE was acknowledged.
    at: Instant,
    /// CREATE + WRITE round trips.
    write: Duration,
    /// The READ-back round trip that followed (filled in once it returned).
    read: Option<Duration>,
}

/// Writes files `w<i>` (CREATE, 4 KB WRITE FILE_SYNC, READ back) one after another on
/// its own thread until stopped; records each acknowledged write.
struct Workload {
    started: Instant,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Workload {
    fn start(addr: SocketAddr) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || runtime().block_on(write_loop(addr, stop, acked)))
        };
        Workload {
            started: Instant::now(),
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    fn last(&self) -> Option<(String, Vec<u8>)> {
        self.acked
            .lock()
            .expect("lock")
            .last()
            .map(|a| (a.name.clone(), a.data.clone()))
    }

    fn acks_after(&self, t: Instant) -> usize {
        self.acked
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.at > t)
            .count()
    }

    /// Fails the test if the workload died.
    fn check_alive(&mut self) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let r = self.thread.take().expect("thread").join();
            match r {
                Ok(Err(e)) => panic!("the NFS client saw an error: {e}"),
                Ok(Ok(())) => panic!("the workload stopped by itself"),
                Err(_) => panic!("the workload panicked"),
            }
        }
    }

    /// Waits until `k` writes were acknowledged after `t`; the time from `t` to the k-th.
    fn wait_acks_after(&mut self, t: Instant, k: usize, within: Duration, what: &str) -> Duration {
        let deadline = Instant::now() + within;
        loop {
            self.check_alive();
            if let Some(a) = self
                .acked
                .lock()
                .expect("lock")
                .iter()
                .filter(|a| a.at > t)
                .nth(k - 1)
            {
                return a.at - t;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no {k} writes within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The longest time between consecutive acknowledgements (or from `from` to the
    /// first) in `from..to`: what the NFS client saw of the fault.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acked = self.acked.lock().expect("lock");
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for a in acked.iter().filter(|a| a.at > from && a.at <= to) {
            gap = gap.max(a.at - prev);
            prev = a.at;
        }
        gap
    }

    /// Acknowledgements in `from..from + d` and the first one after `from`.
    fn acks_within(&self, from: Instant, d: Duration) -> (usize, Option<Duration>) {
        let acked = self.acked.lock().expect("lock");
        let n = acked
            .iter()
            .filter(|a| a.at > from && a.at <= from + d)
            .count();
        (n, acked.iter().find(|a| a.at > from).map(|a| a.at - from))
    }

    /// [`Self::latencies`] before the fault, while it lasted, and after it healed.
    fn phases(&self, fault: Instant, heal: Instant) -> Vec<String> {
        vec![
            self.latencies("before the fault", self.started, fault),
            self.latencies("during the fault", fault, heal),
            self.latencies("after healing", heal, Instant::now()),
        ]
    }

    /// Median CREATE+WRITE and READ latencies of the writes acknowledged in `from..to`.
    fn latencies(&self, what: &str, from: Instant, to: Instant) -> String {
        let acked = self.acked.lock().expect("lock");
        let in_range: Vec<&Ack> = acked.iter().filter(|a| a.at > from && a.at <= to).collect();
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v.get(v.len() / 2)
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "{what}: {} writes, median CREATE+WRITE {}, median READ {}",
            in_range.len(),
            median(in_range.iter().map(|a| a.write).collect()),
            median(in_range.iter().filter_map(|a| a.read).collect())
        )
    }

    /// Stops the loop after its current write; panics if the client saw any error.
    fn stop(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        let deadline = Instant::now() + OP_TIMEOUT * 3 + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the workload does not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the NFS client saw an error: {e}"),
            Err(_) => panic!("the workload panicked"),
        }
        self.acked.lock().expect("lock").clone()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
) -> Result<(), String> {
    let mut c = connect(addr, Duration::from_secs(60)).await?;
    let root = c.root_nfs_fh3();
    let mut i = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let name = format!("w{i}");
        let data: Vec<u8> = (0..4096u32)
            .map(|k| (k.wrapping_mul(7) ^ i.wrapping_mul(31)) as u8)
            .collect();
        let f = match call!(
            format!("CREATE {name}"),
            c.create(&CREATE3args {
                where_: dirop(&root, &name),
                how: createhow3::UNCHECKED(sattr3::default()),
            })
        )
        .obj
        {
            Nfs3Option::Some(f) => f,
            Nfs3Option::None => return Err(format!("CREATE {name}: no file handle")),
        };
        let w = call!(
            format!("WRITE {name}"),
            c.write(&WRITE3args {
                file: f.clone(),
                offset: 0,
                count: 4096,
                stable: stable_how::FILE_SYNC,
                data: Opaque::owned(data.clone()),
            })
        );
        if w.count != 4096 {
            return Err(format!("WRITE {name}: wrote {} of 4096 bytes", w.count));
        }
        let at = Instant::now();
        acked.lock().expect("lock").push(Ack {
            name: name.clone(),
            data: data.clone(),
            at,
            write: at - started,
            read: None,
        });
        let r = call!(
            format!("READ {name}"),
            c.read(&READ3args {
                file: f,
                offset: 0,
                count: 8192,
            })
        );
        if r.data.as_ref() != &data[..] {
            return Err(format!("READ {name}: not what was written"));
        }
        if let Some(a) = acked.lock().expect("lock").last_mut() {
            a.read = Some(at.elapsed());
        }
        i += 1;
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Prints the figures of one test in one greppable block.
fn report(test: &str, lines: &[String]) {
    let mut s = String::new();
    for l in lines {
        let _ = writeln!(s, "docker[{test}]: {l}");
    }
    eprint!("{s}");
}

// ---------------------------------------------------------------------------------------
// The fault tests (f = 1: replicas 0, 1, 2; replica 0 is the primary of view 0)

/// The primary of the view replica `observer` is in (n = 3).
fn primary(c: &Cluster, observer: u32) -> u32 {
    (c.view_of(observer) % u64::from(c.n)) as u32
}

#[test]
fn stop_a_backup_and_start_it_again() {
    let test = "stop-backup";
    let Some(c) = Cluster::up(test, 1) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 10, Duration::from_secs(60), "warm-up");
    let p = primary(&c, 0);
    let b = (p + 2) % c.n;
    let backup = c.replica(b);
    let t0 = Instant::now();
    docker(&["stop", "-t", "5", &backup]);
    let stopped = t0.elapsed();
    w.wait_acks_after(
        Instant::now(),
        20,
        Duration::from_secs(60),
        "writes with a backup stopped",
    );
    let behind = w.acks_after(t0);
    let target = w.last().expect("acknowledged writes");
    let t_start = Instant::now();
    docker(&["start", &backup]);
    let catch_up = c.wait_caught_up(b, &target, t_start);
    w.wait_acks_after(
        Instant::now(),
        10,
        Duration::from_secs(60),
        "writes after the restart",
    );
    let gap = w.longest_gap(t0, Instant::now());
    let phases = w.phases(t0, t_start);
    let end = c.finish(w);
    let mut lines = vec![
        format!("backup {b} stopped (docker stop took {})", secs(stopped)),
        format!("longest gap between acknowledged writes: {}", secs(gap)),
        format!(
            "catch-up of replica {b} after docker start ({behind} writes done meanwhile): {}",
            secs(catch_up)
        ),
        end,
    ];
    lines.extend(phases);
    report(test, &lines);
}

/// How the primary-fault tests cut the primary off and heal it, and their words for it.
#[derive(Clone, Copy)]
enum PrimaryFault {
    /// `docker pause` / `unpause`: the process freezes, its connections stay up.
    Pause,
    /// `docker network disconnect` / `connect`: the process runs on, cut off.
    Disconnect,
}

/// Fault the primary, see a view change and writes go on, heal it and see it catch up;
/// reports the times (one test per `PrimaryFault`).
fn primary_fault_until_a_view_change(test: &str, fault: PrimaryFault) {
    let Some(c) = Cluster::up(test, 1) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 10, Duration::from_secs(60), "warm-up");
    let view = c.view_of(1);
    let p = (view % u64::from(c.n)) as u32;
    let observer = if p == 1 { 2 } else { 1 };
    let primary_id = c.replica(p);
    let t_cmd = Instant::now();
    match fault {
        PrimaryFault::Pause => {
            docker(&["pause", &primary_id]);
        }
        PrimaryFault::Disconnect => c.disconnect(p),
    }
    // The fault is surely in place once the command returns (a disconnect may take
    // seconds on a loaded host, and writes go on until the interface is gone): measure
    // from there.
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    let fault_took = t0 - t_cmd;
    let (new_view, view_change) = c.wait_view_change(observer, view, wall0);
    let resumed = w.wait_acks_after(
        t0,
        10,
        Duration::from_secs(60),
        match fault {
            PrimaryFault::Pause => "writes after the view change",
            PrimaryFault::Disconnect => "writes with the primary cut off",
        },
    );
    let target = w.last().expect("acknowledged writes");
    let t_cmd = Instant::now();
    match fault {
        PrimaryFault::Pause => {
            docker(&["unpause", &primary_id]);
        }
        PrimaryFault::Disconnect => c.reconnect(p),
    }
    let t_heal = Instant::now();
    let heal_took = t_heal - t_cmd;
    let catch_up = c.wait_caught_up(p, &target, t_heal);
    let gap = w.longest_gap(t0, Instant::now());
    let (acked_before_view_change, first_ack) = w.acks_within(t0, view_change);
    let phases = w.phases(t0, t_heal);
    let end = c.finish(w);
    let (fault_line, fault_word, stall_line, heal_word) = match fault {
        PrimaryFault::Pause => (
            format!(
                "primary {p} paused in view {view} (docker pause took {}, unpause {})",
                secs(fault_took),
                secs(heal_took)
            ),
            "pause",
            format!(
                "client stalled {} (longest gap between acknowledged writes); 10 writes done {} after the pause",
                secs(gap),
                secs(resumed)
            ),
            "unpause",
        ),
        PrimaryFault::Disconnect => (
            format!(
                "primary {p} disconnected in view {view} (docker network disconnect took {}, \
                 connect {})",
                secs(fault_took),
                secs(heal_took)
            ),
            "cut",
            format!(
                "client stalled {} (longest gap between acknowledged writes)",
                secs(gap)
            ),
            "reconnecting",
        ),
    };
    let mut lines = vec![
        fault_line,
        format!(
            "view change: replica {observer} entered view {new_view} {} after the {fault_word}",
            secs(view_change)
        ),
        stall_line,
        format!(
            "catch-up of the old primary after {heal_word}: {}",
            secs(catch_up)
        ),
        format!(
            "first write acknowledged {} after the fault; {acked_before_view_change} \
             acknowledged before that view change",
            first_ack.map(secs).unwrap_or_default()
        ),
        end,
    ];
    lines.extend(phases);
    report(test, &lines);
}

#[test]
fn pause_the_primary_until_a_view_change() {
    primary_fault_until_a_view_change("pause-primary", PrimaryFault::Pause);
}

#[test]
fn disconnect_the_primary_and_reconnect_it() {
    primary_fault_until_a_view_change("disconnect-primary", PrimaryFault::Disconnect);
}

#[test]
fn isolate_one_backup_and_the_majority_goes_on() {
    let test = "isolate-minority";
    let Some(c) = Cluster::up(test, 1) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 10, Duration::from_secs(60), "warm-up");
    let view = c.view_of(0);
    let p = (view % u64::from(c.n)) as u32;
    let b = (p + 1) % c.n;
    let t_cmd = Instant::now();
    c.disconnect(b);
    let t0 = Instant::now();
    let cut_took = t0 - t_cmd;
    w.wait_acks_after(
        t0,
        30,
        Duration::from_secs(60),
        "writes with a replica isolated",
    );
    let during = w.acks_after(t0);
    let target = w.last().expect("acknowledged writes");
    let t_cmd = Instant::now();
    c.reconnect(b);
    let t_heal = Instant::now();
    let heal_took = t_heal - t_cmd;
    let catch_up = c.wait_caught_up(b, &target, t_heal);
    let gap = w.longest_gap(t0, Instant::now());
    let view_after = c.view_of(p);
    let phases = w.phases(t0, t_heal);
    let end = c.finish(w);
    assert_eq!(
        view_after, view,
        "isolating a backup must not cost a view change"
    );
    let mut lines = vec![
        format!(
            "backup {b} isolated; the majority acknowledged {during} writes meanwhile \
             (docker network disconnect took {}, connect {})",
            secs(cut_took),
            secs(heal_took)
        ),
        format!(
            "longest gap between acknowledged writes: {} (no view change: still view {view})",
            secs(gap)
        ),
        format!(
            "catch-up of replica {b} after reconnecting: {}",
            secs(catch_up)
        ),
        end,
    ];
    lines.extend(phases);
    report(test, &lines);
}

#[test]
fn partition_without_quorum_acknowledges_nothing_until_healed() {
    let test = "no-quorum";
    let Some(c) = Cluster::up(test, 1) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 10, Duration::from_secs(60), "warm-up");
    let view = c.view_of(0);
    let p = (view % u64::from(c.n)) as u32;
    let cut: Vec<u32> = (1..c.n).map(|k| (p + k) % c.n).collect();
    // The frontend stays with the primary; each backup alone: no f+1 anywhere.
    let t_cmd = Instant::now();
    for &b in &cut {
        c.disconnect(b);
    }
    let t_cut = Instant::now();
    let cut_took = t_cut - t_cmd;
    // A reply already on the wire when the links went may still land.
    std::thread::sleep(Duration::from_millis(500));
    let before = w.count();
    let hold = Duration::from_secs(6);
    std::thread::sleep(hold);
    w.check_alive();
    let during = w.count() - before;
    assert_eq!(
        during, 0,
        "{during} writes acknowledged while no quorum could be reached"
    );
    let t_cmd = Instant::now();
    for &b in &cut {
        c.reconnect(b);
    }
    let t_heal = Instant::now();
    let heal_took = t_heal - t_cmd;
    let resumed = w.wait_acks_after(
        t_heal,
        1,
        Duration::from_secs(90),
        "writes after the partition healed",
    );
    // The first write acknowledged after healing needed the cut-off backups: each must
    // come to hold it.
    let target = w
        .acked
        .lock()
        .expect("lock")
        .iter()
        .find(|a| a.at > t_heal)
        .map(|a| (a.name.clone(), a.data.clone()))
        .expect("a write after healing");
    let catch_up: Vec<Duration> = cut
        .iter()
        .map(|&b| c.wait_caught_up(b, &target, t_heal))
        .collect();
    w.wait_acks_after(
        t_heal,
        10,
        Duration::from_secs(60),
        "writes after the partition healed",
    );
    let views: Vec<u64> = (0..c.n).map(|i| c.view_of(i)).collect();
    let phases = w.phases(t_cut, t_heal);
    let end = c.finish(w);
    let mut lines = vec![
        format!(
            "backups {cut:?} cut off from the primary {p}, the frontend and each other for {} \
             (docker network disconnect x2 took {}): 0 writes acknowledged",
            secs(hold + Duration::from_millis(500)),
            secs(cut_took)
        ),
        format!(
            "after healing (docker network connect x2 took {}): first write acknowledged {} \
             later (outage {} in all); views now {views:?}",
            secs(heal_took),
            secs(resumed),
            secs(t_heal - t_cut + resumed)
        ),
        format!(
            "replicas {cut:?} hold the first write acknowledged after healing: {} after healing",
            catch_up
                .iter()
                .map(|d| secs(*d))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        end,
    ];
    lines.extend(phases);
    report(test, &lines);
}

/// f = 2 (`docker/compose.f2.yml`, five replicas): two faults at once, the primary frozen
/// and a backup cut off; the other three order a new view and go on.
#[test]
fn f2_pause_the_primary_and_isolate_a_backup() {
    let test = "f2-pause-and-isolate";
    let Some(c) = Cluster::up(test, 2) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 10, Duration::from_secs(60), "warm-up");
    let view = c.view_of(2);
    let n = u64::from(c.n);
    let p = (view % n) as u32;
    // Not the primary of the next view, so one view change is enough.
    let b = ((view + 4) % n) as u32;
    let observer = ((view + 2) % n) as u32;
    let primary_id = c.replica(p);
    // The pause is what makes the view change: measure from there (the disconnect
    // may take seconds on a loaded host, and the view change may finish before it does).
    let t_cmd = Instant::now();
    docker(&["pause", &primary_id]);
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    c.disconnect(b);
    let fault_took = t0 - t_cmd;
    let cut_took = t0.elapsed();
    let (new_view, view_change) = c.wait_view_change(observer, view, wall0);
    let resumed = w.wait_acks_after(
        t0,
        10,
        Duration::from_secs(60),
        "writes with two replicas out",
    );
    let target = w.last().expect("acknowledged writes");
    let t_cmd = Instant::now();
    docker(&["unpause", &primary_id]);
    let t_heal = Instant::now();
    c.reconnect(b);
    let t_heal_b = Instant::now();
    let heal_took = t_heal_b - t_cmd;
    let catch_up_p = c.wait_caught_up(p, &target, t_heal);
    let catch_up_b = c.wait_caught_up(b, &target, t_heal_b);
    let gap = w.longest_gap(t0, Instant::now());
    let (acked_before_view_change, first_ack) = w.acks_within(t0, view_change);
    let phases = w.phases(t0, t_heal);
    let end = c.finish(w);
    let mut lines = vec![
        format!(
            "primary {p} paused and backup {b} disconnected in view {view} (n = 5; docker \
             pause took {}, the disconnect then {}, healing both {})",
            secs(fault_took),
            secs(cut_took),
            secs(heal_took)
        ),
        format!(
            "view change: replica {observer} entered view {new_view} {} after the faults",
            secs(view_change)
        ),
        format!(
            "client stalled {} (longest gap); 10 writes done {} after the faults",
            secs(gap),
            secs(resumed)
        ),
        format!(
            "catch-up: old primary {p} {} after unpause, backup {b} {} after reconnecting",
            secs(catch_up_p),
            secs(catch_up_b)
        ),
        format!(
            "first write acknowledged {} after the fault; {acked_before_view_change} \
             acknowledged before that view change",
            first_ack.map(secs).unwrap_or_default()
        ),
        end,
    ];
    lines.extend(phases);
    report(test, &lines);
}

/// The compose files' keygen step runs on every `up`: `--if-missing` keeps the existing
/// keys, and refuses a configuration of another size. (No Docker needed.)
#[test]
fn keygen_if_missing_keeps_existing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("cluster");
    let keygen = |replicas: &str| {
        Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args(["keygen", "--replicas", replicas, "--if-missing", "--out"])
            .arg(&out)
            .args(["--addrs"])
            .arg(
                (0..replicas.parse::<u32>().expect("count"))
                    .map(|i| format!("10.9.0.{}:7000", 11 + i))
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .output()
            .expect("run keygen")
    };
    let first = keygen("3");
    assert!(first.status.success(), "{first:?}");
    let config = std::fs::read(out.join("cluster.toml")).expect("cluster.toml");
    let key = std::fs::read(out.join("keys/replica-0.toml")).expect("replica key");
    assert!(
        String::from_utf8_lossy(&config).contains("10.9.0.13:7000"),
        "container addresses in cluster.toml"
    );
    let again = keygen("3");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        std::fs::read(out.join("cluster.toml")).expect("read"),
        config
    );
    assert_eq!(
        std::fs::read(out.join("keys/replica-0.toml")).expect("read"),
        key
    );
    let other = keygen("5");
    assert!(
        !other.status.success(),
        "a 3-replica config is not reused for 5"
    );
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("is for 3 replicas"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
}

/// The names of the key files a container sees under /cluster/keys, sorted (its files
/// through `docker cp … -`, listed by `tar`).
fn key_files_of(container: &str) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("docker cp {container}:/cluster/keys - | tar -t"))
        .output()
        .expect("docker cp | tar -t");
    assert!(out.status.success(), "listing {container}'s keys: {out:?}");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("keys/"))
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// `compose down` (containers and network gone, volumes kept) and `up` again: the one-shot
/// keygen keeps the keys (`--if-missing`), the replicas restart from their volumes, and
/// every acknowledged write is still served and on every replica. Each container sees
/// its own keys alone.
#[test]
fn whole_cluster_down_and_up_keeps_keys_and_files() {
    let test = "down-up";
    let Some(c) = Cluster::up(test, 1) else {
        return;
    };
    let mut w = Workload::start(c.addr());
    w.wait_acks_after(Instant::now(), 30, Duration::from_secs(60), "writes");
    let acked = w.stop();
    let t_down = Instant::now();
    let down = c
        .project
        .compose()
        .args(["down", "-t", "5"])
        .output()
        .expect("compose down");
    assert!(down.status.success(), "{down:?}");
    let up = c
        .project
        .compose()
        .args(["up", "-d"])
        .output()
        .expect("compose up");
    assert!(up.status.success(), "{up:?}");
    let restarted = t_down.elapsed();
    let keygen_log = Command::new("docker")
        .args(["logs", &c.id("keygen")])
        .output()
        .expect("docker logs");
    assert!(
        String::from_utf8_lossy(&keygen_log.stderr).contains("keeping it and its keys"),
        "keygen kept the existing keys: {keygen_log:?}"
    );
    let end = c.verify(&acked);
    // Each container holds its own keys alone (keygen --party-dirs).
    for (service, own) in [
        ("replica0", &["replica-0.toml", "replica-0.usig.key"][..]),
        ("replica1", &["replica-1.toml", "replica-1.usig.key"][..]),
        ("replica2", &["replica-2.toml", "replica-2.usig.key"][..]),
        ("frontend", &["client-0.toml"][..]),
    ] {
        assert_eq!(
            key_files_of(&c.id(service)),
            own,
            "{service} mounts its own keys only"
        );
    }
    // What a user does after `compose up`: list the export with libnfs.
    let listed = if common::have("nfs-ls") {
        let out = Command::new("nfs-ls")
            .arg(common::url(c.port, "/"))
            .output()
            .expect("nfs-ls");
        assert!(out.status.success(), "nfs-ls: {out:?}");
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        for a in &acked {
            assert!(
                listing
                    .lines()
                    .any(|l| l.ends_with(&format!(" {}", a.name))),
                "nfs-ls lists {}: {listing}",
                a.name
            );
        }
        "nfs-ls lists every file".to_string()
    } else {
        "nfs-ls not installed: libnfs check SKIPPED".to_string()
    };
    report(
        test,
        &[
            format!(
                "compose down + up of the whole cluster took {}",
                secs(restarted)
            ),
            end,
            listed,
        ],
    );
}
