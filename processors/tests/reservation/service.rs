//! The processors' process as its binary runs it: when it says it is ready.

use std::net::TcpListener;
use std::time::Duration;

use processors::service::run;
use processors::settings::Settings;
use processors::verification::VerificationConfig;
use streams::config::Replication;
use streams::runtime::NatsOptions;
use streams::subjects::RegionFilter;
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A replica whose verification processor has its own NATS identity is not ready until that
/// connection is made too. Before, `/readyz` answered 200 as soon as the process's own
/// connection was up, while the verification processor was still connecting; an operator who
/// took that for started and pressed Ctrl-C got an error exit (`deploy/replica`, the README's
/// operations section).
#[ntex::test]
async fn a_replica_is_not_ready_before_each_processors_own_connection_is_made() {
    testkit::init_test_log();
    let nats = NatsServer::start();
    // Nothing listens there: the verification processor's connection never comes up.
    let nowhere = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let process = NatsOptions {
        url: nats.url(),
        name: "processors-readiness".into(),
        credentials: None,
        tls: None,
        manage_streams: true,
    };
    let mut verification = VerificationConfig::new(RegionFilter::All, "http://127.0.0.1:9");
    verification.nats = Some(NatsOptions {
        url: format!("nats://{nowhere}"),
        name: "verification-readiness".into(),
        ..process.clone()
    });
    let settings = Settings {
        nats: process,
        regions: RegionFilter::All,
        replication: Replication(1),
        policy: Default::default(),
        snapshot_every: processors::reservation::SNAPSHOT_EVERY,
        calendar: Default::default(),
        verification: Some(verification),
        notification: None,
        keys: streams::crypto::Keys::from_secret(streams::crypto::DEVELOPMENT_SECRET),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let readyz = format!("http://{}/readyz", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    ntex::rt::spawn(run(settings, listener, shutdown.clone()));

    // The health endpoint is served once the process's own connection is up.
    let client = ntex::client::Client::new().await;
    let (status, body) = testkit::eventually("/readyz to answer", Duration::from_secs(30), || {
        let request = client.get(&readyz);
        async move {
            let response = request.send().await.ok()?;
            let body = response.body().await.ok()?;
            Some((
                response.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            ))
        }
    })
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats.verification"), "{body}");
    // Not awaited: a connection attempt to a silent address ends at its own timeout.
    shutdown.cancel();
}
