//! CPU time and memory of the processes a benchmark started, read from `/proc` (Linux).
//!
//! The cost line (CPU-seconds per registration) and the memory targets (edge RSS at peak,
//! flat under backlog) come from here.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// One process to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Its name in reports.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// What `/proc` says about one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU time so far, seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, MiB.
    pub rss_mib: f64,
    /// Highest resident memory so far (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
}

/// Clock ticks per second of `/proc`'s CPU times, asked of `getconf` once (a process started
/// per sample would be the benchmark's own cost, counted as its children's).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) of this process's children that have ended and been waited
/// for (`cutime` + `cstime`): a load generator such as wrk, once it exited.
pub fn children_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, after)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the whole line: 14 and 15 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / clock_ticks_per_second()
}

/// Reads one process; `None` if it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(Sample {
        cpu_seconds: ticks / clock_ticks_per_second(),
        rss_mib: kib("VmRSS:") / 1024.0,
        peak_rss_mib: kib("VmHWM:") / 1024.0,
    })
}

/// CPU seconds and memory of each watched process over an interval, sampled every
/// `every` while it runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// CPU seconds used during the interval, by process.
    pub cpu_seconds: BTreeMap<String, f64>,
    /// Highest resident memory seen during the interval, MiB, by process.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// Resident memory of each process at each sample, MiB: (seconds since the start, MiB).
    pub rss_timeline_mib: BTreeMap<String, Vec<(f64, f64)>>,
}

impl Usage {
    /// All processes' CPU seconds together.
    pub fn total_cpu_seconds(&self) -> f64 {
        self.cpu_seconds.values().sum()
    }
}

/// Samples the watched processes until `done` resolves, then returns their usage.
pub async fn watch<T>(
    watched: &[Watched],
    every: Duration,
    done: impl std::future::Future<Output = T>,
) -> (T, Usage) {
    let start = std::time::Instant::now();
    let first: Vec<Sample> = watched
        .iter()
        .map(|w| sample(w.pid).unwrap_or_default())
        .collect();
    let mut usage = Usage::default();
    let record = |usage: &mut Usage| {
        let mut last = Vec::with_capacity(watched.len());
        for w in watched {
            let now = sample(w.pid).unwrap_or_default();
            let peak = usage.peak_rss_mib.entry(w.name.clone()).or_default();
            *peak = peak.max(now.rss_mib);
            usage
                .rss_timeline_mib
                .entry(w.name.clone())
                .or_default()
                .push((start.elapsed().as_secs_f64(), now.rss_mib));
            last.push(now);
        }
        last
    };
    tokio::pin!(done);
    let mut ticker = tokio::time::interval(every);
    let result = loop {
        tokio::select! {
            result = &mut done => break result,
            _ = ticker.tick() => { record(&mut usage); }
        }
    };
    let last = record(&mut usage);
    for ((w, first), last) in watched.iter().zip(first).zip(last) {
        usage.cpu_seconds.insert(
            w.name.clone(),
            (last.cpu_seconds - first.cpu_seconds).max(0.0),
        );
    }
    (result, usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = sample(std::process::id()).expect("our own /proc entry");
        // Spin a little so some CPU time is certainly accounted.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let later = sample(std::process::id()).unwrap();
        assert!(later.cpu_seconds >= me.cpu_seconds);
        assert!(me.rss_mib > 1.0 && me.peak_rss_mib >= me.rss_mib);
        assert!(sample(u32::MAX).is_none());
    }
}
