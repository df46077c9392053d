//! Time `TpmUsig::create_ui` on a private swtpm (feature `tpm`), side by side with the
//! same UI made through tpm2-tss's ESYS (`create_ui_through_esys`, the path before the
//! raw one): N calls of each, interleaved in rounds of 10 so both see the same machine
//! load; prints median, p10 and p90 of each.
//! `cargo run --release -p usig --features tpm --example tpm_create_ui -- N [raw|esys]`
//! (a second argument times one path only, e.g. under `perf record` or `strace`).
//! Timing on a shared machine is noisy: compare within one run.

#[cfg(feature = "tpm")]
fn main() {
    use std::time::{Duration, Instant};
    use usig::Usig;

    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let only = args.next();
    let dir = tempfile::tempdir().expect("tempdir");
    let swtpm = usig::swtpm::Swtpm::start(&dir.path().join("swtpm")).expect("start swtpm");
    let location = usig::TpmLocation::new(swtpm.tcti());
    let identity = usig::tpm::provision(&location).expect("provision");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mut tpm = usig::TpmUsig::open(&location, 1, &identity, &state).expect("open");
    let paths: Vec<&str> = match only.as_deref() {
        Some(p @ ("raw" | "esys")) => vec![p],
        Some(other) => panic!("unknown path {other:?}: raw or esys"),
        None => vec!["raw", "esys"],
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); paths.len()];
    let mut i = 0usize;
    while times[0].len() < n {
        for (p, path) in paths.iter().enumerate() {
            for _ in 0..10.min(n - times[p].len()) {
                let digest = [i as u8; 32];
                i += 1;
                let start = Instant::now();
                match *path {
                    "raw" => tpm.create_ui(&digest),
                    _ => tpm.create_ui_through_esys(&digest),
                }
                .expect("create_ui");
                times[p].push(start.elapsed());
            }
        }
    }
    for (p, path) in paths.iter().enumerate() {
        let t = &mut times[p];
        t.sort();
        let pick = |q: f64| t[((t.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "create_ui {path:4} x{n}: median {:.2} ms, p10 {:.2} ms, p90 {:.2} ms",
            pick(0.5),
            pick(0.1),
            pick(0.9)
        );
    }
}

#[cfg(not(feature = "tpm"))]
fn main() {
    eprintln!("build with --features tpm");
}
