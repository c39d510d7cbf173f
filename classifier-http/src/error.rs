//! The crate's error type and the ONE place where errors become HTTP status codes and the
//! JSON error body `{"error", "detail", "timestamp", "path", "request_id"}` (409 bodies add
//! `status`; a batch with no accepted file adds `jobs`).

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::response::{json_response, Body};
use classifier_core::job::JobStatus;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request (or starting the server).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the job service or the core pipeline (mapped by its [`classifier_core::Error::code`]).
    #[error(transparent)]
    Core(#[from] classifier_core::Error),

    /// A request field is missing or invalid (422 `VALIDATION_ERROR`).
    #[error("{0}")]
    Validation(String),

    /// The request is malformed (400 `BAD_REQUEST`), e.g. a broken multipart body.
    #[error("{0}")]
    BadRequest(String),

    /// The body is not `multipart/form-data` (415 `UNSUPPORTED_MEDIA_TYPE`).
    #[error("{0}")]
    UnsupportedMediaType(String),

    /// The upload is larger than allowed (413 `PAYLOAD_TOO_LARGE`).
    #[error("{what} is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// What was too large (`the file "x.jpg"`, `the request body`).
        what: String,
        /// The limit in bytes.
        limit: usize,
    },

    /// The body stopped arriving (408 `REQUEST_TIMEOUT`).
    #[error("the request body stopped arriving for more than {} s", .0.as_secs_f64())]
    BodyTimeout(Duration),

    /// No or an unknown API key (401 `UNAUTHORIZED`).
    #[error("{0}")]
    Unauthorized(String),

    /// A valid key without the needed rights (403 `FORBIDDEN`).
    #[error("this route needs an admin API key")]
    Forbidden,

    /// No route for this path (404 `NOT_FOUND`).
    #[error("no route for {0}")]
    RouteNotFound(String),

    /// The path exists but not for this method (405 `METHOD_NOT_ALLOWED`).
    #[error("method {method} is not allowed here; allowed: {allowed}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the path supports, comma-separated.
        allowed: String,
    },

    /// The caller's token bucket is empty (429 `RATE_LIMITED`).
    #[error("rate limit exceeded; retry in {retry_after} s")]
    RateLimited {
        /// Seconds until a token is available.
        retry_after: u64,
    },

    /// A batch in which no file was accepted (400, with the per-file errors in `jobs`).
    #[error("no file of the batch was accepted")]
    BatchRejected {
        /// The per-file outcomes (`[{index, filename, error:{error, detail}}]`).
        jobs: serde_json::Value,
    },

    /// The WebSocket handshake is malformed (400 `BAD_REQUEST`).
    #[error("invalid WebSocket handshake: {0}")]
    WebSocketHandshake(String),

    /// A configuration value is invalid (start-up only).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An I/O error (binding, accepting).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// A bug or an unexpected failure (500 `INTERNAL_ERROR`, detail not shown to clients).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Seconds a client should wait after a 503.
const RETRY_AFTER_UNAVAILABLE: u64 = 5;

impl Error {
    /// The HTTP status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Core(e) => match e.code() {
                "INVALID_IMAGE" => StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR" => StatusCode::UNPROCESSABLE_ENTITY,
                "PAYLOAD_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
                "SERVICE_UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
                "JOB_NOT_FOUND" => StatusCode::NOT_FOUND,
                "JOB_NOT_COMPLETED" | "JOB_FAILED" | "JOB_CANCELLED" | "CONFLICT" => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::BadRequest(_) | Error::WebSocketHandshake(_) | Error::BatchRejected { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden => StatusCode::FORBIDDEN,
            Error::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Config(_) | Error::Io(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The stable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Core(e) => match e.code() {
                c @ ("INVALID_IMAGE"
                | "VALIDATION_ERROR"
                | "PAYLOAD_TOO_LARGE"
                | "SERVICE_UNAVAILABLE"
                | "JOB_NOT_FOUND"
                | "JOB_NOT_COMPLETED"
                | "JOB_FAILED"
                | "JOB_CANCELLED"
                | "CONFLICT") => c,
                _ => "INTERNAL_ERROR",
            },
            Error::Validation(_) => "VALIDATION_ERROR",
            Error::BadRequest(_) | Error::WebSocketHandshake(_) => "BAD_REQUEST",
            Error::BatchRejected { .. } => "BATCH_REJECTED",
            Error::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::BodyTimeout(_) => "REQUEST_TIMEOUT",
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Forbidden => "FORBIDDEN",
            Error::RouteNotFound(_) => "NOT_FOUND",
            Error::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::Config(_) | Error::Io(_) | Error::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// The job status a 409 names, if any.
    fn conflict_status(&self) -> Option<JobStatus> {
        match self {
            Error::Core(classifier_core::Error::JobNotCompleted { status, .. }) => Some(*status),
            Error::Core(classifier_core::Error::IllegalTransition { from, .. }) => Some(*from),
            _ => None,
        }
    }

    /// True when the request body may be left unread: the connection must then be closed.
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            Error::PayloadTooLarge { .. }
                | Error::BodyTimeout(_)
                | Error::UnsupportedMediaType(_)
                | Error::Core(classifier_core::Error::FileTooLarge { .. })
        )
    }

    /// The JSON error response for a request to `path` with id `request_id`.
    ///
    /// Server errors (5xx other than 503) are logged here with their full text; the client
    /// gets a generic detail.
    pub fn to_response(&self, path: &str, request_id: &str) -> Response<Body> {
        let status = self.status();
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
            "an internal error occurred; see the server log for this request id".to_string()
        } else {
            self.to_string()
        };
        let mut body = serde_json::json!({
            "error": self.code(),
            "detail": detail,
            "timestamp": chrono::Utc::now(),
            "path": path,
            "request_id": request_id,
        });
        if let Some(s) = self.conflict_status() {
            body["status"] = serde_json::json!(s);
        }
        if let Error::BatchRejected { jobs } = self {
            body["jobs"] = jobs.clone();
        }
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        let retry_after = match self {
            Error::RateLimited { retry_after } => Some((*retry_after).max(1)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Error::MethodNotAllowed { allowed, .. } = self {
            if let Ok(v) = HeaderValue::from_str(allowed) {
                headers.insert(header::ALLOW, v);
            }
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_codes_map_to_the_contract_statuses() {
        use classifier_core::Error as C;
        let cases: Vec<(C, u16)> = vec![
            (C::EmptyImage, 400),
            (C::FileTooLarge { size: 2, limit: 1 }, 413),
            (
                C::UnknownModelVersion {
                    requested: "x".into(),
                    available: vec!["a".into()],
                },
                422,
            ),
            (C::QueueFull { depth: 1, limit: 1 }, 503),
            (C::JobNotFound("x".into()), 404),
            (
                C::JobNotCompleted {
                    job_id: "x".into(),
                    status: JobStatus::Failed,
                    message: None,
                },
                409,
            ),
            (C::Inference("boom".into()), 500),
        ];
        for (e, status) in cases {
            assert_eq!(Error::Core(e).status().as_u16(), status);
        }
    }

    #[test]
    fn error_body_has_the_contract_shape() {
        let e = Error::Core(classifier_core::Error::JobNotCompleted {
            job_id: "j".into(),
            status: JobStatus::Pending,
            message: None,
        });
        let r = e.to_response("/api/v1/result/j", "rid");
        assert_eq!(r.status(), 409);
        let bytes = http_body_util::BodyExt::collect(r.into_body());
        let bytes = futures_util::FutureExt::now_or_never(bytes)
            .and_then(|b| b.ok())
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let mut keys: Vec<_> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        assert_eq!(
            keys,
            [
                "detail",
                "error",
                "path",
                "request_id",
                "status",
                "timestamp"
            ]
        );
        assert_eq!(v["error"], "JOB_NOT_COMPLETED");
        assert_eq!(v["status"], "pending");
    }

    #[test]
    fn service_unavailable_carries_retry_after() {
        let e = Error::Core(classifier_core::Error::QueueFull { depth: 3, limit: 3 });
        let r = e.to_response("/p", "r");
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
    }
}
