//! The Redis rate limiter against a real Redis at `REDIS_URL` (default
//! `redis://127.0.0.1:6379`). These tests FAIL when Redis is unreachable; they never skip.
//! Every test uses its own key prefix and purges it at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use classifier_core::backend::{QueueConfig, RateLimit, RateLimitStore, Ttls};
use classifier_core::job::JobId;
use classifier_queue::{RedisBackend, RedisRateLimiter};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

async fn backend(prefix: &str) -> Arc<RedisBackend> {
    let url = redis_url();
    RedisBackend::connect(&url, prefix, QueueConfig::default(), Ttls::default())
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} must be reachable for these tests: {e}"))
}

fn unique_prefix() -> String {
    format!("test-rl-{}", JobId::new())
}

const LIMIT: RateLimit = RateLimit {
    per_minute: 60,
    burst: 5,
};

#[tokio::test]
async fn burst_then_refused_with_retry_after() {
    let prefix = unique_prefix();
    let b = backend(&prefix).await;
    let l = b.rate_limiter();
    for left in (0..LIMIT.burst).rev() {
        let d = l.take("key:a", LIMIT).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.limit, LIMIT.burst);
        assert_eq!(d.remaining, left);
        assert!(d.reset_secs >= 1 && d.reset_secs <= u64::from(LIMIT.burst));
        assert_eq!(d.retry_after_secs, 0);
    }
    let refused = l.take("key:a", LIMIT).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert!(refused.retry_after_secs >= 1, "{refused:?}");
    assert!(
        refused.retry_after_secs <= 1,
        "60/min: one token within 1 s: {refused:?}"
    );
    assert!(
        refused.reset_secs >= 4 && refused.reset_secs <= 5,
        "{refused:?}"
    );

    // The bucket is a hash under the deployment's hash tag, with a TTL.
    let keys = format!("{{{prefix}}}:rl:key:a");
    let client = redis::Client::open(redis_url().as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 5_000, "{ttl}");
    b.purge().await.unwrap();
}

#[tokio::test]
async fn two_limiters_share_one_bucket() {
    let prefix = unique_prefix();
    // Two API processes: two backends (two connections), one prefix.
    let (b1, b2) = (backend(&prefix).await, backend(&prefix).await);
    let (l1, l2) = (RedisRateLimiter::new(&b1), b2.rate_limiter());
    let mut allowed = 0;
    for i in 0..LIMIT.burst {
        let l = if i % 2 == 0 { &l1 } else { &l2 };
        if l.take("ip:10.0.0.1", LIMIT).await.unwrap().allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, LIMIT.burst);
    assert!(!l1.take("ip:10.0.0.1", LIMIT).await.unwrap().allowed);
    assert!(!l2.take("ip:10.0.0.1", LIMIT).await.unwrap().allowed);
    b1.purge().await.unwrap();
}

#[tokio::test]
async fn tokens_refill_over_time() {
    let prefix = unique_prefix();
    let b = backend(&prefix).await;
    let l = b.rate_limiter();
    // 6000/min = 100 tokens/s: one token every 10 ms.
    let fast = RateLimit {
        per_minute: 6000,
        burst: 3,
    };
    for _ in 0..fast.burst {
        assert!(l.take("key:fast", fast).await.unwrap().allowed);
    }
    let refused = l.take("key:fast", fast).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after_secs, 1);
    // Wait for the bucket to refill (generously), without asserting tight timings.
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if l.take("key:fast", fast).await.unwrap().allowed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no refill after 5 s"
        );
    }
    // After a pause longer than a full refill (30 ms), the whole burst is back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = l.take("key:fast", fast).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, fast.burst - 1);
    b.purge().await.unwrap();
}

#[tokio::test]
async fn distinct_keys_have_independent_buckets() {
    let prefix = unique_prefix();
    let b = backend(&prefix).await;
    let l = b.rate_limiter();
    for _ in 0..LIMIT.burst {
        assert!(l.take("key:a", LIMIT).await.unwrap().allowed);
    }
    assert!(!l.take("key:a", LIMIT).await.unwrap().allowed);
    let other = l.take("key:b", LIMIT).await.unwrap();
    assert!(other.allowed);
    assert_eq!(other.remaining, LIMIT.burst - 1);
    assert!(l.take("ip:127.0.0.1", LIMIT).await.unwrap().allowed);
    assert!(!l.take("key:a", LIMIT).await.unwrap().allowed);

    // Another prefix (deployment) does not see these buckets either.
    let other_prefix = unique_prefix();
    let b2 = backend(&other_prefix).await;
    assert_eq!(
        b2.rate_limiter()
            .take("key:a", LIMIT)
            .await
            .unwrap()
            .remaining,
        LIMIT.burst - 1
    );
    b.purge().await.unwrap();
    b2.purge().await.unwrap();
}

/// Redis going away must not take the API down: the limiter lets requests through.
#[tokio::test]
async fn fails_open_when_redis_is_gone() {
    // An own redis-server on a free port, so it can be stopped without disturbing others.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is required for this test (not found on PATH)");
    let url = format!("redis://127.0.0.1:{port}");
    let start = Instant::now();
    let b = loop {
        match RedisBackend::connect(&url, "rl-open", QueueConfig::default(), Ttls::default()).await
        {
            Ok(b) => break b,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(10), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let l = b.rate_limiter();
    let one = RateLimit {
        per_minute: 1,
        burst: 1,
    };
    assert!(l.take("key:a", one).await.unwrap().allowed);
    assert!(!l.take("key:a", one).await.unwrap().allowed);
    child.kill().unwrap();
    child.wait().unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let d = l.take("key:a", one).await.expect("fail open, not an error");
        assert!(d.allowed, "{d:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
