//! `GET /models`: every manifest version, the default, loaded or not, input size.

use http::{Response, StatusCode};

use crate::app::Ctx;
use crate::response::{json_response, Body};

/// The model list.
pub fn list(ctx: &Ctx) -> Response<Body> {
    let models = ctx.state.service.models();
    let default = models.iter().find(|m| m.default).map(|m| m.version.clone());
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "default": default,
            "latest_weights": ctx.state.service.registry().latest_weights(),
            "models": models,
        }),
    )
}
