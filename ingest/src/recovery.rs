//! Lost-link recovery, answered before anything is looked up.
//!
//! `POST /v1/registrations/recover` must not tell a stranger whether someone is registered,
//! by its answer or by how long it takes. So the handler only validates and limits the
//! request, hands the citizen key to a bounded queue ([`Recoveries::request`]) and answers:
//! the same bytes, after the same work, for everyone. A background worker ([`run`]) then
//! reads the citizen's claim and, if there is one, appends `RecoveryRequested` for their
//! latest registration; the notification processor sends the fresh link to the contact on
//! record. A full queue drops the request (counted in `ingest_recoveries_dropped_total`,
//! which counts drops of known and unknown citizens alike); the answer is the same.
//!
//! A handler that looked the claim up and appended before answering would take measurably
//! longer for a registered citizen than for a stranger, and the public `/metrics` would count
//! the append (docs/ingest.md).

use std::time::Duration;

use futures::future::join_all;
use streams::appender::{Appender, Outgoing};
use streams::claims::ClaimRecord;
use streams::events::{Envelope, Event, RecoveryRequested};
use streams::subjects::{self, IntakeKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Recovery requests waiting for the worker, at most. Each is a citizen key (32 bytes of
/// hex); with the per-address and per-citizen limits in front, the queue fills only under a
/// flood from many addresses, and then the flood's requests are the ones dropped.
pub const QUEUE: usize = 4096;

/// Requests the worker handles at once (their appends share the group commit).
const BATCH: usize = 64;

/// Tries of a claim lookup before the request is dropped (NATS away).
const LOOKUPS: usize = 3;

/// Wait between two tries of a lookup.
const RETRY: Duration = Duration::from_millis(500);

/// The sending end of the recovery queue. Cheap to clone.
#[derive(Clone)]
pub struct Recoveries {
    tx: mpsc::Sender<String>,
}

impl Recoveries {
    /// A queue of at most `bound` requests and its receiving end, for [`run`].
    pub fn bounded(bound: usize) -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(bound.max(1));
        (Recoveries { tx }, rx)
    }

    /// Queues a recovery for `citizen_key`, without waiting; `false` when the queue is full
    /// (or the worker stopped) and the request was dropped.
    pub fn request(&self, citizen_key: String) -> bool {
        self.tx.try_send(citizen_key).is_ok()
    }
}

/// The worker: takes queued requests in order, up to [`BATCH`] at a time, and finishes a
/// batch before taking the next, until `shutdown` or until every sender is gone.
pub async fn run(
    mut queue: mpsc::Receiver<String>,
    js: async_nats::jetstream::Context,
    appender: Appender,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = queue.recv_many(&mut batch, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        join_all(batch.drain(..).map(|key| recover(&js, &appender, key))).await;
    }
}

/// Looks `citizen_key`'s claim up and, if the citizen ever registered, appends
/// `RecoveryRequested` for their latest registration.
async fn recover(js: &async_nats::jetstream::Context, appender: &Appender, citizen_key: String) {
    let mut tries = 0;
    let last = loop {
        tries += 1;
        match streams::claims::last(js, &citizen_key).await {
            Ok(last) => break last,
            Err(err) if tries < LOOKUPS => {
                tracing::debug!(error = %err, "A recovery's claim lookup failed; trying again.");
                tokio::time::sleep(RETRY).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "A recovery was dropped: its claim could not be read.");
                return;
            }
        }
    };
    let Some(record) = last.and_then(|m| ClaimRecord::decode(&m.payload).ok()) else {
        return;
    };
    let id = record.latest().clone();
    let envelope = Envelope::new(
        id.to_string(),
        Event::RecoveryRequested(RecoveryRequested {
            registration_id: id.clone(),
        }),
    );
    let subject = subjects::intake(&id.region(), IntakeKind::Recover);
    // Not retried: a write that timed out may have landed, and a second would send a
    // second message.
    if let Err(err) = appender.append(Outgoing::event(subject, &envelope)).await {
        tracing::warn!(registration_id = %id, error = %err, "A recovery could not be appended.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_request_without_waiting() {
        let (recoveries, mut queue) = Recoveries::bounded(1);
        assert!(recoveries.request("a".into()));
        assert!(!recoveries.request("b".into()), "full: dropped");
        assert_eq!(queue.try_recv().unwrap(), "a");
        assert!(recoveries.request("c".into()), "room again");
        drop(queue);
        assert!(
            !recoveries.request("d".into()),
            "the worker stopped: dropped"
        );
    }
}
