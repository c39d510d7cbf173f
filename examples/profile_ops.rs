//! Where does tract spend an inference? Per-operator timing of one model's optimized plan.
//!
//! ```text
//! cargo run --release --example profile_ops -- [--model VERSION] [--runs N]
//! ```
//!
//! Takes the plan the engine runs (concrete batch 1, optimized, single-threaded, our kernels
//! unless `--tract-kernels-only`), feeds
//! it the shared reference input for `chelsea`, and times every node over `--runs` runs
//! (after 20 warm-up runs). Prints the nodes grouped by operator name, the slowest first, and
//! the sum, which is close to (a little above) one plain inference: the timer itself costs
//! about a microsecond per node.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use classifier::model::{EngineOptions, Manifest, ModelLocator};
use classifier::Classifier;
use tract_onnx::prelude::*;

#[derive(Parser)]
struct Args {
    /// Model version (default: the manifest's default).
    #[arg(long)]
    model: Option<String>,
    /// Timed runs.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Also list the 15 slowest single nodes.
    #[arg(long)]
    nodes: bool,
    /// Print the plan's nodes (id, operator, inputs, output shape) and exit.
    #[arg(long)]
    dump: bool,
    /// Print the decluttered graph (what our kernel substitution sees) and exit.
    #[arg(long)]
    dump_decluttered: bool,
    /// Leave every node to tract (`EngineOptions::custom_kernels = false`).
    #[arg(long)]
    tract_kernels_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let manifest = Manifest::builtin()?;
    let entry = manifest.get(args.model.as_deref().unwrap_or("latest"))?;
    let version = entry.version.clone();
    let classifier = Classifier::builder()
        .version(&version)
        .engine_options(EngineOptions {
            custom_kernels: !args.tract_kernels_only,
            ..EngineOptions::default()
        })
        .build()?;
    let plan = classifier.engine().tract_plan(1)?;
    let spec = &entry.preprocess;
    let shape = [1, 3, spec.input_height as usize, spec.input_width as usize];
    let path = ModelLocator::from_env().find(&entry.file)?;
    if args.dump || args.dump_decluttered {
        let decluttered;
        let model = if args.dump_decluttered {
            decluttered = tract_onnx::onnx()
                .model_for_path(&path)?
                .with_input_fact(0, f32::fact(shape).into())?
                .into_typed()?
                .into_decluttered()?;
            &decluttered
        } else {
            plan.model()
        };
        for id in model.eval_order()? {
            let node = &model.nodes[id];
            let inputs: Vec<String> = node.inputs.iter().map(|i| format!("#{}", i.node)).collect();
            let shape = model.outlet_fact(OutletId::new(id, 0))?.shape.clone();
            println!(
                "#{id:<4} {:<20} {:<28} in {:<16} out {shape:?}",
                node.op().name(),
                node.name,
                inputs.join(",")
            );
        }
        return Ok(());
    }
    let reference = path.with_file_name("reference/inputs/chelsea.input.bin");
    let bytes =
        std::fs::read(&reference).with_context(|| format!("reading {}", reference.display()))?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let input: TValue = tract_ndarray::Array4::from_shape_vec(shape, values)?
        .into_tensor()
        .into();

    for _ in 0..20 {
        plan.run(tvec![input.clone()])?;
    }
    let mut per_node: HashMap<usize, (String, String, Duration)> = HashMap::new();
    let mut plain = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        state.run_plan_with_eval(tvec![input.clone()], |ctx, op_state, node, inputs| {
            let started = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            let slot = per_node.entry(node.id).or_insert_with(|| {
                (
                    node.op().name().to_string(),
                    node.name.clone(),
                    Duration::ZERO,
                )
            });
            slot.2 += started.elapsed();
            out
        })?;
        let started = Instant::now();
        plan.run(tvec![input.clone()])?;
        plain.push(started.elapsed());
    }
    plain.sort();
    let runs = args.runs as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / runs;

    let mut by_op: HashMap<&str, (usize, Duration)> = HashMap::new();
    for (op, _, time) in per_node.values() {
        let slot = by_op.entry(op.as_str()).or_default();
        slot.0 += 1;
        slot.1 += *time;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by_key(|b| std::cmp::Reverse(b.1 .1));
    let total: Duration = by_op.iter().map(|(_, (_, t))| *t).sum();
    println!(
        "model {version}: {} nodes, {} timed runs",
        per_node.len(),
        args.runs
    );
    println!(
        "{:<28} {:>6} {:>10} {:>7}",
        "operator", "nodes", "ms/run", "share"
    );
    for (op, (count, time)) in &by_op {
        println!(
            "{op:<28} {count:>6} {:>10.3} {:>6.1}%",
            ms(*time),
            100.0 * time.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!(
        "{:<28} {:>6} {:>10.3}",
        "sum of nodes",
        per_node.len(),
        ms(total)
    );
    println!(
        "plain run (median of {}): {:.3} ms",
        plain.len(),
        plain[plain.len() / 2].as_secs_f64() * 1e3
    );
    if args.nodes {
        let mut nodes: Vec<_> = per_node.iter().collect();
        nodes.sort_by_key(|b| std::cmp::Reverse(b.1 .2));
        for (id, (op, name, time)) in nodes.into_iter().take(15) {
            println!("#{id:<4} {op:<24} {name:<40} {:.3} ms", ms(*time));
        }
    }
    Ok(())
}
