//! The Redis backend: the shared conformance suite, plus what is specific to Redis (TTLs on
//! real keys, binary payloads, the key layout, pub/sub across instances, outages).
//!
//! Needs a Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`). These tests FAIL when it
//! is unreachable; they never skip. Every backend gets a unique key prefix, and its keys
//! are deleted when the backend is dropped.

mod conformance;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use classifier_core::backend::{
    transition, webhook_event_id, Backend, CasOutcome, DeadLetter, FeedbackEntry, FeedbackStore,
    JobQueue, JobStore, Lease, NackOutcome, QueueConfig, QueueDepth, ResultCache, StatusFeed,
    StatusStream, Ttls, WebhookDelivery, WebhookOutbox, WorkerInfo,
};
use classifier_core::job::tests_support::pending_job;
use classifier_core::job::{JobEvent, JobId, JobRecord, JobResult, Priority};
use classifier_core::{Error, Result};
use classifier_queue::RedisBackend;
use conformance::conformance_suite;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn unique_prefix() -> String {
    format!("test-{}", JobId::new())
}

/// A raw connection for inspecting keys.
async fn raw() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .expect("valid REDIS_URL")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} must be reachable for these tests: {e}"))
}

/// Delete every key of `prefix` (`{prefix}:*`), synchronously (used from `Drop`).
fn purge(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url().as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let pattern = format!("{{{prefix}}}:*");
    let keys: Vec<String> = match redis::cmd("KEYS").arg(&pattern).query(&mut conn) {
        Ok(keys) => keys,
        Err(_) => return,
    };
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
    }
}

/// A Redis backend that deletes its keys when the test is done with it.
struct Cleaned {
    inner: Arc<RedisBackend>,
    prefix: String,
}

impl Drop for Cleaned {
    fn drop(&mut self) {
        purge(&self.prefix);
    }
}

async fn connect(prefix: &str, config: QueueConfig, ttls: Ttls) -> Arc<RedisBackend> {
    let url = redis_url();
    RedisBackend::connect(&url, prefix, config, ttls)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} must be reachable (CI provides one): {e}"))
}

async fn cleaned(config: QueueConfig, ttls: Ttls) -> Arc<Cleaned> {
    let prefix = unique_prefix();
    Arc::new(Cleaned {
        inner: connect(&prefix, config, ttls).await,
        prefix,
    })
}

/// The factory of the conformance suite: a fresh backend on a unique prefix.
async fn redis_backend(config: QueueConfig, ttls: Ttls) -> Arc<dyn Backend> {
    cleaned(config, ttls).await
}

conformance_suite!(redis_backend);

// `Cleaned` delegates everything to the real backend.
#[async_trait]
impl JobStore for Cleaned {
    async fn create(&self, job: &JobRecord, payload: Bytes) -> Result<()> {
        self.inner.create(job, payload).await
    }
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.inner.get(id).await
    }
    async fn compare_and_swap(&self, record: &JobRecord) -> Result<CasOutcome> {
        self.inner.compare_and_swap(record).await
    }
    async fn put_result(&self, result: &JobResult) -> Result<JobResult> {
        self.inner.put_result(result).await
    }
    async fn get_result(&self, id: JobId) -> Result<Option<JobResult>> {
        self.inner.get_result(id).await
    }
    async fn payload(&self, id: JobId) -> Result<Option<Bytes>> {
        self.inner.payload(id).await
    }
    async fn delete_payload(&self, id: JobId) -> Result<()> {
        self.inner.delete_payload(id).await
    }
}

#[async_trait]
impl JobQueue for Cleaned {
    async fn enqueue(&self, id: JobId, priority: Priority) -> Result<()> {
        self.inner.enqueue(id, priority).await
    }
    async fn dequeue(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        self.inner.dequeue(max, wait).await
    }
    async fn extend(&self, lease: &mut Lease) -> Result<bool> {
        self.inner.extend(lease).await
    }
    async fn ack(&self, lease: &Lease) -> Result<bool> {
        self.inner.ack(lease).await
    }
    async fn nack(&self, lease: &Lease, reason: &str) -> Result<NackOutcome> {
        self.inner.nack(lease, reason).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
    async fn remove(&self, id: JobId) -> Result<bool> {
        self.inner.remove(id).await
    }
    async fn depth(&self) -> Result<QueueDepth> {
        self.inner.depth().await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters().await
    }
    async fn retry_dead_letter(&self, id: JobId) -> Result<bool> {
        self.inner.retry_dead_letter(id).await
    }
}

#[async_trait]
impl StatusFeed for Cleaned {
    async fn subscribe(&self, id: JobId) -> Result<StatusStream> {
        self.inner.subscribe(id).await
    }
}

#[async_trait]
impl WebhookOutbox for Cleaned {
    async fn enqueue_webhook(&self, delivery: &WebhookDelivery) -> Result<bool> {
        self.inner.enqueue_webhook(delivery).await
    }
    async fn claim_webhooks(&self, max: usize, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        self.inner.claim_webhooks(max, lease).await
    }
    async fn complete_webhook(&self, event_id: &str) -> Result<()> {
        self.inner.complete_webhook(event_id).await
    }
    async fn reschedule_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        self.inner.reschedule_webhook(delivery).await
    }
    async fn dead_letter_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        self.inner.dead_letter_webhook(delivery).await
    }
    async fn pending_webhooks(&self) -> Result<usize> {
        self.inner.pending_webhooks().await
    }
    async fn webhook_dead_letters(&self) -> Result<Vec<WebhookDelivery>> {
        self.inner.webhook_dead_letters().await
    }
    async fn retry_webhook_dead_letter(&self, event_id: &str) -> Result<bool> {
        self.inner.retry_webhook_dead_letter(event_id).await
    }
}

#[async_trait]
impl FeedbackStore for Cleaned {
    async fn add_feedback(&self, entry: &FeedbackEntry) -> Result<u64> {
        self.inner.add_feedback(entry).await
    }
    async fn feedback_count(&self) -> Result<u64> {
        self.inner.feedback_count().await
    }
    async fn feedback_entries(&self, offset: usize, limit: usize) -> Result<Vec<FeedbackEntry>> {
        self.inner.feedback_entries(offset, limit).await
    }
}

#[async_trait]
impl ResultCache for Cleaned {
    async fn cached_result(
        &self,
        image_sha256: &str,
        model_version: &str,
    ) -> Result<Option<JobResult>> {
        self.inner.cached_result(image_sha256, model_version).await
    }
    async fn cache_result(
        &self,
        image_sha256: &str,
        model_version: &str,
        result: &JobResult,
        ttl: Duration,
    ) -> Result<()> {
        self.inner
            .cache_result(image_sha256, model_version, result, ttl)
            .await
    }
    async fn create_finished(&self, record: &JobRecord, result: &JobResult) -> Result<()> {
        self.inner.create_finished(record, result).await
    }
}

#[async_trait]
impl Backend for Cleaned {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn queue_config(&self) -> &QueueConfig {
        self.inner.queue_config()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn heartbeat(&self, info: &WorkerInfo) -> Result<()> {
        self.inner.heartbeat(info).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.inner.workers().await
    }
    async fn model_generation(&self) -> Result<u64> {
        self.inner.model_generation().await
    }
    async fn bump_model_generation(&self) -> Result<u64> {
        self.inner.bump_model_generation().await
    }
}

// ----- Redis-specific tests -----------------------------------------------------------------

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

fn assert_about(ttl_ms: i64, want: Duration, what: &str) {
    let want = want.as_millis() as i64;
    assert!(
        ttl_ms <= want && ttl_ms > want - 5_000,
        "{what}: PTTL {ttl_ms} ms, expected about {want} ms"
    );
}

/// The record, result and payload keys carry the configured TTLs (defaults 1 h / 24 h /
/// 30 min); a status change renews the record's; a completed record lives as long as its
/// result.
#[tokio::test]
async fn keys_carry_the_configured_ttls() {
    let backend = cleaned(QueueConfig::default(), Ttls::default()).await;
    let tag = backend.inner.key_prefix().to_string();
    let mut conn = raw().await;
    let job = pending_job();
    backend
        .create(&job, Bytes::from_static(b"img"))
        .await
        .unwrap();
    let status = format!("{tag}:job:{}:status", job.id);
    let image = format!("{tag}:job:{}:image", job.id);
    let result = format!("{tag}:job:{}:result", job.id);
    assert_about(
        pttl(&mut conn, &status).await,
        Duration::from_secs(3600),
        "record",
    );
    assert_about(
        pttl(&mut conn, &image).await,
        Duration::from_secs(1800),
        "payload",
    );

    // Shorten the record's TTL by hand; a change must renew it.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&status)
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    transition(&*backend, job.id, &JobEvent::Start)
        .await
        .unwrap();
    assert_about(
        pttl(&mut conn, &status).await,
        Duration::from_secs(3600),
        "renewed record",
    );
    assert_about(
        pttl(&mut conn, &image).await,
        Duration::from_secs(1800),
        "payload unchanged",
    );

    let r = JobResult {
        job_id: job.id,
        predictions: vec![],
        processing_time: 0.1,
        model_version: job.model_version.clone(),
        image_metadata: job.image,
        created_at: job.created_at,
        completed_at: chrono::Utc::now(),
    };
    backend.put_result(&r).await.unwrap();
    assert_about(
        pttl(&mut conn, &result).await,
        Duration::from_secs(86_400),
        "result",
    );
    transition(&*backend, job.id, &JobEvent::Complete)
        .await
        .unwrap();
    assert_about(
        pttl(&mut conn, &status).await,
        Duration::from_secs(86_400),
        "completed record lives as long as its result",
    );

    // Result stored after completion: the record is extended to the result's TTL too.
    let late = pending_job();
    backend.create(&late, Bytes::new()).await.unwrap();
    transition(&*backend, late.id, &JobEvent::Start)
        .await
        .unwrap();
    transition(&*backend, late.id, &JobEvent::Complete)
        .await
        .unwrap();
    let late_status = format!("{tag}:job:{}:status", late.id);
    let _: () = redis::cmd("PEXPIRE")
        .arg(&late_status)
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    backend
        .put_result(&JobResult {
            job_id: late.id,
            ..r.clone()
        })
        .await
        .unwrap();
    assert_about(
        pttl(&mut conn, &late_status).await,
        Duration::from_secs(86_400),
        "record extended when its result is stored",
    );
}

/// Payloads are stored as raw bytes (no base64), every byte value round-trips.
#[tokio::test]
async fn payloads_are_binary() {
    let backend = cleaned(QueueConfig::default(), Ttls::default()).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let job = pending_job();
    backend
        .create(&job, Bytes::from(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(
        backend.payload(job.id).await.unwrap().as_deref(),
        Some(&bytes[..])
    );
    let mut conn = raw().await;
    let key = format!("{}:job:{}:image", backend.inner.key_prefix(), job.id);
    let len: usize = redis::cmd("STRLEN")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, bytes.len(), "stored as is, not encoded");
}

/// Every key of a deployment carries its `{prefix}` hash tag (one Cluster slot).
#[tokio::test]
async fn every_key_is_hash_tagged_with_the_prefix() {
    let backend = cleaned(
        QueueConfig {
            max_attempts: 1,
            ..QueueConfig::default()
        },
        Ttls::default(),
    )
    .await;
    let job = pending_job();
    backend
        .create(&job, Bytes::from_static(b"x"))
        .await
        .unwrap();
    backend.create(&pending_job(), Bytes::new()).await.unwrap();
    let lease = backend.dequeue(1, Duration::ZERO).await.unwrap().remove(0);
    backend.nack(&lease, "boom").await.unwrap();
    backend
        .heartbeat(&WorkerInfo {
            id: "w".into(),
            last_seen: chrono::Utc::now(),
            in_flight: 0,
            default_model: String::new(),
            models_loaded: Vec::new(),
        })
        .await
        .unwrap();
    let (hook, dead) = (sample_delivery(), sample_delivery());
    backend.enqueue_webhook(&hook).await.unwrap();
    backend.enqueue_webhook(&dead).await.unwrap();
    backend.dead_letter_webhook(&dead).await.unwrap();
    backend
        .add_feedback(&FeedbackEntry {
            job_id: job.id,
            predicted_class_id: 1,
            predicted_class_name: "a".into(),
            predicted_confidence: 0.5,
            correct_class_id: 2,
            correct_class_name: "b".into(),
            model_version: "m".into(),
            image_sha256: job.image_sha256.clone(),
            owner: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    backend
        .cache_result(
            &job.image_sha256,
            "m",
            &sample_result(&job),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let mut finished = pending_job();
    finished.status = classifier_core::job::JobStatus::Completed;
    backend
        .create_finished(&finished, &sample_result(&finished))
        .await
        .unwrap();
    let mut conn = raw().await;
    let tag = backend.inner.key_prefix().to_string();
    assert_eq!(tag, format!("{{{}}}", backend.prefix));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{}*", backend.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.len() >= 16, "{keys:?}");
    for key in &keys {
        assert!(
            key.starts_with(&format!("{tag}:")),
            "{key} is not tagged {tag}"
        );
    }
}

/// A change stored through one instance reaches a subscriber on another instance (another
/// API process) of the same deployment, in order; dropped subscriptions are unsubscribed.
#[tokio::test]
async fn subscribers_on_other_instances_see_changes_and_unsubscribe_on_drop() {
    let writer = cleaned(QueueConfig::default(), Ttls::default()).await;
    let reader = connect(&writer.prefix, QueueConfig::default(), Ttls::default()).await;
    let job = pending_job();
    writer.create(&job, Bytes::new()).await.unwrap();
    let mut stream = reader.subscribe(job.id).await.unwrap();
    let extra = reader.subscribe(job.id).await.unwrap();
    let channel = format!("{}:job:{}:events", writer.inner.key_prefix(), job.id);
    let mut conn = raw().await;
    let numsub = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut c = conn.clone();
        let channel = channel.clone();
        async move {
            let v: (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut c)
                .await
                .unwrap();
            v.1
        }
    };
    assert_eq!(
        numsub(&mut conn).await,
        1,
        "one server subscription per channel"
    );

    let mut stored = Vec::new();
    for event in [
        JobEvent::Start,
        JobEvent::Advance {
            stage: classifier_core::job::Stage::Inference,
            progress: 50,
        },
        JobEvent::Fail {
            message: "bad".into(),
        },
    ] {
        stored.push(transition(&*writer, job.id, &event).await.unwrap());
    }
    let mut got = Vec::new();
    while let Some(record) = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("a change was not pushed")
    {
        got.push(record);
    }
    assert_eq!(got, stored, "every change in order, then the stream ends");

    drop(stream);
    drop(extra);
    let deadline = Instant::now() + Duration::from_secs(2);
    while numsub(&mut conn).await != 0 {
        assert!(Instant::now() < deadline, "the channel stays subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unknown and finished jobs: the stream ends at once.
    let mut unknown = reader.subscribe(JobId::new()).await.unwrap();
    assert!(unknown.next().await.is_none());
    let mut finished = reader.subscribe(job.id).await.unwrap();
    assert!(finished.next().await.is_none());
}

/// Records written by someone else that we cannot read are `CorruptData`, not a panic.
#[tokio::test]
async fn foreign_data_is_corrupt_data() {
    let backend = cleaned(QueueConfig::default(), Ttls::default()).await;
    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();
    let mut conn = raw().await;
    let key = format!("{}:job:{}:status", backend.inner.key_prefix(), job.id);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("doc")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        backend.get(job.id).await,
        Err(Error::CorruptData(_))
    ));
    let ready = format!("{}:q:ready:1", backend.inner.key_prefix());
    let _: () = redis::cmd("ZADD")
        .arg(&ready)
        .arg(0)
        .arg("not-a-uuid")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        backend.dequeue(5, Duration::ZERO).await,
        Err(Error::CorruptData(_))
    ));
}

#[tokio::test]
async fn duplicate_or_non_new_records_are_refused() {
    let backend = cleaned(QueueConfig::default(), Ttls::default()).await;
    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();
    let err = backend.create(&job, Bytes::new()).await.unwrap_err();
    assert!(matches!(err, Error::CorruptData(_)), "{err}");
    let mut started = pending_job();
    started.apply(&JobEvent::Start, chrono::Utc::now()).unwrap();
    assert!(backend.create(&started, Bytes::new()).await.is_err());
    assert!(backend.get(started.id).await.unwrap().is_none());
    assert_eq!(backend.depth().await.unwrap().total_ready(), 1);
}

#[tokio::test]
async fn bad_urls_and_prefixes_are_refused() {
    for (url, prefix) in [
        ("not a url", "p"),
        (redis_url().as_str(), "a{b"),
        (redis_url().as_str(), ""),
    ] {
        let err = RedisBackend::connect(url, prefix, QueueConfig::default(), Ttls::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BackendUnavailable(_)), "{err}");
    }
}

#[tokio::test]
async fn unreachable_redis_fails_fast_at_connect() {
    let started = Instant::now();
    let err = RedisBackend::connect(
        "redis://127.0.0.1:1",
        "p",
        QueueConfig::default(),
        Ttls::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// A TCP proxy in front of the real Redis that the test can cut and restore, to simulate
/// an outage without stopping the shared server.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    target: String,
}

impl Proxy {
    async fn start() -> Proxy {
        let url = redis_url();
        let target = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .rsplit('@')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .to_string();
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let proxy = Proxy {
            port,
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            listener: std::sync::Mutex::new(None),
            target,
        };
        proxy.restore();
        proxy
    }

    fn url(&self) -> String {
        let url = redis_url();
        let rest = url.trim_start_matches("redis://");
        let auth = rest.split('/').next().unwrap_or("");
        let auth = match auth.rsplit_once('@') {
            Some((creds, _)) => format!("{creds}@"),
            None => String::new(),
        };
        let db = rest
            .split_once('/')
            .map(|(_, db)| format!("/{db}"))
            .unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}{db}", self.port)
    }

    fn restore(&self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(format!("127.0.0.1:{}", self.port).parse().unwrap())
            .unwrap();
        let listener = socket.listen(64).unwrap();
        self.up.store(true, Ordering::SeqCst);
        let conns = self.conns.clone();
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(handle);
            }
        });
        *self.listener.lock().unwrap() = Some(task);
    }

    /// Refuse new connections and break the open ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(task) = self.listener.lock().unwrap().take() {
            task.abort();
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// Redis goes away: every call returns `BackendUnavailable` quickly, nothing hangs or
/// panics; Redis comes back: the same backend works again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_gives_backend_unavailable_then_recovers() {
    let proxy = Proxy::start().await;
    let prefix = unique_prefix();
    let backend = RedisBackend::connect(
        &proxy.url(),
        &prefix,
        QueueConfig::default(),
        Ttls::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("Redis behind the proxy must be reachable: {e}"));
    let _cleanup = Cleaned {
        inner: backend.clone(),
        prefix: prefix.clone(),
    };
    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for round in 0..3 {
        let started = Instant::now();
        let errors = [
            backend.ping().await.err(),
            backend.get(job.id).await.err(),
            backend.depth().await.err(),
            backend.create(&pending_job(), Bytes::new()).await.err(),
            backend.dequeue(1, Duration::from_millis(100)).await.err(),
            backend.subscribe(job.id).await.err(),
        ];
        for (i, e) in errors.into_iter().enumerate() {
            assert!(
                matches!(e, Some(Error::BackendUnavailable(_))),
                "round {round}, call {i}: {e:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "six calls took {:?}",
            started.elapsed()
        );
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match backend.ping().await {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(
        backend.get(job.id).await.unwrap().map(|r| r.id),
        Some(job.id)
    );
    let lease = backend.dequeue(1, Duration::ZERO).await.unwrap();
    assert_eq!(lease.len(), 1);
    let mut stream = backend.subscribe(job.id).await.unwrap();
    transition(&*backend, job.id, &JobEvent::Start)
        .await
        .unwrap();
    let pushed = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("pushed after recovery");
    assert_eq!(pushed.map(|r| r.revision), Some(1));
}

fn sample_result(job: &JobRecord) -> JobResult {
    JobResult {
        job_id: job.id,
        predictions: vec![],
        processing_time: 0.1,
        model_version: job.model_version.clone(),
        image_metadata: job.image,
        created_at: job.created_at,
        completed_at: chrono::Utc::now(),
    }
}

fn sample_delivery() -> WebhookDelivery {
    let job_id = JobId::new();
    WebhookDelivery {
        event_id: webhook_event_id(job_id, "job.failed"),
        job_id,
        url: "http://127.0.0.1:9/hook".into(),
        body: r#"{"event":"job.failed"}"#.into(),
        attempts: 0,
        next_attempt_at: chrono::Utc::now(),
        created_at: chrono::Utc::now(),
        last_error: None,
    }
}

/// The outbox, feedback and cache are in Redis: a new backend on the same prefix (a
/// restarted process) sees everything, under the documented tagged keys and TTLs.
#[tokio::test]
async fn outbox_feedback_and_cache_survive_a_restart() {
    let first = cleaned(QueueConfig::default(), Ttls::default()).await;
    let (pending, dead) = (sample_delivery(), sample_delivery());
    assert!(first.enqueue_webhook(&pending).await.unwrap());
    assert!(first.enqueue_webhook(&dead).await.unwrap());
    let mut dead_as_given = dead.clone();
    dead_as_given.attempts = 5;
    dead_as_given.last_error = Some("HTTP 502".into());
    first.dead_letter_webhook(&dead_as_given).await.unwrap();
    let job = pending_job();
    let entry = FeedbackEntry {
        job_id: job.id,
        predicted_class_id: 1,
        predicted_class_name: "goldfish".into(),
        predicted_confidence: 0.5,
        correct_class_id: 2,
        correct_class_name: "great white shark".into(),
        model_version: job.model_version.clone(),
        image_sha256: job.image_sha256.clone(),
        owner: None,
        created_at: chrono::Utc::now(),
    };
    assert_eq!(first.add_feedback(&entry).await.unwrap(), 1);
    let result = sample_result(&job);
    first
        .cache_result(&job.image_sha256, "v1:2", &result, Duration::from_secs(600))
        .await
        .unwrap();

    let second = connect(&first.prefix, QueueConfig::default(), Ttls::default()).await;
    assert_eq!(second.pending_webhooks().await.unwrap(), 1);
    assert_eq!(
        second.webhook_dead_letters().await.unwrap(),
        vec![dead_as_given]
    );
    let claimed = second
        .claim_webhooks(10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event_id, pending.event_id);
    assert_eq!(second.feedback_count().await.unwrap(), 1);
    assert_eq!(second.feedback_entries(0, 10).await.unwrap(), vec![entry]);
    assert_eq!(
        second
            .cached_result(&job.image_sha256, "v1:2")
            .await
            .unwrap(),
        Some(result)
    );

    let tag = first.inner.key_prefix().to_string();
    let mut conn = raw().await;
    let cache_key = format!("{tag}:cache:v1:2:{}", job.image_sha256);
    assert_about(
        pttl(&mut conn, &cache_key).await,
        Duration::from_secs(600),
        "cache entry",
    );
    for key in [
        "wh:pending",
        "wh:due",
        "wh:dead",
        "wh:dead:order",
        "fb:entries",
        "fb:order",
    ] {
        let key = format!("{tag}:{key}");
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 1, "{key}");
        assert_eq!(pttl(&mut conn, &key).await, -1, "{key} must not expire");
    }
}

/// `create_finished` publishes the record on the job's channel like a compare-and-set, and
/// stores record and result with the TTLs of a completed job.
#[tokio::test]
async fn create_finished_publishes_and_sets_ttls() {
    let backend = cleaned(QueueConfig::default(), Ttls::default()).await;
    let tag = backend.inner.key_prefix().to_string();
    let mut record = pending_job();
    record.apply(&JobEvent::Start, chrono::Utc::now()).unwrap();
    record
        .apply(&JobEvent::Complete, chrono::Utc::now())
        .unwrap();
    let result = sample_result(&record);

    let client = redis::Client::open(redis_url().as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    let channel = format!("{tag}:job:{}:events", record.id);
    pubsub.subscribe(&channel).await.unwrap();
    backend.create_finished(&record, &result).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(2), pubsub.on_message().next())
        .await
        .expect("the record is published")
        .expect("a message");
    let payload: String = message.get_payload().unwrap();
    let published: JobRecord = serde_json::from_str(&payload).unwrap();
    assert_eq!(published, record);

    let mut conn = raw().await;
    assert_about(
        pttl(&mut conn, &format!("{tag}:job:{}:result", record.id)).await,
        Duration::from_secs(86_400),
        "result",
    );
    assert_about(
        pttl(&mut conn, &format!("{tag}:job:{}:status", record.id)).await,
        Duration::from_secs(86_400),
        "a completed record lives as long as its result",
    );
    // The revision is stored for later compare-and-sets, like any record.
    let rev: String = redis::cmd("HGET")
        .arg(format!("{tag}:job:{}:status", record.id))
        .arg("rev")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(rev, record.revision.to_string());

    // A failed one keeps the status TTL.
    let mut failed = pending_job();
    failed.apply(&JobEvent::Start, chrono::Utc::now()).unwrap();
    failed
        .apply(
            &JobEvent::Fail {
                message: "bad".into(),
            },
            chrono::Utc::now(),
        )
        .unwrap();
    backend
        .create_finished(&failed, &sample_result(&failed))
        .await
        .unwrap();
    assert_about(
        pttl(&mut conn, &format!("{tag}:job:{}:status", failed.id)).await,
        Duration::from_secs(3600),
        "a failed record has the status TTL",
    );
}
