//! The load generator's HTTP and WebSocket client: one kept-alive HTTP/1.1 connection per
//! virtual user (hyper's connection-level client, no pool), multipart uploads assembled from
//! shared chunks, and a WebSocket per job opened on an address resolved once.
//!
//! The load generator shares the two cores with the server it measures, so every microsecond
//! it spends per job is a microsecond the server does not get. A general-purpose client
//! (reqwest) parses the URL, looks up the pool, builds a header map and a random multipart
//! boundary for every request; here all of that is done once per run, and a job costs the
//! client little more than its system calls.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Multipart boundary of every upload (the image bytes are a PNG or JPEG, which never hold a
/// CRLF followed by this line).
const BOUNDARY: &str = "loadgen-boundary-6b1f0c2e9a";

/// What a run needs to reach the server, resolved once.
pub struct Target {
    /// The server's socket address.
    addr: SocketAddr,
    /// `host:port`, for the Host header and the WebSocket URL.
    authority: String,
    /// `X-API-Key` value, if any.
    api_key: Option<http::HeaderValue>,
    /// The upload's Content-Type, with its boundary.
    upload_type: http::HeaderValue,
    /// The multipart head: boundary, part headers.
    upload_head: Bytes,
    /// The image, shared by every upload.
    image: Bytes,
    /// The closing boundary.
    upload_tail: Bytes,
}

impl Target {
    /// Resolve `url` (`http://host:port`, no path) and prepare the upload parts for `image`.
    pub async fn new(
        url: &str,
        api_key: Option<&str>,
        image: Bytes,
    ) -> anyhow::Result<Arc<Target>> {
        let uri: http::Uri = url.parse()?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "--url must start with http:// (the load generator speaks plain HTTP/1.1)"
        );
        anyhow::ensure!(
            uri.path_and_query().is_none_or(|p| p.as_str() == "/"),
            "--url must be the server's base URL, without a path"
        );
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("--url has no host"))?
            .to_string();
        let with_port = if uri.port().is_some() {
            authority.clone()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} resolves to no address"))?;
        let api_key = api_key.map(http::HeaderValue::from_str).transpose()?;
        let upload_head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"image\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        Ok(Arc::new(Target {
            addr,
            authority,
            api_key,
            upload_type: http::HeaderValue::from_str(&format!(
                "multipart/form-data; boundary={BOUNDARY}"
            ))?,
            upload_head: Bytes::from(upload_head),
            image,
            upload_tail: Bytes::from(format!("\r\n--{BOUNDARY}--\r\n")),
        }))
    }
}

/// A request body made of shared chunks, with its exact length (so hyper sends a
/// Content-Length instead of chunked encoding, and copies nothing).
struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, remaining }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A response: its status and whole body.
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// One virtual user's client: a kept-alive connection, reopened when the server closes it.
pub struct UserClient {
    target: Arc<Target>,
    connection: Option<SendRequest<Chunks>>,
}

impl UserClient {
    /// A client that connects on its first request.
    pub fn new(target: Arc<Target>) -> UserClient {
        UserClient {
            target,
            connection: None,
        }
    }

    /// Drop the kept-alive connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    /// The open connection, or a new one if there is none or the server closed it.
    async fn connection(&mut self) -> Result<&mut SendRequest<Chunks>, String> {
        let mut open = self.connection.take();
        if let Some(sender) = &mut open {
            if sender.ready().await.is_err() {
                open = None;
            }
        }
        let sender = match open {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        Ok(self.connection.insert(sender))
    }

    /// A new connection to the target, its driving task spawned.
    async fn connect(&self) -> Result<SendRequest<Chunks>, String> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("connect: {e}"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the client is dropped.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Send a request with `body` and read the whole reply.
    async fn send(
        &mut self,
        method: http::Method,
        path_and_query: &str,
        content_type: Option<http::HeaderValue>,
        body: Chunks,
    ) -> Result<Reply, String> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, self.target.authority.as_str());
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(key) = &self.target.api_key {
            request = request.header("x-api-key", key.clone());
        }
        let request = request.body(body).map_err(|e| e.to_string())?;
        let sender = self.connection().await?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(e) => {
                self.connection = None;
                return Err(format!("request: {e}"));
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// `POST /api/v1/classify` with the image and `trailer` appended after it.
    pub async fn upload(&mut self, trailer: Bytes) -> Result<Reply, String> {
        let body = Chunks::new([
            self.target.upload_head.clone(),
            self.target.image.clone(),
            trailer,
            self.target.upload_tail.clone(),
        ]);
        let content_type = self.target.upload_type.clone();
        self.send(
            http::Method::POST,
            "/api/v1/classify",
            Some(content_type),
            body,
        )
        .await
    }

    /// `GET path` on the kept-alive connection.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.send(http::Method::GET, path, None, Chunks::new([]))
            .await
    }

    /// Open `/api/v1/status/{id}/ws` and read it to its close; the last status it pushed.
    pub async fn watch(&self, id: &str) -> Result<String, String> {
        let url = format!("ws://{}/api/v1/status/{id}/ws", self.target.authority);
        let mut request = url.into_client_request().map_err(|e| format!("ws: {e}"))?;
        if let Some(key) = &self.target.api_key {
            request.headers_mut().insert("x-api-key", key.clone());
        }
        // No TCP_NODELAY here: the client writes once (the handshake) before it only reads.
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| format!("ws connect: {e}"))?;
        // Status messages are a few hundred bytes: read them through a 4 KiB buffer
        // (tungstenite's default allocates and zeroes 128 KiB per socket, one socket per job).
        let config = WebSocketConfig::default().read_buffer_size(4096);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| format!("ws: {e}"))?;
        let mut last = String::new();
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Text(text)) => last = status_of(text.as_bytes())?,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        Ok(last)
    }
}

/// The `status` field of a job status document.
pub fn status_of(json: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Status {
        status: String,
    }
    serde_json::from_slice::<Status>(json)
        .map(|s| s.status)
        .map_err(|e| format!("status document: {e}"))
}

/// The `job_id` field of a 202 ticket.
pub fn job_id_of(json: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Ticket {
        job_id: String,
    }
    serde_json::from_slice::<Ticket>(json)
        .map(|t| t.job_id)
        .map_err(|e| format!("submit body: {e}"))
}
