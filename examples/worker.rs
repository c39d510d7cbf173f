//! `worker`: a standalone inference worker for the Redis backend (DESIGN.md section 5).
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example worker -- [--workers 2]
//! ```
//!
//! It takes jobs from the shared Redis queue, classifies them and stores the results; any
//! number of `worker` and `server` processes (the API, possibly with `WORKERS=0`) can share
//! one Redis as long as they use the same `REDIS_PREFIX`. Settings are environment variables
//! overridden by flags of the same meaning (`--help`): `REDIS_URL` (required),
//! `REDIS_PREFIX`, `WORKERS` (inference threads, default = cores), `MODEL_DIR`,
//! `DEFAULT_MODEL_VERSION`, `MODEL_MANIFEST`, `MODEL_CACHE_SIZE`, `MODEL_RELOAD_POLL_SECS`,
//! `VISIBILITY_TIMEOUT_SECS` (lease length: a killed worker's jobs are redelivered after it),
//! the TTLs, `LOG_LEVEL` and `LOG_FORMAT`.
//!
//! A `POST /api/v1/admin/models/reload` on any server sharing the prefix reaches this worker
//! too: it looks every `MODEL_RELOAD_POLL_SECS` (default 5) and then re-reads its own
//! manifest, with the same zero-downtime swap as the server.
//!
//! Runs until SIGINT/SIGTERM, then calls `Service::shutdown`: jobs in flight get
//! `SHUTDOWN_GRACE` seconds to finish, the rest are released back to the queue.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_core::model::ModelLocator;
use classifier_core::service::Service;
use classifier_http::LogFormat;

/// The worker's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "worker",
    about = "Inference worker for the Redis backend of the image classification service"
)]
struct WorkerConfig {
    /// Redis URL (required), e.g. redis://127.0.0.1:6379.
    #[arg(long = "redis-url", env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Key prefix of the deployment; servers and workers sharing jobs must use the same one.
    #[arg(
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        default_value = "classifier"
    )]
    redis_prefix: String,
    /// Inference workers (threads) in this process (default: the number of cores).
    #[arg(long = "workers", env = "WORKERS")]
    workers: Option<usize>,
    /// Extra directory searched first for model files.
    #[arg(long = "model-dir", env = "MODEL_DIR")]
    model_dir: Option<String>,
    /// Model version used for "latest" (default: the manifest's default).
    #[arg(long = "default-model-version", env = "DEFAULT_MODEL_VERSION")]
    default_model_version: Option<String>,
    /// Model manifest file, re-read when any process sharing the Redis prefix reloads its
    /// models (default: the first `manifest.toml` on the model search path).
    #[arg(long = "model-manifest", env = "MODEL_MANIFEST")]
    model_manifest: Option<String>,
    /// Seconds between looks for a model reload announced by another process sharing the
    /// Redis prefix (`POST /admin/models/reload` on any server); 0 turns following off.
    #[arg(
        long = "model-reload-poll",
        env = "MODEL_RELOAD_POLL_SECS",
        default_value_t = 5.0
    )]
    model_reload_poll_secs: f64,
    /// Model versions kept loaded (LRU).
    #[arg(
        long = "model-cache-size",
        env = "MODEL_CACHE_SIZE",
        default_value_t = 3
    )]
    model_cache_size: usize,
    /// Store completed results in the result cache (servers answer identical images from it).
    #[arg(long = "result-cache", env = "RESULT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    result_cache: bool,
    /// Seconds a taken job stays leased before another worker may take it again.
    #[arg(
        long = "visibility-timeout",
        env = "VISIBILITY_TIMEOUT_SECS",
        default_value_t = 30.0
    )]
    visibility_timeout_secs: f64,
    /// Seconds jobs in flight get to finish at shutdown before they are released.
    #[arg(
        long = "shutdown-grace",
        env = "SHUTDOWN_GRACE",
        default_value_t = 30.0
    )]
    shutdown_grace_secs: f64,
    /// Seconds a job record lives after its last change.
    #[arg(long = "status-ttl", env = "STATUS_TTL", default_value_t = 3600)]
    status_ttl_secs: u64,
    /// Seconds a result lives after completion.
    #[arg(long = "result-ttl", env = "RESULT_TTL", default_value_t = 86_400)]
    result_ttl_secs: u64,
    /// Seconds an uploaded image is kept.
    #[arg(long = "image-ttl", env = "IMAGE_TTL", default_value_t = 1800)]
    image_ttl_secs: u64,
    /// Log filter (`info`, `debug`, `classifier_core=debug,info`, ...).
    #[arg(long = "log-level", env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{name} must be a positive number of seconds, not {v}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    classifier_http::logging::init(&config.log_level, config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: WorkerConfig) -> anyhow::Result<()> {
    // Listen for SIGINT/SIGTERM from the start: a signal during startup (connecting, loading
    // models) must stop the process cleanly too, not kill it with the default action.
    let mut stop = tokio::spawn(classifier_http::server::shutdown_signal());
    tokio::task::yield_now().await;
    let url = config.redis_url.as_deref().context(
        "REDIS_URL (or --redis-url) is required: a worker takes its jobs from a shared Redis",
    )?;
    if config.workers == Some(0) {
        anyhow::bail!("WORKERS must be at least 1 for a worker process");
    }
    let ttls = Ttls {
        status: Duration::from_secs(config.status_ttl_secs),
        result: Duration::from_secs(config.result_ttl_secs),
        image: Duration::from_secs(config.image_ttl_secs),
    };
    let queue = QueueConfig {
        visibility_timeout: seconds("VISIBILITY_TIMEOUT_SECS", config.visibility_timeout_secs)?,
        ..QueueConfig::default()
    };
    let grace = seconds("SHUTDOWN_GRACE", config.shutdown_grace_secs)?;
    let backend = classifier_queue::RedisBackend::connect(url, &config.redis_prefix, queue, ttls)
        .await
        .context("cannot connect to Redis")?;
    let backend: std::sync::Arc<dyn Backend> = backend;

    let mut locator_dirs = Vec::new();
    if let Some(dir) = &config.model_dir {
        locator_dirs.push(std::path::PathBuf::from(dir));
    }
    locator_dirs.extend(ModelLocator::from_env().dirs().iter().cloned());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = Service::builder()
        .backend(backend.clone())
        .locator(ModelLocator::with_dirs(locator_dirs))
        .model_cache_size(config.model_cache_size)
        .workers(config.workers.unwrap_or(cores))
        .shutdown_grace(grace)
        .model_reload_poll(classifier_http::config::model_reload_poll(
            config.model_reload_poll_secs,
        )?);
    if let Some(path) = &config.model_manifest {
        builder = builder.manifest_path(path);
    }
    if let Some(v) = &config.default_model_version {
        builder = builder.default_model(v.clone());
    }
    if !config.result_cache {
        builder = builder.result_cache(None);
    }
    let service = tokio::select! {
        built = builder.build() => built.context("cannot start the service")?,
        _ = &mut stop => {
            tracing::info!("stopped during startup");
            return Ok(());
        }
    };
    tracing::info!(
        backend = backend.name(),
        prefix = %config.redis_prefix,
        workers = service.workers(),
        "worker running; SIGINT/SIGTERM stops it"
    );
    println!(
        "worker running ({} inference workers, prefix {})",
        service.workers(),
        config.redis_prefix
    );
    if let Err(e) = stop.await {
        tracing::error!(error = %e, "signal listener failed; stopping");
    }
    tracing::info!("stopping: finishing or releasing jobs in flight");
    service.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
