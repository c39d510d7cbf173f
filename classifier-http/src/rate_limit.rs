//! Token-bucket rate limiting per API key (per client IP without auth).
//!
//! A bucket holds `burst` tokens and refills at `per_minute / 60` tokens per second; each
//! request takes one. The store is an object-safe async trait, [`RateLimitStore`], so a
//! shared store (Redis) can replace [`InMemoryRateLimiter`] when several API processes run.
//! The trait and its types live in [`classifier_core::backend::rate_limit`] (re-exported here)
//! so `classifier-queue` can implement it without depending on this crate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use classifier_core::Result;

pub use classifier_core::backend::rate_limit::{RateDecision, RateLimit, RateLimitStore};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets in this process's memory.
#[derive(Debug, Default)]
pub struct InMemoryRateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Above this many buckets, full ones are forgotten (a full bucket equals a missing one).
const PRUNE_ABOVE: usize = 10_000;

impl InMemoryRateLimiter {
    /// An empty store.
    pub fn new() -> InMemoryRateLimiter {
        InMemoryRateLimiter::default()
    }

    /// Take a token at time `now` (the clock is a parameter so tests need no sleeping).
    pub fn take_at(&self, key: &str, limit: RateLimit, now: Instant) -> RateDecision {
        let burst = f64::from(limit.burst);
        let rate = limit.per_second();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let tokens = bucket.tokens;
        RateDecision {
            allowed,
            limit: limit.burst,
            remaining: tokens.floor().max(0.0) as u32,
            reset_secs: ((burst - tokens) / rate).ceil().max(0.0) as u64,
            retry_after_secs: if allowed {
                0
            } else {
                ((1.0 - tokens) / rate).ceil().max(1.0) as u64
            },
        }
    }
}

#[async_trait]
impl RateLimitStore for InMemoryRateLimiter {
    async fn take(&self, key: &str, limit: RateLimit) -> Result<RateDecision> {
        Ok(self.take_at(key, limit, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let l = InMemoryRateLimiter::new();
        let limit = RateLimit {
            per_minute: 60,
            burst: 3,
        };
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let d = l.take_at("k", limit, t0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
        }
        let refused = l.take_at("k", limit, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.reset_secs, 3);
        assert!(l.take_at("other", limit, t0).allowed);
        assert!(l.take_at("k", limit, t0 + Duration::from_secs(1)).allowed);
        assert!(!l.take_at("k", limit, t0 + Duration::from_secs(1)).allowed);
    }
}
