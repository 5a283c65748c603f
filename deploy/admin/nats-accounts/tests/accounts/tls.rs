use std::path::Path;
use std::time::Duration;

use nats_accounts::{Accounts, PasswordStorage, ServerTls, Service};
use streams::runtime::TlsOptions;
use testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// A development CA and certificates, written by `deploy/dev-ca` (the openssl CLI).
pub(crate) fn dev_ca(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dev-ca");
    let status = std::process::Command::new(&script)
        .arg(dir)
        .status()
        .unwrap_or_else(|e| panic!("{} runs: {e}", script.display()));
    assert!(
        status.success(),
        "deploy/dev-ca failed (is openssl installed?)"
    );
}

/// Connects once, without retrying: `Ok` only when the server accepted the connection.
pub(crate) async fn attempt(options: async_nats::ConnectOptions, url: &str) -> Result<(), String> {
    let client = options
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn services_connect_over_tls_with_the_development_ca_and_nothing_else_does() {
    testkit::init_test_log();
    let certs = tempfile::tempdir().unwrap();
    dev_ca(certs.path());
    let accounts = Accounts::generate();
    let tls = ServerTls::development(certs.path());
    let nats = NatsServer::start_with_config(&format!(
        "{}{}",
        tls.block(),
        accounts.authorization(PasswordStorage::Plain).unwrap()
    ));
    let url = nats.url();
    let ca = certs.path().join("ca.pem");
    let cert = certs.path().join("client.pem");
    let key = certs.path().join("client-key.pem");

    // A service with the CA and its client certificate connects and works.
    let mut options = accounts.nats_options(Service::Admin, &url, "tls-test");
    options.tls = Some(TlsOptions {
        ca: Some(ca.clone()),
        client_cert: Some((cert.clone(), key.clone())),
    });
    let admin = streams::runtime::connect(&options, &CancellationToken::new())
        .await
        .expect("connects over TLS");
    streams::config::ensure_streams(
        &async_nats::jetstream::new(admin),
        streams::config::Replication(1),
    )
    .await
    .expect("JetStream answers over TLS");

    let user = || {
        async_nats::ConnectOptions::new().user_and_password(
            Service::Admin.user().into(),
            accounts.password(Service::Admin).into(),
        )
    };
    // The same client certificate and CA connect once (the control for what follows).
    attempt(
        user()
            .require_tls(true)
            .add_root_certificates(ca.clone())
            .add_client_certificate(cert.clone(), key.clone()),
        &url,
    )
    .await
    .expect("the control connects");
    // Without TLS: refused.
    let plain = attempt(user(), &url).await;
    assert!(plain.is_err(), "a plain connection was accepted");
    // TLS without a client certificate: refused (the server verifies clients).
    let anonymous = attempt(
        user().require_tls(true).add_root_certificates(ca.clone()),
        &url,
    )
    .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was accepted"
    );
    // TLS without the development CA (the system's roots only): the server is not trusted.
    let untrusting = attempt(
        user()
            .require_tls(true)
            .add_client_certificate(cert.clone(), key.clone()),
        &url,
    )
    .await;
    assert!(
        untrusting.is_err(),
        "a server signed by an unknown CA was trusted"
    );

    // A certificate from another CA is refused by the server.
    let other = tempfile::tempdir().unwrap();
    dev_ca(other.path());
    let foreign = attempt(
        user()
            .require_tls(true)
            .add_root_certificates(ca.clone())
            .add_client_certificate(
                other.path().join("client.pem"),
                other.path().join("client-key.pem"),
            ),
        &url,
    )
    .await;
    assert!(
        foreign.is_err(),
        "a client certificate of another CA was accepted"
    );
}
