//! The physical costs one MinPBFT request is made of, measured in the same run as the
//! protocol (notes/limits.md: "measure again in your own benchmarks, side by side"), and
//! the latency floor they imply for one request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde::Serialize;

use crate::stats::median_us;

/// How many times each primitive runs.
#[derive(Debug, Clone, Copy)]
pub struct PrimitiveCounts {
    pub round_trips: usize,
    pub signatures: usize,
    pub counter_writes: usize,
}

/// Medians, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Primitives {
    /// 64-byte ping-pong over loopback TCP (std, TCP_NODELAY).
    pub tcp_round_trip_us: f64,
    /// ECDSA P-256 (ring) over a 32-byte digest.
    pub ecdsa_sign_us: f64,
    pub ecdsa_verify_us: f64,
    /// pwrite 16 B in place + fdatasync, in the data directory's file system.
    pub counter_write_us: f64,
    /// The same, by three threads at once, one file each (three replicas' log syncs on
    /// one disk, as in the embedded cluster): they start together and then write
    /// without waiting for one another; the median of every thread's writes.
    pub counter_write_three_at_once_us: f64,
    /// HMAC-SHA256 (ring) over 64 bytes.
    pub hmac_us: f64,
}

/// One MinPBFT request with f = 1 on its critical path (notes/limits.md, "Floor of one
/// MinPBFT request"): the client signs; the primary verifies the request and creates a
/// UI; the backup verifies the PREPARE's UI and the request and creates its UI; the
/// receiver of the COMMIT verifies it, executes and MACs its reply, and the client
/// checks f + 1 reply MACs; 4 one-way hops; each UI waits for a durable counter write.
/// With a shared USIG key the two UIs are made and checked with HMACs instead: 1 sign,
/// 2 verifies (the request's signature) and 7 MACs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Floor {
    pub signs: u32,
    pub verifies: u32,
    pub macs: u32,
    pub one_way_hops: u32,
    pub counter_writes: u32,
    pub cpu_us: f64,
    pub network_us: f64,
    pub disk_us: f64,
    pub total_us: f64,
}

impl Floor {
    pub fn of(p: &Primitives, shared_usig_key: bool) -> Floor {
        let (signs, verifies, macs, one_way_hops, counter_writes) = match shared_usig_key {
            false => (3, 4, 3, 4, 2),
            true => (1, 2, 3 + 2 + 2, 4, 2),
        };
        let cpu_us = f64::from(signs) * p.ecdsa_sign_us
            + f64::from(verifies) * p.ecdsa_verify_us
            + f64::from(macs) * p.hmac_us;
        let network_us = f64::from(one_way_hops) * p.tcp_round_trip_us / 2.0;
        let disk_us = f64::from(counter_writes) * p.counter_write_us;
        Floor {
            signs,
            verifies,
            macs,
            one_way_hops,
            counter_writes,
            cpu_us,
            network_us,
            disk_us,
            total_us: cpu_us + network_us + disk_us,
        }
    }
}

pub fn measure(counts: PrimitiveCounts, data_dir: &Path) -> Result<Primitives> {
    let (ecdsa_sign_us, ecdsa_verify_us) = ecdsa(counts.signatures)?;
    Ok(Primitives {
        tcp_round_trip_us: tcp_round_trip(counts.round_trips)?,
        ecdsa_sign_us,
        ecdsa_verify_us,
        counter_write_us: counter_write(counts.counter_writes, data_dir)?,
        counter_write_three_at_once_us: counter_writes_at_once(3, counts.counter_writes, data_dir)?,
        hmac_us: hmac(),
    })
}

fn tcp_round_trip(n: usize) -> Result<f64> {
    const MSG: usize = 64;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding loopback")?;
    let addr = listener.local_addr()?;
    let warmup = n / 10 + 1;
    // The two ends on two different cores, as two replicas' threads on two cores (or
    // machines) are: when the scheduler happens to put both on one core, a round trip
    // is a direct switch of about 5 µs here instead of 70, and the floor it implies
    // swung by a factor of two between runs.
    let cores = allowed_cores();
    let echo_core = cores.get(1).copied();
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        if let Some(core) = echo_core {
            pin_to(core);
        }
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; MSG];
        for _ in 0..n + warmup {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let restore = echo_core.and_then(|_| {
        let before = current_affinity()?;
        pin_to(cores[0]);
        Some(before)
    });
    let mut s = TcpStream::connect(addr).context("connecting over loopback")?;
    s.set_nodelay(true)?;
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let start = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    if let Some(before) = restore {
        set_affinity(&before);
    }
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(median_us(&mut samples))
}

/// The calling thread's CPU mask, or `None` if it cannot be read.
fn current_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) == 0)
            .then_some(set)
    }
}

/// CPUs this thread may run on, in order.
fn allowed_cores() -> Vec<usize> {
    let Some(set) = current_affinity() else {
        return Vec::new();
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set within its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Best effort: a thread left unpinned only makes the measurement noisier.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

fn pin_to(core: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within its size.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        set
    };
    set_affinity(&set);
}

/// (sign, verify) medians.
fn ecdsa(n: usize) -> Result<(f64, f64)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("ECDSA key generation failed"))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("ECDSA key parse failed"))?;
    let public =
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref().to_vec());
    let digest = [0x5au8; 32];
    let mut signs = Vec::with_capacity(n);
    let mut sig = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let s = key
            .sign(&rng, &digest)
            .map_err(|_| anyhow::anyhow!("ECDSA sign failed"))?;
        signs.push(start.elapsed());
        sig = s.as_ref().to_vec();
    }
    let mut verifies = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        public
            .verify(&digest, &sig)
            .map_err(|_| anyhow::anyhow!("ECDSA verify failed"))?;
        verifies.push(start.elapsed());
    }
    Ok((median_us(&mut signs), median_us(&mut verifies)))
}

/// A USIG counter record: 16 bytes written in place, then fdatasync.
fn counter_write(n: usize, dir: &Path) -> Result<f64> {
    let mut samples = counter_writes(n, dir, None)?;
    Ok(median_us(&mut samples))
}

/// `writers` threads doing `counter_write` at the same time: they start together and
/// then write `n` times each without waiting for one another (a barrier before every
/// write would hang the others if one thread failed).
fn counter_writes_at_once(writers: usize, n: usize, dir: &Path) -> Result<f64> {
    let barrier = std::sync::Barrier::new(writers);
    let mut samples = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|_| scope.spawn(|| counter_writes(n, dir, Some(&barrier))))
            .collect();
        let mut all = Vec::with_capacity(writers * n);
        for t in threads {
            let samples = t
                .join()
                .map_err(|_| anyhow::anyhow!("counter writer panicked"))??;
            all.extend(samples);
        }
        anyhow::Ok(all)
    })?;
    Ok(median_us(&mut samples))
}

/// `n` counter writes to a new file in `dir`, after every thread sharing `start`
/// reached it (each thread reaches it exactly once, even if its file cannot be made).
fn counter_writes(
    n: usize,
    dir: &Path,
    start: Option<&std::sync::Barrier>,
) -> Result<Vec<Duration>> {
    let file = std::fs::create_dir_all(dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| tempfile::tempfile_in(dir).context("temporary counter file"))
        .and_then(|file| {
            file.write_all_at(&[0u8; 4096], 0)?;
            file.sync_all()?;
            Ok(file)
        });
    if let Some(b) = start {
        b.wait();
    }
    let file = file?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut record = [0u8; 16];
        record[..8].copy_from_slice(&i.to_le_bytes());
        let start = Instant::now();
        file.write_all_at(&record, 0)?;
        file.sync_data()?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn hmac() -> f64 {
    const BATCH: usize = 1000;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32]);
    let msg = [3u8; 64];
    let mut per_batch: Vec<Duration> = (0..50)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                std::hint::black_box(ring::hmac::sign(&key, std::hint::black_box(&msg)));
            }
            start.elapsed()
        })
        .collect();
    median_us(&mut per_batch) / BATCH as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_adds_up() {
        let p = Primitives {
            tcp_round_trip_us: 20.0,
            ecdsa_sign_us: 20.0,
            ecdsa_verify_us: 60.0,
            counter_write_us: 150.0,
            counter_write_three_at_once_us: 300.0,
            hmac_us: 0.5,
        };
        let f = Floor::of(&p, false);
        assert_eq!(f.cpu_us, 3.0 * 20.0 + 4.0 * 60.0 + 1.5);
        assert_eq!(f.network_us, 40.0);
        assert_eq!(f.disk_us, 300.0);
        assert_eq!(f.total_us, f.cpu_us + 340.0);
        let shared = Floor::of(&p, true);
        assert_eq!(shared.cpu_us, 20.0 + 2.0 * 60.0 + 3.5);
        assert_eq!(shared.total_us, shared.cpu_us + 340.0);
    }

    #[test]
    fn primitives_measure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = measure(
            PrimitiveCounts {
                round_trips: 20,
                signatures: 5,
                counter_writes: 3,
            },
            dir.path(),
        )
        .expect("measure");
        assert!(p.tcp_round_trip_us > 0.0 && p.ecdsa_verify_us > 0.0 && p.hmac_us > 0.0);
        assert!(p.counter_write_us > 0.0 && p.counter_write_three_at_once_us > 0.0);
    }
}
