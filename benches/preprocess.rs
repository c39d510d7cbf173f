//! Preprocessing benches: validate + decode + resize/crop + normalize of real JPEGs at three
//! sizes, with the reduced-size JPEG decode (`ValidationConfig::decode_for`, DCT scaling; on
//! two threads for large JPEGs, and on one for comparison: `jpeg_split_min_bytes:
//! usize::MAX`) and with a full-size decode (`decode`), and the stages separately for the
//! 1920x1080 one. Then the sample photo PNGs decoded with the PNG fast path (libdeflate, the
//! default) against the `png` crate alone (`fast_png: false`).
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
    // The reduced decode of a large JPEG on one thread only.
    let one_thread = ValidationConfig {
        jpeg_split_min_bytes: usize::MAX,
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
        // The same on one thread (the split decode off).
        group.bench_with_input(
            BenchmarkId::new("reduced decode+resize+normalize, one thread", &size),
            &jpeg,
            |b, jpeg| {
                b.iter(|| {
                    let decoded = one_thread.decode_for(jpeg, resize).expect("decode");
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

    let png_crate_only = ValidationConfig {
        fast_png: false,
        ..ValidationConfig::default()
    };
    let mut group = c.benchmark_group("png");
    group.throughput(Throughput::Elements(1));
    for name in ["chelsea.png", "coffee.png", "astronaut.png"] {
        let path = common::shared_models().join("samples").join(name);
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        group.bench_with_input(
            BenchmarkId::new("fast path decode", name),
            &png,
            |b, png| b.iter(|| validation.decode(png).expect("decode")),
        );
        group.bench_with_input(
            BenchmarkId::new("png crate decode", name),
            &png,
            |b, png| b.iter(|| png_crate_only.decode(png).expect("decode")),
        );
        group.bench_with_input(
            BenchmarkId::new("fast path decode+resize+normalize", name),
            &png,
            |b, png| {
                b.iter(|| {
                    let decoded = validation.decode_for(png, resize).expect("decode");
                    pre.run_decoded(&decoded).expect("preprocess")
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
