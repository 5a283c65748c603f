//! The read API's one error type. Each variant knows its status, its machine-readable code,
//! the field it concerns and whether the client should come back (`Retry-After`), so a
//! handler only says what went wrong and [`ReadError::response`] answers in the contract's
//! shape, `{"error": {"code", "message", "field"?}}`.

use ntex::http::StatusCode;
use ntex::web::HttpResponse;
use streams::http::OperatorRefusal;

/// Everything the read API answers with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A query parameter is invalid.
    #[error("{message}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// No registration with this id and token (the two are indistinguishable on purpose).
    #[error("no registration with this id and token")]
    NotFound,
    /// No rebuild with this id (or no longer kept).
    #[error(
        "no such rebuild (only the last {} are kept)",
        crate::rebuild::KEPT_REBUILDS
    )]
    NoSuchRebuild,
    /// An operator asked for a rebuild while another runs (its id).
    #[error("rebuild {0} is still running")]
    RebuildRunning(String),
    /// The store could not answer a read (what was asked).
    #[error("{0} is temporarily unavailable")]
    Unavailable(&'static str),
    /// A cached answer (availability, the SMART publication) could not be loaded: the next
    /// load is at most a cache period (about a second) away.
    #[error("{0} is temporarily unavailable")]
    NotLoaded(&'static str),
    /// No operator token.
    #[error("an operator token is required")]
    Unauthorized,
    /// A token that is not the operators'.
    #[error("this token may not do that")]
    Forbidden,
}

impl From<OperatorRefusal> for ReadError {
    fn from(refusal: OperatorRefusal) -> Self {
        match refusal {
            OperatorRefusal::Missing => ReadError::Unauthorized,
            OperatorRefusal::Wrong => ReadError::Forbidden,
        }
    }
}

impl ReadError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ReadError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ReadError::NotFound | ReadError::NoSuchRebuild => StatusCode::NOT_FOUND,
            ReadError::RebuildRunning(_) => StatusCode::CONFLICT,
            ReadError::Unavailable(_) | ReadError::NotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ReadError::Unauthorized => StatusCode::UNAUTHORIZED,
            ReadError::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// The machine-readable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::Invalid { .. } => "invalid_field",
            ReadError::NotFound | ReadError::NoSuchRebuild => "not_found",
            ReadError::RebuildRunning(_) => "rebuild_running",
            ReadError::Unavailable(_) | ReadError::NotLoaded(_) => "unavailable",
            ReadError::Unauthorized => "unauthorized",
            ReadError::Forbidden => "forbidden",
        }
    }

    /// The request field concerned, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ReadError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Seconds the client should wait before trying again, when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ReadError::NotLoaded(_) => Some(1),
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

    /// Every error, its status, code, field and `Retry-After`, as `docs/openapi/read.json`
    /// documents them.
    #[test]
    fn each_error_answers_with_its_documented_status_code_and_headers() {
        let invalid = ReadError::Invalid {
            field: "date",
            message: "date must be YYYY-MM-DD".into(),
        };
        let cases = [
            (invalid, 400, "invalid_field", Some("date"), None),
            (ReadError::NotFound, 404, "not_found", None, None),
            (ReadError::NoSuchRebuild, 404, "not_found", None, None),
            (
                ReadError::RebuildRunning("r1".into()),
                409,
                "rebuild_running",
                None,
                None,
            ),
            (
                ReadError::Unavailable("status"),
                503,
                "unavailable",
                None,
                None,
            ),
            (
                ReadError::NotLoaded("availability"),
                503,
                "unavailable",
                None,
                Some("1"),
            ),
            (ReadError::Unauthorized, 401, "unauthorized", None, None),
            (ReadError::Forbidden, 403, "forbidden", None, None),
        ];
        for (err, status, code, field, retry_after) in cases {
            let response = err.response();
            assert_eq!(response.status().as_u16(), status, "{err:?}");
            assert_eq!(
                response
                    .headers()
                    .get(ntex::http::header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry_after,
                "{err:?}"
            );
            assert_eq!((err.code(), err.field()), (code, field), "{err:?}");
        }
    }

    #[test]
    fn a_refused_operator_is_unauthorized_without_a_token_and_forbidden_with_another() {
        assert!(matches!(
            ReadError::from(OperatorRefusal::Missing),
            ReadError::Unauthorized
        ));
        assert!(matches!(
            ReadError::from(OperatorRefusal::Wrong),
            ReadError::Forbidden
        ));
    }

    #[test]
    fn the_message_says_what_is_unavailable() {
        assert_eq!(
            ReadError::NotLoaded("the publication").to_string(),
            "the publication is temporarily unavailable"
        );
        assert_eq!(
            ReadError::NoSuchRebuild.to_string(),
            "no such rebuild (only the last 16 are kept)"
        );
    }
}
