//! Preprocessing benches: validate + decode + resize/crop + normalize of real JPEGs at three
//! sizes, with the reduced-size JPEG decode (`ValidationConfig::decode_for`, DCT scaling) and
//! with a full-size decode (`decode`) for comparison, and the stages separately for the
//! 1920x1080 one.
//!
//! `cargo bench --bench preprocess`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use classifier::image::ValidationConfig;
use classifier::preprocess::{PreprocessSpec, Preprocessor};

mod common;

fn preprocess(c: &mut Criterion) {
    let validation = ValidationConfig::default();
    // Margin 1: decode down to just the resize size (1/4 for 1080p), for comparison.
    let margin_1 = ValidationConfig {
        jpeg_draft_margin: 1.0,
        ..ValidationConfig::default()
    };
    let pre = Preprocessor::new(PreprocessSpec::imagenet()).expect("spec");
    let resize = pre.spec().resize_shorter;
    let mut group = c.benchmark_group("preprocess");
    for (w, h) in [(640, 480), (1920, 1080), (4000, 3000)] {
        let jpeg = common::photo_jpeg(w, h);
        let size = format!("{w}x{h}");
        group.throughput(Throughput::Elements(1));
        // What the service does: reduced decode when the photo is large enough (1/2 for
        // 1920x1080, 1/4 for 4000x3000; 640x480 is decoded at full size).
        group.bench_with_input(
            BenchmarkId::new("reduced decode+resize+normalize", &size),
            &jpeg,
            |b, jpeg| {
                b.iter(|| {
                    let decoded = validation.decode_for(jpeg, resize).expect("decode");
                    pre.run_decoded(&decoded).expect("preprocess")
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("full decode+resize+normalize", &size),
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
    group.bench_function("reduced decode+resize+normalize, margin 1/1920x1080", |b| {
        b.iter(|| {
            let decoded = margin_1.decode_for(&jpeg, resize).expect("decode");
            pre.run_decoded(&decoded).expect("preprocess")
        })
    });
    group.bench_function("reduced decode only/1920x1080", |b| {
        b.iter(|| validation.decode_for(&jpeg, resize).expect("decode"))
    });
    group.bench_function("full decode only/1920x1080", |b| {
        b.iter(|| validation.decode(&jpeg).expect("decode"))
    });
    let reduced = validation.decode_for(&jpeg, resize).expect("decode");
    assert_eq!(reduced.scale_denom, 2, "1080p is decoded at 1/2");
    group.bench_function("resize+normalize only, reduced/1920x1080", |b| {
        b.iter(|| pre.run_decoded(&reduced).expect("run"))
    });
    let decoded = validation.decode(&jpeg).expect("decode");
    group.bench_function("resize+normalize only, full/1920x1080", |b| {
        b.iter(|| pre.run(&decoded.rgb).expect("run"))
    });
    group.bench_function("header inspect only/1920x1080", |b| {
        b.iter(|| validation.inspect(&jpeg).expect("inspect"))
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
