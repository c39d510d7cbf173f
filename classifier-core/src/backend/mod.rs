//! The backend traits: where jobs, their payloads and results live, and how work is queued.
//!
//! A backend is one value implementing three object-safe traits (so it can be boxed as
//! `Arc<dyn Backend>`):
//!
//! - [`JobStore`]: job records (updated only by compare-and-set on [`JobRecord::revision`]),
//!   the prepared image payload, results; all with TTLs ([`Ttls`]).
//! - [`JobQueue`]: a priority queue with leases: dequeue with a visibility timeout, extend,
//!   ack, nack with backoff, dead-letter after `max_attempts`, depth by priority.
//! - [`StatusFeed`]: a stream of every stored change of one job, in order.
//!
//! The contract is written for a networked store (Redis) first: every operation that touches
//! several keys is atomic, delivery is at-least-once, and ack/nack are idempotent and refuse
//! stale leases. `classifier-queue` has the in-memory and Redis backends and one conformance
//! suite that both pass.
//!
//! Ordering: a ready job's score is `enqueued_at - rank(priority) * aging` and the lowest score
//! goes first. Jobs enqueued within `aging` of each other are served strictly by priority; a
//! low job that has waited `3 * aging` beats an urgent job that has just arrived, so nothing
//! starves under constant urgent load.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_core::Stream;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::job::{JobEvent, JobId, JobRecord, JobResult, Priority};

pub mod extras;
pub mod rate_limit;

pub use extras::{
    webhook_event_id, FeedbackEntry, FeedbackStore, ResultCache, WebhookDelivery, WebhookOutbox,
};
pub use rate_limit::{RateDecision, RateLimit, RateLimitStore};

/// How long each kind of data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ttls {
    /// A job record, from its last change (default 1 h). A completed job's record lives as
    /// long as its result, so `GET /result` can still check ownership.
    pub status: Duration,
    /// A result, from completion (default 24 h).
    pub result: Duration,
    /// The image payload, from submission (default 30 min).
    pub image: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Ttls {
            status: Duration::from_secs(3600),
            result: Duration::from_secs(86_400),
            image: Duration::from_secs(1800),
        }
    }
}

/// Queue behaviour shared by every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Most jobs waiting (ready + delayed for retry) before submissions get
    /// [`crate::Error::QueueFull`] (default 10 000).
    pub max_depth: usize,
    /// How long a dequeued job stays invisible before it is redelivered (default 30 s).
    pub visibility_timeout: Duration,
    /// Deliveries before a failing job is dead-lettered (default 3).
    pub max_attempts: u32,
    /// Retry delay after the first failure; doubles each time (default 1 s).
    pub retry_base_delay: Duration,
    /// Upper bound of the retry delay (default 60 s).
    pub retry_max_delay: Duration,
    /// Waiting this long is worth one priority level (default 10 s).
    pub aging: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_depth: 10_000,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 3,
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            aging: Duration::from_secs(10),
        }
    }
}

impl QueueConfig {
    /// The retry delay after delivery number `delivery` failed: `base * 2^(delivery-1)`,
    /// capped at `retry_max_delay`.
    pub fn retry_delay(&self, delivery: u32) -> Duration {
        let exp = delivery.saturating_sub(1).min(20);
        self.retry_base_delay
            .saturating_mul(1u32 << exp)
            .min(self.retry_max_delay)
    }

    /// The ordering score of a job of `priority` enqueued at `enqueued_at_ms` (ms since the
    /// Unix epoch): lower is served first.
    pub fn score(&self, priority: Priority, enqueued_at_ms: i64) -> i64 {
        enqueued_at_ms - i64::from(priority.rank()) * self.aging.as_millis() as i64
    }
}

/// One delivery of a job to a consumer. Valid until `expires_at` unless extended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The job delivered.
    pub job_id: JobId,
    /// Unique per delivery: ack/nack/extend with an old token are refused.
    pub token: String,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub delivery: u32,
    /// The job's priority.
    pub priority: Priority,
    /// When the lease runs out and the job becomes visible again.
    pub expires_at: DateTime<Utc>,
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackOutcome {
    /// The job will be visible again at this time.
    Retrying {
        /// When.
        at: DateTime<Utc>,
    },
    /// It had `max_attempts` deliveries: it is in the dead-letter list now.
    DeadLettered,
    /// The lease was no longer valid (expired and redelivered, or already acked).
    Stale,
}

/// A job that exhausted its deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job.
    pub job_id: JobId,
    /// Its priority.
    pub priority: Priority,
    /// Deliveries made.
    pub deliveries: u32,
    /// The last failure reason.
    pub reason: String,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
}

/// Queue depth, by priority and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Ready jobs per priority, indexed by [`Priority::rank`] (low first).
    pub ready: [usize; 4],
    /// Jobs waiting out a retry delay.
    pub delayed: usize,
    /// Jobs currently leased to a consumer.
    pub in_flight: usize,
    /// Jobs in the dead-letter list.
    pub dead: usize,
}

impl QueueDepth {
    /// Ready jobs of every priority.
    pub fn total_ready(&self) -> usize {
        self.ready.iter().sum()
    }

    /// Ready jobs that go before a new job of `priority` (those of equal or higher priority).
    pub fn ahead_of(&self, priority: Priority) -> usize {
        self.ready[priority.rank() as usize..].iter().sum()
    }

    /// Ready jobs of `priority`.
    pub fn of(&self, priority: Priority) -> usize {
        self.ready[priority.rank() as usize]
    }
}

/// The outcome of a compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub enum CasOutcome {
    /// Stored (and published to subscribers).
    Swapped,
    /// The stored revision was not the expected one; here is the current record (`None`
    /// if it no longer exists).
    Conflict(Option<Box<JobRecord>>),
}

/// A live worker, as last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// A stable id for the worker process (host + pid + n).
    pub id: String,
    /// When it last reported.
    pub last_seen: DateTime<Utc>,
    /// Jobs it holds right now.
    pub in_flight: usize,
    /// The version `"latest"` means in the worker's process (its manifest's default), so an
    /// operator can see that a model reload reached it. Empty if the worker did not say.
    #[serde(default)]
    pub default_model: String,
    /// The model versions its process holds loaded, least recently used first.
    #[serde(default)]
    pub models_loaded: Vec<String>,
}

/// Job records, payloads and results.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Store a new pending job (revision 0) and its payload and enqueue it, atomically:
    /// either all of it happens or none. Fails with [`crate::Error::QueueFull`] when
    /// `max_depth` jobs are waiting.
    async fn create(&self, job: &JobRecord, payload: Bytes) -> Result<()>;

    /// The job's current record, if it exists and has not expired.
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// Store `record` if the stored revision is `record.revision - 1` (so callers apply an
    /// event with [`JobRecord::apply`] and then swap). On success the change is published
    /// to [`StatusFeed`] subscribers and the record's TTL is renewed.
    async fn compare_and_swap(&self, record: &JobRecord) -> Result<CasOutcome>;

    /// Store the result unless one is already stored (the first result wins, so a
    /// redelivered job never yields a second, different result). Returns the stored result.
    async fn put_result(&self, result: &JobResult) -> Result<JobResult>;

    /// The job's result, if completed and not expired.
    async fn get_result(&self, id: JobId) -> Result<Option<JobResult>>;

    /// The job's payload (the prepared image), if not expired or deleted.
    async fn payload(&self, id: JobId) -> Result<Option<Bytes>>;

    /// Drop the payload (once the job is finished).
    async fn delete_payload(&self, id: JobId) -> Result<()>;
}

/// The priority queue with leases.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Put `id` back in the ready queue (used to requeue and to retry dead letters). A job
    /// already queued or leased is not duplicated.
    async fn enqueue(&self, id: JobId, priority: Priority) -> Result<()>;

    /// Lease up to `max` ready jobs (best first), waiting up to `wait` for the first one.
    /// Expired leases and due retries become ready again first; a job that has had
    /// `max_attempts` deliveries and whose lease expired is dead-lettered instead.
    async fn dequeue(&self, max: usize, wait: Duration) -> Result<Vec<Lease>>;

    /// Push the lease's expiry to now + visibility timeout. `false` if the lease is stale.
    async fn extend(&self, lease: &mut Lease) -> Result<bool>;

    /// The job is done: forget it. Idempotent: `false` if the lease was already acked or is
    /// stale (the job is then untouched).
    async fn ack(&self, lease: &Lease) -> Result<bool>;

    /// Delivery failed: retry after the backoff delay, or dead-letter after `max_attempts`.
    async fn nack(&self, lease: &Lease, reason: &str) -> Result<NackOutcome>;

    /// Put a leased job back at once, without counting a failure (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Drop a job that is waiting (ready or delayed); `false` if it was not waiting.
    async fn remove(&self, id: JobId) -> Result<bool>;

    /// Current depth.
    async fn depth(&self) -> Result<QueueDepth>;

    /// The dead-letter list, oldest first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>>;

    /// Move a dead letter back to the ready queue with a fresh delivery count.
    /// `false` if it is not in the list.
    async fn retry_dead_letter(&self, id: JobId) -> Result<bool>;
}

/// A stream of stored job records, one per change, in order.
pub type StatusStream = Pin<Box<dyn Stream<Item = JobRecord> + Send>>;

/// Status change subscriptions (for WebSocket push).
#[async_trait]
pub trait StatusFeed: Send + Sync {
    /// Every change of job `id` stored after this call returns, in order. Callers that
    /// need the current state too subscribe first, then [`JobStore::get`], and skip
    /// records with a revision they have already seen.
    async fn subscribe(&self, id: JobId) -> Result<StatusStream>;
}

/// A complete backend: store, queue, feed, the webhook outbox, feedback and the result
/// cache, plus health and worker presence.
#[async_trait]
pub trait Backend:
    JobStore + JobQueue + StatusFeed + WebhookOutbox + FeedbackStore + ResultCache
{
    /// A short name for logs and health (`"memory"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// The queue settings in force.
    fn queue_config(&self) -> &QueueConfig;

    /// Check that the backend answers (errors with [`crate::Error::BackendUnavailable`]).
    async fn ping(&self) -> Result<()>;

    /// Record that worker `info.id` is alive (kept for about a minute).
    async fn heartbeat(&self, info: &WorkerInfo) -> Result<()>;

    /// Workers that reported in the last minute.
    async fn workers(&self) -> Result<Vec<WorkerInfo>>;

    /// The deployment's model-reload generation: 0 until the first
    /// [`bump_model_generation`](Self::bump_model_generation), then how many there were.
    /// Every process sharing the backend watches it and re-reads its own model manifest when
    /// it grows (`ServiceBuilder::model_reload_poll`), so one admin reload reaches every
    /// server and worker.
    async fn model_generation(&self) -> Result<u64>;

    /// Add one to the model-reload generation and return the new value (atomic: two
    /// concurrent bumps return two different values).
    async fn bump_model_generation(&self) -> Result<u64>;
}

/// Apply `event` to job `id` through compare-and-set, re-reading and retrying on conflicts.
/// Returns the stored record, or the state machine's error if the event is illegal for the
/// job's current state (e.g. it was cancelled meanwhile), or `JobNotFound`.
pub async fn transition(
    store: &(impl JobStore + ?Sized),
    id: JobId,
    event: &JobEvent,
) -> Result<JobRecord> {
    let current = store
        .get(id)
        .await?
        .ok_or_else(|| crate::Error::JobNotFound(id.to_string()))?;
    transition_from(store, current, event).await
}

/// Like [`transition`], starting from a record the caller already holds (e.g. the one the
/// previous step stored): one round trip instead of two when nobody else changed the job; a
/// stale `current` only costs a conflict and a re-read.
pub async fn transition_from(
    store: &(impl JobStore + ?Sized),
    mut current: JobRecord,
    event: &JobEvent,
) -> Result<JobRecord> {
    loop {
        let mut next = current.clone();
        next.apply(event, Utc::now())?;
        match store.compare_and_swap(&next).await? {
            CasOutcome::Swapped => return Ok(next),
            CasOutcome::Conflict(Some(latest)) => current = *latest,
            CasOutcome::Conflict(None) => {
                return Err(crate::Error::JobNotFound(current.id.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WorkerInfo;

    #[test]
    fn a_worker_report_without_its_models_still_reads() {
        // What a worker of an earlier release stores in the backend.
        let old = r#"{"id":"w1","last_seen":"2026-12-07T20:00:00Z","in_flight":2}"#;
        let info: WorkerInfo = serde_json::from_str(old).expect("old report");
        assert_eq!(info.in_flight, 2);
        assert!(info.default_model.is_empty() && info.models_loaded.is_empty());
    }
}
