//! Test support shared by every crate's integration tests:
//! - [`NatsServer`]: a real `nats-server` with JetStream on a free port and a temporary store
//!   directory, fsyncing every write (`sync_interval: always`) like production, stopped and
//!   removed on drop;
//! - [`NatsCluster`]: a JetStream cluster (one nats-server per node, each on free ports with
//!   its own temporary store), nodes killed and restarted one by one;
//! - [`eventually`]: poll a condition with a deadline instead of sleeping;
//! - [`openapi::check_routes`]: a service's routes against its committed OpenAPI document;
//! - [`redirect::RedirectTrap`]: a server redirecting to another, for outbound HTTP clients;
//! - [`citizen`] and [`slot_date`]: a valid registration body on a date that never passes.
#![forbid(unsafe_code)]

mod bodies;
mod cluster;
pub mod http;
pub mod openapi;
pub mod redirect;
mod surreal;
pub use bodies::{REGION, citizen, slot_date};
pub use cluster::NatsCluster;
pub use surreal::{SurrealServer, surreal_server_binary};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where to find `nats-server`: `$NATS_SERVER_BIN`, then the copy `deploy/install-nats`
/// puts in `.tools/bin/`, then `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = workspace.join(".tools/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// The Go scheduler threads (`GOMAXPROCS`) `deploy/up` gives nats-server on a machine it
/// shares with the services: half the cores, at least one. With one per core (Go's default)
/// its idle threads spin looking for work on the cores the services need, which costs
/// nats-server CPU per registration and the edge its tail latency (the measurements:
/// docs/write-path.md).
pub fn gomaxprocs_beside_services() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1)
}

/// Starts `nats-server -c <config>` with its log going to `log` (and `GOMAXPROCS` if given),
/// panicking with install instructions when the binary cannot be started.
pub(crate) fn spawn_nats_server(
    config: &Path,
    log: std::fs::File,
    gomaxprocs: Option<usize>,
) -> Child {
    let binary = nats_server_binary();
    let mut command = Command::new(&binary);
    if let Some(n) = gomaxprocs {
        command.env("GOMAXPROCS", n.to_string());
    }
    command
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "could not start {}: {e}. Install it with `deploy/install-nats` \
                 (or set NATS_SERVER_BIN to a nats-server >= 2.12)",
                binary.display()
            )
        })
}

/// A running `nats-server` owned by one test.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// `sync_interval: always` (durable acknowledgements), as everywhere but a benchmark's
    /// non-durable reference.
    sync_always: bool,
    /// Configuration appended to the generated one (authorization, TLS), kept for restarts.
    extra_config: String,
    /// `GOMAXPROCS` for the server (`None`: Go's default, one per core).
    gomaxprocs: Option<usize>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory.
    pub fn start() -> Self {
        Self::start_with_sync(true)
    }

    /// Starts a server whose acknowledgements are not durable (nats-server's default fsync
    /// every two minutes): only for measuring what durability costs.
    pub fn start_without_fsync() -> Self {
        Self::start_with_sync(false)
    }

    /// Starts a server whose configuration ends with `extra`: an `authorization` block of
    /// per-service users (`deploy/admin/nats-accounts` renders them), a `tls` block. Such a server
    /// may refuse [`NatsServer::connect`]; connect with the credentials the test chose.
    pub fn start_with_config(extra: &str) -> Self {
        Self::start_configured(true, extra.to_owned())
    }

    /// Starts a server as `deploy/up` runs it beside the services on one machine
    /// ([`gomaxprocs_beside_services`]), its configuration ending with `extra`: what a
    /// benchmark of the whole system measures.
    pub fn start_beside_services(extra: &str) -> Self {
        let mut server = Self::unstarted(true, extra.to_owned());
        server.gomaxprocs = Some(gomaxprocs_beside_services());
        server.spawn(-1);
        server
    }

    fn start_with_sync(sync_always: bool) -> Self {
        Self::start_configured(sync_always, String::new())
    }

    fn start_configured(sync_always: bool, extra_config: String) -> Self {
        let mut server = Self::unstarted(sync_always, extra_config);
        server.spawn(-1);
        server
    }

    fn unstarted(sync_always: bool, extra_config: String) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        NatsServer {
            child: None,
            dir,
            port: 0,
            sync_always,
            extra_config,
            gomaxprocs: None,
        }
    }

    /// The server's store directory (on the disk whose fsync rate bounds it).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("jetstream")
    }

    fn spawn(&mut self, port: i32) {
        self.spawn_within(port, Duration::from_secs(20));
    }

    fn spawn_within(&mut self, port: i32, ready_within: Duration) {
        let store = self.dir.path().join("jetstream");
        let ports = self.dir.path().join("ports");
        std::fs::create_dir_all(&ports).expect("ports directory");
        for entry in std::fs::read_dir(&ports)
            .expect("ports directory")
            .flatten()
        {
            let _ = std::fs::remove_file(entry.path());
        }
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "host: 127.0.0.1\nport: {port}\nmax_payload: 8MB\nports_file_dir: {ports:?}\n\
                 jetstream {{\n  store_dir: {store:?}\n{sync}}}\n{extra}\n",
                sync = if self.sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                },
                extra = self.extra_config,
            ),
        )
        .expect("config file");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log file");
        let child = spawn_nats_server(&config, log, self.gomaxprocs);
        let pid = child.id();
        self.child = Some(child);
        let ports_file = ports.join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + ready_within;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Some(port) = parse_client_port(&text)
            {
                self.port = port;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not report its port; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id while it runs (the benchmark reads its CPU time and memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL: nothing is flushed that was not already fsync'd).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP), as a long pause or a partition would: connections stay
    /// open, nothing is answered, whatever was sent waits in the socket.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`NatsServer::pause`]d server (SIGCONT): it handles what waited.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server runs").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.restart_within(Duration::from_secs(20));
    }

    /// [`NatsServer::restart`], allowing the server `ready_within` to recover its store
    /// before it listens (millions of messages after a crash: a benchmark's restart).
    pub fn restart_within(&mut self, ready_within: Duration) {
        self.kill();
        let port = self.port as i32;
        self.spawn_within(port, ready_within);
    }

    /// Connects a client.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("the test nats-server accepts connections")
    }
}

fn parse_client_port(text: &str) -> Option<u16> {
    // {"nats":["nats://127.0.0.1:PORT"], ...} (`tls://` when the server requires TLS)
    let start = ["nats://", "tls://"]
        .iter()
        .find_map(|scheme| Some(text.find(scheme)? + scheme.len()))?;
    let rest = &text[start..];
    let end = rest.find('"')?;
    rest[..end].rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`. The way to
/// wait for an asynchronous effect without a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// Installs the services' log subscriber when `TEST_LOG` is set; tests are silent otherwise.
pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        streams::runtime::init_telemetry(streams::settings::LogFormat::Text);
    }
}
