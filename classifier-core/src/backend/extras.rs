//! The backend's non-queue stores: the webhook outbox, feedback, and the result cache.
//!
//! Each is one object-safe trait that every [`super::Backend`] implements, so the data
//! lives wherever the jobs live (in process, or in Redis where it survives restarts and is
//! shared by every server and worker).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::job::{JobId, JobRecord, JobResult};

/// One webhook event waiting to be delivered (or dead-lettered after its last attempt).
///
/// The body is serialized once, when the event is created, so every retry signs and sends
/// exactly the same bytes under the same `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Stable id of the event (`X-Event-Id`), the same on every attempt; unique per job and
    /// event kind, so enqueuing the same event twice is a no-op.
    pub event_id: String,
    /// The job the event is about.
    pub job_id: JobId,
    /// The destination (`callback_url`).
    pub url: String,
    /// The JSON body, exactly as sent.
    pub body: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (claiming pushes it forward by the claim lease).
    pub next_attempt_at: DateTime<Utc>,
    /// When the event was created.
    pub created_at: DateTime<Utc>,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
}

/// The durable outbox of webhook deliveries.
///
/// A dispatcher claims due deliveries, attempts them, then records the outcome with
/// [`WebhookOutbox::complete_webhook`], [`WebhookOutbox::reschedule_webhook`] or
/// [`WebhookOutbox::dead_letter_webhook`]. A claim only moves the delivery's due time forward
/// by the claim lease, so the deliveries of a dispatcher that dies come back by themselves.
#[async_trait]
pub trait WebhookOutbox: Send + Sync {
    /// Add `delivery` unless an event with the same id is pending or dead-lettered.
    /// Returns `true` if it was added.
    async fn enqueue_webhook(&self, delivery: &WebhookDelivery) -> Result<bool>;

    /// Claim up to `max` deliveries due now (earliest first): each one's due time becomes
    /// now + `lease`, and the claimed records are returned.
    async fn claim_webhooks(&self, max: usize, lease: Duration) -> Result<Vec<WebhookDelivery>>;

    /// Delivered: forget it.
    async fn complete_webhook(&self, event_id: &str) -> Result<()>;

    /// Store `delivery` (its `attempts`, `last_error` and `next_attempt_at` updated by the
    /// caller) and make it due at `next_attempt_at`. Ignored if the event is no longer
    /// pending.
    async fn reschedule_webhook(&self, delivery: &WebhookDelivery) -> Result<()>;

    /// Move `delivery` (as given) from the pending set to the webhook dead-letter list.
    async fn dead_letter_webhook(&self, delivery: &WebhookDelivery) -> Result<()>;

    /// Deliveries still pending (due or not).
    async fn pending_webhooks(&self) -> Result<usize>;

    /// The webhook dead-letter list, oldest first.
    async fn webhook_dead_letters(&self) -> Result<Vec<WebhookDelivery>>;

    /// Move a dead-lettered event back to pending, due now, with its attempts reset to 0.
    /// `false` if it is not in the list.
    async fn retry_webhook_dead_letter(&self, event_id: &str) -> Result<bool>;

    /// A signal notified (`notify_one`, so a notification is kept until someone waits) each
    /// time this backend object adds a delivery or moves a dead letter back, so that a
    /// dispatcher in the same process sends it at once instead of at its next poll. `None`
    /// (the default): the dispatcher only polls, which it must do anyway for deliveries that
    /// other processes add.
    fn webhook_signal(&self) -> Option<&tokio::sync::Notify> {
        None
    }
}

/// A label a person gave an image, for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEntry {
    /// The job the feedback is about (one entry per job: a new one replaces the old).
    pub job_id: JobId,
    /// The model's top-1 class id.
    pub predicted_class_id: usize,
    /// The model's top-1 class name.
    pub predicted_class_name: String,
    /// The model's top-1 confidence.
    pub predicted_confidence: f32,
    /// The correct class id.
    pub correct_class_id: usize,
    /// The correct class name.
    pub correct_class_name: String,
    /// The model version that made the prediction.
    pub model_version: String,
    /// sha256 (hex) of the image bytes as uploaded.
    pub image_sha256: String,
    /// Owner fingerprint of the key that sent it (as the job's).
    pub owner: Option<String>,
    /// When the feedback was given.
    pub created_at: DateTime<Utc>,
}

/// Feedback storage. Entries do not expire (they are training data).
#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Store `entry`, replacing an earlier entry for the same job. Returns how many jobs
    /// have feedback now.
    async fn add_feedback(&self, entry: &FeedbackEntry) -> Result<u64>;

    /// How many jobs have feedback.
    async fn feedback_count(&self) -> Result<u64>;

    /// Up to `limit` entries in the order they were first given, skipping `offset`.
    async fn feedback_entries(&self, offset: usize, limit: usize) -> Result<Vec<FeedbackEntry>>;
}

/// Results by image content and model version, so an identical image is not inferred twice.
#[async_trait]
pub trait ResultCache: Send + Sync {
    /// The cached result for (`image_sha256`, `model_version`), if any and not expired.
    async fn cached_result(
        &self,
        image_sha256: &str,
        model_version: &str,
    ) -> Result<Option<JobResult>>;

    /// Cache `result` for (`image_sha256`, `model_version`) for `ttl`.
    async fn cache_result(
        &self,
        image_sha256: &str,
        model_version: &str,
        result: &JobResult,
        ttl: Duration,
    ) -> Result<()>;

    /// Store a job that is already finished (a cache hit): `record` (terminal, as given)
    /// and its `result`, without queueing anything. Subscribers see the record.
    async fn create_finished(&self, record: &JobRecord, result: &JobResult) -> Result<()>;
}

/// The id of job `job_id`'s terminal event of kind `event` (`"job.completed"`, ...).
pub fn webhook_event_id(job_id: JobId, event: &str) -> String {
    let kind = event.rsplit('.').next().unwrap_or(event);
    format!("evt_{}_{kind}", job_id.0.simple())
}

impl WebhookDelivery {
    /// The event for a job that reached `completed` or `failed` and has a `callback_url`
    /// (`None` otherwise, and for cancelled jobs). The body is the documented event:
    /// `{event, event_id, job_id, status, result | error, timestamp}`.
    pub fn for_terminal(record: &JobRecord, result: Option<&JobResult>) -> Option<WebhookDelivery> {
        let url = record.callback_url.clone()?;
        let event = match record.status {
            crate::job::JobStatus::Completed => "job.completed",
            crate::job::JobStatus::Failed => "job.failed",
            _ => return None,
        };
        let event_id = webhook_event_id(record.id, event);
        let now = Utc::now();
        let mut body = serde_json::json!({
            "event": event,
            "event_id": event_id,
            "job_id": record.id,
            "status": record.status,
            "timestamp": record.finished_at.unwrap_or(now),
        });
        match (record.status, result) {
            (crate::job::JobStatus::Completed, Some(result)) => {
                body["result"] = serde_json::to_value(result).ok()?;
            }
            (crate::job::JobStatus::Completed, None) => return None,
            _ => {
                body["error"] = serde_json::json!({
                    "error": "JOB_FAILED",
                    "detail": record.error_message.clone().unwrap_or_default(),
                });
            }
        }
        Some(WebhookDelivery {
            event_id,
            job_id: record.id,
            url,
            body: body.to_string(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            last_error: None,
        })
    }
}
