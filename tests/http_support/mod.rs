//! Shared harness of the HTTP tests: a real server on 127.0.0.1:0 over a real Service with
//! the in-memory backend and the real default model; clients are reqwest and raw TCP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_core::image::ValidationConfig;
use classifier_core::model::ModelLocator;
use classifier_core::service::Service;
use classifier_http::HttpConfig;
use serde_json::Value;
use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub service: Service,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub http: HttpConfig,
    pub workers: usize,
    pub max_queue_depth: usize,
    /// The backend (default: a fresh in-memory one with `max_queue_depth`).
    pub backend: Option<Arc<dyn Backend>>,
    /// Manifest file the registry reads and re-reads on reload (default: the usual search).
    pub manifest_path: Option<PathBuf>,
    /// Result cache TTL (default off, so that tests submitting one photo many times
    /// exercise the queue; the cache has its own tests).
    pub result_cache: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            http: HttpConfig {
                rate_limit: classifier_http::RateLimit {
                    per_minute: 0,
                    burst: 10,
                },
                ..HttpConfig::default()
            },
            workers: 1,
            max_queue_depth: 10_000,
            backend: None,
            manifest_path: None,
            result_cache: None,
        }
    }
}

pub async fn start(options: Options) -> TestServer {
    let queue = QueueConfig {
        max_depth: options.max_queue_depth,
        ..QueueConfig::default()
    };
    let backend: Arc<dyn Backend> = options
        .backend
        .clone()
        .unwrap_or_else(|| classifier_queue::InMemoryBackend::new(queue, Ttls::default()));
    let mut builder = Service::builder()
        .backend(backend)
        .workers(options.workers)
        .result_cache(options.result_cache)
        .validation(ValidationConfig {
            max_file_size: options.http.max_file_size,
            ..ValidationConfig::default()
        });
    if let Some(path) = &options.manifest_path {
        builder = builder.manifest_path(path);
    }
    let service = builder
        .build()
        .await
        .expect("service builds with the default model");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = service.clone();
    let task = tokio::spawn(async move {
        classifier_http::serve(svc, options.http, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    TestServer {
        addr,
        base: format!("http://{addr}"),
        service,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Graceful stop, waiting for the server task.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }
}

pub fn samples() -> PathBuf {
    ModelLocator::from_env()
        .find("imagenet_classes.txt")
        .expect("../shared/models is required")
        .with_file_name("samples")
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(samples().join(name)).expect("sample photo")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub fn file_part(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes).file_name(name.to_string())
}

pub fn form_with_file(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part("file", file_part(bytes, name))
}

pub async fn json(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, value)
}

/// Assert the exact error shape and code; returns the body.
pub fn assert_error(body: &Value, code: &str, path: &str) {
    let obj = body.as_object().expect("error body is an object");
    for key in ["error", "detail", "timestamp", "path", "request_id"] {
        assert!(obj.contains_key(key), "missing {key} in {body}");
    }
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["path"], path, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap_or("")).is_ok(),
        "{body}"
    );
}

pub async fn submit(server: &TestServer, client: &reqwest::Client, photo: &str) -> Value {
    let resp = client
        .post(server.url("/api/v1/classify"))
        .multipart(form_with_file(sample(photo), photo))
        .send()
        .await
        .expect("submit");
    let (status, _, body) = json(resp).await;
    assert_eq!(status, 202, "{body}");
    body
}

/// Poll GET /status until a terminal state; returns every distinct status seen.
pub async fn wait_terminal(server: &TestServer, client: &reqwest::Client, id: &str) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    for _ in 0..3000 {
        let resp = client
            .get(server.url(&format!("/api/v1/status/{id}")))
            .send()
            .await
            .expect("status");
        let (status, _, doc) = json(resp).await;
        assert_eq!(status, 200, "{doc}");
        if seen.last() != Some(&doc) {
            seen.push(doc.clone());
        }
        if matches!(
            doc["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish: {seen:?}");
}
