//! Redis queue round trips: create (record + payload + enqueue) -> dequeue -> ack, on the
//! Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! - `serial`: one job at a time (three round trips per job): the latency floor.
//! - `concurrent/N`: N creates in flight at once (the connection multiplexes them into
//!   pipelines), one `dequeue(N)` script call leasing the batch, N acks in flight at once.
//!
//! `cargo bench --bench redis_queue`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::future::join_all;

use classifier_core::backend::{Backend, JobQueue, JobStore, QueueConfig, Ttls};
use classifier_core::job::tests_support::pending_job;
use classifier_core::job::JobId;
use classifier_queue::RedisBackend;

/// A small payload, like a thumbnail; the queue path is what is measured.
const PAYLOAD: usize = 1024;

fn backend(rt: &tokio::runtime::Runtime) -> Arc<RedisBackend> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = QueueConfig {
        max_depth: 1_000_000,
        ..QueueConfig::default()
    };
    rt.block_on(RedisBackend::connect(
        &url,
        &format!("bench-{}", JobId::new()),
        config,
        Ttls::default(),
    ))
    .unwrap_or_else(|e| panic!("the bench needs Redis at {url}: {e}"))
}

async fn round_trips(backend: &RedisBackend, jobs: usize, payload: &Bytes) {
    let records: Vec<_> = (0..jobs).map(|_| pending_job()).collect();
    let created = join_all(records.iter().map(|r| backend.create(r, payload.clone()))).await;
    for c in created {
        c.expect("create");
    }
    let mut leases = Vec::with_capacity(jobs);
    while leases.len() < jobs {
        let got = backend
            .dequeue(jobs - leases.len(), Duration::from_secs(1))
            .await
            .expect("dequeue");
        assert!(!got.is_empty(), "created jobs must be dequeueable");
        leases.extend(got);
    }
    for acked in join_all(leases.iter().map(|l| backend.ack(l))).await {
        assert!(acked.expect("ack"), "fresh leases ack");
    }
}

fn redis_queue(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backend = backend(&rt);
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut group = c.benchmark_group("redis_queue");
    group.measurement_time(Duration::from_secs(8));

    group.throughput(Throughput::Elements(1));
    group.bench_function("serial create+dequeue+ack", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    round_trips(&backend, 1, &payload).await;
                }
                started.elapsed()
            })
        })
    });

    for n in [16usize, 64, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new("concurrent create+dequeue+ack", n),
            &n,
            |b, &n| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = Instant::now();
                        for _ in 0..iters {
                            round_trips(&backend, n, &payload).await;
                        }
                        started.elapsed()
                    })
                })
            },
        );
    }
    group.finish();

    let depth = rt.block_on(backend.depth()).expect("depth");
    assert_eq!(depth.in_flight + depth.total_ready(), 0, "every job acked");
    let removed = rt.block_on(backend.purge()).expect("purge");
    println!("removed {removed} keys of {}", backend.key_prefix());
    assert!(rt.block_on(backend.ping()).is_ok());
}

criterion_group!(benches, redis_queue);
criterion_main!(benches);
