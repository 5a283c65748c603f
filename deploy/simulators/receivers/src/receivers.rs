//! The two receivers together: their knobs, counters and stores, and serving them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context as _;
use rand::Rng as _;
use simkit::Simulator as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::counts::{Counts, Outcome};
use crate::knobs::{Knobs, KnobsError};
use crate::store::{self, MailStore, Stored};

/// The SMTP sink and the webhook receiver: their knobs (changeable at runtime), counters and
/// stores under one data directory. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Receivers {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    pub(crate) mail_store: MailStore,
    pub(crate) webhook_secret: Vec<u8>,
    knobs: simkit::KnobCell<Knobs>,
    counts: Mutex<Counts>,
    pub(crate) mail: tokio::sync::Mutex<Stored>,
    pub(crate) webhook: tokio::sync::Mutex<Stored>,
}

impl fmt::Debug for Receivers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receivers")
            .field("dir", &self.inner.dir)
            .field("webhook_secret", &"<redacted>")
            .field("knobs", &self.knobs())
            .finish_non_exhaustive()
    }
}

impl simkit::Simulator for Receivers {
    type Knobs = Knobs;

    fn knob_cell(&self) -> &simkit::KnobCell<Knobs> {
        &self.inner.knobs
    }
}

/// Which receiver a delivery came to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    Smtp,
    Webhook,
}

impl Receivers {
    /// Receivers storing under `dir` (`<dir>/mail/`, `<dir>/webhook/`), with these knobs and
    /// zeroed counters, checking webhook signatures with `webhook_secret`. Nothing is touched
    /// on disk until [`Receivers::serve`].
    pub fn new(
        dir: PathBuf,
        knobs: Knobs,
        webhook_secret: String,
    ) -> Result<Receivers, KnobsError> {
        Receivers::keeping_mail(dir, knobs, webhook_secret, MailStore::Files)
    }

    /// As [`Receivers::new`], keeping mail as `mail_store` says.
    pub fn keeping_mail(
        dir: PathBuf,
        knobs: Knobs,
        webhook_secret: String,
        mail_store: MailStore,
    ) -> Result<Receivers, KnobsError> {
        let knobs = simkit::KnobCell::new(knobs)?;
        Ok(Receivers {
            inner: Arc::new(Inner {
                dir,
                mail_store,
                webhook_secret: webhook_secret.into_bytes(),
                knobs,
                counts: Mutex::new(Counts::default()),
                mail: tokio::sync::Mutex::new(Stored::default()),
                webhook: tokio::sync::Mutex::new(Stored::default()),
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the SMTP sink stores messages: `<dir>/mail`, one `<notification-id>.eml` each,
    /// or all in `messages.mbox` ([`MailStore::Mbox`]).
    pub fn mail_dir(&self) -> PathBuf {
        store::mail_dir(&self.inner.dir)
    }

    /// The mbox every message is appended to, when mail is kept in one.
    pub fn mbox_file(&self) -> Option<PathBuf> {
        (self.inner.mail_store == MailStore::Mbox).then(|| store::mbox_file(&self.mail_dir()))
    }

    /// Where the webhook receiver appends deliveries: `<dir>/webhook/deliveries.ndjson`.
    pub fn webhook_file(&self) -> PathBuf {
        store::webhook_file(&self.inner.dir)
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> Counts {
        self.lock_counts().clone()
    }

    fn lock_counts(&self) -> MutexGuard<'_, Counts> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(
        &self,
        transport: Transport,
        notification_id: Option<&str>,
        outcome: Outcome,
    ) {
        let mut counts = self.lock_counts();
        let counts = match transport {
            Transport::Smtp => &mut counts.smtp,
            Transport::Webhook => &mut counts.webhook,
        };
        counts.record(notification_id, outcome);
    }

    /// Draws whether this delivery fails on purpose, by the transport's fail-rate knob.
    pub(crate) fn fails_by_knob(&self, transport: Transport) -> bool {
        let knobs = self.knobs();
        let rate = match transport {
            Transport::Smtp => knobs.smtp_fail_rate,
            Transport::Webhook => knobs.webhook_fail_rate,
        };
        rate > 0.0 && rand::rng().random_bool(rate)
    }

    /// Serves the SMTP sink on `smtp` and the webhook receiver with the admin endpoints on
    /// `http` until `shutdown` is cancelled. Creates the data directories first and reads back
    /// the notification ids already stored there (they count as duplicates when delivered
    /// again). On shutdown both stop accepting; SMTP sessions waiting for a command are told
    /// `421` and closed, a message being transferred is finished first, and HTTP requests in
    /// flight finish.
    pub async fn serve(
        self,
        smtp: TcpListener,
        http: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mail = match self.inner.mail_store {
            MailStore::Files => store::load_mail(&self.mail_dir()).await?,
            MailStore::Mbox => store::load_mbox(&self.mail_dir()).await?,
        };
        let webhook = store::load_webhook(&self.webhook_file()).await?;
        self.inner.mail.lock().await.merge(mail);
        self.inner.webhook.lock().await.merge(webhook);
        let smtp = crate::smtp::serve(self.clone(), smtp, shutdown.clone());
        let http = async {
            axum::serve(http, crate::webhook::router(&self))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .await
                .context("serving the webhook receiver")
        };
        tokio::try_join!(smtp, http)?;
        Ok(())
    }
}
