//! Status subscriptions over one shared Redis pub/sub connection per backend.
//!
//! [`Feed::subscribe`] registers a channel for the job and sends `SUBSCRIBE`, waiting for the
//! server's confirmation before it returns: from then on every `PUBLISH` of the CAS script
//! reaches the subscriber, in order (one connection, one ordered stream of messages).
//! A dispatcher task routes messages by channel to the subscribers' streams. When a stream
//! is dropped its channel is unsubscribed once no one else listens to it.
//!
//! If the pub/sub connection breaks (Redis restarted, network gone, keep-alive ping fails),
//! every open stream ends, so the consumer knows it may have missed changes and can
//! subscribe again and re-read the record; the next `subscribe` opens a new connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use classifier_core::backend::StatusStream;
use classifier_core::job::JobRecord;
use classifier_core::{Error, Result};
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot, Mutex};

/// How often the dispatcher checks that the pub/sub connection still answers.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Routes = Arc<StdMutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<JobRecord>)>>>>;

/// One live pub/sub connection.
struct Hub {
    generation: u64,
    sink: PubSubSink,
    routes: Routes,
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// Dropping the hub stops its dispatcher (and so closes the connection).
    _stop: oneshot::Sender<()>,
}

struct State {
    hub: Option<Hub>,
    generations: u64,
    next_subscriber: u64,
}

/// The shared subscriber of one backend.
pub(crate) struct Feed {
    client: redis::Client,
    timeout: Duration,
    /// Serializes (un)subscribe commands with the routing table, so "channel subscribed on
    /// the server" always equals "someone listens" between two operations.
    state: Mutex<State>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::BackendUnavailable(format!("Redis pub/sub {what}: {e}"))
}

impl Feed {
    pub(crate) fn new(client: redis::Client, timeout: Duration) -> Arc<Feed> {
        Arc::new(Feed {
            client,
            timeout,
            state: Mutex::new(State {
                hub: None,
                generations: 0,
                next_subscriber: 0,
            }),
        })
    }

    async fn open(&self, generation: u64) -> Result<Hub> {
        let pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| unavailable("connect", "timed out"))?
            .map_err(|e| unavailable("connect", e))?;
        let (sink, stream) = pubsub.split();
        let routes: Routes = Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(dispatch(
            stream,
            sink.clone(),
            routes.clone(),
            alive.clone(),
            stop_rx,
            self.timeout,
        ));
        Ok(Hub {
            generation,
            sink,
            routes,
            alive,
            _stop: stop_tx,
        })
    }

    /// Subscribe to `channel`; returns once the server has confirmed the subscription.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: String) -> Result<StatusStream> {
        let mut state = self.state.lock().await;
        let usable = state
            .hub
            .as_ref()
            .is_some_and(|h| h.alive.load(std::sync::atomic::Ordering::SeqCst));
        if !usable {
            state.hub = None;
            state.generations += 1;
            let hub = self.open(state.generations).await?;
            state.hub = Some(hub);
        }
        state.next_subscriber += 1;
        let subscriber = state.next_subscriber;
        let Some(hub) = state.hub.as_mut() else {
            return Err(unavailable("subscribe", "no connection"));
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let first = {
            let mut routes = hub.routes.lock().unwrap_or_else(|p| p.into_inner());
            let list = routes.entry(channel.clone()).or_default();
            list.push((subscriber, tx));
            list.len() == 1
        };
        if first {
            let confirmed = tokio::time::timeout(self.timeout, hub.sink.subscribe(&channel)).await;
            let failure = match confirmed {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(unavailable("subscribe", e)),
                Err(_) => Some(unavailable("subscribe", "timed out")),
            };
            if let Some(err) = failure {
                // The connection is unusable: end every stream on it and start afresh later.
                hub.alive.store(false, std::sync::atomic::Ordering::SeqCst);
                hub.routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
                state.hub = None;
                return Err(err);
            }
        }
        if !hub.alive.load(std::sync::atomic::Ordering::SeqCst) {
            // The dispatcher gave up meanwhile; it may have cleared the routes before we
            // registered, so do not hand out a stream nobody feeds.
            hub.routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
            state.hub = None;
            return Err(unavailable("subscribe", "connection lost"));
        }
        let generation = hub.generation;
        Ok(Box::pin(Subscription {
            rx,
            finished: false,
            guard: Some(Guard {
                feed: Arc::downgrade(self),
                channel,
                generation,
                subscriber,
            }),
        }))
    }

    async fn unsubscribe(&self, channel: String, generation: u64, subscriber: u64) {
        let mut state = self.state.lock().await;
        let Some(hub) = state.hub.as_mut() else {
            return;
        };
        if hub.generation != generation {
            return;
        }
        let last = {
            let mut routes = hub.routes.lock().unwrap_or_else(|p| p.into_inner());
            match routes.get_mut(&channel) {
                Some(list) => {
                    list.retain(|(id, _)| *id != subscriber);
                    if list.is_empty() {
                        routes.remove(&channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            match tokio::time::timeout(self.timeout, hub.sink.unsubscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%channel, error = %e, "unsubscribe failed"),
                Err(_) => tracing::debug!(%channel, "unsubscribe timed out"),
            }
        }
    }
}

/// Routes messages to subscribers until the connection ends, the keep-alive fails or the hub
/// is dropped; then ends every subscriber's stream.
async fn dispatch(
    mut stream: redis::aio::PubSubStream,
    mut sink: PubSubSink,
    routes: Routes,
    alive: Arc<std::sync::atomic::AtomicBool>,
    mut stop: oneshot::Receiver<()>,
    timeout: Duration,
) {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            msg = std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)) => {
                let Some(msg) = msg else {
                    tracing::warn!("Redis pub/sub connection closed; open status streams end");
                    break;
                };
                let channel = msg.get_channel_name().to_string();
                let record: JobRecord = match serde_json::from_slice(msg.get_payload_bytes()) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "unreadable status message skipped");
                        continue;
                    }
                };
                let routes = routes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(list) = routes.get(&channel) {
                    for (_, tx) in list {
                        let _ = tx.send(record.clone());
                    }
                }
            }
            _ = keepalive.tick() => {
                let pong: std::result::Result<redis::RedisResult<String>, _> =
                    tokio::time::timeout(timeout, sink.ping()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!("Redis pub/sub keep-alive failed; open status streams end");
                    break;
                }
            }
        }
    }
    alive.store(false, std::sync::atomic::Ordering::SeqCst);
    drop(stream);
    drop(sink);
    routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

struct Guard {
    feed: std::sync::Weak<Feed>,
    channel: String,
    generation: u64,
    subscriber: u64,
}

/// A subscriber's stream; ends after a terminal record, unsubscribes when dropped.
struct Subscription {
    rx: mpsc::UnboundedReceiver<JobRecord>,
    guard: Option<Guard>,
    finished: bool,
}

impl futures_core::Stream for Subscription {
    type Item = JobRecord;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<JobRecord>> {
        if self.finished {
            return Poll::Ready(None);
        }
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(record)) = &next {
            // Nothing can follow a terminal state.
            self.finished = record.status.is_terminal();
        }
        next
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let Some(feed) = guard.feed.upgrade() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                feed.unsubscribe(guard.channel, guard.generation, guard.subscriber)
                    .await;
            });
        }
    }
}
