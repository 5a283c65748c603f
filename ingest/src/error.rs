//! The edge's one error type. Each variant knows its status, its machine-readable code, the
//! field it concerns and whether the client should come back (`Retry-After`), so a handler
//! only says what went wrong and [`EdgeError::response`] answers in the contract's shape.

use std::time::Duration;

use ntex::http::StatusCode;
use ntex::web::HttpResponse;
use streams::appender::AppendError;
use streams::http::BodyError;
use streams::model::Region;

use crate::validate::FieldError;

/// Everything the edge answers with an error.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The body was too large or could not be read.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The body is not declared as JSON.
    #[error("the body must be JSON with Content-Type: application/json")]
    NotJson,
    /// A field is invalid (the error names it).
    #[error("{}", .0.message)]
    Invalid(FieldError),
    /// The `Idempotency-Key` header is not 1 to 255 visible ASCII characters.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    BadIdempotencyKey,
    /// The region's registration window is closed.
    #[error("registration for region {0} is not open now")]
    WindowClosed(Region),
    /// Too many requests from this address or for this citizen.
    #[error("too many requests; wait before trying again")]
    RateLimited(Duration),
    /// More submissions open on this replica than its bound.
    #[error("too many registrations are being recorded right now; nothing was recorded, try again")]
    Overloaded,
    /// A request with the same key (or for the same citizen) is being worked on here.
    #[error("the same request is still being processed; retry in a moment")]
    InFlight,
    /// The `Idempotency-Key` was used with another body.
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    /// The citizen holds another registration.
    #[error("this citizen already holds a registration; cancel it before registering again")]
    AlreadyRegistered,
    /// Nothing could be recorded: the log is away, or the edge does not know the windows yet.
    #[error("{0} is unavailable; nothing was recorded, try again")]
    Unavailable(&'static str),
    /// The log did not confirm in time: the request may have been recorded.
    #[error(
        "the event log did not confirm in time, so the request may or may not have been recorded; retry it with the same Idempotency-Key (or the same body) to get its answer"
    )]
    OutcomeUnknown,
    /// No registration with this id and token (the two are indistinguishable on purpose).
    #[error("no registration with this id and token")]
    NotFound,
    /// An operator's review decision for a registration that is not in manual review.
    #[error(
        "this registration is not in manual review; an operator decides only registrations the registry could not verify"
    )]
    NotInReview,
    /// No operator token.
    #[error("an operator bearer token is required")]
    Unauthorized,
    /// A wrong operator token.
    #[error("this token may not change the configuration")]
    Forbidden,
    /// The region's waiting room is on and the request carries no ticket.
    #[error(
        "registration for this region goes through its waiting room: take a ticket (POST /v1/queue) and submit with it in the Waiting-Room-Ticket header once admitted"
    )]
    TicketRequired,
    /// The ticket was not issued by this system, was altered, or is for another region.
    #[error("{0}")]
    TicketInvalid(String),
    /// The ticket's place has not been reached yet.
    #[error(
        "your place in the waiting room has not been reached yet; about {ahead} are ahead of you"
    )]
    NotAdmitted {
        /// Places ahead (an estimate).
        ahead: u64,
        /// When to come back.
        wait: Duration,
    },
    /// The ticket was admitted too long ago; its place passed on.
    #[error("this ticket's admission expired unused; take a new ticket")]
    TicketExpired,
    /// The ticket already admitted a registration.
    #[error("this ticket has already been used for a registration; a ticket admits one")]
    TicketUsed,
}

impl EdgeError {
    /// The error for a failed append: a timeout or a lost connection leaves the outcome
    /// unknown (the write may land), anything else recorded nothing.
    pub fn from_append(err: &AppendError) -> Self {
        match err {
            AppendError::Unavailable(_) => EdgeError::OutcomeUnknown,
            AppendError::Taken { .. } => EdgeError::TicketUsed,
            _ => EdgeError::Unavailable("the event log"),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::Body(BodyError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::Body(BodyError::Unreadable(_))
            | EdgeError::Invalid(_)
            | EdgeError::BadIdempotencyKey => StatusCode::BAD_REQUEST,
            EdgeError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EdgeError::WindowClosed(_)
            | EdgeError::Forbidden
            | EdgeError::TicketRequired
            | EdgeError::TicketInvalid(_)
            | EdgeError::TicketExpired => StatusCode::FORBIDDEN,
            EdgeError::RateLimited(_) | EdgeError::NotAdmitted { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            EdgeError::Overloaded | EdgeError::Unavailable(_) | EdgeError::OutcomeUnknown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EdgeError::InFlight
            | EdgeError::AlreadyRegistered
            | EdgeError::NotInReview
            | EdgeError::TicketUsed => StatusCode::CONFLICT,
            EdgeError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            EdgeError::NotFound => StatusCode::NOT_FOUND,
            EdgeError::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The machine-readable code in the error body.
    pub fn code(&self) -> &str {
        match self {
            EdgeError::Body(BodyError::TooLarge(_)) => "body_too_large",
            EdgeError::Body(BodyError::Unreadable(_)) => "invalid_body",
            EdgeError::NotJson => "unsupported_media_type",
            EdgeError::Invalid(e) => e.code,
            EdgeError::BadIdempotencyKey => "invalid_field",
            EdgeError::WindowClosed(_) => "window_closed",
            EdgeError::RateLimited(_) => "rate_limited",
            EdgeError::Overloaded => "overloaded",
            EdgeError::InFlight => "request_in_flight",
            EdgeError::KeyReused => "idempotency_key_reused",
            EdgeError::AlreadyRegistered => "already_registered",
            EdgeError::NotInReview => "not_in_review",
            EdgeError::Unavailable(_) => "unavailable",
            EdgeError::OutcomeUnknown => "outcome_unknown",
            EdgeError::NotFound => "not_found",
            EdgeError::Unauthorized => "unauthorized",
            EdgeError::Forbidden => "forbidden",
            EdgeError::TicketRequired => "ticket_required",
            EdgeError::TicketInvalid(_) => "ticket_invalid",
            EdgeError::NotAdmitted { .. } => "not_admitted",
            EdgeError::TicketExpired => "ticket_expired",
            EdgeError::TicketUsed => "ticket_used",
        }
    }

    /// The request field concerned, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            EdgeError::Invalid(e) => e.field.as_deref(),
            EdgeError::BadIdempotencyKey | EdgeError::KeyReused => Some("Idempotency-Key"),
            EdgeError::WindowClosed(_) => Some("region"),
            EdgeError::AlreadyRegistered => Some("national_id"),
            EdgeError::TicketRequired
            | EdgeError::TicketInvalid(_)
            | EdgeError::TicketExpired
            | EdgeError::TicketUsed => Some(streams::waiting_room::TICKET_HEADER),
            _ => None,
        }
    }

    /// Seconds the client should wait before trying again, when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            EdgeError::RateLimited(wait) | EdgeError::NotAdmitted { wait, .. } => {
                Some((wait.as_secs_f64().ceil() as u64).max(1))
            }
            EdgeError::Overloaded | EdgeError::Unavailable(_) | EdgeError::OutcomeUnknown => {
                Some(1)
            }
            _ => None,
        }
    }

    /// The response in the contract's shape: `{"error": {"code", "message", "field"?}}`.
    pub fn response(&self) -> HttpResponse {
        streams::http::error_retry_after(
            self.status(),
            self.code(),
            &self.to_string(),
            self.field(),
            self.retry_after(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_that_may_have_landed_is_an_unknown_outcome_not_a_failure() {
        let timeout = EdgeError::from_append(&AppendError::Unavailable("timed out".into()));
        assert_eq!(timeout.code(), "outcome_unknown");
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(timeout.to_string().contains("same Idempotency-Key"));
        assert_eq!(timeout.retry_after(), Some(1));
        let refused = EdgeError::from_append(&AppendError::Refused("limits".into()));
        assert_eq!(refused.code(), "unavailable");
        assert!(refused.to_string().contains("nothing was recorded"));
    }

    #[test]
    fn every_refusal_that_invites_a_retry_says_when() {
        let cases = [
            (
                EdgeError::RateLimited(Duration::from_millis(1500)),
                429,
                Some(2),
            ),
            (EdgeError::Overloaded, 503, Some(1)),
            (EdgeError::Unavailable("the event log"), 503, Some(1)),
            (EdgeError::KeyReused, 422, None),
            (EdgeError::AlreadyRegistered, 409, None),
            (EdgeError::InFlight, 409, None),
            (EdgeError::Body(BodyError::TooLarge(16)), 413, None),
            (EdgeError::NotJson, 415, None),
            (EdgeError::NotFound, 404, None),
        ];
        for (err, status, retry) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.retry_after(), retry, "{err:?}");
            let response = err.response();
            assert_eq!(
                response
                    .headers()
                    .get(ntex::http::header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap()),
                retry
            );
        }
    }
}
