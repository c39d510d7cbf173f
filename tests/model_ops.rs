//! Model management, admin, feedback and the result cache, end to end over HTTP: a real
//! server on 127.0.0.1:0, the real models, and both backends (in-memory and a real Redis at
//! `REDIS_URL`, default `redis://127.0.0.1:6379`, each test on its own key prefix; the Redis
//! tests fail, never skip, when it is unreachable).

mod http_support;
mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use classifier_core::backend::{Backend, QueueConfig, Ttls};
use classifier_http::HttpConfig;
use http_support::*;
use serde_json::{json, Value};

const USER: &str = "user-key-1";
const OTHER: &str = "user-key-2";
const ADMIN: &str = "admin-key-1";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// The two backends every backend-dependent test runs on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Memory,
    Redis,
}

async fn backend(kind: Kind) -> Arc<dyn Backend> {
    match kind {
        Kind::Memory => {
            classifier_queue::InMemoryBackend::new(QueueConfig::default(), Ttls::default())
        }
        Kind::Redis => {
            let prefix = format!("test-modelops-{}", uuid_like());
            classifier_queue::RedisBackend::connect(
                &redis_url(),
                &prefix,
                QueueConfig::default(),
                Ttls::default(),
            )
            .await
            .expect("Redis must answer at REDIS_URL")
        }
    }
}

fn uuid_like() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
}

fn with_keys() -> HttpConfig {
    HttpConfig {
        api_keys: vec![USER.into(), OTHER.into()],
        admin_api_keys: vec![ADMIN.into()],
        ..Options::default().http
    }
}

async fn submit_as(server: &TestServer, key: &str, photo: &str) -> Value {
    let resp = client()
        .post(server.url("/api/v1/classify"))
        .header("X-API-Key", key)
        .multipart(form_with_file(sample(photo), photo))
        .send()
        .await
        .expect("submit");
    let (status, _, body) = json(resp).await;
    assert_eq!(status, 202, "{body}");
    body
}

async fn wait_done(server: &TestServer, id: &str) -> Value {
    for _ in 0..3000 {
        let record = server
            .service
            .status(id.parse().expect("job id"))
            .await
            .expect("status");
        if record.status.is_terminal() {
            return json!(record.status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish");
}

async fn post_feedback(server: &TestServer, key: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(server.url("/api/v1/feedback"))
        .header("X-API-Key", key)
        .json(&body)
        .send()
        .await
        .expect("feedback");
    let (status, _, body) = json(resp).await;
    (status, body)
}

async fn feedback_roundtrip(kind: Kind) {
    let server = start(Options {
        http: with_keys(),
        backend: Some(backend(kind).await),
        ..Options::default()
    })
    .await;
    let id = submit_as(&server, USER, "chelsea.png").await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait_done(&server, &id).await, "completed");

    // By name (case-insensitive), then by id: one entry per job, the second replaces it.
    let (status, body) = post_feedback(
        &server,
        USER,
        json!({"job_id": id, "correct_label": "Tabby"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["stored"], true);
    assert_eq!(body["feedback_count"], 1);
    let (status, body) =
        post_feedback(&server, USER, json!({"job_id": id, "correct_label": 282})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["feedback_count"], 1, "same job: replaced, not added");

    // Refusals: unknown label, ambiguous name, id out of range, someone else's job, unknown
    // job, malformed id, not JSON.
    for (label, code) in [
        (json!("not a class"), 422),
        (json!("crane"), 422),
        (json!(1000), 422),
        (json!(""), 422),
    ] {
        let (status, body) =
            post_feedback(&server, USER, json!({"job_id": id, "correct_label": label})).await;
        assert_eq!(status, code, "{label}: {body}");
        assert_error(&body, "VALIDATION_ERROR", "/api/v1/feedback");
    }
    let (status, body) =
        post_feedback(&server, OTHER, json!({"job_id": id, "correct_label": 281})).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = post_feedback(
        &server,
        USER,
        json!({"job_id": "6f1c1c2e-0000-4000-8000-000000000000", "correct_label": 281}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post_feedback(
        &server,
        USER,
        json!({"job_id": "nope", "correct_label": 281}),
    )
    .await;
    assert_eq!(status, 404);
    let resp = client()
        .post(server.url("/api/v1/feedback"))
        .header("X-API-Key", USER)
        .body("job_id=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let resp = client()
        .post(server.url("/api/v1/feedback"))
        .header("X-API-Key", USER)
        .header("Content-Type", "application/json")
        .body(vec![b' '; 4097])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    // A second job, then the count and the admin export.
    let second = submit_as(&server, USER, "dog.jpg").await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait_done(&server, &second).await, "completed");
    let (status, body) = post_feedback(
        &server,
        USER,
        json!({"job_id": second, "correct_label": "207"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["feedback_count"], 2);
    let (status, _, body) = json(
        client()
            .get(server.url("/api/v1/feedback/count"))
            .header("X-API-Key", OTHER)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["feedback_count"].as_u64()), (200, Some(2)));

    let export = |key: &'static str| {
        client()
            .get(server.url("/api/v1/admin/feedback/export"))
            .header("X-API-Key", key)
            .send()
    };
    assert_eq!(export(USER).await.unwrap().status().as_u16(), 403);
    let resp = export(ADMIN).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["job_id"], id.as_str(), "oldest first");
    assert_eq!(lines[0]["correct"]["class_id"], 282);
    assert_eq!(lines[0]["correct"]["class_name"], "tiger cat");
    assert_eq!(lines[0]["predicted"]["class_name"], "Egyptian cat");
    assert_eq!(lines[1]["correct"]["class_id"], 207);
    let sha = classifier_core::model::sha256_hex(&sample("chelsea.png"));
    assert_eq!(lines[0]["image_sha256"], sha.as_str());
    for line in &lines {
        for key in [
            "job_id",
            "predicted",
            "correct",
            "model_version",
            "image_sha256",
            "timestamp",
        ] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_memory() {
    feedback_roundtrip(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_redis() {
    feedback_roundtrip(Kind::Redis).await;
}

/// Feedback on a job that is not completed is 422 (an API-only server never runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_on_a_pending_job_is_refused() {
    let server = start(Options {
        http: with_keys(),
        workers: 0,
        ..Options::default()
    })
    .await;
    let id = submit_as(&server, USER, "chelsea.png").await["job_id"].clone();
    let (status, body) =
        post_feedback(&server, USER, json!({"job_id": id, "correct_label": 281})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("pending"),
        "{body}"
    );
    server.stop().await;
}

async fn admin_views(kind: Kind) {
    let server = start(Options {
        http: with_keys(),
        backend: Some(backend(kind).await),
        ..Options::default()
    })
    .await;
    let id = submit_as(&server, USER, "chelsea.png").await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_done(&server, &id).await;
    let get = |path: &'static str, key: Option<&'static str>| {
        let mut r = client().get(server.url(path));
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        r.send()
    };
    for path in ["/api/v1/admin/queue", "/api/v1/admin/dead-letters"] {
        assert_eq!(get(path, None).await.unwrap().status().as_u16(), 401);
        assert_eq!(get(path, Some(USER)).await.unwrap().status().as_u16(), 403);
    }
    // The heartbeat is sent at start; allow it a moment on a slow machine.
    let mut queue = Value::Null;
    for _ in 0..100 {
        let (status, _, body) = json(get("/api/v1/admin/queue", Some(ADMIN)).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        queue = body;
        if queue["workers_seen"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queue["workers_seen"].as_u64() >= Some(1), "{queue}");
    for key in ["ready", "in_flight", "dead", "webhooks", "workers"] {
        assert!(queue.get(key).is_some(), "{key} missing: {queue}");
    }
    assert_eq!(queue["webhooks"]["pending"], 0, "{queue}");
    // Each worker says which models its process serves (how an operator sees a reload land).
    let workers = queue["workers"].as_array().cloned().unwrap_or_default();
    assert!(!workers.is_empty(), "{queue}");
    for worker in &workers {
        assert_eq!(worker["default_model"], "shufflenet-v2-f32", "{queue}");
        let loaded = worker["models_loaded"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(loaded.iter().any(|v| v == "shufflenet-v2-f32"), "{queue}");
        assert!(worker["in_flight"].is_u64(), "{queue}");
    }
    let (status, _, dead) = json(
        get("/api/v1/admin/dead-letters", Some(ADMIN))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(dead["count"], 0, "{dead}");
    assert_eq!(dead["webhooks"]["count"], 0, "{dead}");
    // Retrying something that is not dead-lettered is 404, for a job and for an event id.
    for id in [
        id.as_str(),
        "evt_00000000000000000000000000000000_completed",
    ] {
        let resp = client()
            .post(server.url(&format!("/api/v1/admin/dead-letters/{id}/retry")))
            .header("X-API-Key", ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{id}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_views_memory() {
    admin_views(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_views_redis() {
    admin_views(Kind::Redis).await;
}

fn cache_hits(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("classifier_result_cache_hits_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no cache counter in metrics:\n{metrics}"))
}

async fn metrics_text(server: &TestServer) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn result_cache(kind: Kind) {
    let server = start(Options {
        backend: Some(backend(kind).await),
        result_cache: Some(Duration::from_secs(60)),
        ..Options::default()
    })
    .await;
    let c = client();
    let first = submit(&server, &c, "chelsea.png").await;
    assert_eq!(first["status"], "pending");
    let first_id = first["job_id"].as_str().unwrap();
    wait_terminal(&server, &c, first_id).await;
    assert_eq!(cache_hits(&metrics_text(&server).await), 0.0);

    // The same bytes again: completed at once, same predictions, counted.
    let second = submit(&server, &c, "chelsea.png").await;
    assert_eq!(second["status"], "completed", "{second}");
    let second_id = second["job_id"].as_str().unwrap();
    assert_ne!(first_id, second_id);
    let result = |id: String| {
        let c = c.clone();
        let url = server.url(&format!("/api/v1/result/{id}"));
        async move { json(c.get(url).send().await.unwrap()).await.2 }
    };
    let (a, b) = (
        result(first_id.to_string()).await,
        result(second_id.to_string()).await,
    );
    assert_eq!(a["predictions"], b["predictions"]);
    assert_eq!(b["job_id"], second_id);
    assert_eq!(b["image_metadata"], a["image_metadata"]);
    let status = json(
        c.get(server.url(&format!("/api/v1/status/{second_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await
    .2;
    assert_eq!(
        (status["status"].as_str(), status["progress"].as_u64()),
        (Some("completed"), Some(100))
    );
    // Predict uses the cache too.
    let resp = c
        .post(server.url("/api/v1/predict"))
        .multipart(form_with_file(sample("chelsea.png"), "chelsea.png"))
        .send()
        .await
        .unwrap();
    let (status, _, predicted) = json(resp).await;
    assert_eq!(status, 200);
    assert_eq!(predicted["predictions"], a["predictions"]);
    assert_eq!(cache_hits(&metrics_text(&server).await), 2.0);

    // A different model version is a different cache entry.
    let resp = c
        .post(server.url("/api/v1/classify"))
        .multipart(
            form_with_file(sample("chelsea.png"), "chelsea.png")
                .text("model_version", "mobilenetv2-f32"),
        )
        .send()
        .await
        .unwrap();
    let (status, _, other_model) = json(resp).await;
    assert_eq!(status, 202);
    assert_eq!(other_model["status"], "pending", "{other_model}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_cache_memory() {
    result_cache(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_cache_redis() {
    result_cache(Kind::Redis).await;
}

/// With the cache off (the switch), the same image is queued and classified again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_cache_can_be_turned_off() {
    let server = start(Options {
        result_cache: None,
        ..Options::default()
    })
    .await;
    let c = client();
    let first = submit(&server, &c, "chelsea.png").await;
    wait_terminal(&server, &c, first["job_id"].as_str().unwrap()).await;
    let second = submit(&server, &c, "chelsea.png").await;
    assert_eq!(second["status"], "pending", "{second}");
    assert_eq!(cache_hits(&metrics_text(&server).await), 0.0);
    server.stop().await;
}

/// A temporary manifest file: the repository's, with `default` and `latest_weights` set.
struct TempManifest {
    path: PathBuf,
}

impl TempManifest {
    fn new() -> TempManifest {
        let dir = std::env::temp_dir().join(format!("classifier-manifest-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let m = TempManifest {
            path: dir.join("manifest.toml"),
        };
        m.write("shufflenet-v2-f32", "");
        m
    }

    /// Rewrite it with this default and an optional `latest_weights = {...}` line.
    fn write(&self, default: &str, weights: &str) {
        support::write_manifest(&self.path, default, weights);
    }
}

impl Drop for TempManifest {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn reload(server: &TestServer, key: &str) -> (u16, Value) {
    let resp = client()
        .post(server.url("/api/v1/admin/models/reload"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(resp).await;
    (status, body)
}

/// Reload under load: clients submit and predict without pause while the manifest's default
/// flips between two models several times. No request fails, every job completes, each
/// result names one of the two versions, and after the last reload "latest" is the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_loses_nothing() {
    let manifest = TempManifest::new();
    let server = Arc::new(
        start(Options {
            http: with_keys(),
            workers: 2,
            manifest_path: Some(manifest.path.clone()),
            ..Options::default()
        })
        .await,
    );
    assert_eq!(reload(&server, USER).await.0, 403, "admin only");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..4 {
        let (server, stop) = (server.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let photos = ["chelsea.png", "dog.jpg", "coffee.png", "flower.jpg"];
            let mut jobs = Vec::new();
            let mut predicted = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let photo = photos[(n + i) % photos.len()];
                i += 1;
                let form = form_with_file(sample(photo), photo);
                if n % 2 == 0 {
                    let resp = c
                        .post(server.url("/api/v1/classify"))
                        .header("X-API-Key", USER)
                        .multipart(form)
                        .send()
                        .await
                        .expect("submit");
                    let (status, _, body) = json(resp).await;
                    assert_eq!(status, 202, "submit during reload failed: {body}");
                    jobs.push(body["job_id"].as_str().unwrap().to_string());
                } else {
                    let resp = c
                        .post(server.url("/api/v1/predict"))
                        .header("X-API-Key", USER)
                        .multipart(form)
                        .send()
                        .await
                        .expect("predict");
                    let (status, _, body) = json(resp).await;
                    assert_eq!(status, 200, "predict during reload failed: {body}");
                    predicted.push(body["model_version"].as_str().unwrap().to_string());
                }
            }
            (jobs, predicted)
        }));
    }

    let versions = ["mobilenetv2-f32", "shufflenet-v2-f32"];
    let started = Instant::now();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let next = versions[round % 2];
        manifest.write(next, "");
        let (status, body) = reload(&server, ADMIN).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["default"], next, "{body}");
        assert!(
            body["loaded"].as_array().unwrap().iter().any(|v| v == next),
            "{body}"
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut jobs = Vec::new();
    let mut predicted = Vec::new();
    for c in clients {
        let (j, p) = c.await.expect("client task");
        jobs.extend(j);
        predicted.extend(p);
    }
    assert!(
        jobs.len() >= 4 && predicted.len() >= 4,
        "too little load: {} jobs, {} predictions in {:?}",
        jobs.len(),
        predicted.len(),
        started.elapsed()
    );
    let mut used = std::collections::BTreeSet::new();
    for id in &jobs {
        assert_eq!(wait_done(&server, id).await, "completed", "job {id}");
        let result = server
            .service
            .result(id.parse().unwrap())
            .await
            .expect("result");
        used.insert(result.model_version);
    }
    used.extend(predicted);
    assert!(
        used.iter().all(|v| versions.contains(&v.as_str())),
        "{used:?}"
    );
    assert_eq!(
        used.len(),
        2,
        "both versions served during the test: {used:?}"
    );
    let (_, _, models) = json(
        client()
            .get(server.url("/api/v1/models"))
            .header("X-API-Key", USER)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(models["default"], "shufflenet-v2-f32", "{models}");

    // A broken manifest is refused and changes nothing.
    std::fs::write(&manifest.path, "default = \"nope\"\n").unwrap();
    let (status, body) = reload(&server, ADMIN).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        server.service.registry().default_version(),
        "shufflenet-v2-f32"
    );
    // /metrics counts the reloads made and the one refused.
    let metrics = metrics_text(&server).await;
    let count = |name: &str| -> f64 {
        let prefix = format!("classifier_events_total{{name=\"{name}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("model_reload_refused"), 1.0, "{metrics}");
    assert!(count("model_reload") >= 4.0, "{metrics}");
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("server still shared"),
    }
}

/// An A/B split of "latest": both arms are used, the version is in each result, and
/// `/models` shows the weights. Explicit versions are never rerouted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_split_by_weight() {
    let manifest = TempManifest::new();
    manifest.write(
        "shufflenet-v2-f32",
        r#"latest_weights = { "shufflenet-v2-f32" = 1, "mobilenetv2-f32" = 1 }"#,
    );
    let server = start(Options {
        manifest_path: Some(manifest.path.clone()),
        ..Options::default()
    })
    .await;
    let c = client();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..24 {
        let resp = c
            .post(server.url("/api/v1/predict"))
            .multipart(form_with_file(sample("chelsea.png"), "chelsea.png"))
            .send()
            .await
            .unwrap();
        let (status, _, body) = json(resp).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["predictions"][0]["class_name"], "Egyptian cat",
            "{body}"
        );
        *seen
            .entry(body["model_version"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Each arm has probability 1/2: missing one in 24 draws happens with p = 2^-23.
    assert_eq!(seen.len(), 2, "{seen:?}");
    for _ in 0..5 {
        let resp = c
            .post(server.url("/api/v1/predict"))
            .multipart(
                form_with_file(sample("chelsea.png"), "chelsea.png")
                    .text("model_version", "shufflenet-v2-qdq"),
            )
            .send()
            .await
            .unwrap();
        let (status, _, body) = json(resp).await;
        assert_eq!(
            (status, body["model_version"].as_str()),
            (200, Some("shufflenet-v2-qdq"))
        );
    }
    let (_, _, models) = json(c.get(server.url("/api/v1/models")).send().await.unwrap()).await;
    assert_eq!(models["latest_weights"]["mobilenetv2-f32"], 1, "{models}");
    server.stop().await;
}
