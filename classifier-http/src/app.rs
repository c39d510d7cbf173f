//! The per-request pipeline: request id, routing, auth, rate limit, dispatch, the error
//! response, `X-Request-ID` and `X-RateLimit-*` headers, metrics and the request log line.
//! A panic in a handler becomes a 500 for that request; the server keeps running.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::handlers;
use crate::rate_limit::RateDecision;
use crate::request_id;
use crate::response::Body;
use crate::router::{self, Access, Handler, Route};
use crate::state::AppState;

/// What a handler gets besides the request.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Shared state.
    pub state: Arc<AppState>,
    /// The authenticated caller.
    pub caller: Caller,
    /// The `{id}` path segment, if the route has one.
    pub id: Option<String>,
    /// The request path (for error bodies).
    pub path: String,
    /// The request id.
    pub request_id: String,
}

/// Serve one request; never fails (errors become JSON error responses).
pub async fn handle(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let rid = request_id::from_headers(req.headers());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let carries_body = request_carries_body(&req);
    let span = tracing::info_span!("request", request_id = %rid, method = %method, path = %path);
    async move {
        let metrics_state = state.clone();
        let run = route_and_run(state, peer, req, rid.clone(), path.clone());
        let (route, mut response) = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(done) => done,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let e = Error::Internal(format!("handler panicked: {what}"));
                ("panic", e.to_response(&path, &rid))
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            response.headers_mut().insert(request_id::HEADER, v);
        }
        let status = response.status().as_u16();
        if carries_body && status >= 400 {
            // An error may be answered before the upload was read (401, 429, 422, ...); hyper
            // then drops the connection, and a client reusing it from its pool would see a
            // broken response. Say so explicitly so clients open a fresh connection.
            response
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let seconds = start.elapsed().as_secs_f64();
        metrics_state
            .service
            .metrics()
            .observe_http(&method, route, status, seconds);
        tracing::info!(status, route, ms = seconds * 1e3, "request");
        response
    }
    .instrument(span)
    .await
}

async fn route_and_run(
    state: Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    rid: String,
    path: String,
) -> (&'static str, Response<Body>) {
    let (route, id) = match router::find(req.method().as_str(), &path) {
        Ok(found) => found,
        Err(e) => return ("unmatched", e.to_response(&path, &rid)),
    };
    let mut rate = None;
    let result = authorize_and_dispatch(&state, peer, route, id, req, &rid, &path, &mut rate).await;
    let mut response = result.unwrap_or_else(|e| e.to_response(&path, &rid));
    if let Some(d) = rate {
        set_rate_headers(&mut response, &d);
    }
    (route.pattern, response)
}

#[allow(clippy::too_many_arguments)]
async fn authorize_and_dispatch(
    state: &Arc<AppState>,
    peer: SocketAddr,
    route: &'static Route,
    id: Option<String>,
    req: Request<Incoming>,
    rid: &str,
    path: &str,
    rate: &mut Option<RateDecision>,
) -> Result<Response<Body>> {
    let identity = match route.access {
        Access::Open => Ok(state
            .auth
            .identify(req.headers())
            .unwrap_or(Caller::Anonymous)),
        Access::Key => state.auth.identify(req.headers()),
        Access::Admin => state.auth.identify_admin(req.headers()),
    };
    let limit = state.config.rate_limit;
    if route.rate_limited && limit.enabled() {
        // Unauthenticated attempts are limited per client IP, so keys cannot be guessed fast.
        let bucket = match &identity {
            Ok(Caller::Key { owner, .. }) => format!("key:{owner}"),
            _ => format!("ip:{}", peer.ip()),
        };
        match state.limiter.take(&bucket, limit).await {
            Ok(d) => {
                *rate = Some(d);
                if !d.allowed {
                    return Err(Error::RateLimited {
                        retry_after: d.retry_after_secs,
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "rate-limit store failed; request let through"),
        }
    }
    let caller = identity?;
    let ctx = Ctx {
        state: state.clone(),
        caller,
        id,
        path: path.to_string(),
        request_id: rid.to_string(),
    };
    dispatch(route.handler, ctx, req).await
}

async fn dispatch(handler: Handler, ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>> {
    match handler {
        Handler::Demo => Ok(handlers::pages::demo()),
        Handler::OpenApi => {
            let versions: Vec<String> = ctx
                .state
                .service
                .models()
                .into_iter()
                .map(|m| m.version)
                .collect();
            Ok(handlers::pages::openapi(
                ctx.state.auth.enabled(),
                &versions,
            ))
        }
        Handler::Metrics => handlers::health::metrics(&ctx).await,
        Handler::Health => Ok(handlers::health::health(&ctx).await),
        Handler::Live => Ok(handlers::health::live(&ctx)),
        Handler::Ready => Ok(handlers::health::ready(&ctx).await),
        Handler::Models => Ok(handlers::models::list(&ctx)),
        Handler::Classify => handlers::classify::submit(&ctx, req).await,
        Handler::ClassifyBatch => handlers::classify::submit_batch(&ctx, req).await,
        Handler::Predict => handlers::predict::predict(&ctx, req).await,
        Handler::Status => handlers::jobs::status(&ctx, &req).await,
        Handler::StatusWs => crate::ws::upgrade(&ctx, req).await,
        Handler::Result => handlers::jobs::result(&ctx).await,
        Handler::Cancel => handlers::jobs::cancel(&ctx).await,
        Handler::AdminQueue => handlers::admin::queue(&ctx).await,
        Handler::DeadLetters => handlers::admin::dead_letters(&ctx).await,
        Handler::RetryDeadLetter => handlers::admin::retry(&ctx).await,
        Handler::ReloadModels => handlers::admin::reload_models(&ctx).await,
        Handler::Feedback => handlers::feedback::submit(&ctx, req).await,
        Handler::FeedbackCount => handlers::feedback::count(&ctx).await,
        Handler::FeedbackExport => handlers::feedback::export(&ctx).await,
    }
}

fn set_rate_headers(response: &mut Response<Body>, d: &RateDecision) {
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// True when the request announces a body (a non-zero `Content-Length` or any
/// `Transfer-Encoding`), which an early error response may leave unread.
fn request_carries_body(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}
