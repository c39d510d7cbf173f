//! The dispatcher task: claim due deliveries, attempt them, record the outcomes.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use classifier_core::backend::WebhookDelivery;
use classifier_core::service::Service;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use url::{Host, Position, Url};

use super::{parse_retry_after, Admission, Backoff, Breakers, Secret, WebhookConfig, USER_AGENT};
use crate::callback::{parse_callback_url, resolve_callback_url, CallbackError};

/// How often the outbox gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);
/// Most bytes of an error response kept in `last_error`.
const ERROR_SNIPPET: usize = 256;

/// The running dispatcher of one server process; [`Dispatcher::stop`] ends it.
#[derive(Debug)]
pub struct Dispatcher {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    grace: Duration,
}

impl Dispatcher {
    /// Start delivering the outbox of `service`'s backend with `config`. Must be called
    /// inside a Tokio runtime.
    pub fn start(service: Service, config: WebhookConfig) -> Dispatcher {
        let secret = match config.secret.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Secret::new(s),
            None => {
                tracing::warn!(
                    "WEBHOOK_SECRET is not set: webhooks are signed with a random secret generated at start, which receivers cannot know and which differs per process and per restart; set WEBHOOK_SECRET (the same on every server)"
                );
                Secret::random()
            }
        };
        if config.allow_private {
            tracing::warn!(
                "WEBHOOK_ALLOW_PRIVATE is on: webhooks may be sent to loopback, private and link-local addresses"
            );
        }
        let grace = config.timeout + Duration::from_secs(1);
        let (stop, stopped) = watch::channel(false);
        let inner = Arc::new(Inner {
            backoff: config.backoff(),
            breakers: Mutex::new(Breakers::new(
                config.breaker_threshold,
                config.breaker_cooldown,
            )),
            service,
            config,
            secret,
            tls: OnceLock::new(),
        });
        let task = tokio::spawn(inner.run(stopped));
        Dispatcher {
            stop,
            task: Some(task),
            grace,
        }
    }

    /// Stop claiming; let attempts in flight finish (at most one attempt timeout), give the
    /// claimed deliveries not yet attempted back to the outbox, and return.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(self.grace, &mut task).await.is_err() {
                tracing::warn!("webhook dispatcher did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    /// 2xx.
    Delivered(StatusCode),
    /// Worth another attempt: network error, timeout, 5xx, 429.
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The receiver answered with a status that will not change (4xx other than 429, 3xx).
    Rejected(String),
    /// Not sent at all: the URL is invalid or its destination is forbidden.
    Refused(String),
}

struct Inner {
    service: Service,
    config: WebhookConfig,
    secret: Secret,
    backoff: Backoff,
    breakers: Mutex<Breakers>,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl Inner {
    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let batch = self.config.batch.max(1);
        let lease = self.config.claim_lease();
        let mut gauges_at: Option<Instant> = None;
        let mut backend_down = false;
        tracing::debug!(config = ?self.config, "webhook dispatcher started");
        loop {
            if *stop.borrow() {
                break;
            }
            if gauges_at.is_none_or(|t| t.elapsed() >= GAUGE_INTERVAL) {
                gauges_at = Some(Instant::now());
                self.refresh_gauges().await;
            }
            let claimed = match self.service.backend().claim_webhooks(batch, lease).await {
                Ok(claimed) => {
                    if backend_down {
                        tracing::info!("webhook outbox reachable again");
                        backend_down = false;
                    }
                    claimed
                }
                Err(e) => {
                    if !backend_down {
                        tracing::warn!(error = %e, "cannot claim webhook deliveries; retrying");
                        backend_down = true;
                    }
                    Vec::new()
                }
            };
            let full = claimed.len() >= batch;
            if !claimed.is_empty() {
                let attempts = claimed.into_iter().map(|d| self.process(d, stop.clone()));
                futures_util::future::join_all(attempts).await;
            }
            if !full {
                // A delivery this process adds wakes the dispatcher at once; the poll finds
                // those of other processes and the retries that come due.
                let added = async {
                    match self.service.backend().webhook_signal() {
                        Some(signal) => signal.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = stop.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = added => {}
                }
            }
        }
        tracing::debug!("webhook dispatcher stopped");
    }

    async fn refresh_gauges(&self) {
        let backend = self.service.backend();
        if let (Ok(pending), Ok(dead)) = (
            backend.pending_webhooks().await,
            backend.webhook_dead_letters().await,
        ) {
            self.service
                .metrics()
                .set_webhook_backlog(pending, dead.len());
        }
    }

    /// Attempt one claimed delivery (unless stopping) and record what happened.
    async fn process(&self, mut d: WebhookDelivery, stop: watch::Receiver<bool>) {
        let backend = self.service.backend();
        let metrics = self.service.metrics();
        if *stop.borrow() {
            // Give it back unattempted instead of leaving it to the claim lease.
            d.next_attempt_at = Utc::now();
            if let Err(e) = backend.reschedule_webhook(&d).await {
                tracing::debug!(error = %e, event_id = %d.event_id, "claim not released");
            }
            return;
        }
        let url = match parse_callback_url(&d.url) {
            Ok(url) => url,
            Err(e) => {
                d.attempts += 1;
                self.dead_letter(d, e.to_string(), "").await;
                return;
            }
        };
        let dest = destination(&url);
        let admission = self.breakers().admit(&dest, Instant::now());
        if let Admission::Open { retry_in } = admission {
            d.next_attempt_at = due_in(retry_in);
            metrics.webhook_attempt("breaker_open");
            tracing::debug!(event_id = %d.event_id, destination = %dest, ?retry_in, "circuit open; delivery postponed");
            if let Err(e) = backend.reschedule_webhook(&d).await {
                tracing::warn!(error = %e, event_id = %d.event_id, "cannot postpone webhook delivery");
            }
            return;
        }

        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.config.timeout, self.attempt(&d, &url)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                error: format!("no response within {:?}", self.config.timeout),
                retry_after: None,
            },
        };
        d.attempts += 1;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Outcome::Delivered(status) => {
                self.breakers().success(&dest);
                metrics.webhook_attempt("delivered");
                tracing::info!(
                    event_id = %d.event_id, job_id = %d.job_id, destination = %dest,
                    attempts = d.attempts, status = status.as_u16(), elapsed_ms,
                    "webhook delivered"
                );
                if let Err(e) = backend.complete_webhook(&d.event_id).await {
                    // The lease will expire and the event be sent again (at least once).
                    tracing::warn!(error = %e, event_id = %d.event_id, "delivered webhook not marked complete");
                }
            }
            Outcome::Rejected(error) => {
                self.breakers().success(&dest);
                self.dead_letter(d, error, &dest).await;
            }
            Outcome::Refused(error) => {
                self.breakers().neutral(&dest);
                self.dead_letter(d, error, &dest).await;
            }
            Outcome::Retry { error, retry_after } => {
                if self.breakers().failure(&dest, Instant::now()) {
                    tracing::warn!(
                        destination = %dest,
                        cooldown = ?self.config.breaker_cooldown,
                        "webhook circuit breaker open after repeated failures"
                    );
                }
                if d.attempts >= self.config.max_attempts.max(1) {
                    self.dead_letter(d, error, &dest).await;
                    return;
                }
                let backoff = self.backoff.delay(d.attempts);
                let asked = retry_after.map(|r| r.min(self.backoff.max));
                let delay = asked.map_or(backoff, |r| r.max(backoff));
                d.next_attempt_at = due_in(delay);
                metrics.webhook_attempt("retry");
                tracing::info!(
                    event_id = %d.event_id, job_id = %d.job_id, destination = %dest,
                    attempts = d.attempts, error = %error, retry_in_ms = delay.as_millis() as u64,
                    "webhook attempt failed; will retry"
                );
                d.last_error = Some(error);
                if let Err(e) = backend.reschedule_webhook(&d).await {
                    tracing::warn!(error = %e, event_id = %d.event_id, "cannot reschedule webhook delivery");
                }
            }
        }
    }

    async fn dead_letter(&self, mut d: WebhookDelivery, error: String, dest: &str) {
        self.service.metrics().webhook_attempt("dead");
        tracing::warn!(
            event_id = %d.event_id, job_id = %d.job_id, destination = %dest,
            attempts = d.attempts, error = %error,
            "webhook dead-lettered"
        );
        d.last_error = Some(error);
        if let Err(e) = self.service.backend().dead_letter_webhook(&d).await {
            tracing::warn!(error = %e, event_id = %d.event_id, "cannot dead-letter webhook delivery");
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, Breakers> {
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls
            .get_or_init(|| {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Arc::new(config)
            })
            .clone()
    }

    /// One attempt: check and resolve the destination, connect to a checked address, send.
    async fn attempt(&self, d: &WebhookDelivery, url: &Url) -> Outcome {
        let addrs = match resolve_callback_url(url, self.config.allow_private).await {
            Ok(addrs) => addrs,
            Err(CallbackError::Unresolved(m)) => {
                return Outcome::Retry {
                    error: m,
                    retry_after: None,
                }
            }
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        let tcp = match connect(&addrs).await {
            Ok(tcp) => tcp,
            Err(e) => {
                return Outcome::Retry {
                    error: format!("cannot connect: {e}"),
                    retry_after: None,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let timestamp = Utc::now().timestamp();
        let request = match build_request(d, url, &self.secret, timestamp) {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(e),
        };
        let sent = if url.scheme() == "https" {
            let name = match tls_name(url) {
                Ok(n) => n,
                Err(e) => return Outcome::Refused(e),
            };
            match tokio_rustls::TlsConnector::from(self.tls())
                .connect(name, tcp)
                .await
            {
                Ok(tls) => send(tls, request).await,
                Err(e) => Err(format!("TLS handshake failed: {e}")),
            }
        } else {
            send(tcp, request).await
        };
        match sent {
            Err(error) => Outcome::Retry {
                error,
                retry_after: None,
            },
            Ok((status, headers, snippet)) => classify(status, &headers, &snippet),
        }
    }
}

/// What a response status means for the delivery.
fn classify(status: StatusCode, headers: &HeaderMap, snippet: &str) -> Outcome {
    let describe = || {
        if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        }
    };
    if status.is_success() {
        return Outcome::Delivered(status);
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        return Outcome::Retry {
            error: describe(),
            retry_after,
        };
    }
    if status.is_redirection() {
        return Outcome::Rejected(format!("{} (redirects are not followed)", describe()));
    }
    Outcome::Rejected(describe())
}

/// The breaker key of a URL: `host:port`.
fn destination(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// Now + `delay`, rounded up to the millisecond (outboxes compare due times in ms; a
/// `Retry-After` must never be cut short).
fn due_in(delay: Duration) -> DateTime<Utc> {
    let now = Utc::now();
    let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::days(365));
    let at = now.checked_add_signed(delay).unwrap_or(now);
    let ms =
        at.timestamp_millis() + i64::from(!at.timestamp_subsec_nanos().is_multiple_of(1_000_000));
    DateTime::from_timestamp_millis(ms).unwrap_or(at)
}

/// Connect to the first checked address that answers.
async fn connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// The TLS server name of `url`'s host (a DNS name or an IP address).
fn tls_name(url: &Url) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let name = match url.host() {
        Some(Host::Domain(d)) => d.trim_end_matches('.').to_string(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("callback_url has no host".into()),
    };
    rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|e| format!("{name:?} is not a valid TLS server name: {e}"))
}

/// The signed POST of `d`'s body to `url` (origin-form target, `Host` from the URL).
fn build_request(
    d: &WebhookDelivery,
    url: &Url,
    secret: &Secret,
    timestamp: i64,
) -> Result<Request<Full<Bytes>>, String> {
    let host = url.host_str().unwrap_or_default();
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let target = &url[Position::BeforePath..Position::AfterQuery];
    let target = if target.is_empty() { "/" } else { target };
    let body = Bytes::from(d.body.clone());
    Request::builder()
        .method(Method::POST)
        .uri(target)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .header("X-Event-Id", d.event_id.as_str())
        .header("X-Signature-Timestamp", timestamp)
        .header("X-Signature", secret.sign(timestamp, &body))
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the webhook request: {e}"))
}

/// Send `request` over `io` (HTTP/1.1, one request per connection); returns the status,
/// the headers and, for a failure status, the start of the body.
async fn send<S>(
    io: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let mut snippet = Vec::new();
    if !parts.status.is_success() {
        while snippet.len() < ERROR_SNIPPET {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        snippet.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
    }
    drop(conn);
    snippet.truncate(ERROR_SNIPPET);
    let snippet = String::from_utf8_lossy(&snippet)
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    Ok((parts.status, parts.headers, snippet.trim().to_string()))
}

/// Aborts the connection task when the attempt is over (or cancelled by its timeout).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn statuses_are_classified() {
        let none = HeaderMap::new();
        for code in [200u16, 201, 202, 204] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(s, &none, ""), Outcome::Delivered(_)),
                "{code}"
            );
        }
        for code in [500u16, 502, 503, 504, 429] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(s, &none, ""), Outcome::Retry { .. }),
                "{code}"
            );
        }
        for code in [400u16, 401, 403, 404, 408, 410, 413, 422, 301, 302] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(s, &none, "x"), Outcome::Rejected(_)),
                "{code}"
            );
        }
        match classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "7")]),
            "slow down",
        ) {
            Outcome::Retry { error, retry_after } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert!(
                    error.contains("429") && error.contains("slow down"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_is_signed_and_targets_the_url() {
        let url = parse_callback_url("http://127.0.0.1:8080/hooks/in?x=1#frag").unwrap();
        let d = WebhookDelivery {
            event_id: "evt_1_completed".into(),
            job_id: classifier_core::job::JobId::new(),
            url: url.to_string(),
            body: "{\"event\":\"job.completed\"}".into(),
            attempts: 0,
            next_attempt_at: Utc::now(),
            created_at: Utc::now(),
            last_error: None,
        };
        let secret = Secret::new("s");
        let req = build_request(&d, &url, &secret, 1_700_000_000).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/hooks/in?x=1");
        let h = req.headers();
        assert_eq!(h["host"], "127.0.0.1:8080");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-event-id"], "evt_1_completed");
        assert_eq!(h["x-signature-timestamp"], "1700000000");
        assert_eq!(
            h["x-signature"].to_str().unwrap(),
            secret.sign(1_700_000_000, d.body.as_bytes())
        );
        assert!(h["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("classifier-webhooks/"));
        let url = parse_callback_url("https://example.com").unwrap();
        let req = build_request(&d, &url, &secret, 1).unwrap();
        assert_eq!(req.uri(), "/");
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(destination(&url), "example.com:443");
    }

    #[test]
    fn due_times_round_up_to_the_millisecond() {
        let before = Utc::now();
        let due = due_in(Duration::from_millis(1500));
        assert!(due >= before + chrono::Duration::milliseconds(1500));
        assert_eq!(due.timestamp_subsec_nanos() % 1_000_000, 0);
    }

    #[test]
    fn tls_names() {
        let url = parse_callback_url("https://hooks.example.com./x").unwrap();
        assert!(tls_name(&url).is_ok());
        let url = parse_callback_url("https://[2606:4700::1111]/").unwrap();
        assert!(matches!(
            tls_name(&url),
            Ok(rustls::pki_types::ServerName::IpAddress(_))
        ));
    }
}
