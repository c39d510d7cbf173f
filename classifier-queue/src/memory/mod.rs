//! The in-memory backend: the embedded default for a single process.
//!
//! The webhook outbox, feedback and the result cache are in `memory/extras.rs` (their own lock).
//!
//! One [`parking_lot::Mutex`] guards all state (records, payloads, results, the queue and its
//! indexes, subscribers); every operation takes it once, for a few O(log n) map operations,
//! and never across an `.await`. Expiry is lazy (reads check deadlines) plus purging at the
//! start of every operation from ordered expiry indexes, so no background task is needed
//! and the backend can be built outside a tokio runtime.
//!
//! Semantics beyond the trait documentation:
//!
//! - A lease is valid until `expires_at` (unless extended): after that, ack/nack/extend/
//!   release with it are refused even if no consumer has taken the job again yet.
//! - [`JobQueue::release`] does not count the delivery: the next lease of the job carries
//!   the same `delivery` number as the released one.
//! - A redelivered or retried job keeps the score it was enqueued with, so it does not lose
//!   its place to jobs that arrived while it was leased or delayed.
//! - [`JobQueue::enqueue`] is not bounded by `max_depth` (it requeues jobs already
//!   admitted); only [`JobStore::create`] is.
//! - A status stream ends after it has delivered a terminal record, and a subscription to
//!   a job that does not exist or is already terminal is an empty stream.

mod extras;
mod state;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use classifier_core::backend::{
    Backend, CasOutcome, DeadLetter, JobQueue, JobStore, Lease, NackOutcome, QueueConfig,
    QueueDepth, StatusFeed, StatusStream, Ttls, WorkerInfo,
};
use classifier_core::job::{JobId, JobRecord, JobResult, JobStatus, Priority};
use classifier_core::Result;

use self::state::{ms, to_datetime, Clock, CreateError, State};
use crate::error::Error;

/// How long a worker counts as alive after its last heartbeat.
pub const WORKER_TTL: Duration = Duration::from_secs(60);

/// Job store, leased priority queue, status feed, webhook outbox, feedback and result cache
/// in the memory of this process.
///
/// Nothing survives a restart; for several processes use the Redis backend.
pub struct InMemoryBackend {
    config: QueueConfig,
    clock: Clock,
    state: Mutex<State>,
    /// Wakes consumers waiting in `dequeue` when a job becomes ready.
    ready: Notify,
    workers: Mutex<Vec<(WorkerInfo, i64)>>,
    /// The webhook outbox, feedback and result cache (see `extras.rs`).
    extras: Mutex<extras::Extras>,
    /// Notified when a webhook delivery is added or a dead letter moved back
    /// (`WebhookOutbox::webhook_signal`).
    webhook_added: Notify,
    /// `Backend::model_generation`.
    model_generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for InMemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl InMemoryBackend {
    /// A new, empty backend with these queue settings and TTLs.
    ///
    /// Works with or without a tokio runtime (no task is spawned); the async methods need
    /// one with the time driver only when `dequeue` has to wait.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use classifier_core::backend::{Backend, JobQueue, JobStore, QueueConfig, Ttls};
    /// use classifier_core::job::tests_support::pending_job;
    /// use classifier_queue::InMemoryBackend;
    ///
    /// let backend = InMemoryBackend::new(QueueConfig::default(), Ttls::default());
    /// assert_eq!(backend.name(), "memory");
    /// let shared: Arc<dyn Backend> = backend; // what the service holds
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let job = pending_job();
    /// shared.create(&job, bytes::Bytes::from_static(b"tensor")).await?;
    /// let leases = shared.dequeue(1, Duration::from_millis(100)).await?;
    /// assert_eq!(leases[0].job_id, job.id);
    /// assert!(shared.ack(&leases[0]).await?);
    /// # Ok::<(), classifier_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn new(config: QueueConfig, ttls: Ttls) -> Arc<InMemoryBackend> {
        Arc::new(InMemoryBackend {
            config,
            clock: Clock::new(),
            state: Mutex::new(State::new(config, ttls)),
            ready: Notify::new(),
            workers: Mutex::new(Vec::new()),
            extras: Mutex::new(extras::Extras::default()),
            model_generation: std::sync::atomic::AtomicU64::new(0),
            webhook_added: Notify::new(),
        })
    }

    /// A backend with the default [`QueueConfig`] and [`Ttls`].
    pub fn with_defaults() -> Arc<InMemoryBackend> {
        InMemoryBackend::new(QueueConfig::default(), Ttls::default())
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Take the lock, run maintenance, then `f`; wake a consumer if maintenance made a job
    /// ready.
    fn with_state<T>(&self, f: impl FnOnce(&mut State, i64) -> T) -> T {
        let now = self.now();
        let (out, woke) = {
            let mut state = self.state.lock();
            let woke = state.maintain(now);
            (f(&mut state, now), woke)
        };
        if woke {
            self.ready.notify_one();
        }
        out
    }
}

#[async_trait]
impl JobStore for InMemoryBackend {
    async fn create(&self, job: &JobRecord, payload: Bytes) -> Result<()> {
        if job.revision != 0 || job.status != JobStatus::Pending {
            return Err(Error::InvalidRecord {
                job_id: job.id,
                reason: format!(
                    "a new job must be pending at revision 0, not {} at revision {}",
                    job.status, job.revision
                ),
            }
            .into());
        }
        match self.with_state(|s, now| s.create(job, payload, now)) {
            Ok(()) => {
                self.ready.notify_one();
                Ok(())
            }
            Err(CreateError::Full { depth, limit }) => {
                Err(classifier_core::Error::QueueFull { depth, limit })
            }
            Err(CreateError::Duplicate) => Err(Error::DuplicateJob(job.id).into()),
        }
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>> {
        Ok(self.with_state(|s, now| s.get(id, now)))
    }

    async fn compare_and_swap(&self, record: &JobRecord) -> Result<CasOutcome> {
        Ok(self.with_state(|s, now| s.compare_and_swap(record, now)))
    }

    async fn put_result(&self, result: &JobResult) -> Result<JobResult> {
        Ok(self.with_state(|s, now| s.put_result(result, now)))
    }

    async fn get_result(&self, id: JobId) -> Result<Option<JobResult>> {
        Ok(self.with_state(|s, now| s.get_result(id, now)))
    }

    async fn payload(&self, id: JobId) -> Result<Option<Bytes>> {
        Ok(self.with_state(|s, now| s.payload(id, now)))
    }

    async fn delete_payload(&self, id: JobId) -> Result<()> {
        self.with_state(|s, _| s.delete_payload(id));
        Ok(())
    }
}

#[async_trait]
impl JobQueue for InMemoryBackend {
    async fn enqueue(&self, id: JobId, priority: Priority) -> Result<()> {
        if self.with_state(|s, now| s.enqueue(id, priority, now)) {
            self.ready.notify_one();
        }
        Ok(())
    }

    async fn dequeue(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut leases = Vec::new();
        let mut deadline = None;
        loop {
            // Register interest before looking, so a job enqueued in between wakes us.
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (more, next) = self.with_state(|s, now| {
                s.take(max, now, &mut leases);
                (s.has_ready(), s.next_wakeup().map(|t| t - now))
            });
            if !leases.is_empty() {
                if more {
                    // Pass the baton: another waiting consumer can take the rest.
                    self.ready.notify_one();
                }
                return Ok(leases);
            }
            if wait.is_zero() {
                return Ok(leases);
            }
            let now = tokio::time::Instant::now();
            let deadline = *deadline.get_or_insert(now + wait);
            if now >= deadline {
                return Ok(leases);
            }
            // Also wake when a retry falls due or a lease runs out.
            let until = match next {
                Some(delta) => {
                    let delta = Duration::from_millis(u64::try_from(delta.max(1)).unwrap_or(1));
                    deadline.min(now + delta)
                }
                None => deadline,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn extend(&self, lease: &mut Lease) -> Result<bool> {
        Ok(self.with_state(|s, now| s.extend(lease, now)))
    }

    async fn ack(&self, lease: &Lease) -> Result<bool> {
        Ok(self.with_state(|s, _| s.ack(lease)))
    }

    async fn nack(&self, lease: &Lease, reason: &str) -> Result<NackOutcome> {
        Ok(self.with_state(|s, now| s.nack(lease, reason, now)))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let released = self.with_state(|s, _| s.release(lease));
        if released {
            self.ready.notify_one();
        }
        Ok(released)
    }

    async fn remove(&self, id: JobId) -> Result<bool> {
        Ok(self.with_state(|s, _| s.remove(id)))
    }

    async fn depth(&self) -> Result<QueueDepth> {
        Ok(self.with_state(|s, _| s.depth()))
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self.with_state(|s, _| s.dead_letters()))
    }

    async fn retry_dead_letter(&self, id: JobId) -> Result<bool> {
        let retried = self.with_state(|s, now| s.retry_dead_letter(id, now));
        if retried {
            self.ready.notify_one();
        }
        Ok(retried)
    }
}

/// The receiving end of one subscription.
struct Feed(mpsc::UnboundedReceiver<JobRecord>);

impl Stream for Feed {
    type Item = JobRecord;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobRecord>> {
        self.get_mut().0.poll_recv(cx)
    }
}

#[async_trait]
impl StatusFeed for InMemoryBackend {
    async fn subscribe(&self, id: JobId) -> Result<StatusStream> {
        // Unbounded: a slow reader must not lose changes, and a job has only a handful.
        let (tx, rx) = mpsc::unbounded_channel();
        self.with_state(|s, now| s.subscribe(id, tx, now));
        Ok(Box::pin(Feed(rx)))
    }
}

#[async_trait]
impl Backend for InMemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn queue_config(&self) -> &QueueConfig {
        &self.config
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn heartbeat(&self, info: &WorkerInfo) -> Result<()> {
        let now = self.now();
        let mut workers = self.workers.lock();
        workers.retain(|(w, seen)| w.id != info.id && now - seen < ms(WORKER_TTL));
        let mut info = info.clone();
        info.last_seen = to_datetime(now);
        workers.push((info, now));
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let now = self.now();
        let mut workers = self.workers.lock();
        workers.retain(|(_, seen)| now - seen < ms(WORKER_TTL));
        let mut out: Vec<WorkerInfo> = workers.iter().map(|(w, _)| w.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn model_generation(&self) -> Result<u64> {
        Ok(self
            .model_generation
            .load(std::sync::atomic::Ordering::Acquire))
    }

    async fn bump_model_generation(&self) -> Result<u64> {
        Ok(self
            .model_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1)
    }
}
