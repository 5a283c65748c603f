//! [`SurrealServer`]: a real SurrealDB server (the `surreal` binary `deploy/install-surreal`
//! builds from SurrealDB's server library) on a free loopback port, with a temporary SurrealKV
//! store and root credentials of its own, for tests of the read side on a server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to start (its root user's password hash alone takes a second).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to find the `surreal` server: `$SURREAL_SERVER_BIN`, then the copy
/// `deploy/install-surreal` puts in `.tools/bin/`, then `PATH`.
pub fn surreal_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SURREAL_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/surreal");
    if local.exists() {
        return local;
    }
    PathBuf::from("surreal")
}

/// A running SurrealDB server owned by one test, killed (and its store removed) on drop.
pub struct SurrealServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl SurrealServer {
    /// The root user the server is started with.
    pub const USER: &'static str = "root";
    /// Its password.
    pub const PASSWORD: &'static str = "test-root-password";

    /// Starts a server on a free port and waits until it is ready (`GET /ready` 200).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let port = crate::cluster::free_ports(1)[0];
        let mut server = SurrealServer {
            dir,
            port,
            child: None,
        };
        server.spawn();
        server
    }

    /// The endpoint the SurrealDB client connects to (`REG_SURREAL_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The server's process id while it runs (a benchmark reads its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the server keeps its data (SurrealKV on disk).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("surreal.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let binary = surreal_server_binary();
        let log = std::fs::File::create(self.dir.path().join("surreal.log")).expect("log file");
        let store = format!("surrealkv://{}", self.dir.path().join("data").display());
        let child = Command::new(&binary)
            .args(["start", "--no-banner", "--log", "warn", "--bind"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--user", Self::USER, "--pass", Self::PASSWORD])
            .arg(store)
            // No call home at start; RUST_LOG would override --log.
            .env("SURREAL_ONLINE_VERSION_CHECK", "false")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start {}: {e}. Build it with `deploy/install-surreal` (or set \
                     SURREAL_SERVER_BIN to a SurrealDB 3 server)",
                    binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !crate::cluster::get_ok(self.port, "/ready") {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "surreal exited while starting ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "surreal did not become ready within {READY_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SurrealServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
