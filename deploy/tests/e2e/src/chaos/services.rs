//! The services as child processes of the chaos binary (`chaos serve <service>` runs the
//! same code as the service's own binary), so a SIGKILL is a real crash.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The operator token the chaos run configures.
pub const ADMIN_TOKEN: &str = "chaos-admin-token";

/// One service process, started by [`spawn`].
pub struct Process {
    name: String,
    child: Child,
    /// Held open while the chaos run lives: when the run dies, even by a panic or a
    /// SIGKILL, the child reads end-of-file and stops (`chaos serve` watches its stdin).
    _lifeline: std::process::ChildStdin,
    /// Its HTTP base URL (health, metrics, API).
    pub base: String,
}

impl Process {
    /// Its name, as in its log file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A reservation replica that was killed.
#[derive(Debug, Clone, Copy)]
pub struct Victim {
    /// Whether it held the lease (was deciding) when it died.
    pub was_active: bool,
}

/// A processor replica and the regions it was started for.
struct Replica {
    process: Process,
    /// `REG_REGION` when it serves one region only (an operator adding capacity where the
    /// rush is, beside the replicas that serve every region); `None` for `*`.
    only: Option<String>,
}

/// The running system: the edge, the projections and the reservation replicas.
pub struct System {
    exe: PathBuf,
    nats_url: String,
    log_dir: PathBuf,
    ingest: Process,
    projections: Process,
    replicas: Vec<Replica>,
    started_replicas: u32,
    /// Environment every service gets beside the deployment's (a cluster's
    /// `REG_REPLICAS=3`).
    service_env: Vec<(String, String)>,
    /// Environment every processor replica gets beside the deployment's (the notification
    /// providers).
    replica_env: Vec<(String, String)>,
    http: ntex::client::Client,
}

impl System {
    /// Starts every service against `nats_url` and waits until each is ready.
    pub async fn start(nats_url: &str, log_dir: &Path, replicas: u32) -> anyhow::Result<Self> {
        Self::start_with(nats_url, log_dir, replicas, Vec::new(), (0, "")).await
    }

    /// As [`System::start`], each processor replica with `replica_env` added, and
    /// `region_replicas` more started for `region` only (`REG_REGION=<region>`) beside the
    /// ones that serve every region.
    pub async fn start_with(
        nats_url: &str,
        log_dir: &Path,
        replicas: u32,
        replica_env: Vec<(String, String)>,
        (region_replicas, region): (u32, &str),
    ) -> anyhow::Result<Self> {
        Self::start_configured(
            nats_url,
            log_dir,
            replicas,
            Vec::new(),
            replica_env,
            (region_replicas, region),
        )
        .await
    }

    /// As [`System::start_with`], every service (the replicas too) with `service_env` added:
    /// how the failover run starts the system on a cluster (`REG_REPLICAS=3`).
    pub async fn start_configured(
        nats_url: &str,
        log_dir: &Path,
        replicas: u32,
        service_env: Vec<(String, String)>,
        replica_env: Vec<(String, String)>,
        (region_replicas, region): (u32, &str),
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("Failed to find the chaos binary")?;
        let http = ntex::client::Client::new().await;
        let mut system = System {
            ingest: spawn_with_env(&exe, nats_url, log_dir, "ingest", "ingest", &service_env)?,
            projections: spawn_with_env(
                &exe,
                nats_url,
                log_dir,
                "projections",
                "projections",
                &service_env,
            )?,
            exe,
            nats_url: nats_url.to_owned(),
            log_dir: log_dir.to_owned(),
            replicas: Vec::new(),
            started_replicas: 0,
            service_env,
            replica_env,
            http,
        };
        for _ in 0..replicas {
            system.start_replica(None)?;
        }
        for _ in 0..region_replicas {
            system.start_replica(Some(region.to_owned()))?;
        }
        let System {
            ingest,
            projections,
            replicas,
            http,
            ..
        } = &mut system;
        let replicas = replicas.iter_mut().map(|r| &mut r.process);
        for process in [ingest, projections].into_iter().chain(replicas) {
            wait_ready(http, process).await?;
        }
        Ok(system)
    }

    /// The edge's base URL.
    pub fn ingest_url(&self) -> &str {
        &self.ingest.base
    }

    /// The read API's base URL.
    pub fn read_url(&self) -> &str {
        &self.projections.base
    }

    /// Every service process: the edge, the projections, the reservation replicas.
    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        [&self.ingest, &self.projections]
            .into_iter()
            .chain(self.replicas.iter().map(|r| &r.process))
    }

    fn start_replica(&mut self, only: Option<String>) -> anyhow::Result<()> {
        self.started_replicas += 1;
        let mut env: Vec<(String, String)> = self
            .service_env
            .iter()
            .chain(&self.replica_env)
            .cloned()
            .collect();
        let name = match &only {
            Some(region) => {
                env.push(("REG_REGION".to_owned(), region.clone()));
                format!("reservation-{}-{region}", self.started_replicas)
            }
            None => format!("reservation-{}", self.started_replicas),
        };
        let process = spawn_with_env(
            &self.exe,
            &self.nats_url,
            &self.log_dir,
            &name,
            "processors",
            &env,
        )?;
        self.replicas.push(Replica { process, only });
        Ok(())
    }

    /// SIGKILLs one reservation replica (an active one three times out of four, so
    /// takeovers are exercised, not only standbys dying) and starts a fresh one in its place,
    /// for the same regions.
    pub async fn kill_a_replica(&mut self, rng: &mut impl rand::Rng) -> anyhow::Result<Victim> {
        let mut active = Vec::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            if self.is_active(&replica.process).await {
                active.push(i);
            }
        }
        let index = match active.len() {
            n if n > 0 && rng.random_bool(0.75) => active[rng.random_range(0..n)],
            _ => rng.random_range(0..self.replicas.len()),
        };
        let Replica { mut process, only } = self.replicas.swap_remove(index);
        process
            .child
            .kill()
            .with_context(|| format!("Failed to kill {}", process.name))?;
        let _ = process.child.wait();
        self.start_replica(only)?;
        Ok(Victim {
            was_active: active.contains(&index),
        })
    }

    /// Whether the replica holds at least one region's lease (decides for it).
    async fn is_active(&self, replica: &Process) -> bool {
        let Ok(response) = self
            .http
            .get(format!("{}/metrics", replica.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            return false;
        };
        let Ok(body) = response.body().limit(1 << 20).await else {
            return false;
        };
        String::from_utf8_lossy(&body).lines().any(|line| {
            line.strip_prefix("reservation_active ")
                .and_then(|regions| regions.trim().parse::<u32>().ok())
                .is_some_and(|regions| regions > 0)
        })
    }

    /// Checks that no service died on its own (a crash is a finding, not noise).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let replicas = self.replicas.iter_mut().map(|r| &mut r.process);
        for process in [&mut self.ingest, &mut self.projections]
            .into_iter()
            .chain(replicas)
        {
            if let Some(status) = process.child.try_wait()? {
                anyhow::bail!(
                    "{} exited on its own ({status}); see {}",
                    process.name,
                    self.log_dir.display()
                );
            }
        }
        Ok(())
    }

    /// Stops every process.
    pub async fn stop(mut self) {
        let replicas = self.replicas.iter_mut().map(|r| &mut r.process);
        for process in [&mut self.ingest, &mut self.projections]
            .into_iter()
            .chain(replicas)
        {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
    }
}

/// A service's counters and gauges from its `/metrics` page, by name (labels included);
/// empty if it does not answer.
pub async fn scrape(http: &ntex::client::Client, base: &str) -> HashMap<String, u64> {
    let Ok(response) = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    else {
        return HashMap::new();
    };
    let Ok(body) = response.body().limit(1 << 22).await else {
        return HashMap::new();
    };
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// A free loopback port (bound, read and released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("Failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The command that starts `exe` as the process called `name`: `exe` itself, or `exe` under
/// the profiler `REG_HARNESS_WRAP` names for it (`<name>:<command and arguments>`, e.g.
/// `ingest:heaptrack -o /tmp/edge` or `projections:perf record -g -o /tmp/p.data --`), for
/// tracing what one service of a benchmark or chaos run spends. The process watched is then
/// the wrapper.
fn wrapped(name: &str, exe: &Path) -> Command {
    let wrap = std::env::var("REG_HARNESS_WRAP").unwrap_or_default();
    match wrap.split_once(':') {
        Some((target, command)) if target == name && !command.trim().is_empty() => {
            let mut words = command.split_whitespace();
            let mut wrapper = Command::new(words.next().unwrap_or_default());
            wrapper.args(words).arg(exe);
            wrapper
        }
        _ => Command::new(exe),
    }
}

/// Starts `<this binary> serve <service>` (see [`crate::serve`]) with the environment a
/// deployment would give it, logging to `<log_dir>/<name>.log`.
pub fn spawn(
    exe: &Path,
    nats_url: &str,
    log_dir: &Path,
    name: &str,
    service: &str,
) -> anyhow::Result<Process> {
    spawn_with_env(exe, nats_url, log_dir, name, service, &[])
}

/// As [`spawn`], with `env` added after (and over) the deployment's environment.
pub fn spawn_with_env(
    exe: &Path,
    nats_url: &str,
    log_dir: &Path,
    name: &str,
    service: &str,
    env: &[(String, String)],
) -> anyhow::Result<Process> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join(format!("{name}.log")))
        .with_context(|| format!("Failed to open the log of {name}"))?;
    let mut child = wrapped(name, exe)
        .args(["serve", service, listen_flag(service), &listen])
        .env("REG_NATS_URL", nats_url)
        .env("REG_ADMIN_TOKEN", ADMIN_TOKEN)
        // The harness's throwaway secret is the development one.
        .env("REG_DEV_MODE", "1")
        // One load generator address, citizens who retry through outages, and a generator
        // that decides itself how many requests are open: the limits would measure the
        // throttle, not the pipeline.
        .env("REG_RATE_PER_ADDRESS", "0")
        .env("REG_RATE_PER_CITIZEN", "0")
        // Admission off unless the one running the benchmark asks for a bound.
        .env(
            "REG_MAX_OPEN_SUBMISSIONS",
            std::env::var("REG_MAX_OPEN_SUBMISSIONS").unwrap_or("0".into()),
        )
        .env("REG_SURREAL_ENDPOINT", "mem://")
        .env("REG_APPEND_TIMEOUT_MS", "2000")
        // The checker's model predicts each first decision as reserved or rejected: no
        // waiting list here (the property tests and the pipeline tests cover it).
        .env("REG_WAITLIST_PER_SLOT", "0")
        // Nor verification: registrations end at their first decision (reserved or rejected).
        .env("REG_VERIFICATION", "false")
        // Nor notifications: the harness starts no mail or webhook receivers.
        .env("REG_NOTIFICATIONS", "false")
        // Snapshots every few hundred decisions, so the replicas killed and started here
        // take over from snapshots too, under the same checks.
        .env(
            "REG_SNAPSHOT_EVERY",
            std::env::var("REG_SNAPSHOT_EVERY").unwrap_or("200".into()),
        )
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        // Panics keep their backtraces (RUST_BACKTRACE), but ordinary errors do not capture
        // one each: SurrealDB builds anyhow errors on routine paths, and with RUST_BACKTRACE=1
        // inherited from a developer's shell each would walk the stack.
        .env("RUST_LIB_BACKTRACE", "0")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("Failed to start {name}"))?;
    let lifeline = child.stdin.take().context("the child's stdin is piped")?;
    Ok(Process {
        name: name.to_owned(),
        child,
        _lifeline: lifeline,
        base: format!("http://{listen}"),
    })
}

/// The flag that gives `service` its address: each service binds its own of the system's
/// addresses (`streams::settings::Addresses`).
fn listen_flag(service: &str) -> &'static str {
    match service {
        "ingest" => "--ingest-listen",
        "processors" => "--processor-listen",
        "projections" => "--read-listen",
        _ => "--listen",
    }
}

/// Waits until the process answers `200` on `/readyz`; fails if it exits first.
pub async fn wait_ready(http: &ntex::client::Client, process: &mut Process) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let url = format!("{}/readyz", process.base);
    loop {
        if let Ok(response) = http.get(&url).timeout(Duration::from_secs(2)).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        if let Some(status) = process.child.try_wait()? {
            anyhow::bail!("{} exited while starting ({status})", process.name);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not become ready",
            process.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
