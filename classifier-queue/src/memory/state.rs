//! The synchronous heart of the in-memory backend: every map and index behind one lock.
//!
//! All times are milliseconds since the Unix epoch, read from a monotonic clock (see
//! [`Clock`]), so scores (`QueueConfig::score`) and deadlines share one timeline.
//!
//! Indexes, all keyed by `(time, seq)` so that every key is unique and ties go to the
//! earlier arrival:
//!
//! - `ready`: `(score, seq)`; the first key is the next job to serve;
//! - `delayed`: `(due, seq)` for jobs waiting out a retry delay;
//! - `leased`: `(expires, token)`; the lease token is the `seq` drawn at delivery;
//! - `record_exp`, `result_exp`, `payload_exp`: `(expires, seq)` for TTL purging.
//!
//! Every operation first calls [`State::maintain`], which purges what expired and moves due
//! retries and expired leases back to `ready` (or to the dead letters). Each step pops the
//! head of an ordered index, so the work is O(log n) per item and nothing scans.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc::UnboundedSender;

use classifier_core::backend::{
    CasOutcome, DeadLetter, Lease, NackOutcome, QueueConfig, QueueDepth, Ttls,
};
use classifier_core::job::{JobId, JobRecord, JobResult, JobStatus, Priority};

/// An index key: a time (or score) in ms and a unique sequence number.
type Key = (i64, u64);

/// Milliseconds since the Unix epoch, monotonic within the process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base: Instant,
    base_ms: i64,
}

impl Clock {
    pub(crate) fn new() -> Clock {
        Clock {
            base: Instant::now(),
            base_ms: Utc::now().timestamp_millis(),
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.base_ms + ms(self.base.elapsed())
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A time on our timeline as a `DateTime` (saturating at the far ends).
pub(crate) fn to_datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A stored value and the key of its entry in the matching expiry index.
struct Timed<T> {
    value: T,
    expires: Key,
}

/// Where a queued job is.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// In `ready` under this key.
    Ready(Key),
    /// In `delayed` under this key.
    Delayed(Key),
    /// In `leased` under this key; `key.1` is the lease token.
    Leased(Key),
}

/// A job that is in the queue (ready, delayed or leased). Dead letters are not entries.
#[derive(Debug, Clone, Copy)]
struct Entry {
    priority: Priority,
    /// Its ordering score, fixed at enqueue time so redeliveries keep their place.
    score: i64,
    /// Deliveries made so far (a released delivery is not counted).
    deliveries: u32,
    slot: Slot,
}

/// Everything the backend stores.
pub(crate) struct State {
    config: QueueConfig,
    ttls: Ttls,
    seq: u64,
    records: HashMap<JobId, Timed<JobRecord>>,
    results: HashMap<JobId, Timed<JobResult>>,
    payloads: HashMap<JobId, Timed<Bytes>>,
    record_exp: BTreeMap<Key, JobId>,
    result_exp: BTreeMap<Key, JobId>,
    payload_exp: BTreeMap<Key, JobId>,
    entries: HashMap<JobId, Entry>,
    ready: BTreeMap<Key, JobId>,
    ready_by_priority: [usize; 4],
    delayed: BTreeMap<Key, JobId>,
    leased: BTreeMap<Key, JobId>,
    dead: VecDeque<DeadLetter>,
    subscribers: HashMap<JobId, Vec<UnboundedSender<JobRecord>>>,
}

/// Why `create` refused a job.
pub(crate) enum CreateError {
    /// `max_depth` jobs are waiting.
    Full { depth: usize, limit: usize },
    /// The id is stored or queued already.
    Duplicate,
}

impl State {
    pub(crate) fn new(config: QueueConfig, ttls: Ttls) -> State {
        State {
            config,
            ttls,
            seq: 0,
            records: HashMap::new(),
            results: HashMap::new(),
            payloads: HashMap::new(),
            record_exp: BTreeMap::new(),
            result_exp: BTreeMap::new(),
            payload_exp: BTreeMap::new(),
            entries: HashMap::new(),
            ready: BTreeMap::new(),
            ready_by_priority: [0; 4],
            delayed: BTreeMap::new(),
            leased: BTreeMap::new(),
            dead: VecDeque::new(),
            subscribers: HashMap::new(),
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    // ----- maintenance -------------------------------------------------------------------

    /// Purge expired data, make due retries ready, reclaim expired leases. Returns true if
    /// a job became ready (waiting consumers should be woken).
    pub(crate) fn maintain(&mut self, now: i64) -> bool {
        self.purge(now);
        self.reclaim(now)
    }

    fn purge(&mut self, now: i64) {
        while let Some(entry) = self.record_exp.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.records.remove(&id);
            // The record is gone: its streams end.
            self.subscribers.remove(&id);
        }
        while let Some(entry) = self.result_exp.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.results.remove(&id);
        }
        while let Some(entry) = self.payload_exp.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            self.payloads.remove(&id);
        }
    }

    fn reclaim(&mut self, now: i64) -> bool {
        let mut woke = false;
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(e) = self.entries.get(&id).copied() {
                self.make_ready(id, e);
                woke = true;
            }
        }
        while let Some(entry) = self.leased.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            let Some(e) = self.entries.get(&id).copied() else {
                continue;
            };
            if e.deliveries >= self.config.max_attempts {
                let reason = format!(
                    "lease expired after {} deliveries (worker lost or too slow)",
                    e.deliveries
                );
                self.entries.remove(&id);
                self.dead_letter(id, e, reason, now);
            } else {
                tracing::debug!(job_id = %id, delivery = e.deliveries, "lease expired; redelivering");
                self.make_ready(id, e);
                woke = true;
            }
        }
        woke
    }

    /// The earliest time something will become ready by itself (a retry falling due or a
    /// lease running out), if any.
    pub(crate) fn next_wakeup(&self) -> Option<i64> {
        let delayed = self.delayed.keys().next().map(|k| k.0);
        let leased = self.leased.keys().next().map(|k| k.0);
        match (delayed, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- queue internals ---------------------------------------------------------------

    /// Put `e` in `ready` (under its own score) and store the entry.
    fn make_ready(&mut self, id: JobId, mut e: Entry) {
        let key = (e.score, self.next_seq());
        self.ready.insert(key, id);
        self.ready_by_priority[e.priority.rank() as usize] += 1;
        e.slot = Slot::Ready(key);
        self.entries.insert(id, e);
    }

    fn take_ready(&mut self, key: Key, priority: Priority) {
        self.ready.remove(&key);
        let n = &mut self.ready_by_priority[priority.rank() as usize];
        *n = n.saturating_sub(1);
    }

    fn dead_letter(&mut self, id: JobId, e: Entry, reason: String, now: i64) {
        tracing::warn!(job_id = %id, deliveries = e.deliveries, %reason, "job dead-lettered");
        self.dead.push_back(DeadLetter {
            job_id: id,
            priority: e.priority,
            deliveries: e.deliveries,
            reason,
            dead_at: to_datetime(now),
        });
    }

    /// The entry leased under `lease`, if the lease is still the current one.
    fn current_lease(&self, lease: &Lease) -> Option<(Entry, Key)> {
        let token = parse_token(&lease.token)?;
        let e = self.entries.get(&lease.job_id)?;
        match e.slot {
            Slot::Leased(key) if key.1 == token => Some((*e, key)),
            _ => None,
        }
    }

    fn waiting(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    // ----- store -------------------------------------------------------------------------

    fn record_expiry(&self, record: &JobRecord, now: i64) -> i64 {
        let status = now.saturating_add(ms(self.ttls.status));
        if record.status == JobStatus::Completed {
            // A completed record lives as long as its result.
            let result = self
                .results
                .get(&record.id)
                .map(|r| r.expires.0)
                .unwrap_or_else(|| now.saturating_add(ms(self.ttls.result)));
            status.max(result)
        } else {
            status
        }
    }

    fn store_record(&mut self, record: JobRecord, now: i64) {
        let key = (self.record_expiry(&record, now), self.next_seq());
        let id = record.id;
        if let Some(old) = self.records.insert(
            id,
            Timed {
                value: record,
                expires: key,
            },
        ) {
            self.record_exp.remove(&old.expires);
        }
        self.record_exp.insert(key, id);
    }

    pub(crate) fn create(
        &mut self,
        job: &JobRecord,
        payload: Bytes,
        now: i64,
    ) -> Result<(), CreateError> {
        let id = job.id;
        if self.records.contains_key(&id) || self.entries.contains_key(&id) {
            return Err(CreateError::Duplicate);
        }
        let depth = self.waiting();
        if depth >= self.config.max_depth {
            return Err(CreateError::Full {
                depth,
                limit: self.config.max_depth,
            });
        }
        self.store_record(job.clone(), now);
        let key = (now.saturating_add(ms(self.ttls.image)), self.next_seq());
        if let Some(old) = self.payloads.insert(
            id,
            Timed {
                value: payload,
                expires: key,
            },
        ) {
            self.payload_exp.remove(&old.expires);
        }
        self.payload_exp.insert(key, id);
        let e = Entry {
            priority: job.priority,
            score: self.config.score(job.priority, now),
            deliveries: 0,
            slot: Slot::Ready((0, 0)),
        };
        self.make_ready(id, e);
        Ok(())
    }

    /// Store a finished job (a cache hit): its result (result TTL) and its terminal record
    /// (status TTL, or as long as the result if completed), published to subscribers like a
    /// swap; nothing is queued, so `max_depth` does not apply. `false` (and nothing stored)
    /// if the id is already stored or queued.
    pub(crate) fn create_finished(
        &mut self,
        record: &JobRecord,
        result: &JobResult,
        now: i64,
    ) -> bool {
        let id = record.id;
        if self.get(id, now).is_some() || self.entries.contains_key(&id) {
            return false;
        }
        // The result first, so a completed record's expiry follows it.
        let key = (now.saturating_add(ms(self.ttls.result)), self.next_seq());
        if let Some(old) = self.results.insert(
            id,
            Timed {
                value: result.clone(),
                expires: key,
            },
        ) {
            self.result_exp.remove(&old.expires);
        }
        self.result_exp.insert(key, id);
        self.store_record(record.clone(), now);
        self.publish(record);
        true
    }

    pub(crate) fn get(&self, id: JobId, now: i64) -> Option<JobRecord> {
        self.records
            .get(&id)
            .filter(|t| t.expires.0 > now)
            .map(|t| t.value.clone())
    }

    pub(crate) fn compare_and_swap(&mut self, record: &JobRecord, now: i64) -> CasOutcome {
        let current = match self.records.get(&record.id) {
            Some(t) if t.expires.0 > now => &t.value,
            _ => return CasOutcome::Conflict(None),
        };
        if current.revision.checked_add(1) != Some(record.revision) {
            return CasOutcome::Conflict(Some(Box::new(current.clone())));
        }
        self.store_record(record.clone(), now);
        self.publish(record);
        CasOutcome::Swapped
    }

    fn publish(&mut self, record: &JobRecord) {
        let terminal = record.status.is_terminal();
        if let Some(subs) = self.subscribers.get_mut(&record.id) {
            subs.retain(|tx| tx.send(record.clone()).is_ok());
            if subs.is_empty() || terminal {
                // Nothing can follow a terminal state: end the streams.
                self.subscribers.remove(&record.id);
            }
        }
    }

    /// Register a subscriber. Returns false (and does not register) if the job does not
    /// exist or is already terminal: no change can follow.
    pub(crate) fn subscribe(
        &mut self,
        id: JobId,
        tx: UnboundedSender<JobRecord>,
        now: i64,
    ) -> bool {
        match self.get(id, now) {
            Some(r) if !r.status.is_terminal() => {
                let subs = self.subscribers.entry(id).or_default();
                subs.retain(|s| !s.is_closed());
                subs.push(tx);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn put_result(&mut self, result: &JobResult, now: i64) -> JobResult {
        let id = result.job_id;
        if let Some(t) = self.results.get(&id) {
            if t.expires.0 > now {
                return t.value.clone();
            }
        }
        let key = (now.saturating_add(ms(self.ttls.result)), self.next_seq());
        if let Some(old) = self.results.insert(
            id,
            Timed {
                value: result.clone(),
                expires: key,
            },
        ) {
            self.result_exp.remove(&old.expires);
        }
        self.result_exp.insert(key, id);
        // If the record is already completed, it now lives as long as this result.
        if let Some(t) = self.records.get(&id) {
            if t.value.status == JobStatus::Completed && t.expires.0 < key.0 {
                let record = t.value.clone();
                self.store_record(record, now);
            }
        }
        result.clone()
    }

    pub(crate) fn get_result(&self, id: JobId, now: i64) -> Option<JobResult> {
        self.results
            .get(&id)
            .filter(|t| t.expires.0 > now)
            .map(|t| t.value.clone())
    }

    pub(crate) fn payload(&self, id: JobId, now: i64) -> Option<Bytes> {
        self.payloads
            .get(&id)
            .filter(|t| t.expires.0 > now)
            .map(|t| t.value.clone())
    }

    pub(crate) fn delete_payload(&mut self, id: JobId) {
        if let Some(old) = self.payloads.remove(&id) {
            self.payload_exp.remove(&old.expires);
        }
    }

    // ----- queue -------------------------------------------------------------------------

    /// Enqueue `id` unless it is queued or leased already; a dead letter of the same id
    /// leaves the dead-letter list. Returns true if it was added.
    pub(crate) fn enqueue(&mut self, id: JobId, priority: Priority, now: i64) -> bool {
        if self.entries.contains_key(&id) {
            return false;
        }
        self.dead.retain(|d| d.job_id != id);
        let e = Entry {
            priority,
            score: self.config.score(priority, now),
            deliveries: 0,
            slot: Slot::Ready((0, 0)),
        };
        self.make_ready(id, e);
        true
    }

    /// Lease up to `max` ready jobs, best first, appending to `out`.
    pub(crate) fn take(&mut self, max: usize, now: i64, out: &mut Vec<Lease>) {
        let expires = now.saturating_add(ms(self.config.visibility_timeout));
        let expires_at = to_datetime(expires);
        while out.len() < max {
            let Some(((score, seq), id)) = self.ready.pop_first() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            let n = &mut self.ready_by_priority[e.priority.rank() as usize];
            *n = n.saturating_sub(1);
            debug_assert!(matches!(e.slot, Slot::Ready(k) if k == (score, seq)));
            self.seq += 1;
            let key = (expires, self.seq);
            e.deliveries = e.deliveries.saturating_add(1);
            e.slot = Slot::Leased(key);
            let lease = Lease {
                job_id: id,
                token: format_token(key.1),
                delivery: e.deliveries,
                priority: e.priority,
                expires_at,
            };
            self.leased.insert(key, id);
            out.push(lease);
        }
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub(crate) fn extend(&mut self, lease: &mut Lease, now: i64) -> bool {
        let Some((_, key)) = self.current_lease(lease) else {
            return false;
        };
        let expires = now.saturating_add(ms(self.config.visibility_timeout));
        let new_key = (expires, key.1);
        self.leased.remove(&key);
        self.leased.insert(new_key, lease.job_id);
        if let Some(e) = self.entries.get_mut(&lease.job_id) {
            e.slot = Slot::Leased(new_key);
        }
        lease.expires_at = to_datetime(expires);
        true
    }

    pub(crate) fn ack(&mut self, lease: &Lease) -> bool {
        let Some((_, key)) = self.current_lease(lease) else {
            return false;
        };
        self.leased.remove(&key);
        self.entries.remove(&lease.job_id);
        true
    }

    pub(crate) fn nack(&mut self, lease: &Lease, reason: &str, now: i64) -> NackOutcome {
        let Some((e, key)) = self.current_lease(lease) else {
            return NackOutcome::Stale;
        };
        self.leased.remove(&key);
        if e.deliveries >= self.config.max_attempts {
            self.entries.remove(&lease.job_id);
            self.dead_letter(lease.job_id, e, reason.to_string(), now);
            return NackOutcome::DeadLettered;
        }
        let due = now.saturating_add(ms(self.config.retry_delay(e.deliveries)));
        let key = (due, self.next_seq());
        self.delayed.insert(key, lease.job_id);
        self.entries.insert(
            lease.job_id,
            Entry {
                slot: Slot::Delayed(key),
                ..e
            },
        );
        NackOutcome::Retrying {
            at: to_datetime(due),
        }
    }

    /// Back to ready at once; the delivery is not counted (the next lease has the same
    /// delivery number as this one).
    pub(crate) fn release(&mut self, lease: &Lease) -> bool {
        let Some((mut e, key)) = self.current_lease(lease) else {
            return false;
        };
        self.leased.remove(&key);
        e.deliveries = e.deliveries.saturating_sub(1);
        self.make_ready(lease.job_id, e);
        true
    }

    pub(crate) fn remove(&mut self, id: JobId) -> bool {
        let Some(e) = self.entries.get(&id).copied() else {
            return false;
        };
        match e.slot {
            Slot::Ready(key) => self.take_ready(key, e.priority),
            Slot::Delayed(key) => {
                self.delayed.remove(&key);
            }
            Slot::Leased(_) => return false,
        }
        self.entries.remove(&id);
        true
    }

    pub(crate) fn depth(&self) -> QueueDepth {
        QueueDepth {
            ready: self.ready_by_priority,
            delayed: self.delayed.len(),
            in_flight: self.leased.len(),
            dead: self.dead.len(),
        }
    }

    pub(crate) fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.iter().cloned().collect()
    }

    pub(crate) fn retry_dead_letter(&mut self, id: JobId, now: i64) -> bool {
        let Some(pos) = self.dead.iter().position(|d| d.job_id == id) else {
            return false;
        };
        let Some(dead) = self.dead.remove(pos) else {
            return false;
        };
        self.enqueue(id, dead.priority, now)
    }
}

fn format_token(token: u64) -> String {
    format!("{token:016x}")
}

fn parse_token(token: &str) -> Option<u64> {
    u64::from_str_radix(token, 16).ok()
}
