//! What every request handler shares.

use std::sync::Arc;
use std::time::Instant;

use classifier_core::service::Service;
use tokio::sync::{mpsc, watch};

use crate::auth::Auth;
use crate::config::HttpConfig;
use crate::rate_limit::RateLimitStore;

/// Shared state of one server.
pub struct AppState {
    /// The job service.
    pub service: Service,
    /// HTTP settings.
    pub config: HttpConfig,
    /// Configured keys.
    pub auth: Auth,
    /// Token buckets.
    pub limiter: Arc<dyn RateLimitStore>,
    /// When the server started (for `uptime`).
    pub started: Instant,
    /// Becomes `true` when the server shuts down (WebSocket tasks close with 1001).
    pub shutting_down: watch::Receiver<bool>,
    /// Held by each WebSocket task: the server waits for all clones to drop at shutdown.
    pub ws_tasks: mpsc::Sender<()>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}
