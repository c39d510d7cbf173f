//! The in-memory backend: the conformance suite, plus what is specific to this backend.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use classifier_core::backend::{
    transition, Backend, JobQueue, JobStore, QueueConfig, StatusFeed, Ttls,
};
use classifier_core::job::tests_support::pending_job;
use classifier_core::job::{JobEvent, JobId};
use classifier_queue::InMemoryBackend;
use conformance::conformance_suite;

async fn memory(config: QueueConfig, ttls: Ttls) -> Arc<dyn Backend> {
    InMemoryBackend::new(config, ttls)
}

conformance_suite!(memory);

#[test]
fn builds_outside_a_runtime() {
    let backend = InMemoryBackend::with_defaults();
    assert_eq!(backend.name(), "memory");
    assert_eq!(*backend.queue_config(), QueueConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let job = pending_job();
        backend.create(&job, Bytes::new()).await.unwrap();
        assert_eq!(backend.dequeue(8, Duration::ZERO).await.unwrap().len(), 1);
    });
}

#[tokio::test]
async fn duplicate_or_non_new_records_are_refused() {
    let backend = InMemoryBackend::with_defaults();
    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();
    let err = backend.create(&job, Bytes::new()).await.unwrap_err();
    assert!(
        matches!(err, classifier_core::Error::CorruptData(_)),
        "{err}"
    );
    let mut started = pending_job();
    started.apply(&JobEvent::Start, chrono::Utc::now()).unwrap();
    assert!(backend.create(&started, Bytes::new()).await.is_err());
    assert!(backend.get(started.id).await.unwrap().is_none());
}

#[tokio::test]
async fn streams_end_after_a_terminal_state_or_for_unknown_jobs() {
    let backend = InMemoryBackend::with_defaults();
    let mut unknown = backend.subscribe(JobId::new()).await.unwrap();
    assert!(unknown.next().await.is_none());

    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();
    let mut stream = backend.subscribe(job.id).await.unwrap();
    transition(&*backend, job.id, &JobEvent::Cancel)
        .await
        .unwrap();
    assert_eq!(stream.next().await.map(|r| r.revision), Some(1));
    assert!(stream.next().await.is_none());
    let mut late = backend.subscribe(job.id).await.unwrap();
    assert!(late.next().await.is_none());
}

#[tokio::test]
async fn dropped_subscribers_are_forgotten() {
    let backend = InMemoryBackend::with_defaults();
    let job = pending_job();
    backend.create(&job, Bytes::new()).await.unwrap();
    for _ in 0..10 {
        drop(backend.subscribe(job.id).await.unwrap());
    }
    let mut live = backend.subscribe(job.id).await.unwrap();
    transition(&*backend, job.id, &JobEvent::Start)
        .await
        .unwrap();
    assert_eq!(live.next().await.map(|r| r.revision), Some(1));
}
