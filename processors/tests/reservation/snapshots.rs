//! Snapshots: a replica takes a region over from the newest snapshot and folds only the
//! decisions after it, deciding exactly as a full fold would; a snapshot that does not match
//! the log is ignored.

use std::time::Duration;

use crate::helpers::*;
use processors::reservation::snapshot::{self, FORMAT_VERSION};
use streams::subjects;

/// Submissions for two small slots (waiting lists, rejections) and a few cancellations.
async fn traffic(world: &World, n: usize) {
    let (a, b) = (slot("snap-a"), slot("snap-b"));
    let mut ids = Vec::new();
    for i in 0..n {
        let (id, _) = world.submit(if i % 3 == 0 { &b } else { &a }).await;
        ids.push(id);
    }
    for id in ids.iter().step_by(4) {
        world.cancel(id).await;
    }
}

/// Slots `snap-a` and `snap-b` with `capacities`, a replica, `n` citizens' traffic, all
/// decided and a snapshot stored: the replica.
async fn snapshotted(world: &World, (a, b): (u32, u32), n: usize) -> Replica {
    world.set_capacity(&slot("snap-a"), a).await;
    world.set_capacity(&slot("snap-b"), b).await;
    let replica = world.replica();
    traffic(world, n).await;
    world.wait_all_decided().await;
    testkit::eventually("a snapshot stored", Duration::from_secs(30), || async {
        (replica.metrics.snapshots.get() >= 1).then_some(())
    })
    .await;
    replica
}

#[tokio::test]
async fn a_replica_takes_over_from_a_snapshot_and_decides_as_one_run_of_the_rule() {
    let world = World::start().await;
    let first = snapshotted(&world, (6, 3), 40).await;
    // A capacity raised after the snapshot and a tail of decisions after it.
    world.set_capacity(&slot("snap-b"), 5).await;
    traffic(&world, 5).await;
    world.wait_all_decided().await;

    // The state a takeover rebuilds from the snapshot is the full fold's.
    let full = world.rebuild(false).await;
    let quick = world.rebuild(true).await;
    assert_eq!(quick.snapshot, Some("used"));
    let from = quick.from_snapshot.expect("the snapshot was used");
    assert!(
        from > 0 && quick.folded < full.folded,
        "only the tail was folded"
    );
    assert_eq!(full.from_snapshot, None);
    assert_eq!(quick.state, full.state, "snapshot + tail == full fold");
    assert_eq!(quick.fence, full.fence);

    // A new replica takes over from the snapshot and decides what one run of the rule over
    // intake decides: nothing twice, nothing different.
    first.stop().await;
    let second = world.replica();
    traffic(&world, 12).await;
    let (expected, log) = world.wait_all_decided().await;
    assert_eq!(log, expected);
    assert_eq!(
        second
            .metrics
            .snapshot_loads
            .with_label_values(&["used"])
            .get(),
        1,
        "the new replica started from the snapshot"
    );
    second.stop().await;
}

/// The snapshots are taken by a copy of the state off the decider (`reservation::shadow`),
/// which follows the decider group by group: each one it stores must still be exactly the
/// fold of the log up to its decision, including capacities changed between decisions (which
/// a group that ends undecided holds past its checkpoint).
#[tokio::test]
async fn each_snapshot_taken_off_the_decider_is_the_fold_of_the_log_up_to_its_decision() {
    let world = World::start().await;
    world.set_capacity(&slot("snap-a"), 4).await;
    world.set_capacity(&slot("snap-b"), 2).await;
    let replica = world.replica_with(streams::subjects::RegionFilter::One(region()), 5);
    for round in 0..4u32 {
        let before = replica.metrics.snapshots.get();
        traffic(&world, 8).await;
        world.set_capacity(&slot("snap-a"), 5 + round).await;
        traffic(&world, 4).await;
        world.wait_all_decided().await;
        testkit::eventually("a new snapshot", Duration::from_secs(30), || async {
            (replica.metrics.snapshots.get() > before).then_some(())
        })
        .await;
        let full = world.rebuild(false).await;
        let quick = world.rebuild(true).await;
        assert_eq!(quick.snapshot, Some("used"), "round {round}");
        assert!(
            quick.folded < full.folded,
            "round {round}: only a tail folded"
        );
        assert_eq!(
            quick.state, full.state,
            "round {round}: snapshot + tail == full fold"
        );
        assert_eq!(quick.fence, full.fence, "round {round}");
    }
    replica.stop().await;
}

#[tokio::test]
async fn a_snapshot_that_does_not_match_the_log_is_ignored_for_a_full_fold() {
    let world = World::start().await;
    let first = snapshotted(&world, (4, 2), 24).await;
    first.stop().await;
    let full = world.rebuild(false).await;

    let store = world.snapshot_store().await;
    let name = subjects::reservation_snapshot(&region());
    let mut good = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut store.get(&name).await.unwrap(), &mut good)
        .await
        .unwrap();
    let (header, state) = snapshot::decode(&good).unwrap();
    let with = |change: &dyn Fn(&mut snapshot::Header)| {
        let mut h = header.clone();
        change(&mut h);
        snapshot::encode(&h, &state)
    };
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"not a snapshot at all".to_vec()),
        ("cut short", good[..good.len() / 2].to_vec()),
        ("newer format", newer),
        (
            "another decision's digest",
            with(&|h| h.decision_digest = [0; 32]),
        ),
        (
            "a decision not in the log",
            with(&|h| h.decision_seq += 1_000),
        ),
        // The decision before the recorded one exists but is not the one it was taken after.
        ("an earlier decision", with(&|h| h.decision_seq -= 1)),
        ("another region", {
            let mut h = header.clone();
            h.region = streams::model::Region::parse("pomorskie").unwrap();
            snapshot::encode(&h, &state)
        }),
    ];
    for (what, bytes) in bad {
        store
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .unwrap();
        let rebuilt = world.rebuild(true).await;
        assert_eq!(rebuilt.snapshot, Some("ignored"), "{what} was not ignored");
        assert_eq!(rebuilt.from_snapshot, None, "{what}");
        assert_eq!(rebuilt.state, full.state, "{what}: the full fold is used");
        assert_eq!(rebuilt.fence, full.fence, "{what}");
    }

    // The good one again is used; and a replica starting over a bad one decides right.
    store
        .put(name.as_str(), &mut good.as_slice())
        .await
        .unwrap();
    assert_eq!(world.rebuild(true).await.snapshot, Some("used"));
    store
        .put(
            name.as_str(),
            &mut with(&|h| h.decision_digest = [1; 32]).as_slice(),
        )
        .await
        .unwrap();
    let second = world.replica();
    traffic(&world, 10).await;
    let (expected, log) = world.wait_all_decided().await;
    assert_eq!(log, expected);
    assert_eq!(
        second
            .metrics
            .snapshot_loads
            .with_label_values(&["ignored"])
            .get(),
        1
    );
    second.stop().await;
}
