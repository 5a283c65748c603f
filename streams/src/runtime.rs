//! Plumbing every binary shares: connecting to NATS, telemetry, shutdown and metrics.

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// How a service reaches NATS (read from its flags and `REG_NATS_*` variables by
/// [`crate::settings::NatsArgs`]). Its `Debug` output leaves the password out.
#[derive(Clone)]
pub struct NatsOptions {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222` or, for a cluster,
    /// `nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224` ([`server_addrs`]).
    pub url: String,
    /// Connection name shown by `nats-server` monitoring.
    pub name: String,
    /// Optional user credentials (`user:password`), for per-service permissions (see
    /// [`crate::accounts`]). With them, replies come on the user's own inbox prefix
    /// ([`crate::accounts::inbox_prefix`]).
    pub credentials: Option<(String, String)>,
    /// TLS to the server, when set: the server's certificate is checked against its CA and,
    /// if the server asks for one, this client presents its own certificate.
    pub tls: Option<TlsOptions>,
    /// Whether this service creates or updates the streams at start-up
    /// ([`crate::config::ensure_streams`]) or only binds to them
    /// ([`crate::config::bind_streams`], waiting until the admin identity created them).
    pub manage_streams: bool,
}

/// TLS settings of a NATS connection (`REG_NATS_TLS_CA`, `REG_NATS_TLS_CERT`,
/// `REG_NATS_TLS_KEY`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA that signed the server's certificate (otherwise the system's web
    /// roots are trusted).
    pub ca: Option<std::path::PathBuf>,
    /// PEM files of this client's certificate and key, for servers that verify clients.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl NatsOptions {
    /// Plain options: no credentials, no TLS, managing streams (a development machine).
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        NatsOptions {
            url: url.into(),
            name: name.into(),
            credentials: None,
            tls: None,
            manage_streams: true,
        }
    }

    /// Options from the environment alone, as every service reads them
    /// ([`crate::settings::NatsArgs`]): for tools without NATS flags of their own.
    pub fn from_env(name: &str) -> anyhow::Result<Self> {
        crate::settings::from_env::<crate::settings::NatsArgs>()?.options(name)
    }

    /// These options under the identity `user` / `password` when a (non-empty) user is
    /// given, unchanged otherwise: how one binary gives each of its parts its own identity.
    /// The two variables are named in the error of a user without a password. An identity
    /// does not manage streams.
    pub fn with_identity(
        mut self,
        user: Option<&str>,
        password: Option<&crate::settings::Secret>,
        (user_variable, password_variable): (&str, &str),
    ) -> anyhow::Result<Self> {
        match (user.filter(|u| !u.is_empty()), password) {
            (Some(user), Some(password)) => {
                self.credentials = Some((user.to_owned(), password.expose().to_owned()));
                self.manage_streams = false;
            }
            (None, _) => {}
            (Some(_), None) => {
                anyhow::bail!("{user_variable} is set without {password_variable}: set both")
            }
        }
        Ok(self)
    }
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.credentials.as_ref().map(|(user, _)| user);
        f.debug_struct("NatsOptions")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("user", &user)
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("manage_streams", &self.manage_streams)
            .finish()
    }
}

/// The servers of a comma-separated URL list, in order. async-nats reads a `&str` as one
/// address (`"a,b"` would be a single, invalid one), so a cluster's list is split here and
/// handed over as a list: the client then connects to any of them and, when that server
/// goes away, reconnects to another (and to the ones the cluster advertises).
pub fn server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("Failed to read the NATS server address {url:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!addrs.is_empty(), "no NATS server address in {urls:?}");
    Ok(addrs)
}

/// Connects to NATS, retrying until it answers or `shutdown` fires. Services start in any
/// order; a missing server is waited for, not a crash.
pub async fn connect(
    options: &NatsOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(&options.url)?;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)));
        if let Some((user, password)) = &options.credentials {
            connect = connect
                .user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(crate::accounts::inbox_prefix(user));
        }
        if let Some(tls) = &options.tls {
            // Several rustls providers are linked in (ring, aws-lc-rs): name the one to use,
            // once per process (a later call finds it installed and changes nothing).
            let _ = rustls::crypto::ring::default_provider().install_default();
            connect = connect.require_tls(true);
            if let Some(ca) = &tls.ca {
                connect = connect.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client_cert {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let attempt = async_nats::connect_with_options(servers.as_slice(), connect);
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("Shut down before NATS answered"),
            result = attempt => match result {
                Ok(client) => {
                    // retry_on_initial_connect returns at once: wait for the real connection.
                    let flushed = tokio::time::timeout(Duration::from_secs(10), client.flush()).await;
                    if matches!(flushed, Ok(Ok(()))) {
                        return Ok(client);
                    }
                    tracing::warn!(url = %options.url, "NATS is not answering yet; retrying.");
                }
                Err(err) => tracing::warn!(url = %options.url, error = %err, "Could not connect to NATS yet; retrying."),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("Shut down before NATS answered"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Connects to NATS and creates or updates every stream and bucket, or (without
/// [`NatsOptions::manage_streams`]) waits until they exist: how each service starts. A
/// creation that times out is tried again until `shutdown` fires (on a cluster just formed,
/// an R3 stream answers only once its first leader is elected, which can take longer than
/// one request's timeout); any other refusal (say, another replication than the streams
/// have) stops the start.
pub async fn start_jetstream(
    options: &NatsOptions,
    replication: crate::config::Replication,
    shutdown: &CancellationToken,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let client = connect(options, shutdown).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut delay = Duration::from_millis(100);
    loop {
        if options.manage_streams {
            match crate::config::ensure_streams(&js, replication).await {
                Ok(()) => return Ok((client, js)),
                Err(err) if is_transient(&err) => tracing::warn!(
                    error = %format!("{err:#}"),
                    "JetStream did not answer in time (a cluster still electing leaders?); trying again."
                ),
                Err(err) => return Err(err),
            }
        } else {
            match crate::config::bind_streams(&js, replication).await {
                Ok(()) => return Ok((client, js)),
                Err(err) => tracing::warn!(
                    error = %format!("{err:#}"),
                    "The streams are not there yet; waiting for the admin identity to create them."
                ),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("Shut down before the streams were in place"),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Whether creating the streams failed only for want of a timely answer (worth trying again)
/// rather than because JetStream refused.
fn is_transient(err: &anyhow::Error) -> bool {
    use async_nats::jetstream::context::{
        CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        GetStreamError, GetStreamErrorKind,
    };
    err.chain().any(|cause| {
        cause.downcast_ref::<CreateStreamError>().is_some_and(|e| {
            matches!(
                e.kind(),
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable
            )
        }) || cause
            .downcast_ref::<GetStreamError>()
            .is_some_and(|e| matches!(e.kind(), GetStreamErrorKind::Request))
            || cause
                .downcast_ref::<CreateKeyValueError>()
                .is_some_and(|e| matches!(e.kind(), CreateKeyValueErrorKind::TimedOut))
    })
}

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), lines in `format`
/// (a service's `REG_LOG_FORMAT`, [`crate::settings::TelemetryArgs`]). Safe to call more
/// than once (later calls do nothing).
pub fn init_telemetry(format: crate::settings::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match format {
        crate::settings::LogFormat::Json => builder.json().try_init(),
        crate::settings::LogFormat::Text => builder.try_init(),
    };
}

/// A token cancelled on Ctrl-C or SIGTERM, for binaries' `main`.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutdown requested; stopping.");
        fire.cancel();
    });
    token
}

/// Runs `serving` until it ends, or until `grace` has passed since `shutdown` fired: work in
/// flight gets that long to finish, then the process stops anyway (and says so).
pub async fn serve_with_grace<F>(
    serving: F,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(?grace, "Work still in flight after the grace period; stopping anyway.");
            Ok(())
        }
    }
}

/// Registers `metric` in `registry` and hands it back: how each service's `Metrics` builds
/// its fields (a name registered twice is a programming error, hence the panic).
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &prometheus::Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// Renders a Prometheus registry in the text exposition format.
pub fn render_metrics(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding of gathered metrics cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

/// Binds a service's listening address, saying which one failed (a port already taken is
/// the usual start-up error).
pub fn bind(address: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).with_context(|| format!("Failed to bind {address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_late_answer_makes_the_stream_creation_worth_trying_again() {
        use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
        let timed_out = anyhow::Error::new(CreateStreamError::new(CreateStreamErrorKind::TimedOut))
            .context("Failed to create or update stream REG_INTAKE");
        assert!(is_transient(&timed_out));
        let refused = anyhow::Error::new(CreateStreamError::new(
            CreateStreamErrorKind::InvalidStreamName,
        ))
        .context("Failed to create or update stream REG_INTAKE");
        assert!(!is_transient(&refused));
        assert!(!is_transient(&anyhow::anyhow!(
            "stream REG_INTAKE has 1 replica(s) but this service was started with REG_REPLICAS=3"
        )));
    }

    #[test]
    fn a_comma_separated_url_is_every_server_of_a_cluster() {
        let addrs =
            server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,nats://10.0.0.3:4224")
                .unwrap();
        let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(addrs[2].host(), "10.0.0.3");
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        assert!(server_addrs(" , ").is_err());
    }
}
