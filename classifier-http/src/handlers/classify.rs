//! `POST /classify` and `POST /classify/batch`: validate the form, submit, answer 202.

use classifier_core::job::{Priority, SubmitOptions};
use classifier_core::service::JobTicket;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::Ctx;
use crate::callback::validate_callback_url;
use crate::error::{Error, Result};
use crate::response::{json_response, Body};
use crate::upload::{self, Limits, Mode, OptionFields};

/// Largest `metadata` object, serialized as sent.
pub const MAX_METADATA_BYTES: usize = 1024;

/// The upload limits of this server.
pub fn limits(ctx: &Ctx) -> Limits {
    Limits {
        max_file_size: ctx.state.config.max_file_size,
        body_read_timeout: ctx.state.config.body_read_timeout,
    }
}

/// `model_version` checked against the manifest (`latest`, empty or absent = the default).
/// The value must be a version exactly, as the OpenAPI document's enum lists them: a padded
/// `" latest"` is a 422 like any other unknown version.
pub fn check_model_version(ctx: &Ctx, requested: Option<String>) -> Result<Option<String>> {
    let Some(v) = requested.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v == "latest" {
        return Ok(Some(v));
    }
    let models = ctx.state.service.models();
    if models.iter().any(|m| m.version == v) {
        return Ok(Some(v));
    }
    let available: Vec<String> = models.into_iter().map(|m| m.version).collect();
    Err(Error::Validation(format!(
        "unknown model_version {:?}; available versions: latest, {}",
        crate::router::truncate(&v, 64),
        available.join(", ")
    )))
}

/// The submit options from the form's option fields, each checked (422 on a bad one). An
/// empty field is the same as an absent one (an HTML form sends its empty inputs); values are
/// taken exactly as sent, not trimmed, as the OpenAPI document describes them.
pub async fn submit_options(ctx: &Ctx, fields: OptionFields) -> Result<SubmitOptions> {
    let priority = match fields.priority.as_deref() {
        None | Some("") => Priority::default(),
        Some(p) => Priority::ALL
            .into_iter()
            .find(|known| known.as_str() == p)
            .ok_or_else(|| {
                Error::Validation(format!(
                    "priority must be one of low, normal, high, urgent; got {:?}",
                    crate::router::truncate(p, 32)
                ))
            })?,
    };
    let model_version = check_model_version(ctx, fields.model_version)?;
    let callback_url = match fields.callback_url {
        None => None,
        Some(u) if u.is_empty() => None,
        Some(u) if u.trim() != u => {
            return Err(Error::Validation(
                "callback_url has leading or trailing whitespace".into(),
            ))
        }
        Some(u) => {
            validate_callback_url(&u, ctx.state.config.webhook.allow_private)
                .await
                .map_err(Error::Validation)?;
            Some(u)
        }
    };
    let metadata = match fields.metadata {
        None => None,
        Some(m) if m.is_empty() => None,
        Some(m) => {
            if m.len() > MAX_METADATA_BYTES {
                return Err(Error::Validation(format!(
                    "metadata is {} bytes; at most {MAX_METADATA_BYTES} bytes are accepted",
                    m.len()
                )));
            }
            let value: serde_json::Value = serde_json::from_str(&m)
                .map_err(|e| Error::Validation(format!("metadata is not valid JSON: {e}")))?;
            if !value.is_object() {
                return Err(Error::Validation("metadata must be a JSON object".into()));
            }
            Some(value)
        }
    };
    Ok(SubmitOptions {
        priority,
        model_version,
        callback_url,
        metadata,
        owner: ctx.caller.owner(),
    })
}

fn ticket_json(ticket: &JobTicket) -> Result<serde_json::Value> {
    serde_json::to_value(ticket)
        .map_err(|e| Error::Internal(format!("cannot serialize a ticket: {e}")))
}

/// One image: 202 with the ticket and `Location: /api/v1/status/{id}`.
pub async fn submit(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>> {
    let mut form = upload::read(req, Mode::Single, limits(ctx)).await?;
    let options = submit_options(ctx, std::mem::take(&mut form.options)).await?;
    let Some(file) = form.files.pop() else {
        return Err(Error::Validation("the form has no \"file\" field".into()));
    };
    let ticket = ctx.state.service.submit(file.data?, options).await?;
    let mut response = json_response(StatusCode::ACCEPTED, &ticket_json(&ticket)?);
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/status/{}", ticket.job_id)) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// 1..=`max_batch_files` images: 202 with one entry per file (a job or an error); 400 if
/// none was accepted (503 if none was accepted because the service is unavailable).
pub async fn submit_batch(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>> {
    let mode = Mode::Batch {
        max_files: ctx.state.config.max_batch_files,
    };
    let mut form = upload::read(req, mode, limits(ctx)).await?;
    let options = submit_options(ctx, std::mem::take(&mut form.options)).await?;
    let submissions = form.files.into_iter().map(|file| {
        let options = options.clone();
        let service = ctx.state.service.clone();
        async move {
            let outcome = match file.data {
                Ok(bytes) => service.submit(bytes, options).await.map_err(Error::from),
                Err(e) => Err(e),
            };
            (file.index, file.filename, outcome)
        }
    });
    let outcomes = futures_util::future::join_all(submissions).await;
    let mut jobs = Vec::with_capacity(outcomes.len());
    let mut accepted = 0usize;
    let mut first_unavailable = None;
    let mut all_unavailable = true;
    for (index, filename, outcome) in outcomes {
        match outcome {
            Ok(ticket) => {
                accepted += 1;
                all_unavailable = false;
                jobs.push(serde_json::json!({
                    "index": index, "filename": filename,
                    "job_id": ticket.job_id, "status": ticket.status,
                }));
            }
            Err(e) => {
                if e.status() == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(error = %e, index, "batch file failed");
                }
                let detail = if e.status() == StatusCode::INTERNAL_SERVER_ERROR {
                    "an internal error occurred".to_string()
                } else {
                    e.to_string()
                };
                jobs.push(serde_json::json!({
                    "index": index, "filename": filename,
                    "error": {"error": e.code(), "detail": detail},
                }));
                if e.status() == StatusCode::SERVICE_UNAVAILABLE {
                    first_unavailable.get_or_insert(e);
                } else {
                    all_unavailable = false;
                }
            }
        }
    }
    if accepted == 0 {
        return Err(match first_unavailable {
            Some(e) if all_unavailable => e,
            _ => Error::BatchRejected {
                jobs: serde_json::Value::Array(jobs),
            },
        });
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &serde_json::json!({"jobs": jobs, "accepted": accepted}),
    ))
}
