//! Plumbing every binary shares: connecting to NATS, telemetry, shutdown and metrics.

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

/// How a service reaches NATS.
#[derive(Debug, Clone)]
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

    /// Options from the environment: `REG_NATS_URL` (default `nats://127.0.0.1:4222`),
    /// `REG_NATS_USER` + `REG_NATS_PASSWORD`, `REG_NATS_TLS` (`1`: TLS with the system's
    /// roots), `REG_NATS_TLS_CA`, `REG_NATS_TLS_CERT` + `REG_NATS_TLS_KEY`, and
    /// `REG_NATS_MANAGE_STREAMS` (default: `1` without a user, `0` with one).
    pub fn from_env(name: &str) -> anyhow::Result<Self> {
        let url = std::env::var("REG_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let mut options = NatsOptions::new(url, name).with_identity_from_env("")?;
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let ca = var("REG_NATS_TLS_CA").map(Into::into);
        let client_cert = match (var("REG_NATS_TLS_CERT"), var("REG_NATS_TLS_KEY")) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => anyhow::bail!("REG_NATS_TLS_CERT and REG_NATS_TLS_KEY go together: set both"),
        };
        let required = env_parse::<u8>("REG_NATS_TLS")?.unwrap_or(0) == 1;
        if required || ca.is_some() || client_cert.is_some() {
            options.tls = Some(TlsOptions { ca, client_cert });
        }
        if let Some(manage) = env_parse::<u8>("REG_NATS_MANAGE_STREAMS")? {
            options.manage_streams = manage == 1;
        }
        Ok(options)
    }

    /// These options under the identity `REG_NATS_<WHO>_USER` / `REG_NATS_<WHO>_PASSWORD`
    /// (`REG_NATS_USER` / `REG_NATS_PASSWORD` for an empty `who`) when it is set, unchanged
    /// otherwise: how one binary gives each of its parts its own identity. An identity does
    /// not manage streams.
    pub fn with_identity_from_env(mut self, who: &str) -> anyhow::Result<Self> {
        let infix = if who.is_empty() {
            String::new()
        } else {
            format!("{}_", who.to_ascii_uppercase())
        };
        let user = std::env::var(format!("REG_NATS_{infix}USER")).ok();
        let password = std::env::var(format!("REG_NATS_{infix}PASSWORD")).ok();
        match (user.filter(|u| !u.is_empty()), password) {
            (Some(user), Some(password)) => {
                self.credentials = Some((user, password));
                self.manage_streams = false;
            }
            (None, _) => {}
            (Some(_), None) => anyhow::bail!(
                "REG_NATS_{infix}USER is set without REG_NATS_{infix}PASSWORD: set both"
            ),
        }
        Ok(self)
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

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`), `REG_LOG_FORMAT=json`
/// switches to JSON lines. Safe to call more than once (later calls do nothing).
pub fn init_telemetry() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = if std::env::var("REG_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
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

/// Reads an environment variable, parsing it when set.
pub fn env_parse<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}"))
            .context("Failed to read configuration"),
        Err(_) => Ok(None),
    }
}

/// Binds a service's listening address, saying which one failed (a port already taken is
/// the usual start-up error).
pub fn bind(address: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(address).with_context(|| format!("Failed to bind {address}"))
}

/// Whether this process runs in development mode (`REG_DEV_MODE=1`, which `deploy/up` and the
/// test harnesses set): only then may it start with the development secret or operator token.
pub fn development_mode() -> bool {
    matches!(
        std::env::var("REG_DEV_MODE").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// Refuses to start with a development credential outside development mode. Each entry is
/// (variable, value in use, its development value); the error names what to set and never
/// prints a value.
pub fn check_credentials(credentials: &[(&str, &str, &str)]) -> anyhow::Result<()> {
    match development_credentials(credentials, development_mode()) {
        Ok(None) => Ok(()),
        Ok(Some(names)) => {
            tracing::warn!(
                variables = %names,
                "Development credentials in use (REG_DEV_MODE=1). Never do this in production."
            );
            Ok(())
        }
        Err(refusal) => anyhow::bail!(refusal),
    }
}

/// The development credentials among `credentials`: none (`Ok(None)`), allowed in
/// development mode (`Ok(Some(names))`), or the refusal to print.
fn development_credentials(
    credentials: &[(&str, &str, &str)],
    development_mode: bool,
) -> Result<Option<String>, String> {
    let names: Vec<&str> = credentials
        .iter()
        .filter(|(_, value, dev)| value == dev)
        .map(|(name, _, _)| *name)
        .collect();
    match (names.is_empty(), development_mode) {
        (true, _) => Ok(None),
        (false, true) => Ok(Some(names.join(", "))),
        (false, false) => Err(format!(
            "{} unset or left at the development value: set {} to a secret of your own, or \
             REG_DEV_MODE=1 on a development machine",
            names.join(" and "),
            if names.len() == 1 { "it" } else { "each" },
        )),
    }
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

    #[test]
    fn development_credentials_start_only_in_development_mode() {
        let dev = [
            ("REG_SECRET", "dev", "dev"),
            ("REG_ADMIN_TOKEN", "s3cret", "admin"),
        ];
        let refusal = development_credentials(&dev, false).unwrap_err();
        assert!(refusal.contains("REG_SECRET"), "{refusal}");
        assert!(
            !refusal.contains("REG_ADMIN_TOKEN") && !refusal.contains("s3cret"),
            "{refusal}"
        );
        assert_eq!(
            development_credentials(&dev, true),
            Ok(Some("REG_SECRET".to_owned()))
        );
        let own = [("REG_SECRET", "mine", "dev")];
        assert_eq!(development_credentials(&own, false), Ok(None));
    }
}
