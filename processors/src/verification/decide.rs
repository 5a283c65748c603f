//! The verification step's rules, pure: which decisions ask for a verification, what a
//! verdict becomes, and what to do after a failed call (try again later, or hand the
//! registration to an operator).

use std::time::Duration;

use streams::events::{
    Event, RegistryRefusal, VerificationFailed, VerificationInconclusive, VerificationPassed,
};
use streams::model::{RegistrationId, SlotKey};
use streams::outside::OutsideError;

use super::registry::RegistryError;
use super::xml::Verdict;

/// A registration that needs a verification, from the decision that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The registration.
    pub registration_id: RegistrationId,
    /// Its slot (the region names the intake subject the verdict goes to).
    pub slot: SlotKey,
    /// The intake sequence of its submission, where its sealed personal data is.
    pub submission_seq: u64,
}

/// The registration a decision asks to verify: a place reserved, a place won from the
/// waiting list, or a manual review sent back to the queue. Nothing else is verified (a
/// waiting registration is verified when it gets a place, so the registry is not asked about
/// people who may never get one).
pub fn target(event: &Event) -> Option<Target> {
    let (registration_id, slot, submission_seq) = match event {
        Event::SlotReserved(e) => (&e.registration_id, &e.slot, e.intake_seq),
        Event::WaitlistPromoted(e) => (&e.registration_id, &e.slot, e.submission_seq),
        Event::VerificationRequeued(e) => (&e.registration_id, &e.slot, e.submission_seq),
        _ => return None,
    };
    Some(Target {
        registration_id: registration_id.clone(),
        slot: slot.clone(),
        submission_seq,
    })
}

/// The event recording the registry's verdict.
pub fn verdict_event(id: &RegistrationId, verdict: Verdict) -> Event {
    let refuse = |reason| {
        Event::VerificationFailed(VerificationFailed {
            registration_id: id.clone(),
            reason,
            reviewer: None,
        })
    };
    match verdict {
        Verdict::Match => Event::VerificationPassed(VerificationPassed {
            registration_id: id.clone(),
            reviewer: None,
        }),
        Verdict::DataMismatch => refuse(RegistryRefusal::DataMismatch),
        Verdict::Deceased => refuse(RegistryRefusal::Deceased),
        Verdict::NotFound => refuse(RegistryRefusal::NotFound),
    }
}

/// How long and how often the registry is tried before an operator decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls to the registry for one verification.
    pub max_attempts: u32,
    /// Time since the decision that asked for the verification.
    pub max_age: Duration,
    /// The first retry's delay; doubled per attempt.
    pub base_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attempts: 8,
            max_age: Duration::from_secs(15 * 60),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// What to do after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Deliver the decision again after this delay (JetStream holds it; no worker waits).
    Retry(Duration),
    /// Stop: record the verification as inconclusive, for an operator.
    Review(VerificationInconclusive),
}

/// A failed call, as the rule needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Whether another call may succeed.
    pub retryable: bool,
    /// The least the registry asked us to wait (a `429`'s `Retry-After`).
    pub at_least: Option<Duration>,
    /// What failed, as the event records it: a code and a fixed sentence.
    pub error: OutsideError,
}

impl Failure {
    /// A failed registry call, as the rule sees it.
    pub fn of(err: &RegistryError) -> Failure {
        Failure {
            retryable: err.retryable(),
            at_least: match err {
                RegistryError::RateLimited(wait) => Some(*wait),
                _ => None,
            },
            error: err.outside(),
        }
    }
}

/// After `attempts` failed calls, the last one `failure`, `age` after the decision: try again
/// after an exponential back-off with jitter (`jitter` in 0..1 picks within the upper half of
/// the step, so retries of many registrations spread out), or give up.
pub fn after_failure(
    id: &RegistrationId,
    attempts: u32,
    age: Duration,
    failure: &Failure,
    limits: &Limits,
    jitter: f64,
) -> Next {
    if !failure.retryable || attempts >= limits.max_attempts || age >= limits.max_age {
        return Next::Review(inconclusive(id, attempts, &failure.error));
    }
    let delay = crate::retry::backoff(attempts, limits.base_delay, limits.max_delay, jitter);
    Next::Retry(delay.max(failure.at_least.unwrap_or_default()))
}

/// Why no call went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The circuit breaker is open (or its one probe is in flight).
    Breaker,
    /// This replica's rate limit is spent.
    RateLimit,
}

impl Held {
    /// Why the last attempt never reached the registry, as the event records it.
    pub fn error(self) -> OutsideError {
        match self {
            Held::Breaker => OutsideError::new(
                "registry_circuit_open",
                "the registry's circuit breaker was open after repeated failures",
            ),
            Held::RateLimit => OutsideError::new(
                "registry_rate_limited_here",
                "this replica's rate limit for the registry held the call back",
            ),
        }
    }
}

/// The registration goes to an operator after `attempts` calls, the last failing with
/// `error`.
fn inconclusive(
    id: &RegistrationId,
    attempts: u32,
    error: &OutsideError,
) -> VerificationInconclusive {
    VerificationInconclusive {
        registration_id: id.clone(),
        attempts,
        last_error: error.reason().into(),
        error_code: error.code().into(),
    }
}

/// No call went out (`held`), and one may go out after `wait`: put the verification back
/// until then, but no later than the moment it reaches `max_age`; once it has, hand it to an
/// operator. The age bound holds in every state of the breaker, not only when a call fails:
/// an open breaker may stay open for longer than `max_age`.
pub fn while_held(
    id: &RegistrationId,
    attempts: u32,
    age: Duration,
    held: Held,
    wait: Duration,
    limits: &Limits,
) -> Next {
    match limits
        .max_age
        .checked_sub(age)
        .filter(|left| !left.is_zero())
    {
        Some(left) => Next::Retry(wait.min(left)),
        None => Next::Review(inconclusive(id, attempts, &held.error())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streams::model::Region;

    fn id() -> RegistrationId {
        RegistrationId::generate(&Region::parse("mazowieckie").unwrap())
    }

    fn failure(retryable: bool) -> Failure {
        Failure::of(&if retryable {
            RegistryError::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE)
        } else {
            RegistryError::ClientFault("bad request".into())
        })
    }

    #[test]
    fn back_off_doubles_with_jitter_up_to_a_cap_then_hands_over_to_an_operator() {
        let limits = Limits::default();
        let id = id();
        let delay = |attempts, jitter| match after_failure(
            &id,
            attempts,
            Duration::ZERO,
            &failure(true),
            &limits,
            jitter,
        ) {
            Next::Retry(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(delay(1, 0.0), Duration::from_millis(250));
        assert_eq!(delay(3, 1.0), Duration::from_secs(2));
        assert_eq!(delay(7, 1.0), Duration::from_secs(32));
        let capped = Limits {
            max_attempts: 100,
            ..limits
        };
        assert_eq!(
            after_failure(&id, 40, Duration::ZERO, &failure(true), &capped, 1.0),
            Next::Retry(Duration::from_secs(60))
        );
        match after_failure(&id, 8, Duration::ZERO, &failure(true), &limits, 0.3) {
            Next::Review(r) => assert_eq!((r.attempts, r.registration_id), (8, id.clone())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn age_a_client_fault_and_retry_after_are_respected() {
        let limits = Limits::default();
        let id = id();
        assert!(matches!(
            after_failure(&id, 1, limits.max_age, &failure(true), &limits, 0.5),
            Next::Review(_)
        ));
        assert!(matches!(
            after_failure(&id, 1, Duration::ZERO, &failure(false), &limits, 0.5),
            Next::Review(_)
        ));
        let slow_down = Failure {
            at_least: Some(Duration::from_secs(5)),
            ..failure(true)
        };
        assert_eq!(
            after_failure(&id, 1, Duration::ZERO, &slow_down, &limits, 0.5),
            Next::Retry(Duration::from_secs(5))
        );
    }

    /// The age bound holds in every state of the breaker: given a registry that has been
    /// failing, when the breaker (open, or half-open with another probe in flight) or the
    /// rate limit holds a verification back, then it goes to an operator once it is
    /// `max_age` old, and before that it is put back no later than when it will be.
    #[test]
    fn a_verification_held_back_by_the_breaker_still_goes_to_review_at_its_age() {
        let limits = Limits {
            max_attempts: 100,
            max_age: Duration::from_secs(60),
            ..Limits::default()
        };
        let id = id();
        let long_cooldown = Duration::from_secs(600);
        for held in [Held::Breaker, Held::RateLimit] {
            match while_held(&id, 3, limits.max_age, held, long_cooldown, &limits) {
                Next::Review(r) => {
                    assert_eq!((r.attempts, &r.registration_id), (3, &id), "{held:?}");
                    assert_eq!(r.error_code, held.error().code());
                }
                other => panic!("{held:?}: a verification past its age was put back: {other:?}"),
            }
        }
        assert_eq!(
            while_held(
                &id,
                3,
                Duration::from_secs(50),
                Held::Breaker,
                long_cooldown,
                &limits
            ),
            Next::Retry(Duration::from_secs(10)),
            "put back until its age is reached, not until the breaker's cool-down ends"
        );
        assert_eq!(
            while_held(
                &id,
                0,
                Duration::ZERO,
                Held::RateLimit,
                Duration::from_millis(200),
                &limits
            ),
            Next::Retry(Duration::from_millis(200)),
            "a short wait is kept"
        );
    }

    /// Given a registry whose fault echoes the citizen's data (an e-mail address here) and is
    /// 100 KiB long, when the registration goes to manual review, then its event is short,
    /// holds no trace of the echo, and fits in one JetStream message with room to spare, so
    /// it is stored and the registration reaches its outcome.
    #[test]
    fn a_registry_fault_echoing_personal_data_is_recorded_as_a_short_code() {
        let address = "jan.kowalski@example.pl";
        let echo = format!(
            "no record for {address}, Jan Kowalski, 44051401359: {}",
            "x".repeat(100 * 1024)
        );
        for err in [
            RegistryError::ServerFault(echo.clone()),
            RegistryError::ClientFault(echo.clone()),
            RegistryError::BadAnswer(echo.clone()),
            RegistryError::Timeout(echo.clone()),
            RegistryError::Transport(echo.clone()),
        ] {
            let Next::Review(review) = after_failure(
                &id(),
                8,
                Duration::ZERO,
                &Failure::of(&err),
                &Limits::default(),
                0.5,
            ) else {
                panic!("the attempts are spent: {err:?}")
            };
            let json = String::from_utf8(
                streams::events::Envelope::new(
                    review.registration_id.to_string(),
                    Event::VerificationInconclusive(review.clone()),
                )
                .encode(),
            )
            .unwrap();
            assert!(json.len() < 1024, "{} bytes: {err:?}", json.len());
            assert_eq!(review.error_code, err.outside().code());
            assert_eq!(review.last_error, err.outside().reason());
            for personal in [address, "Kowalski", "44051401359", "xxxx"] {
                assert!(!json.contains(personal), "{personal} in {json}");
            }
        }
    }

    #[test]
    fn only_a_held_place_is_verified_and_verdicts_map_to_their_events() {
        let samples = streams::events::samples();
        let targets: Vec<_> = samples
            .iter()
            .filter(|e| target(&e.event).is_some())
            .map(|e| e.event.event_type())
            .collect();
        assert_eq!(
            targets,
            ["SlotReserved", "WaitlistPromoted", "VerificationRequeued"]
        );
        let promoted = samples
            .iter()
            .find_map(|e| target(&e.event).filter(|_| e.event.event_type() == "WaitlistPromoted"))
            .unwrap();
        assert_eq!(promoted.submission_seq, 42);
        let id = id();
        assert!(matches!(
            verdict_event(&id, Verdict::Match),
            Event::VerificationPassed(_)
        ));
        assert!(matches!(
            verdict_event(&id, Verdict::Deceased),
            Event::VerificationFailed(VerificationFailed {
                reason: RegistryRefusal::Deceased,
                ..
            })
        ));
    }
}
