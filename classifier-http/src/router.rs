//! The route table (plain data, so the OpenAPI test can walk it) and path matching.

use crate::error::{Error, Result};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed.
    Open,
    /// Any valid API key (when auth is on).
    Key,
    /// An admin key (when auth is on): no key 401, a non-admin key 403.
    Admin,
}

/// Which handler serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `/`: the demo page.
    Demo,
    /// `/metrics`.
    Metrics,
    /// `/openapi.json` and `/api/v1/openapi.json`.
    OpenApi,
    /// `/api/v1/health`.
    Health,
    /// `/api/v1/health/live`.
    Live,
    /// `/api/v1/health/ready`.
    Ready,
    /// `GET /api/v1/models`.
    Models,
    /// `POST /api/v1/classify`.
    Classify,
    /// `POST /api/v1/classify/batch`.
    ClassifyBatch,
    /// `POST /api/v1/predict`.
    Predict,
    /// `GET /api/v1/status/{id}`.
    Status,
    /// `GET /api/v1/status/{id}/ws`.
    StatusWs,
    /// `GET /api/v1/result/{id}`.
    Result,
    /// `DELETE /api/v1/jobs/{id}`.
    Cancel,
    /// `GET /api/v1/admin/queue`.
    AdminQueue,
    /// `GET /api/v1/admin/dead-letters`.
    DeadLetters,
    /// `POST /api/v1/admin/dead-letters/{id}/retry`.
    RetryDeadLetter,
    /// `POST /api/v1/admin/models/reload`.
    ReloadModels,
    /// `POST /api/v1/feedback`.
    Feedback,
    /// `GET /api/v1/feedback/count`.
    FeedbackCount,
    /// `GET /api/v1/admin/feedback/export`.
    FeedbackExport,
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern; `{id}` matches one non-empty segment.
    pub pattern: &'static str,
    /// The handler.
    pub handler: Handler,
    /// Who may call it.
    pub access: Access,
    /// True if the token bucket applies (every `/api/v1` route but the health probes).
    pub rate_limited: bool,
}

const fn route(
    method: &'static str,
    pattern: &'static str,
    handler: Handler,
    access: Access,
    rate_limited: bool,
) -> Route {
    Route {
        method,
        pattern,
        handler,
        access,
        rate_limited,
    }
}

use Access::{Admin, Key, Open};

/// Every route the server serves.
pub const ROUTES: &[Route] = &[
    route("GET", "/", Handler::Demo, Open, false),
    route("GET", "/metrics", Handler::Metrics, Open, false),
    route("GET", "/openapi.json", Handler::OpenApi, Open, false),
    route("GET", "/api/v1/openapi.json", Handler::OpenApi, Open, true),
    route("GET", "/api/v1/health", Handler::Health, Open, false),
    route("GET", "/api/v1/health/live", Handler::Live, Open, false),
    route("GET", "/api/v1/health/ready", Handler::Ready, Open, false),
    route("GET", "/api/v1/models", Handler::Models, Key, true),
    route("POST", "/api/v1/classify", Handler::Classify, Key, true),
    route(
        "POST",
        "/api/v1/classify/batch",
        Handler::ClassifyBatch,
        Key,
        true,
    ),
    route("POST", "/api/v1/predict", Handler::Predict, Key, true),
    route("GET", "/api/v1/status/{id}", Handler::Status, Key, true),
    route(
        "GET",
        "/api/v1/status/{id}/ws",
        Handler::StatusWs,
        Key,
        true,
    ),
    route("GET", "/api/v1/result/{id}", Handler::Result, Key, true),
    route("DELETE", "/api/v1/jobs/{id}", Handler::Cancel, Key, true),
    route(
        "GET",
        "/api/v1/admin/queue",
        Handler::AdminQueue,
        Admin,
        true,
    ),
    route(
        "GET",
        "/api/v1/admin/dead-letters",
        Handler::DeadLetters,
        Admin,
        true,
    ),
    route(
        "POST",
        "/api/v1/admin/dead-letters/{id}/retry",
        Handler::RetryDeadLetter,
        Admin,
        true,
    ),
    route(
        "POST",
        "/api/v1/admin/models/reload",
        Handler::ReloadModels,
        Admin,
        true,
    ),
    route(
        "GET",
        "/api/v1/admin/feedback/export",
        Handler::FeedbackExport,
        Admin,
        true,
    ),
    route("POST", "/api/v1/feedback", Handler::Feedback, Key, true),
    route(
        "GET",
        "/api/v1/feedback/count",
        Handler::FeedbackCount,
        Key,
        true,
    ),
];

/// Match `path` against `pattern`; `Some(captured id)` (or `Some(None)` without one).
fn matches(pattern: &str, path: &str) -> Option<Option<String>> {
    let mut id = None;
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg.to_string()),
            (Some(p), Some(seg)) if p == seg => {}
            _ => return None,
        }
    }
}

/// The route for `method` and `path`, with the `{id}` segment if the pattern has one.
/// `RouteNotFound` if no pattern matches the path, `MethodNotAllowed` if only other methods
/// do. `HEAD` is served as `GET`.
pub fn find(method: &str, path: &str) -> Result<(&'static Route, Option<String>)> {
    let method = if method == "HEAD" { "GET" } else { method };
    let mut allowed: Vec<&str> = Vec::new();
    for r in ROUTES {
        if let Some(id) = matches(r.pattern, path) {
            if r.method == method {
                return Ok((r, id));
            }
            allowed.push(r.method);
        }
    }
    if allowed.is_empty() {
        Err(Error::RouteNotFound(truncate(path, 200)))
    } else {
        Err(Error::MethodNotAllowed {
            method: truncate(method, 20),
            allowed: allowed.join(", "),
        })
    }
}

/// At most `n` characters of `s` (for echoing client input in messages).
pub fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let (r, id) = find("GET", "/api/v1/status/abc").unwrap();
        assert_eq!(r.handler, Handler::Status);
        assert_eq!(id.as_deref(), Some("abc"));
        let (r, _) = find("GET", "/api/v1/status/abc/ws").unwrap();
        assert_eq!(r.handler, Handler::StatusWs);
        assert!(matches!(
            find("GET", "/api/v1/status/"),
            Err(Error::RouteNotFound(_))
        ));
        assert!(matches!(
            find("POST", "/api/v1/status/x"),
            Err(Error::MethodNotAllowed { .. })
        ));
        assert_eq!(find("GET", "/").unwrap().0.handler, Handler::Demo);
        assert!(find("GET", "/api/v1/jobs/x").is_err());
    }

    #[test]
    fn health_probes_are_open_and_not_rate_limited() {
        for r in ROUTES {
            if r.pattern.starts_with("/api/v1/health") {
                assert_eq!(r.access, Access::Open);
                assert!(!r.rate_limited);
            } else if r.pattern.starts_with("/api/v1/") {
                assert!(r.rate_limited, "{}", r.pattern);
            }
        }
    }
}
