//! A circuit breaker in front of the registry: after a run of failures it stops calling for
//! a cool-down, then lets one probe through; the probe's answer closes it or opens it again
//! for twice as long (up to a cap). Pure: the caller passes the time, so tests need no clock.

use std::time::{Duration, Instant};

/// When the breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failures: u32,
    /// The first cool-down; doubled after each failed probe.
    pub cooldown: Duration,
    /// The longest cool-down.
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as the `verification_breaker_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through (gauge 0).
    Closed,
    /// One probe is in flight (gauge 1).
    HalfOpen,
    /// No calls until the cool-down ends (gauge 2).
    Open,
}

impl BreakerState {
    /// The gauge value.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    probing: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            failures: 0,
            open_until: None,
            cooldown: config.cooldown,
            probing: false,
        }
    }

    /// Whether a call may go out at `now`; if not, how long until one may.
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until - now),
            Some(_) if self.probing => Err(self.config.cooldown.min(Duration::from_secs(1))),
            Some(_) => {
                self.probing = true;
                Ok(())
            }
        }
    }

    /// Records a call that reached the registry and got a usable answer.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
        self.cooldown = self.config.cooldown;
    }

    /// Records a call that failed (an error, a fault, a timeout, a hostile answer).
    pub fn failed(&mut self, now: Instant) {
        if self.probing {
            self.probing = false;
            self.cooldown = (self.cooldown * 2).min(self.config.max_cooldown);
            self.open_until = Some(now + self.cooldown);
            return;
        }
        self.failures += 1;
        if self.open_until.is_none() && self.failures >= self.config.failures {
            self.open_until = Some(now + self.cooldown);
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(_) if self.probing => BreakerState::HalfOpen,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_a_run_of_failures_probes_once_and_closes_on_success() {
        let config = BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(5),
        };
        let mut b = Breaker::new(config);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.allow(t0).is_ok());
            b.failed(t0);
        }
        b.succeeded(); // a success resets the run
        for _ in 0..3 {
            assert!(b.allow(t0).is_ok());
            b.failed(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.allow(t0), Err(Duration::from_secs(2)));
        let t1 = t0 + Duration::from_secs(2);
        assert!(b.allow(t1).is_ok(), "one probe after the cool-down");
        assert!(b.allow(t1).is_err(), "only one probe at a time");
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.failed(t1);
        assert_eq!(
            b.allow(t1),
            Err(Duration::from_secs(4)),
            "a failed probe doubles the cool-down"
        );
        let t2 = t1 + Duration::from_secs(4);
        assert!(b.allow(t2).is_ok());
        b.failed(t2);
        assert_eq!(b.allow(t2), Err(Duration::from_secs(5)), "capped");
        let t3 = t2 + Duration::from_secs(5);
        assert!(b.allow(t3).is_ok());
        b.succeeded();
        assert_eq!(b.state(t3), BreakerState::Closed);
        assert!(b.allow(t3).is_ok() && b.allow(t3).is_ok());
    }
}
