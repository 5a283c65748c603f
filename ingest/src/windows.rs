//! Registration windows per region, as this replica knows them: folded from the `WindowSet`
//! events of the intake stream (last one per region, then live), so every edge replica
//! enforces the same windows without a database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use streams::events::{Envelope, Event, WindowSet};
use streams::model::Region;
use streams::subjects::{self, IntakeKind, RegionFilter};
use tokio_util::sync::CancellationToken;

/// When a region accepts submissions: `[opens, closes)`.
type Window = (DateTime<Utc>, DateTime<Utc>);

/// The windows known to this replica. A region without a window is open.
#[derive(Clone, Default)]
pub struct Windows {
    inner: Arc<RwLock<HashMap<Region, Window>>>,
}

impl Windows {
    /// Whether `region` accepts submissions at `now`.
    pub fn is_open(&self, region: &Region, now: DateTime<Utc>) -> bool {
        match self.inner.read().expect("lock").get(region) {
            None => true,
            Some((opens, closes)) => *opens <= now && now < *closes,
        }
    }

    /// Records a window (from the log, or from this replica's own accepted PUT).
    pub fn set(&self, window: &WindowSet) {
        self.inner
            .write()
            .expect("lock")
            .insert(window.region.clone(), (window.opens_at, window.closes_at));
    }

    /// Follows the intake stream's windows until `shutdown`, re-subscribing after errors.
    pub async fn follow(self, js: jetstream::Context, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Err(err) = self.follow_once(&js, &shutdown).await {
                tracing::warn!(error = %format!("{err:#}"), "Following registration windows failed; retrying.");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
        }
    }

    async fn follow_once(
        &self,
        js: &jetstream::Context,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let stream = js.get_stream(subjects::INTAKE_STREAM).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::intake_kind_filter(
                    &RegionFilter::All,
                    IntakeKind::Window,
                ),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let Some(message) = next else {
                anyhow::bail!("the windows consumer ended")
            };
            if let Ok(Envelope {
                event: Event::WindowSet(window),
                ..
            }) = Envelope::decode(&message?.payload)
            {
                self.set(&window);
            }
        }
    }
}
