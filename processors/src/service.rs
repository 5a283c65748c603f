//! The processor process: connects, ensures streams, runs the reservation loop, the claims
//! releaser, the waiting-room controller and (unless turned off) the verification and notification processors, and
//! serves `/healthz`, `/readyz` and `/metrics`.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use ntex::web::{self, HttpResponse};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::notification;
use crate::reservation::{self, ReservationConfig};
use crate::settings::Settings;
use crate::verification;

/// The processors' own NATS connections by name, each `None` until made.
type OwnConnections = Arc<Mutex<Vec<(&'static str, Option<async_nats::Client>)>>>;

#[derive(Clone)]
struct HealthState {
    client: async_nats::Client,
    /// The verification and notification processors' own connections (their identities),
    /// by name, each `None` until made: the replica is ready only once each is connected.
    own: OwnConnections,
    metrics: Metrics,
}

/// Runs the processor until `shutdown` fires, serving health on `listener`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (client, _) =
        streams::runtime::start_jetstream(&settings.nats, settings.replication, &shutdown).await?;
    let metrics = Metrics::new();

    let mut own = Vec::new();
    if settings
        .verification
        .as_ref()
        .is_some_and(|c| c.nats.is_some())
    {
        own.push(("nats.verification", None));
    }
    if settings
        .notification
        .as_ref()
        .is_some_and(|c| c.nats.is_some())
    {
        own.push(("nats.notification", None));
    }
    let state = HealthState {
        client: client.clone(),
        own: Arc::new(Mutex::new(own)),
        metrics: metrics.clone(),
    };
    let connected = state.own.clone();
    let server = ntex::rt::spawn(streams::http::serve(
        listener,
        1,
        state,
        routes,
        shutdown.clone(),
    ));
    let releaser = tokio::spawn(crate::claims::run(
        client.clone(),
        metrics.health.clone(),
        shutdown.clone(),
    ));
    let controller = tokio::spawn(crate::waiting_room::run(client.clone(), shutdown.clone()));
    let verifier = match settings.verification {
        Some(config) => {
            let client = own_connection(&client, config.nats.as_ref(), &shutdown).await?;
            made(&connected, "nats.verification", &client);
            Some(tokio::spawn(verification::run(
                client,
                settings.keys.clone(),
                config,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let notifier = match settings.notification {
        Some(config) => {
            let client = own_connection(&client, config.nats.as_ref(), &shutdown).await?;
            made(&connected, "nats.notification", &client);
            Some(tokio::spawn(notification::run(
                client,
                settings.keys.clone(),
                config,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let result = reservation::run(
        client,
        ReservationConfig {
            regions: settings.regions,
            policy: settings.policy,
            snapshot_every: settings.snapshot_every,
            calendar: settings.calendar,
        },
        metrics,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    let _ = server.await;
    let _ = releaser.await;
    if let Ok(Err(err)) = controller.await {
        tracing::error!(error = %format!("{err:#}"), "The waiting-room controller stopped.");
    }
    for (name, task) in [("verification", verifier), ("notification", notifier)] {
        let Some(task) = task else { continue };
        match task.await {
            Ok(Err(err)) => {
                tracing::error!(processor = name, error = %format!("{err:#}"), "A processor stopped.")
            }
            Err(err) => tracing::error!(processor = name, error = %err, "A processor panicked."),
            Ok(Ok(())) => {}
        }
    }
    result
}

/// A processor's connection: its own identity's when it has one (see `docs/security.md`),
/// otherwise the process's.
async fn own_connection(
    shared: &async_nats::Client,
    options: Option<&streams::runtime::NatsOptions>,
    shutdown: &CancellationToken,
) -> anyhow::Result<async_nats::Client> {
    match options {
        Some(options) => streams::runtime::connect(options, shutdown).await,
        None => Ok(shared.clone()),
    }
}

/// Records a processor's own connection for `/readyz` (nothing when it shares the process's).
fn made(
    own: &Mutex<Vec<(&'static str, Option<async_nats::Client>)>>,
    name: &str,
    client: &async_nats::Client,
) {
    let mut own = own.lock().expect("the connections' list is never poisoned");
    if let Some((_, slot)) = own.iter_mut().find(|(n, _)| *n == name) {
        *slot = Some(client.clone());
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(streams::http::healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_handler));
}

async fn readyz(state: web::types::State<HealthState>) -> HttpResponse {
    let connected = state.client.connection_state() == async_nats::connection::State::Connected;
    let mut checks = vec![("nats".to_owned(), connected)];
    for (name, client) in state.own.lock().expect("never poisoned").iter() {
        let up = client
            .as_ref()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        checks.push(((*name).to_owned(), up));
    }
    checks.extend(state.metrics.health.checks());
    streams::http::readiness(&checks)
}

async fn metrics_handler(state: web::types::State<HealthState>) -> HttpResponse {
    streams::http::metrics(&state.metrics.registry)
}
