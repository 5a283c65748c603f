//! Percentiles, the machine's description and the report files.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::Measured;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// From every sample (nearest rank).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let rank = |q: f64| {
            let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max: rank(1.0),
        }
    }
}

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// `nats-server --version`.
    pub nats_server: String,
    /// `redis-server --version`.
    pub redis_server: String,
    /// When (UTC).
    pub date: String,
}

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Reads `/proc` and the servers' versions.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: first_line("uname", &["-r"]),
            nats_server: first_line(
                &testkit::nats_server_binary().to_string_lossy(),
                &["--version"],
            ),
            redis_server: first_line("redis-server", &["--version"]),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The command line that produced it.
    pub command: String,
    /// Every design × workload.
    pub results: Vec<Measured>,
    /// Per workload: this project's decisions/s over the seed's, and the seed's p99 over
    /// this project's.
    pub ratios: Vec<Ratio>,
}

/// This project against the seed on one workload.
#[derive(Debug, Serialize)]
pub struct Ratio {
    /// The workload.
    pub workload: &'static str,
    /// JetStream decisions/s ÷ Redis decisions/s.
    pub decision_rate: f64,
    /// Redis p99 ÷ JetStream p99 (above 1: this project's tail is shorter).
    pub p99_latency: f64,
}

impl Report {
    /// Builds the report and its ratios.
    pub fn new(results: Vec<Measured>) -> Self {
        let ratios = ["hot", "spread"]
            .into_iter()
            .filter_map(|workload| {
                let find = |design: &str| {
                    results
                        .iter()
                        .find(|m| m.workload == workload && m.design == design)
                };
                let (js, redis) = (find("jetstream")?, find("redis")?);
                Some(Ratio {
                    workload,
                    decision_rate: js.decisions_per_second / redis.decisions_per_second,
                    p99_latency: redis.latency_ms.p99 / js.latency_ms.p99,
                })
            })
            .collect();
        Report {
            machine: Machine::describe(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            results,
            ratios,
        }
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Contention benchmark\n\n{} · {}\n\n\
             Command: `{}`\n\n\
             | workload | design | contenders | slots | decisions/s | p50 ms | p99 ms | max ms | aborted | durable writes | reserved | overbooked | out-of-order winners |\n\
             | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.machine.summary(),
            self.machine.redis_server,
            self.command
        );
        for r in &self.results {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
                r.workload,
                r.design,
                r.contenders,
                r.capacity,
                r.decisions_per_second,
                r.latency_ms.p50,
                r.latency_ms.p99,
                r.latency_ms.max,
                r.aborted,
                r.durable_writes,
                r.reserved,
                r.overbooked,
                r.out_of_order_winners
            ));
        }
        if !self.ratios.is_empty() {
            out.push_str("\n| workload | decision rate, this project ÷ seed | p99 latency, seed ÷ this project |\n| --- | ---: | ---: |\n");
            for r in &self.ratios {
                out.push_str(&format!(
                    "| {} | {:.2}× | {:.2}× |\n",
                    r.workload, r.decision_rate, r.p99_latency
                ));
            }
        }
        out
    }

    /// Writes `path` (JSON) and the Markdown beside it.
    pub fn write(&self, path: &std::path::Path) -> anyhow::Result<()> {
        write_report(path, self, &self.markdown())
    }
}

impl Machine {
    /// One line for a report's header: date, cores, CPU, memory, kernel, nats-server.
    pub fn summary(&self) -> String {
        format!(
            "{} · {} cores ({}) · {} GiB · kernel {} · {}",
            self.date, self.cores, self.cpu, self.memory_gib, self.kernel, self.nats_server
        )
    }
}

/// Writes a benchmark's report: `path` as JSON and the Markdown beside it (`.md`).
pub fn write_report(
    path: &std::path::Path,
    report: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).context("Failed to create the report directory")?;
    }
    let json = serde_json::to_string_pretty(report).context("Failed to encode the report")?;
    std::fs::write(path, json + "\n")
        .with_context(|| format!("Failed to write {}", path.display()))?;
    let md = path.with_extension("md");
    std::fs::write(&md, markdown).with_context(|| format!("Failed to write {}", md.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(Vec::new()).max, 0.0);
    }
}
