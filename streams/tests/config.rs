//! Stream configuration against a real nats-server: a service never changes an existing
//! stream's replication.

use streams::config::{Replication, ensure_streams};
use streams::subjects;
use testkit::NatsServer;

/// A service started with another `REG_REPLICAS` than the streams have refuses to start,
/// naming what to set, and leaves the streams as they are: updating them to its own value
/// would shrink a cluster's R3 streams to R1 when one service lacked the setting.
#[tokio::test]
async fn a_service_with_another_replication_refuses_to_start_and_changes_nothing() {
    testkit::init_test_log();
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.connect().await);
    ensure_streams(&js, Replication(1)).await.unwrap();
    ensure_streams(&js, Replication(1))
        .await
        .expect("the same configuration again is fine");
    let err = ensure_streams(&js, Replication(3)).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("REG_REPLICAS=1"), "{message}");
    for name in [subjects::INTAKE_STREAM, subjects::DECISIONS_STREAM] {
        let mut stream = js.get_stream(name).await.unwrap();
        assert_eq!(stream.info().await.unwrap().config.num_replicas, 1);
    }
}

/// On a three-node cluster, reached through the comma-separated URL the services take
/// (`REG_NATS_URL`), `REG_REPLICAS=3` makes every stream and bucket the system creates
/// replicated on all three nodes, each with a leader; and a service that starts while one
/// node is down still starts (two of three are a quorum) and leaves them R3.
#[tokio::test]
async fn three_replicas_put_every_stream_and_bucket_on_every_node_of_a_cluster() {
    use streams::runtime::{NatsOptions, start_jetstream};
    testkit::init_test_log();
    let mut cluster = testkit::NatsCluster::start(3);
    let options = NatsOptions::new(cluster.url(), "config-test");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (_, js) = start_jetstream(&options, Replication(3), &shutdown)
        .await
        .unwrap();
    // None while a stream has no leader to answer (just after a node died).
    let replicated = async |js: &async_nats::jetstream::Context| -> Option<()> {
        let mut infos = Vec::new();
        for name in [subjects::INTAKE_STREAM, subjects::DECISIONS_STREAM] {
            infos.push(js.get_stream(name).await.ok()?.info().await.ok()?.clone());
        }
        let leases = js.get_key_value(subjects::LEASES_BUCKET).await.ok()?;
        infos.push(leases.status().await.ok()?.info);
        for info in infos {
            let name = &info.config.name;
            assert_eq!(info.config.num_replicas, 3, "{name}");
            let placement = info
                .cluster
                .expect("a clustered stream says where it lives");
            placement.leader.as_ref()?;
            assert_eq!(
                placement.replicas.len(),
                2,
                "{name}: a leader and two followers"
            );
        }
        Some(())
    };
    replicated(&js).await.expect("every stream has a leader");

    cluster.kill(0);
    let restarted = async || {
        let (_, js) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            start_jetstream(&options, Replication(3), &shutdown),
        )
        .await
        .ok()?
        .ok()?;
        replicated(&js).await
    };
    testkit::eventually(
        "a service to start with one node of three down, every stream still R3",
        std::time::Duration::from_secs(60),
        restarted,
    )
    .await;
}
