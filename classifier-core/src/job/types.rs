//! The job record and its vocabulary: ids, statuses, stages, priorities, results.
//!
//! These types are what every backend stores (as JSON) and what the HTTP API returns, so
//! their serde names are the API's names (`"pending"`, `"inference"`, `"urgent"`, ...).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::image::ImageMetadata;
use crate::postprocess::Prediction;

/// A job id: a random (v4) UUID.
///
/// ```
/// use classifier_core::job::JobId;
/// let id = JobId::new();
/// assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
/// assert!("not-a-uuid".parse::<JobId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh random id.
    pub fn new() -> JobId {
        JobId(uuid::Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(JobId)
    }
}

/// Where a job is in its life. `Completed`, `Failed` and `Cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted and waiting in the queue.
    Pending,
    /// A worker holds it.
    Processing,
    /// Finished with a result.
    Completed,
    /// Finished without a result (see the error message).
    Failed,
    /// Cancelled by its owner before it finished.
    Cancelled,
}

impl JobStatus {
    /// True for the states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The API name (`"pending"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pipeline stage a job has reached. Stages only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Accepted, not yet worked on (also where a pending job sits).
    Initializing,
    /// Decoding and preparing the input tensor.
    Preprocessing,
    /// Running the model.
    Inference,
    /// Softmax, top-K, storing the result.
    Postprocessing,
    /// Done.
    Completed,
}

impl Stage {
    /// The API name (`"initializing"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Initializing => "initializing",
            Stage::Preprocessing => "preprocessing",
            Stage::Inference => "inference",
            Stage::Postprocessing => "postprocessing",
            Stage::Completed => "completed",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a job is. Higher priorities are served first; aging keeps low ones from
/// starving (see [`crate::backend::QueueConfig::aging`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served last.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Served before normal.
    High,
    /// Served first (synchronous predictions use it too).
    Urgent,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Urgent,
    ];

    /// 0 for low ... 3 for urgent.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The API name (`"low"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// The priority of rank `rank` (0..=3), if any.
    pub fn from_rank(rank: u8) -> Option<Priority> {
        Priority::ALL.get(rank as usize).copied()
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown priority {s:?}; expected one of low, normal, high, urgent")
            })
    }
}

/// What a client chooses when submitting a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitOptions {
    /// Queue priority.
    pub priority: Priority,
    /// Model version (`None` or `"latest"` = the manifest default).
    pub model_version: Option<String>,
    /// Where to POST the terminal event (webhooks).
    pub callback_url: Option<String>,
    /// The client's own JSON object, returned with `include_metadata=true`.
    pub metadata: Option<serde_json::Value>,
    /// Who owns the job (an opaque fingerprint of the API key); only the owner sees it.
    pub owner: Option<String>,
}

/// The stored state of one job: what `GET /status` shows, and what workers update by
/// compare-and-set ([`crate::backend::JobStore::compare_and_swap`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// Current status.
    pub status: JobStatus,
    /// Current stage (kept when the job fails or is cancelled).
    pub stage: Stage,
    /// 0..=100, never decreasing.
    pub progress: u8,
    /// Queue priority.
    pub priority: Priority,
    /// The resolved model version (never `"latest"`).
    pub model_version: String,
    /// Webhook destination, if any.
    pub callback_url: Option<String>,
    /// The client's metadata object, if any.
    pub metadata: Option<serde_json::Value>,
    /// Owner fingerprint (see [`SubmitOptions::owner`]).
    pub owner: Option<String>,
    /// The submitted image as received and as displayed.
    pub image: ImageMetadata,
    /// sha256 (hex) of the submitted bytes.
    pub image_sha256: String,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// When a worker first took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed (or was cancelled), for clients.
    pub error_message: Option<String>,
    /// How many times a worker has started it (redeliveries included).
    pub attempts: u32,
    /// Incremented by every stored change; the compare-and-set token.
    pub revision: u64,
}

impl JobRecord {
    /// A new pending job at `initializing`, progress 0, revision 0.
    pub fn new(
        id: JobId,
        options: &SubmitOptions,
        model_version: String,
        image: ImageMetadata,
        image_sha256: String,
        now: DateTime<Utc>,
    ) -> JobRecord {
        JobRecord {
            id,
            status: JobStatus::Pending,
            stage: Stage::Initializing,
            progress: 0,
            priority: options.priority,
            model_version,
            callback_url: options.callback_url.clone(),
            metadata: options.metadata.clone(),
            owner: options.owner.clone(),
            image,
            image_sha256,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error_message: None,
            attempts: 0,
            revision: 0,
        }
    }

    /// The status document of the API contract: every key always present
    /// (`error_message` null where it does not apply), `metadata` only when asked for.
    pub fn status_document(&self, include_metadata: bool) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "job_id": self.id,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "error_message": self.error_message,
        });
        if include_metadata {
            doc["metadata"] = self.metadata.clone().unwrap_or(serde_json::Value::Null);
        }
        doc
    }
}

/// The stored outcome of a completed job (`GET /result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's id.
    pub job_id: JobId,
    /// Top-K predictions, most probable first.
    pub predictions: Vec<Prediction>,
    /// Seconds from the worker taking the job to the result (preprocess + inference + post).
    pub processing_time: f64,
    /// The model version that produced it.
    pub model_version: String,
    /// The image as received and displayed.
    pub image_metadata: ImageMetadata,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// When the result was produced.
    pub completed_at: DateTime<Utc>,
}
