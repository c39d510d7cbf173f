//! [`Service`]: the asynchronous job service (submit, follow, fetch, cancel, predict).
//!
//! - [`Service::submit`] validates, decodes, resizes and crops the image once, on tokio's
//!   blocking pool, and stores the model-ready crop ([`payload`]) as the job payload, so a
//!   corrupt upload is refused at once and workers never decode again;
//! - in-process workers ([`crate::worker`]) lease jobs from the backend and run them on
//!   dedicated inference threads with dynamic batching; synchronous [`Service::predict`]
//!   calls go through the same threads ahead of queued jobs;
//! - models come from a [`ModelRegistry`] (lazy loading, LRU cache, default preloaded).
//!
//! The service works with any [`Backend`]; `classifier_queue::InMemoryBackend` is the
//! embedded default (see the `classifier` façade crate for a complete example).

mod feedback;
pub mod payload;
mod reload;
mod submit;

pub use feedback::LabelRef;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::backend::{transition, Backend, StatusStream};
use crate::error::{Error, Result};
use crate::image::ValidationConfig;
use crate::job::{JobEvent, JobId, JobRecord, JobResult, JobStatus, Priority, SubmitOptions};
use crate::metrics::Metrics;
use crate::model::{EngineOptions, Manifest, ModelLocator, ModelRegistry};
use crate::postprocess::top_k;
use crate::worker::pool::{InferencePool, InferencePriority, PREDICT_PRIORITY};
use crate::worker::{BatchPolicy, RuntimeConfig, ServiceTimeEstimator, WorkerRuntime};
use crate::{Classification, Timings};

/// What `submit` returns: the `202 Accepted` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTicket {
    /// The new job's id.
    pub job_id: JobId,
    /// Always `pending`.
    pub status: crate::job::JobStatus,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// Expected completion, from the queue depth ahead of it and the measured service time.
    pub estimated_completion: DateTime<Utc>,
    /// Its priority.
    pub priority: Priority,
    /// The resolved model version.
    pub model_version: String,
}

/// One model version as listed by `GET /models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The version name clients send.
    pub version: String,
    /// True for the manifest default ("latest").
    pub default: bool,
    /// True if loaded in this process now.
    pub loaded: bool,
    /// Model input width in pixels.
    pub input_width: u32,
    /// Model input height in pixels.
    pub input_height: u32,
    /// Human description from the manifest.
    pub description: String,
}

/// Health of one dependency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyHealth {
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    /// Details for operators (e.g. the backend error, the worker count).
    pub detail: String,
}

/// What `/health` reports: the queue backend, the workers, the models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Backend reachability.
    pub queue: DependencyHealth,
    /// Workers alive (this process's and, with Redis, any process's).
    pub workers: DependencyHealth,
    /// Default model loaded.
    pub models: DependencyHealth,
}

/// Per-job estimate used before anything was measured, only by API-only services (they load
/// no model, so they cannot time a warm-up inference).
const API_ONLY_SEED: Duration = Duration::from_millis(50);

/// Assembles a [`Service`].
///
/// ```no_run
/// # async fn demo(backend: std::sync::Arc<dyn classifier_core::backend::Backend>) -> classifier_core::Result<()> {
/// use std::time::Duration;
/// let service = classifier_core::service::Service::builder()
///     .backend(backend)
///     .workers(2)
///     .model_cache_size(2)
///     .max_batch(8)
///     .max_delay(Duration::from_millis(2))
///     .shutdown_grace(Duration::from_secs(10))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
pub struct ServiceBuilder {
    backend: Option<Arc<dyn Backend>>,
    workers: Option<usize>,
    locator: Option<ModelLocator>,
    manifest: Option<Manifest>,
    default_model: Option<String>,
    model_cache_size: usize,
    validation: ValidationConfig,
    top_k: usize,
    max_batch: usize,
    max_delay: Duration,
    shutdown_grace: Duration,
    engine: EngineOptions,
    metrics: Option<Arc<Metrics>>,
    manifest_path: Option<std::path::PathBuf>,
    result_cache: Option<Duration>,
    inference_priority: InferencePriority,
    inference_assist: bool,
    model_reload_poll: Option<Duration>,
}

/// How long cached results live by default (as long as results do).
pub const DEFAULT_RESULT_CACHE_TTL: Duration = Duration::from_secs(86_400);

/// How often a service looks for a model reload announced by another process, by default.
pub const DEFAULT_MODEL_RELOAD_POLL: Duration = Duration::from_secs(5);

impl Default for ServiceBuilder {
    fn default() -> Self {
        ServiceBuilder {
            backend: None,
            workers: None,
            locator: None,
            manifest: None,
            default_model: None,
            model_cache_size: 3,
            validation: ValidationConfig::default(),
            top_k: 5,
            max_batch: 8,
            max_delay: Duration::from_millis(2),
            shutdown_grace: Duration::from_secs(30),
            manifest_path: None,
            result_cache: Some(DEFAULT_RESULT_CACHE_TTL),
            inference_priority: InferencePriority::Nice(0),
            inference_assist: true,
            model_reload_poll: Some(DEFAULT_MODEL_RELOAD_POLL),
            // Measured (BENCHMARKS.md): with tract, a batch of 8 costs 1.4x (ShuffleNet) to
            // 2.3x (MobileNet) more CPU per image than batch 1, and intra-op threads are
            // slower on these small models. So: one image per tract call, one call per core.
            engine: EngineOptions {
                max_native_batch: 1,
                ..EngineOptions::default()
            },
            metrics: None,
        }
    }
}

impl std::fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("backend", &self.backend.as_ref().map(|b| b.name()))
            .field("workers", &self.workers)
            .field("model_cache_size", &self.model_cache_size)
            .field("max_batch", &self.max_batch)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    /// The backend (required).
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }
    /// In-process workers (default: the number of cores; 0 = API only).
    ///
    /// Each worker is one dedicated inference thread. An API-only service (0) still
    /// validates and prepares images at submission, and serves [`Service::predict`] on one
    /// inference thread, loading models on demand.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }
    /// Where model files are searched (default `ModelLocator::from_env()`).
    pub fn locator(mut self, locator: crate::model::ModelLocator) -> Self {
        self.locator = Some(locator);
        self
    }
    /// Use this manifest (default: the locator's `manifest.toml`, else the built-in one).
    pub fn manifest(mut self, manifest: Manifest) -> Self {
        self.manifest = Some(manifest);
        self
    }
    /// Overrides the manifest's default version ("latest").
    pub fn default_model(mut self, version: impl Into<String>) -> Self {
        self.default_model = Some(version.into());
        self
    }
    /// How many model versions stay loaded (LRU; default 3).
    pub fn model_cache_size(mut self, n: usize) -> Self {
        self.model_cache_size = n.max(1);
        self
    }
    /// Image limits (default `ValidationConfig::default()`).
    pub fn validation(mut self, v: crate::image::ValidationConfig) -> Self {
        self.validation = v;
        self
    }
    /// Predictions per result (default 5).
    pub fn top_k(mut self, k: usize) -> Self {
        self.top_k = k.max(1);
        self
    }
    /// Leases taken per backend round trip, and the most images per inference batch (the
    /// model's [`EngineOptions::max_native_batch`] caps the latter). Default 8.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
    /// The longest a short inference batch waits for jobs already on their way (default
    /// 2 ms). A lone job with nothing else coming never waits.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }
    /// How long [`Service::shutdown`] lets in-flight jobs finish before releasing them
    /// (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }
    /// tract options (default: one image per call, single-threaded; see BENCHMARKS.md).
    pub fn engine_options(mut self, options: EngineOptions) -> Self {
        self.engine = options;
        self
    }
    /// Read the model manifest from this file, and re-read it on [`Service::reload_models`]
    /// (default: the first `manifest.toml` on the model search path, else the built-in one).
    pub fn manifest_path(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.manifest_path = Some(path.into());
        self
    }
    /// The result cache: an image identical (by sha256) to one already classified with the
    /// same model version gets the stored result without inference. `Some(ttl)` keeps
    /// results that long (default [`DEFAULT_RESULT_CACHE_TTL`]); `None` turns it off.
    pub fn result_cache(mut self, ttl: Option<Duration>) -> Self {
        self.result_cache = ttl;
        self
    }
    /// The scheduling niceness of the inference threads (Linux; elsewhere ignored), 0 to 19.
    ///
    /// Default 0: they compete with everything else on equal terms. A positive value lets
    /// the rest of the process (accepting uploads, decoding them, answering status requests)
    /// preempt inference when every core is busy, which cuts the accept latency of a
    /// saturated server without changing its throughput (BENCHMARKS.md, HTTP load); it also
    /// yields the cores to other processes on the machine.
    pub fn inference_nice(mut self, nice: i32) -> Self {
        self.inference_priority = InferencePriority::Nice(nice.clamp(0, 19));
        self
    }
    /// Schedule the inference threads with `SCHED_IDLE` (Linux; elsewhere ignored): they run
    /// only on cycles no other thread wants, so a saturated server accepts and answers at
    /// the latency of an idle one (BENCHMARKS.md, HTTP load). Replaces any niceness; `false`
    /// goes back to niceness 0.
    pub fn inference_idle(mut self, idle: bool) -> Self {
        self.inference_priority = if idle {
            InferencePriority::Idle
        } else {
            InferencePriority::Nice(0)
        };
        self
    }
    /// Let an idle inference thread help another one's batch (default `true`): the kernels
    /// of an image's inference split their work with whichever inference threads have
    /// nothing to do, so at low load one image uses several cores (lower latency for
    /// `predict` and for jobs on a quiet service); at full load every thread runs its own
    /// batch as before (see `model::AssistTeam`, BENCHMARKS.md).
    pub fn inference_assist(mut self, assist: bool) -> Self {
        self.inference_assist = assist;
        self
    }
    /// How often to look for a model reload announced by another process sharing the
    /// backend ([`Service::reload_models`] on any of them), and then re-read this process's
    /// own manifest: `Some(interval)` (default [`DEFAULT_MODEL_RELOAD_POLL`]), or `None` to
    /// reload only when [`Service::reload_models`] is called here.
    pub fn model_reload_poll(mut self, every: Option<Duration>) -> Self {
        self.model_reload_poll = every.filter(|d| !d.is_zero());
        self
    }
    /// Record into these metrics (default: a fresh registry).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Load the default model, start the workers.
    ///
    /// Fails if no backend was given ([`Error::BackendUnavailable`]), if the manifest or
    /// the default version is invalid, or (with workers) if the default model cannot load.
    pub async fn build(self) -> Result<Service> {
        let backend = self.backend.ok_or_else(|| {
            Error::BackendUnavailable("no backend configured (ServiceBuilder::backend)".into())
        })?;
        let workers = self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let metrics = self.metrics.unwrap_or_default();
        let mut registry = ModelRegistry::builder()
            .cache_size(self.model_cache_size)
            .validation(self.validation)
            .engine_options(self.engine)
            .top_k(self.top_k)
            .metrics(metrics.clone());
        if let Some(locator) = self.locator {
            registry = registry.locator(locator);
        }
        if let Some(manifest) = self.manifest {
            registry = registry.manifest(manifest);
        }
        if let Some(path) = self.manifest_path {
            registry = registry.manifest_path(path);
        }
        if let Some(version) = self.default_model {
            registry = registry.default_model(version);
        }
        let registry = registry.build()?;
        let eta = Arc::new(ServiceTimeEstimator::new(API_ONLY_SEED));
        if workers > 0 {
            let default = registry.get(None).await?;
            let seed = tokio::task::spawn_blocking(move || warm_up(&default))
                .await
                .map_err(|e| Error::Inference(format!("warm-up task failed: {e}")))??;
            tracing::info!(per_job = ?seed, "warm-up inference measured");
            eta.reset(seed);
        }
        let policy = BatchPolicy {
            max_batch: self.max_batch,
            max_delay: self.max_delay,
        };
        let pool = Arc::new(InferencePool::start(
            workers.max(1),
            policy,
            self.inference_priority,
            self.inference_assist,
            metrics.clone(),
            eta.clone(),
        )?);
        let runtime = (workers > 0).then(|| {
            let native = registry
                .get_loaded(None)
                .map(|c| c.engine().max_native_batch())
                .unwrap_or(1)
                .min(self.max_batch);
            WorkerRuntime::start(
                backend.clone(),
                registry.clone(),
                pool.clone(),
                metrics.clone(),
                self.top_k,
                RuntimeConfig {
                    workers,
                    max_batch: self.max_batch,
                    // Enough to keep every inference thread fed while the next jobs do their
                    // backend round trips, few enough that priorities still decide.
                    max_in_flight: workers * native.max(2),
                    result_cache: self.result_cache,
                },
            )
        });
        let reloads = reload::ReloadFollower::starting_at_current(backend.as_ref()).await;
        let service = Service {
            inner: Arc::new(Inner {
                reloads,
                backend,
                registry,
                metrics,
                pool,
                preparing: Arc::new(AtomicUsize::new(0)),
                eta,
                runtime,
                workers,
                top_k: self.top_k,
                result_cache: self.result_cache,
                grace: self.shutdown_grace,
                stopping: AtomicBool::new(false),
                stopped: tokio::sync::Mutex::new(false),
                started: Instant::now(),
            }),
        };
        if let Some(every) = self.model_reload_poll {
            reload::spawn_watcher(Arc::downgrade(&service.inner), every);
        }
        Ok(service)
    }
}

/// Time one normalize + inference of a gray crop (after one untimed run that warms caches).
fn warm_up(classifier: &crate::Classifier) -> Result<Duration> {
    let pre = classifier.preprocessor();
    let crop = vec![128u8; pre.crop_len()];
    let mut measured = Duration::ZERO;
    for _ in 0..2 {
        let started = Instant::now();
        let mut tensor = vec![0f32; pre.spec().tensor_len()];
        pre.normalize_into(&crop, &mut tensor)?;
        classifier.engine().run(tensor, 1)?;
        measured = started.elapsed();
    }
    Ok(measured)
}

/// How many times a status stream re-subscribes after its backend feed ended early.
const MAX_RESUBSCRIBES: u32 = 600;
/// Pause before each re-subscription (bounds the retry rate while a backend is down).
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);

struct Inner {
    backend: Arc<dyn Backend>,
    /// Model reloads announced to and by other processes.
    reloads: reload::ReloadFollower,
    registry: ModelRegistry,
    metrics: Arc<Metrics>,
    pool: Arc<InferencePool>,
    /// Uploads being validated, decoded and cropped right now.
    preparing: Arc<AtomicUsize>,
    eta: Arc<ServiceTimeEstimator>,
    runtime: Option<WorkerRuntime>,
    workers: usize,
    top_k: usize,
    result_cache: Option<Duration>,
    grace: Duration,
    stopping: AtomicBool,
    stopped: tokio::sync::Mutex<bool>,
    started: Instant,
}

/// What an upload turned into on admission.
enum Admitted {
    /// A stored result for the same bytes (sha256 hex) and model version.
    Cached(String, Box<JobResult>),
    /// Validated, decoded and cropped; with its sha256 (hex).
    Prepared(String, submit::PreparedUpload),
}

/// The job service. Cheap to clone (an `Arc` inside).
///
/// Build one with [`Service::builder`]; the examples below assume a built `service`.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("backend", &self.inner.backend.name())
            .field("workers", &self.inner.workers)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

fn healthy(status: &str, detail: String) -> DependencyHealth {
    DependencyHealth {
        status: status.to_string(),
        detail,
    }
}

impl Service {
    fn check_running(&self) -> Result<()> {
        if self.inner.stopping.load(Ordering::Acquire) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Submit an image: validated, decoded and prepared at once (a bad image is refused
    /// here with an `INVALID_IMAGE` error, never failed later), then stored and queued.
    ///
    /// The stored payload is the model-ready crop, not the upload; the record keeps the
    /// image metadata and the sha256 of the uploaded bytes. Errors: `INVALID_IMAGE` /
    /// `PAYLOAD_TOO_LARGE` variants, [`Error::UnknownModelVersion`], [`Error::QueueFull`],
    /// [`Error::BackendUnavailable`], [`Error::ShuttingDown`].
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service) -> classifier_core::Result<()> {
    /// use classifier_core::job::{Priority, SubmitOptions};
    /// let image = std::fs::read("cat.jpg").expect("a photo");
    /// let options = SubmitOptions { priority: Priority::High, ..Default::default() };
    /// let ticket = service.submit(image.into(), options).await?;
    /// println!("{} done around {}", ticket.job_id, ticket.estimated_completion);
    /// # Ok(()) }
    /// ```
    pub async fn submit(&self, image: Bytes, options: SubmitOptions) -> Result<JobTicket> {
        self.check_running()?;
        let spec = self
            .inner
            .registry
            .route(options.model_version.as_deref())?;
        let (sha256, prepared) = match self.admit(image, &spec).await? {
            Admitted::Cached(sha256, hit) => {
                return self.submit_cached(sha256, *hit, &options, &spec).await;
            }
            Admitted::Prepared(sha256, prepared) => (sha256, prepared),
        };
        let now = Utc::now();
        let record = JobRecord::new(
            JobId::new(),
            &options,
            spec.entry.version.clone(),
            prepared.metadata,
            sha256,
            now,
        );
        self.inner
            .backend
            .create(&record, prepared.crop.encode())
            .await?;
        let estimated_completion = now + self.estimate(record.priority).await;
        tracing::debug!(job = %record.id, priority = %record.priority, "job submitted");
        Ok(JobTicket {
            job_id: record.id,
            status: JobStatus::Pending,
            created_at: now,
            estimated_completion,
            priority: record.priority,
            model_version: record.model_version,
        })
    }

    /// Admit an upload: hash it, and answer from the result cache (if it is on) or validate,
    /// decode and crop it. The decode starts first, on the blocking pool, and the hash runs on
    /// another blocking thread meanwhile, so on a server with an idle core neither waits for
    /// the other. On a cache hit the decode is not awaited (it finishes in the background and
    /// is dropped). A cache backend error is logged and treated as a miss.
    async fn admit(&self, image: Bytes, spec: &crate::model::ModelSpec) -> Result<Admitted> {
        let mut validation = self.inner.registry.validation().clone();
        let preparing = submit::Preparing::enter(&self.inner.preparing);
        // A large JPEG's decode takes a second core only if nothing else is likely to want
        // it: no other upload is being prepared and an inference thread is idle. On a loaded
        // server the second thread would only add its overhead (2-7 % fewer jobs/s at
        // concurrency 16 with 1080p JPEGs, BENCHMARKS.md).
        if preparing.others() > 0 || !self.inner.pool.has_idle_thread() {
            validation.jpeg_split_min_bytes = usize::MAX;
        }
        let prepare = submit::start_prepare(
            validation,
            spec.preprocessor.clone(),
            image.clone(),
            preparing,
        );
        let sha256 = submit::sha256_blocking(image.clone()).await?;
        if self.inner.result_cache.is_some() {
            let version = &spec.entry.version;
            match self.inner.backend.cached_result(&sha256, version).await {
                Ok(Some(hit)) if hit.image_metadata.file_size == image.len() => {
                    self.inner.metrics.result_cache_hit();
                    return Ok(Admitted::Cached(sha256, Box::new(hit)));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "result cache lookup failed; classifying"),
            }
        }
        let prepared = submit::finish_prepare(prepare).await?;
        Ok(Admitted::Prepared(sha256, prepared))
    }

    /// A cache hit becomes a job that is completed at once (no queue, no inference); its
    /// webhook, if any, is queued as for any completed job.
    async fn submit_cached(
        &self,
        sha256: String,
        hit: JobResult,
        options: &SubmitOptions,
        spec: &crate::model::ModelSpec,
    ) -> Result<JobTicket> {
        let now = Utc::now();
        let mut record = JobRecord::new(
            JobId::new(),
            options,
            spec.entry.version.clone(),
            hit.image_metadata,
            sha256,
            now,
        );
        record.status = JobStatus::Completed;
        record.stage = crate::job::Stage::Completed;
        record.progress = 100;
        record.started_at = Some(now);
        record.finished_at = Some(now);
        let result = JobResult {
            job_id: record.id,
            processing_time: 0.0,
            created_at: now,
            completed_at: now,
            ..hit
        };
        self.inner.backend.create_finished(&record, &result).await?;
        self.inner.metrics.job_finished(JobStatus::Completed);
        crate::worker::notify::after_terminal(self.inner.backend.as_ref(), &record, Some(&result))
            .await;
        tracing::debug!(job = %record.id, "job answered from the result cache");
        Ok(JobTicket {
            job_id: record.id,
            status: JobStatus::Completed,
            created_at: now,
            estimated_completion: now,
            priority: record.priority,
            model_version: record.model_version,
        })
    }

    /// Expected time to completion of a job of `priority` just queued: the ready jobs
    /// ahead of it over the workers, plus one, times the measured per-job service time.
    async fn estimate(&self, priority: Priority) -> chrono::Duration {
        let ahead = match self.inner.backend.depth().await {
            Ok(depth) => {
                self.inner.metrics.set_queue_depth(&depth);
                depth.ahead_of(priority).saturating_sub(1)
            }
            Err(_) => 0,
        };
        let workers = if self.inner.workers > 0 {
            self.inner.workers
        } else {
            self.inner
                .backend
                .workers()
                .await
                .map(|w| w.len())
                .unwrap_or(1)
        };
        let wait = self.inner.eta.estimate(ahead, workers);
        chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
    }

    /// The job's current record (`JobNotFound` if unknown or expired).
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service, id: classifier_core::job::JobId) -> classifier_core::Result<()> {
    /// let record = service.status(id).await?;
    /// println!("{} {} {}%", record.status, record.stage, record.progress);
    /// # Ok(()) }
    /// ```
    pub async fn status(&self, id: JobId) -> Result<JobRecord> {
        self.inner
            .backend
            .get(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))
    }

    /// The job's result; `JobNotCompleted { status }` if it has none.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service, id: classifier_core::job::JobId) -> classifier_core::Result<()> {
    /// use classifier_core::Error;
    /// match service.result(id).await {
    ///     Ok(result) => println!("{}", result.predictions[0].class_name),
    ///     Err(Error::JobNotCompleted { status, .. }) => println!("not yet: {status}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn result(&self, id: JobId) -> Result<JobResult> {
        let record = self.status(id).await?;
        if record.status != JobStatus::Completed {
            return Err(Error::JobNotCompleted {
                job_id: id.to_string(),
                status: record.status,
                message: record.error_message,
            });
        }
        self.inner
            .backend
            .get_result(id)
            .await?
            .ok_or_else(|| Error::JobNotFound(id.to_string()))
    }

    /// Cancel a pending or processing job; `IllegalTransition` if it already finished.
    ///
    /// A pending job leaves the queue and never runs; a processing one is discarded by its
    /// worker at the next stage boundary and gets no result.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service, id: classifier_core::job::JobId) -> classifier_core::Result<()> {
    /// let record = service.cancel(id).await?;
    /// assert_eq!(record.status, classifier_core::job::JobStatus::Cancelled);
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: JobId) -> Result<JobRecord> {
        let record = transition(self.inner.backend.as_ref(), id, &JobEvent::Cancel).await?;
        self.inner.metrics.job_finished(JobStatus::Cancelled);
        match self.inner.backend.remove(id).await {
            Ok(true) => {
                if let Err(e) = self.inner.backend.delete_payload(id).await {
                    tracing::debug!(job = %id, error = %e, "payload delete failed");
                }
            }
            Ok(false) => {} // running: its worker drops it at the next stage boundary
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cancelled job not removed from the queue; a worker will discard it")
            }
        }
        Ok(record)
    }

    /// The job's current record, then every change, ending after a terminal state.
    ///
    /// Records are deduplicated by revision, so each state appears once, in order.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service, id: classifier_core::job::JobId) -> classifier_core::Result<()> {
    /// use futures_util::StreamExt;
    /// let mut updates = service.subscribe(id).await?;
    /// while let Some(record) = updates.next().await {
    ///     println!("{} {}%", record.stage, record.progress);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, id: JobId) -> Result<StatusStream> {
        // Subscribe first, then read: no change can fall between the two.
        let feed = self.inner.backend.subscribe(id).await?;
        let current = self.status(id).await?;
        struct State {
            backend: Arc<dyn Backend>,
            id: JobId,
            first: Option<JobRecord>,
            feed: StatusStream,
            last: Option<u64>,
            done: bool,
            resubscribes: u32,
        }
        let state = State {
            backend: self.inner.backend.clone(),
            id,
            first: Some(current),
            feed,
            last: None,
            done: false,
            resubscribes: 0,
        };
        let stream = futures_util::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            let next = match s.first.take() {
                Some(record) => record,
                None => loop {
                    match s.feed.next().await {
                        Some(record) if s.last.is_none_or(|last| record.revision > last) => {
                            break record;
                        }
                        Some(_) => {}
                        None => {
                            // The backend's feed ended before a terminal state (e.g. its
                            // pub/sub connection was reset): subscribe again, then re-read, so
                            // no change is lost and the stream still ends on the final state.
                            s.resubscribes += 1;
                            if s.resubscribes > MAX_RESUBSCRIBES {
                                tracing::warn!(job_id = %s.id, "status feed keeps ending; giving up");
                                return None;
                            }
                            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
                            match s.backend.subscribe(s.id).await {
                                Ok(feed) => s.feed = feed,
                                Err(e) => {
                                    tracing::debug!(job_id = %s.id, error = %e, "re-subscribe failed");
                                    continue;
                                }
                            }
                            if let Ok(Some(record)) = s.backend.get(s.id).await {
                                if s.last.is_none_or(|last| record.revision > last) {
                                    break record;
                                }
                            }
                        }
                    }
                },
            };
            s.last = Some(next.revision);
            s.done = next.status.is_terminal();
            Some((next, s))
        });
        Ok(Box::pin(stream))
    }

    /// Classify now (synchronously for the caller) through the same batching engine, at top
    /// priority. Bad images are `INVALID_IMAGE`.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service) -> classifier_core::Result<()> {
    /// let image = std::fs::read("cat.jpg").expect("a photo");
    /// let result = service.predict(image.into(), None).await?;
    /// println!("{} ({:.2})", result.predictions[0].class_name, result.predictions[0].confidence);
    /// # Ok(()) }
    /// ```
    pub async fn predict(
        &self,
        image: Bytes,
        model_version: Option<&str>,
    ) -> Result<Classification> {
        self.check_running()?;
        let spec = self.inner.registry.route(model_version)?;
        let (sha256, prepared) = match self.admit(image, &spec).await? {
            Admitted::Cached(_, hit) => {
                return Ok(Classification {
                    model_version: hit.model_version,
                    predictions: hit.predictions,
                    image_metadata: hit.image_metadata,
                    timings: Timings::default(),
                });
            }
            Admitted::Prepared(sha256, prepared) => (sha256, prepared),
        };
        let classifier = self.inner.registry.get(Some(&spec.entry.version)).await?;
        let inferred = self
            .inner
            .pool
            .infer(
                classifier.clone(),
                prepared.crop.pixels.clone(),
                PREDICT_PRIORITY,
                None,
            )
            .await?;
        let preprocess =
            prepared.crop.prepare_time.saturating_sub(prepared.decode) + inferred.normalize;
        self.inner
            .metrics
            .observe_preprocess((prepared.crop.prepare_time + inferred.normalize).as_secs_f64());
        let classification = Classification {
            model_version: classifier.version().to_string(),
            predictions: top_k(&inferred.logits, classifier.labels(), self.inner.top_k),
            image_metadata: prepared.metadata,
            timings: Timings {
                decode: prepared.decode,
                preprocess,
                inference: inferred.inference,
            },
        };
        if let Some(ttl) = self.inner.result_cache {
            let now = Utc::now();
            let result = JobResult {
                job_id: JobId::new(),
                predictions: classification.predictions.clone(),
                processing_time: 0.0,
                model_version: classification.model_version.clone(),
                image_metadata: classification.image_metadata,
                created_at: now,
                completed_at: now,
            };
            let version = &classification.model_version;
            if let Err(e) = (self.inner.backend)
                .cache_result(&sha256, version, &result, ttl)
                .await
            {
                tracing::warn!(error = %e, "result not cached");
            }
        }
        Ok(classification)
    }

    /// A builder.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// Every model version of the manifest.
    ///
    /// ```no_run
    /// # fn demo(service: classifier_core::service::Service) {
    /// for model in service.models() {
    ///     println!("{} default={} loaded={}", model.version, model.default, model.loaded);
    /// }
    /// # }
    /// ```
    pub fn models(&self) -> Vec<ModelInfo> {
        self.inner.registry.infos()
    }

    /// Re-read the model manifest and swap models with zero downtime (see
    /// [`ModelRegistry::reload`]): the new default and A/B arms are loaded before the swap,
    /// jobs in flight finish on the model they started with. A successful reload is then
    /// announced through the backend, and every other process sharing it (servers and
    /// workers, on any machine) re-reads its own manifest within
    /// [`ServiceBuilder::model_reload_poll`].
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service) -> classifier_core::Result<()> {
    /// let report = service.reload_models().await?;
    /// println!("default is now {}; added {:?}", report.default, report.added);
    /// # Ok(()) }
    /// ```
    pub async fn reload_models(&self) -> Result<crate::model::ReloadReport> {
        self.inner
            .reloads
            .reload_and_announce(
                &self.inner.registry,
                self.inner.backend.as_ref(),
                &self.inner.metrics,
            )
            .await
    }

    /// The model registry (versions, specs, loaded models).
    pub fn registry(&self) -> &ModelRegistry {
        &self.inner.registry
    }

    /// In-process workers (0 for an API-only service).
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// Time since the service was built.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The current measured per-job service time (what estimates are made of).
    pub fn service_time_estimate(&self) -> Duration {
        self.inner.eta.current()
    }

    /// Check the backend, the workers and the models.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service) {
    /// let report = service.health().await;
    /// assert_eq!(report.queue.status, "healthy");
    /// # }
    /// ```
    pub async fn health(&self) -> HealthReport {
        let backend = &self.inner.backend;
        let queue = match backend.ping().await {
            Ok(()) => healthy("healthy", format!("{} backend answers", backend.name())),
            Err(e) => healthy("unhealthy", e.to_string()),
        };
        let remote = backend.workers().await.map(|w| w.len());
        let local = self.inner.workers;
        let workers = if self.inner.stopping.load(Ordering::Acquire) {
            healthy("unhealthy", "shutting down".into())
        } else if local > 0 {
            let in_flight = self.inner.runtime.as_ref().map_or(0, |r| r.in_flight());
            healthy(
                "healthy",
                format!("{local} in-process workers, {in_flight} jobs in flight"),
            )
        } else {
            match remote {
                Ok(n) if n > 0 => healthy("healthy", format!("{n} workers alive")),
                Ok(_) => healthy(
                    "degraded",
                    "no workers alive: jobs wait in the queue".into(),
                ),
                Err(e) => healthy("unhealthy", format!("cannot list workers: {e}")),
            }
        };
        let default = self.inner.registry.default_version();
        let loaded = self.inner.registry.loaded();
        let models = if local == 0 {
            healthy(
                "healthy",
                format!("API only: models load on demand (default {default})"),
            )
        } else if loaded.contains(&default) {
            healthy("healthy", format!("loaded: {}", loaded.join(", ")))
        } else {
            healthy(
                "unhealthy",
                format!("default model {default} is not loaded"),
            )
        };
        HealthReport {
            queue,
            workers,
            models,
        }
    }

    /// The service's metrics (HTTP adapters add their request metrics to it).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Stop taking jobs, finish or requeue in-flight ones, then return.
    ///
    /// New submissions and predictions get [`Error::ShuttingDown`]. Jobs in flight get the
    /// grace period ([`ServiceBuilder::shutdown_grace`]) to finish; the rest are released
    /// to the queue at once, so another worker takes them. Idempotent.
    ///
    /// ```no_run
    /// # async fn demo(service: classifier_core::service::Service) {
    /// service.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(self.inner.grace).await
    }

    /// [`shutdown`](Self::shutdown) with this grace period instead of the configured one.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return;
        }
        if let Some(runtime) = &self.inner.runtime {
            runtime.shutdown(grace).await;
        }
        self.inner.pool.close();
        *stopped = true;
        tracing::info!("service stopped");
    }
}
