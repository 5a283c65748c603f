//! Back-off for the processors that call outside systems (the registry, mail and webhook
//! providers): the delay before a record is delivered again, doubled per attempt up to a
//! cap, with jitter so the retries of many records spread out.

use std::time::Duration;

/// The delay before attempt `attempts + 1`, after `attempts` failed ones: `base` doubled per
/// attempt, at most `max`, scaled by `0.5 + 0.5 * jitter` (`jitter` in 0..1, from the
/// caller's random source so tests can fix it).
pub fn backoff(attempts: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let step = base
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(max);
    step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_attempt_up_to_the_cap_within_its_upper_half() {
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(60));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, max, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(40, base, max, 1.0), max);
        assert_eq!(backoff(0, base, max, 1.0), base);
    }
}
