//! The chaos run: the whole pipeline as separate processes on a real nats-server, a paced
//! load of citizens through the HTTP edge, reservation replicas SIGKILLed and restarted while
//! it flows, nats-server itself killed and restarted, then every invariant checked from the
//! event log and from the projection.
//!
//! | module | role |
//! | --- | --- |
//! | [`services`] | child processes: the edge, the projections, the reservation replicas |
//! | [`load`] | citizens: submit (retrying through outages), some cancel once reserved |
//! | [`check`] | the verdict: the logs against a simple model, and the projection against the logs |

pub mod check;
pub mod load;
pub mod services;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use streams::model::{Location, Region, SlotKey};

/// What one chaos run does. The defaults are the size; CI runs a small one.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Citizens submitting (each once, some twice, some cancelling).
    #[arg(long, default_value_t = 20_000)]
    pub submissions: u32,
    /// Slots in the pool, spread over hot and cold locations.
    #[arg(long, default_value_t = 1_000)]
    pub slots: u32,
    /// How long the load is spread over (the chaos happens inside it).
    #[arg(long, default_value = "40s", value_parser = humantime_secs)]
    pub duration: Duration,
    /// SIGKILLs of reservation replicas (each restarted at once).
    #[arg(long, default_value_t = 24)]
    pub kills: u32,
    /// nats-server kills and restarts.
    #[arg(long, default_value_t = 3)]
    pub nats_restarts: u32,
    /// Processor replicas serving every region (`REG_REGION=*`) running at once.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Processor replicas serving the first region only (`REG_REGION=mazowieckie`), beside
    /// the others: what the README tells an operator to do where the rush is.
    #[arg(long, default_value_t = 1)]
    pub region_replicas: u32,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seed of every random choice (locations, duplicates, cancellations, victims).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the service binaries' logs go (a temporary directory when unset).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Share of deliveries the local mail and webhook receivers refuse (temporarily), so
    /// retries are exercised while replicas are killed.
    #[arg(long, default_value_t = 0.2)]
    pub mail_fail_rate: f64,
}

pub(crate) fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (number, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    number
        .parse::<f64>()
        .map(|n| Duration::from_secs_f64(n * scale))
        .map_err(|_| format!("not a duration: {s} (try 40s or 500ms)"))
}

/// The first region: one hot location and every other cold one; the one-region replicas
/// serve it. The benchmarks put their slots here.
pub fn region() -> Region {
    Region::parse("mazowieckie").expect("a valid region")
}

/// The second region: the other hot location and the remaining cold ones, served only by
/// the replicas that serve every region.
pub fn other_region() -> Region {
    Region::parse("malopolskie").expect("a valid region")
}

/// The slot pool over two regions: two hot locations holding 30 % of the slots each (one per
/// region), and cold ones sharing the rest at 20 slots apiece (at least one), alternating
/// between the regions. Returns (slot, capacity, is_hot).
pub fn pool(slots: u32) -> Vec<(SlotKey, u32, bool)> {
    // Ahead of today wherever the region is: a slot whose day is over takes no registration.
    let date = streams::calendar::Calendar::default().days_ahead(&region(), 60);
    let slot = |region: Region, location: String| SlotKey {
        region,
        location: Location::parse(&location).expect("a valid location"),
        date,
    };
    let hot = slots * 3 / 10;
    let mut pool = vec![
        (slot(region(), "hot-narodowy".into()), hot, true),
        (slot(other_region(), "hot-tauron".into()), hot, true),
    ];
    let mut left = slots - 2 * hot;
    let mut n = 0;
    while left > 0 {
        let capacity = left.min(20);
        let region = if n % 2 == 0 { region() } else { other_region() };
        pool.push((slot(region, format!("cold-{n:03}")), capacity, false));
        left -= capacity;
        n += 1;
    }
    pool
}

/// The directory a run's service logs go to: `given`, or a new one kept after the run (its
/// path printed, prefixed with the run's `name`).
pub fn log_dir(given: Option<&std::path::Path>, name: &str) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => tempfile::Builder::new()
            .prefix(&format!("{name}-logs-"))
            .tempdir()
            .context("Failed to create a log directory")?
            .keep(),
    };
    std::fs::create_dir_all(&dir).context("Failed to create the log directory")?;
    println!("{name}: logs in {}", dir.display());
    Ok(dir)
}

/// Runs the whole chaos scenario and returns the verdict (its `violations` decide the exit
/// code).
pub async fn run(options: Options) -> anyhow::Result<check::Verdict> {
    let started = Instant::now();
    let log_dir = log_dir(options.log_dir.as_deref(), "chaos")?;

    let mut nats = testkit::NatsServer::start();
    // The citizens' mail and text messages go to local receivers that refuse a share of the
    // deliveries.
    let receivers = receivers::Receivers::new(
        log_dir.join("receivers"),
        receivers::Knobs {
            smtp_fail_rate: options.mail_fail_rate,
            webhook_fail_rate: options.mail_fail_rate,
        },
        processors::notification::DEVELOPMENT_WEBHOOK_SECRET.into(),
    )?;
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let notify_env = vec![
        ("REG_NOTIFICATIONS".to_owned(), "true".to_owned()),
        (
            "REG_SMTP_ADDRESS".to_owned(),
            smtp.local_addr()?.to_string(),
        ),
        (
            "REG_WEBHOOK_URL".to_owned(),
            format!("http://{}/webhook", http.local_addr()?),
        ),
        // Retried through the whole run rather than dead-lettered: the check counts messages.
        ("REG_NOTIFY_MAX_ATTEMPTS".to_owned(), "1000".to_owned()),
    ];
    let receivers_stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(receivers.clone().serve(smtp, http, receivers_stop.clone()));
    let mut system = services::System::start_with(
        &nats.url(),
        &log_dir,
        options.replicas,
        notify_env,
        (options.region_replicas, region().as_str()),
    )
    .await?;
    println!(
        "chaos: edge {} (metrics at /metrics), read API {}",
        system.ingest_url(),
        system.read_url()
    );
    let mut pool = pool(options.slots);
    let client = load::Client::new(&system, options.concurrency).await;
    for (slot, capacity, _) in &pool {
        client.set_capacity(slot, *capacity).await?;
    }
    println!(
        "chaos: {} slots over {} locations in 2 regions; {} citizens over {:?}; {} kills, {} nats restarts, {} replicas for every region + {} for {} only",
        options.slots,
        pool.len(),
        options.submissions,
        options.duration,
        options.kills,
        options.nats_restarts,
        options.replicas,
        options.region_replicas,
        region(),
    );

    // The load and the chaos run side by side; the chaos is spread over the load's duration.
    let load = ntex::rt::spawn(load::run(client.clone(), options.clone(), pool.clone()));
    let mut chaos = Chaos::default();
    let events = schedule(&options);
    let t0 = Instant::now();
    let mut rng = load::rng(options.seed ^ 0xC4A05);
    for (at, what) in events {
        // Disruptions follow the load's progress, not the clock, so they stay inside it
        // however slowly the system under chaos accepts citizens.
        let due = (at * f64::from(options.submissions)) as u64;
        while client.dispatched() < due {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match what {
            Disruption::KillReplica => {
                let victim = system.kill_a_replica(&mut rng).await?;
                chaos.kills += 1;
                chaos.killed_active += u32::from(victim.was_active);
            }
            Disruption::ChangeCapacities => {
                // Raising grants the next submissions; lowering revokes nothing and grants
                // nothing until reservations drop below it. The checks replay both.
                let changes = [
                    pool.iter().position(|(_, _, hot)| !hot),
                    pool.iter().position(|(_, _, hot)| *hot),
                ];
                for (index, raise) in changes.into_iter().zip([true, false]) {
                    let Some(index) = index else { continue };
                    let (slot, capacity, _) = &mut pool[index];
                    *capacity = if raise {
                        *capacity + 5
                    } else {
                        *capacity * 9 / 10
                    };
                    client.set_capacity(slot, *capacity).await?;
                }
            }
            Disruption::RestartNats => {
                nats = tokio::task::spawn_blocking(move || {
                    nats.restart();
                    nats
                })
                .await
                .context("The nats-server restart panicked")?;
                chaos.nats_restarts += 1;
            }
        }
        println!(
            "chaos: {:>5.1}s {:?} (kills {}, nats restarts {}), {}",
            t0.elapsed().as_secs_f64(),
            what,
            chaos.kills,
            chaos.nats_restarts,
            client.progress()
        );
    }
    let mut verdict = finish_and_check(
        "chaos",
        t0,
        load,
        &mut system,
        (&nats.url(), &client, &pool),
        &chaos,
        &options,
    )
    .await;
    if let Ok(verdict) = &mut verdict {
        check::check_notifications(verdict, &nats, &receivers).await?;
    }
    receivers_stop.cancel();
    system.stop().await;
    drop(nats);
    let verdict = verdict?;
    println!("chaos: finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(verdict)
}

/// The end of a run, shared by the chaos and failover runs: waits for the load generator and
/// says how it ended (as `tool`, `t0` its start), then lets the checker settle and check the
/// logs and the projection through `nats_url`; a service that crashed meanwhile is one more
/// violation. The error is the run's (the load failed); the inner result is the checker's.
pub async fn finish_and_check<E>(
    tool: &str,
    t0: Instant,
    load: impl std::future::Future<Output = Result<anyhow::Result<load::Outcome>, E>>,
    system: &mut services::System,
    (nats_url, client, pool): (&str, &load::Client, &[(SlotKey, u32, bool)]),
    chaos: &Chaos,
    options: &Options,
) -> anyhow::Result<check::Verdict> {
    let outcome = load
        .await
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    println!(
        "{tool}: load done after {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        client.progress()
    );
    let crashed = system.check_alive();
    let mut verdict =
        check::settle_and_check(nats_url, client, pool, &outcome, chaos, options).await?;
    if let Err(crash) = crashed {
        verdict
            .violations
            .push(format!("a service crashed: {crash:#}"));
    }
    Ok(verdict)
}

/// What the chaos did, for the report.
#[derive(Debug, Default, Clone)]
pub struct Chaos {
    /// Replica SIGKILLs.
    pub kills: u32,
    /// Of which the victim was the active replica (the lease holder).
    pub killed_active: u32,
    /// nats-server kills and restarts.
    pub nats_restarts: u32,
}

#[derive(Debug, Clone, Copy)]
enum Disruption {
    KillReplica,
    RestartNats,
    /// An operator raises a cold slot's capacity and lowers a hot one's below what it holds.
    ChangeCapacities,
}

/// Kills and restarts evenly spread over the middle of the load (from 5 % to 90 % of the
/// citizens), the nats restarts placed between kills. Each event is due at a fraction of the
/// citizens dispatched.
fn schedule(options: &Options) -> Vec<(f64, Disruption)> {
    let (start, span) = (0.05, 0.85);
    let mut events: Vec<(f64, Disruption)> = (0..options.kills)
        .map(|i| {
            let at = start + span * f64::from(i) / f64::from(options.kills.max(1));
            (at, Disruption::KillReplica)
        })
        .chain([(0.5, Disruption::ChangeCapacities)])
        .chain((0..options.nats_restarts).map(|i| {
            let at = start + span * (f64::from(i) + 0.5) / f64::from(options.nats_restarts.max(1));
            (at, Disruption::RestartNats)
        }))
        .collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_exactly_the_slots_asked_for_with_two_hot_locations() {
        for slots in [10, 100, 1_000, 1_001] {
            let pool = pool(slots);
            assert_eq!(pool.iter().map(|(_, c, _)| c).sum::<u32>(), slots);
            assert_eq!(pool.iter().filter(|(_, _, hot)| *hot).count(), 2);
            for region in [region(), other_region()] {
                assert!(pool.iter().any(|(s, _, hot)| *hot && s.region == region));
            }
            assert!(pool.iter().all(|(_, c, _)| *c > 0));
        }
    }

    #[test]
    fn the_schedule_has_every_disruption_inside_the_load() {
        let options = Options {
            submissions: 10,
            slots: 10,
            duration: Duration::from_secs(10),
            kills: 20,
            nats_restarts: 3,
            replicas: 3,
            region_replicas: 1,
            concurrency: 1,
            seed: 1,
            log_dir: None,
            mail_fail_rate: 0.0,
        };
        let events = schedule(&options);
        assert_eq!(events.len(), 24);
        assert!(events.iter().all(|(at, _)| (0.0..1.0).contains(at)));
        assert!(events.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
