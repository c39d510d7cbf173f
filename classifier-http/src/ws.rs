//! `GET /api/v1/status/{id}/ws`: push every status document of a job over a WebSocket.
//!
//! The job is looked up (and its owner checked) before the handshake is answered, so an
//! unknown job is a plain 404. After `101 Switching Protocols` a task forwards every record
//! of [`classifier_core::service::Service::subscribe`] (the current one first) as the same
//! JSON as `GET /status` (records that arrive together leave in one write), then sends a
//! normal close (1000) after a terminal state. At server shutdown open sockets are closed
//! with 1001 (going away).
//!
//! Clients have nothing to say on this socket but close and ping, so each socket reads
//! through a 4 KiB buffer (tungstenite's default allocates and zeroes 128 KiB per socket,
//! and these sockets live one job each), and a client message or frame over
//! `WS_MAX_MESSAGE_SIZE` closes it with 1009 (message too big) instead of being buffered.
//! An open socket keeps its connection's `MAX_CONNECTIONS` slot until it closes.

use classifier_core::backend::StatusStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::app::Ctx;
use crate::error::{Error, Result};
use crate::handlers::{job_id, query_flag, visible_record};
use crate::response::{empty, Body};

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Answer the handshake and start the push task.
pub async fn upgrade(ctx: &Ctx, mut req: Request<Incoming>) -> Result<Response<Body>> {
    let id = job_id(ctx)?;
    if !header_has(&req, header::UPGRADE, "websocket")
        || !header_has(&req, header::CONNECTION, "upgrade")
    {
        return Err(Error::WebSocketHandshake(
            "this route is a WebSocket: send Connection: Upgrade and Upgrade: websocket (or poll GET /api/v1/status/{id})".into(),
        ));
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(Error::WebSocketHandshake(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Error::WebSocketHandshake(
            "Sec-WebSocket-Key is missing".into(),
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    visible_record(ctx, id).await?;
    let include = query_flag(req.uri().query(), "include_metadata")?;
    let updates = ctx.state.service.subscribe(id).await?;

    // The open socket keeps its connection's MAX_CONNECTIONS slot (hyper lets go of an
    // upgraded connection, which would otherwise free it).
    let slot = req
        .extensions()
        .get::<crate::server::ConnectionSlot>()
        .and_then(|s| s.take());
    let socket = socket_config(ctx.state.config.ws_max_message_size);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = ctx.state.ws_tasks.clone();
    let mut shutting_down = ctx.state.shutting_down.clone();
    tokio::spawn(
        async move {
            let (_guard, _slot) = (guard, slot);
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(socket),
                    )
                    .await;
                    pump(ws, updates, include, &mut shutting_down).await;
                }
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        }
        .instrument(tracing::info_span!("websocket", job_id = %id, request_id = %ctx.request_id)),
    );

    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(response)
}

/// The server side of a status socket: a small read buffer, and client messages and frames
/// of at most `max_message` bytes.
fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// What [`send_ready`] left behind.
enum Pushed {
    /// The last record sent was not terminal: keep listening.
    Open,
    /// A terminal record was sent: close the socket.
    Terminal,
    /// The feed ended before a terminal record.
    FeedEnded,
}

/// Send `first` and every further record the feed already holds, then flush once (after a
/// terminal record the caller's close frame goes out in the same write). `None`: the socket
/// failed (the client is gone).
///
/// A worker stores its stage changes in quick bursts (start, preprocessing and inference
/// back to back; then postprocessing and completion). Each record is still its own message,
/// as the contract says, but a burst leaves in one write instead of one per record: fewer
/// system calls and wake-ups on both ends under load.
async fn send_ready<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    updates: &mut StatusStream,
    first: classifier_core::job::JobRecord,
    include_metadata: bool,
) -> Option<Pushed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut record = first;
    let pushed = loop {
        let text = record.status_document(include_metadata).to_string();
        sink.feed(Message::text(text)).await.ok()?;
        if record.status.is_terminal() {
            break Pushed::Terminal;
        }
        match updates.next().now_or_never() {
            Some(Some(next)) => record = next,
            Some(None) => break Pushed::FeedEnded,
            None => break Pushed::Open,
        }
    };
    if matches!(pushed, Pushed::Open) {
        sink.flush().await.ok()?;
    } // else the close frame that follows flushes the burst with it
    Some(pushed)
}

async fn pump<S>(
    ws: WebSocketStream<S>,
    mut updates: StatusStream,
    include_metadata: bool,
    shutting_down: &mut tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut incoming) = ws.split();
    let closing = loop {
        tokio::select! {
            update = updates.next() => match update {
                Some(record) => match send_ready(&mut sink, &mut updates, record, include_metadata).await {
                    Some(Pushed::Terminal) => break close(CloseCode::Normal, "job finished"),
                    Some(Pushed::Open) => {}
                    Some(Pushed::FeedEnded) => break close(CloseCode::Error, "status feed ended"),
                    None => return,
                },
                None => break close(CloseCode::Error, "status feed ended"),
            },
            msg = incoming.next() => match msg {
                Some(Err(WsError::Capacity(_))) => break close(CloseCode::Size, "message too big"),
                // The client closed or vanished: nothing more to send.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    let _ = sink.close().await;
                    return;
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite; other messages are ignored
            },
            changed = shutting_down.changed() => {
                if changed.is_err() || *shutting_down.borrow() {
                    break close(CloseCode::Away, "server shutting down");
                }
            }
        }
    };
    if sink.send(closing).await.is_err() {
        return;
    }
    // Wait (briefly) for the client's close reply so the close handshake completes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(msg)) = incoming.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use classifier_core::image::ImageFormat;
    use classifier_core::job::{JobEvent, JobId, JobRecord, Stage, SubmitOptions};
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

    use super::*;

    /// The server's end of the socket, counting the writes that reach it.
    struct CountingIo {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A job's records from pending to completed, as a worker stores them.
    fn lifecycle() -> Vec<JobRecord> {
        let now = chrono::Utc::now();
        let metadata = classifier_core::image::ImageMetadata {
            format: ImageFormat::Png,
            width: 64,
            height: 48,
            file_size: 1000,
        };
        let mut record = JobRecord::new(
            JobId::new(),
            &SubmitOptions::default(),
            "v1".into(),
            metadata,
            String::new(),
            now,
        );
        let mut records = vec![record.clone()];
        let events = [
            JobEvent::Start,
            JobEvent::Advance {
                stage: Stage::Preprocessing,
                progress: 25,
            },
            JobEvent::Advance {
                stage: Stage::Inference,
                progress: 50,
            },
            JobEvent::Advance {
                stage: Stage::Postprocessing,
                progress: 75,
            },
            JobEvent::Complete,
        ];
        for event in &events {
            record.apply(event, now).expect("legal transition");
            records.push(record.clone());
        }
        records
    }

    #[tokio::test]
    async fn a_burst_of_records_is_every_message_in_order_in_one_write_with_the_close() {
        let records = lifecycle();
        let expected: Vec<String> = records
            .iter()
            .map(|r| r.status.as_str().to_string() + "/" + r.stage.as_str())
            .collect();
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let server_io = CountingIo {
            inner: server_io,
            writes: writes.clone(),
        };
        let feed: StatusStream = Box::pin(futures_util::stream::iter(records));
        let (_stop, mut shutting_down) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            pump(ws, feed, false, &mut shutting_down).await;
        });

        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        let mut seen = Vec::new();
        let close = loop {
            match client.next().await {
                Some(Ok(Message::Text(text))) => {
                    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    seen.push(format!(
                        "{}/{}",
                        doc["status"].as_str().unwrap_or("?"),
                        doc["stage"].as_str().unwrap_or("?")
                    ));
                }
                Some(Ok(Message::Close(frame))) => break frame,
                other => panic!("unexpected {other:?}"),
            }
        };
        // The client's close reply lets the pump finish.
        while client.next().await.is_some() {}
        server.await.expect("pump task");

        assert_eq!(
            seen, expected,
            "every record, in order, each its own message"
        );
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Normal));
        // Six records and the close frame were ready at once: one write, not seven.
        assert_eq!(writes.load(Ordering::SeqCst), 1);
    }

    /// The next text message the client gets, as `status/stage`.
    async fn next_status(client: &mut WebSocketStream<DuplexStream>) -> String {
        match client.next().await {
            Some(Ok(Message::Text(text))) => {
                let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                format!(
                    "{}/{}",
                    doc["status"].as_str().unwrap_or("?"),
                    doc["stage"].as_str().unwrap_or("?")
                )
            }
            other => panic!("expected a status message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_message_of_the_limit_is_ignored_and_one_byte_more_closes_with_1009() {
        const LIMIT: usize = 1000;
        let records = lifecycle();
        let (feed_tx, feed_rx) = tokio::sync::mpsc::unbounded_channel();
        let feed: StatusStream =
            Box::pin(futures_util::stream::unfold(feed_rx, |mut rx| async move {
                rx.recv().await.map(|record| (record, rx))
            }));
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let (_stop, mut shutting_down) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(async move {
            let config = Some(socket_config(LIMIT));
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, config).await;
            pump(ws, feed, false, &mut shutting_down).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;

        feed_tx.send(records[0].clone()).expect("feed");
        let label = |r: &JobRecord| format!("{}/{}", r.status.as_str(), r.stage.as_str());
        assert_eq!(next_status(&mut client).await, label(&records[0]));
        // Exactly the limit: read and ignored; the socket stays open and keeps pushing.
        client
            .send(Message::text("x".repeat(LIMIT)))
            .await
            .expect("send");
        feed_tx.send(records[1].clone()).expect("feed");
        assert_eq!(next_status(&mut client).await, label(&records[1]));
        // One byte more: the server closes with 1009 instead of buffering it.
        client
            .send(Message::text("x".repeat(LIMIT + 1)))
            .await
            .expect("send");
        let close = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match client.next().await {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(Message::Text(_))) => {}
                    other => panic!("expected the close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("the server closes the socket");
        assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
        while client.next().await.is_some() {}
        server.await.expect("pump task");
    }
}
