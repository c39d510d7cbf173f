//! `GET /api/v1/status/{id}/ws`: push every status document of a job over a WebSocket.
//!
//! The job is looked up (and its owner checked) before the handshake is answered, so an
//! unknown job is a plain 404. After `101 Switching Protocols` a task forwards every record
//! of [`classifier_core::service::Service::subscribe`] (the current one first) as the same
//! JSON as `GET /status`, then sends a normal close (1000) after a terminal state. At server
//! shutdown open sockets are closed with 1001 (going away).

use classifier_core::backend::StatusStream;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
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
    let include = query_flag(req.uri().query(), "include_metadata");
    let updates = ctx.state.service.subscribe(id).await?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = ctx.state.ws_tasks.clone();
    let mut shutting_down = ctx.state.shutting_down.clone();
    tokio::spawn(
        async move {
            let _guard = guard;
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
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

fn close(code: CloseCode, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
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
                Some(record) => {
                    let text = record.status_document(include_metadata).to_string();
                    if sink.send(Message::text(text)).await.is_err() {
                        return;
                    }
                    if record.status.is_terminal() {
                        break close(CloseCode::Normal, "job finished");
                    }
                }
                None => break close(CloseCode::Error, "status feed ended"),
            },
            msg = incoming.next() => match msg {
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
