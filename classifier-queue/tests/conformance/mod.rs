//! The conformance suite every backend must pass.
//!
//! Each case is an async function taking a backend factory: anything callable as
//! `factory(QueueConfig, Ttls)` that returns a future of `Arc<dyn Backend>`. Each case builds
//! its own backend with the (small) timeouts it needs, so a factory must return a fresh,
//! empty backend every time (for Redis: a unique key prefix per call). Nothing here knows
//! which backend it tests.
//!
//! Use it from a test crate:
//!
//! ```ignore
//! mod conformance;
//! use conformance::conformance_suite; // or `#[macro_use] mod conformance;`
//!
//! async fn backend(config: QueueConfig, ttls: Ttls) -> Arc<dyn Backend> { ... }
//! conformance_suite!(backend);
//! ```
//!
//! which expands to one `#[tokio::test]` per case. Timing: the suite only checks ordering
//! and visibility with generous windows (a few hundred ms of slack), never speed.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;

use classifier_core::backend::{
    transition, webhook_event_id, Backend, CasOutcome, FeedbackEntry, NackOutcome, QueueConfig,
    Ttls, WebhookDelivery, WorkerInfo,
};
use classifier_core::job::tests_support::pending_job;
use classifier_core::job::{JobEvent, JobId, JobRecord, JobResult, JobStatus, Priority, Stage};
use classifier_core::Error;

/// Expand to one `#[tokio::test]` per conformance case, each calling `$factory`.
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance::conformance_suite!(@cases $factory;
            priority_order,
            aging_prevents_starvation,
            lease_expiry_redelivers,
            ack_is_idempotent_and_refuses_stale_leases,
            nack_backs_off,
            dead_letter_after_max_attempts_by_nack,
            dead_letter_after_max_attempts_by_lease_expiry,
            ttl_expiry_of_record_result_and_payload,
            create_and_enqueue_are_atomic,
            readable_iff_dequeueable_under_concurrency,
            concurrent_consumers_see_each_job_once,
            cancel_pending_job,
            cancel_processing_job,
            subscription_sees_every_transition_in_order,
            compare_and_swap_conflict_returns_current,
            depth_by_priority,
            release_puts_job_back_at_once,
            put_result_first_wins,
            dequeue_waits_for_first_job,
            batched_dequeue_best_first,
            enqueue_does_not_duplicate,
            delete_payload,
            extend_keeps_lease_alive,
            heartbeat_and_workers,
            model_generation_counts_bumps_atomically,
            webhook_enqueue_is_idempotent,
            webhook_claim_hides_for_the_lease,
            webhook_reschedule_and_complete,
            webhook_dead_letters_oldest_first_and_retry,
            feedback_replaces_per_job_in_first_given_order,
            result_cache_hits_per_image_and_model_and_expires,
            create_finished_stores_without_queueing,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($factory).await;
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use conformance_suite;

// ----- helpers ----------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Large timeouts everywhere: cases shrink only what they test.
fn config() -> QueueConfig {
    QueueConfig {
        max_depth: 10_000,
        visibility_timeout: Duration::from_secs(30),
        max_attempts: 3,
        retry_base_delay: ms(300),
        retry_max_delay: Duration::from_secs(10),
        aging: Duration::from_secs(60),
    }
}

fn ttls() -> Ttls {
    Ttls {
        status: Duration::from_secs(600),
        result: Duration::from_secs(600),
        image: Duration::from_secs(600),
    }
}

fn job(priority: Priority) -> JobRecord {
    let mut job = pending_job();
    job.priority = priority;
    job
}

async fn create(backend: &Arc<dyn Backend>, priority: Priority) -> JobRecord {
    let job = job(priority);
    backend
        .create(&job, Bytes::from_static(b"payload"))
        .await
        .unwrap();
    job
}

fn result_for(job: &JobRecord, class: &str) -> JobResult {
    JobResult {
        job_id: job.id,
        predictions: vec![classifier_core::Prediction {
            class_name: class.into(),
            confidence: 0.9,
            class_id: 1,
        }],
        processing_time: 0.01,
        model_version: job.model_version.clone(),
        image_metadata: job.image,
        created_at: job.created_at,
        completed_at: Utc::now(),
    }
}

async fn dequeue_one(
    backend: &Arc<dyn Backend>,
    wait: Duration,
) -> Option<classifier_core::backend::Lease> {
    let mut leases = backend.dequeue(1, wait).await.unwrap();
    assert!(leases.len() <= 1, "asked for one job, got {}", leases.len());
    leases.pop()
}

async fn apply(backend: &Arc<dyn Backend>, id: JobId, event: JobEvent) -> JobRecord {
    transition(&**backend, id, &event).await.unwrap()
}

// ----- cases ------------------------------------------------------------------------------

/// Within the aging window, higher priorities strictly first; FIFO within a priority.
pub async fn priority_order<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let order = [
        Priority::Low,
        Priority::Normal,
        Priority::Urgent,
        Priority::High,
        Priority::Low,
        Priority::Urgent,
        Priority::Normal,
        Priority::High,
    ];
    let mut created = Vec::new();
    for p in order {
        created.push(create(&backend, p).await);
    }
    let mut expected = created.clone();
    // Stable sort: FIFO within a priority.
    expected.sort_by_key(|j| std::cmp::Reverse(j.priority));
    for want in &expected {
        let lease = dequeue_one(&backend, ms(0)).await.expect("a ready job");
        assert_eq!(
            (lease.job_id, lease.priority),
            (want.id, want.priority),
            "served out of order"
        );
        assert_eq!(lease.delivery, 1);
        assert!(backend.ack(&lease).await.unwrap());
    }
    assert!(dequeue_one(&backend, ms(0)).await.is_none());
}

/// A low job that has waited long enough beats urgent jobs that keep arriving.
pub async fn aging_prevents_starvation<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        aging: ms(200),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let low = create(&backend, Priority::Low).await;
    for _ in 0..3 {
        create(&backend, Priority::Urgent).await;
    }
    let mut urgent_served = 0;
    let started = std::time::Instant::now();
    loop {
        // Urgent work never stops arriving: one new urgent job per job served.
        create(&backend, Priority::Urgent).await;
        let lease = dequeue_one(&backend, ms(1000)).await.expect("a ready job");
        assert!(backend.ack(&lease).await.unwrap());
        if lease.job_id == low.id {
            break;
        }
        assert_eq!(lease.priority, Priority::Urgent);
        urgent_served += 1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the low job starved behind {urgent_served} urgent jobs"
        );
        tokio::time::sleep(ms(20)).await;
    }
    assert!(
        urgent_served >= 3,
        "the low job went before urgent jobs enqueued within the aging window \
         ({urgent_served} urgent served first)"
    );
}

/// A lease that is not acked in time is redelivered, with delivery count 2 and a new token.
pub async fn lease_expiry_redelivers<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        visibility_timeout: ms(300),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let first = dequeue_one(&backend, ms(0)).await.expect("the job");
    assert_eq!((first.job_id, first.delivery), (job.id, 1));
    assert!(first.expires_at > Utc::now());
    assert!(
        dequeue_one(&backend, ms(0)).await.is_none(),
        "a leased job must be invisible"
    );
    assert_eq!(backend.depth().await.unwrap().in_flight, 1);
    tokio::time::sleep(ms(500)).await;
    let second = dequeue_one(&backend, ms(2000))
        .await
        .expect("the job is redelivered after its lease expired");
    assert_eq!((second.job_id, second.delivery), (job.id, 2));
    assert_ne!(second.token, first.token);
    assert!(backend.ack(&second).await.unwrap());
    assert!(dequeue_one(&backend, ms(0)).await.is_none());
}

/// A second ack is `false`; a stale token is refused and leaves the current lease alone.
pub async fn ack_is_idempotent_and_refuses_stale_leases<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        visibility_timeout: ms(300),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;

    create(&backend, Priority::Normal).await;
    let lease = dequeue_one(&backend, ms(0)).await.unwrap();
    assert!(backend.ack(&lease).await.unwrap());
    assert!(
        !backend.ack(&lease).await.unwrap(),
        "second ack must be false"
    );
    assert_eq!(
        backend.nack(&lease, "late").await.unwrap(),
        NackOutcome::Stale
    );
    assert!(!backend.release(&lease).await.unwrap());
    assert_eq!(backend.depth().await.unwrap().in_flight, 0);

    let job = create(&backend, Priority::Normal).await;
    let mut stale = dequeue_one(&backend, ms(0)).await.unwrap();
    tokio::time::sleep(ms(500)).await;
    let current = dequeue_one(&backend, ms(2000)).await.expect("redelivery");
    assert_eq!((current.job_id, current.delivery), (job.id, 2));
    assert!(
        !backend.ack(&stale).await.unwrap(),
        "stale ack must be false"
    );
    assert_eq!(
        backend.nack(&stale, "stale").await.unwrap(),
        NackOutcome::Stale
    );
    assert!(!backend.extend(&mut stale).await.unwrap());
    assert!(!backend.release(&stale).await.unwrap());
    let depth = backend.depth().await.unwrap();
    assert_eq!(
        (
            depth.in_flight,
            depth.total_ready(),
            depth.delayed,
            depth.dead
        ),
        (1, 0, 0, 0),
        "a stale ack must not touch the current lease"
    );
    assert!(dequeue_one(&backend, ms(0)).await.is_none());
    assert!(backend.ack(&current).await.unwrap());
    assert!(!backend.ack(&current).await.unwrap());
}

/// A nacked job is invisible for the retry delay, visible after it; delays grow.
pub async fn nack_backs_off<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        max_attempts: 5,
        retry_base_delay: ms(300),
        retry_max_delay: Duration::from_secs(5),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let job = create(&backend, Priority::Normal).await;

    let mut delays = Vec::new();
    for delivery in 1..=3u32 {
        let lease = dequeue_one(&backend, ms(5000))
            .await
            .expect("the job comes back after its retry delay");
        assert_eq!((lease.job_id, lease.delivery), (job.id, delivery));
        let before = Utc::now();
        let NackOutcome::Retrying { at } = backend.nack(&lease, "transient").await.unwrap() else {
            panic!("delivery {delivery} of 5 must be retried");
        };
        let delay = (at - before).to_std().unwrap_or_default();
        assert!(
            delay >= cfg.retry_delay(delivery) - ms(50),
            "retry {delivery} after {delay:?}, expected about {:?}",
            cfg.retry_delay(delivery)
        );
        delays.push(delay);
        assert!(
            dequeue_one(&backend, ms(0)).await.is_none(),
            "visible before its retry delay"
        );
        let depth = backend.depth().await.unwrap();
        assert_eq!(
            (depth.delayed, depth.total_ready(), depth.in_flight),
            (1, 0, 0)
        );
    }
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "retry delays must grow: {delays:?}"
    );
    let lease = dequeue_one(&backend, ms(5000))
        .await
        .expect("fourth delivery");
    assert_eq!(lease.delivery, 4);
    assert!(backend.ack(&lease).await.unwrap());
}

/// After `max_attempts` failed deliveries the job is a dead letter, with the last reason;
/// retrying it makes it ready again with a fresh delivery count.
pub async fn dead_letter_after_max_attempts_by_nack<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        max_attempts: 2,
        retry_base_delay: ms(50),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let job = create(&backend, Priority::High).await;
    let lease = dequeue_one(&backend, ms(0)).await.unwrap();
    assert!(matches!(
        backend.nack(&lease, "boom 1").await.unwrap(),
        NackOutcome::Retrying { .. }
    ));
    let lease = dequeue_one(&backend, ms(3000)).await.expect("retry");
    assert_eq!(lease.delivery, 2);
    assert_eq!(
        backend.nack(&lease, "boom 2").await.unwrap(),
        NackOutcome::DeadLettered
    );
    assert_eq!(
        backend.nack(&lease, "boom 3").await.unwrap(),
        NackOutcome::Stale
    );

    let dead = backend.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].job_id, dead[0].priority, dead[0].deliveries),
        (job.id, Priority::High, 2)
    );
    assert_eq!(dead[0].reason, "boom 2");
    let depth = backend.depth().await.unwrap();
    assert_eq!(
        (
            depth.dead,
            depth.total_ready(),
            depth.delayed,
            depth.in_flight
        ),
        (1, 0, 0, 0)
    );
    assert!(dequeue_one(&backend, ms(200)).await.is_none());

    assert!(backend.retry_dead_letter(job.id).await.unwrap());
    assert!(!backend.retry_dead_letter(job.id).await.unwrap());
    assert!(!backend.retry_dead_letter(JobId::new()).await.unwrap());
    assert!(backend.dead_letters().await.unwrap().is_empty());
    let lease = dequeue_one(&backend, ms(0)).await.expect("ready again");
    assert_eq!((lease.job_id, lease.delivery), (job.id, 1));
    assert!(backend.ack(&lease).await.unwrap());
}

/// A job whose last allowed delivery times out is dead-lettered, not redelivered.
pub async fn dead_letter_after_max_attempts_by_lease_expiry<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        max_attempts: 2,
        visibility_timeout: ms(300),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let first = dequeue_one(&backend, ms(0)).await.unwrap();
    tokio::time::sleep(ms(500)).await;
    let second = dequeue_one(&backend, ms(2000)).await.expect("redelivery");
    assert_eq!((second.job_id, second.delivery), (job.id, 2));
    tokio::time::sleep(ms(500)).await;
    assert!(
        dequeue_one(&backend, ms(300)).await.is_none(),
        "a job with max_attempts deliveries must not be delivered again"
    );
    let dead = backend.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1, "the expired job must be a dead letter");
    assert_eq!((dead[0].job_id, dead[0].deliveries), (job.id, 2));
    assert!(!dead[0].reason.is_empty());
    assert!(!backend.ack(&first).await.unwrap());
    assert!(!backend.ack(&second).await.unwrap());
}

/// Records expire `status` after their last change (renewed by each change); a completed
/// record lives as long as its result; payloads expire `image` after creation.
pub async fn ttl_expiry_of_record_result_and_payload<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let ttls = Ttls {
        status: ms(1000),
        result: ms(2000),
        image: ms(1000),
    };
    let backend = factory(config(), ttls).await;
    let a = create(&backend, Priority::Normal).await;
    let b = create(&backend, Priority::Normal).await;
    // b completes at once: its result lives 2 s, and so does its record.
    apply(&backend, b.id, JobEvent::Start).await;
    let result = result_for(&b, "tabby");
    backend.put_result(&result).await.unwrap();
    apply(&backend, b.id, JobEvent::Complete).await;
    assert!(backend.payload(a.id).await.unwrap().is_some());

    tokio::time::sleep(ms(700)).await;
    // A change renews a's record for another second.
    apply(&backend, a.id, JobEvent::Start).await;

    tokio::time::sleep(ms(600)).await; // t = 1.3 s
    let got = backend.get(a.id).await.unwrap();
    assert_eq!(
        got.map(|r| r.status),
        Some(JobStatus::Processing),
        "a change must renew the record's TTL"
    );
    assert!(
        backend.payload(a.id).await.unwrap().is_none(),
        "the payload expires `image` after creation"
    );
    assert!(
        backend.get(b.id).await.unwrap().is_some(),
        "a completed record lives as long as its result"
    );
    assert_eq!(backend.get_result(b.id).await.unwrap(), Some(result));

    tokio::time::sleep(ms(1000)).await; // t = 2.3 s
    assert!(backend.get(a.id).await.unwrap().is_none(), "record expired");
    assert!(
        backend.get(b.id).await.unwrap().is_none(),
        "completed record expired"
    );
    assert!(
        backend.get_result(b.id).await.unwrap().is_none(),
        "result expired"
    );
    let mut late = backend
        .get(a.id)
        .await
        .unwrap()
        .unwrap_or_else(|| a.clone());
    late.revision = 2;
    assert_eq!(
        backend.compare_and_swap(&late).await.unwrap(),
        CasOutcome::Conflict(None),
        "an expired record cannot be swapped"
    );
}

/// create = store + enqueue, all or nothing; QueueFull leaves nothing behind.
pub async fn create_and_enqueue_are_atomic<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        max_depth: 3,
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let job = create(&backend, Priority::Normal).await;
        assert_eq!(backend.get(job.id).await.unwrap(), Some(job.clone()));
        assert!(backend.payload(job.id).await.unwrap().is_some());
        ids.insert(job.id);
    }
    assert_eq!(backend.depth().await.unwrap().total_ready(), 3);

    let refused = job(Priority::Urgent);
    match backend.create(&refused, Bytes::from_static(b"x")).await {
        Err(Error::QueueFull { depth, limit }) => assert_eq!((depth, limit), (3, 3)),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    assert!(backend.get(refused.id).await.unwrap().is_none());
    assert!(backend.payload(refused.id).await.unwrap().is_none());

    let leases = backend.dequeue(10, ms(0)).await.unwrap();
    let dequeued: HashSet<JobId> = leases.iter().map(|l| l.job_id).collect();
    assert_eq!(dequeued, ids, "exactly the created jobs are dequeueable");
    assert!(!dequeued.contains(&refused.id));

    // Leased jobs are not waiting: there is room again.
    let admitted = create(&backend, Priority::Low).await;
    let lease = dequeue_one(&backend, ms(0))
        .await
        .expect("the admitted job");
    assert_eq!(lease.job_id, admitted.id);
}

/// While jobs are being created, every dequeued job's record is already readable.
pub async fn readable_iff_dequeueable_under_concurrency<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    const N: usize = 100;
    let producer = {
        let backend = backend.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..N {
                ids.push(create(&backend, Priority::Normal).await.id);
                tokio::task::yield_now().await;
            }
            ids
        })
    };
    let mut seen = HashSet::new();
    while seen.len() < N {
        let leases = backend.dequeue(4, ms(3000)).await.unwrap();
        assert!(!leases.is_empty(), "created jobs must become dequeueable");
        for lease in leases {
            let record = backend.get(lease.job_id).await.unwrap();
            assert!(
                record.is_some(),
                "dequeued a job whose record is not readable"
            );
            assert!(backend.payload(lease.job_id).await.unwrap().is_some());
            assert!(seen.insert(lease.job_id));
            assert!(backend.ack(&lease).await.unwrap());
        }
    }
    let ids: HashSet<JobId> = producer.await.unwrap().into_iter().collect();
    assert_eq!(ids, seen);
}

/// Two consumers on separate tasks: no job is leased to both, all 200 are seen once.
pub async fn concurrent_consumers_see_each_job_once<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    const N: usize = 200;
    let mut all = HashSet::new();
    for i in 0..N {
        all.insert(create(&backend, Priority::ALL[i % 4]).await.id);
    }
    let leased_now = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut consumers = Vec::new();
    for c in 0..2usize {
        let backend = backend.clone();
        let leased_now = leased_now.clone();
        consumers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let leases = backend.dequeue(1 + c * 2, ms(200)).await.unwrap();
                if leases.is_empty() {
                    return mine;
                }
                for lease in &leases {
                    assert!(
                        leased_now.lock().unwrap().insert(lease.job_id),
                        "job {} leased to two consumers at once",
                        lease.job_id
                    );
                }
                tokio::task::yield_now().await;
                for lease in leases {
                    assert!(leased_now.lock().unwrap().remove(&lease.job_id));
                    assert!(backend.ack(&lease).await.unwrap());
                    mine.push(lease.job_id);
                }
            }
        }));
    }
    let mut seen = Vec::new();
    for consumer in consumers {
        seen.extend(consumer.await.unwrap());
    }
    assert_eq!(seen.len(), N, "every job exactly once");
    let unique: HashSet<JobId> = seen.into_iter().collect();
    assert_eq!(unique, all);
    let depth = backend.depth().await.unwrap();
    assert_eq!((depth.total_ready(), depth.in_flight), (0, 0));
}

/// Cancelling a pending job and removing it from the queue: it is never delivered.
pub async fn cancel_pending_job<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let other = create(&backend, Priority::Low).await;
    let cancelled = apply(&backend, job.id, JobEvent::Cancel).await;
    assert_eq!(
        (cancelled.status, cancelled.revision),
        (JobStatus::Cancelled, 1)
    );
    assert!(backend.remove(job.id).await.unwrap());
    assert!(!backend.remove(job.id).await.unwrap());
    assert!(!backend.remove(JobId::new()).await.unwrap());
    assert_eq!(backend.depth().await.unwrap().total_ready(), 1);
    let lease = dequeue_one(&backend, ms(0)).await.expect("the other job");
    assert_eq!(lease.job_id, other.id);
    assert!(dequeue_one(&backend, ms(200)).await.is_none());
    // Cancelling again is illegal: terminal states are final.
    assert!(matches!(
        transition(&*backend, job.id, &JobEvent::Cancel).await,
        Err(Error::IllegalTransition { .. })
    ));
}

/// Cancelling a job a worker holds: the worker's later updates conflict or are illegal.
pub async fn cancel_processing_job<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let lease = dequeue_one(&backend, ms(0)).await.unwrap();
    let started = apply(&backend, job.id, JobEvent::Start).await;
    assert_eq!(started.status, JobStatus::Processing);

    let cancelled = apply(&backend, job.id, JobEvent::Cancel).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert!(
        !backend.remove(job.id).await.unwrap(),
        "a leased job is not waiting"
    );

    // The worker's next step, computed from its stale copy, conflicts...
    let mut next = started.clone();
    next.apply(
        &JobEvent::Advance {
            stage: Stage::Inference,
            progress: 50,
        },
        Utc::now(),
    )
    .unwrap();
    match backend.compare_and_swap(&next).await.unwrap() {
        CasOutcome::Conflict(Some(current)) => assert_eq!(*current, cancelled),
        other => panic!("expected a conflict with the cancelled record, got {other:?}"),
    }
    // ... and re-applying it to the current record is illegal.
    for event in [
        JobEvent::Advance {
            stage: Stage::Inference,
            progress: 50,
        },
        JobEvent::Complete,
        JobEvent::Fail {
            message: "x".into(),
        },
    ] {
        assert!(matches!(
            transition(&*backend, job.id, &event).await,
            Err(Error::IllegalTransition { .. })
        ));
    }
    assert_eq!(backend.get(job.id).await.unwrap(), Some(cancelled));
    assert!(backend.ack(&lease).await.unwrap());
}

/// A subscriber sees every stored change, in order, with consecutive revisions.
pub async fn subscription_sees_every_transition_in_order<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let mut first = backend.subscribe(job.id).await.unwrap();
    let mut second = backend.subscribe(job.id).await.unwrap();
    let mut unrelated = backend
        .subscribe(create(&backend, Priority::Low).await.id)
        .await
        .unwrap();

    let events = vec![
        JobEvent::Start,
        JobEvent::Advance {
            stage: Stage::Preprocessing,
            progress: 10,
        },
        JobEvent::Advance {
            stage: Stage::Inference,
            progress: 40,
        },
        JobEvent::Advance {
            stage: Stage::Postprocessing,
            progress: 90,
        },
        JobEvent::Complete,
    ];
    let mut stored = Vec::new();
    for event in events {
        stored.push(apply(&backend, job.id, event).await);
    }
    for stream in [&mut first, &mut second] {
        let mut got = Vec::new();
        while got.len() < stored.len() {
            let record = tokio::time::timeout(ms(2000), stream.next())
                .await
                .expect("a change was not pushed")
                .expect("the stream ended early");
            got.push(record);
        }
        assert_eq!(got, stored, "every change, in order");
        let revisions: Vec<u64> = got.iter().map(|r| r.revision).collect();
        assert_eq!(revisions, vec![1, 2, 3, 4, 5]);
        let statuses: Vec<JobStatus> = got.iter().map(|r| r.status).collect();
        assert_eq!(statuses[0], JobStatus::Processing);
        assert_eq!(statuses[4], JobStatus::Completed);
    }
    // The other job's subscriber saw nothing.
    assert!(tokio::time::timeout(ms(200), unrelated.next())
        .await
        .is_err());
}

/// A conflicting compare-and-swap stores nothing and returns the current record.
pub async fn compare_and_swap_conflict_returns_current<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let mut started = job.clone();
    started.apply(&JobEvent::Start, Utc::now()).unwrap();
    assert_eq!(
        backend.compare_and_swap(&started).await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(backend.get(job.id).await.unwrap(), Some(started.clone()));

    // Same revision again (a racing writer that also read revision 0).
    let mut racer = job.clone();
    racer.apply(&JobEvent::Cancel, Utc::now()).unwrap();
    assert_eq!(
        backend.compare_and_swap(&racer).await.unwrap(),
        CasOutcome::Conflict(Some(Box::new(started.clone())))
    );
    // A revision from the future.
    let mut ahead = started.clone();
    ahead.revision = 5;
    assert_eq!(
        backend.compare_and_swap(&ahead).await.unwrap(),
        CasOutcome::Conflict(Some(Box::new(started.clone())))
    );
    assert_eq!(backend.get(job.id).await.unwrap(), Some(started));
    // An unknown job.
    let mut unknown = pending_job();
    unknown.revision = 1;
    assert_eq!(
        backend.compare_and_swap(&unknown).await.unwrap(),
        CasOutcome::Conflict(None)
    );
    assert!(matches!(
        transition(&*backend, unknown.id, &JobEvent::Start).await,
        Err(Error::JobNotFound(_))
    ));
}

/// Depth reports ready jobs by priority, delayed, in flight and dead.
pub async fn depth_by_priority<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    assert_eq!(backend.depth().await.unwrap(), Default::default());
    for (p, n) in [
        (Priority::Low, 1),
        (Priority::Normal, 2),
        (Priority::High, 3),
        (Priority::Urgent, 1),
    ] {
        for _ in 0..n {
            create(&backend, p).await;
        }
    }
    let depth = backend.depth().await.unwrap();
    assert_eq!(depth.ready, [1, 2, 3, 1]);
    assert_eq!(depth.total_ready(), 7);
    assert_eq!(depth.ahead_of(Priority::High), 4);
    let urgent = dequeue_one(&backend, ms(0)).await.unwrap();
    assert_eq!(urgent.priority, Priority::Urgent);
    let high = dequeue_one(&backend, ms(0)).await.unwrap();
    assert!(matches!(
        backend.nack(&high, "retry").await.unwrap(),
        NackOutcome::Retrying { .. }
    ));
    let depth = backend.depth().await.unwrap();
    assert_eq!(depth.ready, [1, 2, 2, 0]);
    assert_eq!((depth.delayed, depth.in_flight, depth.dead), (1, 1, 0));
}

/// Release returns a leased job to the ready queue at once, without counting a failure.
pub async fn release_puts_job_back_at_once<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    let lease = dequeue_one(&backend, ms(0)).await.unwrap();
    assert!(backend.release(&lease).await.unwrap());
    assert!(
        !backend.release(&lease).await.unwrap(),
        "released lease is stale"
    );
    assert!(!backend.ack(&lease).await.unwrap());
    let depth = backend.depth().await.unwrap();
    assert_eq!((depth.total_ready(), depth.in_flight), (1, 0));
    let again = dequeue_one(&backend, ms(0))
        .await
        .expect("released job is ready at once");
    assert_eq!(again.job_id, job.id);
    assert_eq!(again.delivery, 1, "a release is not a failed delivery");
    assert_ne!(again.token, lease.token);
    assert!(backend.ack(&again).await.unwrap());
}

/// The first stored result wins; later ones get the stored one back.
pub async fn put_result_first_wins<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    assert!(backend.get_result(job.id).await.unwrap().is_none());
    let first = result_for(&job, "tabby");
    let second = result_for(&job, "tiger");
    assert_eq!(backend.put_result(&first).await.unwrap(), first);
    assert_eq!(backend.put_result(&second).await.unwrap(), first);
    assert_eq!(backend.get_result(job.id).await.unwrap(), Some(first));
}

/// `dequeue` waits for the first job instead of returning empty at once.
pub async fn dequeue_waits_for_first_job<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    assert!(backend.dequeue(1, ms(100)).await.unwrap().is_empty());
    assert!(backend.dequeue(0, ms(0)).await.unwrap().is_empty());
    let producer = {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(200)).await;
            create(&backend, Priority::Low).await
        })
    };
    let leases = backend.dequeue(5, ms(10_000)).await.unwrap();
    let job = producer.await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].job_id, job.id);
}

/// A batch dequeue returns up to `max` jobs, best first.
pub async fn batched_dequeue_best_first<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let low = create(&backend, Priority::Low).await;
    let normal = create(&backend, Priority::Normal).await;
    let urgent = create(&backend, Priority::Urgent).await;
    let high = create(&backend, Priority::High).await;
    let normal2 = create(&backend, Priority::Normal).await;
    let batch = backend.dequeue(3, ms(0)).await.unwrap();
    let ids: Vec<JobId> = batch.iter().map(|l| l.job_id).collect();
    assert_eq!(ids, vec![urgent.id, high.id, normal.id]);
    let batch = backend.dequeue(3, ms(0)).await.unwrap();
    let ids: Vec<JobId> = batch.iter().map(|l| l.job_id).collect();
    assert_eq!(ids, vec![normal2.id, low.id]);
    assert_eq!(backend.depth().await.unwrap().in_flight, 5);
}

/// `enqueue` of a job that is queued or leased does not duplicate it.
pub async fn enqueue_does_not_duplicate<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    backend.enqueue(job.id, Priority::Normal).await.unwrap();
    assert_eq!(backend.depth().await.unwrap().total_ready(), 1);
    let lease = dequeue_one(&backend, ms(0)).await.unwrap();
    backend.enqueue(job.id, Priority::Normal).await.unwrap();
    assert!(
        dequeue_one(&backend, ms(0)).await.is_none(),
        "a leased job must not be enqueued twice"
    );
    assert!(backend.ack(&lease).await.unwrap());
    // Once acked it can be requeued (e.g. by an operator).
    backend.enqueue(job.id, Priority::High).await.unwrap();
    let again = dequeue_one(&backend, ms(0)).await.unwrap();
    assert_eq!((again.job_id, again.priority), (job.id, Priority::High));
}

/// The payload can be dropped once the job is finished.
pub async fn delete_payload<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = create(&backend, Priority::Normal).await;
    assert_eq!(
        backend.payload(job.id).await.unwrap(),
        Some(Bytes::from_static(b"payload"))
    );
    backend.delete_payload(job.id).await.unwrap();
    assert!(backend.payload(job.id).await.unwrap().is_none());
    backend.delete_payload(job.id).await.unwrap();
    assert!(backend.get(job.id).await.unwrap().is_some());
}

/// Extending a lease keeps the job invisible past its original expiry.
pub async fn extend_keeps_lease_alive<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        visibility_timeout: ms(600),
        ..config()
    };
    let backend = factory(cfg, ttls()).await;
    create(&backend, Priority::Normal).await;
    let mut lease = dequeue_one(&backend, ms(0)).await.unwrap();
    let original = lease.expires_at;
    for _ in 0..6 {
        tokio::time::sleep(ms(150)).await;
        assert!(backend.extend(&mut lease).await.unwrap());
    }
    assert!(lease.expires_at > original);
    // At least 900 ms after the dequeue, past the original 600 ms expiry.
    assert!(dequeue_one(&backend, ms(0)).await.is_none());
    assert!(backend.ack(&lease).await.unwrap());
    assert!(!backend.extend(&mut lease).await.unwrap());
}

/// Heartbeats make workers visible; ping answers.
pub async fn heartbeat_and_workers<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    backend.ping().await.unwrap();
    assert!(!backend.name().is_empty());
    assert_eq!(backend.queue_config().max_depth, config().max_depth);
    let id = format!("worker-{}", JobId::new());
    for in_flight in [1, 2] {
        backend
            .heartbeat(&WorkerInfo {
                id: id.clone(),
                last_seen: Utc::now(),
                in_flight,
                default_model: format!("model-{in_flight}"),
                models_loaded: vec!["other".into(), format!("model-{in_flight}")],
            })
            .await
            .unwrap();
    }
    let workers = backend.workers().await.unwrap();
    let mine: Vec<_> = workers.iter().filter(|w| w.id == id).collect();
    assert_eq!(mine.len(), 1, "one entry per worker: {workers:?}");
    assert_eq!(mine[0].in_flight, 2);
    assert_eq!(mine[0].default_model, "model-2", "the latest report wins");
    assert_eq!(mine[0].models_loaded, ["other", "model-2"]);
}

/// The model-reload generation starts at 0 and every bump, concurrent ones included, adds
/// exactly one and returns its own value.
pub async fn model_generation_counts_bumps_atomically<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    assert_eq!(backend.model_generation().await.unwrap(), 0);
    assert_eq!(backend.bump_model_generation().await.unwrap(), 1);
    assert_eq!(backend.model_generation().await.unwrap(), 1);
    let bumps: Vec<_> = (0..8)
        .map(|_| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.bump_model_generation().await.unwrap() })
        })
        .collect();
    let mut seen = Vec::new();
    for bump in bumps {
        seen.push(bump.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (2..=9).collect::<Vec<u64>>());
    assert_eq!(backend.model_generation().await.unwrap(), 9);
}

// ----- webhook outbox, feedback, result cache ------------------------------------------------

/// A `job.completed` delivery for a fresh job id, due at `due`.
fn delivery(due: chrono::DateTime<Utc>) -> WebhookDelivery {
    let job_id = JobId::new();
    let event_id = webhook_event_id(job_id, "job.completed");
    WebhookDelivery {
        body: format!(r#"{{"event":"job.completed","event_id":"{event_id}"}}"#),
        event_id,
        job_id,
        url: "http://127.0.0.1:9/hook".into(),
        attempts: 0,
        next_attempt_at: due,
        created_at: Utc::now(),
        last_error: None,
    }
}

fn later(d: Duration) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap()
}

fn earlier(d: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(d).unwrap()
}

fn ids(deliveries: &[WebhookDelivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.event_id.as_str()).collect()
}

/// The same event id is enqueued once: a second enqueue is `false` while it is pending and
/// while it is dead-lettered, and it is still one event after a retry.
pub async fn webhook_enqueue_is_idempotent<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let d = delivery(Utc::now());
    assert!(backend.enqueue_webhook(&d).await.unwrap());
    let mut again = d.clone();
    again.body = "different".into();
    assert!(
        !backend.enqueue_webhook(&again).await.unwrap(),
        "same event_id while pending"
    );
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    let other = delivery(Utc::now());
    assert!(backend.enqueue_webhook(&other).await.unwrap());
    assert_eq!(backend.pending_webhooks().await.unwrap(), 2);

    let claimed = backend.claim_webhooks(10, ms(30_000)).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let first = claimed.iter().find(|c| c.event_id == d.event_id).unwrap();
    assert_eq!(first.body, d.body, "the first body is kept");
    backend.dead_letter_webhook(first).await.unwrap();
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    assert!(
        !backend.enqueue_webhook(&d).await.unwrap(),
        "same event_id while dead-lettered"
    );
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    assert_eq!(backend.webhook_dead_letters().await.unwrap().len(), 1);

    assert!(backend
        .retry_webhook_dead_letter(&d.event_id)
        .await
        .unwrap());
    assert!(!backend.enqueue_webhook(&d).await.unwrap());
    assert_eq!(backend.pending_webhooks().await.unwrap(), 2);
    assert!(backend.webhook_dead_letters().await.unwrap().is_empty());

    // Once delivered (completed), the id is free again.
    backend.complete_webhook(&d.event_id).await.unwrap();
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    assert!(backend.enqueue_webhook(&d).await.unwrap());
}

/// Claims return only due deliveries, earliest first, at most `max`; a claimed delivery is
/// hidden for the lease and comes back by itself after it.
pub async fn webhook_claim_hides_for_the_lease<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let now_due = delivery(earlier(ms(1000)));
    let older = delivery(earlier(ms(5000)));
    let future = delivery(later(Duration::from_secs(30)));
    for d in [&now_due, &older, &future] {
        assert!(backend.enqueue_webhook(d).await.unwrap());
    }
    assert!(backend.claim_webhooks(0, ms(200)).await.unwrap().is_empty());

    let before = Utc::now();
    let one = backend.claim_webhooks(1, ms(200)).await.unwrap();
    assert_eq!(
        ids(&one),
        [older.event_id.as_str()],
        "earliest first, max 1"
    );
    let lease_end = one[0].next_attempt_at;
    assert!(
        lease_end >= before + chrono::Duration::milliseconds(150)
            && lease_end <= Utc::now() + chrono::Duration::milliseconds(1000),
        "a claim moves the due time to now + lease: {lease_end} (claimed at {before})"
    );
    assert_eq!(one[0].attempts, 0, "claiming is not an attempt");
    assert_eq!(one[0].body, older.body);
    assert_eq!(one[0].url, older.url);
    assert_eq!(one[0].job_id, older.job_id);

    // Claim the next one a little later, so its lease ends later (equal due times have no
    // specified order).
    tokio::time::sleep(ms(20)).await;
    let rest = backend.claim_webhooks(10, ms(200)).await.unwrap();
    assert_eq!(
        ids(&rest),
        [now_due.event_id.as_str()],
        "the claimed one is hidden, the future one is not due"
    );
    assert!(backend
        .claim_webhooks(10, ms(200))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        backend.pending_webhooks().await.unwrap(),
        3,
        "claims stay pending"
    );

    tokio::time::sleep(ms(450)).await;
    let back = backend.claim_webhooks(10, ms(200)).await.unwrap();
    assert_eq!(
        ids(&back),
        [older.event_id.as_str(), now_due.event_id.as_str()],
        "both come back after their lease, still earliest first"
    );
    assert!(backend
        .claim_webhooks(10, ms(200))
        .await
        .unwrap()
        .is_empty());
}

/// Rescheduling stores attempts and last_error and moves the due time; completing forgets the
/// delivery; rescheduling a delivery that is no longer pending is ignored.
pub async fn webhook_reschedule_and_complete<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let d = delivery(Utc::now());
    assert!(backend.enqueue_webhook(&d).await.unwrap());
    let mut claimed = backend
        .claim_webhooks(10, Duration::from_secs(30))
        .await
        .unwrap()
        .pop()
        .expect("due now");
    claimed.attempts = 1;
    claimed.last_error = Some("HTTP 503".into());
    claimed.next_attempt_at = later(ms(300));
    backend.reschedule_webhook(&claimed).await.unwrap();
    assert!(
        backend
            .claim_webhooks(10, ms(200))
            .await
            .unwrap()
            .is_empty(),
        "not due before its new time"
    );
    tokio::time::sleep(ms(450)).await;
    let retried = backend
        .claim_webhooks(10, ms(200))
        .await
        .unwrap()
        .pop()
        .expect("due at its new time, earlier than the 30 s claim lease");
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("HTTP 503"));

    // Reschedule far away, then back to now: the due time follows.
    let mut far = retried.clone();
    far.next_attempt_at = later(Duration::from_secs(60));
    backend.reschedule_webhook(&far).await.unwrap();
    tokio::time::sleep(ms(300)).await;
    assert!(backend
        .claim_webhooks(10, ms(200))
        .await
        .unwrap()
        .is_empty());
    let mut soon = far.clone();
    soon.attempts = 2;
    soon.next_attempt_at = Utc::now();
    backend.reschedule_webhook(&soon).await.unwrap();
    let again = backend.claim_webhooks(10, ms(200)).await.unwrap();
    assert_eq!(ids(&again), [d.event_id.as_str()]);
    assert_eq!(again[0].attempts, 2);

    backend.complete_webhook(&d.event_id).await.unwrap();
    backend.complete_webhook(&d.event_id).await.unwrap(); // idempotent
    assert_eq!(backend.pending_webhooks().await.unwrap(), 0);
    // A late reschedule (e.g. from a dispatcher whose claim expired) must not revive it.
    backend.reschedule_webhook(&soon).await.unwrap();
    assert_eq!(backend.pending_webhooks().await.unwrap(), 0);
    tokio::time::sleep(ms(300)).await;
    assert!(backend
        .claim_webhooks(10, ms(200))
        .await
        .unwrap()
        .is_empty());
    assert!(backend.webhook_dead_letters().await.unwrap().is_empty());
}

/// Dead-lettering moves a delivery (as given) out of pending into a list kept oldest first;
/// a retry brings it back due now with attempts 0; unknown ids are `false`.
pub async fn webhook_dead_letters_oldest_first_and_retry<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let (a, b, c) = (
        delivery(Utc::now()),
        delivery(Utc::now()),
        delivery(Utc::now()),
    );
    for d in [&a, &b, &c] {
        assert!(backend.enqueue_webhook(d).await.unwrap());
    }
    let mut dead_b = b.clone();
    dead_b.attempts = 5;
    dead_b.last_error = Some("connection refused".into());
    backend.dead_letter_webhook(&dead_b).await.unwrap();
    assert_eq!(backend.pending_webhooks().await.unwrap(), 2);
    let mut dead_a = a.clone();
    dead_a.attempts = 5;
    dead_a.last_error = Some("HTTP 500".into());
    backend.dead_letter_webhook(&dead_a).await.unwrap();
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    assert_eq!(
        backend.webhook_dead_letters().await.unwrap(),
        vec![dead_b.clone(), dead_a.clone()],
        "stored as given, oldest first"
    );
    // Dead letters are not claimed.
    let claimed = backend.claim_webhooks(10, ms(30_000)).await.unwrap();
    assert_eq!(ids(&claimed), [c.event_id.as_str()]);
    // An event that is no longer pending is not dead-lettered.
    backend.complete_webhook(&c.event_id).await.unwrap();
    backend.dead_letter_webhook(&c).await.unwrap();
    assert_eq!(backend.webhook_dead_letters().await.unwrap().len(), 2);
    assert_eq!(backend.pending_webhooks().await.unwrap(), 0);

    assert!(!backend
        .retry_webhook_dead_letter("evt_unknown")
        .await
        .unwrap());
    assert!(!backend
        .retry_webhook_dead_letter(&c.event_id)
        .await
        .unwrap());
    assert!(backend
        .retry_webhook_dead_letter(&b.event_id)
        .await
        .unwrap());
    assert!(
        !backend
            .retry_webhook_dead_letter(&b.event_id)
            .await
            .unwrap(),
        "no longer dead-lettered"
    );
    assert_eq!(backend.webhook_dead_letters().await.unwrap(), vec![dead_a]);
    assert_eq!(backend.pending_webhooks().await.unwrap(), 1);
    let back = backend.claim_webhooks(10, ms(200)).await.unwrap();
    assert_eq!(ids(&back), [b.event_id.as_str()], "due now");
    assert_eq!(back[0].attempts, 0, "attempts reset");
    assert_eq!(back[0].body, b.body);
    assert_eq!(back[0].url, b.url);
}

fn feedback(job_id: JobId, correct: usize) -> FeedbackEntry {
    FeedbackEntry {
        job_id,
        predicted_class_id: 281,
        predicted_class_name: "tabby".into(),
        predicted_confidence: 0.75,
        correct_class_id: correct,
        correct_class_name: format!("class {correct}"),
        model_version: "test-model".into(),
        image_sha256: "ab".repeat(32),
        owner: Some("owner-1".into()),
        created_at: Utc::now(),
    }
}

/// One entry per job (a new one replaces the old and keeps its place), listed in the order
/// first given, with offset and limit; the count is the number of jobs.
pub async fn feedback_replaces_per_job_in_first_given_order<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    assert_eq!(backend.feedback_count().await.unwrap(), 0);
    assert!(backend.feedback_entries(0, 10).await.unwrap().is_empty());
    let jobs: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
    let mut entries = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let e = feedback(*job, i);
        assert_eq!(backend.add_feedback(&e).await.unwrap(), i as u64 + 1);
        entries.push(e);
    }
    let replaced = feedback(jobs[1], 999);
    assert_eq!(
        backend.add_feedback(&replaced).await.unwrap(),
        4,
        "a replacement does not count twice"
    );
    entries[1] = replaced;
    assert_eq!(backend.feedback_count().await.unwrap(), 4);
    assert_eq!(backend.feedback_entries(0, 100).await.unwrap(), entries);
    assert_eq!(
        backend.feedback_entries(1, 2).await.unwrap(),
        entries[1..3].to_vec()
    );
    assert_eq!(
        backend.feedback_entries(3, 10).await.unwrap(),
        entries[3..].to_vec()
    );
    assert!(backend.feedback_entries(4, 10).await.unwrap().is_empty());
    assert!(backend.feedback_entries(0, 0).await.unwrap().is_empty());
    assert_eq!(
        backend
            .feedback_entries(usize::MAX, usize::MAX)
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(
        backend.feedback_entries(2, usize::MAX).await.unwrap(),
        entries[2..].to_vec()
    );
}

/// Results are cached per (image, model version) and expire after their TTL.
pub async fn result_cache_hits_per_image_and_model_and_expires<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let backend = factory(config(), ttls()).await;
    let job = pending_job();
    let (sha_a, sha_b) = ("a".repeat(64), "b".repeat(64));
    let r1 = result_for(&job, "tabby");
    let mut r2 = result_for(&job, "tiger");
    r2.model_version = "other-model".into();
    assert_eq!(backend.cached_result(&sha_a, "m1").await.unwrap(), None);
    backend
        .cache_result(&sha_a, "m1", &r1, ms(300))
        .await
        .unwrap();
    backend
        .cache_result(&sha_a, "m2", &r2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        backend.cached_result(&sha_a, "m1").await.unwrap().as_ref(),
        Some(&r1)
    );
    assert_eq!(
        backend.cached_result(&sha_a, "m2").await.unwrap().as_ref(),
        Some(&r2)
    );
    assert_eq!(backend.cached_result(&sha_b, "m1").await.unwrap(), None);
    assert_eq!(backend.cached_result(&sha_b, "m2").await.unwrap(), None);
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        backend.cached_result(&sha_a, "m1").await.unwrap(),
        None,
        "expired after its TTL"
    );
    assert_eq!(
        backend.cached_result(&sha_a, "m2").await.unwrap().as_ref(),
        Some(&r2),
        "another model's entry has its own TTL"
    );
    // Caching again replaces the entry and its TTL.
    backend
        .cache_result(&sha_a, "m2", &r1, ms(300))
        .await
        .unwrap();
    assert_eq!(
        backend.cached_result(&sha_a, "m2").await.unwrap().as_ref(),
        Some(&r1)
    );
    tokio::time::sleep(ms(500)).await;
    assert_eq!(backend.cached_result(&sha_a, "m2").await.unwrap(), None);
}

/// A finished job (a cache hit) is stored with its result and readable at once, without
/// queueing anything or counting against `max_depth`; a completed one lives as long as its
/// result; subscriptions never hang; a second one with the same id, a non-terminal record
/// and another job's result are refused.
pub async fn create_finished_stores_without_queueing<F, Fut>(factory: F)
where
    F: Fn(QueueConfig, Ttls) -> Fut,
    Fut: Future<Output = Arc<dyn Backend>>,
{
    let cfg = QueueConfig {
        max_depth: 1,
        ..config()
    };
    let short = Ttls {
        status: ms(300),
        result: Duration::from_secs(30),
        image: Duration::from_secs(30),
    };
    let backend = factory(cfg, short).await;
    let queued = create(&backend, Priority::Normal).await; // the queue is full now
    let depth = backend.depth().await.unwrap();

    let mut record = pending_job();
    record.apply(&JobEvent::Start, Utc::now()).unwrap();
    record.apply(&JobEvent::Complete, Utc::now()).unwrap();
    let result = result_for(&record, "tabby");
    let mut early = backend.subscribe(record.id).await.unwrap();
    backend.create_finished(&record, &result).await.unwrap();

    assert_eq!(
        backend.get(record.id).await.unwrap().as_ref(),
        Some(&record)
    );
    assert_eq!(
        backend.get_result(record.id).await.unwrap().as_ref(),
        Some(&result)
    );
    assert_eq!(backend.depth().await.unwrap(), depth, "nothing queued");
    assert!(backend.payload(record.id).await.unwrap().is_none());
    // A subscription taken before may see the record (nothing else), and then ends.
    loop {
        match tokio::time::timeout(ms(2000), early.next()).await {
            Ok(Some(pushed)) => assert_eq!(pushed, record),
            Ok(None) => break,
            Err(_) => panic!("a stream of a finished job must end"),
        }
    }
    let mut late = backend.subscribe(record.id).await.unwrap();
    assert!(tokio::time::timeout(ms(2000), late.next())
        .await
        .expect("a stream of a finished job ends at once")
        .is_none());

    // Refusals, none of which stores anything.
    let mut other = result.clone();
    other.predictions.clear();
    assert!(backend.create_finished(&record, &other).await.is_err());
    assert_eq!(
        backend.get_result(record.id).await.unwrap().as_ref(),
        Some(&result),
        "the first stays"
    );
    let pending = pending_job();
    assert!(backend
        .create_finished(&pending, &result_for(&pending, "x"))
        .await
        .is_err());
    assert!(backend.get(pending.id).await.unwrap().is_none());
    let mut mismatched = pending_job();
    mismatched.apply(&JobEvent::Start, Utc::now()).unwrap();
    mismatched.apply(&JobEvent::Complete, Utc::now()).unwrap();
    assert!(backend.create_finished(&mismatched, &result).await.is_err());
    assert!(backend.get(mismatched.id).await.unwrap().is_none());
    let mut queued_done = queued.clone();
    queued_done.status = JobStatus::Completed;
    assert!(
        backend
            .create_finished(&queued_done, &result_for(&queued, "x"))
            .await
            .is_err(),
        "an existing job is not overwritten"
    );
    assert_eq!(
        backend.get(queued.id).await.unwrap().map(|r| r.status),
        Some(JobStatus::Pending)
    );
    assert_eq!(backend.depth().await.unwrap(), depth);

    // A completed record lives as long as its result, not the (short) status TTL.
    tokio::time::sleep(ms(500)).await;
    assert_eq!(
        backend.get(record.id).await.unwrap().as_ref(),
        Some(&record)
    );
    let lease = dequeue_one(&backend, ms(0)).await.expect("the queued job");
    assert_eq!(lease.job_id, queued.id, "the finished job was never queued");
    assert!(dequeue_one(&backend, ms(0)).await.is_none());
}
