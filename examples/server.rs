//! `server`: the whole HTTP API on one process.
//!
//! ```text
//! cargo run --release --example server -- [--port 8000] [--workers 2] [--api-keys k1,k2] ...
//! ```
//!
//! Every setting is an environment variable (`API_PORT`, `WORKERS`, `MAX_FILE_SIZE`, ...; see
//! `--help`) that the flag of the same meaning overrides. Jobs live in the in-memory backend
//! when `REDIS_URL` is unset; with `REDIS_URL` set they live in Redis under the key prefix
//! `REDIS_PREFIX` (default `classifier`, the same option as the `worker` example), shared
//! with any number of servers and workers (rate-limit buckets included), and `WORKERS=0`
//! makes this process API only.
//! Serves until SIGINT/SIGTERM, then shuts down gracefully.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_core::image::ValidationConfig;
use classifier_core::model::ModelLocator;
use classifier_core::service::Service;
use classifier_http::{Config, Server};

/// The server's command line: the shared [`Config`] plus the Redis key prefix, which the
/// `worker` example takes under the same name.
#[derive(Debug, Parser)]
#[command(name = "server", about = "Asynchronous image classification HTTP API")]
struct Args {
    #[command(flatten)]
    config: Config,
    /// Key prefix of the deployment in Redis; servers and workers sharing jobs must agree.
    #[arg(
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        default_value = "classifier"
    )]
    redis_prefix: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Args {
        config,
        redis_prefix,
    } = Args::parse();
    classifier_http::logging::init(&config.log_level, config.log_format);
    match run(config, redis_prefix).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, redis_prefix: String) -> anyhow::Result<()> {
    let http = config.http()?;
    let addr = config.listen_addr()?;
    let ttls = Ttls {
        status: Duration::from_secs(config.status_ttl_secs),
        result: Duration::from_secs(config.result_ttl_secs),
        image: Duration::from_secs(config.image_ttl_secs),
    };
    let queue = QueueConfig {
        max_depth: config.max_queue_depth,
        ..QueueConfig::default()
    };
    // With Redis, the rate-limit buckets are shared through it too (fail open on errors).
    let mut rate_limiter: Option<Arc<dyn classifier_http::RateLimitStore>> = None;
    let backend: Arc<dyn Backend> = match &config.redis_url {
        None => classifier_queue::InMemoryBackend::new(queue, ttls),
        // Shared state for scale-out: jobs, results and the queue live in Redis.
        Some(url) => {
            let redis = classifier_queue::RedisBackend::connect(url, &redis_prefix, queue, ttls)
                .await
                .map_err(|e| anyhow::anyhow!("cannot connect to Redis: {e}"))?;
            rate_limiter = Some(Arc::new(redis.rate_limiter()));
            redis
        }
    };
    let mut locator_dirs = Vec::new();
    if let Some(dir) = &config.model_dir {
        locator_dirs.push(std::path::PathBuf::from(dir));
    }
    locator_dirs.extend(ModelLocator::from_env().dirs().iter().cloned());
    let mut builder = Service::builder()
        .backend(backend.clone())
        .locator(ModelLocator::with_dirs(locator_dirs))
        .model_cache_size(config.model_cache_size)
        .validation(validation(&config));
    if let Some(n) = config.workers {
        builder = builder.workers(n);
    }
    if let Some(v) = &config.default_model_version {
        builder = builder.default_model(v.clone());
    }
    if let Some(path) = &config.model_manifest {
        builder = builder.manifest_path(path);
    }
    if !config.result_cache {
        builder = builder.result_cache(None);
    }
    builder = if config.inference_idle {
        builder.inference_idle(true)
    } else {
        builder.inference_nice(config.inference_nice)
    };
    builder = builder.inference_assist(config.inference_assist);
    builder = builder.model_reload_poll(config.model_reload_poll()?);
    let service = builder.build().await?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let models: Vec<String> = service
        .models()
        .into_iter()
        .filter(|m| m.loaded)
        .map(|m| {
            if m.default {
                format!("{} (default)", m.version)
            } else {
                m.version
            }
        })
        .collect();
    tracing::info!(
        address = %local,
        backend = backend.name(),
        models_loaded = %models.join(", "),
        auth = !http.api_keys.is_empty() || !http.admin_api_keys.is_empty(),
        "listening on http://{local}"
    );
    println!(
        "listening on http://{local} (backend {}, models loaded: {})",
        backend.name(),
        models.join(", ")
    );
    let mut server = Server::new(service, http);
    if let Some(store) = rate_limiter {
        server = server.rate_limit_store(store);
    }
    server
        .serve(listener, classifier_http::server::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// The upload limits and decoder settings from the configuration.
fn validation(config: &Config) -> ValidationConfig {
    let defaults = ValidationConfig::default();
    ValidationConfig {
        max_file_size: config.max_file_size,
        jpeg_split_min_bytes: config
            .jpeg_split_min_bytes
            .unwrap_or(defaults.jpeg_split_min_bytes),
        ..defaults
    }
}
