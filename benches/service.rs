//! Whole-service throughput against the raw inference throughput of the core.
//!
//! - `raw_infer_2_threads`: `Classifier::infer` on prepared tensors, one image per call, on
//!   two OS threads: the ceiling for 2 cores.
//! - `service_2_workers`: a `Service` with 2 workers and the in-memory backend; jobs whose
//!   payload is already prepared (the crop a submission stores) are created in the backend,
//!   and the clock runs until the last one is completed. Everything a job costs a worker is
//!   inside: lease, six compare-and-set steps, payload, normalization, inference, top-K,
//!   result, ack, plus the tokio reactor competing for the same 2 cores.
//! - `service_2_workers_from_bytes`: the same service fed through `Service::submit` with the
//!   photo's bytes (4 submitting tasks), so each job also pays validation, the PNG decode and
//!   the crop, as an HTTP upload does. The gap to `service_2_workers` is the decode; the gap
//!   from it to the HTTP load benchmark is the HTTP layer and the load generator.
//!
//! Both report time per `JOBS` images; jobs/s = JOBS / time. Run:
//! `cargo bench --bench service`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use classifier::service::payload::CropPayload;
use classifier::{
    Backend, Classifier, InMemoryBackend, JobId, JobRecord, QueueConfig, Service, SubmitOptions,
    Ttls,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const JOBS: usize = 128;

fn photo() -> Vec<u8> {
    let labels = classifier::model::ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .expect("shared models");
    std::fs::read(labels.with_file_name("samples/chelsea.png")).expect("photo")
}

fn raw(c: &mut Criterion, classifier: &Classifier, bytes: &[u8]) {
    let prepared = classifier.prepare(bytes).expect("prepare");
    let mut group = c.benchmark_group("service_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("raw_infer_2_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..JOBS / 2 {
                            let out = classifier.infer(vec![prepared.clone()]).expect("infer");
                            std::hint::black_box(out);
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn service(c: &mut Criterion, classifier: &Classifier, bytes: &[u8]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backend: Arc<dyn Backend> = InMemoryBackend::new(QueueConfig::default(), Ttls::default());
    let service = runtime.block_on(async {
        Service::builder()
            .backend(backend.clone())
            .workers(2)
            // The bench submits one photo many times: measure inference, not cache hits.
            .result_cache(None)
            .build()
            .await
            .expect("service")
    });
    let decoded = classifier.validation().decode(bytes).expect("decode");
    let spec = classifier.preprocessor().spec().clone();
    let payload = CropPayload {
        width: spec.input_width,
        height: spec.input_height,
        prepare_time: Duration::ZERO,
        pixels: classifier
            .preprocessor()
            .crop(&decoded.rgb)
            .expect("crop")
            .into(),
    }
    .encode();
    let mut group = c.benchmark_group("service_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("service_2_workers", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += time_jobs(&service, async {
                        for _ in 0..JOBS {
                            let record = JobRecord::new(
                                JobId::new(),
                                &SubmitOptions::default(),
                                classifier.version().to_string(),
                                decoded.metadata,
                                String::new(),
                                chrono::Utc::now(),
                            );
                            backend
                                .create(&record, payload.clone())
                                .await
                                .expect("create");
                        }
                    })
                    .await;
                }
                total
            })
        })
    });
    group.bench_function("service_2_workers_from_bytes", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += time_jobs(&service, async {
                        let submitters: Vec<_> = (0..4)
                            .map(|_| {
                                let (service, bytes) = (service.clone(), bytes.to_vec());
                                tokio::spawn(async move {
                                    for _ in 0..JOBS / 4 {
                                        service
                                            .submit(bytes.clone().into(), SubmitOptions::default())
                                            .await
                                            .expect("submit");
                                    }
                                })
                            })
                            .collect();
                        for s in submitters {
                            s.await.expect("submitter");
                        }
                    })
                    .await;
                }
                total
            })
        })
    });
    group.finish();
    runtime.block_on(service.shutdown());
}

/// Time from now until `submit` has run and `JOBS` more jobs have completed.
async fn time_jobs(service: &Service, submit: impl std::future::Future<Output = ()>) -> Duration {
    let done_before = service.metrics().jobs_completed();
    let started = Instant::now();
    submit.await;
    while service.metrics().jobs_completed() < done_before + JOBS as u64 {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    started.elapsed()
}

fn benches(c: &mut Criterion) {
    let classifier = Classifier::load("latest").expect("default model");
    let bytes = photo();
    raw(c, &classifier, &bytes);
    service(c, &classifier, &bytes);
}

criterion_group!(service_benches, benches);
criterion_main!(service_benches);
