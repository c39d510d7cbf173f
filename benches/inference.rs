//! Inference benches: every registered model at batch 1 and batch 8 (time per call), and the
//! default model with tract-linalg's multithread executor (2 threads), and with a helper thread
//! of an `AssistTeam` (what one image costs in the service while the other core is idle).
//!
//! `cargo bench --bench inference`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use classifier::model::{AssistTeam, EngineOptions, Manifest};
use classifier::Classifier;

mod common;

fn chelsea_tensor() -> Vec<f32> {
    let bytes = std::fs::read(common::shared_models().join("reference/inputs/chelsea.input.bin"))
        .expect("chelsea.input.bin");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn inference(c: &mut Criterion) {
    let input = chelsea_tensor();
    let manifest = Manifest::builtin().expect("manifest");
    let mut group = c.benchmark_group("inference");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for entry in &manifest.models {
        let classifier = Classifier::load(&entry.version).expect("load");
        for batch in [1usize, 8] {
            // The int8 MobileNet takes ~150 ms per image in tract: batch 8 would take minutes.
            if entry.version == "mobilenetv2-int8" && batch == 8 {
                continue;
            }
            let tensor: Vec<f32> = input
                .iter()
                .copied()
                .cycle()
                .take(input.len() * batch)
                .collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(
                BenchmarkId::new(entry.version.as_str(), format!("batch{batch}")),
                &tensor,
                |b, t| b.iter(|| classifier.engine().run(t.clone(), batch).expect("run")),
            );
        }
    }
    let threaded = Classifier::builder()
        .engine_options(EngineOptions {
            max_native_batch: 8,
            intra_op_threads: 2,
            ..EngineOptions::default()
        })
        .build()
        .expect("load");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new(format!("{}+2threads", manifest.default), "batch1"),
        |b| b.iter(|| threaded.engine().run(input.clone(), 1).expect("run")),
    );
    assisted(&mut group, &input);
    let tract_kernels_only = Classifier::builder()
        .engine_options(EngineOptions {
            custom_kernels: false,
            ..EngineOptions::default()
        })
        .build()
        .expect("load");
    group.bench_function(
        BenchmarkId::new(format!("{}-tract-kernels-only", manifest.default), "batch1"),
        |b| {
            b.iter(|| {
                tract_kernels_only
                    .engine()
                    .run(input.clone(), 1)
                    .expect("run")
            })
        },
    );
    tract_variants(&mut group, &input);
    group.finish();
}

/// The default model at batch 1 on a thread that leads an [`AssistTeam`] with one idle
/// helper thread: what one image costs in the service when the other core has nothing to do.
fn assisted(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    input: &[f32],
) {
    let classifier = Classifier::load("latest").expect("load");
    let team = std::sync::Arc::new(AssistTeam::new());
    let helper = team.spawn_helper();
    group.bench_function(
        BenchmarkId::new(format!("{}+assist", classifier.version()), "batch1"),
        |b| b.iter(|| team.lead(|| classifier.engine().run(input.to_vec(), 1).expect("run"))),
    );
    drop(helper);
}

/// The default model loaded with tract directly, to show what the engine's choices give:
/// a typed but not optimized plan, and an optimized plan with a symbolic batch dimension.
fn tract_variants(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    input: &[f32],
) {
    use tract_onnx::prelude::*;
    let manifest = Manifest::builtin().expect("manifest");
    let entry = manifest.get("latest").expect("default");
    let path = common::shared_models().join(&entry.file);
    let load = || tract_onnx::onnx().model_for_path(&path).expect("parse");
    let tensor = || Tensor::from_shape(&[1, 3, 224, 224], input).expect("tensor");
    let unoptimized = load()
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
        .and_then(|m| m.into_typed())
        .and_then(|m| m.into_runnable())
        .expect("typed plan");
    group.bench_function(
        BenchmarkId::new(format!("{}-not-optimized", entry.version), "batch1"),
        |b| b.iter(|| unoptimized.run(tvec![tensor().into_tvalue()]).expect("run")),
    );
    let model = load();
    let n = model.symbols.sym("N");
    let symbolic = model
        .with_input_fact(
            0,
            f32::fact(&[n.to_dim(), 3.to_dim(), 224.to_dim(), 224.to_dim()]).into(),
        )
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("symbolic plan");
    group.bench_function(
        BenchmarkId::new(format!("{}-symbolic-batch", entry.version), "batch1"),
        |b| b.iter(|| symbolic.run(tvec![tensor().into_tvalue()]).expect("run")),
    );
}

criterion_group!(benches, inference);
criterion_main!(benches);
