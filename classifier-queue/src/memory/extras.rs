//! The in-memory webhook outbox, feedback store and result cache.
//!
//! They live behind their own lock ([`Extras`]), apart from the queue's [`super::state::State`],
//! so webhook dispatch and cache lookups never contend with dequeue/ack. The one operation
//! that touches jobs, [`ResultCache::create_finished`], goes through the queue state (it
//! stores a record and a result and publishes to subscribers).
//!
//! Semantics beyond the trait documentation:
//!
//! - Webhook due times are wall-clock times (`next_attempt_at`, written by the dispatcher
//!   from `Utc::now()`), so claims compare them with the wall clock, not the backend's
//!   monotonic timeline (which may trail it by a millisecond or two); deliveries due at the
//!   same millisecond go in the order they were scheduled. Cache TTLs use the backend's
//!   clock, like every other TTL.
//! - [`WebhookOutbox::dead_letter_webhook`] only moves an event that is still pending (like
//!   `reschedule_webhook`): an event completed meanwhile by another dispatcher stays
//!   completed.
//! - [`WebhookOutbox::retry_webhook_dead_letter`] keeps `last_error` (the history of why it
//!   was dead-lettered) and only resets `attempts` and the due time.
//! - [`ResultCache::create_finished`] refuses a record that is not terminal, a result of
//!   another job, and an id that is already stored or queued.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use classifier_core::backend::{
    FeedbackEntry, FeedbackStore, ResultCache, WebhookDelivery, WebhookOutbox,
};
use classifier_core::job::{JobId, JobRecord, JobResult};
use classifier_core::Result;

use super::state::{ms, to_datetime};
use super::InMemoryBackend;
use crate::error::{check_finished, Error};

/// An index key: a time in ms and a unique sequence number (ties go to the earlier one).
type Key = (i64, u64);

/// A pending webhook and its key in the due index.
struct Pending {
    delivery: WebhookDelivery,
    due: Key,
}

/// Webhooks, feedback and cached results.
#[derive(Default)]
pub(crate) struct Extras {
    seq: u64,
    /// Pending webhooks by event id.
    pending: HashMap<String, Pending>,
    /// Pending webhooks by due time.
    due: BTreeMap<Key, String>,
    /// Dead-lettered webhooks by event id, with their position in `dead_order`.
    dead: HashMap<String, (u64, WebhookDelivery)>,
    /// Dead-letter order (oldest first).
    dead_order: BTreeMap<u64, String>,
    /// Feedback by job, with its first-given sequence number.
    feedback: HashMap<JobId, (u64, FeedbackEntry)>,
    /// Feedback in the order first given.
    feedback_order: BTreeMap<u64, JobId>,
    /// Cached results by (model version, image sha256), with their expiry key.
    cache: HashMap<(String, String), (JobResult, Key)>,
    /// Cache expiry index.
    cache_exp: BTreeMap<Key, (String, String)>,
}

impl Extras {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Drop expired cache entries (from the head of the ordered expiry index).
    fn purge(&mut self, now: i64) {
        while let Some(entry) = self.cache_exp.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.cache.remove(&key);
        }
    }

    // ----- webhooks ----------------------------------------------------------------------

    fn schedule(&mut self, delivery: WebhookDelivery, due_ms: i64) {
        let key = (due_ms, self.next_seq());
        let id = delivery.event_id.clone();
        if let Some(old) = self
            .pending
            .insert(id.clone(), Pending { delivery, due: key })
        {
            self.due.remove(&old.due);
        }
        self.due.insert(key, id);
    }

    fn enqueue_webhook(&mut self, delivery: &WebhookDelivery) -> bool {
        if self.pending.contains_key(&delivery.event_id)
            || self.dead.contains_key(&delivery.event_id)
        {
            return false;
        }
        self.schedule(
            delivery.clone(),
            delivery.next_attempt_at.timestamp_millis(),
        );
        true
    }

    fn claim_webhooks(&mut self, max: usize, lease: Duration, now: i64) -> Vec<WebhookDelivery> {
        let until = now.saturating_add(ms(lease));
        let mut out = Vec::new();
        while out.len() < max {
            let Some(entry) = self.due.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            let Some(mut pending) = self.pending.remove(&id) else {
                continue;
            };
            pending.delivery.next_attempt_at = to_datetime(until);
            out.push(pending.delivery.clone());
            self.schedule(pending.delivery, until);
        }
        out
    }

    fn complete_webhook(&mut self, event_id: &str) {
        if let Some(old) = self.pending.remove(event_id) {
            self.due.remove(&old.due);
        }
    }

    fn reschedule_webhook(&mut self, delivery: &WebhookDelivery) {
        if self.pending.contains_key(&delivery.event_id) {
            self.schedule(
                delivery.clone(),
                delivery.next_attempt_at.timestamp_millis(),
            );
        }
    }

    fn dead_letter_webhook(&mut self, delivery: &WebhookDelivery) {
        let Some(old) = self.pending.remove(&delivery.event_id) else {
            return;
        };
        self.due.remove(&old.due);
        tracing::warn!(
            event_id = %delivery.event_id,
            job_id = %delivery.job_id,
            attempts = delivery.attempts,
            last_error = delivery.last_error.as_deref().unwrap_or(""),
            "webhook dead-lettered"
        );
        let seq = self.next_seq();
        self.dead_order.insert(seq, delivery.event_id.clone());
        self.dead
            .insert(delivery.event_id.clone(), (seq, delivery.clone()));
    }

    fn webhook_dead_letters(&self) -> Vec<WebhookDelivery> {
        self.dead_order
            .values()
            .filter_map(|id| self.dead.get(id).map(|(_, d)| d.clone()))
            .collect()
    }

    fn retry_webhook_dead_letter(&mut self, event_id: &str, now: i64) -> bool {
        let Some((seq, mut delivery)) = self.dead.remove(event_id) else {
            return false;
        };
        self.dead_order.remove(&seq);
        delivery.attempts = 0;
        delivery.next_attempt_at = to_datetime(now);
        self.schedule(delivery, now);
        true
    }

    // ----- feedback ----------------------------------------------------------------------

    fn add_feedback(&mut self, entry: &FeedbackEntry) -> u64 {
        match self.feedback.get_mut(&entry.job_id) {
            Some((_, stored)) => *stored = entry.clone(),
            None => {
                let seq = self.next_seq();
                self.feedback_order.insert(seq, entry.job_id);
                self.feedback.insert(entry.job_id, (seq, entry.clone()));
            }
        }
        self.feedback.len() as u64
    }

    fn feedback_entries(&self, offset: usize, limit: usize) -> Vec<FeedbackEntry> {
        self.feedback_order
            .values()
            .skip(offset)
            .take(limit)
            .filter_map(|id| self.feedback.get(id).map(|(_, e)| e.clone()))
            .collect()
    }

    // ----- result cache ------------------------------------------------------------------

    fn cached_result(&self, sha: &str, model: &str, now: i64) -> Option<JobResult> {
        self.cache
            .get(&(model.to_string(), sha.to_string()))
            .filter(|(_, exp)| exp.0 > now)
            .map(|(r, _)| r.clone())
    }

    fn cache_result(
        &mut self,
        sha: &str,
        model: &str,
        result: &JobResult,
        ttl: Duration,
        now: i64,
    ) {
        let key = (now.saturating_add(ms(ttl)), self.next_seq());
        let name = (model.to_string(), sha.to_string());
        if let Some((_, old)) = self.cache.insert(name.clone(), (result.clone(), key)) {
            self.cache_exp.remove(&old);
        }
        self.cache_exp.insert(key, name);
    }
}

/// Wall-clock milliseconds since the Unix epoch (the timeline of webhook due times).
fn wall_clock() -> i64 {
    Utc::now().timestamp_millis()
}

impl InMemoryBackend {
    /// Take the extras lock, purge expired cache entries, then run `f`.
    fn with_extras<T>(&self, f: impl FnOnce(&mut Extras, i64) -> T) -> T {
        let now = self.now();
        let mut extras = self.extras.lock();
        extras.purge(now);
        f(&mut extras, now)
    }
}

#[async_trait]
impl WebhookOutbox for InMemoryBackend {
    async fn enqueue_webhook(&self, delivery: &WebhookDelivery) -> Result<bool> {
        let added = self.with_extras(|x, _| x.enqueue_webhook(delivery));
        if added {
            self.webhook_added.notify_one();
        }
        Ok(added)
    }

    async fn claim_webhooks(&self, max: usize, lease: Duration) -> Result<Vec<WebhookDelivery>> {
        Ok(self.with_extras(|x, _| x.claim_webhooks(max, lease, wall_clock())))
    }

    async fn complete_webhook(&self, event_id: &str) -> Result<()> {
        self.with_extras(|x, _| x.complete_webhook(event_id));
        Ok(())
    }

    async fn reschedule_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        self.with_extras(|x, _| x.reschedule_webhook(delivery));
        Ok(())
    }

    async fn dead_letter_webhook(&self, delivery: &WebhookDelivery) -> Result<()> {
        self.with_extras(|x, _| x.dead_letter_webhook(delivery));
        Ok(())
    }

    async fn pending_webhooks(&self) -> Result<usize> {
        Ok(self.with_extras(|x, _| x.pending.len()))
    }

    async fn webhook_dead_letters(&self) -> Result<Vec<WebhookDelivery>> {
        Ok(self.with_extras(|x, _| x.webhook_dead_letters()))
    }

    async fn retry_webhook_dead_letter(&self, event_id: &str) -> Result<bool> {
        let moved = self.with_extras(|x, _| x.retry_webhook_dead_letter(event_id, wall_clock()));
        if moved {
            self.webhook_added.notify_one();
        }
        Ok(moved)
    }

    fn webhook_signal(&self) -> Option<&tokio::sync::Notify> {
        Some(&self.webhook_added)
    }
}

#[async_trait]
impl FeedbackStore for InMemoryBackend {
    async fn add_feedback(&self, entry: &FeedbackEntry) -> Result<u64> {
        Ok(self.with_extras(|x, _| x.add_feedback(entry)))
    }

    async fn feedback_count(&self) -> Result<u64> {
        Ok(self.with_extras(|x, _| x.feedback.len() as u64))
    }

    async fn feedback_entries(&self, offset: usize, limit: usize) -> Result<Vec<FeedbackEntry>> {
        Ok(self.with_extras(|x, _| x.feedback_entries(offset, limit)))
    }
}

#[async_trait]
impl ResultCache for InMemoryBackend {
    async fn cached_result(
        &self,
        image_sha256: &str,
        model_version: &str,
    ) -> Result<Option<JobResult>> {
        Ok(self.with_extras(|x, now| x.cached_result(image_sha256, model_version, now)))
    }

    async fn cache_result(
        &self,
        image_sha256: &str,
        model_version: &str,
        result: &JobResult,
        ttl: Duration,
    ) -> Result<()> {
        self.with_extras(|x, now| x.cache_result(image_sha256, model_version, result, ttl, now));
        Ok(())
    }

    async fn create_finished(&self, record: &JobRecord, result: &JobResult) -> Result<()> {
        check_finished(record, result)?;
        if self.with_state(|s, now| s.create_finished(record, result, now)) {
            Ok(())
        } else {
            Err(Error::DuplicateJob(record.id).into())
        }
    }
}
