//! HTTP/2 multiplexed upstream connections.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::POOLS;
use crate::error::{ConnectError, ProxyError};
use crate::http::body::ProxyBody;
use crate::route::{EndpointState, PoolSettings};
use crate::upstream;

#[derive(Clone)]
struct Connection {
    sender: http2::SendRequest<ProxyBody>,
    state: Arc<ConnectionState>,
}

struct ConnectionState {
    /// Streams in flight on this connection.
    streams: AtomicU32,
    /// When the last stream ended, as milliseconds since [`epoch`].
    released_at: AtomicU64,
}

impl ConnectionState {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.streams.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let released = epoch() + Duration::from_millis(self.released_at.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(released))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch() -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

type Dial = Shared<BoxFuture<'static, Result<Connection, ConnectError>>>;

#[derive(Default)]
pub struct EndpointPool {
    connections: Vec<Connection>,
    dialing: Option<Dial>,
    idle_timeout: Duration,
}

impl EndpointPool {
    pub fn sweep(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        self.connections.retain(|c| !c.sender.is_closed() && c.state.idle_for(now).is_none_or(|idle| idle < timeout));
    }

    pub fn clear(&mut self) {
        // In-flight streams keep their connection alive through their own
        // sender clone; dropping ours lets it close once they finish.
        self.connections.clear();
        self.dialing = None;
    }

    /// A connection with a free stream slot, reserving the slot.
    fn reserve(&mut self, max_streams: u32) -> Option<Lease> {
        self.connections.retain(|c| !c.sender.is_closed());
        let connection = self.connections.iter().find(|c| c.state.streams.load(Ordering::Relaxed) < max_streams)?;
        connection.state.streams.fetch_add(1, Ordering::Relaxed);
        Some(Lease { state: connection.state.clone(), sender: connection.sender.clone() })
    }
}

/// One stream slot on a shared connection; freed when dropped.
pub struct Lease {
    state: Arc<ConnectionState>,
    sender: http2::SendRequest<ProxyBody>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.state.released_at.store(millis_since_epoch(), Ordering::Relaxed);
        self.state.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Checkout {
    Ready(Lease),
    Wait(Dial),
}

pub async fn send(
    endpoint: &Arc<EndpointState>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    let mut lease = loop {
        let checkout = POOLS.with_borrow_mut(|pools| {
            let pool = pools.http2(endpoint.id);
            pool.idle_timeout = settings.idle_timeout;
            if let Some(lease) = pool.reserve(settings.max_streams) {
                return Checkout::Ready(lease);
            }
            // Every connection is full (or there is none): join the dial in
            // flight, or start one.
            let dial =
                pool.dialing.get_or_insert_with(|| dial(endpoint.clone(), connect_timeout).boxed().shared()).clone();
            Checkout::Wait(dial)
        });
        match checkout {
            Checkout::Ready(lease) => break lease,
            Checkout::Wait(dial) => {
                let result = dial.clone().await;
                POOLS.with_borrow_mut(|pools| {
                    let pool = pools.http2(endpoint.id);
                    if pool.dialing.as_ref().is_some_and(|d| Shared::ptr_eq(d, &dial)) {
                        pool.dialing = None;
                        if let Ok(connection) = &result {
                            pool.connections.push(connection.clone());
                        }
                    }
                });
                result?;
            }
        }
    };
    match lease.sender.send_request(request).await {
        Ok(response) => Ok((response, lease)),
        Err(error) => Err(ProxyError::from_exchange(&error)),
    }
}

async fn dial(endpoint: Arc<EndpointState>, timeout: Duration) -> Result<Connection, ConnectError> {
    let stream = upstream::connect(&endpoint, timeout).await?;
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            endpoint.metrics.connect_error("handshake");
            ConnectError::Handshake(e.to_string())
        })?;
    let state =
        Arc::new(ConnectionState { streams: AtomicU32::new(0), released_at: AtomicU64::new(millis_since_epoch()) });
    let watched = state.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended with an error");
            // The pool lets a connection go only once its streams are done,
            // so one that fails under live streams was cut by the upstream
            // (a reset, a GOAWAY with an error, a dead peer). A graceful
            // GOAWAY ends without an error after its streams finished.
            if watched.streams.load(Ordering::Relaxed) > 0 {
                endpoint.metrics.closed_mid_request(true);
            }
        }
    });
    Ok(Connection { sender, state })
}
