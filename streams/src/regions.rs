//! Serving regions: a service started for one region serves it; one started for `*` finds
//! the regions operators configured (a capacity or a window in the intake stream, every
//! [`DISCOVERY_INTERVAL`]) and serves each as if started for it alone. A region only named by
//! requests creates no consumer and no task. The reservation and verification processors share this, so any
//! mix of `REG_REGION` values across their replicas splits the work region by region.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::model::Region;
use crate::subjects::{self, IntakeKind, RegionFilter};

/// How often a replica started for `*` looks for regions it does not serve yet. A region's
/// first submission waits at most this long for a replica to start serving it.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// The regions operators configured: those with a capacity or a window in the intake stream
/// (one subject each per region, so the listing stays as short as the list of regions).
pub async fn discover(js: &jetstream::Context) -> anyhow::Result<BTreeSet<Region>> {
    let stream = js
        .get_stream_no_info(subjects::INTAKE_STREAM)
        .await
        .context("Failed to open the intake stream")?;
    let mut regions = BTreeSet::new();
    for kind in [IntakeKind::Capacity, IntakeKind::Window] {
        let mut found = stream
            .info_with_subjects(subjects::intake_kind_filter(&RegionFilter::All, kind))
            .await
            .context("Failed to list the intake subjects")?;
        while let Some(subject) = found.next().await {
            let (subject, _) = subject.context("Failed to list the intake subjects")?;
            if let Some(region) = subjects::intake_region(&subject) {
                regions.insert(region);
            }
        }
    }
    Ok(regions)
}

/// Runs `serve(region)` for every region of `filter` until `shutdown` fires: the one region
/// at once, or each region as it appears in the intake stream. Returns when every spawned
/// task has ended.
pub async fn serve_each<F, Fut>(
    js: &jetstream::Context,
    filter: RegionFilter,
    shutdown: &CancellationToken,
    serve: F,
) where
    F: Fn(Region) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let region = match filter {
        RegionFilter::One(region) => region,
        RegionFilter::All => {
            let mut tasks = tokio::task::JoinSet::new();
            let mut served = HashSet::new();
            loop {
                match discover(js).await {
                    Ok(regions) => {
                        for region in regions {
                            if served.insert(region.clone()) {
                                tracing::info!(%region, "Serving a region.");
                                tasks.spawn(serve(region));
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), "Could not list the regions; trying again.")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                }
            }
            while tasks.join_next().await.is_some() {}
            return;
        }
    };
    serve(region).await
}
