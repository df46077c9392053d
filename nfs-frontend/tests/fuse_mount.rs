//! Ordinary tools (`cp -a`, `diff -r`, `ls -lR`, `mv`, `ln`, `chmod`, `truncate`, `tar`,
//! `rm -r`) on the replicated file system mounted through FUSE with `bftnfs mount`, as a
//! user on a machine without a kernel NFS client runs them: real processes throughout
//! (`bftnfs up`, `bftnfs mount`, the tools), the primary killed in the middle of a copy,
//! and a server restarted under a mount.
//!
//! FUSE needs /dev/fuse and fusermount3 (Debian's fuse3, which the test command
//! installs); without them these tests say so loudly and skip.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Up, bounded, have, port_from_stdout, trees_become_equal};

/// Whether FUSE mounts can be made here; says why not when they cannot.
fn fuse_usable() -> bool {
    if !have("fusermount3") {
        let installed = Command::new("sh")
            .arg("-c")
            .arg("(apt-get install -y fuse3 || (apt-get update && apt-get install -y fuse3)) >/dev/null 2>&1")
            .status()
            .is_ok_and(|s| s.success());
        if !installed || !have("fusermount3") {
            eprintln!(
                "!!! SKIPPED: fusermount3 (Debian: fuse3) is missing and could not be installed"
            );
            return false;
        }
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("!!! SKIPPED: /dev/fuse does not exist on this machine");
        return false;
    }
    true
}

fn mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(dir.as_str())))
        .unwrap_or(false)
}

/// `bftnfs mount ADDR DIR` as a child process, mounted when `start` returns.
struct Mount {
    child: Child,
    dir: PathBuf,
}

impl Mount {
    fn start(addr: std::net::SocketAddr, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let mut child = Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args(["mount", "--attr-ttl", "0"])
            .arg(addr.to_string())
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bftnfs mount");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = std::io::BufReader::new(stdout)
            .lines()
            .next()
            .and_then(Result::ok)
            .unwrap_or_default();
        assert!(line.contains("mounted on"), "bftnfs mount printed {line:?}");
        assert!(mounted(dir), "{} is not in /proc/mounts", dir.display());
        Mount {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// SIGTERM: the mount must go and the process exit with success within 10 s.
    fn stop(mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "bftnfs mount exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "bftnfs mount did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!mounted(&self.dir), "{} still mounted", self.dir.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if mounted(&self.dir) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .status();
        }
    }
}

/// Runs `script` with `sh -e` in `cwd`; fails the test with its output unless it
/// succeeds within a minute. Its stdout.
fn sh(cwd: &Path, script: &str) -> String {
    let (cwd, script) = (cwd.to_path_buf(), script.to_string());
    bounded(Duration::from_secs(60), move || {
        let out = Command::new("sh")
            .args(["-ec", &script])
            .current_dir(&cwd)
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    })
}

/// The next value of a seeded xorshift64 sequence (`x` must not be 0).
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// A source tree: nested directories, small files, a 3 MiB file of varied bytes, a
/// symlink.
fn make_source(root: &Path) {
    for d in ["a/b/c", "lib", "empty"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    for i in 0..24 {
        let dir = ["", "a", "a/b", "a/b/c", "lib"][i % 5];
        let body = format!("file {i}\n").repeat(1 + i * 37);
        std::fs::write(root.join(dir).join(format!("f{i}.txt")), body).expect("write");
    }
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..3 << 20).map(|_| xorshift(&mut x) as u8).collect();
    std::fs::write(root.join("lib/big.bin"), big).expect("write big");
    std::os::unix::fs::symlink("../a/f1.txt", root.join("lib/link")).expect("symlink");
}

#[test]
fn ordinary_tools_work_on_a_mounted_replicated_file_system_while_its_primary_is_killed() {
    if !fuse_usable() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    make_source(&work.join("src"));
    let up = Up::start(&work.join("cluster"));
    let mount = Mount::start(up.addr(), &work.join("mnt"));

    sh(
        work,
        "cp -a src mnt/copy1 && diff -r --no-dereference src mnt/copy1",
    );
    let listing = sh(work, "ls -lR mnt/copy1");
    assert!(listing.contains("big.bin") && listing.contains("link -> ../a/f1.txt"));
    assert_eq!(sh(work, "readlink mnt/copy1/lib/link"), "../a/f1.txt\n");
    // st_blksize is the frontend's preferred WRITE size, by which cp sizes its writes
    // (each one ordered WRITE): 1 MiB, not 4 KiB (128 KiB writes from cp).
    assert_eq!(sh(work, "stat -c %o mnt/copy1/lib/big.bin"), "1048576\n");
    // Changes in place, each read back through the mount.
    let f = "mnt/copy1/a/f1.txt";
    assert_eq!(
        sh(work, &format!("chmod 600 {f} && stat -c %a {f}")),
        "600\n"
    );
    assert_eq!(
        sh(
            work,
            &format!("truncate -s 7 {f} && echo more >> {f} && cat {f}")
        ),
        "file 1\nmore\n"
    );
    sh(
        work,
        "mv mnt/copy1/a/b mnt/copy1/moved && test -d mnt/copy1/moved/c && ! test -e mnt/copy1/a/b",
    );
    sh(
        work,
        "ln mnt/copy1/lib/big.bin mnt/copy1/hard && test $(stat -c %h mnt/copy1/hard) = 2",
    );
    sh(
        work,
        "tar -C mnt -cf t.tar copy1 && mkdir untar && tar -C untar -xf t.tar \
         && diff -r --no-dereference mnt/copy1 untar/copy1",
    );
    // Refused with a clear error, and the mount goes on.
    let fifo = Command::new("mkfifo")
        .arg(work.join("mnt/fifo"))
        .output()
        .expect("mkfifo");
    assert!(!fifo.status.success());
    assert!(String::from_utf8_lossy(&fifo.stderr).contains("not permitted"));

    // The primary (replica 0, view 0) dies while three processes copy the tree twice
    // each, side by side (the mount's worker threads): every copy finishes, whole,
    // across the view change.
    let mut copy = Command::new("sh")
        .args([
            "-ec",
            "mkdir mnt/copy2
             for i in 1 2 3; do
                 (cp -a src mnt/copy2/$i-1 && cp -a src mnt/copy2/$i-2) & eval p$i=$!
             done
             wait $p1; wait $p2; wait $p3",
        ])
        .current_dir(work)
        .spawn()
        .expect("cp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !work.join("mnt/copy2/1-1/lib").exists() {
        assert!(Instant::now() < deadline, "the copy did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    up.kill9(0);
    assert!(
        copy.try_wait().expect("wait cp").is_none(),
        "the copies ended before the primary was killed: make them longer"
    );
    let status = bounded(Duration::from_secs(90), move || {
        copy.wait().expect("wait cp")
    });
    assert!(status.success(), "cp -a during the view change: {status}");
    sh(
        work,
        "for c in 1-1 1-2 2-1 2-2 3-1 3-2; do diff -r --no-dereference src mnt/copy2/$c; done",
    );
    assert!(
        trees_become_equal(&[up.export(1), up.export(2)], Duration::from_secs(30)),
        "the two live replicas' exports differ"
    );

    sh(work, "rm -r mnt/copy1 mnt/copy2");
    assert_eq!(sh(work, "ls -A mnt"), "");
    mount.stop();
    up.terminate();
}

#[test]
fn a_mount_outlives_its_server_restarting() {
    if !fuse_usable() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let serve = |port: u16| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bftnfs"))
            .args(["serve", "--unreplicated", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(work.join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn bftnfs serve");
        let port = port_from_stdout(&mut child).expect("bftnfs serve printed its URL");
        (child, port)
    };
    let (mut server, port) = serve(0);
    let mut mount = Mount::start(
        format!("127.0.0.1:{port}").parse().expect("addr"),
        &work.join("mnt"),
    );
    sh(work, "echo kept > mnt/f && test \"$(cat mnt/f)\" = kept");

    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().expect("wait serve").success());
    // While it is down a call fails (EIO) instead of hanging or spinning.
    let down = {
        let work = work.to_path_buf();
        bounded(Duration::from_secs(20), move || {
            Command::new("cat")
                .arg(work.join("mnt/f"))
                .output()
                .expect("cat")
        })
    };
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("Input/output error"));

    // Back on the same port and data: the next call connects again.
    let (mut server, _) = serve(port);
    assert_eq!(sh(work, "cat mnt/f"), "kept\n");
    // `fusermount3 -u` ends the mount process too.
    sh(work, "fusermount3 -u mnt");
    mount.wait_exit();
    // SAFETY: as above.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().expect("wait serve").success());
}

/// One step of the differential test, on the directory `root`.
#[derive(Debug, Clone)]
enum Op {
    Mkdir(String),
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, u64),
    Rename(String, String),
    Unlink(String),
    Rmdir(String),
    Symlink(String, String),
    Link(String, String),
    Chmod(String, u32),
    Read(String),
    List(String),
    Stat(String),
}

/// A number from the environment, for exploring beyond CI's run.
fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a step answered: compared between the two file systems (times are not).
fn apply(root: &Path, op: &Op) -> Result<String, std::io::ErrorKind> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let p = |name: &str| root.join(name);
    let done = |r: std::io::Result<()>| r.map(|()| String::new()).map_err(|e| e.kind());
    match op {
        Op::Mkdir(d) => done(std::fs::create_dir(p(d))),
        Op::Write(f, data) => done(std::fs::write(p(f), data)),
        Op::Append(f, data) => done(
            std::fs::OpenOptions::new()
                .append(true)
                .open(p(f))
                .and_then(|mut file| file.write_all(data)),
        ),
        Op::Truncate(f, len) => done(
            std::fs::OpenOptions::new()
                .write(true)
                .open(p(f))
                .and_then(|file| file.set_len(*len)),
        ),
        Op::Rename(a, b) => done(std::fs::rename(p(a), p(b))),
        Op::Unlink(f) => done(std::fs::remove_file(p(f))),
        Op::Rmdir(d) => done(std::fs::remove_dir(p(d))),
        Op::Symlink(target, l) => done(std::os::unix::fs::symlink(target, p(l))),
        Op::Link(a, b) => done(std::fs::hard_link(p(a), p(b))),
        Op::Chmod(f, mode) => done(std::fs::set_permissions(
            p(f),
            std::fs::Permissions::from_mode(*mode),
        )),
        Op::Read(f) => std::fs::read(p(f))
            .map(|d| {
                format!(
                    "{} bytes, {:x}",
                    d.len(),
                    d.iter().map(|&b| u64::from(b)).sum::<u64>()
                )
            })
            .map_err(|e| e.kind()),
        Op::List(d) => std::fs::read_dir(p(d))
            .and_then(|entries| {
                let mut names = entries
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<std::io::Result<Vec<_>>>()?;
                names.sort();
                Ok(names.join(","))
            })
            .map_err(|e| e.kind()),
        Op::Stat(f) => std::fs::symlink_metadata(p(f))
            .map(|m| {
                let kind = if m.is_dir() {
                    "dir"
                } else if m.file_type().is_symlink() {
                    "link"
                } else {
                    "file"
                };
                // A directory's size and link count are the file system's own business.
                let (size, nlink) = if m.is_dir() {
                    (0, 0)
                } else {
                    (m.len(), m.nlink())
                };
                format!(
                    "{kind} size {size} mode {:o} nlink {nlink}",
                    m.mode() & 0o7777
                )
            })
            .map_err(|e| e.kind()),
    }
}

/// A seeded sequence of operations over a small name space, so that names collide,
/// directories fill and empty, and links meet renames.
fn random_ops(seed: u64, count: usize) -> Vec<Op> {
    let mut x = seed | 1;
    let mut next = move |n: u64| xorshift(&mut x) % n;
    let dirs = ["", "d1/", "d2/", "d1/e/"];
    let mut ops = vec![
        Op::Mkdir("d1".into()),
        Op::Mkdir("d2".into()),
        Op::Mkdir("d1/e".into()),
    ];
    while ops.len() < count {
        let dir = dirs[next(dirs.len() as u64) as usize];
        let name = |k: u64| format!("{dir}{}", ["a", "b", "c", "d1", "d2", "e"][k as usize]);
        let a = name(next(6));
        let b = format!(
            "{}{}",
            dirs[next(dirs.len() as u64) as usize],
            ["a", "b", "c", "e"][next(4) as usize]
        );
        let len = next(9000) as usize;
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u64 * 7 + len as u64) as u8)
            .collect();
        ops.push(match next(16) {
            0 => Op::Mkdir(a),
            1 | 13 | 14 | 15 => Op::Write(a, data),
            2 => Op::Append(a, data),
            3 => Op::Truncate(a, next(5000)),
            4 => Op::Rename(a, b),
            5 => Op::Unlink(a),
            6 => Op::Rmdir(a),
            7 => Op::Symlink(format!("target-{}", next(3)), a),
            8 => Op::Link(a, b),
            9 => Op::Chmod(a, [0o644, 0o600, 0o755, 0o700][next(4) as usize]),
            10 => Op::Read(a),
            11 => Op::List(dir.trim_end_matches('/').to_string()),
            _ => Op::Stat(a),
        });
    }
    ops
}

#[test]
fn random_operations_on_the_mount_answer_as_on_a_local_disk() {
    if !fuse_usable() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let local = work.join("local");
    std::fs::create_dir(&local).expect("local dir");
    let up = Up::start(&work.join("cluster"));
    let mount = Mount::start(up.addr(), &work.join("mnt"));
    let remote = work.join("mnt");
    // Another seed or length to explore: BFTNFS_DIFF_SEED, BFTNFS_DIFF_OPS.
    let seed = env_u64("BFTNFS_DIFF_SEED", 0x5eed_0001);
    let count = env_u64("BFTNFS_DIFF_OPS", 600) as usize;
    let ops = random_ops(seed, count);
    let (remote2, local2) = (remote.clone(), local.clone());
    let applied = bounded(Duration::from_secs(240), move || {
        apply_both(&remote2, &local2, &ops, seed)
    });
    eprintln!("{applied} of {count} operations succeeded on both");
    assert!(
        applied > count / 3,
        "only {applied} of {count} operations succeeded: the test lost its bite"
    );
    // Every replica's backing tree holds what the local one does.
    for i in 0..3 {
        assert!(
            trees_become_equal(&[local.clone(), up.export(i)], Duration::from_secs(20)),
            "replica {i}'s export differs from the local tree"
        );
    }
    mount.stop();
    up.terminate();
}

/// The nemesis thread, which holds the cluster: stopped and joined (so the cluster is
/// shut down) also when the test fails.
struct Nemesis {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Up>>,
}

impl Nemesis {
    fn finish(mut self) -> Up {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let thread = self.thread.take().expect("not finished yet");
        thread.join().expect("nemesis")
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The regular files under `dir`, at any depth (what vanishes meanwhile is skipped).
fn regular_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => regular_files(&e.path(), out),
            Ok(t) if t.is_file() => out.push(e.path()),
            _ => {}
        }
    }
}

/// Applies `ops` to the mount and to the local directory, failing at the first answer
/// that differs; returns how many succeeded on both.
fn apply_both(remote: &Path, local: &Path, ops: &[Op], seed: u64) -> usize {
    let mut applied = 0;
    for (i, op) in ops.iter().enumerate() {
        let here = apply(local, op);
        let there = apply(remote, op);
        assert_eq!(
            there, here,
            "seed {seed:#x}, step {i}: {op:?} answered differently on the mount (left) and a local disk (right)"
        );
        applied += usize::from(here.is_ok());
    }
    applied
}

/// `count` operations of sequence `seed` on both, within two minutes; how many
/// succeeded.
fn round(remote: &Path, local: &Path, seed: u64, count: usize) -> usize {
    let (remote, local) = (remote.to_path_buf(), local.to_path_buf());
    bounded(Duration::from_secs(120), move || {
        apply_both(&remote, &local, &random_ops(seed, count), seed)
    })
}

/// The differential test under crash faults: while the operations run, a nemesis kills
/// one replica at a time with -9 and restarts it (each in turn, so the primary of every
/// view among them and views change). No answer may differ from the local disk's (a
/// call in flight across a crash or a view change is re-sent by the frontend and
/// executed once). Then each replica in turn is stopped while more operations run, so
/// that the other two, the restarted ones among them, must order them: a replica that
/// came back but never caught up stalls the mount there. At the end every replica's
/// backing tree holds what the local one does.
#[test]
fn random_operations_on_the_mount_answer_as_on_a_local_disk_while_replicas_crash() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    if !fuse_usable() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let local = work.join("local");
    std::fs::create_dir(&local).expect("local dir");
    // Another seed, more crashes or less time between them to explore:
    // BFTNFS_DIFF_SEED, BFTNFS_NEMESIS_CRASHES, BFTNFS_NEMESIS_GAP_MS,
    // BFTNFS_NEMESIS_PAUSE, BFTNFS_NEMESIS_CORRUPT, BFTNFS_NEMESIS_F (f replicas at
    // a time of 2f + 1).
    let env = env_u64;
    let f = env("BFTNFS_NEMESIS_F", 1).max(1) as u32;
    let n = 2 * f + 1;
    let up = Up::start_with(&work.join("cluster"), &["--f", &f.to_string()]);
    let mount = Mount::start(up.addr(), &work.join("mnt"));
    let remote = work.join("mnt");
    // The f replicas from `first` on, round the ring.
    let group = move |first: u32| -> Vec<u32> { (first..first + f).map(|i| i % n).collect() };
    let seed = env("BFTNFS_DIFF_SEED", 0x5eed_00c4);
    let crashes_wanted = env("BFTNFS_NEMESIS_CRASHES", 3) as u32;
    let gap = Duration::from_millis(env("BFTNFS_NEMESIS_GAP_MS", 1500));
    // 1: the nemesis stops replicas (SIGSTOP, 1.5 s) instead of killing them.
    let pause = env("BFTNFS_NEMESIS_PAUSE", 0) == 1;
    // 1: the nemesis overwrites (shorter or longer) or removes a file in the same f
    // replicas' backing trees instead (a disk that lies); reads must still answer the
    // true contents, and the replicas repair.
    let corrupt = env("BFTNFS_NEMESIS_CORRUPT", 0) == 1;
    const ROUND_OPS: usize = 200;

    let stop = Arc::new(AtomicBool::new(false));
    let crashes = Arc::new(AtomicU32::new(0));
    let nemesis = Nemesis {
        stop: stop.clone(),
        thread: Some({
            let (stop, crashes) = (stop.clone(), crashes.clone());
            let mut up = up;
            std::thread::spawn(move || {
                let nap = |d: Duration| {
                    let until = Instant::now() + d;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    !stop.load(Ordering::SeqCst)
                };
                let mut victim = 0;
                // Operations run on every replica first, and between crashes the
                // restarted ones catch up (log replay, fetches, or a state transfer).
                while nap(gap) {
                    // A corrupted replica stays faulty until a checkpoint repairs it: always
                    // the same f, so that no more than f are ever faulty.
                    let victims = group(if corrupt { 1 } else { victim });
                    if corrupt {
                        for &v in &victims {
                            let mut files = Vec::new();
                            regular_files(&up.export(v), &mut files);
                            files.sort();
                            if let Some(f) = files.get(victim as usize * 7 % files.len().max(1)) {
                                // Shorter or longer contents, or no file at all.
                                let _ = match victim % 3 {
                                    0 => {
                                        std::fs::write(f, b"overwritten behind the replica's back")
                                    }
                                    1 => std::fs::write(f, vec![b'!'; 70_000]),
                                    _ => std::fs::remove_file(f),
                                };
                            }
                        }
                    } else if pause {
                        // SIGSTOP: replicas that stall with their connections open.
                        let pids: Vec<i32> = victims.iter().map(|&v| up.pid_of(v)).collect();
                        for &pid in &pids {
                            // SAFETY: kill(2) of a replica this test started.
                            unsafe { libc::kill(pid, libc::SIGSTOP) };
                        }
                        std::thread::sleep(Duration::from_millis(1500));
                        for &pid in &pids {
                            // SAFETY: as above.
                            unsafe { libc::kill(pid, libc::SIGCONT) };
                        }
                    } else {
                        up.kill9_all(&victims);
                        std::thread::sleep(Duration::from_millis(400));
                        for &v in &victims {
                            up.restart(v);
                        }
                    }
                    crashes.fetch_add(1, Ordering::SeqCst);
                    victim = (victim + 1) % n;
                }
                up
            })
        }),
    };
    let (remote2, local2, crashes2) = (remote.clone(), local.clone(), crashes.clone());
    let bound = Duration::from_secs(300) + (gap + Duration::from_secs(5)) * crashes_wanted;
    let (mut applied, mut count) = bounded(bound, move || {
        let (mut applied, mut count) = (0, 0);
        // Rounds of operations until the nemesis has crashed enough replicas.
        for round in 0.. {
            if crashes2.load(Ordering::SeqCst) >= crashes_wanted {
                break;
            }
            let ops = random_ops(seed + round, ROUND_OPS);
            applied += apply_both(&remote2, &local2, &ops, seed + round);
            count += ops.len();
        }
        (applied, count)
    });
    let mut up = nemesis.finish();
    let crashed = crashes.load(Ordering::SeqCst);
    if corrupt {
        // Operations drive checkpoints, whose disagreement repairs the corrupted.
        applied += round(&remote, &local, seed + 999, ROUND_OPS);
        count += ROUND_OPS;
        for v in group(1) {
            // A file removed behind its back stops a replica (a local fault, as when
            // its disk fails); restarted, as a supervisor would, it restores its last
            // stable checkpoint from its chunk store and catches up.
            if !up.replica_dir(v).join("pid").exists() {
                up.restart(v);
            }
            assert!(
                trees_become_equal(&[local.clone(), up.export(v)], Duration::from_secs(60)),
                "corrupted replica {v} was not repaired"
            );
        }
    }

    // Every replica is a full member again: with any f of them stopped, the others
    // order the operations.
    for victim in 0..n {
        let victims = group(victim);
        up.kill9_all(&victims);
        applied += round(
            &remote,
            &local,
            seed + 1000 + u64::from(victim),
            ROUND_OPS / 2,
        );
        count += ROUND_OPS / 2;
        for &v in &victims {
            up.restart(v);
        }
        for &v in &victims {
            assert!(
                trees_become_equal(&[local.clone(), up.export(v)], Duration::from_secs(60)),
                "replica {v} did not catch up after its restart"
            );
        }
    }
    eprintln!("{applied} of {count} operations succeeded on both across {crashed} crashes");
    assert!(
        applied > count / 3,
        "only {applied} of {count} operations succeeded: the test lost its bite"
    );
    for i in 0..n {
        assert!(
            trees_become_equal(&[local.clone(), up.export(i)], Duration::from_secs(60)),
            "replica {i}'s export differs from the local tree"
        );
    }
    mount.stop();
    up.terminate();
}
