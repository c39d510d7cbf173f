//! The accept loop: a cap on concurrent connections (a semaphore), HTTP/1.1 and HTTP/2
//! (hyper-util's auto builder, with upgrades for WebSockets), the header-read timeout (which
//! in hyper also closes idle keep-alive connections), and graceful shutdown: stop accepting,
//! let in-flight requests finish (up to `shutdown_timeout`), close WebSockets with 1001, then
//! [`Service::shutdown`]. Every server also runs the webhook [`Dispatcher`] (API-only
//! servers too: the outbox lives in the backend), stopped after the service.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use classifier_core::service::Service;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;
use crate::config::HttpConfig;
use crate::error::Result;
use crate::rate_limit::{InMemoryRateLimiter, RateLimitStore};
use crate::state::AppState;
use crate::webhook::Dispatcher;

/// A server ready to run: the service, the settings and the rate-limit store.
pub struct Server {
    service: Service,
    config: HttpConfig,
    limiter: Arc<dyn RateLimitStore>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over `service` with `config` and an in-memory rate-limit store.
    pub fn new(service: Service, config: HttpConfig) -> Server {
        Server {
            service,
            config,
            limiter: Arc::new(InMemoryRateLimiter::new()),
        }
    }

    /// Use another token-bucket store (e.g. one shared through Redis).
    pub fn rate_limit_store(mut self, store: Arc<dyn RateLimitStore>) -> Server {
        self.limiter = store;
        self
    }

    /// Serve connections from `listener` until `shutdown` completes, then shut down
    /// gracefully (see the module docs). Returns once the service has shut down.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let auth = Auth::new(&self.config.api_keys, &self.config.admin_api_keys);
        if !auth.enabled() {
            tracing::warn!(
                "AUTHENTICATION IS OFF: no API_KEYS or ADMIN_API_KEYS configured; every client can submit, read every job and call the admin routes"
            );
        }
        let dispatcher = Dispatcher::start(self.service.clone(), self.config.webhook.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ws_tx, mut ws_rx) = mpsc::channel::<()>(1);
        let config = self.config.clone();
        let state = Arc::new(AppState {
            service: self.service.clone(),
            config: self.config,
            auth,
            limiter: self.limiter,
            started: Instant::now(),
            shutting_down: stop_rx,
            ws_tasks: ws_tx,
        });

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));

        let permits = Arc::new(Semaphore::new(config.max_connections));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // e.g. EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let conn_state = state.clone();
            let slot = ConnectionSlot::new(permit);
            let conn_slot = slot.clone();
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let state = conn_state.clone();
                req.extensions_mut().insert(conn_slot.clone());
                async move { Ok::<_, Infallible>(crate::app::handle(state, peer, req).await) }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(Lingering::new(tcp)), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                // Frees the slot, unless an upgrade took it along (see `ConnectionSlot`).
                drop(slot);
            });
        }
        drop(listener);
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        let _ = stop_tx.send(true);
        if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open after {:?}; closing them",
                config.shutdown_timeout
            );
        }
        // WebSocket tasks hold clones of the sender: recv() returns None once all are gone
        // (connections that outlived the grace period may still hold the state: bounded wait).
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(5), ws_rx.recv()).await;
        tracing::info!("HTTP server stopped; shutting the service down");
        self.service.shutdown().await;
        dispatcher.stop().await;
        Ok(())
    }
}

/// A connection's `MAX_CONNECTIONS` slot, reachable from its requests (as a request
/// extension). hyper lets go of a connection once it is upgraded, so a WebSocket takes the
/// slot with it ([`ConnectionSlot::take`]) and holds it until the socket closes; any other
/// connection frees it when it ends.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionSlot(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    fn new(permit: OwnedSemaphorePermit) -> ConnectionSlot {
        ConnectionSlot(Arc::new(std::sync::Mutex::new(Some(permit))))
    }

    /// The slot's permit, for whoever outlives the connection (`None` if already taken).
    pub(crate) fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Serve the API on `listener` until `shutdown` completes (see [`Server`] to use another
/// rate-limit store).
///
/// ```no_run
/// # async fn run(service: classifier_core::service::Service) -> classifier_http::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// println!("listening on http://{}", listener.local_addr()?);
/// let config = classifier_http::HttpConfig::default();
/// classifier_http::serve(service, config, listener, classifier_http::server::shutdown_signal()).await
/// # }
/// ```
pub async fn serve<F>(
    service: Service,
    config: HttpConfig,
    listener: TcpListener,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()> + Send,
{
    Server::new(service, config).serve(listener, shutdown).await
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// Most bytes read (and discarded) from a client after the server closed its side.
const LINGER_BYTES: usize = 1 << 20;
/// Longest time spent doing so.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A TCP stream that closes "lingering": when dropped (after the response, e.g. an early
/// 413), it shuts down its write side and reads for a short while before closing, so that a
/// client still sending its body receives the response instead of a reset that would discard it.
/// A stream whose client has already closed its side is closed at once.
struct Lingering {
    inner: Option<TcpStream>,
}

impl Lingering {
    fn new(tcp: TcpStream) -> Lingering {
        Lingering { inner: Some(tcp) }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut tcp) = self.inner.take() else {
            return;
        };
        // The client has already closed its side (a status WebSocket after the close
        // handshake, a keep-alive connection the client ended): nothing more can arrive, so
        // close at once instead of starting a lingering task (one per WebSocket otherwise).
        if matches!(tcp.try_read(&mut [0u8; 1]), Ok(0)) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let _ = tcp.shutdown().await;
            let _ = tokio::time::timeout(LINGER_TIME, async {
                let mut buf = vec![0u8; 16 * 1024];
                let mut total = 0usize;
                while total < LINGER_BYTES {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n,
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: the server's end wrapped in [`Lingering`], and the client's end.
    async fn pair() -> (Lingering, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Lingering::new(server), client)
    }

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    #[tokio::test]
    async fn a_stream_whose_client_is_still_there_lingers_to_read_what_it_sends() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"more body").await.unwrap();
        // Let the server see the bytes, as it would see a body it stopped reading.
        server.stream().unwrap().readable().await.unwrap();
        drop(server);
        assert_eq!(
            alive_tasks(),
            1,
            "a lingering task reads what the client still sends"
        );
        // The server's side shuts down (EOF for the client), and the task ends once the
        // client closes.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        drop(client);
        for _ in 0..100 {
            if alive_tasks() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the lingering task did not end after the client closed");
    }

    #[tokio::test]
    async fn a_stream_whose_client_has_closed_is_closed_without_lingering() {
        let (mut server, client) = pair().await;
        drop(client);
        server.stream().unwrap().readable().await.unwrap();
        drop(server);
        assert_eq!(
            alive_tasks(),
            0,
            "no lingering task for a client that is gone"
        );
    }
}
