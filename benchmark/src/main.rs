//! `bftnfs-bench`: the paper's evaluation (section 8) for bftnfs.
//!
//! - `macro` (the default): the five-phase NFS workload of section 8.3 over the NFSv3
//!   wire, printed as Table 2 for the unreplicated baseline, the embedded MinPBFT cluster
//!   and any NFSv3 server given by address; JSON, CSV and a plot on request.
//! - `micro`: section 8.1's null-operation latency, latency against request size and
//!   throughput against clients, next to the primitives they are made of.
//!
//! See README.md for what each number means.

mod bulk;
mod cpu;
mod deploy;
mod machine;
mod micro;
mod nfs;
mod plot;
mod primitives;
mod replicated;
mod report;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tracing::warn;
use tracing_subscriber::EnvFilter;

use crate::cpu::Cost;
use crate::deploy::{DeployOptions, Deployment, Mode, Target};
use crate::machine::Machine;
use crate::nfs::{Client, Identity};
use crate::primitives::PrimitiveCounts;
use crate::replicated::UsigKind;
use crate::report::{MacroReport, ModeResult, PhaseResult};
use crate::stats::Summary;
use crate::workload::WorkloadConfig;

#[derive(Parser, Debug)]
#[command(
    name = "bftnfs-bench",
    version,
    about = "Benchmarks of bftnfs after the MinBFT paper's section 8 (macro by default)"
)]
struct Cli {
    /// USIG backend of the replicated cluster.
    #[arg(long, global = true, value_enum, default_value = "software")]
    usig: UsigKind,
    /// Parent directory for the embedded servers' data (default: a new temporary
    /// directory under $TMPDIR, deleted at the end). Put it on the disk you care about:
    /// fsync costs are part of every figure.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Section 8.3: the five-phase NFS workload, printed as Table 2.
    Macro(MacroArgs),
    /// Section 8.1: null-operation latency and throughput, and the primitives' floor.
    Micro(MicroArgs),
}

#[derive(Args, Debug)]
struct MacroArgs {
    /// Timed runs of each phase.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Untimed runs of each phase before the timed ones.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Measure the embedded unreplicated server (durable, fsync per batch).
    #[arg(long)]
    unreplicated: bool,
    /// Measure the embedded MinPBFT cluster.
    #[arg(long)]
    minpbft: bool,
    /// Measure an NFSv3 server that serves MOUNT on the same TCP port:
    /// HOST:PORT[:EXPORT], export "/" by default.
    #[arg(long, value_name = "HOST:PORT[:EXPORT]")]
    target: Option<Target>,
    /// Faults tolerated by the MinPBFT cluster (2f + 1 replicas).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    f: u32,
    /// Turn off request batching in the MinPBFT cluster.
    #[arg(long)]
    no_batching: bool,
    /// AUTH_UNIX uid of the client.
    #[arg(long, default_value_t = 0)]
    uid: u32,
    /// AUTH_UNIX gid of the client.
    #[arg(long, default_value_t = 0)]
    gid: u32,
    /// After the five phases, write one file of this many MiB in WRITEs of the
    /// server's preferred size, read it back and compare it, and report MiB/s each way
    /// (0: skip).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    bulk_mib: u64,
    /// Timed rounds of the large transfer per mode (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    bulk_rounds: u64,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the results as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw grouped bars per phase and mode (.png or .svg).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct MicroArgs {
    /// Faults tolerated by the MinPBFT cluster (2f + 1 replicas).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    f: u32,
    /// Null operations timed for the null-operation latency.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Operations timed for each request or reply size.
    #[arg(long, default_value_t = 500)]
    size_requests: usize,
    /// Untimed operations before each latency series.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Request sizes in bytes (each with an empty reply).
    #[arg(long, value_delimiter = ',', default_value = "0,1024,2048,4096")]
    sizes: Vec<usize>,
    /// Reply sizes in bytes (each for the smallest request that asks for it, 8 bytes);
    /// at most 65536.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096")]
    reply_sizes: Vec<usize>,
    /// Numbers of concurrent closed-loop clients for the throughput points.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Seconds per throughput point (after a warm-up of a fifth of it, at most 1 s).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// BFT sessions of the client in the bundling throughput runs (the callers' other
    /// operations wait and travel bundled, up to 64 in one signed request).
    #[arg(long, default_value_t = 4)]
    bundle_sessions: u64,
    /// Clusters to start and measure, in this order: `batching` (the latency series and
    /// a throughput curve), `no-batching` and `bundling` (a throughput curve each).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "batching,no-batching,bundling"
    )]
    deployments: Vec<micro::Deployment>,
    /// Samples per primitive (round trips and signatures; counter writes are a tenth).
    #[arg(long, default_value_t = 2000)]
    primitive_samples: usize,
    /// Measure only the primitives and their floor (no cluster).
    #[arg(long)]
    primitives_only: bool,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() {
    nfs_frontend::alloc::keep_large_buffers();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("bftnfs-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    cli.usig.check_available()?;
    let (_temp, data_root) = match &cli.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("bftnfs-bench-")
                .tempdir()
                .context("creating a temporary data directory")?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    match cli.command {
        Some(Command::Macro(args)) => run_macro(args, cli.usig, &data_root),
        Some(Command::Micro(args)) => run_micro(args, cli.usig, &data_root),
        None => {
            let Cli { command, .. } = Cli::parse_from(["bftnfs-bench", "macro"]);
            let Some(Command::Macro(args)) = command else {
                unreachable!("parsed `macro`")
            };
            run_macro(args, cli.usig, &data_root)
        }
    }
}

/// What "durable" means in each mode; printed with every result.
fn durability(modes: &[Mode]) -> String {
    let mut parts = vec![
        "both embedded modes reply only after the operation is durable: the unreplicated \
         server fsyncs its file state once per batch of operations that arrived together; \
         each MinPBFT replica makes what a burst of inputs produced durable before any \
         message or reply of that burst leaves: its protocol log, fdatasynced once (it \
         holds every ordered request and every UI the software USIG issued, so it is \
         also the counter's durable record), except that a primary's PREPAREs leave \
         while that sync runs, under a counter lease synced earlier, and its reply \
         still waits for it; its file state is flushed after each checkpoint, beside \
         the protocol, and rebuilt from the last stable one plus the log after a crash; \
         a WRITE, UNSTABLE or \
         not, is durable when answered"
            .to_string(),
    ];
    for m in modes {
        if let Mode::Target(t) = m {
            parts.push(format!(
                "the target {t} follows its own policy, unknown to the benchmark"
            ));
        }
    }
    parts.join("; ")
}

fn run_macro(args: MacroArgs, usig: UsigKind, data_root: &Path) -> Result<()> {
    let explicit = args.unreplicated || args.minpbft || args.target.is_some();
    let mut modes = Vec::new();
    if args.unreplicated || !explicit {
        modes.push(Mode::Unreplicated);
    }
    if args.minpbft || !explicit {
        modes.push(Mode::MinPbft);
    }
    if let Some(t) = &args.target {
        modes.push(Mode::Target(t.clone()));
    }
    if let Some(plot) = &args.plot {
        let ext = plot.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !ext.eq_ignore_ascii_case("png") && !ext.eq_ignore_ascii_case("svg") {
            bail!("--plot wants a .png or .svg file, not {}", plot.display());
        }
    }
    let options = DeployOptions {
        data_root: data_root.to_path_buf(),
        f: args.f,
        batching: !args.no_batching,
        usig,
    };
    let config = WorkloadConfig {
        runs: args.runs as usize,
        warmup: args.warmup as usize,
    };
    let identity = Identity {
        uid: args.uid,
        gid: args.gid,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut deployments = Vec::new();
    let mut skipped = Vec::new();
    for mode in &modes {
        let deployment = match Deployment::start(mode, &options) {
            Ok(d) => d,
            // Asked for by default only: report it and measure the rest.
            Err(e) if !explicit => {
                eprintln!("bftnfs-bench: {}: not run: {e:#}", mode.name());
                skipped.push((mode.name().to_string(), format!("{e:#}")));
                continue;
            }
            Err(e) => return Err(e.context(format!("starting {}", mode.name()))),
        };
        eprintln!("{}: {}", mode.name(), deployment.label);
        deployments.push(deployment);
    }
    let bulk = (args.bulk_mib > 0).then_some(bulk::BulkConfig {
        mib: args.bulk_mib,
        rounds: args.bulk_rounds as usize,
    });
    let measured = rt.block_on(measure(&deployments, identity, config, bulk));
    let mut stopped = Ok(());
    let mut labels = Vec::new();
    for d in deployments {
        labels.push((d.mode.name().to_string(), d.label.clone()));
        let r = d.stop();
        if stopped.is_ok() {
            stopped = r;
        }
    }
    let measured = measured?;
    stopped?;
    let results: Vec<ModeResult> = labels
        .into_iter()
        .zip(measured)
        .map(|((name, label), m)| ModeResult {
            name,
            label,
            phases: m.phases,
            commits: m.commits,
            calls: m.calls,
            cost: m.cost,
            bulk: m.bulk,
        })
        .collect();
    if results.is_empty() {
        bail!("no mode could run");
    }
    let report = MacroReport {
        modes: results,
        skipped,
        runs: config.runs,
        warmup: config.warmup,
        machine: Machine::probe(data_root),
        durability: durability(&modes),
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.csv {
        report.write_csv(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One deployment's phases, the COMMITs its client needed, the latency of each kind of
/// NFS call, and what one run of the five phases cost the process.
struct MeasuredMode {
    phases: Vec<PhaseResult>,
    commits: u64,
    calls: Vec<(&'static str, Summary)>,
    cost: Cost,
    bulk: Option<bulk::BulkResult>,
}

/// Runs the workload on every deployment, run by run in turn (`workload::run_all`),
/// then the large transfer if asked for (`bulk::run_all`).
async fn measure(
    deployments: &[Deployment],
    identity: Identity,
    config: WorkloadConfig,
    bulk: Option<bulk::BulkConfig>,
) -> Result<Vec<MeasuredMode>> {
    let mut clients = Vec::with_capacity(deployments.len());
    for d in deployments {
        let mut client = Client::connect(&d.endpoint, identity)
            .await
            .with_context(|| format!("{}: connecting", d.mode.name()))?;
        client.null().await?;
        clients.push(client);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let top = format!("bftnfs-bench-{}-{now}", std::process::id());
    let mut runs: Vec<workload::ModeRun> = deployments
        .iter()
        .zip(clients.iter_mut())
        .map(|(d, client)| workload::ModeRun {
            mode: d.mode.name(),
            client,
            phases: Vec::new(),
            commits: 0,
        })
        .collect();
    workload::run_all(&mut runs, top.as_bytes(), config).await?;
    let mut bulk_results = match bulk {
        Some(bulk) => {
            let mut bulk_runs: Vec<bulk::BulkRun> = runs
                .iter_mut()
                .map(|r| bulk::BulkRun {
                    mode: r.mode,
                    client: &mut *r.client,
                })
                .collect();
            eprintln!(
                "large transfer: {} MiB, {} rounds per mode",
                bulk.mib, bulk.rounds
            );
            let prefix = format!("{top}-bulk-");
            bulk::run_all(&mut bulk_runs, &prefix, bulk)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        }
        None => vec![None; runs.len()],
    };
    let mut out = Vec::with_capacity(runs.len());
    for ((d, run), bulk) in deployments.iter().zip(runs).zip(bulk_results.drain(..)) {
        if matches!(d.mode, Mode::Target(_)) {
            // Someone else's server: leave it as it was (untimed).
            let root = run.client.root();
            if let Err(e) = run.client.remove_tree(&root, top.as_bytes()).await {
                warn!("could not remove {top} from the target: {e:#}");
            }
        }
        let phases = run
            .phases
            .into_iter()
            .map(|r| {
                let summary = Summary::of(&r.samples).context("a phase without samples")?;
                Ok(PhaseResult {
                    phase: r.phase,
                    summary,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let calls = run
            .client
            .calls
            .by_procedure
            .iter()
            .filter_map(|(procedure, samples)| Some((*procedure, Summary::of(samples)?)))
            .collect();
        let cost = run
            .client
            .calls
            .used
            .per(config.runs, run.client.calls.recorded);
        out.push(MeasuredMode {
            phases,
            commits: run.commits,
            calls,
            cost,
            bulk,
        });
    }
    Ok(out)
}

fn run_micro(args: MicroArgs, usig: UsigKind, data_root: &Path) -> Result<()> {
    if args.seconds <= 0.0 || !args.seconds.is_finite() {
        bail!("--seconds must be positive");
    }
    if args.clients.contains(&0) {
        bail!("--clients must all be at least 1");
    }
    if let Some(big) = args
        .reply_sizes
        .iter()
        .find(|r| **r > nfs_frontend::null_op::REPLY_BYTES_MAX)
    {
        bail!(
            "--reply-sizes: {big} is over the null application's largest reply, {} bytes",
            nfs_frontend::null_op::REPLY_BYTES_MAX
        );
    }
    let config = micro::MicroConfig {
        f: args.f,
        data_root: data_root.to_path_buf(),
        usig,
        requests: args.requests.max(1),
        size_requests: args.size_requests.max(1),
        warmup: args.warmup,
        sizes: args.sizes,
        reply_sizes: args.reply_sizes,
        clients: args.clients,
        seconds: args.seconds,
        bundle_sessions: args.bundle_sessions,
        deployments: args.deployments,
        primitives_only: args.primitives_only,
        primitives: PrimitiveCounts {
            round_trips: args.primitive_samples.max(1),
            signatures: args.primitive_samples.max(1),
            counter_writes: (args.primitive_samples / 10).max(1),
        },
    };
    let report = micro::run(&config, Machine::probe(data_root))?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(e) = report.cluster_error {
        bail!("protocol measurements missing: {e}");
    }
    Ok(())
}
