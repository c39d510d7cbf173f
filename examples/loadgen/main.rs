//! `loadgen`: closed-loop load against a running `server`.
//!
//! ```text
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8000 --concurrency 16 --duration 30 [--ws] [--image PATH] [--warmup 2]
//! ```
//!
//! Each virtual user repeats: submit the image (POST /api/v1/classify), follow the job (poll
//! GET /status every `--poll-ms`, or watch the WebSocket with `--ws`), fetch GET /result.
//! Reports completed jobs per second, end-to-end latency p50/p95/p99 (submit to result),
//! POST accept latency p50/p99 and errors by status. The first `--warmup` seconds (default 2)
//! run the same load but are not counted. All virtual users start at the same instant, so
//! their first uploads arrive together: at concurrency 16 the last of them waits for fifteen
//! decodes on two cores (20-30 ms), on a fresh server and on one already warm alike, and in a
//! 12 s run that one burst decides the POST p99. After a warm-up the users have drifted apart
//! and the figures are those of steady state.
//!
//! The load generator shares the machine with the server it measures, so it runs on a
//! current-thread runtime: every virtual user is a task on one thread, which takes about a
//! tenth less CPU per job than tokio's two-worker default (no wake-ups across threads). Each
//! user keeps one HTTP/1.1 connection for its uploads and GETs and opens one WebSocket per job
//! (`client.rs`); a job that takes longer than two minutes counts as an error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;

mod client;
use client::{Target, UserClient};

#[derive(Parser, Debug, Clone)]
#[command(about = "Closed-loop load generator for the classifier HTTP API")]
struct Args {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Virtual users (each has one job in flight).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds to measure (after the warm-up).
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of load before the measurement starts, not counted (0: count from the start).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Follow jobs over the WebSocket instead of polling.
    #[arg(long)]
    ws: bool,
    /// Image to submit (default: the shared sample chelsea.png).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Poll interval in milliseconds (without --ws).
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// API key, if the server has auth on.
    #[arg(long)]
    api_key: Option<String>,
    /// Send the identical bytes every time (then the server's result cache answers all but
    /// the first). By default each upload gets a unique 16-byte trailer after the image's
    /// end marker, which decoders ignore but which changes its sha256, so every job is
    /// really classified.
    #[arg(long)]
    same_bytes: bool,
}

/// A job not done after this long counts as an error (the user then starts another).
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Stats {
    e2e: Vec<f64>,
    accept: Vec<f64>,
    /// From the 202 to the terminal status (WebSocket message or poll answer).
    wait: Vec<f64>,
    /// The GET of the result.
    fetch: Vec<f64>,
    errors: BTreeMap<String, usize>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let image_path = match &args.image {
        Some(p) => p.clone(),
        None => classifier::model::ModelLocator::from_env()
            .find("imagenet_classes.txt")?
            .with_file_name("samples/chelsea.png"),
    };
    let image = Bytes::from(std::fs::read(&image_path)?);
    let target = Target::new(&args.url, args.api_key.as_deref(), image).await?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let deadline = measure_from + Duration::from_secs(args.duration);
    let mut users = Vec::new();
    for _ in 0..args.concurrency {
        let (args, stats) = (args.clone(), stats.clone());
        let mut client = UserClient::new(target.clone());
        users.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let job = one_job(&args, &mut client, &stats, measure_from);
                let outcome = match tokio::time::timeout(JOB_TIMEOUT, job).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        // A request may have been cut off mid-way: start on a new connection.
                        client.disconnect();
                        Err("timeout".to_string())
                    }
                };
                if let Err(what) = outcome {
                    if Instant::now() >= measure_from {
                        *stats.lock().unwrap().errors.entry(what).or_default() += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for u in users {
        u.await?;
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let mut s = std::mem::take(&mut *stats.lock().unwrap());
    s.e2e.sort_by(f64::total_cmp);
    s.accept.sort_by(f64::total_cmp);
    s.wait.sort_by(f64::total_cmp);
    s.fetch.sort_by(f64::total_cmp);
    let ms = |v: f64| v * 1e3;
    println!(
        "image {} | concurrency {} | {} | {:.1} s after {} s of warm-up",
        image_path.display(),
        args.concurrency,
        if args.ws { "websocket" } else { "polling" },
        elapsed,
        args.warmup
    );
    println!(
        "completed jobs: {} ({:.2} jobs/s)",
        s.e2e.len(),
        s.e2e.len() as f64 / elapsed
    );
    println!(
        "end-to-end ms: p50 {:.1}  p95 {:.1}  p99 {:.1}",
        ms(percentile(&s.e2e, 50.0)),
        ms(percentile(&s.e2e, 95.0)),
        ms(percentile(&s.e2e, 99.0))
    );
    println!(
        "POST accept ms: p50 {:.2}  p99 {:.2}  (n={})",
        ms(percentile(&s.accept, 50.0)),
        ms(percentile(&s.accept, 99.0)),
        s.accept.len()
    );
    println!(
        "p50 ms of the phases: accept {:.2} | 202 to terminal status {:.2} | result GET {:.2}",
        ms(percentile(&s.accept, 50.0)),
        ms(percentile(&s.wait, 50.0)),
        ms(percentile(&s.fetch, 50.0))
    );
    println!("errors: {:?}", s.errors);
    Ok(())
}

async fn one_job(
    args: &Args,
    client: &mut UserClient,
    stats: &Mutex<Stats>,
    measure_from: Instant,
) -> Result<(), String> {
    let t0 = Instant::now();
    // The upload is the shared image plus, by default, a unique 16-byte trailer after it.
    let trailer = if args.same_bytes {
        Bytes::new()
    } else {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut trailer = Vec::with_capacity(16);
        trailer.extend_from_slice(&n.to_le_bytes());
        trailer.extend_from_slice(&process_id().to_le_bytes());
        trailer.extend_from_slice(b"load");
        trailer.into()
    };
    let reply = client
        .upload(trailer)
        .await
        .map_err(|e| format!("submit: {e}"))?;
    let accept = t0.elapsed().as_secs_f64();
    if reply.status != 202 {
        return Err(format!("submit {}", reply.status));
    }
    let id = client::job_id_of(&reply.body)?;
    let t1 = Instant::now();
    let status = if args.ws {
        client.watch(&id).await?
    } else {
        let path = format!("/api/v1/status/{id}");
        loop {
            let reply = client
                .get(&path)
                .await
                .map_err(|e| format!("status: {e}"))?;
            if reply.status != 200 {
                return Err(format!("status {}", reply.status));
            }
            let status = client::status_of(&reply.body)?;
            if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
    };
    if status != "completed" {
        return Err(format!("job {status}"));
    }
    let t2 = Instant::now();
    let reply = client
        .get(&format!("/api/v1/result/{id}"))
        .await
        .map_err(|e| format!("result: {e}"))?;
    if reply.status != 200 {
        return Err(format!("result {}", reply.status));
    }
    if t0 < measure_from {
        // Started during the warm-up: not counted.
        return Ok(());
    }
    let mut s = stats.lock().unwrap();
    s.accept.push(accept);
    s.wait.push((t2 - t1).as_secs_f64());
    s.fetch.push(t2.elapsed().as_secs_f64());
    s.e2e.push(t0.elapsed().as_secs_f64());
    Ok(())
}

/// This process's id (asked once: it goes into every upload's trailer).
fn process_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(std::process::id)
}
