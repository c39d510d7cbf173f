//! Admin routes: queue depth and workers, dead letters (jobs and webhook events), retrying a
//! dead letter, reloading the model manifest.

use http::{Response, StatusCode};

use super::job_id;
use crate::app::Ctx;
use crate::error::{Error, Result};
use crate::response::{json_response, Body};

/// `GET /admin/queue`: depth by priority and state, limits, live workers.
pub async fn queue(ctx: &Ctx) -> Result<Response<Body>> {
    let backend = ctx.state.service.backend();
    let depth = backend.depth().await?;
    let workers = backend.workers().await?;
    let webhooks_pending = backend.pending_webhooks().await?;
    let webhooks_dead = backend.webhook_dead_letters().await?.len();
    ctx.state.service.metrics().set_queue_depth(&depth);
    let ready: serde_json::Map<String, serde_json::Value> = classifier_core::job::Priority::ALL
        .iter()
        .map(|p| (p.as_str().to_string(), depth.of(*p).into()))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "backend": backend.name(),
            "ready": ready,
            "total_ready": depth.total_ready(),
            "delayed": depth.delayed,
            "in_flight": depth.in_flight,
            "dead": depth.dead,
            "max_depth": backend.queue_config().max_depth,
            "workers_seen": workers.len(),
            "workers": workers,
            "webhooks": {"pending": webhooks_pending, "dead": webhooks_dead},
        }),
    ))
}

/// `GET /admin/dead-letters`: dead-lettered jobs and webhook events, oldest first.
pub async fn dead_letters(ctx: &Ctx) -> Result<Response<Body>> {
    let backend = ctx.state.service.backend();
    let jobs = backend.dead_letters().await?;
    let webhooks = backend.webhook_dead_letters().await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "count": jobs.len(),
            "dead_letters": jobs,
            "webhooks": {"count": webhooks.len(), "dead_letters": webhooks},
        }),
    ))
}

/// `POST /admin/dead-letters/{id}/retry`: a job id goes back to the ready queue, a webhook
/// event id (`evt_...`) back to the delivery outbox; 404 if not dead-lettered.
pub async fn retry(ctx: &Ctx) -> Result<Response<Body>> {
    let backend = ctx.state.service.backend();
    let raw = ctx.id.as_deref().unwrap_or("");
    if raw.starts_with("evt_") {
        if backend.retry_webhook_dead_letter(raw).await? {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"event_id": raw, "retried": true}),
            ));
        }
        return Err(Error::Core(classifier_core::Error::JobNotFound(format!(
            "{} (not in the webhook dead-letter list)",
            crate::router::truncate(raw, 64)
        ))));
    }
    let id = job_id(ctx)?;
    if backend.retry_dead_letter(id).await? {
        Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"job_id": id, "retried": true}),
        ))
    } else {
        Err(Error::Core(classifier_core::Error::JobNotFound(format!(
            "{id} (not in the dead-letter list)"
        ))))
    }
}

/// `POST /admin/models/reload`: re-read the manifest and swap models without downtime.
/// A manifest that does not parse or a model that does not load leaves everything as it
/// was and answers 422 with the reason.
pub async fn reload_models(ctx: &Ctx) -> Result<Response<Body>> {
    match ctx.state.service.reload_models().await {
        Ok(report) => Ok(json_response(
            StatusCode::OK,
            &serde_json::to_value(&report).map_err(|e| Error::Internal(e.to_string()))?,
        )),
        Err(e @ classifier_core::Error::ShuttingDown) => Err(Error::Core(e)),
        Err(e @ classifier_core::Error::BackendUnavailable(_)) => Err(Error::Core(e)),
        Err(e) => Err(Error::Validation(format!(
            "reload refused, nothing changed: {e}"
        ))),
    }
}
