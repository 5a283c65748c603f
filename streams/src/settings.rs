//! What every service reads from its command line and `REG_*` variables, in one place: the
//! argument groups each service flattens (`#[command(flatten)]`) into its own clap
//! arguments, so a setting the services share has one name, one default and one parser.
//!
//! | group | variables | read by |
//! | --- | --- | --- |
//! | [`NatsArgs`] | `REG_NATS_URL`, `REG_NATS_USER`, `REG_NATS_PASSWORD`, `REG_NATS_TLS`, `REG_NATS_TLS_CA`, `REG_NATS_TLS_CERT`, `REG_NATS_TLS_KEY`, `REG_NATS_MANAGE_STREAMS`, `REG_REPLICAS` | every service (and, through [`NatsOptions::from_env`], the tools) |
//! | [`SecretArgs`] | `REG_SECRET`, `REG_DEV_MODE` | every service |
//! | [`OperatorArgs`] | `REG_ADMIN_TOKEN` | the edge and the read API |
//! | [`Addresses`] | `REG_INGEST_LISTEN`, `REG_READ_LISTEN`, `REG_PROCESSOR_LISTEN`, `REG_STATUS_BASE_URL`, `REG_CITIZEN_PAGE_URL` | every service: each binds its own address, and links from one part to another default to the others' |
//! | [`CalendarArgs`] | `REG_TIME_ZONES` | every service |
//! | [`TelemetryArgs`] | `REG_LOG_FORMAT` | every service |
//!
//! A binary parses its arguments with [`parse`], which says which variable a wrong value came
//! from (clap itself names only the flag). Secrets are [`Secret`]s: never printed, by
//! `Debug` or in `--help`.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Command, Parser};

use crate::config::Replication;
use crate::crypto::{DEVELOPMENT_ADMIN_TOKEN, DEVELOPMENT_SECRET, Keys};
use crate::runtime::{NatsOptions, TlsOptions};

/// A secret setting (the server secret, a password, a token): its value is never printed,
/// neither by `Debug` nor `Display` (it has none), so a settings struct holding one can be
/// logged whole. Read it with [`Secret::expose`] where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (a MAC key, a sign-in).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// How a service reaches NATS, and how many copies its streams keep.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated: every node of a cluster.
    #[arg(
        long = "nats-url",
        env = "REG_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// This service's NATS user, for per-service permissions (docs/security.md); requires
    /// the password. Unset: anonymous.
    #[arg(long = "nats-user", env = "REG_NATS_USER")]
    pub user: Option<String>,
    /// The NATS user's password.
    #[arg(
        long = "nats-password",
        env = "REG_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<Secret>,
    /// TLS to NATS, trusting the system's roots (implied by a CA or a client certificate).
    #[arg(
        long = "nats-tls",
        env = "REG_NATS_TLS",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub tls: bool,
    /// PEM file of the CA that signed nats-server's certificate (turns TLS on).
    #[arg(long = "nats-tls-ca", env = "REG_NATS_TLS_CA", value_parser = maybe_empty_path)]
    pub tls_ca: Option<PathBuf>,
    /// PEM file of this service's client certificate, for a server that verifies clients
    /// (with the key).
    #[arg(long = "nats-tls-cert", env = "REG_NATS_TLS_CERT", value_parser = maybe_empty_path)]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's key.
    #[arg(long = "nats-tls-key", env = "REG_NATS_TLS_KEY", value_parser = maybe_empty_path)]
    pub tls_key: Option<PathBuf>,
    /// Whether this service creates or updates the streams at start-up, or only binds to
    /// them (the admin identity creates them). Default: true without a NATS user, false with
    /// one.
    #[arg(
        long = "nats-manage-streams",
        env = "REG_NATS_MANAGE_STREAMS",
        action = ArgAction::Set,
        value_parser = BoolishValueParser::new()
    )]
    pub manage_streams: Option<bool>,
    /// JetStream replicas per stream: 1 on one node, 3 in a cluster.
    #[arg(long, env = "REG_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
}

/// A path, or the empty string (clap's own path parser refuses it), which
/// [`NatsArgs::options`] reads as unset.
fn maybe_empty_path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

impl NatsArgs {
    /// The connection options, under the connection name `name`. A variable set to the empty
    /// string counts as unset (a deployment's template may leave one empty).
    pub fn options(&self, name: &str) -> anyhow::Result<NatsOptions> {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let client_cert = match (path(&self.tls_cert), path(&self.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("REG_NATS_TLS_CERT and REG_NATS_TLS_KEY go together: set both"),
        };
        let ca = path(&self.tls_ca);
        let mut options = NatsOptions::new(self.url.clone(), name).with_identity(
            self.user.as_deref(),
            self.password.as_ref(),
            ("REG_NATS_USER", "REG_NATS_PASSWORD"),
        )?;
        if self.tls || ca.is_some() || client_cert.is_some() {
            options.tls = Some(TlsOptions { ca, client_cert });
        }
        if let Some(manage) = self.manage_streams {
            options.manage_streams = manage;
        }
        Ok(options)
    }

    /// How many copies the streams keep.
    pub fn replication(&self) -> Replication {
        Replication(self.replicas)
    }
}

/// The server secret every key derives from, and whether the development one may be used.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Secrets")]
pub struct SecretArgs {
    /// The server secret: registration tokens, citizen keys and the data key derive from
    /// it. Every service of one system needs the same. Unset: a development secret, which
    /// only REG_DEV_MODE allows.
    #[arg(
        long,
        env = "REG_SECRET",
        hide_env_values = true,
        default_value = DEVELOPMENT_SECRET,
        hide_default_value = true
    )]
    pub secret: Secret,
    /// Development mode: the service may start with the development secret and operator
    /// token (and says so in its log). Never in production.
    #[arg(
        long,
        env = "REG_DEV_MODE",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub dev_mode: bool,
}

impl SecretArgs {
    /// The keys derived from the secret.
    pub fn keys(&self) -> Keys {
        Keys::from_secret(self.secret.expose())
    }

    /// Refuses to start with the development secret, or with any of `others` (variable,
    /// value in use, its development value) left at its development value, outside
    /// development mode; in development mode it warns. The error names what to set and never
    /// prints a value.
    pub fn refuse_development_credentials(
        &self,
        others: &[(&str, &Secret, &str)],
    ) -> anyhow::Result<()> {
        let mut credentials = vec![("REG_SECRET", &self.secret, DEVELOPMENT_SECRET)];
        credentials.extend_from_slice(others);
        match development_credentials(&credentials, self.dev_mode) {
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
}

/// The development credentials among `credentials`: none (`Ok(None)`), allowed in
/// development mode (`Ok(Some(names))`), or the refusal to print.
fn development_credentials(
    credentials: &[(&str, &Secret, &str)],
    development_mode: bool,
) -> Result<Option<String>, String> {
    let names: Vec<&str> = credentials
        .iter()
        .filter(|(_, value, dev)| value.expose() == *dev)
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

/// The operators' bearer token (the edge's and the read API's operator endpoints).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Secrets")]
pub struct OperatorArgs {
    /// The operators' bearer token. Unset: a development token, which only REG_DEV_MODE
    /// allows.
    #[arg(
        long,
        env = "REG_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = DEVELOPMENT_ADMIN_TOKEN,
        hide_default_value = true
    )]
    pub admin_token: Secret,
}

impl OperatorArgs {
    /// The token as [`SecretArgs::refuse_development_credentials`] checks it.
    pub fn credential(&self) -> (&'static str, &Secret, &'static str) {
        (
            "REG_ADMIN_TOKEN",
            &self.admin_token,
            DEVELOPMENT_ADMIN_TOKEN,
        )
    }
}

/// Where each part of the system listens, and the public URLs that by default follow from
/// those addresses. Every service reads all of them, so the links one part gives to another
/// (a `202`'s status link, a message's link to the citizens' page, the origins the read API
/// answers) agree by default; each binds only its own.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Addresses")]
pub struct Addresses {
    /// Address the ingest edge listens on (and serves the citizens' page from).
    #[arg(long, env = "REG_INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    pub ingest_listen: String,
    /// Address the read API (the projections) listens on.
    #[arg(long, env = "REG_READ_LISTEN", default_value = "127.0.0.1:8081")]
    pub read_listen: String,
    /// Address of the processors' health and metrics endpoint.
    #[arg(long, env = "REG_PROCESSOR_LISTEN", default_value = "127.0.0.1:8082")]
    pub processor_listen: String,
    /// The read API's public base URL, put in each `202`'s `status_url` [default:
    /// http://<REG_READ_LISTEN>].
    #[arg(long, env = "REG_STATUS_BASE_URL")]
    pub status_base_url: Option<String>,
    /// The citizens' page's public URL, which status links in messages open [default:
    /// http://<REG_INGEST_LISTEN>/].
    #[arg(long, env = "REG_CITIZEN_PAGE_URL")]
    pub citizen_page_url: Option<String>,
}

impl Addresses {
    /// The read API's public base URL, without a trailing `/`.
    pub fn status_base_url(&self) -> String {
        self.status_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.read_listen))
            .trim_end_matches('/')
            .to_owned()
    }

    /// The citizens' page's public URL.
    pub fn citizen_page_url(&self) -> String {
        self.citizen_page_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/", self.ingest_listen))
    }
}

/// Each region's time zone, where a slot's day ends.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Regions")]
pub struct CalendarArgs {
    /// Each region's time zone, where a slot's day ends: IANA names, comma-separated, bare
    /// for every region or `region=Zone` for one.
    #[arg(long, env = "REG_TIME_ZONES", default_value = "Europe/Warsaw")]
    pub time_zones: crate::calendar::Calendar,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How a service logs (`RUST_LOG` filters, as everywhere in the Rust ecosystem).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logs")]
pub struct TelemetryArgs {
    /// Log line format.
    #[arg(
        long,
        env = "REG_LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// Parses a binary's arguments (flags, then `REG_*` variables, then defaults), or prints
/// the error and exits: clap's own errors, except that a wrong value read from a variable
/// is reported under the variable's name.
pub fn parse<A: Parser>() -> A {
    try_parse_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
}

/// [`parse`] of `argv` (the first item is the binary's name), returning the error.
pub fn try_parse_from<A, I, T>(argv: I) -> Result<A, clap::Error>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    A::try_parse_from(argv).map_err(|err| name_the_variable(err, A::command(), std_env))
}

fn std_env(name: &OsStr) -> Option<OsString> {
    std::env::var_os(name)
}

/// `A` from `argv` alone, every environment variable ignored: the defaults (and the flags
/// given), whatever the shell around a test sets.
pub fn try_parse_without_env<A, I, T>(argv: I) -> Result<A, clap::Error>
where
    A: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = A::command().mut_args(|arg| arg.env(None));
    let matches = command.try_get_matches_from_mut(argv)?;
    A::from_arg_matches(&matches)
}

/// Every default of `A`, no flag and no environment variable read: the one source of a
/// service's development settings.
pub fn defaults<A: Parser>() -> A {
    let name = A::command().get_name().to_owned();
    try_parse_without_env([name]).expect("a command parses with no arguments")
}

/// A group of arguments read from the environment alone (no flags): how tools that have no
/// command line of their own for it read the services' settings, e.g.
/// [`NatsOptions::from_env`].
pub fn from_env<G: clap::Args>() -> anyhow::Result<G> {
    let command = G::augment_args(Command::new("environment").no_binary_name(true));
    let matches = command
        .clone()
        .try_get_matches_from(Vec::<OsString>::new())
        .map_err(|err| name_the_variable(err, command, std_env))?;
    Ok(G::from_arg_matches(&matches)?)
}

/// The environment variable an invalid value came from, in the error, when it came from one:
/// clap names the flag (`--max-body-bytes <MAX_BODY_BYTES>`), which someone who set
/// `REG_MAX_BODY_BYTES` never typed.
fn name_the_variable(
    err: clap::Error,
    mut command: Command,
    env: impl Fn(&OsStr) -> Option<OsString>,
) -> clap::Error {
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return err;
    }
    let (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) = (
        err.get(ContextKind::InvalidArg),
        err.get(ContextKind::InvalidValue),
    ) else {
        return err;
    };
    command.build();
    let Some(variable) = variable_of(&command, flag) else {
        return err;
    };
    // From the variable, not from the flag (which clap's message already names).
    if env(&variable).as_deref() != Some(OsStr::new(value)) {
        return err;
    }
    let why = match (
        std::error::Error::source(&err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => {
            format!("expected one of {}", valid.join(", "))
        }
        (None, _) => "not an accepted value".to_owned(),
    };
    command.error(
        ErrorKind::ValueValidation,
        format!(
            "{}={value:?} is invalid: {why} (the variable of {flag})",
            variable.to_string_lossy()
        ),
    )
}

/// The environment variable of the argument clap displays as `flag`, in `command` or its
/// subcommands.
fn variable_of(command: &Command, flag: &str) -> Option<OsString> {
    command
        .get_arguments()
        .find(|arg| arg.to_string() == flag)
        .and_then(|arg| arg.get_env().map(OsStr::to_owned))
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| variable_of(sub, flag))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// A service's command line as the services build theirs.
    #[derive(Debug, Parser)]
    #[command(name = "service")]
    struct Service {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        operators: OperatorArgs,
        #[command(flatten)]
        addresses: Addresses,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        /// A number.
        #[arg(long, env = "SETTINGS_TEST_NUMBER", default_value_t = 7)]
        number: u32,
    }

    fn parse(argv: &[&str]) -> Service {
        try_parse_without_env(std::iter::once("service").chain(argv.iter().copied())).unwrap()
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let service = parse(&[
            "--secret",
            "the-server-secret",
            "--admin-token",
            "the-operator-token",
            "--nats-user",
            "ingest",
            "--nats-password",
            "the-nats-password",
        ]);
        let options = service.nats.options("ingest").unwrap();
        assert_eq!(
            options.credentials,
            Some(("ingest".to_owned(), "the-nats-password".to_owned()))
        );
        for printed in [
            format!("{service:?}"),
            format!("{service:#?}"),
            format!("{options:?}"),
        ] {
            for secret in [
                "the-server-secret",
                "the-operator-token",
                "the-nats-password",
            ] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
            assert!(printed.contains("<redacted>"), "{printed}");
        }
        assert!(
            format!("{options:?}").contains("ingest"),
            "the user is no secret"
        );
    }

    #[test]
    fn secret_values_are_hidden_from_help() {
        let command = Service::command();
        for arg in command.get_arguments() {
            let Some(variable) = arg.get_env().and_then(OsStr::to_str) else {
                continue;
            };
            let secret = ["SECRET", "PASS", "TOKEN"]
                .iter()
                .any(|word| variable.contains(word));
            assert_eq!(
                arg.is_hide_env_values_set(),
                secret,
                "{variable}: a secret's value, and only a secret's, is hidden from --help"
            );
        }
    }

    #[test]
    fn the_defaults_are_a_development_machine() {
        let service = defaults::<Service>();
        let options = service.nats.options("ingest").unwrap();
        assert_eq!(options.url, "nats://127.0.0.1:4222");
        assert!(options.credentials.is_none() && options.tls.is_none());
        assert!(
            options.manage_streams,
            "no identity: the service creates the streams"
        );
        assert_eq!(service.nats.replication().0, 1);
        assert_eq!(service.secret.secret.expose(), DEVELOPMENT_SECRET);
        assert!(!service.secret.dev_mode);
        assert_eq!(service.addresses.status_base_url(), "http://127.0.0.1:8081");
        assert_eq!(
            service.addresses.citizen_page_url(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(service.telemetry.log_format, LogFormat::Text);
        assert_eq!(service.number, 7);
    }

    #[test]
    fn links_follow_the_listen_addresses_unless_set() {
        let service = parse(&[
            "--read-listen",
            "10.0.0.2:9081",
            "--ingest-listen",
            "[::]:80",
        ]);
        assert_eq!(service.addresses.status_base_url(), "http://10.0.0.2:9081");
        assert_eq!(service.addresses.citizen_page_url(), "http://[::]:80/");
        let service = parse(&["--status-base-url", "https://status.example/"]);
        assert_eq!(
            service.addresses.status_base_url(),
            "https://status.example"
        );
    }

    #[test]
    fn a_nats_identity_needs_both_halves_and_stops_managing_streams() {
        let err = parse(&["--nats-user", "ingest"])
            .nats
            .options("ingest")
            .unwrap_err();
        assert!(err.to_string().contains("REG_NATS_PASSWORD"), "{err}");
        let err = parse(&["--nats-tls-cert", "client.pem"])
            .nats
            .options("ingest")
            .unwrap_err();
        assert!(err.to_string().contains("REG_NATS_TLS_KEY"), "{err}");
        let identity = parse(&["--nats-user", "ingest", "--nats-password", "p"])
            .nats
            .options("ingest")
            .unwrap();
        assert!(!identity.manage_streams);
        let told = parse(&[
            "--nats-user",
            "ingest",
            "--nats-password",
            "p",
            "--nats-manage-streams",
            "1",
        ])
        .nats
        .options("ingest")
        .unwrap();
        assert!(told.manage_streams);
        // An empty user or path counts as unset.
        let empty = parse(&["--nats-user", "", "--nats-tls-ca", ""])
            .nats
            .options("ingest")
            .unwrap();
        assert!(empty.credentials.is_none() && empty.tls.is_none());
        let tls = parse(&["--nats-tls"]).nats.options("ingest").unwrap();
        assert!(tls.tls.is_some_and(|t| t.ca.is_none()));
    }

    #[test]
    fn a_wrong_value_from_a_variable_is_reported_under_its_name() {
        let env = |name: &OsStr| (name == "SETTINGS_TEST_NUMBER").then(|| OsString::from("many"));
        let command = Service::command().mut_arg("number", |a| a.env(None));
        let err = command
            .clone()
            .try_get_matches_from(["service", "--number", "many"])
            .unwrap_err();
        let named = name_the_variable(err, Service::command(), env).to_string();
        assert!(
            named.contains(r#"SETTINGS_TEST_NUMBER="many" is invalid: invalid digit"#),
            "{named}"
        );
        // The same value given as the flag (the variable says otherwise): clap's message.
        let other = |_: &OsStr| Some(OsString::from("3"));
        let err = command
            .try_get_matches_from(["service", "--number", "many"])
            .unwrap_err();
        let flagged = name_the_variable(err, Service::command(), other).to_string();
        assert!(!flagged.contains("SETTINGS_TEST_NUMBER"), "{flagged}");
        assert!(flagged.contains("--number"), "{flagged}");
        // A value from a list: the accepted ones.
        let format = |name: &OsStr| (name == "REG_LOG_FORMAT").then(|| OsString::from("xml"));
        let err = Service::command()
            .mut_arg("log_format", |a| a.env(None))
            .try_get_matches_from(["service", "--log-format", "xml"])
            .unwrap_err();
        let named = name_the_variable(err, Service::command(), format).to_string();
        assert!(
            named.contains(r#"REG_LOG_FORMAT="xml" is invalid: expected one of text, json"#),
            "{named}"
        );
    }

    #[test]
    fn development_credentials_start_only_in_development_mode() {
        let (dev, mine) = (Secret::from("dev"), Secret::from("s3cret"));
        let both = [
            ("REG_SECRET", &dev, "dev"),
            ("REG_ADMIN_TOKEN", &mine, "admin"),
        ];
        let refusal = development_credentials(&both, false).unwrap_err();
        assert!(refusal.contains("REG_SECRET"), "{refusal}");
        assert!(
            !refusal.contains("REG_ADMIN_TOKEN") && !refusal.contains("s3cret"),
            "{refusal}"
        );
        assert_eq!(
            development_credentials(&both, true),
            Ok(Some("REG_SECRET".to_owned()))
        );
        let own = [("REG_SECRET", &mine, "dev")];
        assert_eq!(development_credentials(&own, false), Ok(None));
        let service = parse(&[]);
        let refused = service
            .secret
            .refuse_development_credentials(&[service.operators.credential()])
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("REG_SECRET and REG_ADMIN_TOKEN"),
            "{refused}"
        );
        let service = parse(&["--dev-mode"]);
        service
            .secret
            .refuse_development_credentials(&[service.operators.credential()])
            .unwrap();
    }
}
