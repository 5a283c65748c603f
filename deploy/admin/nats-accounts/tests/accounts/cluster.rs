//! `deploy/cluster --auth` (what `deploy/up --cluster` runs): three nodes on loopback, each
//! requiring the same per-service identities; with `--tls`, TLS to every node and between them.

use std::path::{Path, PathBuf};
use std::process::Command;

use nats_accounts::{Accounts, PasswordStorage, Service};
use streams::subjects::{self, IntakeKind};
use tokio_util::sync::CancellationToken;

use crate::helpers::{refusal, watched_at};

/// The cluster the script started, stopped (`deploy/cluster down`) when dropped.
struct ScriptCluster {
    data_dir: PathBuf,
    ports: [u16; 3],
}

impl ScriptCluster {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cluster");
        Command::new(script)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env("REG_CLUSTER_PORT", self.ports[0].to_string())
            .env("REG_CLUSTER_ROUTE_PORT", self.ports[1].to_string())
            .env("REG_CLUSTER_MONITOR_PORT", self.ports[2].to_string())
            .env("NATS_SERVER_BIN", testkit::nats_server_binary())
            .output()
            .expect("deploy/cluster runs")
    }

    fn url(&self) -> String {
        (0..3)
            .map(|i| format!("nats://127.0.0.1:{}", self.ports[0] + i))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        self.run(&["down"]);
    }
}

/// `deploy/cluster --auth <accounts' authorization> [extra…] up`, its data under `dir`, once
/// it started.
fn start_scripted(dir: &Path, accounts: &Accounts, extra: &[&str]) -> ScriptCluster {
    let auth = dir.join("auth.conf");
    std::fs::write(
        &auth,
        accounts.authorization(PasswordStorage::Plain).unwrap(),
    )
    .unwrap();
    let cluster = ScriptCluster {
        data_dir: dir.join("cluster"),
        ports: free_port_runs(),
    };
    let mut args = vec!["--auth", auth.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push("up");
    let up = cluster.run(&args);
    assert!(
        up.status.success(),
        "deploy/cluster up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    cluster
}

/// What the cluster reports of the intake stream (replicas, leader, peers).
async fn intake_info(js: &async_nats::jetstream::Context) -> async_nats::jetstream::stream::Info {
    js.get_stream(subjects::INTAKE_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// Three runs of three consecutive free loopback ports (client, route, monitoring).
fn free_port_runs() -> [u16; 3] {
    let mut runs = Vec::new();
    let mut base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    while runs.len() < 3 {
        let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            runs.push(base);
        }
        base += 3;
    }
    [runs[0], runs[1], runs[2]]
}

/// Every node requires an identity: the admin creates the streams with three replicas, the
/// edge appends a submission, the read API is refused a publish, and a wrong password is
/// refused a connection.
#[tokio::test]
async fn every_node_of_the_scripted_cluster_requires_the_per_service_identities() {
    testkit::init_test_log();
    let dir = tempfile::tempdir().unwrap();
    let accounts = Accounts::generate();
    let cluster = start_scripted(dir.path(), &accounts, &[]);
    for node in 1..=3 {
        let config =
            std::fs::read_to_string(cluster.data_dir.join(format!("n{node}/nats.conf"))).unwrap();
        assert!(config.contains("include ./auth.conf"), "{config}");
    }
    let url = cluster.url();
    let connect = async |service: Service| {
        streams::runtime::connect(
            &accounts.nats_options(service, &url, service.user()),
            &CancellationToken::new(),
        )
        .await
    };

    let admin = connect(Service::Admin).await.expect("the admin connects");
    let js = async_nats::jetstream::new(admin);
    streams::config::ensure_streams(&js, streams::config::Replication(3))
        .await
        .expect("the admin creates the R3 streams");
    let intake = intake_info(&js).await;
    assert_eq!(intake.config.num_replicas, 3);

    let region = streams::model::Region::parse("mazowieckie").unwrap();
    let submitted = subjects::intake(&region, IntakeKind::Submitted);
    let edge = async_nats::jetstream::new(connect(Service::Ingest).await.unwrap());
    edge.publish(submitted.clone(), "{}".into())
        .await
        .expect("the edge may publish a submission")
        .await
        .expect("and it is stored");

    let (read_api, mut errors) = watched_at(&url, &accounts, Service::Projections).await;
    read_api
        .publish(submitted.clone(), "{}".into())
        .await
        .unwrap();
    read_api.flush().await.unwrap();
    refusal(&mut errors, "publish", &submitted).await;

    let servers: Vec<&str> = url.split(',').collect();
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password(Service::Ingest.user().into(), "not-the-password".into())
        .connect(servers.as_slice());
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), wrong).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a wrong password is refused a connection"
    );
}

/// Everything a listener says, until it hangs up, to a peer that speaks the plain protocol
/// (`CONNECT`, `PING`) without TLS.
fn plain_exchange(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the port accepts");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(b"CONNECT {}\r\nPING\r\n");
    let mut heard = Vec::new();
    let _ = stream.read_to_end(&mut heard);
    String::from_utf8_lossy(&heard).into_owned()
}

/// `deploy/cluster --auth --tls` (what `deploy/up --cluster --tls` runs): every node's client
/// listener and the routes between nodes on TLS with the development CA, clients and nodes
/// verified, the per-service identities on top; the single node's TLS checks
/// (`tls.rs`) hold on every node.
#[tokio::test]
async fn the_scripted_cluster_speaks_tls_to_services_and_between_its_nodes() {
    testkit::init_test_log();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("tls");
    crate::tls::dev_ca(&certs);
    let accounts = Accounts::generate();
    let cluster = start_scripted(dir.path(), &accounts, &["--tls", certs.to_str().unwrap()]);
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("client.pem"),
        certs.join("client-key.pem"),
    );

    // A service with the CA and its client certificate connects to the cluster, and R3
    // streams work: each write is replicated over the routes, so they carry TLS too.
    let connect = async |service: Service| {
        let mut options = accounts.nats_options(service, &cluster.url(), service.user());
        options.tls = Some(streams::runtime::TlsOptions {
            ca: Some(ca.clone()),
            client_cert: Some((cert.clone(), key.clone())),
        });
        let client = streams::runtime::connect(&options, &CancellationToken::new())
            .await
            .expect("connects to the cluster over TLS");
        async_nats::jetstream::new(client)
    };
    let js = connect(Service::Admin).await;
    streams::config::ensure_streams(&js, streams::config::Replication(3))
        .await
        .expect("R3 streams are created over TLS");
    let region = streams::model::Region::parse("mazowieckie").unwrap();
    let edge = connect(Service::Ingest).await;
    let ack = edge
        .publish(
            subjects::intake(&region, IntakeKind::Submitted),
            "{}".into(),
        )
        .await
        .expect("published")
        .await
        .expect("stored on a majority of the nodes");
    assert_eq!(ack.stream, subjects::INTAKE_STREAM);
    let info = intake_info(&js).await;
    let peers = info.cluster.expect("a clustered stream").replicas;
    assert_eq!(peers.len(), 2, "a leader and two replicas: {peers:?}");

    let user = || {
        async_nats::ConnectOptions::new()
            .user_and_password(
                Service::Admin.user().into(),
                accounts.password(Service::Admin).into(),
            )
            .ignore_discovered_servers()
    };
    for node in 0..3u16 {
        let url = format!("nats://127.0.0.1:{}", cluster.ports[0] + node);
        // Each node: the certificate and the CA connect (the control)...
        crate::tls::attempt(
            user()
                .require_tls(true)
                .add_root_certificates(ca.clone())
                .add_client_certificate(cert.clone(), key.clone()),
            &url,
        )
        .await
        .unwrap_or_else(|e| panic!("the control connects to node {node}: {e}"));
        // ...a plain connection and one without a client certificate do not...
        assert!(
            crate::tls::attempt(user(), &url).await.is_err(),
            "node {node} accepted a plain connection"
        );
        assert!(
            crate::tls::attempt(
                user().require_tls(true).add_root_certificates(ca.clone()),
                &url
            )
            .await
            .is_err(),
            "node {node} accepted a client without a certificate"
        );
        // ...and its route listener speaks nothing but TLS: a plain peer hears no `INFO` (a
        // plain route listener greets with one at once) and is hung up on.
        let heard = plain_exchange(cluster.ports[1] + node);
        assert!(
            !heard.contains("INFO") && !heard.contains("PONG"),
            "node {node}'s route listener spoke plain text: {heard:?}"
        );
    }
}
