//! Stream configuration against a real nats-server: a service never changes an existing
//! stream's replication.

use streams::config::{Replication, ensure_streams};
use streams::subjects;
use testkit::NatsServer;

/// A service started with another `REG_REPLICAS` than the streams have refuses to start,
/// naming what to set, and leaves the streams as they are. Before the fix, it updated them
/// to its own value (a cluster's R3 streams shrank to R1 when one service lacked the setting).
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
