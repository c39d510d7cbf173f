//! Configuration: every environment variable of the API contract, each overridable by a CLI
//! flag of the same meaning (`API_PORT=9000` or `--port 9000`; the flag wins).
//!
//! [`Config`] is the whole process's configuration (the server example also uses the model,
//! worker, queue and TTL settings to build the service); [`HttpConfig`] is the part this
//! crate's server needs, with defaults suitable for tests.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::error::{Error, Result};
use crate::rate_limit::RateLimit;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration of the server process.
#[derive(Debug, Clone, Parser)]
#[command(name = "server", about = "Asynchronous image classification HTTP API")]
pub struct Config {
    /// Address to listen on.
    #[arg(long = "host", env = "API_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long = "port", env = "API_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Redis URL; unset = in-memory backend.
    #[arg(long = "redis-url", env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// In-process workers (default: the number of cores; 0 = API only).
    #[arg(long = "workers", env = "WORKERS")]
    pub workers: Option<usize>,
    /// Extra directory searched first for model files.
    #[arg(long = "model-dir", env = "MODEL_DIR")]
    pub model_dir: Option<String>,
    /// Model version used for "latest" (default: the manifest's default).
    #[arg(long = "default-model-version", env = "DEFAULT_MODEL_VERSION")]
    pub default_model_version: Option<String>,
    /// Model versions kept loaded (LRU).
    #[arg(
        long = "model-cache-size",
        env = "MODEL_CACHE_SIZE",
        default_value_t = 3
    )]
    pub model_cache_size: usize,
    /// Model manifest file, re-read by `POST /admin/models/reload` (default: the first
    /// `manifest.toml` on the model search path, else the built-in one).
    #[arg(long = "model-manifest", env = "MODEL_MANIFEST")]
    pub model_manifest: Option<String>,
    /// Seconds between looks for a model reload announced by another process sharing the
    /// backend (`POST /admin/models/reload` on any server); this process then re-reads its
    /// own manifest. 0 turns following off.
    #[arg(
        long = "model-reload-poll",
        env = "MODEL_RELOAD_POLL_SECS",
        default_value_t = 5.0
    )]
    pub model_reload_poll_secs: f64,
    /// Answer an image identical (sha256) to one already classified with the same model
    /// version from the result cache, without inference.
    #[arg(long = "result-cache", env = "RESULT_CACHE", default_value_t = true, action = clap::ArgAction::Set)]
    pub result_cache: bool,
    /// Niceness (0-19, Linux) of the inference threads. Above 0, accepting and decoding
    /// uploads (and other processes) preempt inference when every core is busy: at
    /// concurrency 16 the default 10 cut the accept latency (p50 5.2 -> 3.0 ms, p99 14.3 ->
    /// 9.9 ms) at the same throughput (BENCHMARKS.md). 0 treats them like every thread.
    #[arg(long = "inference-nice", env = "INFERENCE_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub inference_nice: i32,
    /// Schedule the inference threads with `SCHED_IDLE` (Linux): they only use cycles that
    /// accepting, decoding and answering requests leave free, so the accept latency of a
    /// saturated server stays that of an idle one (BENCHMARKS.md). Overrides
    /// `INFERENCE_NICE`; `false` falls back to it.
    #[arg(long = "inference-idle", env = "INFERENCE_IDLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub inference_idle: bool,
    /// Let an inference thread with nothing to run help another one's inference: at low
    /// load one image uses several cores (lower `/predict` and job latency); at full load
    /// each thread runs its own batch as before (BENCHMARKS.md).
    #[arg(long = "inference-assist", env = "INFERENCE_ASSIST", default_value_t = true, action = clap::ArgAction::Set)]
    pub inference_assist: bool,
    /// Largest accepted image file, in bytes (exactly this size is accepted).
    #[arg(
        long = "max-file-size",
        env = "MAX_FILE_SIZE",
        default_value_t = 10_485_760
    )]
    pub max_file_size: usize,
    /// Entropy-coded data size (bytes) from which a large JPEG upload is decoded on two
    /// threads (`ValidationConfig::jpeg_split_min_bytes`; default 65536 on a machine with
    /// more than one core, never on one). 0 splits every JPEG; 18446744073709551615 none.
    #[arg(long = "jpeg-split-min-bytes", env = "JPEG_SPLIT_MIN_BYTES")]
    pub jpeg_split_min_bytes: Option<usize>,
    /// Most jobs waiting in the queue before submissions get 503.
    #[arg(
        long = "max-queue-depth",
        env = "MAX_QUEUE_DEPTH",
        default_value_t = 10_000
    )]
    pub max_queue_depth: usize,
    /// API keys, comma-separated (none = auth off).
    #[arg(long = "api-keys", env = "API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// Admin API keys, comma-separated (they are API keys too).
    #[arg(long = "admin-api-keys", env = "ADMIN_API_KEYS", value_delimiter = ',')]
    pub admin_api_keys: Vec<String>,
    /// Requests per minute per key (per IP without auth); 0 turns rate limiting off.
    #[arg(
        long = "rate-limit-per-minute",
        env = "RATE_LIMIT_PER_MINUTE",
        default_value_t = 60
    )]
    pub rate_limit_per_minute: u32,
    /// Token-bucket capacity.
    #[arg(
        long = "rate-limit-burst",
        env = "RATE_LIMIT_BURST",
        default_value_t = 10
    )]
    pub rate_limit_burst: u32,
    /// HMAC secret for webhook signatures (unset = a random secret per process, with a
    /// warning: receivers cannot verify those).
    #[arg(
        long = "webhook-secret",
        env = "WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// Allow webhook destinations on private networks (tests).
    #[arg(long = "webhook-allow-private", env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Attempts per webhook event before it is dead-lettered.
    #[arg(
        long = "webhook-max-attempts",
        env = "WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub webhook_max_attempts: u32,
    /// Seconds one webhook attempt may take (resolve, connect, TLS, response headers).
    #[arg(
        long = "webhook-timeout",
        env = "WEBHOOK_TIMEOUT_SECS",
        default_value_t = 10.0
    )]
    pub webhook_timeout_secs: f64,
    /// Backoff ceiling after the first failed webhook attempt, in ms (doubles per attempt,
    /// full jitter).
    #[arg(
        long = "webhook-retry-base-ms",
        env = "WEBHOOK_RETRY_BASE_MS",
        default_value_t = 1000
    )]
    pub webhook_retry_base_ms: u64,
    /// Largest webhook backoff ceiling, and cap on a receiver's Retry-After, in ms.
    #[arg(
        long = "webhook-retry-max-ms",
        env = "WEBHOOK_RETRY_MAX_MS",
        default_value_t = 300_000
    )]
    pub webhook_retry_max_ms: u64,
    /// Consecutive failures that open a destination's circuit breaker (0 = no breaker).
    #[arg(
        long = "webhook-breaker-threshold",
        env = "WEBHOOK_BREAKER_THRESHOLD",
        default_value_t = 5
    )]
    pub webhook_breaker_threshold: u32,
    /// Seconds an open circuit breaker holds a destination's deliveries back.
    #[arg(
        long = "webhook-breaker-cooldown",
        env = "WEBHOOK_BREAKER_COOLDOWN_SECS",
        default_value_t = 30.0
    )]
    pub webhook_breaker_cooldown_secs: f64,
    /// How often the webhook outbox is polled when nothing is due, in ms.
    #[arg(
        long = "webhook-poll-interval-ms",
        env = "WEBHOOK_POLL_INTERVAL_MS",
        default_value_t = 500
    )]
    pub webhook_poll_interval_ms: u64,
    /// Log filter (`info`, `debug`, `classifier_http=debug,info`, ...).
    #[arg(long = "log-level", env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Seconds a job record lives after its last change.
    #[arg(long = "status-ttl", env = "STATUS_TTL", default_value_t = 3600)]
    pub status_ttl_secs: u64,
    /// Seconds a result lives after completion.
    #[arg(long = "result-ttl", env = "RESULT_TTL", default_value_t = 86_400)]
    pub result_ttl_secs: u64,
    /// Seconds an uploaded image is kept.
    #[arg(long = "image-ttl", env = "IMAGE_TTL", default_value_t = 1800)]
    pub image_ttl_secs: u64,
    /// Seconds a client has to send the request headers; also how long an idle keep-alive
    /// connection stays open waiting for its next request.
    #[arg(
        long = "header-read-timeout",
        env = "HEADER_READ_TIMEOUT",
        default_value_t = 10.0
    )]
    pub header_read_timeout_secs: f64,
    /// Seconds a request body may stall (no bytes arriving) before 408.
    #[arg(
        long = "body-read-timeout",
        env = "BODY_READ_TIMEOUT",
        default_value_t = 10.0
    )]
    pub body_read_timeout_secs: f64,
    /// Most concurrent connections, open status WebSockets included; more wait in the listen
    /// backlog.
    #[arg(
        long = "max-connections",
        env = "MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_connections: usize,
    /// Largest message a status WebSocket client may send, in bytes (exactly this size is
    /// accepted). Clients only need close and ping frames; a larger message closes the socket
    /// with 1009. It also bounds what one socket can make the server buffer.
    #[arg(
        long = "ws-max-message-size",
        env = "WS_MAX_MESSAGE_SIZE",
        default_value_t = 65_536
    )]
    pub ws_max_message_size: usize,
    /// Most files in one batch request.
    #[arg(
        long = "max-batch-files",
        env = "MAX_BATCH_FILES",
        default_value_t = 10
    )]
    pub max_batch_files: usize,
    /// Seconds in-flight requests get to finish at shutdown.
    #[arg(
        long = "shutdown-timeout",
        env = "SHUTDOWN_TIMEOUT",
        default_value_t = 30.0
    )]
    pub shutdown_timeout_secs: f64,
}

impl Config {
    /// The address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().map_err(|e| {
            Error::Config(format!(
                "API_HOST {:?} is not an IP address: {e}",
                self.host
            ))
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }

    /// `MODEL_RELOAD_POLL_SECS` checked: `None` for 0 (off).
    pub fn model_reload_poll(&self) -> Result<Option<Duration>> {
        model_reload_poll(self.model_reload_poll_secs)
    }

    /// The HTTP server's part of the configuration.
    pub fn http(&self) -> Result<HttpConfig> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{name} must be a positive number of seconds, not {v}"
                    ))
                })
        };
        if self.max_connections == 0
            || self.max_batch_files == 0
            || self.max_file_size == 0
            || self.ws_max_message_size == 0
        {
            return Err(Error::Config(
                "MAX_CONNECTIONS, MAX_BATCH_FILES, MAX_FILE_SIZE and WS_MAX_MESSAGE_SIZE must be positive"
                    .into(),
            ));
        }
        if self.rate_limit_per_minute > 0 && self.rate_limit_burst == 0 {
            return Err(Error::Config("RATE_LIMIT_BURST must be positive".into()));
        }
        let webhook = self.webhook(secs)?;
        Ok(HttpConfig {
            max_file_size: self.max_file_size,
            max_batch_files: self.max_batch_files,
            api_keys: clean(&self.api_keys),
            admin_api_keys: clean(&self.admin_api_keys),
            rate_limit: RateLimit {
                per_minute: self.rate_limit_per_minute,
                burst: self.rate_limit_burst,
            },
            header_read_timeout: secs("HEADER_READ_TIMEOUT", self.header_read_timeout_secs)?,
            body_read_timeout: secs("BODY_READ_TIMEOUT", self.body_read_timeout_secs)?,
            max_connections: self.max_connections,
            ws_max_message_size: self.ws_max_message_size,
            shutdown_timeout: secs("SHUTDOWN_TIMEOUT", self.shutdown_timeout_secs)?,
            webhook,
        })
    }

    /// The `WEBHOOK_*` settings, checked.
    fn webhook(
        &self,
        secs: impl Fn(&str, f64) -> Result<Duration>,
    ) -> Result<crate::webhook::WebhookConfig> {
        if self.webhook_max_attempts == 0
            || self.webhook_retry_base_ms == 0
            || self.webhook_poll_interval_ms == 0
        {
            return Err(Error::Config(
                "WEBHOOK_MAX_ATTEMPTS, WEBHOOK_RETRY_BASE_MS and WEBHOOK_POLL_INTERVAL_MS must be positive"
                    .into(),
            ));
        }
        if self.webhook_retry_max_ms < self.webhook_retry_base_ms {
            return Err(Error::Config(
                "WEBHOOK_RETRY_MAX_MS must be at least WEBHOOK_RETRY_BASE_MS".into(),
            ));
        }
        Ok(crate::webhook::WebhookConfig {
            secret: self.webhook_secret.clone().filter(|s| !s.trim().is_empty()),
            allow_private: self.webhook_allow_private,
            max_attempts: self.webhook_max_attempts,
            timeout: secs("WEBHOOK_TIMEOUT_SECS", self.webhook_timeout_secs)?,
            retry_base: Duration::from_millis(self.webhook_retry_base_ms),
            retry_max: Duration::from_millis(self.webhook_retry_max_ms),
            breaker_threshold: self.webhook_breaker_threshold,
            breaker_cooldown: secs(
                "WEBHOOK_BREAKER_COOLDOWN_SECS",
                self.webhook_breaker_cooldown_secs,
            )?,
            poll_interval: Duration::from_millis(self.webhook_poll_interval_ms),
            ..crate::webhook::WebhookConfig::default()
        })
    }
}

/// A model-reload poll interval in seconds, checked: 0 is `None` (off); a negative or
/// non-finite value is refused. Shared by the server and the `worker` example.
///
/// ```
/// use std::time::Duration;
/// use classifier_http::config::model_reload_poll;
/// assert_eq!(model_reload_poll(0.0).unwrap(), None);
/// assert_eq!(model_reload_poll(2.5).unwrap(), Some(Duration::from_millis(2500)));
/// assert!(model_reload_poll(-1.0).is_err());
/// ```
pub fn model_reload_poll(secs: f64) -> Result<Option<Duration>> {
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .map(Some)
        .ok_or_else(|| {
            Error::Config(format!(
                "MODEL_RELOAD_POLL_SECS must be 0 (off) or a positive number of seconds, not {secs}"
            ))
        })
}

fn clean(keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

/// What the HTTP server needs. `Default` gives the documented defaults with auth off.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted file in bytes (each file of a batch); exactly this size is accepted.
    pub max_file_size: usize,
    /// Most files in one batch.
    pub max_batch_files: usize,
    /// API keys (empty with `admin_api_keys` empty = auth off).
    pub api_keys: Vec<String>,
    /// Admin API keys.
    pub admin_api_keys: Vec<String>,
    /// Token bucket settings (`per_minute == 0` = off).
    pub rate_limit: RateLimit,
    /// Time to receive request headers; also the idle keep-alive timeout.
    pub header_read_timeout: Duration,
    /// Longest stall of a request body.
    pub body_read_timeout: Duration,
    /// Concurrent connection cap (open WebSockets included).
    pub max_connections: usize,
    /// Largest message a status WebSocket client may send (bytes, inclusive).
    pub ws_max_message_size: usize,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Webhook delivery and the SSRF guard of `callback_url`.
    pub webhook: crate::webhook::WebhookConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_file_size: 10 * 1024 * 1024,
            max_batch_files: 10,
            api_keys: Vec::new(),
            admin_api_keys: Vec::new(),
            rate_limit: RateLimit {
                per_minute: 60,
                burst: 10,
            },
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            ws_max_message_size: 65_536,
            shutdown_timeout: Duration::from_secs(30),
            webhook: crate::webhook::WebhookConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_defaults() {
        let c = Config::try_parse_from([
            "server",
            "--port",
            "9001",
            "--api-keys",
            "a, b,,",
            "--rate-limit-per-minute",
            "0",
            "--header-read-timeout",
            "1.5",
        ])
        .unwrap();
        assert_eq!(c.port, 9001);
        let h = c.http().unwrap();
        assert_eq!(h.api_keys, ["a", "b"]);
        assert_eq!(h.rate_limit.per_minute, 0);
        assert_eq!(h.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(h.max_file_size, 10_485_760);
    }

    #[test]
    fn ws_max_message_size_defaults_to_64_kib_and_must_be_positive() {
        let c = Config::try_parse_from(["server"]).unwrap();
        assert_eq!(c.http().unwrap().ws_max_message_size, 65_536);
        let c = Config::try_parse_from(["server", "--ws-max-message-size", "1"]).unwrap();
        assert_eq!(c.http().unwrap().ws_max_message_size, 1);
        let c = Config::try_parse_from(["server", "--ws-max-message-size", "0"]).unwrap();
        assert!(c.http().is_err());
    }

    #[test]
    fn webhook_settings() {
        let c = Config::try_parse_from(["server"]).unwrap();
        let w = c.http().unwrap().webhook;
        assert!(!w.allow_private);
        assert_eq!(w.max_attempts, 5);
        assert_eq!(w.timeout, Duration::from_secs(10));
        assert_eq!(w.retry_base, Duration::from_millis(1000));
        assert_eq!(w.retry_max, Duration::from_millis(300_000));
        assert_eq!(w.breaker_threshold, 5);
        assert_eq!(w.breaker_cooldown, Duration::from_secs(30));
        let c = Config::try_parse_from([
            "server",
            "--webhook-secret",
            "s3",
            "--webhook-allow-private",
            "true",
            "--webhook-max-attempts",
            "3",
            "--webhook-retry-base-ms",
            "50",
            "--webhook-retry-max-ms",
            "400",
        ])
        .unwrap();
        let w = c.http().unwrap().webhook;
        assert_eq!(w.secret.as_deref(), Some("s3"));
        assert!(w.allow_private);
        assert_eq!(w.max_attempts, 3);
        assert_eq!(w.backoff().ceiling(10), Duration::from_millis(400));
        let bad = Config::try_parse_from(["server", "--webhook-max-attempts", "0"]).unwrap();
        assert!(bad.http().is_err());
    }

    #[test]
    fn jpeg_split_threshold_defaults_to_the_library_and_can_be_set() {
        let c = Config::try_parse_from(["server"]).unwrap();
        assert_eq!(c.jpeg_split_min_bytes, None);
        let c = Config::try_parse_from(["server", "--jpeg-split-min-bytes", "0"]).unwrap();
        assert_eq!(c.jpeg_split_min_bytes, Some(0));
        assert!(Config::try_parse_from(["server", "--jpeg-split-min-bytes", "-1"]).is_err());
    }

    #[test]
    fn inference_nice_defaults_to_10_and_is_bounded() {
        let c = Config::try_parse_from(["server"]).unwrap();
        assert_eq!(c.inference_nice, 10);
        let c = Config::try_parse_from(["server", "--inference-nice", "0"]).unwrap();
        assert_eq!(c.inference_nice, 0);
        let c = Config::try_parse_from(["server", "--inference-nice", "19"]).unwrap();
        assert_eq!(c.inference_nice, 19);
        assert!(Config::try_parse_from(["server", "--inference-nice", "20"]).is_err());
        assert!(Config::try_parse_from(["server", "--inference-nice", "-1"]).is_err());
    }

    #[test]
    fn inference_assist_defaults_to_on_and_can_be_turned_off() {
        assert!(Config::try_parse_from(["server"]).unwrap().inference_assist);
        let c = Config::try_parse_from(["server", "--inference-assist", "false"]).unwrap();
        assert!(!c.inference_assist);
    }

    #[test]
    fn inference_idle_defaults_to_on_and_can_be_turned_off() {
        assert!(Config::try_parse_from(["server"]).unwrap().inference_idle);
        let c = Config::try_parse_from(["server", "--inference-idle", "false"]).unwrap();
        assert!(!c.inference_idle);
        assert!(Config::try_parse_from(["server", "--inference-idle", "maybe"]).is_err());
    }
}
