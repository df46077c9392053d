//! Time `TpmUsig::create_ui` on a private swtpm (feature `tpm`): prints the median and
//! p90 of N calls. `cargo run --release -p usig --features tpm --example tpm_create_ui -- N`.
//! Meant for profiling (perf, strace -T, valgrind) as well as for quick figures; timing
//! on a shared machine is noisy, compare runs side by side.

#[cfg(feature = "tpm")]
fn main() {
    use std::time::Instant;
    use usig::Usig;

    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let swtpm = usig::swtpm::Swtpm::start(&dir.path().join("swtpm")).expect("start swtpm");
    let location = usig::TpmLocation::new(swtpm.tcti());
    let identity = usig::tpm::provision(&location).expect("provision");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mut tpm = usig::TpmUsig::open(&location, 1, &identity, &state).expect("open");
    eprintln!("swtpm pid {:?}", swtpm.pid());
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let digest = [i as u8; 32];
        let start = Instant::now();
        tpm.create_ui(&digest).expect("create_ui");
        times.push(start.elapsed());
    }
    times.sort();
    let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "create_ui x{n}: median {:.2} ms, p10 {:.2} ms, p90 {:.2} ms",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.1).as_secs_f64() * 1e3,
        pick(0.9).as_secs_f64() * 1e3
    );
}

#[cfg(not(feature = "tpm"))]
fn main() {
    eprintln!("build with --features tpm");
}
