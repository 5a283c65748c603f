//! `registry-sim`: serves the simulated government registry until Ctrl-C or SIGTERM.

#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;
use registry_sim::{Knobs, Registry, Simulator as _};
use simkit::Knobs as _;

/// A simulated government registry: answers `POST /registry/v1/verify` (SOAP-style XML) the
/// way a slow, flaky, rate-limited registry would. The population rule decides the answer
/// from the national id's 9th and 10th digits: 97 DATA_MISMATCH, 98 DECEASED, 99 NOT_FOUND,
/// anything else MATCH.
///
/// Knobs start from the defaults (20 ms latency plus up to 30 ms jitter, nothing else), then
/// --knobs, then the flags below; they change at runtime with `PUT /_sim/knobs` (a partial JSON
/// object). Admin: GET/PUT /_sim/knobs, GET /_sim/counts, GET /_sim/counts/{national_id},
/// POST /_sim/reset, GET /healthz. Logs follow RUST_LOG (default: info; REG_LOG_FORMAT=json
/// for JSON lines).
#[derive(Debug, Parser)]
#[command(name = "registry-sim", version, about, long_about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "REG_REGISTRY_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,

    /// Knobs as a JSON object; fields not given keep their defaults. Fields: latency_ms,
    /// jitter_ms, spike_rate, spike_ms, error_rate, rate_limit_per_s, outage, hostile_rate,
    /// hostile (a list of truncated, wrong_namespace, billion_laughs, external_entity,
    /// huge_body, unknown_result, wrong_request_id). Example: '{"error_rate":0.1,"spike_rate":0.01}'
    #[arg(long, env = "REG_REGISTRY_KNOBS", value_name = "JSON")]
    knobs: Option<String>,

    /// Base latency of every answer, in milliseconds (knob latency_ms).
    #[arg(long, value_name = "MS")]
    latency_ms: Option<u64>,

    /// Probability (0 to 1) of a 500: half SOAP faults, half bare errors (knob error_rate).
    #[arg(long, value_name = "P")]
    error_rate: Option<f64>,

    /// Requests per second accepted before answering 429 with Retry-After: 1; 0 is off
    /// (knob rate_limit_per_s).
    #[arg(long, value_name = "PER_SECOND")]
    rate_limit: Option<u32>,

    /// Start in an outage: every request gets 503 with Retry-After: 5 (knob outage).
    #[arg(long)]
    outage: bool,

    /// Probability (0 to 1) of a hostile answer, drawn from the knob hostile (knob
    /// hostile_rate).
    #[arg(long, value_name = "P")]
    hostile_rate: Option<f64>,
    #[command(flatten)]
    telemetry: streams::settings::TelemetryArgs,
}

impl Cli {
    fn knobs(&self) -> anyhow::Result<Knobs> {
        let mut knobs =
            Knobs::over_defaults(self.knobs.as_deref()).context("--knobs / REG_REGISTRY_KNOBS")?;
        if let Some(latency_ms) = self.latency_ms {
            knobs.latency_ms = latency_ms;
        }
        if let Some(error_rate) = self.error_rate {
            knobs.error_rate = error_rate;
        }
        if let Some(rate_limit) = self.rate_limit {
            knobs.rate_limit_per_s = rate_limit;
        }
        if self.outage {
            knobs.outage = true;
        }
        if let Some(hostile_rate) = self.hostile_rate {
            knobs.hostile_rate = hostile_rate;
        }
        knobs.validate()?;
        Ok(knobs)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = streams::settings::parse();
    streams::runtime::init_telemetry(cli.telemetry.log_format);
    let registry = Registry::new(cli.knobs()?)?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let knobs = serde_json::to_string(&registry.knobs())?;
    tracing::info!(address = %listener.local_addr()?, %knobs, "registry simulator listening");
    simkit::serve_until_signalled(|shutdown| registry.serve(listener, shutdown)).await?;
    tracing::info!("registry simulator stopped");
    Ok(())
}
