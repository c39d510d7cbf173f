//! The webhook outbox, feedback store and result cache in Redis (key layout in
//! [`super::keys`]). Every change that touches several keys is one script; everything is
//! durable (it survives a restart of the service) and shared by every process of the
//! deployment.
//!
//! Semantics beyond the trait documentation (the same as the in-memory backend):
//!
//! - [`WebhookOutbox::dead_letter_webhook`] only moves an event that is still pending: an
//!   event completed meanwhile by another dispatcher stays completed.
//! - [`WebhookOutbox::retry_webhook_dead_letter`] keeps `last_error` and only resets
//!   `attempts` and the due time.
//! - [`ResultCache::create_finished`] refuses a record that is not terminal, a result of
//!   another job, and an id that is already stored or queued.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use classifier_core::backend::{
    FeedbackEntry, FeedbackStore, ResultCache, WebhookDelivery, WebhookOutbox,
};
use classifier_core::job::{JobRecord, JobResult};
use classifier_core::{Error, Result};
use redis::{Script, Value};

use super::{ms, reply, to_json, RedisBackend};
use crate::error::check_finished;

/// How often `retry_webhook_dead_letter` re-reads an entry that changed under it.
const RETRY_CAS_ROUNDS: usize = 8;

impl RedisBackend {
    /// Invoke `script` with `keys` and `args`.
    async fn invoke(
        &self,
        what: &str,
        script: &Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<Value> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        self.run(what, inv.invoke_async::<Value>(&mut conn)).await
    }

    /// Decode an array of JSON documents.
    fn documents<T: serde::de::DeserializeOwned>(reply: &Value, what: &str) -> Result<Vec<T>> {
        reply::array(reply, what)?
            .iter()
            .map(|v| reply::json(&reply::string(v, what)?, what))
            .collect()
    }
}

#[async_trait]
impl WebhookOutbox for RedisBackend {
    async fn enqueue_webhook(&self, delivery: &WebhookDelivery) -> Result<bool> {
        let json = to_json(delivery)?;
        let due = delivery.next_attempt_at.timestamp_millis().to_string();
        let reply = self
            .invoke(
                "enqueue_webhook",
                &self.scripts.wh_enqueue,
                &self.keys.webhooks(),
                &[
                    delivery.event_id.as_bytes(),
                    json.as_bytes(),
                    due.as_bytes(),
                ],
            )
            .await?;
        let added = reply::int(&reply, "enqueue_webhook")? == 1;
        if added {
            self.webhook_added.notify_one();
        }
        Ok(added)
    }

    fn webhook_signal(&self) -> Option<&tokio::sync::Notify> {
        Some(&self.webhook_added)
    }

    async fn claim_webhooks(&self, max: usize, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = Utc::now().timestamp_millis();
        let lease_ms = i64::try_from(ms(lease)).unwrap_or(i64::MAX);
        let until = reply::millis(now.saturating_add(lease_ms), "webhook lease")?;
        let reply = self
            .invoke(
                "claim_webhooks",
                &self.scripts.wh_claim,
                &self.keys.webhooks()[..2],
                &[
                    now.to_string().as_bytes(),
                    max.to_string().as_bytes(),
                    lease_ms.to_string().as_bytes(),
                ],
            )
            .await?;
        let mut claimed: Vec<WebhookDelivery> = Self::documents(&reply, "webhook delivery")?;
        for d in &mut claimed {
            d.next_attempt_at = until;
        }
        Ok(claimed)
    }

    async fn complete_webhook(&self, event_id: &str) -> Result<()> {
        self.invoke(
            "complete_webhook",
            &self.scripts.wh_complete,
            &self.keys.webhooks()[..2],
            &[event_id.as_bytes()],
        )
        .await?;
        Ok(())
    }

    async fn reschedule_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        let json = to_json(delivery)?;
        let due = delivery.next_attempt_at.timestamp_millis().to_string();
        self.invoke(
            "reschedule_webhook",
            &self.scripts.wh_reschedule,
            &self.keys.webhooks()[..2],
            &[
                delivery.event_id.as_bytes(),
                json.as_bytes(),
                due.as_bytes(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn dead_letter_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        let json = to_json(delivery)?;
        let moved = self
            .invoke(
                "dead_letter_webhook",
                &self.scripts.wh_dead_letter,
                &self.keys.webhooks(),
                &[delivery.event_id.as_bytes(), json.as_bytes()],
            )
            .await?;
        if reply::int(&moved, "dead_letter_webhook")? == 1 {
            tracing::warn!(
                event_id = %delivery.event_id,
                job_id = %delivery.job_id,
                attempts = delivery.attempts,
                last_error = delivery.last_error.as_deref().unwrap_or(""),
                "webhook dead-lettered"
            );
        }
        Ok(())
    }

    async fn pending_webhooks(&self) -> Result<usize> {
        let mut conn = self.conn.clone();
        let n: Value = self
            .run(
                "pending_webhooks",
                redis::cmd("HLEN")
                    .arg(&self.keys.webhooks()[0])
                    .query_async(&mut conn),
            )
            .await?;
        Ok(usize::try_from(reply::uint(&n, "pending_webhooks")?).unwrap_or(usize::MAX))
    }

    async fn webhook_dead_letters(&self) -> Result<Vec<WebhookDelivery>> {
        let reply = self
            .invoke(
                "webhook_dead_letters",
                &self.scripts.wh_dead_letters,
                &self.keys.webhooks(),
                &[],
            )
            .await?;
        Self::documents(&reply, "webhook dead letter")
    }

    async fn retry_webhook_dead_letter(&self, event_id: &str) -> Result<bool> {
        let keys = self.keys.webhooks();
        for _ in 0..RETRY_CAS_ROUNDS {
            let mut conn = self.conn.clone();
            let stored: Value = self
                .run(
                    "retry_webhook_dead_letter",
                    redis::cmd("HGET")
                        .arg(&keys[2])
                        .arg(event_id)
                        .query_async(&mut conn),
                )
                .await?;
            let Some(stored) = reply::opt_string(&stored, "webhook dead letter")? else {
                return Ok(false);
            };
            let mut delivery: WebhookDelivery = reply::json(&stored, "webhook dead letter")?;
            let now = Utc::now();
            delivery.attempts = 0;
            delivery.next_attempt_at = now;
            let json = to_json(&delivery)?;
            let reply = self
                .invoke(
                    "retry_webhook_dead_letter",
                    &self.scripts.wh_retry_dead,
                    &keys,
                    &[
                        event_id.as_bytes(),
                        stored.as_bytes(),
                        json.as_bytes(),
                        now.timestamp_millis().to_string().as_bytes(),
                    ],
                )
                .await?;
            match reply::int(&reply, "retry_webhook_dead_letter")? {
                1 => {
                    self.webhook_added.notify_one();
                    return Ok(true);
                }
                0 => return Ok(false),
                _ => continue,
            }
        }
        Err(Error::BackendUnavailable(format!(
            "webhook dead letter {event_id} kept changing while being retried"
        )))
    }
}

#[async_trait]
impl FeedbackStore for RedisBackend {
    async fn add_feedback(&self, entry: &FeedbackEntry) -> Result<u64> {
        let json = to_json(entry)?;
        let reply = self
            .invoke(
                "add_feedback",
                &self.scripts.fb_add,
                &self.keys.feedback(),
                &[entry.job_id.to_string().as_bytes(), json.as_bytes()],
            )
            .await?;
        reply::uint(&reply, "add_feedback")
    }

    async fn feedback_count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        let n: Value = self
            .run(
                "feedback_count",
                redis::cmd("HLEN")
                    .arg(&self.keys.feedback()[0])
                    .query_async(&mut conn),
            )
            .await?;
        reply::uint(&n, "feedback_count")
    }

    async fn feedback_entries(&self, offset: usize, limit: usize) -> Result<Vec<FeedbackEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let start = i64::try_from(offset).unwrap_or(i64::MAX);
        let stop = i64::try_from(limit)
            .unwrap_or(i64::MAX)
            .saturating_add(start)
            .saturating_sub(1);
        let reply = self
            .invoke(
                "feedback_entries",
                &self.scripts.fb_entries,
                &self.keys.feedback(),
                &[start.to_string().as_bytes(), stop.to_string().as_bytes()],
            )
            .await?;
        Self::documents(&reply, "feedback entry")
    }
}

#[async_trait]
impl ResultCache for RedisBackend {
    async fn cached_result(
        &self,
        image_sha256: &str,
        model_version: &str,
    ) -> Result<Option<JobResult>> {
        let mut conn = self.conn.clone();
        let key = self.keys.cache(model_version, image_sha256);
        let v: Value = self
            .run(
                "cached_result",
                redis::cmd("GET").arg(&key).query_async(&mut conn),
            )
            .await?;
        match reply::opt_string(&v, "cached result")? {
            Some(s) => reply::json(&s, "cached result").map(Some),
            None => Ok(None),
        }
    }

    async fn cache_result(
        &self,
        image_sha256: &str,
        model_version: &str,
        result: &JobResult,
        ttl: Duration,
    ) -> Result<()> {
        let json = to_json(result)?;
        let mut conn = self.conn.clone();
        let key = self.keys.cache(model_version, image_sha256);
        let _: Value = self
            .run(
                "cache_result",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("PX")
                    .arg(ms(ttl))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn create_finished(&self, record: &JobRecord, result: &JobResult) -> Result<()> {
        check_finished(record, result)?;
        let doc = to_json(record)?;
        let json = to_json(result)?;
        let keys = [
            self.keys.status(record.id),
            self.keys.result(record.id),
            self.queue_keys[12].clone(),
        ];
        let reply = self
            .invoke(
                "create_finished",
                &self.scripts.create_finished,
                &keys,
                &[
                    record.id.to_string().as_bytes(),
                    record.revision.to_string().as_bytes(),
                    doc.as_bytes(),
                    record.status.as_str().as_bytes(),
                    ms(self.ttls.status).to_string().as_bytes(),
                    ms(self.ttls.result).to_string().as_bytes(),
                    json.as_bytes(),
                    self.keys.events(record.id).as_bytes(),
                ],
            )
            .await?;
        if reply::int(&reply, "create_finished")? == 1 {
            Ok(())
        } else {
            Err(crate::error::Error::DuplicateJob(record.id).into())
        }
    }
}
