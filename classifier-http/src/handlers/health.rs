//! Health probes and `/metrics`.

use classifier_core::service::HealthReport;
use http::{Response, StatusCode};

use crate::app::Ctx;
use crate::error::Result;
use crate::response::{json_response, with_type, Body};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn rank(status: &str) -> u8 {
    match status {
        "healthy" => 0,
        "degraded" => 1,
        _ => 2,
    }
}

/// The overall status: the worst of the three dependencies.
pub fn overall(report: &HealthReport) -> &'static str {
    let worst = [&report.queue, &report.workers, &report.models]
        .iter()
        .map(|d| rank(&d.status))
        .max()
        .unwrap_or(0);
    ["healthy", "degraded", "unhealthy"][worst as usize]
}

fn document(ctx: &Ctx, status: &str, report: Option<&HealthReport>) -> serde_json::Value {
    let mut doc = serde_json::json!({
        "status": status,
        "timestamp": chrono::Utc::now(),
        "version": VERSION,
        "uptime": ctx.state.started.elapsed().as_secs_f64(),
    });
    if let Some(r) = report {
        doc["services"] = serde_json::json!({
            "queue": r.queue, "workers": r.workers, "models": r.models,
        });
    }
    doc
}

/// `GET /api/v1/health`: 200 healthy or degraded, 503 unhealthy.
pub async fn health(ctx: &Ctx) -> Response<Body> {
    let report = ctx.state.service.health().await;
    let status = overall(&report);
    let code = if status == "unhealthy" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, &document(ctx, status, Some(&report)))
}

/// `GET /api/v1/health/live`: 200 while the process serves requests.
pub fn live(ctx: &Ctx) -> Response<Body> {
    json_response(StatusCode::OK, &document(ctx, "healthy", None))
}

/// `GET /api/v1/health/ready`: 503 when the backend is down or the default model is not loaded.
pub async fn ready(ctx: &Ctx) -> Response<Body> {
    let report = ctx.state.service.health().await;
    let ready = report.queue.status != "unhealthy" && report.models.status == "healthy";
    let (code, status) = if ready {
        (StatusCode::OK, "healthy")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    };
    json_response(code, &document(ctx, status, Some(&report)))
}

/// `GET /metrics`: Prometheus text, queue gauges refreshed first.
pub async fn metrics(ctx: &Ctx) -> Result<Response<Body>> {
    let service = &ctx.state.service;
    match service.backend().depth().await {
        Ok(depth) => service.metrics().set_queue_depth(&depth),
        Err(e) => tracing::warn!(error = %e, "queue depth unavailable for /metrics"),
    }
    Ok(with_type(
        StatusCode::OK,
        service.metrics().encode().into(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ))
}
