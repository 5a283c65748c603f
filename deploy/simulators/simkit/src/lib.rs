//! What the simulators of outside systems (`registry-sim`, `receivers`) share, so that each
//! holds only what makes it that system.
//!
//! | module | what |
//! | --- | --- |
//! | [`knobs`] | knobs a test or an operator changes while the simulator runs, by a partial JSON object, validated before they take effect, held in one [`KnobCell`]; the [`Simulator`] accessors that come with them |
//! | [`http`] | JSON answers and the admin routes every simulator serves (`GET`/`PUT /_sim/knobs`, `GET /healthz`) |
//! | [`testing`] | for the simulators' tests: one served in-process on a port-0 listener, and its HTTP answers read whole |
//!
//! A simulator's `main` installs the shared telemetry (`streams::runtime::init_telemetry`),
//! reads its knobs with [`Knobs::over_defaults`] and serves with [`serve_until_signalled`].
#![forbid(unsafe_code)]

pub mod http;
pub mod knobs;
pub mod testing;

pub use knobs::{KnobCell, Knobs, NotAProbability, PatchError, Refused, Simulator, probabilities};

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long work in flight (requests, deliveries) may take to finish once a stop is asked
/// for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs `serve` (given the shutdown token) until Ctrl-C or SIGTERM, then gives work in flight
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve_until_signalled<F, Fut>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let shutdown = streams::runtime::shutdown_on_signals();
    streams::runtime::serve_with_grace(serve(shutdown.clone()), &shutdown, SHUTDOWN_GRACE).await
}
