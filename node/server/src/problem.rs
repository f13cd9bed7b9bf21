//! RFC 9457 problem details: every error the HTTP API returns.

use allot_node::CoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The stable `type` of a problem is `urn:allot:problem:<kind>`; docs/http-api.md lists them.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
    pub retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            kind,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-request", detail)
    }

    /// A body over [`crate::http::MAX_BODY`].
    pub fn body_too_large() -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!(
                "request bodies are limited to {} bytes",
                crate::http::MAX_BODY
            ),
        )
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-input", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem {
            retry_after_s: Some(1),
            ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
        }
    }

    /// More buyers' writes than the node takes at once (`admission.rs`): nothing was done;
    /// try again in a second.
    pub fn overloaded(limit: usize) -> Problem {
        Problem {
            retry_after_s: Some(1),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("this node is taking {limit} writes at once already; nothing was done"),
            )
        }
    }

    pub fn not_found(kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, kind, detail)
    }
}

impl From<CoreError> for Problem {
    fn from(e: CoreError) -> Problem {
        use StatusCode as S;
        let status = match &e {
            CoreError::Invalid(_)
            | CoreError::Genesis(_)
            | CoreError::Meta(_)
            | CoreError::IdempotencyMismatch => S::UNPROCESSABLE_ENTITY,
            CoreError::EventExists(_)
            | CoreError::SoldOut { .. }
            | CoreError::SeatTaken(_)
            | CoreError::SeatElsewhere { .. }
            | CoreError::NotOwner(_)
            | CoreError::SalesClosed { .. }
            | CoreError::NothingToSpare(_) => S::CONFLICT,
            CoreError::UnknownEvent(_)
            | CoreError::UnknownPool(_)
            | CoreError::UnknownSeat(_)
            | CoreError::UnknownHold(_)
            | CoreError::UnknownOrder(_) => S::NOT_FOUND,
            CoreError::HoldLimit(_) => S::TOO_MANY_REQUESTS,
            CoreError::HoldExpired => S::GONE,
            // The core asks the owning region (or the catalog) itself; these come back only
            // when that region cannot be reached or the call came from another region.
            CoreError::NotCatalog { .. }
            | CoreError::Foreign { .. }
            | CoreError::Unreachable { .. }
            | CoreError::StockUnreachable { .. }
            | CoreError::DeadlinePassed
            | CoreError::Storage(_) => S::SERVICE_UNAVAILABLE,
        };
        let retry = (status == S::SERVICE_UNAVAILABLE).then_some(1);
        Problem {
            status,
            kind: e.kind(),
            detail: e.to_string(),
            retry_after_s: retry,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::json!({
            "type": format!("urn:allot:problem:{}", self.kind),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut r = (self.status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the metrics middleware, which counts refusals by kind.
        r.extensions_mut()
            .insert(crate::metrics::ProblemKind(self.kind));
        r
    }
}
