//! [`Service`]: the asynchronous job service (submit, follow, fetch, cancel, predict).
//!
//! SKELETON: signatures fixed so adapters (HTTP) can build against them; bodies are being
//! implemented (worker runtime, dynamic batching).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, StatusStream};
use crate::error::Result;
use crate::job::{JobId, JobRecord, JobResult, Priority, SubmitOptions};
use crate::Classification;

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

/// Assembles a [`Service`].
#[derive(Default)]
pub struct ServiceBuilder {}

impl ServiceBuilder {
    /// The backend (required).
    pub fn backend(self, _backend: Arc<dyn Backend>) -> Self {
        unimplemented!()
    }
    /// In-process workers (default: the number of cores; 0 = API only).
    pub fn workers(self, _n: usize) -> Self {
        unimplemented!()
    }
    /// Where model files are searched (default `ModelLocator::from_env()`).
    pub fn locator(self, _locator: crate::model::ModelLocator) -> Self {
        unimplemented!()
    }
    /// Overrides the manifest's default version ("latest").
    pub fn default_model(self, _version: impl Into<String>) -> Self {
        unimplemented!()
    }
    /// How many model versions stay loaded (LRU; default 3).
    pub fn model_cache_size(self, _n: usize) -> Self {
        unimplemented!()
    }
    /// Image limits (default `ValidationConfig::default()`).
    pub fn validation(self, _v: crate::image::ValidationConfig) -> Self {
        unimplemented!()
    }
    /// Load the default model, start the workers.
    pub async fn build(self) -> Result<Service> {
        unimplemented!()
    }
}

/// The job service. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Service {
    #[allow(dead_code)]
    inner: Arc<()>,
}

impl Service {
    /// Submit an image: validated, decoded and prepared at once (a bad image is refused
    /// here with an `INVALID_IMAGE` error, never failed later), then stored and queued.
    pub async fn submit(&self, _image: Bytes, _options: SubmitOptions) -> Result<JobTicket> {
        unimplemented!()
    }

    /// The job's current record (`JobNotFound` if unknown or expired).
    pub async fn status(&self, _id: JobId) -> Result<JobRecord> {
        unimplemented!()
    }

    /// The job's result; `JobNotCompleted { status }` if it has none.
    pub async fn result(&self, _id: JobId) -> Result<JobResult> {
        unimplemented!()
    }

    /// Cancel a pending or processing job; `IllegalTransition` if it already finished.
    pub async fn cancel(&self, _id: JobId) -> Result<JobRecord> {
        unimplemented!()
    }

    /// The job's current record, then every change, ending after a terminal state.
    pub async fn subscribe(&self, _id: JobId) -> Result<StatusStream> {
        unimplemented!()
    }

    /// Classify now (synchronously for the caller) through the same batching engine, at top
    /// priority. Bad images are `INVALID_IMAGE`.
    pub async fn predict(
        &self,
        _image: Bytes,
        _model_version: Option<&str>,
    ) -> Result<Classification> {
        unimplemented!()
    }

    /// A builder.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// Every model version of the manifest.
    pub fn models(&self) -> Vec<ModelInfo> {
        unimplemented!()
    }

    /// Check the backend, the workers and the models.
    pub async fn health(&self) -> HealthReport {
        unimplemented!()
    }

    /// The service's metrics (HTTP adapters add their request metrics to it).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        unimplemented!()
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        unimplemented!()
    }

    /// Stop taking jobs, finish or requeue in-flight ones, then return.
    pub async fn shutdown(&self) {
        unimplemented!()
    }
}
