//! Prometheus metrics of the service, with the names of the API contract.
//!
//! One [`Metrics`] value per service (no global registry, so several services can run in one
//! process, as tests do). The worker pipeline records job and stage metrics; HTTP adapters
//! record request metrics with [`Metrics::observe_http`]; `/metrics` serves [`Metrics::encode`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::backend::QueueDepth;
use crate::job::{JobStatus, Priority};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histogram,
    jobs: Family<StatusLabel, Counter>,
    queue_depth: Family<PriorityLabel, Gauge>,
    preprocess: Histogram,
    inference: Histogram,
    batch_size: Histogram,
    models_loaded: Gauge,
    events: Family<NameLabel, Counter>,
    result_cache_hits: Counter,
    webhook_attempts: Family<OutcomeLabel, Counter>,
    webhooks_pending: Gauge,
    webhook_dead_letters: Gauge,
    /// Kept so tests and health can read it without parsing.
    jobs_completed: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = latency_histogram();
        let jobs = Family::<StatusLabel, Counter>::default();
        let queue_depth = Family::<PriorityLabel, Gauge>::default();
        let preprocess = latency_histogram();
        let inference = latency_histogram();
        let batch_size = Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]);
        let models_loaded = Gauge::default();
        let events = Family::<NameLabel, Counter>::default();
        let result_cache_hits = Counter::default();
        let webhook_attempts = Family::<OutcomeLabel, Counter>::default();
        let webhooks_pending = Gauge::default();
        let webhook_dead_letters = Gauge::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        registry.register(
            "classifier_jobs",
            "Jobs that reached a terminal status",
            jobs.clone(),
        );
        registry.register(
            "classifier_queue_depth",
            "Ready jobs by priority",
            queue_depth.clone(),
        );
        registry.register(
            "classifier_preprocess_duration_seconds",
            "Decode, resize and normalize time per image",
            preprocess.clone(),
        );
        registry.register(
            "classifier_inference_duration_seconds",
            "Model run time per batch",
            inference.clone(),
        );
        registry.register(
            "classifier_batch_size",
            "Images per inference batch",
            batch_size.clone(),
        );
        registry.register(
            "classifier_models_loaded",
            "Model versions loaded in this process",
            models_loaded.clone(),
        );
        registry.register(
            "classifier_events",
            "Named service events (webhook deliveries, retries, ...)",
            events.clone(),
        );
        registry.register(
            "classifier_result_cache_hits",
            "Submissions answered from the result cache",
            result_cache_hits.clone(),
        );
        registry.register(
            "classifier_webhook_attempts",
            "Webhook deliveries handled, by outcome (delivered, retry, dead, breaker_open)",
            webhook_attempts.clone(),
        );
        registry.register(
            "classifier_webhooks_pending",
            "Webhook deliveries waiting in the outbox (sampled by the dispatcher)",
            webhooks_pending.clone(),
        );
        registry.register(
            "classifier_webhook_dead_letters",
            "Webhook deliveries in the dead-letter list (sampled by the dispatcher)",
            webhook_dead_letters.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            http_requests,
            http_duration,
            jobs,
            queue_depth,
            preprocess,
            inference,
            batch_size,
            models_loaded,
            events,
            result_cache_hits,
            webhook_attempts,
            webhooks_pending,
            webhook_dead_letters,
            jobs_completed: AtomicU64::new(0),
        }
    }

    /// Count one HTTP request (`route` is the route pattern, e.g. `/api/v1/status/{id}`).
    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration.observe(seconds);
    }

    /// Count a job that reached `status`.
    pub fn job_finished(&self, status: JobStatus) {
        if status == JobStatus::Completed {
            self.jobs_completed.fetch_add(1, Ordering::Relaxed);
        }
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    /// Jobs completed so far in this process.
    pub fn jobs_completed(&self) -> u64 {
        self.jobs_completed.load(Ordering::Relaxed)
    }

    /// Record one image's preprocessing time.
    pub fn observe_preprocess(&self, seconds: f64) {
        self.preprocess.observe(seconds);
    }

    /// Record one inference batch: its time and its size.
    pub fn observe_inference(&self, seconds: f64, batch: usize) {
        self.inference.observe(seconds);
        self.batch_size.observe(batch as f64);
    }

    /// Set the queue-depth gauges.
    pub fn set_queue_depth(&self, depth: &QueueDepth) {
        for p in Priority::ALL {
            self.queue_depth
                .get_or_create(&PriorityLabel {
                    priority: p.as_str().to_string(),
                })
                .set(depth.of(p) as i64);
        }
    }

    /// Set the number of loaded models.
    pub fn set_models_loaded(&self, n: usize) {
        self.models_loaded.set(n as i64);
    }

    /// Count a named event (`webhook_delivered`, `webhook_failed`, ...).
    pub fn event(&self, name: &str) {
        self.events
            .get_or_create(&NameLabel {
                name: name.to_string(),
            })
            .inc();
    }

    /// Count a result-cache hit.
    pub fn result_cache_hit(&self) {
        self.result_cache_hits.inc();
    }

    /// Count one webhook delivery handled with `outcome` (`delivered`, `retry`, `dead`,
    /// `breaker_open`).
    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Webhook deliveries handled with `outcome` so far.
    pub fn webhook_attempts(&self, outcome: &str) -> u64 {
        self.webhook_attempts
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .get()
    }

    /// Set the webhook outbox gauges.
    pub fn set_webhook_backlog(&self, pending: usize, dead_letters: usize) {
        self.webhooks_pending.set(pending as i64);
        self.webhook_dead_letters.set(dead_letters as i64);
    }

    /// Everything in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            tracing::warn!("metrics encoding failed");
        }
        out
    }
}
