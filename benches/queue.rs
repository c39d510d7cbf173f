//! In-memory queue benches: a job's queue round trip (create + dequeue + ack) through the
//! `Arc<dyn Backend>` the service uses, single consumer and batched dequeue.
//!
//! `cargo bench --bench queue`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_core::job::tests_support::pending_job;
use classifier_core::job::{JobId, JobRecord, Priority};
use classifier_queue::InMemoryBackend;

/// Short TTLs so the store reaches a steady size instead of growing for the whole run
/// (records of acked jobs are purged after 2 s, as they would be after 1 h in production).
fn backend() -> Arc<dyn Backend> {
    InMemoryBackend::new(
        QueueConfig {
            max_depth: 1_000_000,
            ..QueueConfig::default()
        },
        Ttls {
            status: Duration::from_secs(2),
            result: Duration::from_secs(2),
            image: Duration::from_secs(2),
        },
    )
}

/// A fresh record per job (the template cloned with a new id), as a submission would make.
fn record(template: &JobRecord, i: u64) -> JobRecord {
    let mut job = template.clone();
    job.id = JobId::new();
    job.priority = Priority::ALL[(i % 4) as usize];
    job
}

fn queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let template = pending_job();
    let payload = Bytes::from(vec![0u8; 1024]);
    let mut group = c.benchmark_group("queue/memory");

    group.throughput(Throughput::Elements(1));
    group.bench_function("create+dequeue+ack, single consumer", |b| {
        let backend = backend();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let job = record(&template, i);
                    backend.create(&job, payload.clone()).await.expect("create");
                    let leases = backend.dequeue(1, Duration::ZERO).await.expect("dequeue");
                    assert!(backend.ack(&leases[0]).await.expect("ack"));
                }
                start.elapsed()
            })
        })
    });

    for batch in [16u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("create xN, dequeue(N), ack xN", batch),
            &batch,
            |b, &batch| {
                let backend = backend();
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for i in 0..iters {
                            for j in 0..batch {
                                let job = record(&template, i * batch + j);
                                backend.create(&job, payload.clone()).await.expect("create");
                            }
                            let leases = backend
                                .dequeue(batch as usize, Duration::ZERO)
                                .await
                                .expect("dequeue");
                            assert_eq!(leases.len() as u64, batch);
                            for lease in &leases {
                                assert!(backend.ack(lease).await.expect("ack"));
                            }
                        }
                        start.elapsed()
                    })
                })
            },
        );
    }

    // Producer and consumer on separate tasks of a 2-thread runtime: the consumer waits in
    // `dequeue` (Notify wake-ups) instead of finding work already there.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    group.throughput(Throughput::Elements(1));
    group.bench_function("producer task + consumer task, dequeue(16)", |b| {
        let backend = backend();
        b.iter_custom(|iters| {
            let backend = backend.clone();
            let template = template.clone();
            let payload = payload.clone();
            mt.block_on(async move {
                let start = Instant::now();
                let consumer = {
                    let backend = backend.clone();
                    tokio::spawn(async move {
                        let mut done = 0;
                        while done < iters {
                            let leases = backend
                                .dequeue(16, Duration::from_secs(5))
                                .await
                                .expect("dequeue");
                            assert!(!leases.is_empty(), "consumer starved");
                            for lease in &leases {
                                assert!(backend.ack(lease).await.expect("ack"));
                            }
                            done += leases.len() as u64;
                        }
                    })
                };
                for i in 0..iters {
                    let job = record(&template, i);
                    backend.create(&job, payload.clone()).await.expect("create");
                }
                consumer.await.expect("consumer");
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
