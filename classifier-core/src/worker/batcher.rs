//! The dynamic batcher: a priority queue that inference threads take batches from.
//!
//! Producers [`push`](BatchQueue::push) items tagged with a batch key (the model version), a
//! priority and the largest batch their model runs per call. A consumer thread calls
//! [`next_batch`](BatchQueue::next_batch): it takes the best item, adds every waiting item of
//! the same key up to the limit, and, if the batch is still short, waits at most `max_delay`
//! for more **only while more items are announced** (leased jobs on their way to inference,
//! see [`BatchQueue::announce`]). A lone job with nothing else coming runs at once, so
//! batching never adds latency to an idle service.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How batches are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// The most items in one batch (further capped by each item's own limit).
    pub max_batch: usize,
    /// The longest a short batch waits for announced items to arrive.
    pub max_delay: Duration,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch: 8,
            max_delay: Duration::from_millis(5),
        }
    }
}

struct Entry<T> {
    priority: u8,
    seq: u64,
    key: String,
    limit: usize,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Higher priority first, then first in, first out.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct State<T> {
    items: BinaryHeap<Entry<T>>,
    seq: u64,
    expected: usize,
    closed: bool,
    /// Consumers blocked on `changed`. A push wakes them only if there are any: the futex
    /// `Condvar` makes a system call for every notification, waiter or not, and when every
    /// consumer is busy (a loaded server) no one is waiting.
    sleepers: usize,
}

/// A blocking, multi-consumer priority queue that hands out batches. Share it in an `Arc`.
///
/// ```
/// use classifier_core::worker::{BatchPolicy, BatchQueue};
/// let queue = BatchQueue::new();
/// queue.push("low", "model-a", 0, 8).unwrap();
/// queue.push("urgent", "model-a", 3, 8).unwrap();
/// queue.push("other model", "model-b", 3, 8).unwrap();
/// let batch = queue.next_batch(&BatchPolicy::default()).unwrap();
/// assert_eq!(batch, vec!["urgent", "low"]); // best first, same model only
/// ```
pub struct BatchQueue<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    /// Items waiting, mirrored outside the lock for [`BatchQueue::has_work`].
    waiting: AtomicUsize,
    /// `closed`, mirrored outside the lock.
    closed: AtomicBool,
}

/// What [`BatchQueue::next_batch_or_help`] hands a consumer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// A batch to run (best item first).
    Batch(Vec<T>),
    /// Nothing to run, and the consumer's `help` check said it is wanted elsewhere.
    Help,
}

impl<T> std::fmt::Debug for BatchQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("BatchQueue")
            .field("waiting", &s.items.len())
            .field("expected", &s.expected)
            .field("closed", &s.closed)
            .finish()
    }
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        BatchQueue::new()
    }
}

/// A promise that one item will be pushed soon (see [`BatchQueue::announce`]). Dropping it
/// without pushing withdraws the promise.
pub struct Announcement<T> {
    queue: Arc<BatchQueue<T>>,
    live: bool,
}

impl<T> std::fmt::Debug for Announcement<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcement")
            .field("live", &self.live)
            .finish()
    }
}

impl<T> Announcement<T> {
    /// Push the announced item (the promise is kept atomically with the push).
    pub fn push(mut self, item: T, key: &str, priority: u8, limit: usize) -> Result<(), T> {
        self.live = false;
        self.queue.push_inner(item, key, priority, limit, true)
    }
}

impl<T> Drop for Announcement<T> {
    fn drop(&mut self) {
        if self.live {
            let mut s = self.queue.lock();
            s.expected = s.expected.saturating_sub(1);
            self.queue.publish(s);
        }
    }
}

impl<T> BatchQueue<T> {
    /// An empty, open queue.
    pub fn new() -> Self {
        BatchQueue {
            state: Mutex::new(State {
                items: BinaryHeap::new(),
                seq: 0,
                expected: 0,
                closed: false,
                sleepers: 0,
            }),
            changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section leaves the state consistent: recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Release the lock after a change and wake the blocked consumers, if any. (A consumer
    /// counts itself in `sleepers` under the lock before it waits, so none is missed.)
    fn publish(&self, s: MutexGuard<'_, State<T>>) {
        let sleepers = s.sleepers;
        drop(s);
        if sleepers > 0 {
            self.changed.notify_all();
        }
    }

    /// Block on `changed` (at most `timeout`, if given), counted in `sleepers`.
    fn sleep<'a>(
        &'a self,
        mut s: MutexGuard<'a, State<T>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State<T>> {
        s.sleepers += 1;
        let mut s = match timeout {
            None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            Some(t) => self
                .changed
                .wait_timeout(s, t)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0),
        };
        s.sleepers -= 1;
        s
    }

    /// Say that one more item is on its way, so that short batches wait for it (at most
    /// `max_delay`).
    pub fn announce(self: &Arc<Self>) -> Announcement<T> {
        self.lock().expected += 1;
        Announcement {
            queue: self.clone(),
            live: true,
        }
    }

    /// Items announced and not pushed yet.
    pub fn expected(&self) -> usize {
        self.lock().expected
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// True if no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add an item; `key` groups items that may share a batch, `limit` is the largest batch
    /// the item may be part of. Gives the item back if the queue is closed.
    pub fn push(&self, item: T, key: &str, priority: u8, limit: usize) -> Result<(), T> {
        self.push_inner(item, key, priority, limit, false)
    }

    fn push_inner(
        &self,
        item: T,
        key: &str,
        priority: u8,
        limit: usize,
        announced: bool,
    ) -> Result<(), T> {
        let mut s = self.lock();
        if announced {
            s.expected = s.expected.saturating_sub(1);
        }
        if s.closed {
            self.publish(s);
            return Err(item);
        }
        s.seq += 1;
        let seq = s.seq;
        s.items.push(Entry {
            priority,
            seq,
            key: key.to_string(),
            limit: limit.max(1),
            item,
        });
        self.waiting.store(s.items.len(), AtomicOrdering::SeqCst);
        self.publish(s);
        Ok(())
    }

    /// Stop accepting items; consumers drain what is waiting and then get `None`.
    pub fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        self.closed.store(true, AtomicOrdering::SeqCst);
        self.publish(s);
    }

    /// Whether a consumer has something to do: an item waits or the queue is closed. Reads
    /// two atomics, no lock (cheap enough to poll while helping).
    pub fn has_work(&self) -> bool {
        self.waiting.load(AtomicOrdering::SeqCst) > 0 || self.closed.load(AtomicOrdering::SeqCst)
    }

    /// Wake every consumer blocked in [`next_batch_or_help`](Self::next_batch_or_help), so
    /// that it checks its `help` condition again (call it after making that condition true).
    pub fn wake_consumers(&self) {
        self.publish(self.lock());
    }

    /// Move waiting items with `key` into `batch` (best first) until it holds `limit`.
    fn take_matching(s: &mut State<T>, key: &str, limit: usize, batch: &mut Vec<T>) {
        if batch.len() >= limit || s.items.is_empty() {
            return;
        }
        let mut others = Vec::new();
        while batch.len() < limit {
            let Some(entry) = s.items.pop() else { break };
            if entry.key == key {
                batch.push(entry.item);
            } else {
                others.push(entry);
            }
        }
        s.items.extend(others);
    }

    /// Block until a batch is ready and return it (best item first); `None` once the queue
    /// is closed and drained.
    pub fn next_batch(&self, policy: &BatchPolicy) -> Option<Vec<T>> {
        match self.next_batch_or_help(policy, || false)? {
            Next::Batch(batch) => Some(batch),
            Next::Help => None, // unreachable: `help` never says so
        }
    }

    /// Like [`next_batch`](Self::next_batch), but while no item waits, return
    /// [`Next::Help`] as soon as `help()` is true (checked before every wait, and after
    /// every [`wake_consumers`](Self::wake_consumers)). `None` once the queue is closed and
    /// drained.
    pub fn next_batch_or_help(
        &self,
        policy: &BatchPolicy,
        help: impl Fn() -> bool,
    ) -> Option<Next<T>> {
        let mut s = self.lock();
        let first = loop {
            if let Some(entry) = s.items.pop() {
                break entry;
            }
            if s.closed {
                return None;
            }
            if help() {
                return Some(Next::Help);
            }
            s = self.sleep(s, None);
        };
        let limit = first.limit.min(policy.max_batch).max(1);
        let key = first.key;
        let mut batch = Vec::with_capacity(limit);
        batch.push(first.item);
        Self::take_matching(&mut s, &key, limit, &mut batch);
        if batch.len() < limit && !policy.max_delay.is_zero() {
            let deadline = Instant::now() + policy.max_delay;
            while batch.len() < limit && s.expected > 0 && !s.closed {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                s = self.sleep(s, Some(deadline - now));
                Self::take_matching(&mut s, &key, limit, &mut batch);
            }
        }
        self.waiting.store(s.items.len(), AtomicOrdering::SeqCst);
        Some(Next::Batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_batch: usize, ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(ms),
        }
    }

    #[test]
    fn orders_by_priority_then_fifo() {
        let q = BatchQueue::new();
        for (i, p) in [(1, 0u8), (2, 2), (3, 2), (4, 4), (5, 1)] {
            q.push(i, "m", p, 1).unwrap();
        }
        let order: Vec<i32> = (0..5)
            .map(|_| q.next_batch(&policy(8, 0)).unwrap()[0])
            .collect();
        assert_eq!(order, vec![4, 2, 3, 5, 1]);
    }

    #[test]
    fn batches_follow_the_item_limit_and_the_key() {
        let q = BatchQueue::new();
        for i in 0..5 {
            q.push(i, "a", 1, 2).unwrap();
        }
        q.push(99, "b", 1, 8).unwrap();
        assert_eq!(q.next_batch(&policy(8, 0)).unwrap(), vec![0, 1]);
        assert_eq!(q.next_batch(&policy(8, 0)).unwrap(), vec![2, 3]);
        // the policy caps too
        assert_eq!(q.next_batch(&policy(1, 0)).unwrap(), vec![4]);
        assert_eq!(q.next_batch(&policy(8, 0)).unwrap(), vec![99]);
    }

    #[test]
    fn a_lone_item_runs_at_once_even_with_a_long_delay() {
        let q = BatchQueue::new();
        q.push(1, "m", 0, 8).unwrap();
        // Nothing announced: no waiting (a 10 s delay would hang the test otherwise).
        assert_eq!(q.next_batch(&policy(8, 10_000)).unwrap(), vec![1]);
    }

    #[test]
    fn short_batches_wait_for_announced_items() {
        let q = Arc::new(BatchQueue::new());
        let coming = q.announce();
        q.push(1, "m", 0, 8).unwrap();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            coming.push(2, "m", 0, 8).unwrap();
        });
        let batch = q.next_batch(&policy(8, 10_000)).unwrap();
        producer.join().unwrap();
        assert_eq!(batch, vec![1, 2]);
        assert_eq!(q.expected(), 0);
    }

    #[test]
    fn a_withdrawn_announcement_releases_the_waiter() {
        let q = Arc::new(BatchQueue::new());
        let coming = q.announce();
        q.push(1, "m", 0, 8).unwrap();
        let producer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(coming);
        });
        assert_eq!(q.next_batch(&policy(8, 10_000)).unwrap(), vec![1]);
        producer.join().unwrap();
    }

    #[test]
    fn close_drains_then_ends_and_refuses_new_items() {
        let q = Arc::new(BatchQueue::new());
        q.push(1, "m", 0, 1).unwrap();
        q.close();
        assert_eq!(q.push(2, "m", 0, 1), Err(2));
        assert_eq!(q.next_batch(&policy(8, 0)), Some(vec![1]));
        assert_eq!(q.next_batch(&policy(8, 0)), None);
        // a blocked consumer wakes up on close
        let q2 = Arc::new(BatchQueue::<i32>::new());
        let c = q2.clone();
        let consumer = std::thread::spawn(move || c.next_batch(&policy(8, 0)));
        std::thread::sleep(Duration::from_millis(20));
        q2.close();
        assert_eq!(consumer.join().unwrap(), None);
    }

    #[test]
    fn an_idle_consumer_is_sent_to_help_only_while_nothing_waits() {
        let q = BatchQueue::new();
        // Nothing waits and help is wanted: help.
        assert_eq!(
            q.next_batch_or_help(&policy(8, 0), || true),
            Some(Next::Help)
        );
        // An item waits: it wins over helping.
        q.push(7, "m", 0, 1).unwrap();
        assert!(q.has_work());
        assert_eq!(
            q.next_batch_or_help(&policy(8, 0), || true),
            Some(Next::Batch(vec![7]))
        );
        assert!(!q.has_work(), "the queue is empty again");
        q.close();
        assert!(q.has_work(), "a closed queue sends helpers back to end");
        assert_eq!(q.next_batch_or_help(&policy(8, 0), || true), None);
    }

    #[test]
    fn wake_consumers_makes_a_blocked_consumer_check_help_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let q = Arc::new(BatchQueue::<i32>::new());
        let wanted = Arc::new(AtomicBool::new(false));
        let (c, w) = (q.clone(), wanted.clone());
        let consumer = std::thread::spawn(move || {
            c.next_batch_or_help(&policy(8, 0), || w.load(Ordering::SeqCst))
        });
        std::thread::sleep(Duration::from_millis(20));
        wanted.store(true, Ordering::SeqCst);
        q.wake_consumers();
        assert_eq!(consumer.join().unwrap(), Some(Next::Help));
    }

    /// Wait (at most 5 s) until `q` has `n` consumers blocked on it.
    fn until_sleeping<T>(q: &BatchQueue<T>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while q.lock().sleepers != n {
            assert!(Instant::now() < deadline, "expected {n} blocked consumers");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_push_wakes_every_blocked_consumer_in_turn_and_none_is_counted_after() {
        let q = Arc::new(BatchQueue::<i32>::new());
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let (q, tx) = (q.clone(), tx.clone());
            std::thread::spawn(move || {
                let _ = tx.send(q.next_batch(&policy(1, 0)));
            });
        }
        until_sleeping(&q, 2);
        q.push(1, "m", 0, 1).unwrap();
        let first = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(first, Ok(Some(vec![1])), "a push wakes a blocked consumer");
        until_sleeping(&q, 1);
        q.push(2, "m", 0, 1).unwrap();
        let second = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(second, Ok(Some(vec![2])), "and the next push the other");
        assert_eq!(q.lock().sleepers, 0);
        // With no consumer blocked, pushes notify no one (and lose nothing).
        q.push(3, "m", 0, 1).unwrap();
        assert_eq!(q.next_batch(&policy(1, 0)), Some(vec![3]));
    }
}
