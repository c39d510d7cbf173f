//! `server`: the whole HTTP API on one process.
//!
//! ```text
//! cargo run --release --example server -- [--port 8000] [--workers 2] [--api-keys k1,k2] ...
//! ```
//!
//! Every setting is an environment variable (`API_PORT`, `WORKERS`, `MAX_FILE_SIZE`, ...; see
//! `--help`) that the flag of the same meaning overrides. Jobs live in the in-memory backend
//! (`REDIS_URL` unset); serves until SIGINT/SIGTERM, then shuts down gracefully.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_core::image::ValidationConfig;
use classifier_core::model::ModelLocator;
use classifier_core::service::Service;
use classifier_http::{Config, Server};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
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

async fn run(config: Config) -> anyhow::Result<()> {
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
    let backend: Arc<dyn Backend> = match &config.redis_url {
        None => classifier_queue::InMemoryBackend::new(queue, ttls),
        // REDIS BRANCH: the Redis backend is wired in by the scale-out issue. Refuse rather
        // than silently running in memory while the operator expects shared state.
        Some(_) => anyhow::bail!(
            "REDIS_URL is set, but this server does not use the Redis backend yet; unset REDIS_URL to run with the in-memory backend"
        ),
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
        .validation(ValidationConfig {
            max_file_size: config.max_file_size,
            ..ValidationConfig::default()
        });
    if let Some(n) = config.workers {
        builder = builder.workers(n);
    }
    if let Some(v) = &config.default_model_version {
        builder = builder.default_model(v.clone());
    }
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
    Server::new(service, http)
        .serve(listener, classifier_http::server::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
