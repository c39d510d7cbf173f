//! The HTTP API end to end: a real server on 127.0.0.1:0, the real default model, real
//! photos; happy paths, WebSocket push, batch, predict, cancel, 404/409 rows, documents.

mod http_support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_status_result_happy_path() {
    let server = start(Options::default()).await;
    let client = client();
    let resp = client
        .post(server.url("/api/v1/classify"))
        .multipart(
            form_with_file(sample("chelsea.png"), "chelsea.png")
                .text("priority", "high")
                .text("metadata", r#"{"user":"ann"}"#)
                .text("unknown_field", "ignored"),
        )
        .send()
        .await
        .unwrap();
    let (status, headers, ticket) = json(resp).await;
    assert_eq!(status, 202, "{ticket}");
    let id = ticket["job_id"].as_str().unwrap().to_string();
    assert_eq!(ticket["status"], "pending");
    assert_eq!(ticket["priority"], "high");
    for key in ["created_at", "estimated_completion", "model_version"] {
        assert!(ticket.get(key).is_some(), "{key} missing: {ticket}");
    }
    assert_eq!(headers["location"], format!("/api/v1/status/{id}").as_str());
    assert!(headers.contains_key("x-request-id"));

    let seen = wait_terminal(&server, &client, &id).await;
    let last = seen.last().unwrap();
    assert_eq!(last["status"], "completed", "{seen:?}");
    assert_eq!(last["progress"], 100);
    assert_eq!(last["stage"], "completed");
    assert!(last["error_message"].is_null());
    let mut progress = 0;
    for doc in &seen {
        for key in [
            "job_id",
            "status",
            "progress",
            "stage",
            "created_at",
            "updated_at",
            "error_message",
        ] {
            assert!(doc.get(key).is_some(), "{key} missing in {doc}");
        }
        assert!(doc.get("metadata").is_none());
        let p = doc["progress"].as_u64().unwrap();
        assert!(p >= progress, "progress went backwards: {seen:?}");
        progress = p;
    }

    let (status, _, with_meta) = json(
        client
            .get(server.url(&format!("/api/v1/status/{id}?include_metadata=true")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(with_meta["metadata"]["user"], "ann");

    let (status, _, result) = json(
        client
            .get(server.url(&format!("/api/v1/result/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["job_id"], id.as_str());
    let top = &result["predictions"][0];
    assert!(
        top["class_name"].as_str().unwrap().contains("cat"),
        "{result}"
    );
    assert!(top["class_id"].is_u64() && top["confidence"].is_number());
    assert_eq!(result["image_metadata"]["format"], "png");
    assert_eq!(
        result["image_metadata"]["file_size"].as_u64().unwrap() as usize,
        sample("chelsea.png").len()
    );
    for key in [
        "processing_time",
        "model_version",
        "created_at",
        "completed_at",
    ] {
        assert!(result.get(key).is_some(), "{key} missing: {result}");
    }

    // Deleting a finished job is 409 with its status.
    let (status, _, body) = json(
        client
            .delete(server.url(&format!("/api/v1/jobs/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    assert_error(&body, "CONFLICT", &format!("/api/v1/jobs/{id}"));
    assert_eq!(body["status"], "completed");

    // The request was counted under its route pattern.
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("route=\"/api/v1/classify\""), "{metrics}");
    assert!(metrics.contains("classifier_queue_depth"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pushes_statuses_and_closes_normally() {
    let server = start(Options::default()).await;
    let client = client();
    let ticket = submit(&server, &client, "coffee.png").await;
    let id = ticket["job_id"].as_str().unwrap();
    let url = format!("ws://{}/api/v1/status/{id}/ws", server.addr);
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("ws connect");
    assert_eq!(response.status(), 101);
    let mut docs = Vec::new();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("message in time")
        {
            Some(Ok(Message::Text(t))) => {
                docs.push(serde_json::from_str::<serde_json::Value>(&t).unwrap())
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let last = docs.last().expect("at least one status");
    assert_eq!(last["status"], "completed", "{docs:?}");
    assert_eq!(last["job_id"], id);
    assert!(last.get("error_message").is_some());
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));

    // Connecting after completion: the final status, then the normal close.
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let doc: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(doc["status"], "completed");
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }

    // Unknown job: a plain 404 instead of an upgrade.
    let unknown = format!("ws://{}/api/v1/status/{}/ws", server.addr, uuid_like());
    match tokio_tungstenite::connect_async(unknown.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    server.stop().await;
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reports_per_file_errors_and_predict_is_synchronous() {
    let server = start(Options::default()).await;
    let client = client();
    let form = reqwest::multipart::Form::new()
        .part("files", file_part(sample("chelsea.png"), "chelsea.png"))
        .part("files", file_part(b"just some notes".to_vec(), "notes.txt"))
        .part("files", file_part(sample("coffee.png"), "coffee.png"));
    let (status, _, body) = json(
        client
            .post(server.url("/api/v1/classify/batch"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0]["index"], 0);
    assert_eq!(jobs[0]["status"], "pending");
    assert_eq!(jobs[1]["filename"], "notes.txt");
    assert_eq!(jobs[1]["error"]["error"], "INVALID_IMAGE");
    assert!(jobs[1].get("job_id").is_none());
    assert!(jobs[2]["job_id"].is_string());

    // No file accepted: 400 with the per-file errors.
    let form = reqwest::multipart::Form::new().part("files", file_part(b"nope".to_vec(), "a.txt"));
    let (status, _, body) = json(
        client
            .post(server.url("/api/v1/classify/batch"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "BATCH_REJECTED", "/api/v1/classify/batch");
    assert_eq!(body["jobs"][0]["error"]["error"], "INVALID_IMAGE");

    // More than 10 files: 422.
    let mut form = reqwest::multipart::Form::new();
    for i in 0..11 {
        form = form.part(
            "files",
            file_part(sample("coffee.png"), &format!("{i}.png")),
        );
    }
    let (status, _, body) = json(
        client
            .post(server.url("/api/v1/classify/batch"))
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    let (status, _, body) = json(
        client
            .post(server.url("/api/v1/predict"))
            .multipart(form_with_file(sample("coffee.png"), "coffee.png"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["class_id"], 967, "{body}");
    assert!(body["processing_time"].is_number());
    assert_eq!(body["image_metadata"]["format"], "png");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_cancelled_and_failed_jobs_conflict_on_result() {
    // No workers: jobs stay pending.
    let server = start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let client = client();
    let id = submit(&server, &client, "chelsea.png").await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/v1/result/{id}");
    let (status, _, body) = json(client.get(server.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_error(&body, "JOB_NOT_COMPLETED", &path);
    assert_eq!(body["status"], "pending");
    assert!(body["detail"].as_str().unwrap().contains("pending"));

    let (status, _, body) = json(
        client
            .delete(server.url(&format!("/api/v1/jobs/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"job_id": id, "status": "cancelled"})
    );
    let (status, _, body) = json(client.get(server.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_error(&body, "JOB_CANCELLED", &path);
    assert_eq!(body["status"], "cancelled");

    // A failed job (failed through the backend, as a worker would).
    let id = submit(&server, &client, "coffee.png").await["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let job: classifier_core::job::JobId = id.parse().unwrap();
    let backend = server.service.backend().clone();
    classifier_core::backend::transition(&*backend, job, &classifier_core::job::JobEvent::Start)
        .await
        .unwrap();
    classifier_core::backend::transition(
        &*backend,
        job,
        &classifier_core::job::JobEvent::Fail {
            message: "model exploded".into(),
        },
    )
    .await
    .unwrap();
    let path = format!("/api/v1/result/{id}");
    let (status, _, body) = json(client.get(server.url(&path)).send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_error(&body, "JOB_FAILED", &path);
    assert_eq!(body["status"], "failed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_ids_request_ids_and_documents() {
    let server = start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let client = client();
    for path in [
        "/api/v1/status/not-a-uuid".to_string(),
        format!("/api/v1/status/{}", uuid_like()),
        format!("/api/v1/result/{}", uuid_like()),
        "/api/v1/result/%00%ff".to_string(),
    ] {
        let (status, headers, body) =
            json(client.get(server.url(&path)).send().await.unwrap()).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_error(&body, "JOB_NOT_FOUND", &path);
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
    let (status, _, body) = json(
        client
            .delete(server.url("/api/v1/jobs/zzz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&body, "JOB_NOT_FOUND", "/api/v1/jobs/zzz");

    // X-Request-ID is echoed, on success and on error.
    for path in ["/api/v1/health/live", "/api/v1/status/x", "/nope"] {
        let resp = client
            .get(server.url(path))
            .header("X-Request-ID", "trace-42")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "trace-42", "{path}");
    }

    let (status, _, models) = json(
        client
            .get(server.url("/api/v1/models"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let list = models["models"].as_array().unwrap();
    // Models load lazily: the default is listed (loaded or not) and named at the top.
    let default = list
        .iter()
        .find(|m| m["default"] == true)
        .expect("a default model");
    assert_eq!(models["default"], default["version"], "{models}");
    assert!(default["loaded"].is_boolean());
    assert!(list.iter().all(|m| m["input_width"].is_u64()));

    let (status, _, health) = json(
        client
            .get(server.url("/api/v1/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(status == 200 || status == 503);
    for key in ["status", "timestamp", "version", "uptime"] {
        assert!(health.get(key).is_some(), "{health}");
    }
    for s in ["queue", "workers", "models"] {
        assert!(health["services"][s].is_object(), "{health}");
    }
    let (status, _, _) = json(
        client
            .get(server.url("/api/v1/health/live"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, ready) = json(
        client
            .get(server.url("/api/v1/health/ready"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{ready}");

    let versions: Vec<String> = server
        .service
        .models()
        .into_iter()
        .map(|m| m.version)
        .collect();
    for path in ["/openapi.json", "/api/v1/openapi.json"] {
        let (status, _, doc) = json(client.get(server.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(doc["openapi"], "3.1.0");
        // This server has no keys: its document asks for none.
        assert!(doc.get("security").is_none(), "{}", doc["security"]);
        assert!(doc["components"].get("securitySchemes").is_none());
        // model_version is one of the versions this server serves.
        let form = &doc["paths"]["/api/v1/classify"]["post"]["requestBody"]["content"]
            ["multipart/form-data"]["schema"];
        let allowed = form["properties"]["model_version"]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in versions.iter().map(String::as_str).chain(["latest", ""]) {
            assert!(allowed.iter().any(|a| a == v), "{v} not in {allowed:?}");
        }
        assert_eq!(allowed.len(), versions.len() + 2, "{allowed:?}");
    }
    let page = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/ws"));

    let (status, _, body) = json(
        client
            .post(server.url("/api/v1/status/x"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_error(&body, "METHOD_NOT_ALLOWED", "/api/v1/status/x");
    server.stop().await;
}

/// Submit a photo to an API-only server (the job stays pending), open its status socket and
/// read the first message, which must say `pending`. Returns the job id and the socket.
async fn watch_a_pending_job(
    server: &TestServer,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let ticket = submit(server, &client(), "chelsea.png").await;
    let id = ticket["job_id"].as_str().unwrap().to_string();
    let url = format!("ws://{}/api/v1/status/{id}/ws", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("ws connect");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("first status in time")
        .expect("a message")
        .expect("not an error");
    let doc: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(doc["status"], "pending");
    (id, ws)
}

/// `WS_MAX_MESSAGE_SIZE` over a real socket: a client message of exactly the limit is
/// ignored (the socket stays open), one byte more closes it with 1009 (message too big). An
/// API-only server keeps the job pending, so only the limit can close the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_message_over_the_limit_closes_the_socket_with_1009() {
    const LIMIT: usize = 100;
    let server = start(Options {
        workers: 0,
        http: classifier_http::HttpConfig {
            ws_max_message_size: LIMIT,
            ..Options::default().http
        },
        ..Options::default()
    })
    .await;
    let (_, mut ws) = watch_a_pending_job(&server).await;

    ws.send(Message::text("x".repeat(LIMIT))).await.unwrap();
    // Still open: a ping is answered (the server reads on past the message).
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("pong in time")
    {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"still there?"),
        other => panic!("expected the pong, got {other:?}"),
    }

    ws.send(Message::text("x".repeat(LIMIT + 1))).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("close in time")
    {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a 1009 close frame, got {other:?}"),
    }
    server.stop().await;
}

/// Graceful shutdown with a WebSocket open on a job that cannot finish (an API-only server:
/// no workers): the socket gets a 1001 "going away" close frame, the server stops (a hang
/// fails the test), and the pending job is still in the backend afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_websockets_with_going_away_and_loses_no_job() {
    let server = start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let (id, mut ws) = watch_a_pending_job(&server).await;

    let service = server.service.clone();
    let stopping = tokio::spawn(server.stop());
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the socket is closed during shutdown")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(t))) => panic!("no status change expected, got {t}"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    // Reading on completes the closing handshake (the client echoes the close frame).
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the server stops in time")
        .expect("stop task");
    let job_id: classifier_core::job::JobId = id.parse().expect("job id");
    let record = service
        .backend()
        .get(job_id)
        .await
        .expect("backend")
        .expect("job kept");
    assert_eq!(record.status, classifier_core::job::JobStatus::Pending);
}
