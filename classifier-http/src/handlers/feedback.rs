//! Feedback: `POST /feedback` (a correction for one of the caller's completed jobs),
//! `GET /feedback/count`, and the admin export as JSON Lines.

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use classifier_core::job::JobId;
use classifier_core::service::LabelRef;

use crate::app::Ctx;
use crate::error::{Error, Result};
use crate::response::{json_response, Body};

/// Largest feedback body accepted.
const MAX_FEEDBACK_BODY: usize = 4096;
/// Entries read from the backend per round trip when exporting.
const EXPORT_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
struct FeedbackRequest {
    job_id: String,
    correct_label: LabelRef,
}

/// `POST /feedback` `{job_id, correct_label}` -> 201 `{stored: true, feedback_count}`.
pub async fn submit(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>> {
    let body: FeedbackRequest =
        crate::upload::read_json(req, MAX_FEEDBACK_BODY, ctx.state.config.body_read_timeout)
            .await?;
    let job_id: JobId = body.job_id.trim().parse().map_err(|_| {
        Error::Core(classifier_core::Error::JobNotFound(
            crate::router::truncate(&body.job_id, 64),
        ))
    })?;
    let caller = &ctx.caller;
    let count = ctx
        .state
        .service
        .add_feedback(job_id, &body.correct_label, caller.owner(), |owner| {
            caller.may_see(owner)
        })
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"stored": true, "job_id": job_id, "feedback_count": count}),
    ))
}

/// `GET /feedback/count` -> `{feedback_count}`.
pub async fn count(ctx: &Ctx) -> Result<Response<Body>> {
    let count = ctx.state.service.feedback_count().await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"feedback_count": count}),
    ))
}

/// `GET /admin/feedback/export`: every entry as JSON Lines (`application/x-ndjson`).
pub async fn export(ctx: &Ctx) -> Result<Response<Body>> {
    let lines = ctx.state.service.export_feedback_jsonl(EXPORT_PAGE).await?;
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"feedback.jsonl\"",
        )
        .body(Body::from(lines))
        .map_err(|e| Error::Internal(format!("response: {e}")))
}
