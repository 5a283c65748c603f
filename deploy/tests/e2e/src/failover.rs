//! The failover run: the whole system on a three-node JetStream cluster (R3 streams), a
//! paced load of citizens through the HTTP edge, and in each round the node that leads the
//! intake stream SIGKILLed, left down while the load goes on, then brought back; afterwards
//! the chaos run's checks of the log and the projection ([`crate::chaos::check`]), and one
//! more: every `503` of the edge is set beside the times the intake stream had no leader,
//! and those that fell while it had one are counted and printed (a finding, see
//! docs/cluster.md, not yet a violation).
//!
//! While it runs, a watcher asks every node, every [`POLL_EVERY`], for the intake stream's
//! info (`$JS.API.STREAM.INFO`, whose answer names the `cluster.leader`), each over its own
//! connection to that node alone. A poll in which no node names a leader is a moment without
//! quorum for the stream (a dead node never answers, so only the survivors count), and so is
//! the time between two polls that name different leaders (a hand-over, e.g. when a node
//! rejoins, can be shorter than a poll); the windows without a leader, and the longest, come
//! from those polls. A `503` is explained
//! when its request was open during such a window (widened by one poll and one poll
//! timeout, the watcher's own resolution).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use streams::subjects;

use crate::chaos::{self, check, load, services};

/// How often the watcher asks every node for the intake stream's leader.
pub const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long one poll waits for a node's answer.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);

/// What one failover run does. CI runs a small one (`deploy/tests/e2e/tests/chaos.rs`).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Citizens submitting (each once, some twice, some cancelling).
    #[arg(long, default_value_t = 6_000)]
    pub submissions: u32,
    /// Slots in the pool, spread over hot and cold locations.
    #[arg(long, default_value_t = 600)]
    pub slots: u32,
    /// How long the load is spread over (the rounds happen inside it).
    #[arg(long, default_value = "60s", value_parser = chaos::humantime_secs)]
    pub duration: Duration,
    /// Rounds: each SIGKILLs the node leading the intake stream and later restarts it.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Reservation replicas running at once.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seed of every random choice (locations, duplicates, cancellations).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the services' logs go (a temporary directory when unset).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
}

/// One poll of every node: when it was sent, and the leader a node named (if any did).
#[derive(Debug, Clone)]
struct Poll {
    at: Instant,
    leader: Option<String>,
}

/// A stretch of polls in which no node named a leader of the intake stream.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// The first poll without a leader.
    pub from: Instant,
    /// The next poll with one (or the last poll, if none came after).
    pub to: Instant,
}

impl Gap {
    /// How long the stream was without a leader, to within one poll.
    pub fn length(&self) -> Duration {
        self.to - self.from
    }

    /// Whether a request open from `sent` to `answered` overlapped this gap, give or take
    /// the watcher's resolution.
    fn overlaps(&self, sent: Instant, answered: Instant) -> bool {
        sent <= self.to + POLL_TIMEOUT && answered + POLL_EVERY >= self.from
    }
}

/// The leaderless stretches among `polls`: runs of polls in which no node named a leader,
/// and every change of leader between two polls (the old one stepped down, the new one was
/// elected, somewhere between them: a node that rejoins can cause a hand-over shorter than
/// one poll).
fn gaps(mut polls: Vec<Poll>) -> Vec<Gap> {
    polls.sort_by_key(|p| p.at);
    let mut gaps = Vec::new();
    let mut open: Option<Instant> = None;
    let mut last: Option<(Instant, &str)> = None;
    for poll in &polls {
        match (&poll.leader, open) {
            (None, None) => open = Some(poll.at),
            (Some(_), Some(from)) => {
                gaps.push(Gap { from, to: poll.at });
                open = None;
            }
            (Some(leader), None) => {
                if let Some((at, previous)) = last
                    && previous != leader
                {
                    gaps.push(Gap {
                        from: at,
                        to: poll.at,
                    });
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(leader) = &poll.leader {
            last = Some((poll.at, leader));
        }
    }
    if let (Some(from), Some(last)) = (open, polls.last()) {
        gaps.push(Gap { from, to: last.at });
    }
    gaps
}

/// Asks every node for the intake stream's leader every [`POLL_EVERY`] until stopped.
struct Watcher {
    polls: Rc<RefCell<Vec<Poll>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Watcher {
    fn start(nodes: Vec<async_nats::Client>) -> Self {
        let polls: Rc<RefCell<Vec<Poll>>> = Rc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let contexts: Rc<Vec<jetstream::Context>> = Rc::new(
            nodes
                .into_iter()
                .map(|client| {
                    let mut js = jetstream::new(client);
                    js.set_timeout(POLL_TIMEOUT);
                    js
                })
                .collect(),
        );
        let (record, stopped) = (polls.clone(), stop.clone());
        ntex::rt::spawn(async move {
            let mut ticker = tokio::time::interval(POLL_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                // Each poll on its own: a node that does not answer must not delay the next.
                let (contexts, record) = (contexts.clone(), record.clone());
                ntex::rt::spawn(async move {
                    let at = Instant::now();
                    let asks = contexts.iter().map(|js| async move {
                        let ask = js.get_stream(subjects::INTAKE_STREAM);
                        let stream = tokio::time::timeout(POLL_TIMEOUT, ask).await.ok()?.ok()?;
                        stream.cached_info().cluster.as_ref()?.leader.clone()
                    });
                    let leader = futures::future::join_all(asks)
                        .await
                        .into_iter()
                        .flatten()
                        .next();
                    record.borrow_mut().push(Poll { at, leader });
                });
            }
        });
        Watcher { polls, stop }
    }

    /// Stops polling and hands back every poll so far.
    fn finish(self) -> Vec<Poll> {
        self.stop.cancel();
        self.polls.borrow().clone()
    }
}

/// The leaders of the intake and decisions streams, asked of the cluster (any node).
async fn leaders(js: &jetstream::Context) -> Option<(String, String)> {
    let leader = async |name: &str| {
        let stream = js.get_stream(name).await.ok()?;
        stream.cached_info().cluster.as_ref()?.leader.clone()
    };
    Some((
        leader(subjects::INTAKE_STREAM).await?,
        leader(subjects::DECISIONS_STREAM).await?,
    ))
}

/// When, as fractions of the citizens dispatched, round `round` of `rounds` kills the
/// intake leader and restarts it: the kills spread over the middle of the load, each node
/// down for a while with the load going on (on two nodes, once a new leader is elected).
fn schedule(round: u32, rounds: u32) -> (f64, f64) {
    let share = 0.7 / f64::from(rounds.max(1));
    let kill = 0.15 + share * f64::from(round);
    (kill, kill + share * 0.5)
}

/// Runs the failover scenario and returns the verdict (its `violations` decide the exit
/// code).
pub async fn run(options: Options) -> anyhow::Result<check::Verdict> {
    let started = Instant::now();
    let log_dir = crate::chaos::log_dir(options.log_dir.as_deref(), "failover")?;

    let mut cluster = tokio::task::spawn_blocking(|| testkit::NatsCluster::start(3))
        .await
        .context("Starting the cluster panicked")?;
    let url = cluster.url();
    println!("failover: three-node cluster at {url}");
    let service_env = vec![("REG_REPLICAS".to_owned(), "3".to_owned())];
    let mut system = services::System::start_configured(
        &url,
        &log_dir,
        options.replicas,
        service_env,
        vec![],
        (0, ""),
    )
    .await?;
    let pool = chaos::pool(options.slots);
    let client = load::Client::new(&system, options.concurrency).await;
    for (slot, capacity, _) in &pool {
        client.set_capacity(slot, *capacity).await?;
    }
    let mut nodes = Vec::new();
    for i in 0..cluster.len() {
        nodes.push(cluster.connect_node(i).await);
    }
    let watcher = Watcher::start(nodes);
    let js = jetstream::new(cluster.connect().await);
    println!(
        "failover: {} citizens over {:?}, {} slots, {} rounds, {} reservation replicas",
        options.submissions, options.duration, options.slots, options.rounds, options.replicas
    );

    // The chaos run's load and checks, with no replica kills: here nats-server nodes die.
    let load_options = chaos::Options {
        submissions: options.submissions,
        slots: options.slots,
        duration: options.duration,
        kills: 0,
        nats_restarts: options.rounds,
        replicas: options.replicas,
        region_replicas: 0,
        concurrency: options.concurrency,
        seed: options.seed,
        log_dir: None,
        mail_fail_rate: 0.0,
    };
    let load = ntex::rt::spawn(load::run(
        client.clone(),
        load_options.clone(),
        pool.clone(),
    ));
    let t0 = Instant::now();
    let due = |fraction: f64| (fraction * f64::from(options.submissions)) as u64;
    let mut done = chaos::Chaos::default();
    let mut leader_kills = 0u32;
    for round in 0..options.rounds {
        let (kill_at, restart_at) = schedule(round, options.rounds);
        while client.dispatched() < due(kill_at) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (intake, decisions) = testkit::eventually(
            "the intake and decisions streams to have leaders",
            Duration::from_secs(60),
            async || leaders(&js).await,
        )
        .await;
        let victim = cluster
            .node_index(&intake)
            .with_context(|| format!("no node is named {intake}"))?;
        cluster.kill(victim);
        leader_kills += 1;
        println!(
            "failover: {:>5.1}s round {}: SIGKILLed {intake}, the intake leader (decisions led by {decisions}); {}",
            t0.elapsed().as_secs_f64(),
            round + 1,
            client.progress()
        );
        while client.dispatched() < due(restart_at) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restarting = Instant::now();
        cluster = tokio::task::spawn_blocking(move || {
            cluster.restart(victim);
            cluster
        })
        .await
        .context("Restarting a node panicked")?;
        done.nats_restarts += 1;
        println!(
            "failover: {:>5.1}s round {}: {intake} back and healthy after {:.1}s; {}",
            t0.elapsed().as_secs_f64(),
            round + 1,
            restarting.elapsed().as_secs_f64(),
            client.progress()
        );
    }
    let verdict = chaos::finish_and_check(
        "failover",
        t0,
        load,
        &mut system,
        (&url, &client, &pool),
        &done,
        &load_options,
    )
    .await;
    // The leader polls went on through the settling, when no node was killed.
    let polls = watcher.finish();
    let verdict = verdict.map(|mut verdict| {
        check_quorum(&mut verdict, leader_kills, polls, &client);
        verdict
    });
    system.stop().await;
    drop(cluster);
    let verdict = verdict?;
    println!(
        "failover: finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(verdict)
}

/// The edge refused (503) only while the intake stream had no leader; counts of both.
fn check_quorum(
    verdict: &mut check::Verdict,
    leader_kills: u32,
    polls: Vec<Poll>,
    client: &load::Client,
) {
    let polled = polls.len();
    let gaps = gaps(polls);
    let refusals = client.refusals();
    let unexplained: Vec<&load::Refusal> = refusals
        .iter()
        .filter(|r| !gaps.iter().any(|g| g.overlaps(r.sent, r.answered)))
        .collect();
    let longest = gaps.iter().map(Gap::length).max().unwrap_or_default();
    let count_code = |code: &str| refusals.iter().filter(|r| r.code == code).count();
    verdict.count("intake leader SIGKILLs (each restarted)", leader_kills);
    verdict.count("leader polls of every node", polled);
    verdict.count(
        "windows without an intake leader or changing it",
        gaps.len(),
    );
    verdict.count(
        "longest time without an intake leader (ms)",
        longest.as_millis(),
    );
    verdict.count(
        "total time without an intake leader (ms)",
        gaps.iter().map(Gap::length).sum::<Duration>().as_millis(),
    );
    verdict.count("503 answers to writes", refusals.len());
    verdict.count("  unavailable", count_code("unavailable"));
    verdict.count("  outcome_unknown", count_code("outcome_unknown"));
    verdict.count("  overloaded", count_code("overloaded"));
    verdict.count(
        "503 answers while the intake had a leader",
        unexplained.len(),
    );
    verdict.count("writes the edge never answered", client.unanswered());
    // A 503 while the intake had a leader is a violation. It once happened, in about one run
    // of six, right after a node rejoined: the fence's re-read after a refusal was a direct
    // get that a still-catching-up replica answered with a stale sequence, so the edge's
    // fenced append kept failing. That re-read now goes to the stream's leader
    // (`streams::appender::last_message_from_leader`); 42 runs since, on 40 seeds, had none
    // (docs/cluster.md).
    if !unexplained.is_empty() {
        verdict.violations.push(format!(
            "{} 503 answers while the intake stream had a leader",
            unexplained.len()
        ));
    }
    let origin = refusals.first().map(|r| r.sent);
    for refusal in &unexplained {
        let at = |t: Instant| origin.map_or(0.0, |o| t.saturating_duration_since(o).as_secs_f64());
        println!(
            "failover: 503 {} while the intake stream had a leader: sent at +{:.2}s, answered at +{:.2}s (from the first 503)",
            refusal.code,
            at(refusal.sent),
            at(refusal.answered)
        );
    }
    for gap in &gaps {
        let from_start = |t: Instant| t.saturating_duration_since(gaps[0].from).as_secs_f64();
        println!(
            "failover: no intake leader for {:.2}s (+{:.2}s to +{:.2}s from the first window)",
            gap.length().as_secs_f64(),
            from_start(gap.from),
            from_start(gap.to)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(base: Instant, ms: u64, leader: bool) -> Poll {
        Poll {
            at: base + Duration::from_millis(ms),
            leader: leader.then(|| "n1".to_owned()),
        }
    }

    #[test]
    fn gaps_are_the_stretches_of_polls_without_a_leader() {
        let base = Instant::now();
        let polls = vec![
            poll(base, 100, false),
            poll(base, 0, true),
            poll(base, 150, false),
            poll(base, 200, true),
            poll(base, 250, true),
            poll(base, 300, false),
        ];
        let gaps = gaps(polls);
        assert_eq!(gaps.len(), 2);
        assert_eq!(gaps[0].length(), Duration::from_millis(100));
        assert_eq!(gaps[1].from, base + Duration::from_millis(300));
        let (sent, answered) = (
            base + Duration::from_millis(120),
            base + Duration::from_millis(130),
        );
        assert!(gaps[0].overlaps(sent, answered));
        let late = base + Duration::from_millis(250) + POLL_TIMEOUT;
        assert!(!gaps[0].overlaps(late, late));
    }

    #[test]
    fn a_change_of_leader_between_two_polls_is_a_gap() {
        let base = Instant::now();
        let named = |ms: u64, leader: &str| Poll {
            at: base + Duration::from_millis(ms),
            leader: Some(leader.to_owned()),
        };
        let gaps = gaps(vec![named(0, "n1"), named(50, "n1"), named(100, "n2")]);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].from, base + Duration::from_millis(50));
        assert_eq!(gaps[0].to, base + Duration::from_millis(100));
    }

    #[test]
    fn every_round_kills_inside_the_load_and_restarts_before_the_next() {
        for rounds in 1..5 {
            let mut last = 0.0;
            for round in 0..rounds {
                let (kill, restart) = schedule(round, rounds);
                assert!(last <= kill && kill < restart && restart < 1.0);
                last = restart;
            }
        }
    }
}
