//! Every error row of the API table, plus limits: upload sizes (exact limit, +1 byte, a
//! 50 MB body refused early), slow headers, auth and ownership, rate limits, a full queue,
//! the connection cap (open WebSockets included).

mod http_support;

use std::time::Duration;

use http_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn post_form(
    server: &TestServer,
    path: &str,
    form: reqwest::multipart::Form,
) -> (u16, serde_json::Value) {
    let resp = client()
        .post(server.url(path))
        .multipart(form)
        .send()
        .await
        .expect("send");
    let (status, _, body) = json(resp).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_400_415_422_with_the_exact_error_shape() {
    let server = start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let path = "/api/v1/classify";

    let (status, body) = post_form(
        &server,
        path,
        form_with_file(b"hello, I am text\n".to_vec(), "notes.txt"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_error(&body, "INVALID_IMAGE", path);
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["detail", "error", "path", "request_id", "timestamp"]);

    // Not multipart.
    let resp = client()
        .post(server.url(path))
        .json(&serde_json::json!({"file": "x"}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(resp).await;
    assert_eq!(status, 415);
    assert_error(&body, "UNSUPPORTED_MEDIA_TYPE", path);
    let resp = client()
        .post(server.url(path))
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    let photo = || form_with_file(sample("coffee.png"), "coffee.png");
    let cases: Vec<(&str, reqwest::multipart::Form)> = vec![
        ("priority", photo().text("priority", "asap")),
        ("metadata", photo().text("metadata", "{not json")),
        ("metadata", photo().text("metadata", "[1, 2]")),
        (
            "metadata",
            photo().text("metadata", format!(r#"{{"x":"{}"}}"#, "a".repeat(1100))),
        ),
        (
            "callback_url",
            photo().text("callback_url", "ftp://example.com/hook"),
        ),
        ("callback_url", photo().text("callback_url", "http://")),
        (
            "model_version",
            photo().text("model_version", "no-such-model"),
        ),
        (
            "file",
            photo().part("file", file_part(sample("chelsea.png"), "second.png")),
        ),
        (
            "file",
            reqwest::multipart::Form::new().text("priority", "high"),
        ),
        (
            "priority",
            photo().text("priority", "low").text("priority", "high"),
        ),
        // Values are taken exactly as sent (the OpenAPI enum lists them): padding is refused.
        ("priority", photo().text("priority", " high")),
        ("model_version", photo().text("model_version", "latest ")),
        (
            "callback_url",
            photo().text("callback_url", " https://example.com/hook"),
        ),
        ("metadata", photo().text("metadata", " ")),
    ];
    for (field, form) in cases {
        let (status, body) = post_form(&server, path, form).await;
        assert_eq!(status, 422, "{field}: {body}");
        assert_error(&body, "VALIDATION_ERROR", path);
        assert!(
            body["detail"].as_str().unwrap().contains(field),
            "{field}: {body}"
        );
    }
    // The unknown model's 422 lists the available versions.
    let (_, body) = post_form(
        &server,
        path,
        photo().text("model_version", "no-such-model"),
    )
    .await;
    let default = server
        .service
        .models()
        .into_iter()
        .find(|m| m.default)
        .unwrap()
        .version;
    assert!(
        body["detail"].as_str().unwrap().contains(&default),
        "{body}"
    );

    // Empty option fields (as an HTML form sends its empty inputs) are the same as absent ones.
    let empty = ["priority", "model_version", "callback_url", "metadata"]
        .into_iter()
        .fold(photo(), |form, field| form.text(field, ""));
    let (status, body) = post_form(&server, path, empty).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["priority"], "normal", "{body}");
    assert_eq!(body["model_version"], default.as_str(), "{body}");

    // include_metadata is a boolean: true or false, anything else is a 422 (not a silent false).
    let status_path = format!("/api/v1/status/{}", body["job_id"].as_str().unwrap());
    for (query, expected) in [("true", 200), ("false", 200), ("1", 422), ("yes", 422)] {
        let url = server.url(&format!("{status_path}?include_metadata={query}"));
        let (status, _, body) = json(client().get(url).send().await.unwrap()).await;
        assert_eq!(status, expected, "{query}: {body}");
        if expected == 422 {
            assert_error(&body, "VALIDATION_ERROR", &status_path);
        }
    }

    // The same checks on /predict.
    let (status, body) = post_form(
        &server,
        "/api/v1/predict",
        form_with_file(b"GIF89a".to_vec(), "x.gif"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_size_limit_is_accepted_and_one_byte_more_is_413() {
    let photo = sample("coffee.png");
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    options.http.max_file_size = photo.len();
    let server = start(options).await;
    let (status, body) = post_form(
        &server,
        "/api/v1/classify",
        form_with_file(photo.clone(), "coffee.png"),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    let mut bigger = photo.clone();
    bigger.push(0);
    let resp = client()
        .post(server.url("/api/v1/classify"))
        .multipart(form_with_file(bigger.clone(), "coffee.png"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(resp).await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "PAYLOAD_TOO_LARGE", "/api/v1/classify");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&photo.len().to_string()),
        "{body}"
    );
    assert_eq!(headers["connection"], "close");

    // In a batch, the oversized file is that file's error; the others go through.
    let form = reqwest::multipart::Form::new()
        .part("files", file_part(bigger, "big.png"))
        .part("files", file_part(photo, "ok.png"));
    let (status, body) = post_form(&server, "/api/v1/classify/batch", form).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["jobs"][0]["error"]["error"], "PAYLOAD_TOO_LARGE");
    assert!(body["jobs"][1]["job_id"].is_string());
    server.stop().await;
}

/// Send a 50 MB upload over raw TCP while reading the response concurrently. Returns the
/// response head and how many body bytes the client managed to write.
async fn fifty_megabytes(server: &TestServer, chunked: bool) -> (String, usize) {
    const TOTAL: usize = 50 * 1024 * 1024;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let boundary = "XBOUNDARYX";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    );
    let length_header = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {}\r\n", preamble.len() + TOTAL)
    };
    let head = format!(
        "POST /api/v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n{length_header}\r\n"
    );
    let writer = tokio::spawn(async move {
        let mut written = 0usize;
        if wr.write_all(head.as_bytes()).await.is_err() {
            return written;
        }
        let mut first = preamble.into_bytes();
        let chunk = vec![0xFFu8; 64 * 1024];
        while written < TOTAL {
            let mut piece = std::mem::take(&mut first);
            piece.extend_from_slice(&chunk);
            let data = if chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(&piece);
                framed.extend_from_slice(b"\r\n");
                framed
            } else {
                piece
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
            written += chunk.len();
        }
        written
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the server closes the connection (EOF or reset).
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let written = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer stops")
        .unwrap();
    (String::from_utf8_lossy(&response).to_string(), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_megabyte_upload_is_refused_early_and_the_connection_closed() {
    let server = start(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    for chunked in [false, true] {
        let (response, written) =
            tokio::time::timeout(Duration::from_secs(120), fifty_megabytes(&server, chunked))
                .await
                .expect("the server answers and closes");
        assert!(
            response.starts_with("HTTP/1.1 413"),
            "chunked={chunked}: {response}"
        );
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
        assert!(response.contains("PAYLOAD_TOO_LARGE"), "{response}");
        assert!(
            written < 50 * 1024 * 1024,
            "chunked={chunked}: the whole body was sent ({written} bytes)"
        );
    }
    server.stop().await;
}

/// A body that stops flowing gets 408 REQUEST_TIMEOUT after `body_read_timeout`, and one that
/// keeps flowing within it is accepted (both sides of the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_flowing_one_is_accepted() {
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    options.http.body_read_timeout = Duration::from_millis(800);
    let server = start(options).await;
    let photo = sample("chelsea.png");
    let boundary = "XBOUNDARYX";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = format!(
        "POST /api/v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // `pause` between chunks: below the timeout the upload goes through, above it is 408.
    async fn send(addr: std::net::SocketAddr, head: &str, body: &[u8], pause: Duration) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let half = body.len() / 2;
        stream.write_all(&body[..half]).await.unwrap();
        tokio::time::sleep(pause).await;
        // The server may already have answered and closed: a failed write is fine.
        let _ = stream.write_all(&body[half..]).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if String::from_utf8_lossy(&got).contains("\r\n\r\n{")
                            && got.ends_with(b"}")
                        {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        String::from_utf8_lossy(&got).into_owned()
    }
    let slow = send(server.addr, &head, &body, Duration::from_millis(2500)).await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    assert!(slow.contains("REQUEST_TIMEOUT"), "{slow}");
    let fine = send(server.addr, &head, &body, Duration::from_millis(200)).await;
    assert!(fine.starts_with("HTTP/1.1 202"), "{fine}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    options.http.header_read_timeout = Duration::from_secs(1);
    let server = start(options).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close the connection by itself.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stayed open");
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The server still serves others.
    let resp = client()
        .get(server.url("/api/v1/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_admins_and_job_ownership() {
    let mut options = Options {
        workers: 0,
        ..Options::default()
    };
    options.http.api_keys = vec!["alice-key".into(), "bob-key".into()];
    options.http.admin_api_keys = vec!["root-key".into()];
    let server = start(options).await;
    let c = client();
    let photo = || form_with_file(sample("coffee.png"), "coffee.png");

    let (status, _, body) = json(
        c.post(server.url("/api/v1/classify"))
            .multipart(photo())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_error(&body, "UNAUTHORIZED", "/api/v1/classify");
    let resp = c
        .post(server.url("/api/v1/classify"))
        .header("X-API-Key", "mallory")
        .multipart(photo())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = c
        .post(server.url("/api/v1/classify"))
        .header("X-API-Key", "alice-key")
        .multipart(photo())
        .send()
        .await
        .unwrap();
    let (status, _, ticket) = json(resp).await;
    assert_eq!(status, 202, "{ticket}");
    let status_path = format!("/api/v1/status/{}", ticket["job_id"].as_str().unwrap());
    let get = |key: &'static str, auth_header: bool| {
        let req = c.get(server.url(&status_path));
        if auth_header {
            req.bearer_auth(key)
        } else {
            req.header("X-API-Key", key)
        }
    };
    assert_eq!(get("alice-key", false).send().await.unwrap().status(), 200);
    assert_eq!(get("alice-key", true).send().await.unwrap().status(), 200);
    let (status, _, body) = json(get("bob-key", false).send().await.unwrap()).await;
    assert_eq!(status, 404, "bob must not see alice's job");
    assert_error(&body, "JOB_NOT_FOUND", &status_path);
    assert_eq!(get("root-key", true).send().await.unwrap().status(), 404);
    let del = c
        .delete(server.url(&status_path.replace("/status/", "/jobs/")))
        .header("X-API-Key", "bob-key");
    assert_eq!(del.send().await.unwrap().status(), 404);

    for path in ["/api/v1/admin/queue", "/api/v1/admin/dead-letters"] {
        let (status, _, body) = json(c.get(server.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 401, "{path}");
        assert_error(&body, "UNAUTHORIZED", path);
        let (status, _, body) = json(
            c.get(server.url(path))
                .header("X-API-Key", "alice-key")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{path}");
        assert_error(&body, "FORBIDDEN", path);
        let (status, _, body) = json(
            c.get(server.url(path))
                .bearer_auth("root-key")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _, queue) = json(
        c.get(server.url("/api/v1/admin/queue"))
            .bearer_auth("root-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(queue["total_ready"], 1, "{queue}");
    let retry = format!(
        "/api/v1/admin/dead-letters/{}/retry",
        ticket["job_id"].as_str().unwrap()
    );
    let (status, _, _) = json(
        c.post(server.url(&retry))
            .bearer_auth("root-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        c.post(server.url(&retry))
            .bearer_auth("bob-key")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // The document of a server with keys declares them.
    let doc: serde_json::Value = c
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["security"],
        serde_json::json!([{"ApiKey": []}, {"Bearer": []}])
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["ApiKey"]["name"],
        "X-API-Key"
    );

    // Open routes need no key.
    for path in [
        "/",
        "/metrics",
        "/openapi.json",
        "/api/v1/openapi.json",
        "/api/v1/health",
        "/api/v1/health/live",
        "/api/v1/health/ready",
    ] {
        let s = c
            .get(server.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            s == 200 || (path == "/api/v1/health" && s == 503),
            "{path}: {s}"
        );
    }
    assert_eq!(
        c.get(server.url("/api/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_with_headers_and_a_full_queue_503() {
    let mut options = Options {
        workers: 0,
        max_queue_depth: 1,
        ..Options::default()
    };
    options.http.rate_limit = classifier_http::RateLimit {
        per_minute: 60,
        burst: 3,
    };
    let server = start(options).await;
    let c = client();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let resp = c.get(server.url("/api/v1/models")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "3");
        assert!(resp.headers().contains_key("x-ratelimit-reset"));
        remaining.push(
            resp.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        remaining.last().map(String::as_str),
        Some("0"),
        "{remaining:?}"
    );
    let resp = c.get(server.url("/api/v1/models")).send().await.unwrap();
    let (status, headers, body) = json(resp).await;
    assert_eq!(status, 429);
    assert_error(&body, "RATE_LIMITED", "/api/v1/models");
    for h in [
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(headers.contains_key(h), "{h} missing");
    }
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Health probes are not limited.
    for _ in 0..5 {
        assert_eq!(
            c.get(server.url("/api/v1/health/live"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    server.stop().await;

    // A full queue: 503 with Retry-After.
    let server = start(Options {
        workers: 0,
        max_queue_depth: 1,
        ..Options::default()
    })
    .await;
    submit(&server, &c, "coffee.png").await;
    let resp = c
        .post(server.url("/api/v1/classify"))
        .multipart(form_with_file(sample("chelsea.png"), "chelsea.png"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(resp).await;
    assert_eq!(status, 503, "{body}");
    assert_error(&body, "SERVICE_UNAVAILABLE", "/api/v1/classify");
    assert!(headers.contains_key("retry-after"));
    server.stop().await;
}

/// An API-only server with `MAX_CONNECTIONS` = 2.
async fn start_with_two_connection_slots() -> TestServer {
    start(Options {
        workers: 0,
        http: classifier_http::HttpConfig {
            max_connections: 2,
            ..Options::default().http
        },
        ..Options::default()
    })
    .await
}

/// A new connection that sends a liveness request, asserted not to be answered within a
/// second (both slots are taken): it waits in the listen backlog.
async fn a_waiting_request(server: &TestServer) -> TcpStream {
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting
        .write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), waiting.read_exact(&mut head))
            .await
            .is_err(),
        "a connection was served while both slots were taken"
    );
    waiting
}

/// The waiting request of [`a_waiting_request`] is answered now that a slot is free.
async fn is_served(mut waiting: TcpStream) {
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), waiting.read_exact(&mut head))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

/// `MAX_CONNECTIONS`: with both slots held by idle connections, a third is not served; once
/// one of them closes, it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_the_next_connection_until_a_slot_frees() {
    let server = start_with_two_connection_slots().await;
    // Accepted in order, each takes a slot while the server waits for its request.
    let first = TcpStream::connect(server.addr).await.unwrap();
    let _second = TcpStream::connect(server.addr).await.unwrap();
    let waiting = a_waiting_request(&server).await;
    drop(first);
    is_served(waiting).await;
    server.stop().await;
}

/// An open status WebSocket keeps its connection's `MAX_CONNECTIONS` slot after the upgrade
/// (hyper lets go of an upgraded connection): with 2 slots, two sockets open, a third
/// connection is not served until one of the sockets closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_count_against_max_connections() {
    use futures_util::StreamExt;

    let server = start_with_two_connection_slots().await;
    // Submitted through the service, so that no HTTP connection holds a slot.
    let ticket = server
        .service
        .submit(
            sample("chelsea.png").into(),
            classifier_core::job::SubmitOptions::default(),
        )
        .await
        .expect("submit");
    let url = format!("ws://{}/api/v1/status/{}/ws", server.addr, ticket.job_id);
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("two sockets fit in two slots");
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("first status in time");
        assert!(matches!(first, Some(Ok(_))), "{first:?}");
        sockets.push(ws);
    }
    let waiting = a_waiting_request(&server).await;
    let mut closing = sockets.remove(0);
    closing.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), closing.next()).await
    {
    }
    is_served(waiting).await;
    server.stop().await;
}
