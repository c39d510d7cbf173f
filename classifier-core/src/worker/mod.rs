//! The worker runtime: leases jobs from the backend and runs them through the pipeline.
//!
//! - a **feeder** task dequeues several leases per backend round trip (up to `max_batch`,
//!   bounded by the free in-flight slots) and starts one task per lease;
//! - each **job task** runs the [`pipeline`] (state-machine steps, payload, inference) while
//!   extending its lease every third of the visibility timeout, then acks, nacks (transient
//!   errors, with the backend's backoff and dead-lettering) or fails the job;
//! - the **inference pool** ([`pool`]) runs tract on dedicated OS threads, one per worker,
//!   taking batches from the [`batcher`] (synchronous predictions first, then jobs by
//!   priority);
//! - a **heartbeat** task reports the worker to the backend every 10 s.
//!
//! Shutdown stops the feeder, lets in-flight jobs finish within the grace period, then aborts
//! the rest and `release`s their leases so another worker takes them at once: nothing is lost.

pub mod batcher;
pub mod eta;
pub(crate) mod notify;
pub(crate) mod pipeline;
pub(crate) mod pool;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

pub use batcher::{Announcement, BatchPolicy, BatchQueue, Next};
pub use eta::ServiceTimeEstimator;
pub use pool::InferencePriority;

use crate::backend::{transition, Backend, Lease, NackOutcome, WorkerInfo};
use crate::job::{JobEvent, JobStatus};
use crate::metrics::Metrics;
use crate::model::ModelRegistry;
use pipeline::Outcome;
use pool::InferencePool;

/// How long one dequeue call waits for work (bounds how long shutdown waits for the feeder).
const POLL_WAIT: Duration = Duration::from_millis(250);
/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Everything a job task needs.
pub(crate) struct WorkerContext {
    pub backend: Arc<dyn Backend>,
    pub registry: ModelRegistry,
    pub pool: Arc<InferencePool>,
    pub metrics: Arc<Metrics>,
    pub top_k: usize,
    /// How long completed results stay in the result cache (`None`: no caching).
    pub result_cache: Option<Duration>,
    /// Leases held now, by token, with the task working on each.
    leases: Mutex<HashMap<String, (Lease, Option<AbortHandle>)>>,
}

impl WorkerContext {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Lease, Option<AbortHandle>)>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settings of the runtime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RuntimeConfig {
    pub workers: usize,
    pub max_batch: usize,
    pub max_in_flight: usize,
    pub result_cache: Option<Duration>,
}

/// A running set of workers.
pub(crate) struct WorkerRuntime {
    ctx: Arc<WorkerContext>,
    stop: watch::Sender<bool>,
    feeder: Mutex<Option<JoinHandle<()>>>,
    heartbeat: JoinHandle<()>,
}

fn worker_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl WorkerRuntime {
    /// Start the feeder and the heartbeat on the current tokio runtime.
    pub fn start(
        backend: Arc<dyn Backend>,
        registry: ModelRegistry,
        pool: Arc<InferencePool>,
        metrics: Arc<Metrics>,
        top_k: usize,
        config: RuntimeConfig,
    ) -> WorkerRuntime {
        let ctx = Arc::new(WorkerContext {
            backend,
            registry,
            pool,
            metrics,
            top_k,
            result_cache: config.result_cache,
            leases: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let feeder = tokio::spawn(feed(ctx.clone(), config, stopped.clone()));
        let heartbeat = tokio::spawn(heartbeat(ctx.clone(), worker_id(), stopped));
        tracing::info!(workers = config.workers, "workers started");
        WorkerRuntime {
            ctx,
            stop,
            feeder: Mutex::new(Some(feeder)),
            heartbeat,
        }
    }

    /// Jobs held now.
    pub fn in_flight(&self) -> usize {
        self.ctx.leases().len()
    }

    /// Stop taking jobs, wait up to `grace` for the ones in flight, release the rest.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let feeder = self.feeder.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(feeder) = feeder {
            let _ = feeder.await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.ctx.leases().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left: Vec<(Lease, Option<AbortHandle>)> =
            self.ctx.leases().drain().map(|(_, v)| v).collect();
        for (lease, task) in left {
            if let Some(task) = task {
                task.abort();
            }
            match self.ctx.backend.release(&lease).await {
                Ok(_) => tracing::info!(job = %lease.job_id, "released at shutdown"),
                Err(e) => {
                    tracing::warn!(job = %lease.job_id, error = %e, "release failed; the lease will expire")
                }
            }
        }
        self.heartbeat.abort();
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

async fn feed(ctx: Arc<WorkerContext>, config: RuntimeConfig, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut backoff = Duration::from_millis(50);
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.changed() => break,
        };
        let mut permits = vec![first];
        while permits.len() < config.max_batch.max(1) {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let leases = match ctx.backend.dequeue(permits.len(), POLL_WAIT).await {
            Ok(l) => {
                backoff = Duration::from_millis(50);
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, "dequeue failed; backing off");
                drop(permits);
                sleep_or_stop(backoff, &mut stop).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for lease in leases {
            if *stop.borrow() {
                // Taken while stopping: hand it straight back.
                if let Err(e) = ctx.backend.release(&lease).await {
                    tracing::warn!(job = %lease.job_id, error = %e, "release failed");
                }
                continue;
            }
            let Some(permit) = permits.pop() else {
                // The backend returned more than asked: give the extra back.
                let _ = ctx.backend.release(&lease).await;
                continue;
            };
            let token = lease.token.clone();
            let key = token.clone();
            ctx.leases().insert(token.clone(), (lease.clone(), None));
            let announcement = ctx.pool.announce();
            let task_ctx = ctx.clone();
            let task = tokio::spawn(async move {
                run_job(&task_ctx, lease, announcement).await;
                task_ctx.leases().remove(&token);
                drop(permit);
            });
            // The task may already be done (and its entry gone): then there is nothing to abort.
            if let Some(entry) = ctx.leases().get_mut(&key) {
                entry.1 = Some(task.abort_handle());
            }
        }
    }
    tracing::debug!("feeder stopped");
}

async fn extend_forever(ctx: &WorkerContext, mut lease: Lease) {
    let every = ctx.backend.queue_config().visibility_timeout / 3;
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match ctx.backend.extend(&mut lease).await {
            Ok(true) => tracing::debug!(job = %lease.job_id, "lease extended"),
            Ok(false) => {
                tracing::warn!(job = %lease.job_id, "lease lost; the job may be redelivered");
                std::future::pending::<()>().await;
            }
            Err(e) => tracing::warn!(job = %lease.job_id, error = %e, "lease extension failed"),
        }
    }
}

async fn run_job(
    ctx: &WorkerContext,
    lease: Lease,
    announcement: Announcement<pool::InferRequest>,
) {
    let outcome = tokio::select! {
        outcome = pipeline::process(ctx, &lease, announcement) => outcome,
        _ = extend_forever(ctx, lease.clone()) => return,
    };
    let id = lease.job_id;
    match outcome {
        Outcome::Completed(done) => {
            ctx.metrics.job_finished(JobStatus::Completed);
            let (record, result) = *done;
            if let Some(ttl) = ctx.result_cache {
                let cached = ctx
                    .backend
                    .cache_result(&record.image_sha256, &result.model_version, &result, ttl)
                    .await;
                if let Err(e) = cached {
                    tracing::warn!(job = %id, error = %e, "result not cached");
                }
            }
            notify::after_terminal(ctx.backend.as_ref(), &record, Some(&result)).await;
            finish(ctx, &lease).await;
        }
        Outcome::Failed(record) => {
            notify::after_terminal(ctx.backend.as_ref(), &record, None).await;
            finish(ctx, &lease).await
        }
        Outcome::Discarded(status) => {
            tracing::debug!(job = %id, %status, "delivery discarded");
            if matches!(status, JobStatus::Completed | JobStatus::Failed) {
                // A redelivery of a finished job: its first delivery may have died before
                // queueing the webhook (enqueuing is idempotent by event id).
                notify::after_terminal_by_id(ctx.backend.as_ref(), id).await;
            }
            finish(ctx, &lease).await;
        }
        Outcome::Retry(error) => {
            let reason = error.to_string();
            match ctx.backend.nack(&lease, &reason).await {
                Ok(NackOutcome::Retrying { at }) => {
                    tracing::warn!(job = %id, error = %reason, retry_at = %at, "job will be retried")
                }
                Ok(NackOutcome::DeadLettered) => {
                    let message = format!("gave up after {} attempts: {reason}", lease.delivery);
                    tracing::error!(job = %id, %message, "job dead-lettered");
                    if let Ok(record) =
                        transition(ctx.backend.as_ref(), id, &JobEvent::Fail { message }).await
                    {
                        ctx.metrics.job_finished(JobStatus::Failed);
                        notify::after_terminal(ctx.backend.as_ref(), &record, None).await;
                    }
                }
                Ok(NackOutcome::Stale) => tracing::debug!(job = %id, "nack of a stale lease"),
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "nack failed; the lease will expire")
                }
            }
        }
    }
}

/// Ack the lease and drop the payload of a finished job.
async fn finish(ctx: &WorkerContext, lease: &Lease) {
    if let Err(e) = ctx.backend.ack(lease).await {
        tracing::warn!(job = %lease.job_id, error = %e, "ack failed; the job may be redelivered");
    }
    if let Err(e) = ctx.backend.delete_payload(lease.job_id).await {
        tracing::debug!(job = %lease.job_id, error = %e, "payload delete failed");
    }
}

async fn heartbeat(ctx: Arc<WorkerContext>, id: String, mut stop: watch::Receiver<bool>) {
    loop {
        let info = WorkerInfo {
            id: id.clone(),
            last_seen: chrono::Utc::now(),
            in_flight: ctx.leases().len(),
            default_model: ctx.registry.default_version(),
            models_loaded: ctx.registry.loaded(),
        };
        if let Err(e) = ctx.backend.heartbeat(&info).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        sleep_or_stop(HEARTBEAT, &mut stop).await;
        if *stop.borrow() {
            break;
        }
    }
}
