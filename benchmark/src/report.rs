//! The macro-benchmark's results: the paper's Table 2 (phases as rows, deployments as
//! columns, a total row) with replicated/unreplicated ratios, and the same numbers as
//! JSON and CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bulk::BulkResult;
use crate::cpu::Cost;
use crate::machine::Machine;
use crate::stats::Summary;
use crate::workload::{PHASES, Phase};

/// The baseline every other mode is divided by.
pub const BASELINE: &str = "unreplicated";

#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub phase: Phase,
    pub summary: Summary,
}

/// One deployment's results.
#[derive(Debug, Clone)]
pub struct ModeResult {
    /// "unreplicated", "minpbft" or "target".
    pub name: String,
    pub label: String,
    pub phases: Vec<PhaseResult>,
    /// COMMITs the client had to send because a WRITE came back UNSTABLE.
    pub commits: u64,
    /// Latency of each NFS procedure over the timed parts of the timed runs.
    pub calls: Vec<(&'static str, Summary)>,
    /// What one run of the five phases cost this whole process (client, and the
    /// embedded server or cluster if any), over the timed parts.
    pub cost: Cost,
    /// The large sequential transfer after the phases (`macro --bulk-mib`), if run.
    pub bulk: Option<BulkResult>,
}

impl ModeResult {
    /// Total over the phases: sums of the means, medians and 95th percentiles; the
    /// standard deviation assumes the phases are independent.
    pub fn total(&self) -> Summary {
        let sum = |f: fn(&Summary) -> f64| self.phases.iter().map(|p| f(&p.summary)).sum();
        Summary {
            n: self.phases.iter().map(|p| p.summary.n).min().unwrap_or(0),
            mean_ms: sum(|s| s.mean_ms),
            stddev_ms: self
                .phases
                .iter()
                .map(|p| p.summary.stddev_ms.powi(2))
                .sum::<f64>()
                .sqrt(),
            median_ms: sum(|s| s.median_ms),
            p95_ms: sum(|s| s.p95_ms),
            min_ms: sum(|s| s.min_ms),
            max_ms: sum(|s| s.max_ms),
        }
    }

    fn call(&self, procedure: &str) -> Option<Summary> {
        self.calls
            .iter()
            .find(|(p, _)| *p == procedure)
            .map(|(_, s)| *s)
    }

    fn phase(&self, phase: Phase) -> Option<&Summary> {
        self.phases
            .iter()
            .find(|p| p.phase == phase)
            .map(|p| &p.summary)
    }
}

#[derive(Debug, Clone)]
pub struct MacroReport {
    pub modes: Vec<ModeResult>,
    /// Modes asked for that did not run, with the reason.
    pub skipped: Vec<(String, String)>,
    pub runs: usize,
    pub warmup: usize,
    pub machine: Machine,
    pub durability: String,
}

#[derive(Serialize)]
struct JsonPhase<'a> {
    name: &'a str,
    mean_ms: f64,
    stddev_ms: f64,
    median_ms: f64,
    p95_ms: f64,
}

#[derive(Serialize)]
struct JsonCall<'a> {
    procedure: &'a str,
    calls: usize,
    mean_ms: f64,
    stddev_ms: f64,
    median_ms: f64,
    p95_ms: f64,
}

#[derive(Serialize)]
struct JsonMode<'a> {
    total_ms: f64,
    phases: Vec<JsonPhase<'a>>,
    calls: Vec<JsonCall<'a>>,
    /// Per run of the five phases, whole process.
    cost: Cost,
    #[serde(skip_serializing_if = "Option::is_none")]
    bulk: Option<BulkResult>,
}

#[derive(Serialize)]
struct Json<'a> {
    modes: BTreeMap<&'a str, JsonMode<'a>>,
    machine: &'a Machine,
    durability: &'a str,
}

impl MacroReport {
    fn baseline(&self) -> Option<&ModeResult> {
        self.modes.iter().find(|m| m.name == BASELINE)
    }

    /// Modes compared with the baseline (every mode but the baseline, if it ran).
    fn compared(&self) -> Vec<&ModeResult> {
        match self.baseline() {
            Some(_) => self.modes.iter().filter(|m| m.name != BASELINE).collect(),
            None => Vec::new(),
        }
    }

    pub fn to_json(&self) -> Result<String> {
        let modes = self
            .modes
            .iter()
            .map(|m| {
                let phases = m
                    .phases
                    .iter()
                    .map(|p| JsonPhase {
                        name: p.phase.name(),
                        mean_ms: p.summary.mean_ms,
                        stddev_ms: p.summary.stddev_ms,
                        median_ms: p.summary.median_ms,
                        p95_ms: p.summary.p95_ms,
                    })
                    .collect();
                let calls = m
                    .calls
                    .iter()
                    .map(|(procedure, s)| JsonCall {
                        procedure,
                        calls: s.n,
                        mean_ms: s.mean_ms,
                        stddev_ms: s.stddev_ms,
                        median_ms: s.median_ms,
                        p95_ms: s.p95_ms,
                    })
                    .collect();
                (
                    m.name.as_str(),
                    JsonMode {
                        total_ms: m.total().mean_ms,
                        phases,
                        calls,
                        cost: m.cost,
                        bulk: m.bulk,
                    },
                )
            })
            .collect();
        let json = Json {
            modes,
            machine: &self.machine,
            durability: &self.durability,
        };
        Ok(serde_json::to_string_pretty(&json)? + "\n")
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "mode,phase,description,runs,mean_ms,stddev_ms,median_ms,p95_ms,min_ms,max_ms\n",
        );
        for m in &self.modes {
            let rows = m
                .phases
                .iter()
                .map(|p| (p.phase.name(), p.phase.title(), p.summary))
                .chain(std::iter::once(("total", "sum over phases", m.total())));
            for (name, title, s) in rows {
                let _ = writeln!(
                    out,
                    "{},{},\"{}\",{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
                    m.name,
                    name,
                    title,
                    s.n,
                    s.mean_ms,
                    s.stddev_ms,
                    s.median_ms,
                    s.p95_ms,
                    s.min_ms,
                    s.max_ms
                );
            }
        }
        out
    }

    /// Table 2 as text.
    pub fn table(&self) -> String {
        const PHASE_W: usize = 40;
        const CELL_W: usize = 30;
        let compared = self.compared();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Table 2 (bftnfs): latency per phase in ms; {} runs per phase after {} warm-up runs",
            self.runs, self.warmup
        );
        let mut head = format!("{:<PHASE_W$}", "phase");
        let mut sub = format!("{:<PHASE_W$}", "");
        for m in &self.modes {
            let _ = write!(head, " | {:<CELL_W$}", m.name);
            let _ = write!(sub, " | {:<CELL_W$}", "  mean ± sd     median     p95");
        }
        for m in &compared {
            let _ = write!(head, " | {:<15}", format!("{}/{}", m.name, "unrepl"));
            let _ = write!(sub, " | {:>7} {:>7}", "mean", "median");
        }
        let rule = "-".repeat(head.chars().count());
        let _ = writeln!(out, "{head}\n{sub}\n{rule}");
        let baseline = self.baseline();
        let row =
            |out: &mut String, label: String, get: &dyn Fn(&ModeResult) -> Option<Summary>| {
                let mut line = format!("{label:<PHASE_W$}");
                for m in &self.modes {
                    let cell = get(m).map_or_else(|| "-".to_string(), |s| cell(&s));
                    let _ = write!(line, " | {cell:<CELL_W$}");
                }
                for m in &compared {
                    let ratio = match (baseline.and_then(get), get(m)) {
                        (Some(b), Some(s)) => format!(
                            "{:>7} {:>7}",
                            ratio(s.mean_ms, b.mean_ms),
                            ratio(s.median_ms, b.median_ms)
                        ),
                        _ => "-".to_string(),
                    };
                    let _ = write!(line, " | {ratio:<15}");
                }
                let _ = writeln!(out, "{}", line.trim_end());
            };
        for phase in PHASES {
            row(
                &mut out,
                format!("{} {}", phase.name(), phase.title()),
                &|m: &ModeResult| m.phase(phase).copied(),
            );
        }
        let _ = writeln!(out, "{rule}");
        row(&mut out, "Total".to_string(), &|m: &ModeResult| {
            Some(m.total())
        });
        let mut procedures: Vec<&str> = self
            .modes
            .iter()
            .flat_map(|m| m.calls.iter().map(|(p, _)| *p))
            .collect();
        procedures.sort_unstable();
        procedures.dedup();
        if !procedures.is_empty() {
            let _ = writeln!(out, "{rule}");
            for procedure in procedures {
                // Counts differ between modes where a call is conditional (a COMMIT
                // after an UNSTABLE write): then one per mode, in column order.
                let mut counts: Vec<usize> = self
                    .modes
                    .iter()
                    .map(|m| m.call(procedure).map_or(0, |s| s.n))
                    .collect();
                counts.dedup();
                let counts = counts
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("/");
                row(
                    &mut out,
                    format!("  one {procedure} ({counts} calls)"),
                    &|m: &ModeResult| m.call(procedure),
                );
            }
        }
        let _ = writeln!(
            out,
            "\nTotal: sums over the phases (sd as if the phases were independent). \
             Below it: the latency of one NFS call of each kind over the timed runs. \
             Ratios: the mode's mean (median) over the unreplicated one."
        );
        let _ = writeln!(
            out,
            "Cost of one run of the five phases to this whole process (the client, and the \
             embedded server or cluster), over the timed parts (estimates: whatever else the \
             process runs meanwhile, such as the other deployment's idle ticks, counts too):"
        );
        let base = self.baseline().map(|b| (b.cost.cpu_us, b.total().mean_ms));
        for m in &self.modes {
            let c = &m.cost;
            // A window cannot be shorter than the CPU measured in it spread over all the
            // cores: with this much work per run, a floor under the ratio. (Not for a
            // --target server, whose work is not in this process.)
            let cores = self.machine.cores.max(1) as f64;
            let embedded = m.name != BASELINE && m.name != "target";
            let times = match base {
                Some((cpu, total_ms)) if cpu > 0.0 && total_ms > 0.0 && embedded => {
                    format!(
                        "; {:.1}x the unreplicated CPU; spread over {} cores that much CPU takes at \
                         least {:.1} ms a run, {:.2}x the unreplicated total",
                        c.cpu_us / cpu,
                        self.machine.cores,
                        c.cpu_us / 1e3 / cores,
                        c.cpu_us / 1e3 / cores / total_ms
                    )
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: CPU {:.1} ms (user {:.1}, system {:.1}), {:.0} context switches \
                 ({:.0} waits, {:.0} preemptions), {:.2} of {} cores busy{times}",
                m.name,
                c.cpu_us / 1e3,
                c.user_us / 1e3,
                c.system_us / 1e3,
                c.switches(),
                c.voluntary_switches,
                c.involuntary_switches,
                c.cores_busy,
                self.machine.cores
            );
        }
        self.bulk_lines(&mut out);
        let _ = writeln!(out, "Calls per run:");
        for phase in PHASES {
            let _ = writeln!(out, "  {}: {}", phase.name(), phase.calls());
        }
        for m in &self.modes {
            let _ = writeln!(
                out,
                "{}: {}; COMMITs needed: {}",
                m.name, m.label, m.commits
            );
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(out, "{name}: NOT RUN: {why}");
        }
        let _ = writeln!(out, "durability: {}", self.durability);
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} cores, {}; {}; data in {}",
            m.cores, m.cpu_model, m.kernel, m.data_dir
        );
        out
    }

    /// The large transfer's rates per mode, with their ratio to the unreplicated ones.
    fn bulk_lines(&self, out: &mut String) {
        let Some(first) = self.modes.iter().find_map(|m| m.bulk) else {
            return;
        };
        let _ = writeln!(
            out,
            "Large file: {} MiB written from offset 0 in WRITEs of the server's preferred \
             size, then COMMIT; read back in READs of its preferred size and compared \
             (median of {} rounds):",
            first.mib, first.rounds
        );
        let base = self.baseline().and_then(|b| b.bulk);
        for m in &self.modes {
            let Some(b) = m.bulk else { continue };
            let vs = match base {
                Some(u) if m.name != BASELINE => format!(
                    " ({} and {} of the unreplicated rates)",
                    percent(b.write_mib_s, u.write_mib_s),
                    percent(b.read_mib_s, u.read_mib_s)
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: write {:.1} MiB/s in {} WRITEs of {} KiB, read {:.1} MiB/s in READs \
                 of {} KiB{vs}",
                m.name,
                b.write_mib_s,
                b.writes,
                b.write_bytes / 1024,
                b.read_mib_s,
                b.read_bytes / 1024
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()?).with_context(|| format!("writing {}", path.display()))
    }

    pub fn write_csv(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_csv()).with_context(|| format!("writing {}", path.display()))
    }
}

fn cell(s: &Summary) -> String {
    format!(
        "{:>7} ± {:<6} {:>7} {:>7}",
        fmt_ms(s.mean_ms),
        fmt_ms(s.stddev_ms),
        fmt_ms(s.median_ms),
        fmt_ms(s.p95_ms)
    )
}

/// Three significant digits at most, without exponent.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn percent(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "-".to_string()
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(mean_ms: f64) -> Summary {
        Summary {
            n: 10,
            mean_ms,
            stddev_ms: 1.0,
            median_ms: mean_ms,
            p95_ms: mean_ms * 1.5,
            min_ms: mean_ms / 2.0,
            max_ms: mean_ms * 2.0,
        }
    }

    fn mode(name: &str, scale: f64) -> ModeResult {
        ModeResult {
            name: name.into(),
            label: name.into(),
            phases: PHASES
                .iter()
                .enumerate()
                .map(|(i, &phase)| PhaseResult {
                    phase,
                    summary: summary((i + 1) as f64 * scale),
                })
                .collect(),
            commits: 0,
            calls: vec![
                ("MKDIR", summary(0.5 * scale)),
                ("READ", summary(0.25 * scale)),
            ],
            cost: Cost {
                cpu_us: 1000.0 * scale,
                user_us: 600.0 * scale,
                system_us: 400.0 * scale,
                voluntary_switches: 50.0 * scale,
                involuntary_switches: 5.0 * scale,
                cores_busy: 0.5 * scale,
            },
            bulk: Some(BulkResult {
                mib: 16,
                rounds: 3,
                write_bytes: 1 << 20,
                read_bytes: 1 << 20,
                writes: 16,
                write_mib_s: 100.0 / scale,
                read_mib_s: 400.0 / scale,
            }),
        }
    }

    fn report() -> MacroReport {
        MacroReport {
            modes: vec![mode("unreplicated", 1.0), mode("minpbft", 2.0)],
            skipped: vec![],
            runs: 10,
            warmup: 1,
            machine: Machine::probe(Path::new("/tmp")),
            durability: "fsync".into(),
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&report().to_json().expect("json")).expect("valid json");
        let mut top: Vec<_> = v.as_object().expect("object").keys().cloned().collect();
        top.sort();
        assert_eq!(top, ["durability", "machine", "modes"]);
        let u = &v["modes"]["unreplicated"];
        assert_eq!(u["total_ms"].as_f64(), Some(15.0));
        assert_eq!(u["phases"].as_array().expect("phases").len(), 5);
        assert_eq!(u["phases"][0]["name"], "P1");
        let mut keys: Vec<_> = u["phases"][0]
            .as_object()
            .expect("phase")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["mean_ms", "median_ms", "name", "p95_ms", "stddev_ms"]
        );
        assert_eq!(v["modes"]["minpbft"]["total_ms"].as_f64(), Some(30.0));
        assert_eq!(u["calls"][0]["procedure"], "MKDIR");
        assert_eq!(
            v["modes"]["minpbft"]["cost"]["cpu_us"].as_f64(),
            Some(2000.0)
        );
        assert_eq!(
            v["modes"]["minpbft"]["calls"][1]["mean_ms"].as_f64(),
            Some(0.5)
        );
        assert_eq!(
            v["modes"]["minpbft"]["bulk"]["write_mib_s"].as_f64(),
            Some(50.0)
        );
        assert_eq!(u["bulk"]["mib"].as_u64(), Some(16));
    }

    #[test]
    fn the_table_gives_the_large_transfer_against_the_unreplicated_one() {
        let t = report().table();
        assert!(t.contains("Large file: 16 MiB"), "{t}");
        assert!(
            t.contains("minpbft: write 50.0 MiB/s in 16 WRITEs of 1024 KiB"),
            "{t}"
        );
        assert!(t.contains("(50% and 50% of the unreplicated rates)"), "{t}");
        let mut without = report();
        for m in &mut without.modes {
            m.bulk = None;
        }
        assert!(!without.table().contains("Large file"));
        let v: serde_json::Value =
            serde_json::from_str(&without.to_json().expect("json")).expect("valid json");
        assert!(v["modes"]["minpbft"].get("bulk").is_none());
    }

    #[test]
    fn the_table_has_every_phase_a_total_and_the_ratio() {
        let t = report().table();
        for p in PHASES {
            assert!(t.contains(p.title()), "{t}");
        }
        assert!(t.contains("Total"));
        assert!(t.contains("minpbft/unrepl"));
        assert!(t.contains("2.00x"));
        assert!(t.contains("one MKDIR"), "{t}");
        assert!(t.contains("one READ"), "{t}");
        // The fake modes: 1 ms and 2 ms of CPU a run, totals 15 and 30 ms.
        assert!(t.contains("2.0x the unreplicated CPU"), "{t}");
        let cores = report().machine.cores.max(1) as f64;
        let at_least = format!("at least {:.1} ms a run", 2.0 / cores);
        assert!(t.contains(&at_least), "{t}");
    }

    #[test]
    fn csv_has_a_row_per_phase_and_total() {
        let csv = report().to_csv();
        assert_eq!(csv.lines().count(), 1 + 2 * 6);
    }
}
