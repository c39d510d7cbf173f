//! Rate-limit buckets: the settings, the decision and the store trait.
//!
//! A bucket holds `burst` tokens and refills at `per_minute / 60` tokens per second; each
//! request takes one. The store is an object-safe async trait, [`RateLimitStore`], so a
//! shared store (`classifier_queue`'s Redis limiter) can replace the HTTP crate's in-memory
//! one when several API processes run. It lives here, next to the backend traits, so the
//! HTTP crate and the backends can share it without depending on each other.

use async_trait::async_trait;

use crate::error::Result;

/// Bucket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Refill rate in tokens per minute; `0` turns limiting off.
    pub per_minute: u32,
    /// Bucket capacity.
    pub burst: u32,
}

impl RateLimit {
    /// True when limiting is on.
    pub fn enabled(&self) -> bool {
        self.per_minute > 0 && self.burst > 0
    }

    /// Refill rate in tokens per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// The outcome of taking a token; also the `X-RateLimit-*` header values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// True if the request may proceed.
    pub allowed: bool,
    /// `X-RateLimit-Limit`: the bucket capacity (burst).
    pub limit: u32,
    /// `X-RateLimit-Remaining`: whole tokens left after this request.
    pub remaining: u32,
    /// `X-RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Retry-After` when refused: seconds until one token is available.
    pub retry_after_secs: u64,
}

/// Where buckets live. Implementations must be atomic per key.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Take one token from `key`'s bucket under `limit`.
    async fn take(&self, key: &str, limit: RateLimit) -> Result<RateDecision>;
}
