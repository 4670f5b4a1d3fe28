//! HTTP/1.1 keep-alive pool of hyper client connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::POOLS;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::route::{EndpointState, PoolSettings};
use crate::upstream;

type Sender = http1::SendRequest<ProxyBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
pub struct EndpointPool {
    idle: Vec<Idle>,
    idle_timeout: Duration,
    max_idle: usize,
    endpoint: Option<Arc<EndpointState>>,
}

impl EndpointPool {
    fn take(&mut self, now: Instant) -> Option<Sender> {
        while let Some(idle) = self.idle.pop() {
            self.count_idle(-1);
            if !idle.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout {
                return Some(idle.sender);
            }
        }
        None
    }

    fn count_idle(&self, delta: i64) {
        if let Some(endpoint) = &self.endpoint {
            if delta > 0 {
                endpoint.idle.fetch_add(1, Ordering::Relaxed);
                endpoint.metrics.pool_idle.inc();
            } else {
                endpoint.idle.fetch_sub(1, Ordering::Relaxed);
                endpoint.metrics.pool_idle.dec();
            }
        }
    }

    pub fn sweep(&mut self, now: Instant) {
        let before = self.idle.len();
        let timeout = self.idle_timeout;
        self.idle.retain(|idle| !idle.sender.is_closed() && now.duration_since(idle.since) < timeout);
        for _ in self.idle.len()..before {
            self.count_idle(-1);
        }
    }

    pub fn clear(&mut self) {
        for _ in 0..self.idle.len() {
            self.count_idle(-1);
        }
        self.idle.clear();
    }
}

/// A connection lent to one request; back to the pool when dropped.
pub struct Lease {
    sender: Option<Sender>,
    endpoint_id: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else { return };
        // A connection whose response was abandoned mid-body is closed by
        // hyper; one that is merely still finishing is checked with `ready()`
        // at the next checkout.
        if sender.is_closed() {
            return;
        }
        let since = Instant::now();
        // The thread-local may be gone while the worker thread shuts down.
        let _ = POOLS.try_with(|pools| {
            let mut pools = pools.borrow_mut();
            let pool = pools.http1(self.endpoint_id);
            if pool.idle.len() < pool.max_idle {
                pool.idle.push(Idle { sender, since });
                pool.count_idle(1);
            }
        });
    }
}

pub async fn send(
    endpoint: &Arc<EndpointState>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    mut request: Request<ProxyBody>,
) -> Result<(Response<Incoming>, Lease), ProxyError> {
    loop {
        let pooled = POOLS.with_borrow_mut(|pools| {
            let pool = pools.http1(endpoint.id);
            pool.idle_timeout = settings.idle_timeout;
            pool.max_idle = settings.max_idle;
            if pool.endpoint.is_none() {
                pool.endpoint = Some(endpoint.clone());
            }
            pool.take(Instant::now())
        });
        let Some(mut sender) = pooled else { break };
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, lease(sender, endpoint))),
            // The connection died before the request was written (the
            // upstream closed it while idle): safe to try another.
            Err(mut error) => match error.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(ProxyError::Upstream(error.into_error().to_string())),
            },
        }
    }

    let mut sender = connect(endpoint, connect_timeout, false).await?;
    match sender.send_request(request).await {
        Ok(response) => Ok((response, lease(sender, endpoint))),
        Err(error) => Err(ProxyError::Upstream(error.to_string())),
    }
}

fn lease(sender: Sender, endpoint: &EndpointState) -> Lease {
    Lease { sender: Some(sender), endpoint_id: endpoint.id }
}

async fn connect(endpoint: &Arc<EndpointState>, timeout: Duration, upgrades: bool) -> Result<Sender, ProxyError> {
    let stream = upstream::connect(endpoint, timeout).await?;
    let (sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|e| ProxyError::Upstream(e.to_string()))?;
    tokio::spawn(async move {
        let result = if upgrades { connection.with_upgrades().await } else { connection.await };
        if let Err(error) = result {
            tracing::debug!(%error, "upstream HTTP/1 connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends an upgrade request (WebSocket) on a connection of its own: after a
/// `101` the connection belongs to the tunnel and never returns to the pool.
pub async fn send_upgrade(
    endpoint: &Arc<EndpointState>,
    connect_timeout: Duration,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let mut sender = connect(endpoint, connect_timeout, true).await?;
    sender.send_request(request).await.map_err(|e| ProxyError::Upstream(e.to_string()))
}
