//! The scale report: every figure at every measured size, how it grows, its value at 19
//! million registrations, and the bound it must meet there.

use serde::Serialize;

use super::SizeFigures;
use crate::contention::report::Machine;

/// The campaign the system is built for.
pub const NATIONAL: f64 = 19_000_000.0;

/// One figure's definition: how to read it off a size, and its bound at [`NATIONAL`].
struct Definition {
    name: &'static str,
    unit: &'static str,
    /// `None` where the figure was not measured at that size.
    value: fn(&SizeFigures) -> Option<f64>,
    /// The most it may be at 19 million, and where the bound comes from.
    bound: Option<f64>,
}

fn per_registration(bytes: u64, f: &SizeFigures) -> f64 {
    bytes as f64 / f.registrations as f64
}

fn definitions() -> Vec<Definition> {
    vec![
        Definition {
            name: "disk per registration: JetStream",
            unit: "bytes",
            value: |f| Some(per_registration(f.jetstream_bytes, f)),
            bound: None,
        },
        Definition {
            name: "disk per registration: SurrealDB (embedded)",
            unit: "bytes",
            value: |f| Some(per_registration(f.embedded.bytes, f)),
            bound: None,
        },
        Definition {
            name: "disk per registration: both",
            unit: "bytes",
            value: |f| Some(per_registration(f.jetstream_bytes + f.embedded.bytes, f)),
            bound: Some(10_000.0),
        },
        Definition {
            name: "nats-server resident memory, filled",
            unit: "MiB",
            value: |f| Some(f.nats_rss_mib),
            bound: Some(4096.0),
        },
        Definition {
            name: "nats-server resident memory, after a restart",
            unit: "MiB",
            value: |f| Some(f.nats_rss_after_restart_mib),
            bound: Some(4096.0),
        },
        Definition {
            name: "nats-server back after a crash (every stream, a claim read)",
            unit: "s",
            value: |f| Some(f.restart_seconds),
            bound: Some(60.0),
        },
        Definition {
            name: "claim check, registered citizen, p99",
            unit: "ms",
            value: |f| Some(f.claim_check_existing.p99),
            bound: None,
        },
        Definition {
            name: "claim check, new citizen, p99",
            unit: "ms",
            value: |f| Some(f.claim_check_new.p99),
            bound: None,
        },
        Definition {
            name: "largest region: its whole state as a snapshot",
            unit: "MB",
            value: |f| Some(f.state_bytes as f64 / 1e6),
            bound: None,
        },
        Definition {
            name: "largest region: encoding that snapshot, off the decider",
            unit: "ms",
            value: |f| Some(f.state_encode_seconds * 1000.0),
            bound: None,
        },
        Definition {
            name: "largest region: the decider's pause, a copy of its state once per takeover",
            unit: "ms",
            value: |f| Some(f.state_copy_seconds * 1000.0),
            // Part of the takeover (nothing is decided until it ends), bounded with it.
            bound: None,
        },
        Definition {
            name: "largest region: takeover (snapshot + tail + that copy)",
            unit: "s",
            value: |f| Some(f.takeover_seconds),
            bound: Some(5.0),
        },
        Definition {
            name: "largest region: full fold of its decisions",
            unit: "s",
            value: |f| Some(f.full_fold_seconds),
            bound: None,
        },
        Definition {
            name: "every projection rebuilt from sequence 1",
            unit: "s",
            value: |f| Some(f.embedded.rebuild_seconds),
            bound: Some(3600.0),
        },
        Definition {
            name: "projections' CPU per registration in that rebuild",
            unit: "µs",
            value: |f| Some(f.embedded.rebuild_cpu_seconds * 1e6 / f.registrations as f64),
            bound: None,
        },
        Definition {
            name: "three-node cluster: a node back after a crash, caught up",
            unit: "s",
            value: |f| f.cluster.as_ref().map(|c| c.node_back_seconds),
            bound: Some(60.0),
        },
        Definition {
            name: "three-node cluster: largest node's resident memory, filled",
            unit: "MiB",
            value: |f| {
                f.cluster
                    .as_ref()
                    .map(|c| c.rss_mib.iter().copied().fold(0.0, f64::max))
            },
            bound: Some(4096.0),
        },
        Definition {
            name: "status from the store, first read, p99",
            unit: "ms",
            value: |f| Some(f.embedded.status_first_read.p99),
            bound: Some(5.0),
        },
        Definition {
            name: "status from the store, read again, p99",
            unit: "ms",
            value: |f| Some(f.embedded.status_read_again.p99),
            bound: Some(5.0),
        },
        Definition {
            name: "the read API's load of the whole availability table, p99",
            unit: "ms",
            value: |f| Some(f.embedded.availability_table.p99),
            // Loaded once per second, the staleness bound: a load must take well under it.
            bound: Some(250.0),
        },
        Definition {
            name: "replay of the whole intake stream",
            unit: "s",
            value: |f| Some(f.replay_intake_seconds),
            bound: None,
        },
        Definition {
            name: "replay of the largest region's decisions",
            unit: "s",
            value: |f| Some(f.replay_region_seconds),
            bound: None,
        },
    ]
}

/// One figure over the sizes, fitted and extrapolated.
#[derive(Debug, Clone, Serialize)]
pub struct Fitted {
    /// The figure.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// Its value at each measured size, in the order of [`ScaleReport::sizes`] (`None`: not
    /// measured there).
    pub values: Vec<Option<f64>>,
    /// Least squares `a + b·N`: (a, b per million registrations).
    pub linear: Option<(f64, f64)>,
    /// Least squares on logarithms, `c·N^k`: the exponent k (1: grows in proportion).
    pub exponent: Option<f64>,
    /// At 19 million by the linear fit.
    pub at_national_linear: Option<f64>,
    /// At 19 million by the power law.
    pub at_national_power: Option<f64>,
    /// The bound at 19 million.
    pub bound: Option<f64>,
    /// Whether every measured value and both extrapolations are within the bound.
    pub within_bound: Option<bool>,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// The machine.
    pub machine: Machine,
    /// Every size's figures.
    pub sizes: Vec<SizeFigures>,
    /// Every figure fitted.
    pub fitted: Vec<Fitted>,
}

fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let b = sxy / sxx;
    Some((my - b * mx, b))
}

/// Fits one figure's values over the sizes.
fn fit(d: &Definition, sizes: &[SizeFigures]) -> Fitted {
    let values: Vec<Option<f64>> = sizes.iter().map(|f| (d.value)(f)).collect();
    let points: Vec<(f64, f64)> = sizes
        .iter()
        .zip(&values)
        .filter_map(|(f, v)| Some((f.registrations as f64 / 1e6, (*v)?)))
        .collect();
    let linear = least_squares(&points);
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let power = if logs.len() == points.len() {
        least_squares(&logs)
    } else {
        None
    };
    let national = NATIONAL / 1e6;
    let at_national_linear = linear.map(|(a, b)| a + b * national);
    let at_national_power = power.map(|(c, k)| (c + k * national.ln()).exp());
    let within_bound = d.bound.map(|bound| {
        values
            .iter()
            .flatten()
            .chain(at_national_linear.iter())
            .chain(at_national_power.iter())
            .all(|v| *v <= bound)
    });
    Fitted {
        name: d.name.into(),
        unit: d.unit.into(),
        values,
        linear,
        exponent: power.map(|(_, k)| k),
        at_national_linear,
        at_national_power,
        bound: d.bound,
        within_bound,
    }
}

impl ScaleReport {
    /// Fits every figure over `sizes`.
    pub fn new(machine: Machine, sizes: Vec<SizeFigures>) -> Self {
        let fitted = definitions().iter().map(|d| fit(d, &sizes)).collect();
        ScaleReport {
            machine,
            sizes,
            fitted,
        }
    }

    /// The report as Markdown.
    pub fn markdown(&self, command: &str) -> String {
        let number = |v: f64| {
            if v >= 100.0 {
                format!("{v:.0}")
            } else if v >= 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            }
        };
        let option = |v: Option<f64>| v.map_or("–".to_owned(), number);
        let mut md = crate::heading(
            "National scale: every operation at N registrations, and at 19 million",
            &self.machine,
            command,
        );
        md += "\n\nEach size starts from nothing: a fresh nats-server (one node, JetStream on \
               disk) and a fresh embedded SurrealDB (SurrealKV on disk). The fill writes what \
               the edge, the verification, reservation and notification processors would have \
               written for N citizens (claim, sealing key, sealed submission, verdict; the \
               reservation rule's own decisions; two packed `NotificationSent` per decision), \
               in atomic batches and without fsync, not through HTTP: it is setup, not a figure \
               of the system. Registrations are spread over the sixteen regions by population \
               (mazowieckie 14.6 %), 100 places per slot over 30 days. Then each operation is \
               measured at that size; the projections are rebuilt from sequence 1 by the \
               projections' own rebuild (each region's part of a stream on its own, one per \
               core at once), and the reads go to the store in process (no HTTP, no cache; the \
               read API's cached answers never reach the store, so they are the same whatever \
               the size).\n\n";
        md += "| figure | unit |";
        for f in &self.sizes {
            md += &format!(" {} |", f.registrations);
        }
        md += " growth (k in N^k) | at 19 M: linear | at 19 M: power | bound at 19 M | verdict |\n| --- | --- |";
        for _ in &self.sizes {
            md += " ---: |";
        }
        md += " ---: | ---: | ---: | ---: | --- |\n";
        for f in &self.fitted {
            md += &format!("| {} | {} |", f.name, f.unit);
            for v in &f.values {
                md += &format!(" {} |", option(*v));
            }
            md += &format!(
                " {} | {} | {} | {} | {} |\n",
                f.exponent.map_or("–".to_owned(), |k| format!("{k:.2}")),
                option(f.at_national_linear),
                option(f.at_national_power),
                option(f.bound),
                match f.within_bound {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "–",
                }
            );
        }
        md += "\nThe fits are least squares over the measured sizes: `a + b·N`, and `c·N^k` on \
               logarithms (k near 1: in proportion; near 0: flat). A verdict counts both \
               extrapolations and every measured value. Latency percentiles at small sizes are \
               noisy; a k far from 0 or 1 there says more about the noise than the growth.\n\n";
        md += "| size | fill (setup) | intake msgs | decision msgs | restart s | claim check p50/p99 ms (registered · new) | takeover tail | status p50 ms (first · again) | availability table rows · load p50 ms | replayed intake records/s |\n\
               | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- | --- | ---: |\n";
        for f in &self.sizes {
            md += &format!(
                "| {} | {:.0} s | {} | {} | {:.1} | {:.3}/{:.3} · {:.3}/{:.3} | {} | {:.3} · {:.3} | {} · {:.2} | {:.0} |\n",
                f.registrations,
                f.fill_seconds,
                f.intake_messages,
                f.decision_messages,
                f.restart_seconds,
                f.claim_check_existing.p50,
                f.claim_check_existing.p99,
                f.claim_check_new.p50,
                f.claim_check_new.p99,
                f.takeover_tail,
                f.embedded.status_first_read.p50,
                f.embedded.status_read_again.p50,
                f.embedded.availability_rows,
                f.embedded.availability_table.p50,
                f.replay_intake_records as f64 / f.replay_intake_seconds,
            );
        }
        let compared: Vec<_> = self
            .sizes
            .iter()
            .filter_map(|f| Some((f, f.server.as_ref()?)))
            .collect();
        if !compared.is_empty() {
            md += "\nThe read side on a SurrealDB server against the embedded store, the same \
                   log rebuilt into each (SurrealKV on disk in both; the server on loopback, \
                   reached over its WebSocket protocol). CPU counts the projections' process \
                   and, for the server, the server's.\n\n\
                   | size | store | rebuild s | CPU µs/registration (of which server) | disk bytes/registration | status p50/p99 ms, first read | again | availability table load p50/p99 ms |\n\
                   | ---: | --- | ---: | --- | ---: | --- | --- | --- |\n";
            for (f, server) in compared {
                for (name, s) in [("embedded", &f.embedded), ("server", server)] {
                    let per = |v: f64| v * 1e6 / f.registrations as f64;
                    md += &format!(
                        "| {} | {name} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.3}/{:.3} | {:.3}/{:.3} | {:.2}/{:.2} |\n",
                        f.registrations,
                        s.rebuild_seconds,
                        per(s.rebuild_cpu_seconds),
                        per(s.server_cpu_seconds),
                        s.bytes as f64 / f.registrations as f64,
                        s.status_first_read.p50,
                        s.status_first_read.p99,
                        s.status_read_again.p50,
                        s.status_read_again.p99,
                        s.availability_table.p50,
                        s.availability_table.p99,
                    );
                }
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_least_squares_line_through_exact_points_is_that_line() {
        let (a, b) = least_squares(&[(1.0, 5.0), (2.0, 7.0), (4.0, 11.0)]).expect("a fit");
        assert!((a - 3.0).abs() < 1e-9 && (b - 2.0).abs() < 1e-9, "{a} {b}");
    }

    #[test]
    fn one_point_has_no_fit() {
        assert!(least_squares(&[(1.0, 5.0)]).is_none());
    }
}
