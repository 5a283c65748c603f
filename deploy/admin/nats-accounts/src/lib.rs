//! # nats-accounts: per-service NATS identities for a development system
//!
//! The permissions come from [`streams::accounts`] (next to the subjects they name); this
//! crate turns them into what a nats-server and the services read:
//! - [`Accounts::authorization`]: the server's `authorization` block, one user per
//!   [`Service`], passwords stored as bcrypt hashes ([`PasswordStorage::Bcrypt`]);
//! - [`Accounts::env_files`]: each service's credentials as `REG_NATS_*` lines (the
//!   processors binary gets three identities, one per processor);
//! - [`ServerTls::block`]: a `tls {}` block, for clients or inside `cluster {}` for routes;
//! - the `nats-accounts` binary: `generate` writes all of it into a directory, `streams`
//!   creates or updates the streams as the admin identity (the services only bind).
//!
//! `deploy/up` runs both; `docs/security.md` is the operator's guide.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use streams::accounts::Service;
use streams::runtime::NatsOptions;

/// bcrypt's work factor for the stored hashes: `nats server passwd`'s default. The server
/// checks a hash once per connection, not per message.
const BCRYPT_COST: u32 = 11;

/// How passwords appear in the server configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordStorage {
    /// As bcrypt hashes: a leaked server configuration reveals no password.
    Bcrypt,
    /// In plain text: quicker to start, for tests only.
    Plain,
}

/// One password per identity.
#[derive(Clone)]
pub struct Accounts {
    passwords: Vec<(Service, String)>,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Accounts(<redacted>)")
    }
}

impl Accounts {
    /// Fresh random passwords (32 alphanumerics, about 190 bits) for every identity.
    pub fn generate() -> Self {
        use rand::Rng as _;
        let passwords = Service::ALL
            .iter()
            .map(|&service| {
                let password: String = rand::rng()
                    .sample_iter(rand::distr::Alphanumeric)
                    .take(32)
                    .map(char::from)
                    .collect();
                (service, password)
            })
            .collect();
        Accounts { passwords }
    }

    /// The password of `service`.
    pub fn password(&self, service: Service) -> &str {
        self.passwords
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, p)| p.as_str())
            .expect("every identity has a password")
    }

    /// How `service` connects to the server at `url` (name shown in monitoring: `name`).
    pub fn nats_options(&self, service: Service, url: &str, name: &str) -> NatsOptions {
        let mut options = NatsOptions::new(url, name);
        options.credentials = Some((service.user().to_owned(), self.password(service).into()));
        options.manage_streams = service == Service::Admin;
        options
    }

    /// The nats-server `authorization` block: every identity with its permissions.
    pub fn authorization(&self, storage: PasswordStorage) -> anyhow::Result<String> {
        let mut out = String::from(
            "# Written by nats-accounts: one user per service, each with only the subjects it\n\
             # needs (streams/src/accounts.rs). Anything not allowed is refused.\n\
             authorization {\n  users = [\n",
        );
        for (service, password) in &self.passwords {
            let password = match storage {
                PasswordStorage::Plain => password.clone(),
                PasswordStorage::Bcrypt => bcrypt::hash(password, BCRYPT_COST)?,
            };
            let permissions = service.permissions();
            writeln!(out, "    {{")?;
            writeln!(out, "      user: {}", quote(service.user()))?;
            writeln!(out, "      password: {}", quote(&password))?;
            writeln!(out, "      permissions: {{")?;
            writeln!(
                out,
                "        publish: {{ allow: {} }}",
                list(&permissions.publish)
            )?;
            writeln!(
                out,
                "        subscribe: {{ allow: {} }}",
                list(&permissions.subscribe)
            )?;
            writeln!(out, "      }}")?;
            writeln!(out, "    }}")?;
        }
        out.push_str("  ]\n}\n");
        Ok(out)
    }

    /// Each credentials file: its name (`ingest.env`, …) and its `REG_NATS_*` lines.
    pub fn env_files(&self) -> Vec<(&'static str, String)> {
        let line = |prefix: &str, service: Service| {
            format!(
                "REG_NATS_{prefix}USER={}\nREG_NATS_{prefix}PASSWORD={}\n",
                service.user(),
                self.password(service)
            )
        };
        vec![
            ("admin.env", line("", Service::Admin)),
            ("ingest.env", line("", Service::Ingest)),
            (
                "processors.env",
                [
                    line("", Service::Reservation),
                    line("VERIFICATION_", Service::Verification),
                    line("NOTIFICATION_", Service::Notification),
                ]
                .concat(),
            ),
            ("projections.env", line("", Service::Projections)),
            ("analyst.env", line("", Service::Analyst)),
        ]
    }

    /// Writes `auth.conf` (bcrypt hashes) and the credentials files into `dir`, readable by
    /// their owner only.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_private(
            &dir.join("auth.conf"),
            &self.authorization(PasswordStorage::Bcrypt)?,
        )?;
        for (name, text) in self.env_files() {
            write_private(&dir.join(name), &text)?;
        }
        Ok(())
    }
}

/// The server side of TLS: its certificate and key, and the CA clients' certificates must
/// be signed by (when it verifies them).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM of the server's certificate.
    pub cert: PathBuf,
    /// PEM of the server's key.
    pub key: PathBuf,
    /// PEM of the CA that signs clients' (and, in a cluster, the other nodes') certificates.
    pub ca: PathBuf,
    /// Refuse clients without a certificate signed by `ca` (mutual TLS).
    pub verify_clients: bool,
}

impl ServerTls {
    /// The `tls { … }` block: at the top level for clients, inside `cluster { … }` for
    /// routes between nodes (which always verify each other).
    pub fn block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  timeout: 2\n}}\n",
            quote(&self.cert.display().to_string()),
            quote(&self.key.display().to_string()),
            quote(&self.ca.display().to_string()),
            self.verify_clients,
        )
    }

    /// The TLS files `deploy/dev-ca` writes into `dir`.
    pub fn development(dir: &Path) -> Self {
        ServerTls {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            ca: dir.join("ca.pem"),
            verify_clients: true,
        }
    }
}

fn quote(value: &str) -> String {
    assert!(
        !value.contains(['"', '\\', '\n']),
        "configuration values carry no quotes, backslashes or newlines"
    );
    format!("\"{value}\"")
}

fn list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("[{}]", items.join(", "))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
