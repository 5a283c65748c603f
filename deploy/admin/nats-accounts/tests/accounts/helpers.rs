use std::time::Duration;

use nats_accounts::{Accounts, PasswordStorage, Service};
use testkit::NatsServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A server with every identity of `accounts` (plain passwords: bcrypt adds nothing to what
/// the tests check and costs seconds per connection in a debug build).
pub fn server(accounts: &Accounts) -> NatsServer {
    testkit::init_test_log();
    NatsServer::start_with_config(&accounts.authorization(PasswordStorage::Plain).unwrap())
}

/// A connection as `service`, the way the services connect.
pub async fn connect(
    nats: &NatsServer,
    accounts: &Accounts,
    service: Service,
) -> async_nats::Client {
    let options = accounts.nats_options(service, &nats.url(), service.user());
    streams::runtime::connect(&options, &CancellationToken::new())
        .await
        .expect("the identity connects")
}

/// A connection as `service` that reports the server's errors (permission violations).
pub async fn watched(
    nats: &NatsServer,
    accounts: &Accounts,
    service: Service,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    watched_at(&nats.url(), accounts, service).await
}

/// [`watched`], to the server(s) at `url`.
pub async fn watched_at(
    url: &str,
    accounts: &Accounts,
    service: Service,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(service.user().into(), accounts.password(service).into())
        .custom_inbox_prefix(streams::accounts::inbox_prefix(service.user()))
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = tx.send(err.to_string());
                }
            }
        })
        .connect(url.split(',').collect::<Vec<_>>().as_slice())
        .await
        .expect("the identity connects");
    (client, rx)
}

/// Waits for the server's error about `subject`, skipping others; panics at the deadline.
pub async fn refusal(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = format!("permissions violation for {what} to \"{subject}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no refusal of {what} to {subject}"))
            .expect("the connection lives");
        if error
            .to_ascii_lowercase()
            .contains(&wanted.to_ascii_lowercase())
        {
            return;
        }
    }
}

/// Creates the streams as the admin identity.
pub async fn create_streams(nats: &NatsServer, accounts: &Accounts) {
    let admin = connect(nats, accounts, Service::Admin).await;
    streams::config::ensure_streams(
        &async_nats::jetstream::new(admin),
        streams::config::Replication(1),
    )
    .await
    .expect("the admin creates the streams");
}

/// How many messages `stream` holds on `subject` (read as the admin).
pub async fn held(nats: &NatsServer, accounts: &Accounts, stream: &str, subject: &str) -> u64 {
    use futures::StreamExt as _;
    let admin = connect(nats, accounts, Service::Admin).await;
    let stream = async_nats::jetstream::new(admin)
        .get_stream_no_info(stream)
        .await
        .unwrap();
    let subjects: Vec<_> = stream
        .info_with_subjects(subject)
        .await
        .unwrap()
        .collect()
        .await;
    subjects
        .into_iter()
        .map(|s| s.unwrap())
        .filter(|(s, _)| s == subject)
        .map(|(_, n)| n as u64)
        .sum()
}
