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
use super::{DEADLINE, Grants, Measured, Options};

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
    let mut admin = first_connection(&client).await?;
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

    let counts = Counts::default();
    let start = Instant::now();
    run_workers(&client, workload, &names, options.concurrency, &counts).await?;
    let seconds = start.elapsed().as_secs_f64();

    let grants = count_holders(&mut admin, workload, &names).await?;
    let Counts {
        aborted,
        execs,
        latencies,
    } = counts;
    Ok(Measured {
        design: "redis",
        workload: workload.name,
        contenders: workload.contenders.len() as u32,
        capacity: workload.capacity(),
        seconds,
        decisions_per_second: workload.contenders.len() as f64 / seconds,
        latency_ms: Percentiles::of(latencies.take()),
        aborted: aborted.get(),
        // An aborted EXEC writes nothing.
        durable_writes: execs.get() - aborted.get(),
        reserved: grants.reserved,
        overbooked: grants.overbooked,
        out_of_order_winners: grants.out_of_order_winners,
    })
}

/// The first connection to a just started `redis-server`: tried until it answers, for 30 s
/// at the most.
async fn first_connection(
    client: &redis::Client,
) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_multiplexed_async_connection().await {
            Ok(con) => return Ok(con),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err).context("redis-server did not answer"),
        }
    }
}

/// What the workers count: transactions aborted, EXECs sent, and each contender's latency
/// from being taken off the queue to its transaction's end.
#[derive(Default)]
struct Counts {
    aborted: Rc<Cell<u64>>,
    execs: Rc<Cell<u64>>,
    latencies: Rc<RefCell<Vec<Duration>>>,
}

/// `concurrency` workers, each on its own connection, taking the contenders in arrival order
/// until none is left.
async fn run_workers(
    client: &redis::Client,
    workload: &Workload,
    names: &[String],
    concurrency: usize,
    counts: &Counts,
) -> anyhow::Result<()> {
    let queue: Rc<RefCell<VecDeque<usize>>> =
        Rc::new(RefCell::new((0..workload.contenders.len()).collect()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .context("Failed to open a worker connection")?;
        let (queue, aborted, execs, latencies) = (
            queue.clone(),
            counts.aborted.clone(),
            counts.execs.clone(),
            counts.latencies.clone(),
        );
        let (names, contenders) = (names.to_vec(), workload.contenders.clone());
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
    Ok(())
}

/// Correctness, from Redis itself: places granted, beyond capacity (holders never above it),
/// and to contenders not among their slot's earliest arrivals (who wins is luck here).
async fn count_holders(
    admin: &mut redis::aio::MultiplexedConnection,
    workload: &Workload,
    names: &[String],
) -> anyhow::Result<Grants> {
    let (mut reserved, mut overbooked, mut out_of_order) = (0u64, 0u64, 0u64);
    for (slot, ((_, capacity), name)) in workload.slots.iter().zip(names).enumerate() {
        let holders: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("slot:{name}:holders"))
            .arg(0)
            .arg(-1)
            .query_async(admin)
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
    Ok(Grants {
        reserved,
        overbooked,
        out_of_order_winners: out_of_order,
    })
}
