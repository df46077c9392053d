//! Runs the built `bftnfs-bench` end to end on the embedded servers with a few runs and
//! checks the shape of what it writes. No timing is asserted: the figures are reported,
//! never tested.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_bftnfs-bench");
const PHASES: [&str; 5] = ["P1", "P2", "P3", "P4", "P5"];

fn run_macro(mode: &str, out: &Path) -> (serde_json::Value, String) {
    let json = out.join(format!("{mode}.json"));
    let csv = out.join(format!("{mode}.csv"));
    let plot = out.join(format!("{mode}.png"));
    let output = Command::new(BIN)
        .args(["--data-dir"])
        .arg(out.join("data"))
        .args(["macro", "--runs", "5", "--warmup", "1", "--bulk-mib", "0"])
        .args([mode, "--json"])
        .arg(&json)
        .arg("--csv")
        .arg(&csv)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("bftnfs-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bftnfs-bench {mode} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(&plot).expect("plot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    assert!(png.len() > 10_000, "a PNG with something drawn in it");
    let csv = std::fs::read_to_string(&csv).expect("csv written");
    assert_eq!(
        csv.lines().count(),
        1 + 6,
        "header, 5 phases and the total:\n{csv}"
    );
    let value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    (value, stdout)
}

fn check_mode(v: &serde_json::Value, mode: &str, runs: u64) {
    let m = &v["modes"][mode];
    let total = m["total_ms"].as_f64().expect("total_ms is a number");
    let phases = m["phases"].as_array().expect("phases is an array");
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, PHASES);
    let mut sum = 0.0;
    for p in phases {
        let mut keys: Vec<&str> = p
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["mean_ms", "median_ms", "name", "p95_ms", "stddev_ms"]
        );
        for k in ["mean_ms", "stddev_ms", "median_ms", "p95_ms"] {
            let x = p[k].as_f64().expect("a number");
            assert!(x.is_finite() && x >= 0.0, "{k} = {x}");
        }
        assert!(p["mean_ms"].as_f64().expect("mean") > 0.0);
        sum += p["mean_ms"].as_f64().expect("mean");
    }
    assert!(
        (total - sum).abs() < 1e-6 * sum.max(1.0),
        "total is the sum of the phase means"
    );
    // Per NFS call, over the timed runs of each phase: P1 makes 6 MKDIR and 6 RMDIR a
    // run, P2 2 more of each; P4 one READ.
    let calls = m["calls"].as_array().expect("calls is an array");
    let count = |procedure: &str| {
        calls
            .iter()
            .find(|c| c["procedure"] == procedure)
            .and_then(|c| c["calls"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(count("MKDIR"), runs * (6 + 2), "{calls:?}");
    assert_eq!(count("RMDIR"), runs * (6 + 2), "{calls:?}");
    assert_eq!(count("READ"), runs, "{calls:?}");
    for c in calls {
        assert!(c["mean_ms"].as_f64().expect("mean") > 0.0, "{c}");
    }
    // What a run cost the process: some CPU, spread over at most every core.
    let cost = &m["cost"];
    assert!(cost["cpu_us"].as_f64().expect("cpu_us") > 0.0, "{cost}");
    let busy = cost["cores_busy"].as_f64().expect("cores_busy");
    let cores = v["machine"]["cores"].as_f64().expect("cores");
    assert!(busy > 0.0 && busy <= cores * 1.05, "{cost}");
}

fn check_top_level(v: &serde_json::Value) {
    let mut keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["durability", "machine", "modes"]);
    assert!(v["durability"].as_str().expect("text").contains("durable"));
    assert!(v["machine"]["cores"].as_u64().expect("cores") >= 1);
    assert!(v["machine"]["kernel"].is_string());
    assert!(v["machine"]["cpu_model"].is_string());
}

#[test]
fn macro_unreplicated_writes_table_json_csv_and_plot() {
    let out = tempfile::tempdir().expect("tempdir");
    let (v, stdout) = run_macro("--unreplicated", out.path());
    check_top_level(&v);
    check_mode(&v, "unreplicated", 5);
    assert_eq!(v["modes"].as_object().expect("modes").len(), 1);
    assert!(stdout.contains("Table 2"), "{stdout}");
    assert!(stdout.contains("Total"), "{stdout}");
    assert!(stdout.contains("durability:"), "{stdout}");
    assert!(stdout.contains("machine:"), "{stdout}");
    assert!(stdout.contains("one MKDIR (40 calls)"), "{stdout}");
    // --bulk-mib 0: no large transfer.
    assert!(!stdout.contains("Large file"), "{stdout}");
    assert!(v["modes"]["unreplicated"].get("bulk").is_none());
}

/// The large transfer's figures: the file's size, the WRITEs it took at the server's
/// preferred size (the replicated cluster's largest WRITE fits one request), and rates.
fn check_bulk(v: &serde_json::Value, mode: &str, mib: u64) {
    let b = &v["modes"][mode]["bulk"];
    assert_eq!(b["mib"].as_u64(), Some(mib), "{b}");
    assert_eq!(b["rounds"].as_u64(), Some(1), "{b}");
    let wsize = b["write_bytes"].as_u64().expect("write_bytes");
    assert!(wsize >= 64 * 1024, "{b}");
    assert_eq!(
        b["writes"].as_u64(),
        Some((mib << 20).div_ceil(wsize)),
        "{b}"
    );
    for k in ["write_mib_s", "read_mib_s"] {
        let x = b[k].as_f64().expect("a rate");
        assert!(x.is_finite() && x > 0.0, "{k}: {b}");
    }
}

#[test]
fn unknown_usig_backends_are_refused_clearly() {
    let output = Command::new(BIN)
        .args(["--usig", "sgx", "macro", "--runs", "1", "--unreplicated"])
        .output()
        .expect("bftnfs-bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value"), "{stderr}");
}

/// Without the `tpm` feature, `--usig tpm` says how to get it.
#[cfg(not(feature = "tpm"))]
#[test]
fn tpm_usig_without_the_feature_is_refused_clearly() {
    let output = Command::new(BIN)
        .args(["--usig", "tpm", "macro", "--runs", "1", "--unreplicated"])
        .output()
        .expect("bftnfs-bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features tpm"), "{stderr}");
}

#[test]
fn macro_minpbft_with_the_process_usig() {
    macro_minpbft_with_usig("process");
}

/// One swtpm per replica (feature `tpm`; skipped without swtpm).
#[cfg(feature = "tpm")]
#[test]
fn tpm_macro_minpbft_with_the_tpm_usig() {
    let have_swtpm = Command::new("swtpm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_swtpm {
        eprintln!("SKIPPED: swtpm missing (apt-get install swtpm swtpm-tools)");
        return;
    }
    macro_minpbft_with_usig("tpm");
}

fn macro_minpbft_with_usig(usig: &str) {
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join(format!("{usig}.json"));
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(out.path().join("data"))
        .args([
            "--usig",
            usig,
            "macro",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--bulk-mib",
            "2",
            "--bulk-rounds",
            "1",
            "--minpbft",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("bftnfs-bench runs");
    assert!(
        output.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    check_top_level(&v);
    check_mode(&v, "minpbft", 3);
    check_bulk(&v, "minpbft", 2);
}

#[test]
fn macro_both_modes_print_the_ratio() {
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("both.json");
    let plot = out.path().join("both.svg");
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(out.path().join("data"))
        .args([
            "macro",
            "--runs",
            "5",
            "--warmup",
            "1",
            "--bulk-mib",
            "4",
            "--bulk-rounds",
            "1",
            "--unreplicated",
            "--minpbft",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("bftnfs-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    check_top_level(&v);
    check_mode(&v, "unreplicated", 5);
    check_mode(&v, "minpbft", 5);
    assert!(stdout.contains("minpbft/unrepl"), "{stdout}");
    assert!(stdout.contains("x the unreplicated CPU"), "{stdout}");
    check_bulk(&v, "unreplicated", 4);
    check_bulk(&v, "minpbft", 4);
    assert!(stdout.contains("Large file: 4 MiB"), "{stdout}");
    assert!(stdout.contains("of the unreplicated rates"), "{stdout}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("minpbft"),
        "an SVG with the modes"
    );
}

#[test]
fn micro_measures_primitives_latency_and_throughput() {
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("micro.json");
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(out.path().join("data"))
        .args([
            "micro",
            "--requests",
            "5",
            "--size-requests",
            "2",
            "--warmup",
            "1",
            "--sizes",
            "0,4096",
            "--reply-sizes",
            "4096",
            "--clients",
            "1,4",
            "--seconds",
            "0.3",
            "--primitive-samples",
            "20",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("bftnfs-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    for k in [
        "tcp_round_trip_us",
        "ecdsa_sign_us",
        "ecdsa_verify_us",
        "counter_write_us",
        "counter_write_three_at_once_us",
        "hmac_us",
    ] {
        assert!(v["primitives"][k].as_f64().expect("a number") > 0.0, "{k}");
    }
    assert!(v["floor"]["total_us"].as_f64().expect("floor") > 0.0);
    assert_eq!(v["null_latency"]["n"].as_u64(), Some(5));
    assert!(v["null_cost"]["cpu_us"].as_f64().expect("null_cost") > 0.0);
    assert!(stdout.contains("where the time goes"), "{stdout}");
    // Each throughput deployment reports the view it ended in.
    let views = v["views"].as_array().expect("views");
    assert_eq!(views.len(), 3, "{views:?}");
    assert!(
        stdout.contains("view at the end of each deployment's runs"),
        "{stdout}"
    );
    // Two request sizes with empty replies, then a 4 KB reply for the smallest sized
    // request; the benchmark checked every result's length (an error would have set
    // cluster_error).
    let sizes = v["latency_by_size"].as_array().expect("sizes");
    let pairs: Vec<_> = sizes
        .iter()
        .map(|p| (p["request_bytes"].as_u64(), p["reply_bytes"].as_u64()))
        .collect();
    assert_eq!(
        pairs,
        [
            (Some(0), Some(0)),
            (Some(4096), Some(0)),
            (Some(8), Some(4096))
        ]
    );
    assert!(stdout.contains("8 B request,  4096 B reply"), "{stdout}");
    let points = v["throughput"].as_array().expect("points");
    assert_eq!(
        points.len(),
        6,
        "2 counts x (batching off, batching on, batching + bundling)"
    );
    assert_eq!(
        points.iter().filter(|p| p["bundling"] == true).count(),
        2,
        "{points:?}"
    );
    assert!(v["cluster_error"].is_null());
    assert!(stdout.contains("Floor of one MinPBFT request"), "{stdout}");
}

#[test]
fn macro_target_measures_any_nfs_server_and_cleans_up() {
    let out = tempfile::tempdir().expect("tempdir");
    let export = out.path().join("export");
    let server = nfs_frontend::UnreplicatedServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        &export,
        fs_state::FsConfig::default(),
        nfs_frontend::ServerConfig::default(),
    )
    .expect("server starts");
    let json = out.path().join("target.json");
    let output = Command::new(BIN)
        .args(["macro", "--runs", "3", "--warmup", "0", "--target"])
        .arg(format!("{}:/", server.addr()))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("bftnfs-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    check_top_level(&v);
    check_mode(&v, "target", 3);
    assert_eq!(v["modes"].as_object().expect("modes").len(), 1);
    assert!(
        v["durability"]
            .as_str()
            .expect("text")
            .contains("own policy")
    );
    server.stop().expect("clean stop");
    // The benchmark removed its directory from someone else's export.
    let left: Vec<_> = std::fs::read_dir(export.join(fs_state::EXPORT_DIR))
        .expect("export tree")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with("bftnfs-bench-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
