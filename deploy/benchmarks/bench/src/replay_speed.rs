//! How fast the intake log reads back in order: raw (an ordered consumer counting bytes, the
//! ceiling) and decoded into events (what the processors' recovery, the projections' rebuild
//! and the analysts' replay do).

use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use streams::subjects::{self, RegionFilter};

/// One way of reading the log.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayFigure {
    /// What was measured.
    pub what: String,
    /// Records read.
    pub records: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Records per second.
    pub records_per_second: f64,
    /// Payload megabytes (10^6) per second.
    pub megabytes_per_second: f64,
}

impl ReplayFigure {
    fn new(what: &str, records: u64, bytes: u64, started: Instant) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        let figure = ReplayFigure {
            what: what.to_owned(),
            records,
            bytes,
            seconds,
            records_per_second: records as f64 / seconds,
            megabytes_per_second: bytes as f64 / 1e6 / seconds,
        };
        eprintln!(
            "replay: {:<48} {:>9.0} records/s, {:>6.0} MB/s ({} records)",
            figure.what, figure.records_per_second, figure.megabytes_per_second, figure.records
        );
        figure
    }
}

/// Reads every intake event from the start, raw and then decoded.
pub async fn measure(nats_url: &str) -> anyhow::Result<Vec<ReplayFigure>> {
    let client = async_nats::connect(nats_url)
        .await
        .context("Failed to connect to nats-server")?;
    let js = async_nats::jetstream::new(client);
    let filter = subjects::intake_filter(&RegionFilter::All);

    let started = Instant::now();
    let (mut messages, pending) =
        streams::replay::ordered(&js, subjects::INTAKE_STREAM, filter.clone(), 1).await?;
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < pending {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.context("Failed to read from an ordered consumer")?;
        records += 1;
        bytes += message.payload.len() as u64;
    }
    let raw = ReplayFigure::new("raw ordered consumer (ceiling)", records, bytes, started);

    let started = Instant::now();
    let mut undecodable = 0u64;
    let records = streams::replay::read_to_end(&js, subjects::INTAKE_STREAM, filter, 1, |r| {
        undecodable += u64::from(r.envelope.is_err());
    })
    .await?;
    anyhow::ensure!(
        undecodable == 0,
        "{undecodable} intake records did not decode"
    );
    // The same records as the raw read: the same bytes.
    let decoded = ReplayFigure::new(
        "decoded into events (streams::replay)",
        records,
        bytes,
        started,
    );
    Ok(vec![raw, decoded])
}
