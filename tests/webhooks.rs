//! Webhooks end to end: a real server on 127.0.0.1:0 (the real default model, the in-memory
//! backend or Redis) with `WEBHOOK_ALLOW_PRIVATE` on, and a local receiver (a small hyper
//! server on 127.0.0.1:0) that records every request and answers scripted statuses.
//!
//! - `completed_job_is_signed_and_delivered`: one POST with a valid HMAC signature and the
//!   documented `job.completed` body;
//! - `retries_with_growing_backoff_then_delivers`: 3 × 503 then 200 gives exactly 4 attempts
//!   per event under one `X-Event-Id`, with gaps within the backoff ceilings and growing on
//!   average (averaged over several events: the jitter is random);
//! - `permanent_failures_are_dead_lettered`: a receiver that always answers 500 gets
//!   `max_attempts` attempts, then the event is in the backend's dead-letter list; a 410 is
//!   dead-lettered after one attempt;
//! - `ssrf_callback_urls_are_refused`: with private destinations not allowed, metadata,
//!   loopback (decimal, hex, mapped IPv6, `localhost`) and private URLs get 422 at submission,
//!   and a forbidden delivery already in the outbox is dead-lettered without a request;
//! - `breaker_postpones_without_counting_attempts`: an open breaker holds a host back for its
//!   cool-down, and the postponement is not an attempt;
//! - `retry_after_is_honoured`: the next attempt after a 429 comes no earlier than its
//!   `Retry-After`, in seconds or as an HTTP date;
//! - `redis_outbox_survives_a_restart`: the receiver is down while the job completes, the
//!   server is stopped, a new one starts on the same Redis prefix, the receiver comes up, and
//!   the event arrives (needs Redis at `REDIS_URL`, default `redis://127.0.0.1:6379`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use chrono::Utc;
use classifier_core::backend::{Backend, QueueConfig, Ttls, WebhookDelivery};
use classifier_core::image::ValidationConfig;
use classifier_core::job::JobId;
use classifier_core::model::ModelLocator;
use classifier_core::service::Service;
use classifier_http::webhook::WebhookConfig;
use classifier_http::HttpConfig;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SECRET: &str = "test-webhook-secret";
/// Upper bound for anything to happen; only there so a broken run cannot hang.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------------------

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    at_wall: SystemTime,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn event_id(&self) -> &str {
        self.header("x-event-id")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// Decides the answer to a request: (status, extra headers), given the request and how
/// many earlier requests carried the same `X-Event-Id`.
type Answer = (u16, Vec<(String, String)>);
type Script = Arc<dyn Fn(&Received, usize) -> Answer + Send + Sync>;

struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    async fn start(
        script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Receiver::on(listener, script)
    }

    /// Serve on `listener` until dropped.
    fn on(
        listener: TcpListener,
        script: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let script: Script = Arc::new(script);
        let addr = listener.local_addr().expect("addr");
        let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let log = requests.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = &mut stopped => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let log = log.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let script = script.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            let received = Received {
                                at: Instant::now(),
                                at_wall: SystemTime::now(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body: body.unwrap_or_default(),
                            };
                            let (status, headers) = {
                                let mut log = log.lock().unwrap();
                                let earlier = log
                                    .iter()
                                    .filter(|r| r.event_id() == received.event_id())
                                    .count();
                                let answer = script(&received, earlier);
                                log.push(received);
                                answer
                            };
                            let mut resp = Response::builder().status(status);
                            for (k, v) in headers {
                                resp = resp.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                resp.body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            requests,
            stop: Some(stop),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn all(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    fn of(&self, event_id: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| r.event_id() == event_id)
            .collect()
    }

    /// Wait until `pred` holds for the recorded requests.
    async fn wait(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {what}; received {} requests: {:?}",
                all.len(),
                all.iter()
                    .map(|r| (r.event_id().to_string(), r.path.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn always(status: u16) -> impl Fn(&Received, usize) -> Answer + Send + Sync + 'static {
    move |_, _| (status, Vec::new())
}

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`, computed independently of
/// the server's code.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn assert_signed(r: &Received) {
    let ts = r.header("x-signature-timestamp");
    let ts_num: i64 = ts.parse().expect("X-Signature-Timestamp is Unix seconds");
    assert!(
        (Utc::now().timestamp() - ts_num).abs() < 120,
        "timestamp {ts} is not recent"
    );
    assert_eq!(
        r.header("x-signature"),
        expected_signature(SECRET, ts, &r.body),
        "bad signature on {r:?}"
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert!(
        r.header("user-agent").starts_with("classifier-webhooks/"),
        "{r:?}"
    );
    assert!(!r.event_id().is_empty());
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// Webhook settings for tests: private destinations allowed, small delays.
fn webhooks() -> WebhookConfig {
    WebhookConfig {
        secret: Some(SECRET.into()),
        allow_private: true,
        max_attempts: 5,
        timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_secs(5),
        breaker_threshold: 0,
        breaker_cooldown: Duration::from_secs(1),
        poll_interval: Duration::from_millis(20),
        batch: 16,
    }
}

struct TestServer {
    base: String,
    service: Service,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    async fn start(backend: Arc<dyn Backend>, webhook: WebhookConfig, workers: usize) -> Self {
        let service = Service::builder()
            .backend(backend)
            .workers(workers)
            .validation(ValidationConfig::default())
            .build()
            .await
            .expect("service builds with the default model");
        let http = HttpConfig {
            rate_limit: classifier_http::RateLimit {
                per_minute: 0,
                burst: 10,
            },
            webhook,
            ..HttpConfig::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = service.clone();
        let task = tokio::spawn(async move {
            classifier_http::serve(svc, http, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        TestServer {
            base: format!("http://{addr}"),
            service,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn in_memory(webhook: WebhookConfig) -> Self {
        let backend: Arc<dyn Backend> =
            classifier_queue::InMemoryBackend::new(QueueConfig::default(), Ttls::default());
        TestServer::start(backend, webhook, 1).await
    }

    fn backend(&self) -> &Arc<dyn Backend> {
        self.service.backend()
    }

    /// Graceful stop, waiting for the server task.
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }

    /// POST /classify with `photo` and `callback_url`; returns (status, body).
    async fn submit(&self, photo: &str, callback_url: &str) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "file",
                reqwest::multipart::Part::bytes(sample(photo)).file_name(photo.to_string()),
            )
            .text("callback_url", callback_url.to_string());
        let resp = client()
            .post(format!("{}/api/v1/classify", self.base))
            .multipart(form)
            .send()
            .await
            .expect("submit");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON body");
        (status, body)
    }

    /// Submit and expect 202; returns the job id.
    async fn submit_ok(&self, photo: &str, callback_url: &str) -> String {
        let (status, body) = self.submit(photo, callback_url).await;
        assert_eq!(status, 202, "{body}");
        body["job_id"].as_str().expect("job_id").to_string()
    }

    /// Wait until the outbox holds nothing and the dead-letter list holds `dead` events.
    async fn wait_outbox(&self, dead: usize) -> Vec<WebhookDelivery> {
        let start = Instant::now();
        loop {
            let pending = self.backend().pending_webhooks().await.expect("pending");
            let letters = self.backend().webhook_dead_letters().await.expect("dead");
            if pending == 0 && letters.len() == dead {
                return letters;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "outbox: {pending} pending, dead letters {letters:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

fn sample(name: &str) -> Vec<u8> {
    let path = ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .expect("../shared/models is required")
        .with_file_name("samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A delivery put straight into the outbox (the dispatcher does not care where events come
/// from; the job-to-event path is covered by the tests that submit jobs).
fn synthetic(event_id: &str, url: &str) -> WebhookDelivery {
    let now = Utc::now();
    let job_id = JobId::new();
    WebhookDelivery {
        event_id: event_id.to_string(),
        job_id,
        url: url.to_string(),
        body: serde_json::json!({"event": "job.completed", "event_id": event_id, "job_id": job_id})
            .to_string(),
        attempts: 0,
        next_attempt_at: now,
        created_at: now,
        last_error: None,
    }
}

/// The Redis URL (`REDIS_URL`, or the local server) and a key prefix of this test's own.
fn redis_target(name: &str) -> (String, String) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (url, format!("{name}{}x{millis}", std::process::id()))
}

async fn redis_backend(url: &str, prefix: &str) -> Arc<dyn Backend> {
    classifier_queue::RedisBackend::connect(url, prefix, QueueConfig::default(), Ttls::default())
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} is required: {e}"))
}

fn gaps(attempts: &[Received]) -> Vec<Duration> {
    attempts.windows(2).map(|w| w[1].at - w[0].at).collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_job_is_signed_and_delivered() {
    let receiver = Receiver::start(always(200)).await;
    let server = TestServer::in_memory(webhooks()).await;
    let id = server
        .submit_ok("chelsea.png", &receiver.url("/hooks/classifier?src=test"))
        .await;

    receiver.wait("the webhook", |all| !all.is_empty()).await;
    server.wait_outbox(0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = receiver.all();
    assert_eq!(all.len(), 1, "exactly one POST: {all:?}");
    let r = &all[0];
    assert_eq!(r.path, "/hooks/classifier?src=test");
    assert_signed(r);
    let body = r.json();
    assert_eq!(body["event"], "job.completed", "{body}");
    assert_eq!(body["job_id"], id.as_str(), "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["event_id"], r.event_id(), "{body}");
    assert!(body["timestamp"].is_string(), "{body}");
    let predictions = body["result"]["predictions"]
        .as_array()
        .expect("result.predictions");
    assert!(!predictions.is_empty(), "{body}");
    assert_eq!(predictions[0]["class_name"], "Egyptian cat", "{body}");
    assert_eq!(server.service.metrics().webhook_attempts("delivered"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finished_in_this_process_is_sent_without_waiting_for_the_poll() {
    // The dispatcher polls once at start, then would sleep for a minute, longer than the
    // receiver's deadline: only the backend's signal can get the webhooks out, for a job
    // finished by a worker in the same process, on either backend.
    let receiver = Receiver::start(always(200)).await;
    let config = WebhookConfig {
        poll_interval: Duration::from_secs(60),
        ..webhooks()
    };
    let (redis_url, prefix) = redis_target("webhooksignal");
    let redis = redis_backend(&redis_url, &prefix).await;
    for server in [
        TestServer::in_memory(config.clone()).await,
        TestServer::start(redis, config.clone(), 1).await,
    ] {
        assert!(server.backend().webhook_signal().is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        for photo in ["chelsea.png", "coffee.png"] {
            let id = server.submit_ok(photo, &receiver.url("/hooks/now")).await;
            let all = receiver
                .wait("the webhook", |all| {
                    all.iter().any(|r| r.json()["job_id"] == id.as_str())
                })
                .await;
            assert!(all.iter().all(|r| r.path == "/hooks/now"), "{all:?}");
        }
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_growing_backoff_then_delivers() {
    // Every event fails 3 times with 503, then succeeds.
    let receiver =
        Receiver::start(|_, earlier| (if earlier < 3 { 503 } else { 200 }, Vec::new())).await;
    let config = WebhookConfig {
        retry_base: Duration::from_millis(100),
        ..webhooks()
    };
    let ceilings = [100u64, 200, 400].map(Duration::from_millis);
    let server = TestServer::in_memory(config).await;
    let id = server.submit_ok("coffee.png", &receiver.url("/hook")).await;
    // More events to the same receiver, for the averages.
    const SYNTHETIC: usize = 11;
    for n in 0..SYNTHETIC {
        let d = synthetic(&format!("evt_retry_{n}"), &receiver.url("/hook"));
        assert!(server.backend().enqueue_webhook(&d).await.unwrap());
    }
    let all = receiver
        .wait("4 attempts of every event", |all| {
            let mut by_event: BTreeMap<&str, usize> = BTreeMap::new();
            for r in all {
                *by_event.entry(r.event_id()).or_default() += 1;
            }
            by_event.len() == SYNTHETIC + 1 && by_event.values().all(|&n| n >= 4)
        })
        .await;
    server.wait_outbox(0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.all().len(), all.len(), "no attempt after success");

    let job_event = all
        .iter()
        .find(|r| r.json()["job_id"] == id.as_str())
        .expect("the job's event")
        .event_id()
        .to_string();
    let mut sums = [0f64; 3];
    let mut events = 0;
    let ids: Vec<String> = all.iter().map(|r| r.event_id().to_string()).collect();
    let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
    for event in &ids {
        let attempts = receiver.of(event);
        assert_eq!(attempts.len(), 4, "exactly 4 attempts for {event}");
        let first_body = &attempts[0].body;
        for r in &attempts {
            assert_signed(r);
            assert_eq!(r.event_id(), event, "same X-Event-Id on every attempt");
            assert_eq!(&r.body, first_body, "same body on every attempt");
        }
        for (i, gap) in gaps(&attempts).into_iter().enumerate() {
            // Within the full-jitter ceiling (plus polling and scheduling slack).
            assert!(
                gap <= ceilings[i] + Duration::from_millis(1500),
                "{event}: gap {i} = {gap:?}"
            );
            sums[i] += gap.as_secs_f64();
        }
        events += 1;
    }
    assert!(ids.contains(&job_event));
    let means = sums.map(|s| s / events as f64);
    eprintln!("mean gaps over {events} events: {means:?} s");
    assert!(
        means[2] >= means[0] && means[1] + means[2] >= 2.0 * means[0],
        "backoff does not grow on average: {means:?}"
    );
    assert_eq!(
        server.service.metrics().webhook_attempts("retry"),
        3 * events as u64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_are_dead_lettered() {
    let receiver =
        Receiver::start(|r, _| (if r.path == "/gone" { 410 } else { 500 }, Vec::new())).await;
    let config = WebhookConfig {
        max_attempts: 3,
        retry_base: Duration::from_millis(20),
        ..webhooks()
    };
    let server = TestServer::in_memory(config).await;
    let failing = server.submit_ok("dog.jpg", &receiver.url("/broken")).await;
    let gone = server.submit_ok("eagle.jpg", &receiver.url("/gone")).await;

    let letters = server.wait_outbox(2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let by_job = |id: &str| {
        letters
            .iter()
            .find(|d| d.job_id.to_string() == id)
            .unwrap_or_else(|| panic!("job {id} not dead-lettered: {letters:?}"))
            .clone()
    };
    let dead = by_job(&failing);
    assert_eq!(dead.attempts, 3, "{dead:?}");
    assert!(
        dead.last_error.as_deref().unwrap_or("").contains("500"),
        "{dead:?}"
    );
    assert_eq!(receiver.of(&dead.event_id).len(), 3);
    let body: Value = serde_json::from_str(&dead.body).unwrap();
    assert_eq!(body["event"], "job.completed");

    let dead = by_job(&gone);
    assert_eq!(dead.attempts, 1, "4xx is permanent: {dead:?}");
    assert!(
        dead.last_error.as_deref().unwrap_or("").contains("410"),
        "{dead:?}"
    );
    assert_eq!(receiver.of(&dead.event_id).len(), 1);
    assert_eq!(server.service.metrics().webhook_attempts("dead"), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_callback_urls_are_refused() {
    let receiver = Receiver::start(always(200)).await;
    let config = WebhookConfig {
        allow_private: false,
        ..webhooks()
    };
    let server = TestServer::in_memory(config).await;
    let own = receiver.url("/hook");
    for (url, reason) in [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://2130706433/", "loopback"),
        ("http://0x7f.0.0.1:8080/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://localhost:9000/hook", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://255.255.255.255/", "broadcast"),
        ("file:///etc/passwd", "http or https"),
        (own.as_str(), "loopback"),
    ] {
        let (status, body) = server.submit("chelsea.png", url).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"], "VALIDATION_ERROR", "{url}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(reason), "{url}: {detail}");
    }

    // The check runs again at delivery: an event for a forbidden destination that is in
    // the outbox anyway is dead-lettered without a request.
    let d = synthetic("evt_forbidden", &receiver.url("/hook"));
    server.backend().enqueue_webhook(&d).await.unwrap();
    let letters = server.wait_outbox(1).await;
    assert!(
        letters[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("loopback"),
        "{letters:?}"
    );
    assert!(receiver.all().is_empty(), "no request may be sent");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_postpones_without_counting_attempts() {
    // The host fails twice (opening the breaker), then recovers.
    let receiver =
        Receiver::start(|_, earlier| (if earlier < 2 { 503 } else { 200 }, Vec::new())).await;
    let cooldown = Duration::from_millis(1500);
    let config = WebhookConfig {
        max_attempts: 3,
        retry_base: Duration::from_millis(10),
        breaker_threshold: 2,
        breaker_cooldown: cooldown,
        ..webhooks()
    };
    let server = TestServer::in_memory(config).await;
    let d = synthetic("evt_breaker", &receiver.url("/hook"));
    server.backend().enqueue_webhook(&d).await.unwrap();
    let all = receiver.wait("3 attempts", |all| all.len() >= 3).await;
    server.wait_outbox(0).await;
    let g = gaps(&all);
    assert!(g[0] < cooldown, "{g:?}");
    assert!(
        g[1] >= cooldown,
        "the open breaker held the host back: {g:?}"
    );
    // Postponed at least once, yet delivered at the 3rd attempt with max_attempts = 3:
    // postponements are not attempts.
    let metrics = server.service.metrics();
    assert!(metrics.webhook_attempts("breaker_open") >= 1);
    assert_eq!(metrics.webhook_attempts("delivered"), 1);
    assert_eq!(metrics.webhook_attempts("dead"), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    // First answer 429 with Retry-After (seconds for /seconds, an HTTP date 2 s ahead for
    // /date), then 200. The answered date is remembered to check against.
    let dates: Arc<Mutex<Vec<SystemTime>>> = Arc::default();
    let remembered = dates.clone();
    let receiver = Receiver::start(move |r, earlier| {
        if earlier > 0 {
            return (200, Vec::new());
        }
        let value = if r.path == "/date" {
            let at = SystemTime::now() + Duration::from_secs(2);
            let text = httpdate::fmt_http_date(at);
            remembered
                .lock()
                .unwrap()
                .push(httpdate::parse_http_date(&text).unwrap());
            text
        } else {
            "1".to_string()
        };
        (429, vec![("retry-after".to_string(), value)])
    })
    .await;
    let config = WebhookConfig {
        retry_base: Duration::from_millis(10),
        ..webhooks()
    };
    let server = TestServer::in_memory(config).await;
    let id = server
        .submit_ok("flower.jpg", &receiver.url("/seconds"))
        .await;
    let d = synthetic("evt_date", &receiver.url("/date"));
    server.backend().enqueue_webhook(&d).await.unwrap();
    receiver
        .wait("two attempts of each event", |all| all.len() >= 4)
        .await;
    server.wait_outbox(0).await;

    let seconds: Vec<Received> = receiver
        .all()
        .into_iter()
        .filter(|r| r.path == "/seconds")
        .collect();
    assert_eq!(seconds.len(), 2);
    assert_eq!(seconds[0].json()["job_id"], id.as_str());
    let gap = seconds[1].at - seconds[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "Retry-After: 1 cut short: {gap:?}"
    );

    let date = receiver.of("evt_date");
    assert_eq!(date.len(), 2);
    let not_before = dates.lock().unwrap()[0];
    assert!(
        date[1].at_wall >= not_before,
        "Retry-After date cut short by {:?}",
        not_before
            .duration_since(date[1].at_wall)
            .unwrap_or_default()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outbox_survives_a_restart() {
    let (redis_url, prefix) = redis_target("webhooktest");
    // A port nobody listens on yet: deliveries get "connection refused".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let callback = format!("http://127.0.0.1:{port}/hook");
    let config = WebhookConfig {
        max_attempts: 1000,
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(300),
        ..webhooks()
    };

    let first =
        TestServer::start(redis_backend(&redis_url, &prefix).await, config.clone(), 1).await;
    let id = first.submit_ok("grace_hopper.jpg", &callback).await;
    // The job completes and its delivery fails at least once while the receiver is down.
    let start = Instant::now();
    while first.service.metrics().webhook_attempts("retry") == 0 {
        assert!(start.elapsed() < DEADLINE, "no failed attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.stop().await;

    // A new server process on the same prefix (API only), then the receiver comes up.
    let second = TestServer::start(redis_backend(&redis_url, &prefix).await, config, 0).await;
    assert_eq!(second.backend().pending_webhooks().await.unwrap(), 1);
    let listener = {
        let start = Instant::now();
        loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(start.elapsed() < DEADLINE, "cannot bind {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let receiver = Receiver::on(listener, always(200));
    let all = receiver.wait("the webhook", |all| !all.is_empty()).await;
    second.wait_outbox(0).await;
    let r = &all[0];
    assert_signed(r);
    let body = r.json();
    assert_eq!(body["job_id"], id.as_str(), "{body}");
    assert_eq!(body["event"], "job.completed", "{body}");
    assert_eq!(second.service.metrics().webhook_attempts("delivered"), 1);
    second.stop().await;
}
