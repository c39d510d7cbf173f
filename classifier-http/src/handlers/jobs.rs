//! `GET /status/{id}`, `GET /result/{id}`, `DELETE /jobs/{id}`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{job_id, query_flag, visible_record};
use crate::app::Ctx;
use crate::error::Result;
use crate::response::{json_response, Body};

/// The status document (`?include_metadata=true` adds the client's metadata).
pub async fn status(ctx: &Ctx, req: &Request<Incoming>) -> Result<Response<Body>> {
    let id = job_id(ctx)?;
    let include = query_flag(req.uri().query(), "include_metadata")?;
    let record = visible_record(ctx, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &record.status_document(include),
    ))
}

/// The result of a completed job; 409 with the status otherwise.
pub async fn result(ctx: &Ctx) -> Result<Response<Body>> {
    let id = job_id(ctx)?;
    visible_record(ctx, id).await?;
    let result = ctx.state.service.result(id).await?;
    let body = serde_json::to_value(&result)
        .map_err(|e| crate::Error::Internal(format!("cannot serialize a result: {e}")))?;
    Ok(json_response(StatusCode::OK, &body))
}

/// Cancel a pending or processing job; 409 if it already finished.
pub async fn cancel(ctx: &Ctx) -> Result<Response<Body>> {
    let id = job_id(ctx)?;
    visible_record(ctx, id).await?;
    let record = ctx.state.service.cancel(id).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"job_id": record.id, "status": record.status}),
    ))
}
