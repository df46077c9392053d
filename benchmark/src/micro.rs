//! The micro-benchmarks of paper section 8.1 on the embedded MinPBFT cluster with the null
//! application: latency of one null operation (one client, sequential), latency against
//! the request and the reply size, and throughput against the number of concurrent clients with
//! batching on and off; beside them, the primitives those numbers are made of and the
//! floor they imply.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use nfs_frontend::config::UsigKeyKind;
use nfs_frontend::null_op;
use serde::Serialize;
use tracing::warn;

use crate::cpu::{Cost, Usage};
use crate::machine::Machine;
use crate::primitives::{self, Floor, PrimitiveCounts, Primitives};
use crate::replicated::{self, Cluster, ClusterConfig, ProtocolClient, UsigKind};
use crate::stats::Summary;

/// A request unanswered this long means the cluster is stuck: stop, not wait.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct MicroConfig {
    pub f: u32,
    pub data_root: PathBuf,
    pub usig: UsigKind,
    /// Null operations timed for the null-operation latency.
    pub requests: usize,
    /// Operations timed per request or reply size.
    pub size_requests: usize,
    /// Untimed operations before each latency series.
    pub warmup: usize,
    /// Request sizes, each with an empty reply.
    pub sizes: Vec<usize>,
    /// Reply sizes, each asked for by the smallest request that can (`null_op`).
    pub reply_sizes: Vec<usize>,
    pub clients: Vec<usize>,
    pub seconds: f64,
    /// BFT sessions of the client in the bundling throughput runs.
    pub bundle_sessions: u64,
    /// The cluster deployments to measure, in the order they run.
    pub deployments: Vec<Deployment>,
    pub primitives_only: bool,
    pub primitives: PrimitiveCounts,
}

/// One embedded cluster the micro-benchmark starts and measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deployment {
    /// Batching on (the cluster's default): the latency series, then throughput.
    Batching,
    /// One request per batch: throughput only.
    NoBatching,
    /// Batching, and the client bundles what waits beyond its sessions: throughput only.
    Bundling,
}

impl Deployment {
    fn name(self) -> &'static str {
        match self {
            Self::Batching => "batching",
            Self::NoBatching => "no-batching",
            Self::Bundling => "bundling",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    pub request_bytes: usize,
    /// The size of every result the client accepted (checked; `nfs_frontend::null_op`).
    pub reply_bytes: usize,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputPoint {
    pub batching: bool,
    /// The client sent the operations waiting beyond its idle sessions as one bundled
    /// request (with `bundle_sessions` sessions instead of one per caller).
    pub bundling: bool,
    pub clients: usize,
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_second: f64,
    /// Operations per request the client sent, warm-up included: above 1 only with
    /// bundling (how many operations shared one signature and one message per replica).
    pub ops_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MicroReport {
    pub machine: Machine,
    pub f: u32,
    pub usig: &'static str,
    pub primitives: Primitives,
    pub floor: Floor,
    pub null_latency: Option<Summary>,
    /// What the timed null operations cost the whole process (client and replicas), per
    /// operation.
    pub null_cost: Option<Cost>,
    pub latency_by_size: Vec<LatencyPoint>,
    pub throughput: Vec<ThroughputPoint>,
    /// Per throughput deployment ("batching", "no-batching", "bundling"): the highest
    /// view a replica ended in (0: the primary was never replaced).
    pub views: Vec<(&'static str, u64)>,
    /// Why the protocol measurements are missing, if they are.
    pub cluster_error: Option<String>,
}

pub fn run(config: &MicroConfig, machine: Machine) -> Result<MicroReport> {
    config.usig.check_available()?;
    eprintln!("measuring primitives ...");
    let prims = primitives::measure(config.primitives, &config.data_root)?;
    let floor = Floor::of(&prims, config.usig.usig_key() == UsigKeyKind::Shared);
    let mut report = MicroReport {
        machine,
        f: config.f,
        usig: config.usig.name(),
        primitives: prims,
        floor,
        null_latency: None,
        null_cost: None,
        latency_by_size: Vec::new(),
        throughput: Vec::new(),
        views: Vec::new(),
        cluster_error: None,
    };
    if config.primitives_only {
        return Ok(report);
    }
    if let Err(e) = protocol(config, &mut report) {
        warn!("protocol measurements stopped: {e:#}");
        report.cluster_error = Some(format!("{e:#}"));
    }
    Ok(report)
}

fn protocol(config: &MicroConfig, report: &mut MicroReport) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The paper's two throughput curves, then bundling on top.
    for &deployment in &config.deployments {
        let name = deployment.name();
        let batching = deployment != Deployment::NoBatching;
        let bundling = deployment == Deployment::Bundling;
        let mut cluster = replicated::start(&ClusterConfig {
            f: config.f,
            // A new directory each run: a cluster is never restarted on another run's
            // state (a user's --data-dir outlives the run).
            dir: crate::deploy::fresh_dir(&config.data_root, &format!("micro-{name}"))?,
            batching,
            null_app: true,
            // One session per concurrent caller, so that all of them are in flight;
            // with bundling, a few sessions that each carry what has queued up.
            sessions: if bundling {
                config.bundle_sessions.max(1)
            } else {
                config.clients.iter().copied().max().unwrap_or(1) as u64
            },
            bundling,
            usig: config.usig,
        })?;
        // The client's engine runs here, beside the callers, as the NFS frontend runs
        // its own beside its NFS server: a reply wakes the callers it completes, and
        // what they call next reaches the engine, without crossing threads.
        let engine = cluster.take_client_engine().map(|engine| rt.spawn(engine));
        let local = tokio::task::LocalSet::new();
        let measured = local.block_on(&rt, async {
            if batching && !bundling {
                // Latency is measured with batching on, the cluster's default; one
                // sequential client never has more than one request to batch.
                let client = cluster.client();
                let (null, used, wall) =
                    latency(&*client, (0, 0), config.warmup, config.requests, "null op").await?;
                report.null_latency = Summary::of(&null);
                report.null_cost = Some(used.per(null.len(), wall));
                let sizes = config.sizes.iter().map(|&q| (q, 0));
                let sizes = sizes.chain(config.reply_sizes.iter().map(|&r| (0, r)));
                for (request, reply) in sizes {
                    let (samples, _, _) = latency(
                        &*client,
                        (request, reply),
                        config.warmup.min(config.size_requests),
                        config.size_requests,
                        &format!("{request} B op, {reply} B reply"),
                    )
                    .await?;
                    if let Some(summary) = Summary::of(&samples) {
                        report.latency_by_size.push(LatencyPoint {
                            request_bytes: null_op::encode(request, reply).len(),
                            reply_bytes: reply,
                            summary,
                        });
                    }
                }
            }
            for &clients in &config.clients {
                let point =
                    throughput(&*cluster, clients, config.seconds, batching, bundling).await?;
                report.throughput.push(point);
            }
            anyhow::Ok(())
        });
        if let Some(engine) = engine {
            // Stopped now, while the runtime runs, not at its next use.
            engine.abort();
            let _ = rt.block_on(engine);
        }
        report.views.push((name, cluster.stop()?));
        measured?;
    }
    Ok(())
}

/// `n` sequential operations of `(request, reply)` bytes after `warmup` untimed ones:
/// their latencies, and what the timed ones cost the process over how long. A result
/// other than the `reply` bytes asked for is an error.
async fn latency(
    client: &dyn ProtocolClient,
    (request, reply): (usize, usize),
    warmup: usize,
    n: usize,
    what: &str,
) -> Result<(Vec<Duration>, Usage, Duration)> {
    let bar = bar(what, warmup + n);
    let op = null_op::encode(request, reply);
    let mut samples = Vec::with_capacity(n);
    let (mut used_from, mut timed_from) = (Usage::now(), Instant::now());
    for i in 0..warmup + n {
        if i == warmup {
            (used_from, timed_from) = (Usage::now(), Instant::now());
        }
        let op = op.clone();
        let start = Instant::now();
        let result = tokio::time::timeout(INVOKE_TIMEOUT, client.invoke(op, false))
            .await
            .with_context(|| format!("{what}: no reply in {INVOKE_TIMEOUT:?}"))?;
        let elapsed = start.elapsed();
        if result.len() != reply || result.iter().any(|b| *b != null_op::REPLY_FILL) {
            anyhow::bail!(
                "{what}: a {}-byte result, not the {reply} bytes asked for",
                result.len()
            );
        }
        if i >= warmup {
            samples.push(elapsed);
        }
        bar.inc(1);
    }
    let (used, wall) = (Usage::now().since(&used_from), timed_from.elapsed());
    bar.finish_and_clear();
    Ok((samples, used, wall))
}

/// `clients` closed-loop clients issuing null operations for `seconds`; the first fifth
/// (at most one second) is a warm-up that is not counted.
async fn throughput(
    cluster: &dyn Cluster,
    clients: usize,
    seconds: f64,
    batching: bool,
    bundling: bool,
) -> Result<ThroughputPoint> {
    let warm = Duration::from_secs_f64((seconds / 5.0).min(1.0));
    let timed = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let (counted_from, deadline) = (start + warm, start + warm + timed);
    let done = Rc::new(Cell::new(0u64));
    let finished = Rc::new(Cell::new(0u64));
    let requests_before = cluster.client().requests_sent();
    let bar = ProgressBar::new_spinner();
    bar.set_message(format!(
        "throughput: {clients} clients, batching {}, bundling {}",
        if batching { "on" } else { "off" },
        if bundling { "on" } else { "off" }
    ));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = cluster.client();
        let done = Rc::clone(&done);
        let finished = Rc::clone(&finished);
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                tokio::time::timeout(INVOKE_TIMEOUT, client.invoke(Vec::new(), false))
                    .await
                    .map_err(|_| anyhow::anyhow!("no reply in {INVOKE_TIMEOUT:?}"))?;
                finished.set(finished.get() + 1);
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if now >= counted_from {
                    done.set(done.get() + 1);
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await
            .context("a throughput client panicked")?
            .with_context(|| format!("throughput with {clients} clients"))?;
    }
    bar.finish_and_clear();
    let ops = done.get();
    let requests = cluster.client().requests_sent() - requests_before;
    Ok(ThroughputPoint {
        ops_per_request: finished.get() as f64 / requests.max(1) as f64,
        batching,
        bundling,
        clients,
        ops,
        seconds: timed.as_secs_f64(),
        ops_per_second: ops as f64 / timed.as_secs_f64(),
    })
}

fn bar(what: &str, total: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len}  {elapsed}")
            .expect("valid template"),
    );
    bar.set_prefix(what.to_string());
    bar
}

impl MicroReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let p = &self.primitives;
        let fl = &self.floor;
        let _ = writeln!(out, "Primitives (medians, measured in this run):");
        let _ = writeln!(
            out,
            "  loopback TCP round trip, 64 B    {:>8.1} µs (the two ends on two cores)",
            p.tcp_round_trip_us
        );
        let _ = writeln!(
            out,
            "  ECDSA P-256 sign (ring)          {:>8.1} µs",
            p.ecdsa_sign_us
        );
        let _ = writeln!(
            out,
            "  ECDSA P-256 verify (ring)        {:>8.1} µs",
            p.ecdsa_verify_us
        );
        let _ = writeln!(
            out,
            "  counter write (16 B + fdatasync) {:>8.1} µs",
            p.counter_write_us
        );
        let _ = writeln!(
            out,
            "    three at once (one per replica) {:>8.1} µs each",
            p.counter_write_three_at_once_us
        );
        let _ = writeln!(
            out,
            "  HMAC-SHA256, 64 B                {:>8.2} µs",
            p.hmac_us
        );
        let _ = writeln!(
            out,
            "Floor of one MinPBFT request (f = 1, notes/limits.md): {} signs + {} verifies + {} MACs \
             = {:.0} µs CPU; {} one-way hops = {:.0} µs; {} counter writes = {:.0} µs; total {:.0} µs",
            fl.signs,
            fl.verifies,
            fl.macs,
            fl.cpu_us,
            fl.one_way_hops,
            fl.network_us,
            fl.counter_writes,
            fl.disk_us,
            fl.total_us
        );
        let _ = writeln!(
            out,
            "\nMinPBFT f = {}, {} USIG, null application:",
            self.f, self.usig
        );
        match &self.null_latency {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "  null operation latency: median {:.0} µs, mean {:.0} ± {:.0} µs, p95 {:.0} µs ({} ops)",
                    s.median_ms * 1e3,
                    s.mean_ms * 1e3,
                    s.stddev_ms * 1e3,
                    s.p95_ms * 1e3,
                    s.n
                );
                let measured_us = s.median_ms * 1e3;
                let _ = writeln!(
                    out,
                    "  efficiency floor/measured (median): {:.0}% ({:.0}% without the counter writes)",
                    100.0 * fl.total_us / measured_us,
                    100.0 * (fl.total_us - fl.disk_us) / measured_us
                );
                if let Some(c) = &self.null_cost {
                    let _ = writeln!(
                        out,
                        "  where the time goes (whole process: client and {} replicas, timed null ops):",
                        2 * self.f + 1
                    );
                    let cores = self.machine.cores.max(1);
                    let spread_us = c.cpu_us / cores as f64;
                    let _ = writeln!(
                        out,
                        "    CPU per operation {:.0} µs (user {:.0}, system {:.0}), {:.2} of {cores} cores busy \
                         on average: spread over {cores} cores, one operation's work alone takes {:.0} µs \
                         ({:.0}% of the median)",
                        c.cpu_us,
                        c.user_us,
                        c.system_us,
                        c.cores_busy,
                        spread_us,
                        100.0 * spread_us / measured_us
                    );
                    let _ = writeln!(
                        out,
                        "    context switches per operation {:.1} ({:.1} waits, {:.1} preemptions)",
                        c.switches(),
                        c.voluntary_switches,
                        c.involuntary_switches
                    );
                    let _ = writeln!(
                        out,
                        "    counter writes: {:.0} µs alone (the floor counts {}), {:.0} µs each when three \
                         run at once (the replicas' log syncs share one disk)",
                        p.counter_write_us, fl.counter_writes, p.counter_write_three_at_once_us
                    );
                }
            }
            None => {
                let _ = writeln!(out, "  null operation latency: not measured");
            }
        }
        if !self.latency_by_size.is_empty() {
            let _ = writeln!(
                out,
                "  latency vs request and reply size (a request that asks for a reply size is at least {} B):",
                null_op::SIZED_OP_BYTES
            );
            for l in &self.latency_by_size {
                let _ = writeln!(
                    out,
                    "    {:>5} B request, {:>5} B reply: median {:>6.0} µs, mean {:>6.0} ± {:.0} µs, p95 {:>6.0} µs",
                    l.request_bytes,
                    l.reply_bytes,
                    l.summary.median_ms * 1e3,
                    l.summary.mean_ms * 1e3,
                    l.summary.stddev_ms * 1e3,
                    l.summary.p95_ms * 1e3
                );
            }
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(out, "  throughput (null ops/s, closed loop):");
            let _ = writeln!(
                out,
                "    clients   batching off   batching on   batching + bundling (ops/request)"
            );
            let clients: std::collections::BTreeSet<usize> =
                self.throughput.iter().map(|t| t.clients).collect();
            for c in clients {
                let get = |batching: bool, bundling: bool| {
                    self.throughput
                        .iter()
                        .find(|t| {
                            t.clients == c && t.batching == batching && t.bundling == bundling
                        })
                        .map_or_else(|| "-".to_string(), |t| format!("{:.0}", t.ops_per_second))
                };
                let per_request = self
                    .throughput
                    .iter()
                    .find(|t| t.clients == c && t.batching && t.bundling)
                    .map_or_else(String::new, |t| format!(" ({:.1})", t.ops_per_request));
                let _ = writeln!(
                    out,
                    "    {c:>7}   {:>12}   {:>11}   {:>19}{per_request}",
                    get(false, false),
                    get(true, false),
                    get(true, true)
                );
            }
        }
        if !self.views.is_empty() {
            let views: Vec<String> = self
                .views
                .iter()
                .map(|(name, v)| format!("{name} {v}"))
                .collect();
            let _ = writeln!(
                out,
                "  view at the end of each deployment's runs (0: no view change): {}",
                views.join(", ")
            );
        }
        if let Some(e) = &self.cluster_error {
            let _ = writeln!(out, "  NOT MEASURED: {e}");
        }
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} cores, {}; {}; data in {}",
            m.cores, m.cpu_model, m.kernel, m.data_dir
        );
        out
    }
}
