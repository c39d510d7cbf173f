//! The Redis backend: job records, payloads, results, the leased priority queue and status
//! pub/sub in one Redis (or one Redis Cluster slot), shared by any number of API and worker
//! processes.
//!
//! The webhook outbox, feedback and the result cache are in [`extras`](self) (see the module
//! source): durable, under the same `{prefix}` tag.
//!
//! # Data structures
//!
//! The queue is made of **sorted sets**, not streams: a ready set per priority scored by
//! [`QueueConfig::score`] (`enqueued_at - rank * aging`, so the lowest score across the four
//! heads is served first and aging keeps low jobs from starving), a set of leases scored by
//! their expiry, and a set of delayed retries scored by their due time. Sorted sets give
//! exactly what the contract asks for: ordering by an arbitrary, time-dependent score,
//! O(log n) removal of any job (cancellation, `remove`), cheap "everything that expired
//! before now" range queries for lease reclaim and retry promotion, and `ZCARD` per priority
//! for the depth. Streams order only by arrival, cannot remove an arbitrary entry from
//! the pending list cheaply, and their consumer-group redelivery has no priority or aging.
//!
//! Records are hashes (`rev`, `status`, `doc` = the JSON record) so the compare-and-set
//! script compares revisions without parsing JSON; payloads are raw bytes (no base64).
//! The key layout and the Redis Cluster story are in [`keys`](self) (see the module source):
//! every key of a deployment carries the `{prefix}` hash tag, so all multi-key scripts are
//! single-slot.
//!
//! # Atomicity
//!
//! Every step that touches more than one key is one Lua script (sent with `EVALSHA`,
//! reloaded automatically after `NOSCRIPT`): create + enqueue with the depth check; dequeue
//! with lease-reclaim, dead-lettering of exhausted expired leases and promotion of due
//! retries; extend; ack; nack (retry or dead-letter); release; remove; retry of a dead
//! letter; compare-and-set with its `PUBLISH`; `put_result` (`SET NX`, first result wins).
//! Scripts use the server's clock, so hosts with skewed clocks agree on lease expiry.
//!
//! # Semantics beyond the trait documentation (the same as the in-memory backend)
//!
//! - A lease is valid while its token is the job's current one and it has not expired:
//!   after `expires_at`, ack/nack/extend/release with it are refused even if no consumer
//!   has taken the job again yet.
//! - A redelivered, retried or released job keeps the score it was enqueued with; `release`
//!   does not count the delivery.
//! - `enqueue` is not bounded by `max_depth`; only `create` is.
//! - A status stream ends after it has delivered a terminal record; a subscription to a job
//!   that does not exist or is already terminal is an empty stream; if the pub/sub
//!   connection breaks, open streams end (re-subscribe and re-read the record).
//!
//! # Failures
//!
//! All commands go through a [`redis::aio::ConnectionManager`] with connection and response
//! timeouts, and each call is additionally bounded by [`OPERATION_TIMEOUT`]: when Redis is
//! unreachable, methods return [`Error::BackendUnavailable`] within about a second or two
//! (at once when the port is closed), never hang, never panic; the manager reconnects in the
//! background and service resumes by itself when Redis is back.

mod extras;
mod feed;
mod keys;
mod rate_limit;
mod reply;
mod scripts;

pub use self::rate_limit::RedisRateLimiter;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use classifier_core::backend::{
    Backend, CasOutcome, DeadLetter, JobQueue, JobStore, Lease, NackOutcome, QueueConfig,
    QueueDepth, StatusFeed, StatusStream, Ttls, WorkerInfo,
};
use classifier_core::job::{JobId, JobRecord, JobResult, JobStatus, Priority};
use classifier_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Value};

use self::keys::Keys;
use self::scripts::Scripts;

/// Each connection attempt gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Each command gives up after this long once sent.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2000);
/// The most any one backend call waits for Redis (connecting included) before it returns
/// [`Error::BackendUnavailable`].
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(3000);
/// How long a worker heartbeat counts ([`Backend::workers`]).
pub const WORKER_WINDOW: Duration = Duration::from_secs(60);

/// Longest sleep between two polls of [`JobQueue::dequeue`] while it waits for work.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The Redis backend. See the [module documentation](self) for the data layout.
pub struct RedisBackend {
    conn: ConnectionManager,
    keys: Keys,
    queue_keys: [String; keys::QUEUE_KEYS],
    scripts: Scripts,
    queue: QueueConfig,
    ttls: Ttls,
    feed: Arc<feed::Feed>,
    /// Notified when this object adds a webhook delivery or moves a dead letter back
    /// (`WebhookOutbox::webhook_signal`): a dispatcher in the same process sends it at once;
    /// other processes' events are found by polling.
    webhook_added: tokio::sync::Notify,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.keys.tag())
            .field("queue", &self.queue)
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

/// Map a client error: unusable replies are corrupt data, everything else means Redis did
/// not serve the request (unreachable, timed out, refused, out of memory, ...).
fn map_err(e: RedisError) -> Error {
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            Error::CorruptData(format!("Redis reply: {e}"))
        }
        _ => Error::BackendUnavailable(format!("Redis: {e}")),
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::CorruptData(format!("cannot encode: {e}")))
}

fn priority(rank: i64, what: &str) -> Result<Priority> {
    u8::try_from(rank)
        .ok()
        .and_then(Priority::from_rank)
        .ok_or_else(|| Error::CorruptData(format!("{what}: bad priority rank {rank}")))
}

impl RedisBackend {
    /// Connect to the Redis at `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` is not
    /// compiled in) and use keys starting with `{prefix}` (see the module docs for the
    /// layout; one prefix = one deployment; it must not contain `{` or `}`).
    ///
    /// Fails with [`Error::BackendUnavailable`] if the URL is invalid or Redis does not
    /// answer within [`OPERATION_TIMEOUT`]. Once connected, the backend reconnects by
    /// itself whenever the connection is lost.
    ///
    /// ```no_run
    /// use classifier_core::backend::{Backend, QueueConfig, Ttls};
    /// use classifier_queue::RedisBackend;
    ///
    /// # async fn run() -> classifier_core::Result<()> {
    /// let backend = RedisBackend::connect(
    ///     "redis://127.0.0.1:6379",
    ///     "classifier",
    ///     QueueConfig::default(),
    ///     Ttls::default(),
    /// )
    /// .await?;
    /// backend.ping().await?;
    /// assert_eq!(backend.name(), "redis");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(
        url: &str,
        prefix: &str,
        queue: QueueConfig,
        ttls: Ttls,
    ) -> Result<Arc<Self>> {
        if prefix.is_empty() || prefix.contains(['{', '}']) {
            return Err(Error::BackendUnavailable(format!(
                "invalid Redis key prefix {prefix:?}: it must be non-empty and contain no braces"
            )));
        }
        let client = redis::Client::open(url)
            .map_err(|e| Error::BackendUnavailable(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            OPERATION_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| Error::BackendUnavailable("Redis: connecting timed out".into()))?
        .map_err(map_err)?;
        let keys = Keys::new(prefix);
        let backend = Arc::new(RedisBackend {
            conn,
            queue_keys: keys.queue(),
            keys,
            scripts: Scripts::new(),
            queue,
            ttls,
            feed: feed::Feed::new(client, OPERATION_TIMEOUT),
            webhook_added: tokio::sync::Notify::new(),
        });
        backend.ping().await?;
        tracing::info!(prefix, "connected to Redis");
        Ok(backend)
    }

    /// The hash-tagged prefix of every key of this backend (`{prefix}`), e.g. to clean up
    /// with `SCAN MATCH {prefix}:*`.
    pub fn key_prefix(&self) -> &str {
        self.keys.tag()
    }

    /// Delete every key of this deployment (`{prefix}:*`, found with `SCAN`, removed with
    /// `UNLINK`): for tests, benches and decommissioning. Returns how many were deleted.
    /// Not atomic: do not run it while processes use the prefix.
    pub async fn purge(&self) -> Result<u64> {
        let pattern = format!("{}:*", self.keys.tag());
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut conn = self.conn.clone();
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    "purge",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .run(
                        "purge",
                        redis::cmd("UNLINK").arg(&keys).query_async(&mut conn),
                    )
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Run one Redis request with the operation timeout and error mapping.
    async fn run<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = map_err(e);
                tracing::debug!(operation = what, error = %err, "Redis request failed");
                Err(err)
            }
            Err(_) => Err(Error::BackendUnavailable(format!(
                "Redis: {what} timed out after {OPERATION_TIMEOUT:?}"
            ))),
        }
    }

    /// Invoke a queue script with the queue keys (plus `extra_keys`) and `args`.
    async fn queue_script(
        &self,
        what: &str,
        script: &redis::Script,
        extra_keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        for k in &self.queue_keys {
            inv.key(k);
        }
        for k in extra_keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.run(what, inv.invoke_async::<Value>(&mut conn)).await
    }

    /// [`QueueConfig::aging`] in microseconds: the scripts keep scores in microseconds.
    fn aging_us(&self) -> String {
        self.queue.aging.as_micros().to_string()
    }

    async fn dequeue_once(&self, max: usize) -> Result<Vec<Lease>> {
        let reply = self
            .queue_script(
                "dequeue",
                &self.scripts.dequeue,
                &[],
                &[
                    max.to_string().as_bytes(),
                    ms(self.queue.visibility_timeout).to_string().as_bytes(),
                    self.queue.max_attempts.to_string().as_bytes(),
                ],
            )
            .await?;
        let items = reply::array(&reply, "dequeue")?;
        let expires = reply::millis(
            reply::int(reply::at(items, 0, "dequeue")?, "dequeue expiry")?,
            "dequeue expiry",
        )?;
        let rest = items.get(1..).unwrap_or_default();
        if rest.len() % 4 != 0 {
            return Err(Error::CorruptData(format!(
                "dequeue: {} reply fields are not whole leases",
                rest.len()
            )));
        }
        rest.chunks_exact(4)
            .map(|c| {
                Ok(Lease {
                    job_id: reply::job_id(&c[0], "dequeue id")?,
                    token: reply::string(&c[1], "dequeue token")?,
                    delivery: u32::try_from(reply::uint(&c[2], "dequeue delivery")?)
                        .map_err(|_| Error::CorruptData("dequeue: delivery overflow".into()))?,
                    priority: priority(reply::int(&c[3], "dequeue rank")?, "dequeue")?,
                    expires_at: expires,
                })
            })
            .collect()
    }
}

#[async_trait]
impl JobStore for RedisBackend {
    async fn create(&self, job: &JobRecord, payload: Bytes) -> Result<()> {
        if job.revision != 0 || job.status != JobStatus::Pending {
            return Err(crate::error::Error::InvalidRecord {
                job_id: job.id,
                reason: format!(
                    "a new job must be pending at revision 0, not {} at revision {}",
                    job.status, job.revision
                ),
            }
            .into());
        }
        let id = job.id.to_string();
        let doc = to_json(job)?;
        let status_key = self.keys.status(job.id);
        let image_key = self.keys.image(job.id);
        let reply = self
            .queue_script(
                "create",
                &self.scripts.create,
                &[&status_key, &image_key],
                &[
                    id.as_bytes(),
                    job.priority.rank().to_string().as_bytes(),
                    doc.as_bytes(),
                    job.status.as_str().as_bytes(),
                    ms(self.ttls.status).to_string().as_bytes(),
                    ms(self.ttls.image).to_string().as_bytes(),
                    self.queue.max_depth.to_string().as_bytes(),
                    self.aging_us().as_bytes(),
                    payload.as_ref(),
                ],
            )
            .await?;
        let items = reply::array(&reply, "create")?;
        match reply::string(reply::at(items, 0, "create")?, "create")?.as_str() {
            "ok" => Ok(()),
            "full" => {
                let depth = reply::uint(reply::at(items, 1, "create")?, "create depth")?;
                Err(Error::QueueFull {
                    depth: usize::try_from(depth).unwrap_or(usize::MAX),
                    limit: self.queue.max_depth,
                })
            }
            "exists" => Err(crate::error::Error::DuplicateJob(job.id).into()),
            other => Err(Error::CorruptData(format!("create: unexpected {other:?}"))),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        let mut conn = self.conn.clone();
        let key = self.keys.status(id);
        let doc: Value = self
            .run(
                "get",
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("doc")
                    .query_async(&mut conn),
            )
            .await?;
        match reply::opt_string(&doc, "job record")? {
            Some(doc) => reply::json(&doc, "job record").map(Some),
            None => Ok(None),
        }
    }

    async fn compare_and_swap(&self, record: &JobRecord) -> Result<CasOutcome> {
        let expected = record
            .revision
            .checked_sub(1)
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-1".into());
        let doc = to_json(record)?;
        let mut inv = self.scripts.cas.prepare_invoke();
        inv.key(self.keys.status(record.id))
            .key(self.keys.result(record.id))
            .arg(expected)
            .arg(record.revision.to_string())
            .arg(&doc)
            .arg(record.status.as_str())
            .arg(ms(self.ttls.status))
            .arg(ms(self.ttls.result))
            .arg(self.keys.events(record.id));
        let mut conn = self.conn.clone();
        let reply: Value = self
            .run("compare_and_swap", inv.invoke_async(&mut conn))
            .await?;
        let items = reply::array(&reply, "compare_and_swap")?;
        if reply::int(reply::at(items, 0, "compare_and_swap")?, "compare_and_swap")? == 1 {
            return Ok(CasOutcome::Swapped);
        }
        match items.get(1) {
            None => Ok(CasOutcome::Conflict(None)),
            Some(v) => {
                let doc = reply::string(v, "job record")?;
                let current: JobRecord = reply::json(&doc, "job record")?;
                Ok(CasOutcome::Conflict(Some(Box::new(current))))
            }
        }
    }

    async fn put_result(&self, result: &JobResult) -> Result<JobResult> {
        let json = to_json(result)?;
        let mut inv = self.scripts.put_result.prepare_invoke();
        inv.key(self.keys.result(result.job_id))
            .key(self.keys.status(result.job_id))
            .arg(&json)
            .arg(ms(self.ttls.result));
        let mut conn = self.conn.clone();
        let stored: Value = self.run("put_result", inv.invoke_async(&mut conn)).await?;
        let stored = reply::string(&stored, "result")?;
        if stored == json {
            return Ok(result.clone());
        }
        reply::json(&stored, "result")
    }

    async fn get_result(&self, id: JobId) -> Result<Option<JobResult>> {
        let mut conn = self.conn.clone();
        let key = self.keys.result(id);
        let v: Value = self
            .run(
                "get_result",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
        match reply::opt_string(&v, "result")? {
            Some(s) => reply::json(&s, "result").map(Some),
            None => Ok(None),
        }
    }

    async fn payload(&self, id: JobId) -> Result<Option<Bytes>> {
        let mut conn = self.conn.clone();
        let key = self.keys.image(id);
        let v: Value = self
            .run(
                "payload",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
        match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(Bytes::from(b))),
            other => Err(Error::CorruptData(format!(
                "unexpected Redis reply for payload: {other:?}"
            ))),
        }
    }

    async fn delete_payload(&self, id: JobId) -> Result<()> {
        let mut conn = self.conn.clone();
        let key = self.keys.image(id);
        let _: Value = self
            .run(
                "delete_payload",
                redis::cmd("DEL").arg(&key).query_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl JobQueue for RedisBackend {
    async fn enqueue(&self, id: JobId, priority: Priority) -> Result<()> {
        self.queue_script(
            "enqueue",
            &self.scripts.enqueue,
            &[],
            &[
                id.to_string().as_bytes(),
                priority.rank().to_string().as_bytes(),
                self.aging_us().as_bytes(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn dequeue(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let leases = self.dequeue_once(max).await?;
            let now = tokio::time::Instant::now();
            if !leases.is_empty() || now >= deadline {
                return Ok(leases);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL_INTERVAL);
        }
    }

    async fn extend(&self, lease: &mut Lease) -> Result<bool> {
        let reply = self
            .queue_script(
                "extend",
                &self.scripts.extend,
                &[],
                &[
                    lease.job_id.to_string().as_bytes(),
                    lease.token.as_bytes(),
                    ms(self.queue.visibility_timeout).to_string().as_bytes(),
                ],
            )
            .await?;
        let expires = reply::int(&reply, "extend")?;
        if expires == 0 {
            return Ok(false);
        }
        lease.expires_at = reply::millis(expires, "extend")?;
        Ok(true)
    }

    async fn ack(&self, lease: &Lease) -> Result<bool> {
        let reply = self
            .queue_script(
                "ack",
                &self.scripts.ack,
                &[],
                &[lease.job_id.to_string().as_bytes(), lease.token.as_bytes()],
            )
            .await?;
        Ok(reply::int(&reply, "ack")? == 1)
    }

    async fn nack(&self, lease: &Lease, reason: &str) -> Result<NackOutcome> {
        let delay = ms(self.queue.retry_delay(lease.delivery));
        let reply = self
            .queue_script(
                "nack",
                &self.scripts.nack,
                &[],
                &[
                    lease.job_id.to_string().as_bytes(),
                    lease.token.as_bytes(),
                    reason.as_bytes(),
                    delay.to_string().as_bytes(),
                    self.queue.max_attempts.to_string().as_bytes(),
                ],
            )
            .await?;
        let items = reply::array(&reply, "nack")?;
        match reply::string(reply::at(items, 0, "nack")?, "nack")?.as_str() {
            "retry" => {
                let at = reply::int(reply::at(items, 1, "nack")?, "nack retry time")?;
                Ok(NackOutcome::Retrying {
                    at: reply::millis(at, "nack retry time")?,
                })
            }
            "dead" => {
                tracing::warn!(job_id = %lease.job_id, deliveries = lease.delivery, reason, "job dead-lettered");
                Ok(NackOutcome::DeadLettered)
            }
            "stale" => Ok(NackOutcome::Stale),
            other => Err(Error::CorruptData(format!("nack: unexpected {other:?}"))),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let reply = self
            .queue_script(
                "release",
                &self.scripts.release,
                &[],
                &[lease.job_id.to_string().as_bytes(), lease.token.as_bytes()],
            )
            .await?;
        Ok(reply::int(&reply, "release")? == 1)
    }

    async fn remove(&self, id: JobId) -> Result<bool> {
        let reply = self
            .queue_script(
                "remove",
                &self.scripts.remove,
                &[],
                &[id.to_string().as_bytes()],
            )
            .await?;
        Ok(reply::int(&reply, "remove")? == 1)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let reply = self
            .queue_script("depth", &self.scripts.depth, &[], &[])
            .await?;
        let items = reply::array(&reply, "depth")?;
        let mut n = [0usize; 7];
        for (i, slot) in n.iter_mut().enumerate() {
            let v = reply::uint(reply::at(items, i, "depth")?, "depth")?;
            *slot = usize::try_from(v).unwrap_or(usize::MAX);
        }
        Ok(QueueDepth {
            ready: [n[0], n[1], n[2], n[3]],
            delayed: n[4],
            in_flight: n[5],
            dead: n[6],
        })
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let reply = self
            .queue_script("dead_letters", &self.scripts.dead_letters, &[], &[])
            .await?;
        let items = reply::array(&reply, "dead_letters")?;
        if items.len() % 3 != 0 {
            return Err(Error::CorruptData("dead_letters: ragged reply".into()));
        }
        items
            .chunks_exact(3)
            .map(|c| {
                let job_id = reply::job_id(&c[0], "dead letter id")?;
                let priority = priority(reply::int(&c[1], "dead letter rank")?, "dead letter")?;
                let info = reply::string(&c[2], "dead letter info")?;
                let mut parts = info.splitn(3, '|');
                let bad = || Error::CorruptData(format!("dead letter {job_id}: bad info {info:?}"));
                let deliveries = parts
                    .next()
                    .and_then(|s| s.parse::<u32>().ok())
                    .ok_or_else(bad)?;
                let dead_at = parts
                    .next()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or_else(bad)?;
                let reason = parts.next().ok_or_else(bad)?.to_string();
                Ok(DeadLetter {
                    job_id,
                    priority,
                    deliveries,
                    reason,
                    dead_at: reply::millis(dead_at, "dead letter time")?,
                })
            })
            .collect()
    }

    async fn retry_dead_letter(&self, id: JobId) -> Result<bool> {
        let reply = self
            .queue_script(
                "retry_dead_letter",
                &self.scripts.retry_dead,
                &[],
                &[id.to_string().as_bytes(), self.aging_us().as_bytes()],
            )
            .await?;
        Ok(reply::int(&reply, "retry_dead_letter")? == 1)
    }
}

/// A stream that ends at once.
fn ended_stream() -> impl futures_core::Stream<Item = JobRecord> + Send {
    struct Empty;
    impl futures_core::Stream for Empty {
        type Item = JobRecord;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<JobRecord>> {
            std::task::Poll::Ready(None)
        }
    }
    Empty
}

#[async_trait]
impl StatusFeed for RedisBackend {
    /// Subscribes (confirmed by the server) before it reads the record: a stream for an
    /// unknown, expired or finished job ends at once, and every stream ends after the
    /// terminal record it delivers (nothing can follow it).
    async fn subscribe(&self, id: JobId) -> Result<StatusStream> {
        let stream = self.feed.subscribe(self.keys.events(id)).await?;
        match self.get(id).await? {
            Some(record) if !record.status.is_terminal() => Ok(stream),
            _ => Ok(Box::pin(ended_stream())),
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn queue_config(&self) -> &QueueConfig {
        &self.queue
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let pong: String = self
            .run("ping", redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::BackendUnavailable(format!(
                "Redis answered {pong:?} to PING"
            )))
        }
    }

    async fn heartbeat(&self, info: &WorkerInfo) -> Result<()> {
        let mut info = info.clone();
        info.last_seen = chrono::Utc::now();
        let json = to_json(&info)?;
        let mut inv = self.scripts.heartbeat.prepare_invoke();
        inv.key(self.keys.workers_seen())
            .key(self.keys.workers_info())
            .arg(&info.id)
            .arg(&json)
            .arg(ms(WORKER_WINDOW));
        let mut conn = self.conn.clone();
        let _: Value = self.run("heartbeat", inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let mut inv = self.scripts.workers.prepare_invoke();
        inv.key(self.keys.workers_seen())
            .key(self.keys.workers_info())
            .arg(ms(WORKER_WINDOW));
        let mut conn = self.conn.clone();
        let reply: Value = self.run("workers", inv.invoke_async(&mut conn)).await?;
        let mut workers = reply::array(&reply, "workers")?
            .iter()
            .map(|v| reply::json(&reply::string(v, "worker info")?, "worker info"))
            .collect::<Result<Vec<WorkerInfo>>>()?;
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    async fn model_generation(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let generation: Option<u64> = self
            .run(
                "model_generation",
                redis::cmd("GET")
                    .arg(self.keys.model_generation())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(generation.unwrap_or(0))
    }

    async fn bump_model_generation(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        self.run(
            "bump_model_generation",
            redis::cmd("INCR")
                .arg(self.keys.model_generation())
                .query_async(&mut conn),
        )
        .await
    }
}
