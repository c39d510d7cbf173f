//! `POST /predict`: synchronous classification of one `file`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::classify::{check_model_version, limits};
use crate::app::Ctx;
use crate::error::Result;
use crate::response::{json_response, Body};
use crate::upload::{self, Mode};

/// Classify now; 200 `{predictions, processing_time, model_version, image_metadata}`.
pub async fn predict(ctx: &Ctx, req: Request<Incoming>) -> Result<Response<Body>> {
    let mut form = upload::read(req, Mode::Single, limits(ctx)).await?;
    let model_version = check_model_version(ctx, form.options.model_version.take())?;
    let Some(file) = form.files.pop() else {
        return Err(crate::Error::Validation(
            "the form has no \"file\" field".into(),
        ));
    };
    let data = file.data?;
    let classification = ctx
        .state
        .service
        .predict(data, model_version.as_deref())
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "predictions": classification.predictions,
            "processing_time": classification.timings.total().as_secs_f64(),
            "model_version": classification.model_version,
            "image_metadata": classification.image_metadata,
        }),
    ))
}
