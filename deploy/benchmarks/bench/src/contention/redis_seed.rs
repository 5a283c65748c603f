//! The seed's design: one optimistic Redis transaction per submission.
//!
//! ```text
//! WATCH slot:<k>:reserved
//! MGET slot:<k>:reserved slot:<k>:capacity
//! if reserved < capacity:
//!     MULTI; INCR slot:<k>:reserved; RPUSH slot:<k>:holders <id>; HSET reg:<id> status reserved slot <k>; EXEC
//!     (a nil EXEC: someone else changed the counter; count the abort and start again)
//! else:
//!     UNWATCH; MULTI; HSET reg:<id> status rejected slot <k>; EXEC
//! ```
//!
//! `concurrency` workers, each with its own connection (WATCH is per connection), take the
//! contenders in arrival order. Redis runs with AOF and `appendfsync always`, so every EXEC is
//! durable before it answers, as every JetStream acknowledgement is.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::report::Percentiles;
use super::workload::Workload;
use super::{DEADLINE, Measured, Options};

/// A `redis-server` on a free port with a temporary directory, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start(log_dir: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("Failed to create Redis's directory")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(log_dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("Failed to start redis-server (install it: apt-get install redis-server)")?;
        Ok(RedisServer {
            child,
            port,
            _dir: dir,
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a contender's transaction ended.
enum Decision {
    Reserved,
    Rejected,
}

async fn decide(
    con: &mut redis::aio::MultiplexedConnection,
    slot: &str,
    id: &str,
    aborted: &Cell<u64>,
    execs: &Cell<u64>,
) -> redis::RedisResult<Decision> {
    let reserved_key = format!("slot:{slot}:reserved");
    let capacity_key = format!("slot:{slot}:capacity");
    let holders_key = format!("slot:{slot}:holders");
    let reg_key = format!("reg:{id}");
    loop {
        redis::cmd("WATCH")
            .arg(&reserved_key)
            .query_async::<()>(con)
            .await?;
        let (reserved, capacity): (Option<u32>, Option<u32>) = redis::cmd("MGET")
            .arg(&reserved_key)
            .arg(&capacity_key)
            .query_async(con)
            .await?;
        if reserved.unwrap_or(0) < capacity.unwrap_or(0) {
            execs.set(execs.get() + 1);
            let committed: Option<()> = redis::pipe()
                .atomic()
                .incr(&reserved_key, 1)
                .ignore()
                .rpush(&holders_key, id)
                .ignore()
                .hset_multiple(&reg_key, &[("status", "reserved"), ("slot", slot)])
                .ignore()
                .query_async(con)
                .await?;
            match committed {
                Some(()) => return Ok(Decision::Reserved),
                None => aborted.set(aborted.get() + 1),
            }
        } else {
            redis::cmd("UNWATCH").query_async::<()>(con).await?;
            execs.set(execs.get() + 1);
            redis::pipe()
                .atomic()
                .hset_multiple(&reg_key, &[("status", "rejected"), ("slot", slot)])
                .ignore()
                .query_async::<()>(con)
                .await?;
            return Ok(Decision::Rejected);
        }
    }
}

/// Runs `workload` against a fresh `redis-server`.
pub async fn measure(
    workload: &Workload,
    options: &Options,
    log_dir: &Path,
) -> anyhow::Result<Measured> {
    let server = RedisServer::start(log_dir)?;
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
        .context("Failed to describe the Redis connection")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut admin = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(con) => break con,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err).context("redis-server did not answer"),
        }
    };
    let names: Vec<String> = workload
        .slots
        .iter()
        .map(|(slot, _)| format!("{}.{}.{}", slot.region, slot.location, slot.date))
        .collect();
    for ((_, capacity), name) in workload.slots.iter().zip(&names) {
        redis::cmd("SET")
            .arg(format!("slot:{name}:capacity"))
            .arg(*capacity)
            .query_async::<()>(&mut admin)
            .await?;
    }

    let queue: Rc<RefCell<VecDeque<usize>>> =
        Rc::new(RefCell::new((0..workload.contenders.len()).collect()));
    let aborted = Rc::new(Cell::new(0u64));
    let execs = Rc::new(Cell::new(0u64));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(workload.contenders.len())));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .context("Failed to open a worker connection")?;
        let (queue, aborted, execs, latencies) = (
            queue.clone(),
            aborted.clone(),
            execs.clone(),
            latencies.clone(),
        );
        let (names, contenders) = (names.clone(), workload.contenders.clone());
        workers.push(ntex::rt::spawn(async move {
            loop {
                let Some(i) = queue.borrow_mut().pop_front() else {
                    return Ok::<(), redis::RedisError>(());
                };
                let handed = Instant::now();
                let id = format!("contender-{i}");
                decide(&mut con, &names[contenders[i]], &id, &aborted, &execs).await?;
                latencies.borrow_mut().push(handed.elapsed());
            }
        }));
    }
    for worker in workers {
        tokio::time::timeout(DEADLINE, worker)
            .await
            .context("Redis workers took too long")?
            .map_err(|_| anyhow::anyhow!("a Redis worker panicked"))?
            .context("A Redis transaction failed")?;
    }
    let seconds = start.elapsed().as_secs_f64();

    // Correctness, from Redis itself: holders never above capacity. Who won is luck, so
    // "out of order" counts winners that were not among the slot's earliest arrivals.
    let (mut reserved, mut overbooked, mut out_of_order) = (0u64, 0u64, 0u64);
    for (slot, ((_, capacity), name)) in workload.slots.iter().zip(&names).enumerate() {
        let holders: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("slot:{name}:holders"))
            .arg(0)
            .arg(-1)
            .query_async(&mut admin)
            .await?;
        reserved += holders.len() as u64;
        overbooked += (holders.len() as u64).saturating_sub(u64::from(*capacity));
        let earliest: std::collections::HashSet<String> = workload
            .contenders
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == slot)
            .take(holders.len())
            .map(|(i, _)| format!("contender-{i}"))
            .collect();
        out_of_order += holders.iter().filter(|h| !earliest.contains(*h)).count() as u64;
    }
    let latencies = latencies.take();
    Ok(Measured {
        design: "redis",
        workload: workload.name,
        contenders: workload.contenders.len() as u32,
        capacity: workload.capacity(),
        seconds,
        decisions_per_second: workload.contenders.len() as f64 / seconds,
        latency_ms: Percentiles::of(latencies),
        aborted: aborted.get(),
        // An aborted EXEC writes nothing.
        durable_writes: execs.get() - aborted.get(),
        reserved,
        overbooked,
        out_of_order_winners: out_of_order,
    })
}
