//! [`RedisRateLimiter`]: the token buckets of the HTTP rate limit, shared by every API process
//! of a deployment through Redis.
//!
//! One bucket is one hash `{prefix}:rl:<bucket key>` with fields `tokens` (a float) and `ts`
//! (the Redis server time of the last update, seconds with microseconds). One Lua script
//! reads it, refills it by the elapsed time, takes a token (or computes the retry-after),
//! writes it back and sets it to expire when it would be full again (a full bucket and a
//! missing one are the same). Being one script it is atomic, and it uses the server's clock
//! (`TIME`), so API hosts with skewed clocks share buckets correctly. The results match
//! the HTTP crate's in-memory limiter exactly (same `remaining`, `reset`, `retry-after`).
//!
//! # Failures: fail open
//!
//! A rate limiter must not take the API down. When Redis fails or does not answer in time,
//! [`RedisRateLimiter::take`](RateLimitStore::take) logs a `warn` and **allows** the request
//! (reporting a full bucket). Requests that need Redis for their actual work fail with their
//! own 503 anyway; the others (health, cached reads) keep working, and limiting resumes by
//! itself when Redis is back.

use async_trait::async_trait;
use classifier_core::backend::{RateDecision, RateLimit, RateLimitStore};
use classifier_core::Result;
use redis::aio::ConnectionManager;
use redis::Script;

use super::keys::Keys;
use super::{map_err, RedisBackend, OPERATION_TIMEOUT};

/// The token-bucket script. `KEYS[1]` the bucket; `ARGV[1]` burst, `ARGV[2]` refill rate in
/// tokens per second. Returns `{allowed (0/1), remaining, reset_secs, retry_after_secs}`.
const TAKE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
local remaining = math.floor(math.max(tokens, 0))
local reset = math.max(math.ceil((burst - tokens) / rate), 0)
local retry = 0
if allowed == 0 then retry = math.max(math.ceil((1 - tokens) / rate), 1) end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.max(math.ceil((burst - tokens) / rate * 1000), 1)))
return {allowed, remaining, reset, retry}
"#;

/// Rate-limit buckets in Redis, under the key prefix of a [`RedisBackend`] and over its
/// connection. Cheap to clone. See the [module documentation](self).
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    keys: Keys,
    script: Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.keys.tag())
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// A limiter sharing `backend`'s connection and key prefix.
    pub fn new(backend: &RedisBackend) -> RedisRateLimiter {
        RedisRateLimiter {
            conn: backend.conn.clone(),
            keys: backend.keys.clone(),
            script: Script::new(TAKE),
        }
    }

    /// Run the script; Redis errors and timeouts are returned (the caller fails open).
    async fn take_in_redis(&self, key: &str, limit: RateLimit) -> Result<RateDecision> {
        let mut inv = self.script.prepare_invoke();
        inv.key(self.keys.rate_limit(key))
            .arg(limit.burst)
            .arg(format!("{:.17}", limit.per_second()));
        let mut conn = self.conn.clone();
        let reply: Vec<i64> =
            match tokio::time::timeout(OPERATION_TIMEOUT, inv.invoke_async(&mut conn)).await {
                Ok(r) => r.map_err(map_err)?,
                Err(_) => {
                    return Err(classifier_core::Error::BackendUnavailable(format!(
                        "Redis: rate limit timed out after {OPERATION_TIMEOUT:?}"
                    )))
                }
            };
        let [allowed, remaining, reset, retry] = reply[..] else {
            return Err(classifier_core::Error::CorruptData(format!(
                "Redis rate-limit reply: expected 4 integers, got {reply:?}"
            )));
        };
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: limit.burst,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            reset_secs: u64::try_from(reset.max(0)).unwrap_or(0),
            retry_after_secs: u64::try_from(retry.max(0)).unwrap_or(0),
        })
    }
}

impl RedisBackend {
    /// A [`RedisRateLimiter`] over this backend's connection and key prefix, for
    /// `classifier_http::Server::rate_limit_store`.
    pub fn rate_limiter(&self) -> RedisRateLimiter {
        RedisRateLimiter::new(self)
    }
}

#[async_trait]
impl RateLimitStore for RedisRateLimiter {
    /// Take a token. Never fails: on a Redis error the request is allowed (fail open, with a
    /// `warn` log), so an unreachable Redis cannot take the API down through rate limiting.
    async fn take(&self, key: &str, limit: RateLimit) -> Result<RateDecision> {
        let open = RateDecision {
            allowed: true,
            limit: limit.burst,
            remaining: limit.burst,
            reset_secs: 0,
            retry_after_secs: 0,
        };
        if !limit.enabled() {
            return Ok(open);
        }
        match self.take_in_redis(key, limit).await {
            Ok(d) => Ok(d),
            Err(e) => {
                tracing::warn!(bucket = key, error = %e, "Redis rate limit failed; request allowed (fail open)");
                Ok(open)
            }
        }
    }
}
