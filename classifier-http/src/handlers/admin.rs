//! Admin routes: queue depth and workers, dead letters, retrying a dead letter.

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
            "workers": workers,
        }),
    ))
}

/// `GET /admin/dead-letters`, oldest first.
pub async fn dead_letters(ctx: &Ctx) -> Result<Response<Body>> {
    let list = ctx.state.service.backend().dead_letters().await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"count": list.len(), "dead_letters": list}),
    ))
}

/// `POST /admin/dead-letters/{id}/retry`: back to the ready queue; 404 if not dead-lettered.
pub async fn retry(ctx: &Ctx) -> Result<Response<Body>> {
    let id = job_id(ctx)?;
    if ctx.state.service.backend().retry_dead_letter(id).await? {
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
