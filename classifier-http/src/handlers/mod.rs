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

/// A boolean query parameter: `name=true` or a bare `name` is true, `name=false` or no `name`
/// is false (the last occurrence wins). Any other value is a 422: the OpenAPI document
/// declares the parameter a boolean, so `name=1` or `name=yes` is not silently read as false.
pub fn query_flag(query: Option<&str>, name: &str) -> Result<bool> {
    let mut flag = false;
    for pair in query.unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != name {
            continue;
        }
        flag = match value {
            "true" => true,
            "false" => false,
            other => {
                return Err(Error::Validation(format!(
                    "{name} must be true or false; got {:?}",
                    crate::router::truncate(other, 32)
                )))
            }
        };
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::query_flag;

    #[test]
    fn a_flag_is_true_or_false_and_anything_else_is_refused() {
        let flag = |q: &str| query_flag(Some(q), "include_metadata").map_err(|e| e.to_string());
        assert_eq!(query_flag(None, "include_metadata").ok(), Some(false));
        assert_eq!(flag("").ok(), Some(false));
        assert_eq!(flag("other=1").ok(), Some(false));
        assert_eq!(flag("include_metadata=true").ok(), Some(true));
        assert_eq!(flag("include_metadata").ok(), Some(true));
        assert_eq!(flag("include_metadata=false").ok(), Some(false));
        assert_eq!(flag("a=b&include_metadata=true").ok(), Some(true));
        assert_eq!(
            flag("include_metadata=true&include_metadata=false").ok(),
            Some(false)
        );
        for bad in ["1", "0", "yes", "TRUE", "", "tru"] {
            let err = flag(&format!("include_metadata={bad}")).expect_err(bad);
            assert!(
                err.contains("include_metadata must be true or false"),
                "{bad}: {err}"
            );
        }
    }
}
