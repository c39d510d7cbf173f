//! Endpoint handlers, one module per group. Each returns `Result<Response>`; errors are
//! turned into responses by [`crate::error::Error::to_response`] only.

pub mod admin;
pub mod classify;
pub mod feedback;
pub mod health;
pub mod jobs;
pub mod models;
pub mod pages;
pub mod predict;

use classifier_core::job::{JobId, JobRecord};

use crate::app::Ctx;
use crate::error::{Error, Result};

/// The `{id}` of the route as a job id; malformed ids are `JOB_NOT_FOUND` (404), as the
/// contract says, so ids cannot be told apart from expired ones.
pub fn job_id(ctx: &Ctx) -> Result<JobId> {
    let raw = ctx.id.as_deref().unwrap_or("");
    raw.parse::<JobId>().map_err(|_| {
        Error::Core(classifier_core::Error::JobNotFound(
            crate::router::truncate(raw, 64),
        ))
    })
}

/// The job's record if the caller may see it; `JOB_NOT_FOUND` otherwise (foreign jobs are
/// indistinguishable from missing ones).
pub async fn visible_record(ctx: &Ctx, id: JobId) -> Result<JobRecord> {
    let record = ctx.state.service.status(id).await?;
    if ctx.caller.may_see(record.owner.as_deref()) {
        Ok(record)
    } else {
        Err(Error::Core(classifier_core::Error::JobNotFound(
            id.to_string(),
        )))
    }
}

/// True if the query string has `name=true` (or `1`, `yes`).
pub fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        k == name && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
    })
}
