//! Snapshots taken off the decider: a second copy of a region's state, kept on a thread of its
//! own, that encodes and stores the snapshots, so the decider never stops deciding for one.
//!
//! Encoding a snapshot takes about 1.2 s per million registrations of the region's state (at
//! 19 million registrations nationally, the largest region holds about 2.8 million: several
//! seconds). Encoded by the decider, that was a pause in deciding every `snapshot_every`
//! decisions. The shadow instead:
//! - starts from a copy of the decider's state right after each rebuild ([`Shadow::reset`]:
//!   a clone, once per takeover);
//! - after each group the decider handled and wrote, takes the same inputs in the same order
//!   ([`Shadow::handled`]) and runs the same rule over them ([`State::handle`] is a pure
//!   function of the state and the input), so it holds the same state the decider held at
//!   that point; a group whose write failed never reaches it (the decider rebuilds, and the
//!   shadow is reset from the rebuilt state);
//! - when the decider would have snapshotted (enough decisions since the last snapshot, the
//!   state exactly the fold of the log up to the group's last decision: see
//!   [`super::snapshot`]), encodes and stores a snapshot of its own copy. Meanwhile the next
//!   groups wait in its queue; the decider only hands them over.
//!
//! What it costs: a second copy of the region's state in memory, the rule run twice over
//! every input (about 2 µs each), and a clone of the state at each takeover.

use std::sync::mpsc;

use async_nats::jetstream::{self, object_store::ObjectStore};
use streams::model::Region;

use super::decide::{Input, State};
use super::rebuild::{self, Pending};
use crate::metrics::Metrics;

enum Message {
    /// Start over from this state: exactly the fold of the log up to the decision at `fence`,
    /// with `since` decisions not in any snapshot.
    Reset {
        state: Box<State>,
        fence: u64,
        since: u64,
    },
    /// A group the decider handled, and wrote if it decided anything: its inputs in order,
    /// the fence after it, the decisions it wrote.
    Handled {
        inputs: Vec<Input>,
        fence: u64,
        written: u64,
    },
}

/// The handle the decider keeps; the copy and its thread end when it is dropped (a snapshot
/// being stored is finished first).
pub struct Shadow {
    queue: mpsc::Sender<Message>,
}

/// Where the shadow stores its snapshots.
#[derive(Clone)]
pub struct Target {
    /// The log (a snapshot is checked against its decision).
    pub js: jetstream::Context,
    /// The snapshots bucket.
    pub store: ObjectStore,
    /// Decisions between two snapshots.
    pub every: u64,
    /// Metrics.
    pub metrics: Metrics,
}

impl Shadow {
    /// Starts the shadow of `region` on a thread of its own; storing uses the current Tokio
    /// runtime (call from inside it).
    pub fn start(region: Region, target: Target) -> Self {
        let (queue, received) = mpsc::channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("snapshots-{region}"))
            .spawn(move || keep(region, target, received, runtime))
            .expect("a thread can be started");
        Shadow { queue }
    }

    /// The decider rebuilt its state: the shadow starts over from a copy of it. `since`:
    /// decisions folded that are in no snapshot (a long fold is snapshotted at once).
    pub fn reset(&self, state: &State, fence: u64, since: u64) {
        let _ = self.queue.send(Message::Reset {
            state: Box::new(state.clone()),
            fence,
            since,
        });
    }

    /// The decider handled `inputs` and wrote their `written` decisions, the last at `fence`.
    pub fn handled(&self, inputs: Vec<Input>, fence: u64, written: u64) {
        let _ = self.queue.send(Message::Handled {
            inputs,
            fence,
            written,
        });
    }
}

/// The shadow's thread: applies what the decider hands over, snapshots when due.
fn keep(
    region: Region,
    target: Target,
    received: mpsc::Receiver<Message>,
    runtime: tokio::runtime::Handle,
) {
    let mut copy: Option<State> = None;
    let mut since = 0;
    while let Ok(message) = received.recv() {
        let fence;
        let exact = match message {
            Message::Reset {
                state,
                fence: at,
                since: folded,
            } => {
                copy = Some(*state);
                (fence, since) = (at, folded);
                true
            }
            Message::Handled {
                inputs,
                fence: at,
                written,
            } => {
                let Some(state) = copy.as_mut() else {
                    continue;
                };
                for input in &inputs {
                    state.handle(input);
                }
                fence = at;
                since += written;
                // The state is the fold of the log up to the fence only when the group's
                // last input was decided: otherwise it may hold a capacity set after the
                // state's checkpoint, which a fold would not (the next group will do).
                written > 0 && inputs.last().is_some_and(|i| i.seq == state.checkpoint)
            }
        };
        let Some(state) = copy.as_ref() else {
            continue;
        };
        if !exact || since < target.every || fence == 0 {
            continue;
        }
        since = 0;
        let timer = target.metrics.snapshot_encode_seconds.start_timer();
        let pending = Pending::of(&region, fence, state);
        timer.observe_duration();
        match runtime.block_on(rebuild::write(&target.js, &target.store, pending)) {
            Ok(bytes) => {
                target.metrics.snapshots.inc();
                tracing::info!(%region, decision_seq = fence, bytes, "Snapshot of the region's state stored.");
            }
            Err(err) => {
                tracing::warn!(%region, decision_seq = fence, error = %format!("{err:#}"), "A snapshot could not be stored; the next one will be tried later.");
            }
        }
    }
}
