//! Preprocessing benches: validate + decode + resize/crop + normalize of real JPEGs at three
//! sizes, and the stages separately for the 1920x1080 one.
//!
//! `cargo bench --bench preprocess`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use classifier::image::ValidationConfig;
use classifier::preprocess::{PreprocessSpec, Preprocessor};

mod common;

fn preprocess(c: &mut Criterion) {
    let validation = ValidationConfig::default();
    let pre = Preprocessor::new(PreprocessSpec::imagenet()).expect("spec");
    let mut group = c.benchmark_group("preprocess");
    for (w, h) in [(640, 480), (1920, 1080), (4000, 3000)] {
        let jpeg = common::photo_jpeg(w, h);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("decode+resize+normalize", format!("{w}x{h}")),
            &jpeg,
            |b, jpeg| {
                b.iter(|| {
                    let decoded = validation.decode(jpeg).expect("decode");
                    pre.run(&decoded.rgb).expect("preprocess")
                })
            },
        );
    }
    let jpeg = common::photo_jpeg(1920, 1080);
    group.bench_function("decode only/1920x1080", |b| {
        b.iter(|| validation.decode(&jpeg).expect("decode"))
    });
    let decoded = validation.decode(&jpeg).expect("decode");
    group.bench_function("resize+normalize only/1920x1080", |b| {
        b.iter(|| pre.run(&decoded.rgb).expect("run"))
    });
    group.bench_function("header inspect only/1920x1080", |b| {
        b.iter(|| validation.inspect(&jpeg).expect("inspect"))
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
