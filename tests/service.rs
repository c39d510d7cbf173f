//! The job service end to end: real default model, real photos, in-memory backend.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use classifier::{
    Backend, Classifier, Error, InMemoryBackend, JobId, JobRecord, JobStatus, Priority,
    QueueConfig, Service, Stage, SubmitOptions, Ttls,
};
use futures_util::StreamExt;

/// The sample photos (file name, bytes), read once.
fn photos() -> &'static Vec<(String, Vec<u8>)> {
    static PHOTOS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    PHOTOS.get_or_init(|| {
        let labels = classifier::model::ModelLocator::from_env()
            .find("imagenet_classes.txt")
            .expect("the shared models directory is required");
        let dir = labels.with_file_name("samples");
        let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .expect("samples dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).expect("read photo"))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(out.len(), 14, "the 14 shared sample photos");
        out
    })
}

/// Top-1 class id of each photo from a direct Classifier run (the default model).
fn expected_top1() -> &'static HashMap<String, usize> {
    static TOP1: OnceLock<HashMap<String, usize>> = OnceLock::new();
    TOP1.get_or_init(|| {
        let classifier = Classifier::load("latest").expect("default model");
        photos()
            .iter()
            .map(|(name, bytes)| {
                let c = classifier.classify(bytes).expect("classify");
                (name.clone(), c.predictions[0].class_id)
            })
            .collect()
    })
}

fn backend(config: QueueConfig) -> Arc<dyn Backend> {
    InMemoryBackend::new(config, Ttls::default())
}

fn patient_queue() -> QueueConfig {
    QueueConfig {
        // Submitting takes a while in test builds: keep aging from reordering priorities.
        aging: Duration::from_secs(600),
        ..QueueConfig::default()
    }
}

async fn service(backend: &Arc<dyn Backend>, workers: usize) -> Service {
    Service::builder()
        .backend(backend.clone())
        .workers(workers)
        // These tests submit the same photos many times and are about the queue: no cache.
        .result_cache(None)
        .build()
        .await
        .expect("service builds")
}

/// Poll until the job is terminal (bounded, so a bug fails instead of hanging).
async fn wait_terminal(service: &Service, id: JobId) -> JobRecord {
    for _ in 0..60_000 {
        let record = service.status(id).await.expect("status");
        if record.status.is_terminal() {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("job {id} never finished");
}

async fn wait_queue_idle(backend: &Arc<dyn Backend>) {
    for _ in 0..60_000 {
        let depth = backend.depth().await.expect("depth");
        if depth.total_ready() == 0 && depth.in_flight == 0 && depth.delayed == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the queue never drained");
}

fn opts(priority: Priority) -> SubmitOptions {
    SubmitOptions {
        priority,
        ..SubmitOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_mixed_priority_jobs_complete_correctly_and_urgent_ones_first() {
    let backend = backend(patient_queue());
    // Submit everything before any worker runs: an API-only service prepares and queues.
    let api = service(&backend, 0).await;
    let mut jobs = Vec::new();
    for i in 0..200 {
        let (name, bytes) = &photos()[i % photos().len()];
        let priority = Priority::ALL[(i * 7 + i / 4) % 4];
        let ticket = api
            .submit(bytes.clone().into(), opts(priority))
            .await
            .expect("submit");
        assert_eq!(ticket.status, JobStatus::Pending);
        assert!(ticket.estimated_completion >= ticket.created_at);
        jobs.push((ticket.job_id, name.clone(), priority));
    }
    let depth = backend.depth().await.unwrap();
    assert_eq!(depth.total_ready(), 200);

    let workers = service(&backend, 2).await;
    let mut finished: HashMap<Priority, Vec<i64>> = HashMap::new();
    for (id, name, priority) in &jobs {
        let record = wait_terminal(&workers, *id).await;
        assert_eq!(record.status, JobStatus::Completed, "{name}: {record:?}");
        assert_eq!((record.stage, record.progress), (Stage::Completed, 100));
        let result = api.result(*id).await.expect("result");
        assert_eq!(
            result.predictions[0].class_id,
            expected_top1()[name],
            "top-1 of {name}"
        );
        assert_eq!(result.predictions.len(), 5);
        assert_eq!(
            record.image_sha256,
            classifier::model::sha256_hex(&photos().iter().find(|p| &p.0 == name).unwrap().1)
        );
        finished
            .entry(*priority)
            .or_default()
            .push(record.finished_at.unwrap().timestamp_micros());
    }
    let mean = |p: Priority| {
        let v = &finished[&p];
        v.iter().sum::<i64>() as f64 / v.len() as f64
    };
    assert!(
        mean(Priority::Urgent) < mean(Priority::Low),
        "urgent jobs finish before low ones on average"
    );
    assert!(mean(Priority::High) < mean(Priority::Normal));
    assert_eq!(workers.metrics().jobs_completed(), 200);
    assert!(workers
        .metrics()
        .encode()
        .contains("classifier_inference_duration_seconds"));
    workers.shutdown().await;
    api.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pending_job_never_runs() {
    let backend = backend(QueueConfig::default());
    let api = service(&backend, 0).await;
    let (_, bytes) = &photos()[0];
    let doomed = api
        .submit(bytes.clone().into(), opts(Priority::Urgent))
        .await
        .unwrap();
    let cancelled = api.cancel(doomed.job_id).await.expect("cancel");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    // Cancelling again: it is terminal now.
    assert!(matches!(
        api.cancel(doomed.job_id).await,
        Err(Error::IllegalTransition { .. })
    ));
    let other = api
        .submit(bytes.clone().into(), opts(Priority::Low))
        .await
        .unwrap();

    let workers = service(&backend, 2).await;
    assert_eq!(
        wait_terminal(&workers, other.job_id).await.status,
        JobStatus::Completed
    );
    wait_queue_idle(&backend).await;
    let record = workers.status(doomed.job_id).await.unwrap();
    assert_eq!(record.status, JobStatus::Cancelled);
    assert_eq!(
        (record.attempts, record.started_at),
        (0, None),
        "never started"
    );
    assert_eq!(record.stage, Stage::Initializing);
    match workers.result(doomed.job_id).await {
        Err(e @ Error::JobNotCompleted { .. }) => assert_eq!(e.code(), "JOB_CANCELLED"),
        other => panic!("unexpected {other:?}"),
    }
    // Completed jobs cannot be cancelled.
    assert!(matches!(
        api.cancel(other.job_id).await,
        Err(Error::IllegalTransition { .. })
    ));
    workers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_processing_ends_cancelled_without_a_result() {
    let backend = backend(QueueConfig::default());
    let service = service(&backend, 1).await;
    // The int8 MobileNet takes about a second per image in tract: a wide window to cancel
    // in while the job is at the inference stage.
    let ticket = service
        .submit(
            photos()[2].1.clone().into(),
            SubmitOptions {
                model_version: Some("mobilenetv2-int8".into()),
                ..SubmitOptions::default()
            },
        )
        .await
        .unwrap();
    let mut updates = service.subscribe(ticket.job_id).await.unwrap();
    let mut seen = Vec::new();
    while let Some(record) = updates.next().await {
        seen.push((record.status, record.stage));
        if record.stage == Stage::Inference && record.status == JobStatus::Processing {
            let cancelled = service
                .cancel(ticket.job_id)
                .await
                .expect("cancel while running");
            assert_eq!(cancelled.status, JobStatus::Cancelled);
        }
    }
    assert_eq!(
        seen.last(),
        Some(&(JobStatus::Cancelled, Stage::Inference)),
        "{seen:?}"
    );
    wait_queue_idle(&backend).await; // the worker acked the discarded delivery
    let record = service.status(ticket.job_id).await.unwrap();
    assert_eq!(
        (record.status, record.stage),
        (JobStatus::Cancelled, Stage::Inference)
    );
    assert!(matches!(
        service.result(ticket.job_id).await,
        Err(Error::JobNotCompleted {
            status: JobStatus::Cancelled,
            ..
        })
    ));
    assert_eq!(backend.get_result(ticket.job_id).await.unwrap(), None);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_jobs_in_flight_loses_nothing() {
    let backend = backend(patient_queue());
    let first = service(&backend, 1).await;
    let mut jobs = Vec::new();
    for i in 0..30 {
        let (name, bytes) = &photos()[i % photos().len()];
        let t = first
            .submit(bytes.clone().into(), opts(Priority::Normal))
            .await
            .unwrap();
        jobs.push((t.job_id, name.clone()));
    }
    // Let it get going, then stop it without any grace: in-flight jobs are released.
    wait_terminal(&first, jobs[0].0).await;
    first.shutdown_with_grace(Duration::ZERO).await;
    assert!(matches!(
        first
            .submit(photos()[0].1.clone().into(), SubmitOptions::default())
            .await,
        Err(Error::ShuttingDown)
    ));
    let depth = backend.depth().await.unwrap();
    assert_eq!(depth.in_flight, 0, "nothing left leased: {depth:?}");

    let second = service(&backend, 2).await;
    for (id, name) in &jobs {
        let record = wait_terminal(&second, *id).await;
        assert_eq!(record.status, JobStatus::Completed, "{name}");
        let result = second.result(*id).await.unwrap();
        assert_eq!(
            result.predictions[0].class_id,
            expected_top1()[name],
            "{name}"
        );
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_completed_job_keeps_its_first_result() {
    let backend = backend(QueueConfig::default());
    let service = service(&backend, 2).await;
    let ticket = service
        .submit(photos()[3].1.clone().into(), SubmitOptions::default())
        .await
        .unwrap();
    let done = wait_terminal(&service, ticket.job_id).await;
    assert_eq!(done.status, JobStatus::Completed);
    let first = service.result(ticket.job_id).await.unwrap();
    // Deliver it again, as at-least-once delivery may.
    backend.enqueue(ticket.job_id, done.priority).await.unwrap();
    wait_queue_idle(&backend).await;
    let after = service.status(ticket.job_id).await.unwrap();
    assert_eq!(after, done, "the record did not change");
    assert_eq!(service.result(ticket.job_id).await.unwrap(), first);
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sees_every_stage_in_order() {
    let backend = backend(QueueConfig::default());
    let api = service(&backend, 0).await;
    let ticket = api
        .submit(photos()[4].1.clone().into(), SubmitOptions::default())
        .await
        .unwrap();
    let updates = api.subscribe(ticket.job_id).await.unwrap();
    let workers = service(&backend, 1).await;
    let records: Vec<JobRecord> = updates.collect().await;
    let stages: Vec<(JobStatus, Stage, u8)> = records
        .iter()
        .map(|r| (r.status, r.stage, r.progress))
        .collect();
    assert_eq!(
        stages,
        vec![
            (JobStatus::Pending, Stage::Initializing, 0),
            (JobStatus::Processing, Stage::Initializing, 0),
            (JobStatus::Processing, Stage::Preprocessing, 25),
            (JobStatus::Processing, Stage::Inference, 50),
            (JobStatus::Processing, Stage::Postprocessing, 75),
            (JobStatus::Completed, Stage::Completed, 100),
        ]
    );
    assert!(records.windows(2).all(|w| w[0].revision < w[1].revision));
    // Subscribing to a finished job gives its final record and ends.
    let again: Vec<JobRecord> = api.subscribe(ticket.job_id).await.unwrap().collect().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].status, JobStatus::Completed);
    assert!(matches!(
        api.subscribe(JobId::new()).await,
        Err(Error::JobNotFound(_))
    ));
    workers.shutdown().await;
}

/// With `inference_assist` (the default), an idle inference thread helps another one's
/// inference; the predictions are the same, to the last bit, as with every inference on one
/// thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assisted_inference_predicts_exactly_like_unassisted() {
    let mut answers = Vec::new();
    for assist in [true, false] {
        let service = Service::builder()
            .backend(backend(QueueConfig::default()))
            .workers(2)
            .inference_assist(assist)
            .result_cache(None)
            .build()
            .await
            .expect("service builds");
        let mut predictions = Vec::new();
        for (name, bytes) in photos() {
            let c = service
                .predict(bytes.clone().into(), None)
                .await
                .expect("predict");
            assert_eq!(c.predictions[0].class_id, expected_top1()[name], "{name}");
            predictions.push(
                c.predictions
                    .iter()
                    .map(|p| (p.class_id, p.confidence.to_bits()))
                    .collect::<Vec<_>>(),
            );
        }
        service.shutdown().await;
        answers.push(predictions);
    }
    assert_eq!(
        answers[0], answers[1],
        "assisted and unassisted predictions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_classifies_and_bad_bytes_are_invalid_image() {
    let backend = backend(QueueConfig::default());
    let service = service(&backend, 2).await;
    for (name, bytes) in photos().iter().take(5) {
        let c = service
            .predict(bytes.clone().into(), None)
            .await
            .expect("predict");
        assert_eq!(c.predictions[0].class_id, expected_top1()[name], "{name}");
        assert_eq!(c.model_version, "shufflenet-v2-f32");
        assert_eq!(c.image_metadata.file_size, bytes.len());
    }
    let err = service
        .predict(b"definitely not an image".to_vec().into(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_IMAGE");
    // A truncated JPEG is refused at submission, not failed later.
    let jpeg = &photos().iter().find(|p| p.0.ends_with(".jpg")).unwrap().1;
    let err = service
        .submit(
            jpeg[..jpeg.len() / 2].to_vec().into(),
            SubmitOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "INVALID_IMAGE", "{err}");
    let err = service
        .predict(photos()[0].1.clone().into(), Some("resnet-9000"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownModelVersion { .. }));
    let models = service.models();
    assert!(models
        .iter()
        .any(|m| m.default && m.loaded && m.version == "shufflenet-v2-f32"));
    let health = service.health().await;
    assert_eq!(
        (
            health.queue.status.as_str(),
            health.workers.status.as_str(),
            health.models.status.as_str()
        ),
        ("healthy", "healthy", "healthy")
    );
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_queue_full() {
    let backend = backend(QueueConfig {
        max_depth: 2,
        ..QueueConfig::default()
    });
    let api = service(&backend, 0).await;
    for _ in 0..2 {
        api.submit(photos()[0].1.clone().into(), SubmitOptions::default())
            .await
            .unwrap();
    }
    let err = api
        .submit(photos()[0].1.clone().into(), SubmitOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::QueueFull { .. }), "{err}");
    assert_eq!(err.code(), "SERVICE_UNAVAILABLE");
}

/// Field `field` (numbered as in proc(5): 19 is the niceness, 41 the scheduling policy) of
/// `/proc/self/task/*/stat` for this process's threads named `name*` (Linux).
fn thread_stat_field(name: &str, field: usize) -> Vec<i64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(name) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        // The fields after the parenthesised name start with field 3 (the state).
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let value = rest.split(' ').nth(field - 3).expect("stat field");
        out.push(value.parse().expect("a number"));
    }
    out
}

/// The niceness of this process's threads named `name*`.
fn thread_niceness(name: &str) -> Vec<i64> {
    thread_stat_field(name, 19)
}

/// The scheduling policy of this process's threads named `name*` (0 is normal, 5 is
/// `SCHED_IDLE`).
fn thread_policies(name: &str) -> Vec<i64> {
    thread_stat_field(name, 41)
}

/// With `inference_idle`, the inference threads run under `SCHED_IDLE` and still classify.
/// (Other tests of this binary run their own inference threads at the normal policy, so
/// this looks for one idle thread, not for all.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_inference_threads_still_classify() {
    const SCHED_IDLE: i64 = 5;
    let backend = backend(patient_queue());
    let service = Service::builder()
        .backend(backend.clone())
        .workers(1)
        .inference_idle(true)
        .build()
        .await
        .expect("service builds");
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen = thread_policies("inference-");
        if seen.contains(&SCHED_IDLE) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        seen.contains(&SCHED_IDLE),
        "an inference thread under SCHED_IDLE: {seen:?}"
    );
    let (name, photo) = &photos()[0];
    let ticket = service
        .submit(photo.clone().into(), opts(Priority::Normal))
        .await
        .expect("submit");
    let record = wait_terminal(&service, ticket.job_id).await;
    assert_eq!(record.status, JobStatus::Completed);
    let result = service.result(ticket.job_id).await.expect("result");
    assert_eq!(result.predictions[0].class_id, expected_top1()[name]);
    service.shutdown().await;
}

/// A large JPEG through the whole service with the result cache on: it is classified (at
/// reduced decode size) like the same photo, the record keeps the sha256 of exactly the
/// uploaded bytes, and a second upload is answered from the cache under the same digest. The
/// inference threads run at the configured niceness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_jpeg_is_classified_cached_and_hashed_once() {
    let backend = backend(patient_queue());
    let service = Service::builder()
        .backend(backend.clone())
        .workers(1)
        .inference_nice(7)
        .build()
        .await
        .expect("service builds");
    // The thread sets its own niceness when it starts, which may be just after `build`.
    #[cfg(target_os = "linux")]
    {
        let mut seen = Vec::new();
        for _ in 0..500 {
            seen = thread_niceness("inference-");
            if !seen.is_empty() && seen.iter().all(|&n| n != 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, vec![7], "one inference thread at niceness 7");
    }

    let photo = &photos().iter().find(|p| p.0 == "chelsea.png").unwrap().1;
    let photo = image::load_from_memory(photo).expect("photo");
    let large = photo.resize_exact(1804, 1200, image::imageops::FilterType::CatmullRom);
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&large.to_rgb8())
        .expect("encode");
    let bytes = bytes.into_inner();
    let sha = classifier::model::sha256_hex(&bytes);

    let first = service
        .submit(bytes.clone().into(), opts(Priority::Normal))
        .await
        .expect("submit");
    assert_eq!(first.status, JobStatus::Pending);
    let record = wait_terminal(&service, first.job_id).await;
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.image_sha256, sha);
    let result = service.result(first.job_id).await.expect("result");
    assert_eq!(
        (result.image_metadata.width, result.image_metadata.height),
        (1804, 1200)
    );
    assert_eq!(
        result.predictions[0].class_id,
        expected_top1()["chelsea.png"],
        "the same cat as the original photo"
    );

    let second = service
        .submit(bytes.into(), opts(Priority::Normal))
        .await
        .expect("submit again");
    assert_eq!(
        second.status,
        JobStatus::Completed,
        "answered from the cache"
    );
    let cached = service.status(second.job_id).await.expect("status");
    assert_eq!(cached.image_sha256, sha);
    let again = service.result(second.job_id).await.expect("cached result");
    assert_eq!(again.predictions, result.predictions);
    service.shutdown().await;
}
