//! The OpenAPI 3.1 document of the API as implemented (served at `/openapi.json` and
//! `/api/v1/openapi.json`). A unit test checks that every route of [`crate::router::ROUTES`]
//! is documented.
//!
//! The document describes the server that serves it: with API keys configured, every route
//! but the open ones requires one; with auth off, none does (a client generated from it, or
//! a conformance checker such as schemathesis, then sends no key). The 202 of a submission
//! carries OpenAPI links to the job's status, WebSocket, result, cancel and feedback, so a
//! stateful checker can follow a real job.

use serde_json::{json, Value};

fn error_ref(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// `response` (an OpenAPI response object) with `links` added.
fn with_links(mut response: Value, links: Value) -> Value {
    response["links"] = links;
    response
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"},
           "description": "Job id; malformed, expired and foreign ids are all 404 JOB_NOT_FOUND."})
}

fn include_metadata_param() -> Value {
    json!({"name": "include_metadata", "in": "query", "schema": {"type": "boolean"}})
}

/// The parameters of `/status/{id}/ws`: the id, `include_metadata` and the headers of a
/// WebSocket handshake (RFC 6455), without which the route answers 400.
fn websocket_params() -> Value {
    let header = |name: &str, schema: Value, description: &str| json!({"name": name, "in": "header", "required": true, "schema": schema, "description": description});
    json!([
        id_param(),
        include_metadata_param(),
        header(
            "Connection",
            json!({"type": "string", "enum": ["Upgrade"]}),
            "Upgrade (a token list that includes it, such as \"keep-alive, Upgrade\", is accepted too)"
        ),
        header(
            "Upgrade",
            json!({"type": "string", "enum": ["websocket"]}),
            "websocket (in any case)"
        ),
        header(
            "Sec-WebSocket-Version",
            json!({"type": "string", "enum": ["13"]}),
            "13"
        ),
        header(
            "Sec-WebSocket-Key",
            json!({"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
            "16 random bytes, base64"
        )
    ])
}

/// OpenAPI links from a response carrying a job id at `pointer` to the job's routes.
fn job_links(pointer: &str) -> Value {
    let to = |operation: &str, description: &str| json!({"operationId": operation, "parameters": {"id": format!("$response.body#{pointer}")}, "description": description});
    json!({
        "GetStatus": to("getStatus", "Poll the job's status"),
        "WatchStatus": to("watchStatus", "Follow the job over the WebSocket"),
        "GetResult": to("getResult", "Fetch the result once completed"),
        "CancelJob": to("cancelJob", "Cancel the job"),
        "SendFeedback": {"operationId": "sendFeedback", "requestBody": {"job_id": format!("$response.body#{pointer}"), "correct_label": 285},
            "description": "Correct the job's label once completed"}
    })
}

fn secured() -> Value {
    json!([{"ApiKey": []}, {"Bearer": []}])
}

fn options_properties() -> Value {
    json!({
        "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent", ""], "default": "normal",
            "description": "Empty or absent: normal."},
        "model_version": {"type": "string", "description": "A version of GET /models, or \"latest\"; empty or absent: latest."},
        "callback_url": {"type": "string", "anyOf": [{"format": "uri"}, {"const": ""}],
            "description": "http(s) URL notified on a terminal state; its host must resolve to a public address (422 otherwise). Empty or absent: none."},
        "metadata": {"type": "string", "maxLength": 1024,
            "description": "A JSON object, at most 1024 bytes (422 otherwise); returned with include_metadata=true. Empty or absent: none."}
    })
}

fn multipart(file_field: &str, many: bool) -> Value {
    let mut props = options_properties();
    props[file_field] = if many {
        json!({"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": 10})
    } else {
        json!({"type": "string", "format": "binary"})
    };
    json!({"required": true, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [file_field], "properties": props}}}})
}

/// The form of `/predict`: a file and `model_version` (it makes no job, so the other options
/// are unknown fields there, and ignored).
fn predict_form() -> Value {
    let mut form = multipart("file", false);
    if let Some(props) =
        form["content"]["multipart/form-data"]["schema"]["properties"].as_object_mut()
    {
        props.retain(|name, _| name == "file" || name == "model_version");
    }
    form
}

fn submit_errors() -> Value {
    json!({
        "400": error_ref("INVALID_IMAGE: not an accepted image, corrupt, truncated, too small or too large in pixels"),
        "401": error_ref("UNAUTHORIZED: missing or unknown API key"),
        "408": error_ref("REQUEST_TIMEOUT: the body stopped arriving"),
        "413": error_ref("PAYLOAD_TOO_LARGE: a file above MAX_FILE_SIZE (exactly the limit is accepted)"),
        "415": error_ref("UNSUPPORTED_MEDIA_TYPE: not multipart/form-data"),
        "422": error_ref("VALIDATION_ERROR: bad priority, metadata, callback_url, unknown model_version, missing or duplicate file"),
        "429": error_ref("RATE_LIMITED (Retry-After, X-RateLimit-*)"),
        "503": error_ref("SERVICE_UNAVAILABLE: queue full or backend down (Retry-After)")
    })
}

fn job_errors() -> Value {
    json!({"401": error_ref("UNAUTHORIZED"), "404": error_ref("JOB_NOT_FOUND"), "429": error_ref("RATE_LIMITED")})
}

/// The errors of the status routes: those of every job route, and a bad `include_metadata`.
fn status_errors() -> Value {
    merge(
        job_errors(),
        json!({"422": error_ref("VALIDATION_ERROR: include_metadata is not true or false")}),
    )
}

fn admin_errors() -> Value {
    json!({"401": error_ref("UNAUTHORIZED: no key"), "403": error_ref("FORBIDDEN: not an admin key"), "429": error_ref("RATE_LIMITED")})
}

fn merge(a: Value, b: Value) -> Value {
    let mut a = a;
    if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
    a
}

fn health_get(summary: &str) -> Value {
    json!({"get": {"summary": summary, "tags": ["health"], "security": [], "responses": {
        "200": ok("Serving", json!({"$ref": "#/components/schemas/Health"})),
        "503": ok("Unhealthy / not ready", json!({"$ref": "#/components/schemas/Health"}))}}})
}

/// The document of a server with authentication on (API keys configured), without the list
/// of its model versions.
pub fn document() -> Value {
    document_for(true, &[])
}

/// The document of a server whose authentication is on (`auth_enabled`) or off, serving
/// `model_versions` (none given: `model_version` is any string).
///
/// - With auth off no route requires a key, so the document declares no security
///   requirement and no scheme.
/// - With versions, `model_version` is one of `latest` and those versions: anything else is
///   the 422 that lists them.
///
/// ```
/// let versions = ["mobilenet".to_string()];
/// let open = classifier_http::openapi::document_for(false, &versions);
/// assert!(open.get("security").is_none());
/// let form = &open["paths"]["/api/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"];
/// assert_eq!(form["schema"]["properties"]["model_version"]["enum"], serde_json::json!(["latest", "", "mobilenet"]));
/// let secured = classifier_http::openapi::document_for(true, &[]);
/// assert!(secured["security"].is_array());
/// ```
pub fn document_for(auth_enabled: bool, model_versions: &[String]) -> Value {
    let mut doc = full_document();
    if !auth_enabled {
        if let Some(doc) = doc.as_object_mut() {
            doc.remove("security");
        }
        if let Some(components) = doc["components"].as_object_mut() {
            components.remove("securitySchemes");
        }
        if let Some(description) = doc["info"]["description"].as_str() {
            let description = format!(
                "{description} Authentication is off on this server (no API_KEYS or ADMIN_API_KEYS): no route needs a key."
            );
            doc["info"]["description"] = Value::String(description);
        }
    }
    if !model_versions.is_empty() {
        let allowed: Vec<&str> = ["latest", ""]
            .into_iter()
            .chain(model_versions.iter().map(String::as_str))
            .collect();
        for path in [
            "/api/v1/classify",
            "/api/v1/classify/batch",
            "/api/v1/predict",
        ] {
            let form =
                &mut doc["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"];
            form["schema"]["properties"]["model_version"]["enum"] = json!(allowed);
        }
    }
    doc
}

fn full_document() -> Value {
    let status_schema = json!({"$ref": "#/components/schemas/Status"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Image classification service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Asynchronous image classification with real ONNX models. Every response carries X-Request-ID (echoed if sent). Errors are {error, detail, timestamp, path, request_id}; 409 bodies add status. Rate-limited routes return X-RateLimit-Limit (bucket size), X-RateLimit-Remaining and X-RateLimit-Reset (seconds until full)."
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/": {"get": {"summary": "Demo page: upload a photo and follow it over the WebSocket", "tags": ["docs"], "security": [],
                "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["health"], "security": [],
                "responses": {"200": {"description": "OpenMetrics text", "content": {"application/openmetrics-text": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "tags": ["docs"], "security": [],
                "responses": {"200": ok("OpenAPI 3.1", json!({"type": "object"}))}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document (rate-limited)", "tags": ["docs"], "security": [],
                "responses": {"200": ok("OpenAPI 3.1", json!({"type": "object"})), "429": error_ref("RATE_LIMITED")}}},
            "/api/v1/health": health_get("Overall health: healthy, degraded (200) or unhealthy (503)"),
            "/api/v1/health/live": health_get("Liveness: 200 while the process serves"),
            "/api/v1/health/ready": health_get("Readiness: 503 when the backend is down or the default model is not loaded"),
            "/api/v1/models": {"get": {"summary": "Model versions, the default, loaded or not, input size", "tags": ["models"],
                "responses": merge(json!({"200": ok("Models", json!({"type": "object", "properties": {
                    "default": {"type": "string"}, "latest_weights": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "A/B split of \"latest\" (version -> weight); empty when latest is the default"},
                    "models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}}))}),
                    json!({"401": error_ref("UNAUTHORIZED"), "429": error_ref("RATE_LIMITED")}))}},
            "/api/v1/classify": {"post": {"operationId": "classify", "summary": "Submit one image; returns at once", "tags": ["jobs"],
                "requestBody": multipart("file", false),
                "responses": merge(json!({"202": with_links(json!({"description": "Accepted",
                    "headers": {"Location": {"schema": {"type": "string"}, "description": "/api/v1/status/{job_id}"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ticket"}}}}), job_links("/job_id"))}), submit_errors())}},
            "/api/v1/classify/batch": {"post": {"operationId": "classifyBatch", "summary": "Submit 1..=MAX_BATCH_FILES images", "tags": ["jobs"],
                "requestBody": multipart("files", true),
                "responses": merge(json!({
                    "202": with_links(ok("At least one accepted; per-file jobs or errors", json!({"type": "object", "properties": {
                        "accepted": {"type": "integer"}, "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/BatchItem"}}}})),
                        job_links("/jobs/0/job_id")),
                    "400": error_ref("BATCH_REJECTED: no file accepted (the body adds `jobs` with each file's error)")}),
                    merge(submit_errors(), json!({"422": error_ref("VALIDATION_ERROR: no files, more than MAX_BATCH_FILES, bad option")})))}},
            "/api/v1/predict": {"post": {"operationId": "predict", "summary": "Classify one image synchronously", "tags": ["jobs"],
                "requestBody": predict_form(),
                "responses": merge(json!({"200": ok("Predictions", json!({"type": "object", "properties": {
                    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                    "processing_time": {"type": "number"}, "model_version": {"type": "string"},
                    "image_metadata": {"$ref": "#/components/schemas/ImageMetadata"}}}))}), submit_errors())}},
            "/api/v1/status/{id}": {"get": {"operationId": "getStatus", "summary": "Job status", "tags": ["jobs"],
                "parameters": [id_param(), include_metadata_param()],
                "responses": merge(json!({"200": ok("Status document", status_schema.clone())}), status_errors())}},
            "/api/v1/status/{id}/ws": {"get": {"operationId": "watchStatus", "summary": "WebSocket: one status document (same JSON as GET /status) per change, pushed; closed with 1000 after a terminal state, 1001 at server shutdown, 1009 if the client sends a message over WS_MAX_MESSAGE_SIZE", "tags": ["jobs"],
                "parameters": websocket_params(),
                "responses": merge(json!({"101": {"description": "Switching Protocols (WebSocket)"},
                    "400": error_ref("BAD_REQUEST: not a WebSocket handshake")}), status_errors())}},
            "/api/v1/result/{id}": {"get": {"operationId": "getResult", "summary": "Result of a completed job", "tags": ["jobs"], "parameters": [id_param()],
                "responses": merge(json!({"200": ok("Result", json!({"$ref": "#/components/schemas/Result"})),
                    "409": error_ref("JOB_NOT_COMPLETED / JOB_FAILED / JOB_CANCELLED (body adds status)")}), job_errors())}},
            "/api/v1/jobs/{id}": {"delete": {"operationId": "cancelJob", "summary": "Cancel a pending or processing job", "tags": ["jobs"], "parameters": [id_param()],
                "responses": merge(json!({"200": ok("Cancelled", json!({"type": "object", "properties": {
                    "job_id": {"type": "string"}, "status": {"const": "cancelled"}}})),
                    "409": error_ref("CONFLICT: the job already finished (body adds status)")}), job_errors())}},
            "/api/v1/admin/queue": {"get": {"summary": "Queue depth by priority and state, workers", "tags": ["admin"],
                "responses": merge(json!({"200": ok("Queue", json!({"type": "object",
                    "required": ["backend", "ready", "total_ready", "delayed", "in_flight", "dead", "max_depth", "workers_seen", "workers", "webhooks"],
                    "properties": {
                    "backend": {"type": "string", "description": "memory or redis"},
                    "ready": {"type": "object", "description": "ready jobs by priority", "additionalProperties": {"type": "integer"}},
                    "total_ready": {"type": "integer"}, "delayed": {"type": "integer", "description": "waiting out a retry delay"},
                    "in_flight": {"type": "integer"}, "dead": {"type": "integer"}, "max_depth": {"type": "integer"},
                    "workers_seen": {"type": "integer", "description": "workers that reported in the last minute"},
                    "workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}},
                    "webhooks": {"type": "object", "properties": {"pending": {"type": "integer"}, "dead": {"type": "integer"}}}}}))}), admin_errors())}},
            "/api/v1/admin/dead-letters": {"get": {"summary": "Dead-lettered jobs and webhook events, oldest first", "tags": ["admin"],
                "responses": merge(json!({"200": ok("Dead letters", json!({"type": "object", "properties": {
                    "count": {"type": "integer"}, "dead_letters": {"type": "array", "items": {"type": "object"}},
                    "webhooks": {"type": "object", "properties": {"count": {"type": "integer"},
                        "dead_letters": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookDelivery"}}}}}}))}), admin_errors())}},
            "/api/v1/admin/dead-letters/{id}/retry": {"post": {"summary": "Requeue a dead letter: a job id goes back to the queue, a webhook event id (evt_...) back to delivery", "tags": ["admin"],
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": "job id or webhook event id"}],
                "responses": merge(json!({"200": ok("Requeued", json!({"type": "object"})), "404": error_ref("JOB_NOT_FOUND: not dead-lettered")}), admin_errors())}},
            "/api/v1/admin/models/reload": {"post": {"summary": "Re-read the model manifest and swap models with zero downtime (the new default and A/B arms load before the swap; jobs in flight finish on their model)", "tags": ["admin", "models"],
                "responses": merge(json!({"200": ok("What changed", json!({"type": "object", "properties": {
                    "versions": {"type": "array", "items": {"type": "string"}}, "default": {"type": "string"},
                    "added": {"type": "array", "items": {"type": "string"}}, "removed": {"type": "array", "items": {"type": "string"}},
                    "changed": {"type": "array", "items": {"type": "string"}}, "loaded": {"type": "array", "items": {"type": "string"}}}})),
                    "422": error_ref("VALIDATION_ERROR: the manifest does not parse or a model does not load; nothing changed")}), admin_errors())}},
            "/api/v1/admin/feedback/export": {"get": {"summary": "Every feedback entry as JSON Lines, oldest first, for retraining", "tags": ["admin", "feedback"],
                "responses": merge(json!({"200": {"description": "One JSON object per line: job_id, predicted {class_id, class_name, confidence}, correct {class_id, class_name}, model_version, image_sha256, timestamp",
                    "content": {"application/x-ndjson": {}}}}), admin_errors())}},
            "/api/v1/feedback": {"post": {"operationId": "sendFeedback", "summary": "Send the correct label of one of your completed jobs (one entry per job; sending again replaces it)", "tags": ["feedback"],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["job_id", "correct_label"], "properties": {
                    "job_id": {"type": "string", "format": "uuid"},
                    "correct_label": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}], "description": "class id, or class name of the job's model"}}}}}},
                "responses": merge(json!({"201": ok("Stored", json!({"type": "object", "properties": {
                    "stored": {"const": true}, "job_id": {"type": "string"}, "feedback_count": {"type": "integer"}}})),
                    "404": error_ref("JOB_NOT_FOUND: unknown, expired or someone else's job"),
                    "413": error_ref("PAYLOAD_TOO_LARGE: body over 4 KiB"),
                    "415": error_ref("UNSUPPORTED_MEDIA_TYPE: not application/json"),
                    "422": error_ref("VALIDATION_ERROR: bad JSON, job not completed, unknown or ambiguous label")}),
                    json!({"401": error_ref("UNAUTHORIZED"), "429": error_ref("RATE_LIMITED")}))}},
            "/api/v1/feedback/count": {"get": {"summary": "How many jobs have feedback", "tags": ["feedback"],
                "responses": merge(json!({"200": ok("Count", json!({"type": "object", "properties": {"feedback_count": {"type": "integer"}}}))}),
                    json!({"401": error_ref("UNAUTHORIZED"), "429": error_ref("RATE_LIMITED")}))}}
        },
        "security": secured(),
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail", "timestamp", "path", "request_id"], "properties": {
                    "error": {"type": "string"}, "detail": {"type": "string"}, "timestamp": {"type": "string", "format": "date-time"},
                    "path": {"type": "string"}, "request_id": {"type": "string"},
                    "status": {"type": "string", "description": "409 only: the job's status"},
                    "jobs": {"type": "array", "description": "batch 400 only: per-file errors"}}},
                "Ticket": {"type": "object", "properties": {
                    "job_id": {"type": "string", "format": "uuid"}, "status": {"enum": ["pending", "completed"], "description": "completed when answered from the result cache"},
                    "created_at": {"type": "string", "format": "date-time"}, "estimated_completion": {"type": "string", "format": "date-time"},
                    "priority": {"type": "string"}, "model_version": {"type": "string"}}},
                "BatchItem": {"type": "object", "properties": {"index": {"type": "integer"}, "filename": {"type": ["string", "null"]},
                    "job_id": {"type": "string"}, "status": {"type": "string"},
                    "error": {"type": "object", "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}}}},
                "Status": {"type": "object", "required": ["job_id", "status", "progress", "stage", "created_at", "updated_at", "error_message"], "properties": {
                    "job_id": {"type": "string"}, "status": {"enum": ["pending", "processing", "completed", "failed", "cancelled"]},
                    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                    "stage": {"enum": ["initializing", "preprocessing", "inference", "postprocessing", "completed"]},
                    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
                    "error_message": {"type": ["string", "null"]}, "metadata": {"type": ["object", "null"]}}},
                "Prediction": {"type": "object", "properties": {"class_name": {"type": "string"}, "confidence": {"type": "number"}, "class_id": {"type": "integer"}}},
                "ImageMetadata": {"type": "object", "properties": {"format": {"enum": ["jpeg", "png", "webp", "gif", "bmp"]},
                    "width": {"type": "integer"}, "height": {"type": "integer"}, "file_size": {"type": "integer"}}},
                "Result": {"type": "object", "properties": {"job_id": {"type": "string"},
                    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                    "processing_time": {"type": "number"}, "model_version": {"type": "string"},
                    "image_metadata": {"$ref": "#/components/schemas/ImageMetadata"},
                    "created_at": {"type": "string", "format": "date-time"}, "completed_at": {"type": "string", "format": "date-time"}}},
                "Model": {"type": "object", "properties": {"version": {"type": "string"}, "default": {"type": "boolean"},
                    "loaded": {"type": "boolean"}, "input_width": {"type": "integer"}, "input_height": {"type": "integer"}, "description": {"type": "string"}}},
                "Worker": {"type": "object", "required": ["id", "last_seen", "in_flight"], "properties": {
                    "id": {"type": "string"}, "last_seen": {"type": "string", "format": "date-time"},
                    "in_flight": {"type": "integer", "description": "jobs it holds right now"},
                    "default_model": {"type": "string", "description": "the version \"latest\" means in its process (shows that a model reload reached it); empty if it did not say"},
                    "models_loaded": {"type": "array", "items": {"type": "string"}, "description": "the versions its process holds loaded"}}},
                "WebhookDelivery": {"type": "object", "properties": {"event_id": {"type": "string"}, "job_id": {"type": "string"},
                    "url": {"type": "string"}, "body": {"type": "string", "description": "the exact JSON body sent"}, "attempts": {"type": "integer"},
                    "next_attempt_at": {"type": "string", "format": "date-time"}, "created_at": {"type": "string", "format": "date-time"},
                    "last_error": {"type": ["string", "null"]}}},
                "Health": {"type": "object", "properties": {"status": {"enum": ["healthy", "degraded", "unhealthy"]},
                    "timestamp": {"type": "string"}, "version": {"type": "string"}, "uptime": {"type": "number"},
                    "services": {"type": "object", "properties": {"queue": {"type": "object"}, "workers": {"type": "object"}, "models": {"type": "object"}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{Access, ROUTES};

    #[test]
    fn every_route_is_documented_with_its_method() {
        let doc = document();
        for r in ROUTES {
            let op = &doc["paths"][r.pattern][r.method.to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} missing from the OpenAPI document",
                r.method,
                r.pattern
            );
            assert!(
                op["responses"].is_object(),
                "{} {} has no responses",
                r.method,
                r.pattern
            );
            let open = op
                .get("security")
                .is_some_and(|s| s.as_array().is_some_and(|a| a.is_empty()));
            assert_eq!(
                open,
                r.access == Access::Open,
                "security of {} {}",
                r.method,
                r.pattern
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|p| {
                p.values()
                    .map(|v| v.as_object().map_or(0, |o| o.len()))
                    .sum()
            })
            .unwrap_or(0);
        assert_eq!(
            documented,
            ROUTES.len(),
            "the document lists routes that are not served"
        );
    }
}
