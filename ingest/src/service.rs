//! Start-up of the edge: connect, ensure streams, start group commit and the windows
//! follower, serve HTTP on the given listener until shutdown.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use streams::appender::{Appender, AppenderOptions};
use streams::config::Replication;
use streams::crypto::Keys;
use streams::subjects;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::recovery::Recoveries;
use crate::routes::{self, Edge};
use crate::settings::Settings;
use crate::windows::Windows;

/// Runs the edge on `listener` until `shutdown` fires. Tests pass a listener bound to port 0.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (client, js) = streams::runtime::start_jetstream(
        &settings.nats,
        Replication(settings.replicas),
        &shutdown,
    )
    .await?;
    let appender = Appender::start(
        client.clone(),
        subjects::INTAKE_STREAM,
        AppenderOptions {
            max_batch: settings.append_max_batch,
            max_in_flight: settings.append_in_flight,
            timeout: settings.append_timeout,
            min_interval: settings.append_min_interval,
            ..Default::default()
        },
    );
    let windows = Windows::default();
    let metrics = Metrics::new();
    tokio::spawn(
        windows
            .clone()
            .follow(js.clone(), metrics.health.clone(), shutdown.clone()),
    );
    let (per_address, per_citizen) = Edge::limiters(&settings);
    let per_recovery = Edge::recovery_limiter(&settings);
    let per_recovery_address = Edge::recovery_address_limiter(&settings);
    let per_ticket_address = Edge::ticket_limiter(&settings);
    let js_for_door = js.clone();
    tokio::spawn(prune_limiters(
        [
            per_address.clone(),
            per_recovery_address.clone(),
            per_ticket_address.clone(),
        ],
        [per_citizen.clone(), per_recovery.clone()],
        shutdown.clone(),
    ));
    let (recoveries, queue) = Recoveries::bounded(crate::recovery::QUEUE);
    tokio::spawn(crate::recovery::run(
        queue,
        js.clone(),
        appender.clone(),
        shutdown.clone(),
    ));
    let workers = settings.workers.max(1);
    let open_submissions = (settings.max_open_submissions > 0).then(|| {
        let permits = settings
            .max_open_submissions
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        Arc::new(tokio::sync::Semaphore::new(permits))
    });
    let load =
        crate::waiting_room::Load::of(open_submissions.clone(), settings.max_open_submissions);
    let edge = Edge {
        keys: Keys::from_secret(settings.secret.expose()),
        settings: Arc::new(settings),
        appender,
        windows,
        client,
        js,
        metrics,
        in_flight: Arc::new(Mutex::new(HashSet::new())),
        per_address,
        per_citizen,
        per_recovery,
        per_recovery_address,
        recoveries,
        open_submissions,
        door: crate::waiting_room::Door::start(js_for_door, load, shutdown.clone()),
        per_ticket_address,
    };
    streams::http::serve(listener, workers, edge, routes::configure, shutdown).await
}

/// Forgets, once a minute, every address and citizen (of the submission and the recovery
/// limits) whose bucket is full again (they would
/// be allowed anyway): the limiters hold the recently active, not everyone ever seen.
async fn prune_limiters(
    per_address: [Option<routes::Limiter<std::net::IpAddr>>; 3],
    per_citizen: [Option<routes::Limiter<String>>; 2],
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
        for limiter in per_address.iter().flatten() {
            prune(limiter);
        }
        for limiter in per_citizen.iter().flatten() {
            prune(limiter);
        }
    }
}

/// Drops every key whose bucket is full again (indistinguishable from a key never seen) and
/// gives the memory back.
fn prune<K, C>(
    limiter: &governor::RateLimiter<
        K,
        governor::state::keyed::DashMapStateStore<K>,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
) where
    K: std::hash::Hash + Eq + Clone,
    C: governor::clock::Clock,
{
    limiter.retain_recent();
    limiter.shrink_to_fit();
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};

    use super::prune;

    #[test]
    fn pruning_forgets_the_quiet_and_keeps_those_still_limited() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_minute(NonZeroU32::new(10).expect("non-zero"));
        let limiter = RateLimiter::dashmap_with_clock(quota, clock.clone());
        // 10,000 citizens seen once each, and one who used up the whole minute's quota.
        for citizen in 0..10_000u32 {
            assert!(limiter.check_key(&citizen.to_string()).is_ok());
        }
        for _ in 0..10 {
            assert!(limiter.check_key(&"busy".to_owned()).is_ok());
        }
        assert!(limiter.check_key(&"busy".to_owned()).is_err());
        assert_eq!(limiter.len(), 10_001);

        // Nothing is forgotten while each bucket still remembers its requests.
        prune(&limiter);
        assert_eq!(limiter.len(), 10_001);

        // Thirteen seconds on (more than two emission intervals of 6 s), the once-seen
        // citizens' buckets are full again and go; the busy one's is not, and it stays.
        clock.advance(Duration::from_secs(13));
        prune(&limiter);
        assert_eq!(limiter.len(), 1);

        // A minute after its last request it is forgotten too.
        clock.advance(Duration::from_secs(60));
        prune(&limiter);
        assert!(limiter.is_empty());
    }
}
