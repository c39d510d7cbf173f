//! Webhook delivery: the dispatcher that sends the events of the durable outbox.
//!
//! When a job with a `callback_url` completes or fails, the worker pipeline enqueues one
//! [`WebhookDelivery`](classifier_core::backend::WebhookDelivery) in the backend's
//! [`WebhookOutbox`](classifier_core::backend::WebhookOutbox) (in Redis in production, so it
//! survives restarts and is shared by every server). Every server process runs one
//! [`Dispatcher`] (started and stopped by [`crate::server`]) that loops:
//!
//! 1. claim up to [`WebhookConfig::batch`] due deliveries (a claim is a lease: a dispatcher
//!    that dies mid-delivery loses nothing, the delivery comes back when the lease ends);
//! 2. attempt each one, bounded by [`WebhookConfig::timeout`]: check the URL again with the
//!    SSRF guard ([`crate::callback`]), resolve the host once, refuse it if any address is
//!    forbidden, connect to the checked address (so DNS rebinding cannot slip in), TLS for
//!    https (webpki roots, ring), and POST the exact stored body, signed ([`Secret::sign`]):
//!    `X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`,
//!    `X-Signature-Timestamp`, `X-Event-Id` (the same on every attempt), `Content-Type:
//!    application/json`, `User-Agent: classifier-webhooks/<version>`;
//! 3. record the outcome: 2xx completes it; a network error, timeout, 5xx or 429 reschedules
//!    it after an exponential backoff with full jitter ([`Backoff`]) or the receiver's
//!    `Retry-After` (seconds or HTTP date, capped at [`WebhookConfig::retry_max`]), whichever
//!    is later, until [`WebhookConfig::max_attempts`]; any other status (and a URL that is
//!    refused) dead-letters it at once, as does the last failed attempt.
//!
//! A circuit breaker per destination `host:port` ([`Breakers`]) stops hammering a host that
//! keeps failing: after [`WebhookConfig::breaker_threshold`] consecutive failures its
//! deliveries are rescheduled for the end of the cool-down without an attempt being counted,
//! then one trial goes through.
//!
//! Without `WEBHOOK_SECRET` the dispatcher signs with a random secret generated at start
//! and logs a warning: receivers cannot verify such signatures, and every process (and
//! every restart) has its own. Set it in production, the same on every server.

mod backoff;
mod breaker;
mod dispatcher;
mod sign;

use std::fmt;
use std::time::Duration;

pub use backoff::{parse_retry_after, Backoff};
pub use breaker::{Admission, Breakers};
pub use dispatcher::Dispatcher;
pub use sign::Secret;

/// The `User-Agent` of webhook requests.
pub const USER_AGENT: &str = concat!("classifier-webhooks/", env!("CARGO_PKG_VERSION"));

/// Webhook settings (`WEBHOOK_*`). `Debug` never shows the secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// HMAC key (`WEBHOOK_SECRET`); `None` = a random one per process, with a warning.
    pub secret: Option<String>,
    /// Allow loopback, private, CGNAT and link-local destinations (`WEBHOOK_ALLOW_PRIVATE`;
    /// tests and internal deployments). Unspecified, broadcast, multicast, reserved and cloud
    /// metadata addresses stay refused.
    pub allow_private: bool,
    /// Attempts before an event is dead-lettered (`WEBHOOK_MAX_ATTEMPTS`, at least 1).
    pub max_attempts: u32,
    /// Bound on one attempt: resolution, connection, TLS, request and response headers
    /// (`WEBHOOK_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// Backoff ceiling after the first failure (`WEBHOOK_RETRY_BASE_MS`).
    pub retry_base: Duration,
    /// Largest backoff ceiling and cap on `Retry-After` (`WEBHOOK_RETRY_MAX_MS`).
    pub retry_max: Duration,
    /// Consecutive failures that open a destination's breaker (`WEBHOOK_BREAKER_THRESHOLD`;
    /// 0 = no breaker).
    pub breaker_threshold: u32,
    /// How long an open breaker holds deliveries back (`WEBHOOK_BREAKER_COOLDOWN_SECS`).
    pub breaker_cooldown: Duration,
    /// How often the outbox is polled when nothing is due (`WEBHOOK_POLL_INTERVAL_MS`). Both
    /// backends also wake the dispatcher as soon as this process adds an event
    /// (`WebhookOutbox::webhook_signal`).
    pub poll_interval: Duration,
    /// Most deliveries claimed, and attempted concurrently, at once.
    pub batch: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            allow_private: false,
            max_attempts: 5,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_millis(1000),
            retry_max: Duration::from_millis(300_000),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            batch: 16,
        }
    }
}

impl WebhookConfig {
    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_base,
            max: self.retry_max,
        }
    }

    /// How long a claim holds a delivery: longer than any attempt, so only a dispatcher
    /// that died leaves a delivery to its lease.
    pub fn claim_lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(10)
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("allow_private", &self.allow_private)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("poll_interval", &self.poll_interval)
            .field("batch", &self.batch)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = WebhookConfig {
            secret: Some("hunter2".into()),
            ..WebhookConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}
