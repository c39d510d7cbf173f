//! `classifier-http`: the hyper 1.x adapter for the classifier job service.
//!
//! It serves the API contract of `DESIGN.md` section 4 over a [`classifier_core::service::Service`]:
//! submissions (multipart, streamed under a size limit), status polling and WebSocket push,
//! results, cancellation, synchronous prediction, models, health, admin, Prometheus metrics,
//! the OpenAPI document and a small demo page.
//!
//! Each module has one job:
//!
//! - [`config`]: every setting, from environment variables and CLI flags;
//! - [`server`]: the accept loop, connection cap, timeouts, graceful shutdown ([`serve`]);
//! - [`router`]: the route table (data) and path matching;
//! - [`app`]: the per-request pipeline (request id, auth, rate limit, dispatch, metrics);
//! - [`error`]: the one place errors become status codes and the JSON error shape;
//! - [`request_id`], [`auth`], [`rate_limit`], [`upload`], [`callback`]: request concerns;
//! - [`handlers`]: one module per group of endpoints; [`ws`]: WebSocket status push;
//! - [`webhook`]: the dispatcher that delivers signed webhooks from the backend's outbox;
//! - [`openapi`]: the OpenAPI 3.1 document; [`logging`]: tracing setup.

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod app;
pub mod auth;
pub mod callback;
pub mod config;
pub mod error;
pub mod handlers;
pub mod logging;
pub mod openapi;
pub mod rate_limit;
pub mod request_id;
pub mod response;
pub mod router;
pub mod server;
pub mod state;
pub mod upload;
pub mod webhook;
pub mod ws;

pub use config::{Config, HttpConfig, LogFormat};
pub use error::{Error, Result};
pub use rate_limit::{InMemoryRateLimiter, RateDecision, RateLimit, RateLimitStore};
pub use server::{serve, Server};
