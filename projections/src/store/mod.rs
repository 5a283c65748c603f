//! The SurrealDB side of the projections: schema, the batched idempotent writes, the reads.
//!
//! Tables:
//! - `registration:⟨id⟩` — status, reason, region, location, date, updated_at, and for a
//!   waiting registration its place in line (`line_seq`), from which its position is counted;
//! - `line:⟨id⟩` — the registrations waiting for something, and only those: `waitlisted`
//!   ones (with `line_seq`, to count a position) and those in `manual_review` (the operators'
//!   list). A row comes with the status and goes with the next one. Most registrations never
//!   wait, so the lists are read from this small table instead of an index over every
//!   registration's status, which cost a quarter of the projections' CPU per registration
//!   (docs/write-path.md);
//! - `slot:[region, location, date]` — capacity (from intake), reserved and waiting (from
//!   decisions);
//! - `dead_letter:⟨notification id⟩` — messages that could not be delivered, until re-driven;
//! - `checkpoint:⟨stream⟩` — the last stream sequence applied.
//!
//! A batch of events and its checkpoint are written in one transaction, so each stream
//! sequence is applied exactly once: after a crash the worker resumes at checkpoint + 1 and
//! re-applies nothing. Writes from the two streams commute (a slot's capacity from intake, its
//! counts from decisions). Submissions write nothing: a registration's row starts with its
//! first decision, and the read API answers `received` until then (see
//! [`crate::worker::projected_streams`]).
//!
//! | module | what it holds |
//! | --- | --- |
//! | `schema` | the tables and indexes (DDL), and the one migration of older stores |
//! | `changes` | the pure mapping from events to the writes a batch makes, no I/O |
//! | `apply` | a batch's writes and its checkpoint, in one transaction |
//! | `read` | what the read API and a rebuild's comparison read |
//! | `rows` | the typed rows reads return: availability, a registration, reviews, dead letters |

use anyhow::Context as _;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;

mod apply;
mod changes;
mod read;
mod rows;
mod schema;
#[cfg(test)]
mod tests;

pub use apply::ApplyError;
pub use read::{MAX_REVIEWS_LISTED, SNAPSHOT_TABLES, SlotCursor, SlotRows, Snapshot};
pub use rows::{Availability, DeadLetter, Registration, Review};

/// Where the projections live: `surrealkv://<dir>` (embedded, default), `mem://` (tests) or
/// `ws://host:port` (a SurrealDB server, with credentials).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The endpoint.
    pub endpoint: String,
    /// Root credentials for a remote server (`REG_SURREAL_USER`, `REG_SURREAL_PASS`).
    pub credentials: Option<(String, streams::settings::Secret)>,
    /// The database the projections live in: [`LIVE_DATABASE`] unless an operator switched
    /// the read API to a rebuilt one (`REG_SURREAL_DATABASE`, see [`crate::rebuild`]).
    pub database: String,
}

impl StoreOptions {
    /// The live database at `endpoint`, without credentials.
    pub fn new(endpoint: impl Into<String>) -> Self {
        StoreOptions {
            endpoint: endpoint.into(),
            credentials: None,
            database: LIVE_DATABASE.to_owned(),
        }
    }
}

/// A connection to the projection database.
#[derive(Clone)]
pub struct Store {
    db: Surreal<Any>,
}

/// The namespace every projection database lives in.
const NAMESPACE: &str = "registration";

/// The database the live projections (and the read API) use.
pub const LIVE_DATABASE: &str = "projections";

impl Store {
    /// Connects (creating the embedded database if needed) and defines the schema.
    pub async fn open(options: &StoreOptions) -> anyhow::Result<Self> {
        let db = surrealdb::engine::any::connect(options.endpoint.as_str())
            .await
            .with_context(|| format!("Failed to open SurrealDB at {}", options.endpoint))?;
        if let Some((username, password)) = &options.credentials {
            db.signin(surrealdb::opt::auth::Root {
                username: username.clone(),
                password: password.expose().to_owned(),
            })
            .await
            .context("Failed to sign in to SurrealDB")?;
        }
        Store::in_database(db, &options.database).await
    }

    /// The projections in database `name` beside this one, on the same connection (a
    /// session of its own), the schema defined: where a rebuild writes while the live
    /// projections go on.
    pub async fn database(&self, name: &str) -> anyhow::Result<Self> {
        Store::in_database(self.db.clone(), name).await
    }

    async fn in_database(db: Surreal<Any>, name: &str) -> anyhow::Result<Self> {
        db.use_ns(NAMESPACE)
            .use_db(name)
            .await
            .with_context(|| format!("Failed to select the SurrealDB database {name}"))?;
        schema::define(&db).await?;
        Ok(Store { db })
    }

    /// Whether the database answers.
    pub async fn is_healthy(&self) -> bool {
        self.db.health().await.is_ok()
    }
}
